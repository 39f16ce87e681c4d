// Issue 10, correctness of the close path, delivery and validation: each test here failed on
// the code before the fix it guards.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import { loadConfig, normalizeOptions, type Connection, type WsManagerOptions } from '../lib/index'
import { assertOptionInvalid, build, closed, connect, connectQueued, listen, rawPeer, waitFor, within } from './helper'

interface Started { app: FastifyInstance, url: string, connections: Connection[] }

async function start (t: TestContext, options: WsManagerOptions = {}, onSocket?: (socket: WebSocket) => void): Promise<Started> {
  const connections: Connection[] = []
  const app = await build(t, { auth: false, upgradeRateLimit: false, ...options })
  app.get('/ws', { websocket: true }, (socket, request) => {
    connections.push(request.wsConnection as Connection)
    onSocket?.(socket)
  })
  const url = await listen(app)
  return { app, url, connections }
}

async function rejectsWith (promise: unknown, code: string): Promise<void> {
  assert.ok(promise instanceof Promise, 'a promise, not a synchronous throw')
  await assert.rejects(promise, (err: Error & { code?: string }) => err.code === code)
}

test('6. a rejected close changes nothing: bad codes, reasons and timeouts reject, and the connection stays open and reachable', async (t) => {
  const { app, url, connections } = await start(t)
  const client = await connect(t, `${url}/ws`)
  await waitFor(() => connections.length === 1, 2000, 'accepted')
  const conn = connections[0]
  const manager = app.wsManager
  // disconnectUser needs a user; the connection's own close and closeAll cover the anonymous one.
  await rejectsWith(manager.closeAll({ code: 1005 }), 'FST_WSM_CLOSE_CODE_INVALID')
  await rejectsWith(manager.closeAll({ reason: 42 as unknown as string }), 'FST_WSM_ARGUMENT_INVALID')
  await rejectsWith(manager.closeAll({ timeout: Infinity }), 'FST_WSM_ARGUMENT_INVALID')
  await rejectsWith(manager.disconnectUser('nobody', { code: 1005 }), 'FST_WSM_CLOSE_CODE_INVALID')
  await rejectsWith(manager.disconnectUser('nobody', { timeout: -1 }), 'FST_WSM_ARGUMENT_INVALID')
  await rejectsWith(conn.close(1006), 'FST_WSM_CLOSE_CODE_INVALID')
  await rejectsWith(conn.close(1000, 'x', 0), 'FST_WSM_ARGUMENT_INVALID')
  await rejectsWith(manager.closer.close(conn.socket, { code: 999 }), 'FST_WSM_CLOSE_CODE_INVALID')
  assert.equal(conn.state, 'open')
  assert.equal(manager.stats().close.closing, 0)
  // Everything that skips closing connections still reaches it.
  const got = new Promise((resolve) => client.once('message', resolve))
  assert.equal(await manager.broadcast('still here'), 1)
  assert.equal(String(await got), 'still here')
  // And a good close afterwards closes it.
  const end = closed(client)
  const [result] = await manager.closeAll({ code: 4000, reason: 'bye' })
  assert.equal(result.clean, true)
  assert.deepEqual(await end, { code: 4000, reason: 'bye' })
})

test('6. disconnectUser with a bad code leaves a user connection open, under heartbeat and idle', async (t) => {
  const { default: jwt } = await import('@fastify/jwt')
  const app = await build(t, { upgradeRateLimit: false, heartbeat: { pingInterval: 100, pongTimeout: 50, maxMissedPongs: 1 } }, {
    before: async (a) => { await a.register(jwt, { secret: 'correctness-secret-0123456789-abcdefghij' }) }
  })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  const client = await connect(t, `${url}/ws`, { headers: { authorization: `Bearer ${app.jwt.sign({ sub: 'u' })}` }, autoPong: false })
  await rejectsWith(app.wsManager.disconnectUser('u', { code: 1005 }), 'FST_WSM_CLOSE_CODE_INVALID')
  await rejectsWith(app.wsManager.disconnectUser('u', { reason: 42 as unknown as string }), 'FST_WSM_ARGUMENT_INVALID')
  assert.equal(app.wsManager.connections.byUser('u')[0].state, 'open')
  // The heartbeat still watches it: the silent client is found dead and the registry empties.
  await waitFor(() => app.wsManager.connections.size === 0, 3000, 'heartbeat ended it')
  assert.equal(client.readyState === WebSocket.CLOSED || client.readyState === WebSocket.CLOSING, true)
})

