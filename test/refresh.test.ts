// Request ids echoed by the router, and the built-in in-band token refresh (issue 14's server
// side): real sockets, tokens signed by @fastify/jwt.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import Fastify, { type FastifyInstance } from 'fastify'
import jwt from '@fastify/jwt'
import wsManager, { type Connection, type WsManagerOptions } from '../lib/index'
import { closed, connectQueued, listen } from './helper'

const SECRET = 'refresh-test-secret-0123456789-abcdefghijklm'

async function build (t: TestContext, options: WsManagerOptions = {}, jwtOptions: Record<string, unknown> = {}): Promise<{ app: FastifyInstance, url: string }> {
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(jwt, { secret: SECRET, ...jwtOptions })
  await app.register(wsManager, { messageRateLimit: false, ...options })
  const messages = {
    echo: { handler: (message: { text?: string }) => ({ type: 'echo', text: message.text }) },
    count: { handler: () => 42 },
    nothing: { handler: () => undefined },
    strict: {
      schema: { type: 'object', required: ['type', 'n'], additionalProperties: false, properties: { type: { const: 'strict' }, n: { type: 'integer' } } },
      handler: (message: { n: number }) => ({ type: 'strict', n: message.n })
    },
    whoami: { handler: (_message: unknown, connection: Connection) => ({ type: 'whoami', user: connection.user, closeAt: connection.closeAt }) }
  }
  app.get('/ws', { websocket: true, config: { wsManager: { messages } } }, () => {})
  app.get('/open', { websocket: true, config: { wsManager: { auth: false, messages } } }, () => {})
  return { app, url: await listen(app) }
}

test('the router echoes a request id in replies and error replies, and takes it out before the schema', async (t) => {
  const { app, url } = await build(t)
  const { ws, next } = await connectQueued(t, url + '/ws', { headers: { authorization: `Bearer ${app.jwt.sign({ sub: 'ada' })}` } })
  const ask = async (message: unknown): Promise<unknown> => {
    ws.send(JSON.stringify(message))
    return JSON.parse(await next())
  }
  assert.deepEqual(await ask({ type: 'echo', id: 'r1', text: 'hi' }), { type: 'echo', text: 'hi', id: 'r1' })
  assert.deepEqual(await ask({ type: 'count', id: 7 }), { type: 'reply', id: 7, data: 42 })
  assert.deepEqual(await ask({ type: 'nothing', id: 'r3' }), { type: 'reply', id: 'r3' })
  assert.deepEqual(await ask({ type: 'strict', id: 'r4', n: 1 }), { type: 'strict', n: 1, id: 'r4' }, 'additionalProperties: false does not see the id')
  assert.deepEqual(await ask({ type: 'echo', text: 'no id' }), { type: 'echo', text: 'no id' })
  const unknown = await ask({ type: 'nope', id: 'r5' }) as Record<string, unknown>
  assert.deepEqual([unknown.type, unknown.code, unknown.id], ['error', 'UNKNOWN_TYPE', 'r5'])
  const invalid = await ask({ type: 'strict', id: 'r6', n: 'x' }) as Record<string, unknown>
  assert.deepEqual([invalid.code, invalid.id], ['INVALID_MESSAGE', 'r6'])
  for (const id of ['x'.repeat(65), 1.5, { a: 1 }, null, true]) {
    const bad = await ask({ type: 'echo', id }) as Record<string, unknown>
    assert.deepEqual([bad.code, 'id' in bad], ['INVALID_MESSAGE', false], JSON.stringify(id))
  }
})

test('auth.refresh replaces the claims and moves the expiry, on the same connection', async (t) => {
  const { app, url } = await build(t)
  const now = Math.floor(Date.now() / 1000)
  const { ws, next } = await connectQueued(t, url + '/ws', { headers: { authorization: `Bearer ${app.jwt.sign({ sub: 'bea', exp: now + 2, role: 'old' })}` } })
  const connection = [...app.wsManager.connections][0]
  const fresh = app.jwt.sign({ sub: 'bea', exp: now + 120, role: 'new' })
  ws.send(JSON.stringify({ type: 'auth.refresh', id: 'a1', token: fresh }))
  assert.deepEqual(JSON.parse(await next()), { type: 'auth.refreshed', exp: now + 120, id: 'a1' })
  assert.equal(connection.closeAt, (now + 120) * 1000)
  assert.equal((connection.user as { role?: string }).role, 'new')
  // Past the old expiry the connection is still open, and it is the same one.
  await new Promise((resolve) => setTimeout(resolve, 3000 - (Date.now() - now * 1000) + 200))
  assert.equal(connection.state, 'open')
  ws.send(JSON.stringify({ type: 'echo', id: 'a2', text: 'still here' }))
  assert.deepEqual(JSON.parse(await next()), { type: 'echo', text: 'still here', id: 'a2' })
  assert.equal([...app.wsManager.connections][0].id, connection.id)
})

