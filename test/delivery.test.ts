import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import jwt from '@fastify/jwt'
import type { FastifyInstance } from 'fastify'
import type WebSocket from 'ws'
import { ManagedWebSocket, type Connection, type SendResult, type WsManagerOptions } from '../lib/index'
import { kSocketSend } from '../lib/symbols'
import { build, closed, connect, listen, nextMessage, waitFor } from './helper'

const SECRET = 'delivery-test-secret-that-is-long-enough'
const CHUNK = Buffer.alloc(64 * 1024, 7)

// The kernel takes a few MiB from a socket before the server's own buffer grows; a small
// receive buffer on the client and a paused reader make the server's buffer fill quickly.
function pauseReader (client: WebSocket): void {
  (client as unknown as { _socket: import('node:net').Socket })._socket.pause()
}
function resumeReader (client: WebSocket): void {
  (client as unknown as { _socket: import('node:net').Socket })._socket.resume()
}

async function streamingApp (t: TestContext, options: WsManagerOptions): Promise<{ app: FastifyInstance, url: string, connection: () => Connection }> {
  const app = await build(t, { auth: false, upgradeRateLimit: false, ...options })
  let current: Connection | null = null
  app.get('/stream', { websocket: true }, (_socket, request) => { current = request.wsConnection })
  const url = await listen(app)
  return { app, url, connection: () => current as unknown as Connection }
}

// Sends until the policy answers something other than 'sent', or `limit` messages went out;
// records the largest buffered amount seen, the memory the server holds for this peer.
async function flood (connection: Connection, limit: number): Promise<{ results: SendResult[], maxBuffered: number }> {
  const results: SendResult[] = []
  let maxBuffered = 0
  for (let i = 0; i < limit; i++) {
    const result = connection.send(CHUNK)
    results.push(typeof result === 'string' ? result : await result)
    maxBuffered = Math.max(maxBuffered, connection.bufferedAmount)
    if (results.at(-1) === 'closed') break
    if (i % 16 === 0) await new Promise((resolve) => setImmediate(resolve))
  }
  return { results, maxBuffered }
}

test("policy 'close': a paused reader is closed with 1013 and the buffer stays bounded", async (t) => {
  const highWaterMark = 256 * 1024
  const { app, url, connection } = await streamingApp(t, { backpressure: { highWaterMark, policy: 'close' }, close: { timeout: 4000 } })
  const client = await connect(t, url + '/stream')
  await waitFor(() => app.wsManager.connections.size === 1)
  pauseReader(client)
  const conn = connection()
  const { results, maxBuffered } = await flood(conn, 2000)
  assert.equal(results.at(-1), 'closed')
  assert.ok(results.filter((r) => r === 'sent').length > 4)
  assert.ok(maxBuffered <= highWaterMark + CHUNK.length * 2, `buffered ${maxBuffered}`)
  assert.equal(conn.send('after close'), 'closed')
  const seen = closed(client, 5000)
  resumeReader(client)
  assert.deepEqual(await seen, { code: 1013, reason: 'Slow consumer' })
  const stats = app.wsManager.stats().delivery
  assert.equal(stats.slowConsumerCloses, 1)
  assert.equal(stats.anonymous.slowConsumerCloses, 1)
  assert.deepEqual(stats.byUser, {}, 'anonymous connections are counted apart from every user id')
  await waitFor(() => app.wsManager.connections.size === 0)
})

