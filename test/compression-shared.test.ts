// The `shared` compression profile (issue 17): no context takeover either way, a broadcast
// deflated once for all its compressed recipients, and no zlib context kept between messages.
// Real sockets: ws clients with their own inflate, and a raw peer that reads the frames.
import assert from 'node:assert/strict'
import { test, type TestContext } from 'node:test'
import zlib from 'node:zlib'
import type { FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import { resolveCompressionProfile } from '../lib/compression-profiles'
import { deflateContexts } from '../lib/internals'
import type { Connection } from '../lib/index'
import { RawWebSocket, type RawFrame } from './fixtures/raw-ws'
import { assertOptionInvalid, build, connect, listen, nextMessage, waitFor } from './helper'

// Text that compresses well but not to nothing: ~12 KiB of feed-like JSON.
function page (n: number): Record<string, unknown> {
  return { n, items: Array.from({ length: 120 }, (_, i) => ({ id: `${n}-${i}`, title: `headline number ${i} of page ${n}`, score: (i * 37) % 101 })) }
}

interface Server { app: FastifyInstance, url: string, port: number, sockets: Connection[] }

async function serve (t: TestContext, compression: unknown = 'shared'): Promise<Server> {
  const app = await build(t, { auth: false, compression: compression as 'shared' })
  const sockets: Connection[] = []
  app.get('/ws', { websocket: true }, (_socket, request) => {
    sockets.push(request.wsConnection as Connection)
  })
  const url = await listen(app)
  return { app, url: `${url}/ws`, port: Number(new URL(url).port), sockets }
}

/** One raw frame of a compressed text message, inflated as RFC 7692 says. */
function inflate (frame: RawFrame, bits = 15): string {
  return zlib.inflateRawSync(Buffer.concat([frame.payload, Buffer.from([0, 0, 0xff, 0xff])]), { windowBits: bits, finishFlush: zlib.constants.Z_SYNC_FLUSH }).toString()
}

test('the shared profile negotiates no context takeover either way, and is refused half-set', async (t) => {
  const { port } = await serve(t)
  const raw = await RawWebSocket.open(port, { path: '/ws', extensions: 'permessage-deflate; client_max_window_bits' })
  t.after(() => raw.destroy())
  const negotiated = raw.headers['sec-websocket-extensions']
  assert.match(negotiated, /server_no_context_takeover/)
  assert.match(negotiated, /client_no_context_takeover/)
  assert.equal(resolveCompressionProfile('shared').shared, true)
  assertOptionInvalid(() => resolveCompressionProfile({ shared: true }), 'compression.shared')
  assertOptionInvalid(() => resolveCompressionProfile({ shared: true, serverNoContextTakeover: true }), 'compression.shared')
  assertOptionInvalid(() => resolveCompressionProfile({ shared: 'yes' }), 'compression.shared')
  assert.equal(resolveCompressionProfile({ shared: true, serverNoContextTakeover: true, clientNoContextTakeover: true }).shared, true)
})

test('a broadcast to many compressed connections deflates once, and each one inflates it', async (t) => {
  const { app, url } = await serve(t)
  const clients = await Promise.all(Array.from({ length: 20 }, () => connect(t, url)))
  await waitFor(() => app.wsManager.stats().connections.active === 20)
  const before = app.wsManager.stats().compression
  const got = clients.map((ws) => nextMessage(ws))
  assert.equal(await app.wsManager.broadcast(page(1)), 20)
  for (const text of await Promise.all(got)) assert.deepEqual(JSON.parse(text), page(1))
  const shared = app.wsManager.stats().compression.shared
  assert.deepEqual([shared?.deflated, shared?.deliveries], [1, 20], 'one deflate, twenty compressed deliveries')
  const after = app.wsManager.stats().compression
  assert.ok(after.wireBytesOut - before.wireBytesOut < (after.payloadBytesOut - before.payloadBytesOut) / 3, 'the wire carried the compressed bytes')
})

test('the frame on the wire is the one deflate, RSV1 set, for a peer with a smaller window too', async (t) => {
  const { app, port } = await serve(t)
  const full = await RawWebSocket.open(port, { path: '/ws', extensions: 'permessage-deflate' })
  const small = await RawWebSocket.open(port, { path: '/ws', extensions: 'permessage-deflate; server_max_window_bits=10' })
  const plain = await RawWebSocket.open(port, { path: '/ws' })
  t.after(() => { full.destroy(); small.destroy(); plain.destroy() })
  assert.match(small.headers['sec-websocket-extensions'], /server_max_window_bits=10/)
  await waitFor(() => app.wsManager.stats().connections.active === 3)
  await app.wsManager.broadcast(page(2))
  const [a, b, c] = await Promise.all([full.nextFrame(), small.nextFrame(), plain.nextFrame()])
  assert.deepEqual([a.rsv1, b.rsv1, c.rsv1], [true, true, false])
  assert.deepEqual(JSON.parse(inflate(a)), page(2))
  // A peer told 2^10 gets distances within 2^10: its own inflater with that window takes it.
  assert.deepEqual(JSON.parse(inflate(b, 10)), page(2))
  assert.deepEqual(JSON.parse(c.payload.toString()), page(2))
  assert.equal(app.wsManager.stats().compression.shared?.deflated, 2, 'one deflate per window among the recipients')
})

test('below the threshold a broadcast goes uncompressed; publish shares the deflate too', async (t) => {
  const app = await build(t, { auth: false, compression: 'shared' })
  app.get('/ws', { websocket: true }, (_socket, request) => {
    request.wsConnection?.subscribe('news').catch(() => {})
  })
  const port = Number(new URL(await listen(app)).port)
  const peers = await Promise.all([0, 1].map(() => RawWebSocket.open(port, { path: '/ws', extensions: 'permessage-deflate' })))
  t.after(() => { for (const p of peers) p.destroy() })
  await waitFor(() => app.wsManager.topics.subscribers('news')?.size === 2)
  await app.wsManager.broadcast({ small: true })
  for (const p of peers) assert.equal((await p.nextFrame()).rsv1, false)
  await app.wsManager.publish('news', page(3))
  for (const p of peers) {
    const frame = await p.nextFrame()
    assert.equal(frame.rsv1, true)
    assert.deepEqual(JSON.parse(inflate(frame)), page(3))
  }
  assert.equal(app.wsManager.stats().compression.shared?.deflated, 1)
})

test('order holds when a shared frame follows a message ws is still deflating', async (t) => {
  const { app, url, sockets } = await serve(t)
  const ws = await connect(t, url)
  await waitFor(() => sockets.length === 1)
  const seen: number[] = []
  ws.on('message', (data) => seen.push((JSON.parse(String(data)) as { n: number }).n))
  // connection.send deflates asynchronously in ws; the broadcasts right after must wait for it.
  for (let n = 0; n < 30; n++) {
    if (n % 3 === 0) sockets[0].send(page(n))
    else await app.wsManager.broadcast(page(n))
  }
  await waitFor(() => seen.length === 30)
  assert.deepEqual(seen, Array.from({ length: 30 }, (_, n) => n))
})

test('an idle connection keeps no zlib context once a message went each way', async (t) => {
  const { app, url, sockets } = await serve(t)
  const ws = await connect(t, url)
  await waitFor(() => sockets.length === 1)
  const echoed = nextMessage(ws)
  sockets[0].socket.on('message', (data) => sockets[0].send(data, { binary: false }))
  ws.send(JSON.stringify(page(4)))
  assert.deepEqual(JSON.parse(await echoed), page(4))
  const socket = sockets[0].socket as unknown as WebSocket
  await waitFor(() => !deflateContexts(socket).deflate && !deflateContexts(socket).inflate, 2000, 'both contexts freed')
  // The default profile keeps them: the same exchange leaves both in place.
  const other = await serve(t, 'default')
  const ws2 = await connect(t, other.url, { perMessageDeflate: true })
  await waitFor(() => other.sockets.length === 1)
  other.sockets[0].socket.on('message', (data) => other.sockets[0].send(data, { binary: false }))
  const back = nextMessage(ws2)
  ws2.send(JSON.stringify(page(5)))
  await back
  assert.deepEqual(deflateContexts(other.sockets[0].socket as unknown as WebSocket), { deflate: true, inflate: true })
  assert.ok(app.wsManager.stats().connections.active === 1)
})

test('hostile: a peer that sends garbage as a compressed frame is closed, and the next peer still works', async (t) => {
  const { app, port, url } = await serve(t)
  const raw = await RawWebSocket.open(port, { path: '/ws', extensions: 'permessage-deflate' })
  t.after(() => raw.destroy())
  raw.send({ opcode: 1, rsv1: true, payload: Buffer.from('not deflate at all, not at all') })
  const frame = await raw.nextFrame()
  assert.equal(frame.opcode, 8)
  await waitFor(() => app.wsManager.stats().connections.active === 0)
  const ws = await connect(t, url)
  const got = nextMessage(ws)
  await app.wsManager.broadcast(page(6))
  assert.deepEqual(JSON.parse(await got), page(6))
})