test('a refreshed token that expires soon closes the connection at its own expiry', async (t) => {
  const { app, url } = await build(t)
  const now = Math.floor(Date.now() / 1000)
  const { ws, next } = await connectQueued(t, url + '/ws', { headers: { authorization: `Bearer ${app.jwt.sign({ sub: 'cid', exp: now + 60 })}` } })
  ws.send(JSON.stringify({ type: 'auth.refresh', id: 1, token: app.jwt.sign({ sub: 'cid', exp: now + 2 }) }))
  assert.equal(JSON.parse(await next()).exp, now + 2)
  assert.deepEqual(await closed(ws, 5000), { code: 1008, reason: 'Token expired' })
})

test("another user's token closes with 1008; a bad or expired token is an error reply and the connection stays", async (t) => {
  const { app, url } = await build(t)
  const { ws, next } = await connectQueued(t, url + '/ws', { headers: { authorization: `Bearer ${app.jwt.sign({ sub: 'dot' })}` } })
  const forged = Fastify()
  await forged.register(jwt, { secret: 'another-secret-that-is-long-enough-0123456789' })
  await forged.ready()
  const refusals: Array<[string, string]> = [
    [forged.jwt.sign({ sub: 'dot' }), 'forged'],
    [app.jwt.sign({ sub: 'dot', exp: Math.floor(Date.now() / 1000) - 10 }), 'expired'],
    ['not.a.token', 'malformed']
  ]
  for (const [token, what] of refusals) {
    ws.send(JSON.stringify({ type: 'auth.refresh', id: what, token }))
    const reply = JSON.parse(await next())
    assert.deepEqual([reply.type, reply.code, reply.id], ['error', 'INVALID_TOKEN', what], what)
  }
  await forged.close()
  assert.equal(ws.readyState, ws.OPEN)
  ws.send(JSON.stringify({ type: 'auth.refresh', id: 'other', token: app.jwt.sign({ sub: 'eve' }) }))
  assert.deepEqual(await closed(ws), { code: 1008, reason: 'Token user mismatch' })
})

test('formatUser applies to a refreshed token as to the upgrade', async (t) => {
  const { app, url } = await build(t, {}, { formatUser: (payload: { sub: string, role?: string }) => ({ sub: payload.sub, label: `${payload.sub}:${payload.role ?? '-'}` }) })
  const { ws, next } = await connectQueued(t, url + '/ws', { headers: { authorization: `Bearer ${app.jwt.sign({ sub: 'fay', role: 'a' })}` } })
  ws.send(JSON.stringify({ type: 'auth.refresh', id: 1, token: app.jwt.sign({ sub: 'fay', role: 'b' }) }))
  assert.equal(JSON.parse(await next()).type, 'auth.refreshed')
  ws.send(JSON.stringify({ type: 'whoami', id: 2 }))
  assert.deepEqual(JSON.parse(await next()).user, { sub: 'fay', label: 'fay:b' })
})

test('auth.refresh is reserved, and unknown on routes without auth', async (t) => {
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(jwt, { secret: SECRET })
  await app.register(wsManager)
  assert.throws(() => app.get('/ws', { websocket: true, config: { wsManager: { messages: { 'auth.refresh': { handler: () => 1 } } } } }, () => {}),
    { code: 'FST_WSM_OPTION_INVALID' })

  const { url } = await build(t)
  const { ws, next } = await connectQueued(t, url + '/open')
  ws.send(JSON.stringify({ type: 'auth.refresh', id: 1, token: 'x' }))
  const reply = JSON.parse(await next())
  assert.deepEqual([reply.code, reply.id], ['UNKNOWN_TYPE', 1])
})