test('7. an application close listener that throws does not stall a server-started close', async (t) => {
  const { app, url, connections } = await start(t, { close: { timeout: 5000 } }, (socket) => {
    socket.on('close', () => { throw new Error('listener bug') })
  })
  const client = await connect(t, `${url}/ws`)
  await waitFor(() => connections.length === 1, 2000, 'accepted')
  const started = performance.now()
  const result = await within(connections[0].close(1000, 'done'), 2000, 'close')
  assert.equal(result.clean, true)
  assert.ok(performance.now() - started < 1000, 'resolved with the handshake, not at the 5 s timeout')
  assert.equal(app.wsManager.stats().close.closing, 0)
  assert.equal(app.wsManager.connections.size, 0)
  client.terminate()
})

test("8. under 'wait', one paused reader neither holds up a broadcast nor queues without bound", async (t) => {
  const highWaterMark = 64 * 1024
  const { app, url, connections } = await start(t, { backpressure: { policy: 'wait', highWaterMark, maxQueued: 256 * 1024 }, messageRateLimit: false })
  const slow = await connect(t, `${url}/ws`)
  const fast = await connect(t, `${url}/ws`)
  await waitFor(() => connections.length === 2, 2000, 'accepted')
  ;(slow as unknown as { _socket: Duplex })._socket.pause()
  let fastGot = 0
  fast.on('message', () => { fastGot++ })
  const slowEnd = closed(slow, 10_000)
  const chunk = Buffer.alloc(16 * 1024, 1)
  let rounds = 0
  // Every broadcast resolves at once, whatever the paused reader does.
  while (connections[0].state === 'open' && rounds < 2000) {
    const count = await within(app.wsManager.broadcast(chunk), 500, 'broadcast')
    assert.ok(count >= 1)
    rounds++
    if (rounds % 16 === 0) await new Promise((resolve) => setImmediate(resolve))
  }
  assert.notEqual(connections[0].state, 'open', 'the slow reader was closed once its queue was full')
  // Bounded: buffer + queue never passed high-water mark + maxQueued (plus one chunk in flight).
  assert.ok(rounds * chunk.length < 8 * 1024 * 1024, `${rounds} rounds`)
  await waitFor(() => fastGot === rounds, 5000, 'fast reader got every message')
  ;(slow as unknown as { _socket: Duplex })._socket.resume()
  assert.equal((await slowEnd).code === 1013 || (await slowEnd).code === 1006, true)
  assert.equal(app.wsManager.stats().delivery.slowConsumerCloses, 1)
})

test('9. a Blob sent on the socket is counted in bytes, never NaN', async (t) => {
  const { app, url, connections } = await start(t, {}, (socket) => {
    socket.send(new Blob(['hello', ' blob']) as unknown as Buffer)
  })
  const { next } = await connectQueued(t, `${url}/ws`)
  assert.equal(await next(), 'hello blob')
  assert.equal(connections[0].bytesOut, 10)
  await app.wsManager.closeAll()
  assert.equal(Number.isFinite(app.wsManager.stats().compression.payloadBytesOut), true)
})

