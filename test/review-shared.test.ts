// From the attacker review of the `shared` compression profile (d250758) and of the cluster
// topic recovery overlap (bb63f65): each test failed on that code. Real sockets on loopback,
// Redis on 127.0.0.1:6379 for the cluster case.
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { test, type TestContext } from 'node:test'
import type { FastifyInstance } from 'fastify'
import type { Connection } from '../lib/index'
import { transportOf } from '../lib/internals'
import { RawWebSocket } from './fixtures/raw-ws'
import { build, connectQueued, listen, waitFor } from './helper'

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

// ~1.5 KiB of JSON (over the profile's 1 KiB threshold) that deflates to ~250 bytes.
function page (n: number): Record<string, unknown> {
  return { n, items: Array.from({ length: 40 }, (_, i) => ({ id: `${n}-${i}`, title: `headline number ${i} of page ${n}` })) }
}

interface WriteBuffer { writableLength: number, writableBuffer: Array<{ chunk: unknown }> }

function writeBufferOf (connection: Connection): WriteBuffer {
  return transportOf(connection.socket as never) as unknown as WriteBuffer
}

/** Bytes of the distinct ArrayBuffers kept alive by the chunks waiting in a socket's write buffer. */
function retainedBytes (connection: Connection): number {
  const seen = new Set<ArrayBufferLike>()
  let bytes = 0
  for (const { chunk } of writeBufferOf(connection).writableBuffer) {
    if (!Buffer.isBuffer(chunk) || seen.has(chunk.buffer)) continue
    seen.add(chunk.buffer)
    bytes += chunk.buffer.byteLength
  }
  return bytes
}

/** A `shared` server with one compressed peer that stopped reading. */
async function pausedPeer (t: TestContext, backpressure: Record<string, unknown>): Promise<{ app: FastifyInstance, connection: Connection, peer: RawWebSocket }> {
  const app = await build(t, { auth: false, heartbeat: false, compression: 'shared', backpressure: backpressure as never, close: { timeout: 500 } })
  const connections: Connection[] = []
  app.get('/ws', { websocket: true }, (_socket, request) => { connections.push(request.wsConnection as Connection) })
  const port = Number(new URL(await listen(app)).port)
  const peer = await RawWebSocket.open(port, { path: '/ws', extensions: 'permessage-deflate' })
  t.after(() => peer.destroy())
  peer.socket.pause()
  await waitFor(() => connections.length === 1)
  return { app, connection: connections[0], peer }
}

/** Until the kernel's buffers are full and bytes stay in the process (incompressible sends). */
async function fillKernel (connection: Connection, send: (data: Buffer) => Promise<unknown> | unknown): Promise<void> {
  while (writeBufferOf(connection).writableLength === 0) {
    await send(randomBytes(32 * 1024))
    await sleep(1)
  }
}

/** ws's own deflates done: what bufferedAmount counts is in the socket's write buffer. */
async function settled (connection: Connection): Promise<void> {
  while (connection.bufferedAmount !== writeBufferOf(connection).writableLength) await sleep(1)
}

test('shared broadcast to a peer that stopped reading: the queued frames keep little more memory alive than bufferedAmount says (no 16 KiB zlib chunk or pool slab per frame)', async (t) => {
  const highWaterMark = 256 * 1024
  const { app, connection, peer } = await pausedPeer(t, { highWaterMark, policy: 'close' })
  await fillKernel(connection, (data) => app.wsManager.broadcast(data))
  let n = 0
  while (connection.state === 'open' && connection.bufferedAmount < highWaterMark - 4096 && n < 5000) await app.wsManager.broadcast(page(n++))
  const retained = retainedBytes(connection)
  const buffered = connection.bufferedAmount
  peer.destroy()
  // bufferedAmount counts the deflated bytes (~250 each). Before the fix each was a subarray of
  // the 16 KiB chunk deflateRawSync wrote into, alive as long as the frame waited (~60x).
  assert.ok(retained <= 4 * highWaterMark,
    `${n} broadcasts waiting for one paused reader: bufferedAmount ${buffered} B (highWaterMark ${highWaterMark}), memory kept alive ${retained} B`)
})

