import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import type { FastifyInstance } from 'fastify'
import type WebSocket from 'ws'
import { Type } from '@sinclair/typebox'
import { defineMessage, defineMessages, type Connection } from '../lib/index'
import { build, closed, connect, listen, logCapture, nextMessage, waitFor } from './helper'

interface Add { type: 'add', a: number, b: number }

async function routerApp (t: TestContext, messageErrorLimit = 3): Promise<{ app: FastifyInstance, url: string, binary: Buffer[], text: string[], logs: ReturnType<typeof logCapture> }> {
  const logs = logCapture()
  const app = await build(t, { auth: false, upgradeRateLimit: false }, { fastify: { logger: { level: 'info', stream: logs.stream } } })
  const binary: Buffer[] = []
  const text: string[] = []
  app.get('/rpc', {
    websocket: true,
    config: {
      wsManager: {
        messageErrorLimit,
        messages: {
          add: {
            schema: {
              type: 'object',
              required: ['type', 'a', 'b'],
              properties: { type: { const: 'add' }, a: { type: 'number' }, b: { type: 'number' } },
              additionalProperties: false
            },
            handler: (message: Add) => ({ type: 'sum', value: message.a + message.b })
          },
          whoami: {
            handler: async (_message: unknown, connection: Connection) => {
              await new Promise((resolve) => setTimeout(resolve, 5))
              return { type: 'you', route: connection.route }
            }
          },
          quiet: { handler: () => undefined },
          explode: { handler: () => { throw new Error('router handler failed') } }
        }
      }
    }
  }, (socket) => {
    socket.on('message', (data, isBinary) => {
      if (isBinary) binary.push(data as Buffer)
      else text.push(data.toString())
    })
  })
  const url = await listen(app)
  return { app, url, binary, text, logs }
}

function rpc (ws: WebSocket, message: unknown): Promise<Record<string, unknown>> {
  const reply = nextMessage(ws)
  ws.send(typeof message === 'string' ? message : JSON.stringify(message))
  return reply.then((r) => JSON.parse(r) as Record<string, unknown>)
}

test('a valid message runs its handler and the value returned (or resolved) comes back as JSON', async (t) => {
  const { url, text } = await routerApp(t)
  const ws = await connect(t, url + '/rpc')
  assert.deepEqual(await rpc(ws, { type: 'add', a: 2, b: 3 }), { type: 'sum', value: 5 })
  assert.deepEqual(await rpc(ws, { type: 'whoami' }), { type: 'you', route: '/rpc' })
  assert.deepEqual(text, [], 'routed text messages are consumed by the router')
})

test('malformed JSON, a missing type, an unknown type and a schema failure each answer an error and do not close', async (t) => {
  const { url } = await routerApp(t, 10)
  const ws = await connect(t, url + '/rpc')
  const cases: Array<[unknown, string]> = [
    ['{not json', 'INVALID_JSON'],
    [{ kind: 'add' }, 'MISSING_TYPE'],
    ['"just a string"', 'MISSING_TYPE'],
    [{ type: 'subtract', a: 1, b: 2 }, 'UNKNOWN_TYPE'],
    [{ type: 'add', a: '1', b: 2 }, 'INVALID_MESSAGE'],
    [{ type: 'add', a: 1, b: 2, extra: true }, 'INVALID_MESSAGE']
  ]
  for (const [message, code] of cases) {
    const reply = await rpc(ws, message)
    assert.equal(reply.type, 'error')
    assert.equal(reply.code, code, JSON.stringify(message))
    assert.equal(typeof reply.message, 'string')
  }
  assert.equal(ws.readyState, ws.OPEN)
  assert.deepEqual(await rpc(ws, { type: 'add', a: 1, b: 1 }), { type: 'sum', value: 2 })
})

test('after messageErrorLimit errors in a row the connection is closed: 1007 for invalid payloads, 1008 for unknown types', async (t) => {
  const { app, url } = await routerApp(t, 3)
  const invalid = await connect(t, url + '/rpc')
  const invalidClosed = closed(invalid)
  for (let i = 0; i < 3; i++) invalid.send('{bad')
  assert.deepEqual(await invalidClosed, { code: 1007, reason: 'Too many invalid messages' })

  const unknown = await connect(t, url + '/rpc')
  const unknownClosed = closed(unknown)
  for (let i = 0; i < 3; i++) unknown.send(JSON.stringify({ type: 'nope' }))
  assert.deepEqual(await unknownClosed, { code: 1008, reason: 'Too many invalid messages' })

  // A success in between resets the count.
  const mixed = await connect(t, url + '/rpc')
  for (let round = 0; round < 3; round++) {
    await rpc(mixed, '{bad')
    await rpc(mixed, '{bad')
    assert.deepEqual(await rpc(mixed, { type: 'add', a: round, b: 0 }), { type: 'sum', value: round })
  }
  assert.equal(mixed.readyState, mixed.OPEN)
  await waitFor(() => app.wsManager.connections.size === 1)
})

test('binary messages pass through untouched to the socket listeners', async (t) => {
  const { url, binary } = await routerApp(t)
  const ws = await connect(t, url + '/rpc')
  ws.send(Buffer.from([0, 1, 2, 255]))
  ws.send(JSON.stringify({ type: 'quiet' }))
  await waitFor(() => binary.length === 1)
  assert.deepEqual([...binary[0]], [0, 1, 2, 255])
  assert.deepEqual(await rpc(ws, { type: 'add', a: 1, b: 2 }), { type: 'sum', value: 3 }, 'quiet sent nothing back')
})

test('a router handler that throws is contained like any handler error: 1011 and a log line', async (t) => {
  const { url, logs } = await routerApp(t)
  const ws = await connect(t, url + '/rpc')
  const end = closed(ws)
  ws.send(JSON.stringify({ type: 'explode' }))
  assert.deepEqual(await end, { code: 1011, reason: 'Internal error' })
  assert.ok(logs.lines.some((l) => l.msg === 'connection handler failed' && l.source === 'router:explode'))
})

test('a route whose messages are badly declared fails at registration with FST_WSM_OPTION_INVALID', async (t) => {
  const bad: unknown[] = [
    { add: { schema: { type: 'object' } } },
    { add: { handler: () => 1, schema: { type: 'no-such-type' } } },
    'not an object'
  ]
  for (const messages of bad) {
    const app = await build(t, { auth: false })
    assert.throws(() => {
      app.get('/bad', { websocket: true, config: { wsManager: { messages } } } as never, () => {})
    }, { code: 'FST_WSM_OPTION_INVALID' }, JSON.stringify(messages))
  }
})

test('defineMessages with a TypeBox schema: ajv checks it at run time, the handler gets the typed message', async (t) => {
  const messages = defineMessages({
    mul: defineMessage({
      schema: Type.Object({ type: Type.Literal('mul'), a: Type.Number(), b: Type.Number() }),
      reply: Type.Object({ type: Type.Literal('product'), value: Type.Number() }),
      handler: (message) => ({ type: 'product' as const, value: message.a * message.b })
    })
  })
  const app = await build(t, { auth: false, upgradeRateLimit: false })
  app.get('/typed', { websocket: true, config: { wsManager: { messages } } }, () => {})
  const url = await listen(app)
  const client = await connect(t, `${url}/typed`)
  client.send(JSON.stringify({ type: 'mul', a: 6, b: 7 }))
  assert.deepEqual(JSON.parse(await nextMessage(client)), { type: 'product', value: 42 })
  client.send(JSON.stringify({ type: 'mul', a: 'six', b: 7 }))
  assert.equal(JSON.parse(await nextMessage(client)).code, 'INVALID_MESSAGE')
})