test('10. validation holes are coded errors naming the option', () => {
  assertOptionInvalid(() => normalizeOptions({ allowedOrigins: ['example.com'] }), 'allowedOrigins')
  assertOptionInvalid(() => normalizeOptions({ allowedOrigins: ['https://a.com/'] }), 'allowedOrigins')
  assertOptionInvalid(() => normalizeOptions({ allowedOrigins: [] }), 'allowedOrigins')
  assertOptionInvalid(() => normalizeOptions({ auth: { userIdClaim: '' } }), 'auth.userIdClaim')
  assertOptionInvalid(() => normalizeOptions({ auth: { subprotocolPrefix: 'chat' } }), 'auth.subprotocolPrefix')
  assertOptionInvalid(() => normalizeOptions({ auth: { subprotocolPrefix: 'bearer .' } }), 'auth.subprotocolPrefix')
  assertOptionInvalid(() => normalizeOptions({ onUserLimit: 'closeOldest' }), 'onUserLimit')
  assertOptionInvalid(() => normalizeOptions({ ws: { maxPayload: 5 } as never }), 'ws.maxPayload')
  assertOptionInvalid(() => normalizeOptions({ auth: { failureLimit: { max: 10, ipMax: 5 } } }), 'auth.failureLimit.ipMax')
  assertOptionInvalid(() => normalizeOptions({ auth: { sources: ['header', 'header'] as never } }), 'auth.sources')
  // What is fine stays fine.
  assert.deepEqual(normalizeOptions({ allowedOrigins: ['https://a.com', 'http://localhost:3000', /\.example\.com$/] }).allowedOrigins.length, 3)
  assert.equal((normalizeOptions({ messageRateLimit: { max: 1e9 } }).messageRateLimit as { burst: number }).burst, 2e9)
  assert.equal(normalizeOptions({ onUserLimit: 'closeOldest', maxConnectionsPerUser: 2 }).onUserLimit, 'closeOldest')
  assert.equal(normalizeOptions({ ws: { maxPendingAutoPongs: 10 } as never }).ws.maxPendingAutoPongs, 10)
  // Every variable that is set is validated, used or not.
  for (const [name, value] of [['COMPRESSION_LEVEL', '12'], ['PING_INTERVAL', 'soon'], ['MESSAGE_RATE_POLICY', 'ban'], ['MAX_CONNECTIONS_PER_IP', '-1']]) {
    const env = { COMPRESSION_ENABLED: 'false', HEARTBEAT_ENABLED: 'false', MESSAGE_RATE_LIMIT: 'off', [name]: value }
    assert.throws(() => loadConfig(env), (err: Error & { code?: string }) => err.code === 'FST_WSM_ENV_INVALID' && err.message.includes(name), name)
  }
  assert.equal(loadConfig({ MAX_CONNECTIONS_PER_IP: '5' }).options.maxConnectionsPerIp, 5)
})

test('10. per-call timeouts out of range reject with a coded error', async (t) => {
  const { app } = await start(t)
  await rejectsWith(app.wsManager.closeAll({ timeout: 1.5 }), 'FST_WSM_ARGUMENT_INVALID')
  await rejectsWith(app.wsManager.closeAll({ timeout: 600_001 }), 'FST_WSM_ARGUMENT_INVALID')
})

test("11. shutdown touches only what the plugin added: another plugin's upgrade listener and the application's socket error listeners stay", async (t) => {
  const { app, url, connections } = await start(t)
  const otherUpgrade = (_request: IncomingMessage, _socket: Duplex): void => {}
  app.server.on('upgrade', otherUpgrade)
  const appErrors: Error[] = []
  const onAppError = (err: Error): void => { appErrors.push(err) }
  app.websocketServer.on('connection', (socket: WebSocket) => socket.on('error', onAppError))
  await connect(t, `${url}/ws`)
  await waitFor(() => connections.length === 1, 2000, 'accepted')
  const socket = connections[0].socket
  assert.ok(socket.listeners('error').includes(onAppError), "the application's error listener is still there")
  assert.equal(socket.listenerCount('error'), 2, "the application's and the plugin's; @fastify/websocket's closure is gone")
  socket.emit('error', new Error('boom'))
  assert.equal(appErrors.length, 1)
  await app.close()
  assert.ok(app.server.listeners('upgrade').includes(otherUpgrade), 'the other listener survived shutdown')
  app.server.removeListener('upgrade', otherUpgrade)
})

test('13. a raw peer the heartbeat found dead is terminated at once; stats and health agree on what is open', async (t) => {
  const { app, url } = await start(t, { heartbeat: { pingInterval: 100, pongTimeout: 50, maxMissedPongs: 1 }, close: { timeout: 10_000 } })
  await rawPeer(t, url, '/ws')
  await rawPeer(t, url, '/ws')
  const healthy = await connect(t, `${url}/ws`)
  await waitFor(() => app.wsManager.stats().connections.heartbeatClosed === 2, 3000, 'two timeouts')
  const health = await app.wsManager.checkConnectionHealth()
  assert.equal(health.activeConnections, app.wsManager.stats().connections.active)
  assert.equal(health.activeConnections, 1)
  await waitFor(() => app.wsManager.connections.size === 1, 1500, 'dead peers gone well before the 10 s close timeout')
  assert.equal(app.wsManager.stats().close.forced, 2)
  healthy.terminate()
})