test("policy 'drop': over the mark new messages are dropped and counted, the connection stays", async (t) => {
  const highWaterMark = 256 * 1024
  const { app, url, connection } = await streamingApp(t, { backpressure: { highWaterMark, policy: 'drop' } })
  const client = await connect(t, url + '/stream')
  await waitFor(() => app.wsManager.connections.size === 1)
  pauseReader(client)
  const conn = connection()
  const { results, maxBuffered } = await flood(conn, 300)
  const sent = results.filter((r) => r === 'sent').length
  const dropped = results.filter((r) => r === 'dropped').length
  assert.ok(dropped > 0 && sent > 0)
  assert.equal(sent + dropped, 300)
  assert.ok(maxBuffered <= highWaterMark + CHUNK.length * 2, `buffered ${maxBuffered}`)
  assert.equal(conn.messagesDropped, dropped)
  assert.equal(app.wsManager.stats().delivery.dropped, dropped)
  assert.equal(conn.state, 'open')

  // The application's raw socket.send() is under the same policy.
  assert.equal(conn.socket.bufferedAmount > highWaterMark, true)
  conn.socket.send(CHUNK)
  assert.equal(conn.messagesDropped, dropped + 1)

  let received = 0
  client.on('message', () => { received++ })
  resumeReader(client)
  await waitFor(() => received === sent, 10_000, 'every sent message')
  assert.equal(received, sent)
})

test("policy 'wait': send() returns a promise that resolves in order once the buffer drains", async (t) => {
  const highWaterMark = 256 * 1024
  const { app, url, connection } = await streamingApp(t, { backpressure: { highWaterMark, policy: 'wait', maxQueued: 8 * 1024 * 1024 } })
  const client = await connect(t, url + '/stream')
  await waitFor(() => app.wsManager.connections.size === 1)
  pauseReader(client)
  const conn = connection()
  const pending: Array<SendResult | Promise<SendResult>> = []
  for (let i = 0; i < 120; i++) {
    const payload = Buffer.alloc(CHUNK.length, 0)
    payload.writeUInt32BE(i, 0)
    pending.push(conn.send(payload))
  }
  assert.ok(pending.some((p) => p instanceof Promise), 'some sends had to wait')
  assert.ok(conn.bufferedAmount <= highWaterMark + CHUNK.length * 2)
  assert.equal(conn.writable, false)
  const drained = conn.waitForDrain()
  const order: number[] = []
  client.on('message', (data: Buffer) => order.push(data.readUInt32BE(0)))
  resumeReader(client)
  const results = await Promise.all(pending)
  assert.ok(results.every((r) => r === 'sent'))
  await drained
  assert.ok(conn.bufferedAmount <= conn.settings.backpressure.lowWaterMark)
  await waitFor(() => order.length === 120, 10_000, 'all messages')
  assert.deepEqual(order, Array.from({ length: 120 }, (_, i) => i))
})

test("'wait' sends still queued when the connection closes resolve 'closed'", async (t) => {
  const { app, url, connection } = await streamingApp(t, { backpressure: { highWaterMark: 128 * 1024, policy: 'wait' }, close: { timeout: 200 } })
  const client = await connect(t, url + '/stream')
  await waitFor(() => app.wsManager.connections.size === 1)
  pauseReader(client)
  const conn = connection()
  const pending: Array<SendResult | Promise<SendResult>> = []
  for (let i = 0; i < 80; i++) pending.push(conn.send(CHUNK))
  const waiting = pending.filter((p) => p instanceof Promise)
  assert.ok(waiting.length > 0)
  const drained = conn.waitForDrain()
  client.terminate()
  const results = await Promise.all(waiting)
  assert.ok(results.includes('closed'))
  await drained
})

function signer (app: FastifyInstance) {
  return (sub: string): { headers: Record<string, string> } => ({ headers: { authorization: `Bearer ${app.jwt.sign({ sub })}` } })
}

async function userApp (t: TestContext): Promise<{ app: FastifyInstance, url: string, as: (sub: string) => { headers: Record<string, string> } }> {
  const app = await build(t, { upgradeRateLimit: false }, { before: async (a) => { await a.register(jwt, { secret: SECRET }) } })
  app.get('/a', { websocket: true }, () => {})
  app.get('/b', { websocket: true }, () => {})
  const url = await listen(app)
  return { app, url, as: signer(app) }
}

