// Issue 11: lifecycle hooks, the connection's data, async iteration, diagnostics channels.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import diagnostics from 'node:diagnostics_channel'
import type { FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import type { CloseInfo, Connection, WsManagerOptions } from '../lib/index'
import { attempt, build, closed, connect, listen, logCapture, waitFor } from './helper'

type Setup = (app: FastifyInstance) => void

async function start (t: TestContext, options: WsManagerOptions = {}, setup?: Setup, logs?: ReturnType<typeof logCapture>): Promise<{ app: FastifyInstance, url: string }> {
  const app = await build(t, { auth: false, upgradeRateLimit: false, ...options }, {
    fastify: logs === undefined ? { logger: false } : { logger: { level: 'info', stream: logs.stream } }
  })
  setup?.(app)
  const url = await listen(app)
  return { app, url }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

test('hooks run in order, the plugin\'s before the route\'s, async and callback styles alike; the handler waits for onConnection and misses no message', async (t) => {
  const order: string[] = []
  const seen: string[] = []
  const { url } = await start(t, {}, (app) => {
    app.wsManager.addHook('onConnection', async (connection) => {
      await sleep(50)
      order.push('plugin async')
      connection.data.room = 'lobby'
    })
    app.wsManager.addHook('onConnection', (_connection, _request, done) => {
      order.push('plugin callback')
      setTimeout(done, 10)
    })
    app.get('/ws', {
      websocket: true,
      config: { wsManager: { hooks: { onConnection: () => { order.push('route') } } } }
    }, (socket, request) => {
      order.push(`handler ${String(request.wsConnection?.data.room)}`)
      socket.on('message', (data) => seen.push(data.toString()))
    })
  })
  const client = new WebSocket(`${url}/ws`)
  t.after(() => client.terminate())
  // Sent the moment the upgrade completes, while the hooks still run.
  client.on('open', () => { client.send('early 1'); client.send('early 2') })
  await waitFor(() => seen.length === 2, 3000, 'both messages')
  assert.deepEqual(order, ['plugin async', 'plugin callback', 'route', 'handler lobby'])
  assert.deepEqual(seen, ['early 1', 'early 2'])
})

test('a hook that throws or rejects is contained: onConnection and onMessage close with 1011, onClose and onRefused are logged', async (t) => {
  const logs = logCapture()
  let handlerRan = false
  const { app, url } = await start(t, { requireOrigin: true }, (app) => {
    app.wsManager.addHook('onClose', () => { throw new Error('onClose bug') })
    app.wsManager.addHook('onRefused', async () => { throw new Error('onRefused bug') })
    app.get('/connect', { websocket: true, config: { wsManager: { hooks: { onConnection: async () => { throw new Error('nope') } } } } }, () => { handlerRan = true })
    app.get('/message', { websocket: true, config: { wsManager: { hooks: { onMessage: (_c, data) => { if (data.toString() === 'bad') throw new Error('bad message') } } } } }, (socket) => {
      socket.on('message', (data) => socket.send(data))
    })
  }, logs)
  const origin = { origin: `http${url.slice(2)}` }
  const first = await connect(t, `${url}/connect`, { headers: origin })
  assert.deepEqual(await closed(first), { code: 1011, reason: 'Internal error' })
  assert.equal(handlerRan, false)
  const second = await connect(t, `${url}/message`, { headers: origin })
  second.send('fine')
  await new Promise((resolve) => second.once('message', resolve))
  const end = closed(second)
  second.send('bad')
  assert.deepEqual(await end, { code: 1011, reason: 'Internal error' })
  assert.equal((await attempt(t, `${url}/message`)).status, 403)
  await waitFor(() => logs.lines.filter((l) => l.msg === 'hook failed').length === 3, 2000, 'hook errors logged')
  const sources = logs.lines.filter((l) => l.msg === 'hook failed').map((l) => l.source).sort()
  assert.deepEqual(sources, ['hook:onClose', 'hook:onClose', 'hook:onRefused'])
  assert.equal(app.wsManager.connections.size, 0)
})

test('onClose gets the code, reason, initiator and final figures; onRefused the status and reason; route hooks apply to their route only', async (t) => {
  const closes: Array<[string, CloseInfo]> = []
  const refusals: Array<[number, string]> = []
  const { app, url } = await start(t, { requireOrigin: true, messageRateLimit: false }, (app) => {
    app.wsManager.addHook('onClose', (connection, info) => { closes.push([connection.route, info]) })
    app.wsManager.addHook('onRefused', (_request, info) => { refusals.push([info.statusCode, info.reason]) })
    app.get('/a', { websocket: true, config: { wsManager: { hooks: { onClose: [(c, info) => { closes.push([`own ${c.route}`, info]) }] } } } }, (socket) => {
      socket.on('message', (data) => socket.send(data))
    })
    app.get('/b', { websocket: true }, () => {})
  })
  const origin = { headers: { origin: `http${url.slice(2)}` } }
  const a = await connect(t, `${url}/a`, origin)
  a.send('hello')
  await new Promise((resolve) => a.once('message', resolve))
  a.close(4001, 'client done')
  const b = await connect(t, `${url}/b`, origin)
  await waitFor(() => app.wsManager.connections.size === 1 && closes.length === 2, 2000, 'a closed')
  await app.wsManager.closeAll({ code: 4002, reason: 'server done' })
  await waitFor(() => closes.length === 3, 2000, 'b closed')
  assert.deepEqual(closes.map(([where, info]) => [where, info.code, info.reason, info.initiatedBy]), [
    ['/a', 4001, 'client done', 'client'],
    ['own /a', 4001, 'client done', 'client'],
    ['/b', 4002, 'server done', 'server']
  ])
  const [, info] = closes[0]
  assert.deepEqual([info.messagesIn, info.messagesOut, info.bytesIn, info.bytesOut], [1, 1, 5, 5])
  assert.equal(closes[2][1].sentCode, 4002)
  assert.ok(b.readyState >= WebSocket.CLOSING)
  assert.equal((await attempt(t, `${url}/b`)).status, 403)
  assert.deepEqual(refusals, [[403, 'origin undefined']])
})

test('bad hooks are coded errors: an unknown name, a value that is not a function, a route hook that is not one', async (t) => {
  const app = await build(t, { auth: false })
  assert.throws(() => app.wsManager.addHook('onOpen' as never, (() => {}) as never), (err: Error & { code?: string }) => err.code === 'FST_WSM_HOOK_INVALID')
  assert.throws(() => app.wsManager.addHook('onClose', 'x' as never), (err: Error & { code?: string }) => err.code === 'FST_WSM_HOOK_INVALID')
  assert.throws(() => app.get('/ws', { websocket: true, config: { wsManager: { hooks: { onClose: 42 as never } } } }, () => {}),
    (err: Error & { code?: string }) => err.code === 'FST_WSM_HOOK_INVALID')
})

test('connection.data: started by the connectionData option, shared by hooks and handler, one per connection', async (t) => {
  const rooms: unknown[] = []
  let counter = 0
  const { app, url } = await start(t, { connectionData: (request) => ({ n: ++counter, path: request.url }) }, (app) => {
    app.wsManager.addHook('onConnection', (connection) => { (connection.data as { seen?: boolean }).seen = true })
    app.wsManager.addHook('onClose', (connection) => { rooms.push({ ...connection.data }) })
    app.get('/ws', { websocket: true }, () => {})
  })
  const one = await connect(t, `${url}/ws`)
  const two = await connect(t, `${url}/ws?x=1`)
  await waitFor(() => app.wsManager.connections.size === 2, 2000, 'both open')
  one.close()
  await waitFor(() => rooms.length === 1, 2000, 'one closed')
  two.close()
  await waitFor(() => rooms.length === 2, 2000, 'two closed')
  assert.deepEqual(rooms, [{ n: 1, path: '/ws', seen: true }, { n: 2, path: '/ws?x=1', seen: true }])
  assert.throws(() => app.wsManager.addHook('onClose', null as never))
  const bad = Promise.resolve().then(async () => { const a = await build(t, { auth: false, connectionData: 5 as never }); await a.ready() })
  await assert.rejects(bad, (err: Error & { code?: string }) => err.code === 'FST_WSM_OPTION_INVALID')
})

test('for await over a connection: a slow consumer pauses the socket, its queue stays bounded, every message arrives in order', async (t) => {
  const got: number[] = []
  let queued = 0
  let paused = false
  let ended = false
  const { url } = await start(t, { messageRateLimit: false }, (app) => {
    app.get('/ws', { websocket: true }, async (socket, request) => {
      const connection = request.wsConnection as Connection
      const messages = connection[Symbol.asyncIterator]()
      for await (const { data } of messages) {
        got.push((data as Buffer).readUInt32BE(0))
        await sleep(25)
        paused ||= socket.isPaused
        queued = Math.max(queued, messages.maxQueued)
      }
      ended = true
    })
  })
  const client = await connect(t, `${url}/ws`)
  const count = 48
  for (let i = 0; i < count; i++) {
    const payload = Buffer.alloc(256 * 1024, 1)
    payload.writeUInt32BE(i, 0)
    client.send(payload)
  }
  await waitFor(() => got.length === 10, 5000, 'ten consumed')
  // The client's own buffer holds what the paused server does not read.
  assert.ok(client.bufferedAmount > 0, `client bufferedAmount ${client.bufferedAmount}`)
  assert.ok(paused, 'the socket was paused while the consumer was busy')
  await waitFor(() => got.length === count, 10_000, 'all consumed')
  assert.deepEqual(got, Array.from({ length: count }, (_, i) => i))
  assert.ok(queued <= 4, `at most a socket read's worth waited: ${queued}`)
  client.close()
  await waitFor(() => ended, 2000, 'the loop ended on close')
})

test('diagnostics channels carry the connection id: connection, message, close, refused', async (t) => {
  const events: Array<[string, string]> = []
  const subscriptions: Array<[string, (message: unknown) => void]> = []
  for (const name of ['connection', 'message', 'close', 'refused']) {
    const fn = (message: unknown): void => {
      const m = message as { connection?: Connection, statusCode?: number }
      events.push([name, m.connection?.id ?? String(m.statusCode)])
    }
    diagnostics.subscribe(`fastify-ws-manager:${name}`, fn)
    subscriptions.push([`fastify-ws-manager:${name}`, fn])
  }
  t.after(() => { for (const [name, fn] of subscriptions) diagnostics.unsubscribe(name, fn) })
  const { app, url } = await start(t, { requireOrigin: true }, (app) => {
    app.get('/ws', { websocket: true }, (socket) => { socket.on('message', (data) => socket.send(data)) })
  })
  const client = await connect(t, `${url}/ws`, { headers: { origin: `http${url.slice(2)}` } })
  const id = [...app.wsManager.connections][0].id
  client.send('x')
  await new Promise((resolve) => client.once('message', resolve))
  client.close()
  await waitFor(() => app.wsManager.connections.size === 0, 2000, 'closed')
  await attempt(t, `${url}/ws`)
  assert.deepEqual(events, [['connection', id], ['message', id], ['close', id], ['refused', '403']])
})

test('review: an async hook that also takes done is refused; a done-style hook whose promise rejects is contained', async (t) => {
  const { app, url } = await start(t, {}, (app) => {
    app.get('/ws', { websocket: true, config: { wsManager: { hooks: { onMessage: ((_c: unknown, data: Buffer, _b: unknown, done: () => void) => { done(); return data.toString() === 'bad' ? Promise.reject(new Error('late')) : undefined }) as never } } } }, () => {})
  })
  assert.throws(() => app.wsManager.addHook('onMessage', async (_c, _d, _b, done) => { done() }), (err: Error & { code?: string }) => err.code === 'FST_WSM_HOOK_INVALID')
  const client = await connect(t, `${url}/ws`)
  const end = closed(client)
  client.send('bad')
  assert.deepEqual(await end, { code: 1011, reason: 'Internal error' })
})

test('review: while the application holds the input, the heartbeat does not declare a live client dead', async (t) => {
  let handled = 0
  const { app, url } = await start(t, { heartbeat: { pingInterval: 100, pongTimeout: 50, maxMissedPongs: 1 } }, (app) => {
    app.wsManager.addHook('onConnection', async () => { await sleep(600) })
    app.get('/ws', { websocket: true }, (socket) => { socket.on('message', () => { handled++ }) })
  })
  const client = await connect(t, `${url}/ws`)
  client.send('after the hook')
  await waitFor(() => handled === 1, 3000, 'handled after the slow hook')
  assert.equal(app.wsManager.stats().connections.heartbeatClosed, 0)
  assert.equal(client.readyState, WebSocket.OPEN)
  // The heartbeat runs again once the hold ended: a client that stops answering is found.
  ;(client as unknown as { _receiver: { removeAllListeners: (e: string) => void } })._receiver.removeAllListeners('ping')
  await waitFor(() => app.wsManager.stats().connections.heartbeatClosed === 1, 3000, 'heartbeat back')
})

test('review: an iterator\'s queued bytes are bounded (1013); nothing queued is handed over after a close began', async (t) => {
  const seen: number[] = []
  const { app, url } = await start(t, { backpressure: { maxQueued: 16 * 1024 }, messageRateLimit: false }, (app) => {
    app.get('/slow', { websocket: true }, async (_socket, request) => {
      for await (const m of request.wsConnection as Connection) {
        seen.push((m.data as Buffer).readUInt32BE(0))
        await sleep(300)
      }
    })
  })
  const client = await connect(t, `${url}/slow`)
  const end = closed(client, 5000)
  // Sent at once: ws reads several messages in one go before the pause can take effect.
  const batch: Buffer[] = []
  for (let i = 0; i < 20; i++) {
    const payload = Buffer.alloc(8 * 1024)
    payload.writeUInt32BE(i + 1, 0)
    batch.push(payload)
  }
  for (const payload of batch) client.send(payload)
  assert.equal((await end).code, 1013, 'the queue passed its bound')
  await sleep(400)
  assert.ok(seen.length <= 2, `handed over after the close began: ${seen.join(',')}`)
  assert.equal(app.wsManager.stats().delivery.slowConsumerCloses, 1)
})

test('review: a close started on the socket while input is held is not held up', async (t) => {
  const { app, url } = await start(t, { close: { timeout: 3000 } }, (app) => {
    app.wsManager.addHook('onConnection', async (connection) => {
      connection.socket.close(4000, 'from the hook')
      await sleep(100)
    })
    app.get('/ws', { websocket: true }, () => {})
  })
  const client = await connect(t, `${url}/ws`)
  const started = Date.now()
  assert.equal((await closed(client)).code, 4000)
  await waitFor(() => app.wsManager.connections.size === 0, 2000, 'gone')
  assert.ok(Date.now() - started < 1500, `closed in ${Date.now() - started} ms`)
})

test('review: connectionData that throws or returns a promise is contained and leaks no bucket; a hook that closes skips the handler', async (t) => {
  let handlerRan = false
  const { app, url } = await start(t, { connectionData: (request) => { if (request.url.includes('throw')) throw new Error('data'); return request.url.includes('async') ? Promise.resolve({}) as never : {} } }, (app) => {
    app.get('/ws', { websocket: true, config: { wsManager: { hooks: { onConnection: (c) => { if (c.data !== undefined) c.close(4003, 'hook said no').catch(() => {}) } } } } }, () => { handlerRan = true })
  })
  for (const path of ['/ws?throw', '/ws?async']) {
    const client = await connect(t, `${url}${path}`)
    assert.equal((await closed(client)).code, 1011)
  }
  await waitFor(() => app.wsManager.connections.size === 0, 2000, 'none registered')
  assert.equal(app.wsManager.stats().admission.messages?.buckets, 0)
  const client = await connect(t, `${url}/ws`)
  assert.equal((await closed(client)).code, 4003)
  assert.equal(handlerRan, false)
})

test('tracing:fastify-ws-manager:handler brackets the route handler, an async one to its settlement', async (t) => {
  const seen: string[] = []
  const tracing = diagnostics.tracingChannel('fastify-ws-manager:handler')
  const subscribers = {
    start: (m: unknown) => { seen.push(`start ${(m as { connection: Connection }).connection.route}`) },
    end: () => { seen.push('end') },
    asyncStart: () => {},
    asyncEnd: () => { seen.push('asyncEnd') },
    error: () => { seen.push('error') }
  }
  tracing.subscribe(subscribers)
  t.after(() => tracing.unsubscribe(subscribers))
  const { url } = await start(t, {}, (app) => {
    app.get('/ws', { websocket: true }, async () => { await sleep(10) })
  })
  await connect(t, `${url}/ws`)
  await waitFor(() => seen.includes('asyncEnd'), 2000, 'async end traced')
  assert.equal(seen[0], 'start /ws')
  assert.ok(seen.includes('end'))
  assert.equal(seen[seen.length - 1], 'asyncEnd')
  assert.ok(!seen.includes('error'))
})