test('shared profile, connection.send to a peer that stopped reading: a fresh zlib context per message does not keep a 16 KiB chunk alive per frame', async (t) => {
  const highWaterMark = 256 * 1024
  const { connection, peer } = await pausedPeer(t, { highWaterMark, policy: 'close' })
  await fillKernel(connection, async (data) => { connection.send(data); await settled(connection) })
  let n = 0
  while (connection.state === 'open' && connection.bufferedAmount < highWaterMark - 4096 && n < 5000) {
    connection.send(page(n++))
    if (n % 20 === 0) await settled(connection)
  }
  await settled(connection)
  const retained = retainedBytes(connection)
  const buffered = connection.bufferedAmount
  peer.destroy()
  // The same exchange under the 'default' profile keeps ~2.5x bufferedAmount (a long-lived
  // context packs its outputs into shared chunks); a context freed after every message gave
  // each output a 16 KiB chunk of its own until the output was copied out.
  assert.ok(retained <= 4 * highWaterMark,
    `${n} sends waiting for one paused reader: bufferedAmount ${buffered} B (highWaterMark ${highWaterMark}), memory kept alive ${retained} B`)
})

test('shared profile under the drop policy: messages dropped for backpressure are neither deflated nor counted as compressed deliveries', async (t) => {
  const { app, connection, peer } = await pausedPeer(t, { highWaterMark: 64 * 1024, policy: 'drop' })
  await fillKernel(connection, (data) => app.wsManager.broadcast(data))
  const before = app.wsManager.stats()
  let took = 0
  for (let n = 0; n < 500; n++) took += await app.wsManager.broadcast(page(n))
  const after = app.wsManager.stats()
  peer.destroy()
  const dropped = after.delivery.dropped - before.delivery.dropped
  const deliveries = (after.compression.shared?.deliveries ?? 0) - (before.compression.shared?.deliveries ?? 0)
  const deflated = (after.compression.shared?.deflated ?? 0) - (before.compression.shared?.deflated ?? 0)
  assert.ok(dropped > 0, 'the paused reader was over its highWaterMark')
  assert.deepEqual({ deliveries, deflated }, { deliveries: took, deflated: took },
    `500 broadcasts to one paused reader: ${took} sent, ${dropped} dropped; stats().compression.shared says ${deliveries} compressed frames sent from ${deflated} deflates`)
})

test('cluster recovery: after a replay through offset N, a new epoch\'s offsets 1..N still reach the client (the topic expired and started over)', async (t) => {
  const prefix = `wsmreview-${randomBytes(6).toString('hex')}`
  const app = await build(t, {
    auth: false,
    heartbeat: false,
    messageRateLimit: false,
    cluster: { redis: 'redis://127.0.0.1:6379', prefix, nodeId: 'node-a', requestTimeout: 1000 },
    // The shortest history ttl allowed: a topic silent for 1 s starts over with a new epoch.
    topics: { authorize: () => true, history: { size: 100, ttl: 1000 } }
  })
  app.get('/rec', { websocket: true, config: { wsManager: { messages: {} } } }, () => {})
  const url = await listen(app)
  for (let i = 1; i <= 3; i++) await app.wsManager.publish('feed', { i })
  const { ws, next } = await connectQueued(t, `${url}/rec`)
  ws.send(JSON.stringify({ type: 'topic.subscribe', topic: 'feed' }))
  const answer = JSON.parse(await next()) as { type: string, epoch: string, offset: number }
  assert.deepEqual([answer.type, answer.offset], ['topic.subscribed', 3])
  // The topic goes silent past its ttl; the next publication opens a new epoch at offset 1.
  await sleep(1300)
  for (let i = 1; i <= 4; i++) await app.wsManager.publish('feed', { fresh: i })
  const got: Array<{ epoch: string, offset: number }> = []
  try {
    while (got.length < 4) got.push(JSON.parse(await next(1500)) as { epoch: string, offset: number })
  } catch {}
  assert.ok(got.length > 0 && got[0].epoch !== answer.epoch, 'a new epoch began')
  assert.deepEqual(got.map((m) => m.offset), [1, 2, 3, 4],
    `the new epoch's messages reached the subscriber (got offsets ${JSON.stringify(got.map((m) => m.offset))})`)
})