test('sendToUser reaches every connection of that user and no one else', async (t) => {
  const { app, url, as } = await userApp(t)
  const alice1 = await connect(t, url + '/a', as('alice'))
  const alice2 = await connect(t, url + '/b', as('alice'))
  const bob = await connect(t, url + '/a', as('bob'))
  await waitFor(() => app.wsManager.connections.size === 3)
  let bobGot = 0
  bob.on('message', () => { bobGot++ })
  const got = [nextMessage(alice1), nextMessage(alice2)]
  assert.equal(await app.wsManager.sendToUser('alice', { type: 'note', text: 'hi' }), 2)
  for (const message of await Promise.all(got)) assert.deepEqual(JSON.parse(message), { type: 'note', text: 'hi' })
  assert.equal(await app.wsManager.sendToUser('nobody', 'x'), 0)
  assert.equal(bobGot, 0)
})

test('broadcast reaches a route or a filter, serialized once into one shared buffer', async (t) => {
  const { app, url, as } = await userApp(t)
  const clients = [
    await connect(t, url + '/a', as('u1')),
    await connect(t, url + '/a', as('u2')),
    await connect(t, url + '/a', as('u3')),
    await connect(t, url + '/b', as('u4'))
  ]
  await waitFor(() => app.wsManager.connections.size === 4)
  const counts = clients.map(() => 0)
  clients.forEach((c, i) => c.on('message', () => { counts[i]++ }))

  const seenBuffers = new Set<unknown>()
  const proto = ManagedWebSocket.prototype as unknown as Record<symbol, (...args: unknown[]) => void>
  const original = proto[kSocketSend]
  proto[kSocketSend] = function (this: unknown, data: unknown, ...rest: unknown[]) {
    seenBuffers.add(data)
    original.call(this, data, ...rest)
  }
  const stringify = JSON.stringify
  let stringifyCalls = 0
  JSON.stringify = ((...args: Parameters<typeof stringify>) => { stringifyCalls++; return stringify(...args) }) as typeof JSON.stringify
  let all: number
  try {
    all = await app.wsManager.broadcast({ type: 'tick', n: 1 })
  } finally {
    JSON.stringify = stringify
    proto[kSocketSend] = original
  }
  assert.equal(all, 4)
  assert.equal(stringifyCalls, 1, 'one JSON.stringify for four sockets')
  assert.equal(seenBuffers.size, 1, 'the same buffer went to every socket')

  assert.equal(await app.wsManager.broadcast('route only', { route: '/a' }), 3)
  assert.equal(await app.wsManager.broadcast('filtered', { filter: (c) => c.userId === 'u2' || c.userId === 'u4' }), 2)
  assert.equal(await app.wsManager.broadcast('nobody', { route: '/none' }), 0)
  await waitFor(() => counts.join() === '2,3,2,2', 2000, 'each client to get what was meant for it')
  const text = nextMessage(clients[3])
  await app.wsManager.broadcast('as text')
  assert.equal(await text, 'as text')
})

test('disconnectUser closes every connection of the user with the code given, and resolves when done', async (t) => {
  const { app, url, as } = await userApp(t)
  const a1 = await connect(t, url + '/a', as('carol'))
  const a2 = await connect(t, url + '/b', as('carol'))
  const d = await connect(t, url + '/a', as('dave'))
  await waitFor(() => app.wsManager.connections.size === 3)
  const seen = [closed(a1), closed(a2)]
  const results = await app.wsManager.disconnectUser('carol')
  assert.equal(results.length, 2)
  assert.ok(results.every((r) => r.clean && r.code === 1000))
  for (const s of await Promise.all(seen)) assert.deepEqual(s, { code: 1000, reason: 'Disconnected' })
  assert.deepEqual(app.wsManager.connections.byUser('carol'), [])

  const banned = closed(d)
  await app.wsManager.disconnectUser('dave', { code: 4003, reason: 'Banned' })
  assert.deepEqual(await banned, { code: 4003, reason: 'Banned' })
  assert.deepEqual(await app.wsManager.disconnectUser('nobody'), [])
})
