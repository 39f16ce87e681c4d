import assert from 'node:assert/strict'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { test, type TestContext } from 'node:test'
import zlib from 'node:zlib'
import WebSocket, { WebSocketServer, type ServerOptions } from 'ws'
import { CompressionManager } from '../lib/compression'
import {
  FRAME_SIZE_PROFILES, FrameSizeValidator, MAX_MESSAGE_SIZE, frameSizeServerOptions,
  isFrameSizeError, resolveFrameSizeProfile, type WarnLogger
} from '../lib/frame-size'
import { RawWebSocket, closeCodeOf } from './fixtures/raw-ws'
import { assertOptionInvalid } from './helper'

const MiB = 1024 * 1024

interface Logged { obj: Record<string, unknown>, msg: string }

function capture (): { log: WarnLogger, lines: Logged[] } {
  const lines: Logged[] = []
  return { lines, log: { warn: (obj, msg) => { lines.push({ obj: obj as Record<string, unknown>, msg }) } } }
}

const assertInvalid = assertOptionInvalid

interface Server {
  wss: WebSocketServer
  port: number
  url: string
  /** Errors the server's sockets emitted. */
  errors: Error[]
  /** Sizes of the messages the server received. */
  received: number[]
}

/**
 * A plain ws server (not the plugin) wired the way the plugin will be: every message goes
 * through observe(), every size error to recordViolation().
 */
async function serve (t: TestContext, validator: FrameSizeValidator, options: ServerOptions = {}): Promise<Server> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, ...validator.getServerOptions(), ...options })
  await once(wss, 'listening')
  const server: Server = { wss, port: (wss.address() as AddressInfo).port, url: '', errors: [], received: [] }
  server.url = `ws://127.0.0.1:${server.port}`
  let n = 0
  wss.on('connection', (ws) => {
    const connectionId = `c${++n}`
    ws.on('message', (data: Buffer) => {
      server.received.push(data.length)
      validator.observe(data.length, 'alice', connectionId)
    })
    ws.on('error', (err) => {
      server.errors.push(err)
      if (isFrameSizeError(err)) validator.recordViolation('alice', connectionId)
    })
  })
  t.after(() => new Promise<void>((resolve) => {
    for (const ws of wss.clients) ws.terminate()
    wss.close(() => resolve())
  }))
  return server
}

async function connect (t: TestContext, url: string, options: WebSocket.ClientOptions = {}): Promise<WebSocket> {
  const ws = new WebSocket(url, options)
  t.after(() => ws.terminate())
  await once(ws, 'open')
  return ws
}

function closeOf (ws: WebSocket, ms = 5000): Promise<number> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no close within ${ms} ms`)), ms)
    ws.once('close', (code) => {
      clearTimeout(timer)
      resolve(code)
    })
  })
}

async function waitFor (predicate: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

async function rawConnect (t: TestContext, port: number, extensions?: string): Promise<RawWebSocket> {
  const raw = await RawWebSocket.connect(port, extensions)
  t.after(() => raw.destroy())
  assert.equal(raw.statusCode, 101)
  return raw
}

/** `size` zero bytes as one permessage-deflate message body (raw deflate, sync flush, tail removed). */
async function deflatedZeros (size: number): Promise<Buffer> {
  const deflate = zlib.createDeflateRaw({ level: 9 })
  const out: Buffer[] = []
  deflate.on('data', (chunk: Buffer) => out.push(chunk))
  const block = Buffer.alloc(MiB)
  for (let left = size; left > 0; left -= block.length) {
    if (!deflate.write(left >= block.length ? block : block.subarray(0, left))) await once(deflate, 'drain')
  }
  await new Promise<void>((resolve) => deflate.flush(zlib.constants.Z_SYNC_FLUSH, () => resolve()))
  deflate.close()
  const body = Buffer.concat(out)
  return body.subarray(0, body.length - 4)
}

test('profiles have the documented limits', () => {
  assert.deepEqual(FrameSizeValidator.createDefault().getStats().maxMessageSize, MiB)
  assert.equal(FrameSizeValidator.createDefault().warnThreshold, 512 * 1024)
  assert.equal(FrameSizeValidator.createStrict().maxMessageSize, 256 * 1024)
  assert.equal(FrameSizeValidator.createStrict().warnThreshold, 128 * 1024)
  assert.equal(FrameSizeValidator.createLenient().maxMessageSize, 10 * MiB)
  assert.equal(FrameSizeValidator.createLenient().warnThreshold, 5 * MiB)
  const v = new FrameSizeValidator()
  assert.equal(v.maxMessageSize, MiB)
  assert.equal(v.warnThreshold, 512 * 1024)
  const half = new FrameSizeValidator({ maxMessageSize: 1001 })
  assert.equal(half.warnThreshold, 500)
})

test('resolveFrameSizeProfile takes a name or limits', () => {
  assert.deepEqual(resolveFrameSizeProfile('default'), { maxMessageSize: MiB, warnThreshold: 512 * 1024 })
  assert.deepEqual(resolveFrameSizeProfile('strict'), FRAME_SIZE_PROFILES.strict)
  assert.deepEqual(resolveFrameSizeProfile('lenient'), FRAME_SIZE_PROFILES.lenient)
  assert.deepEqual(resolveFrameSizeProfile({ maxMessageSize: 4096, warnThreshold: 1000 }), { maxMessageSize: 4096, warnThreshold: 1000 })
  assert.deepEqual(resolveFrameSizeProfile({ maxMessageSize: 4096 }), { maxMessageSize: 4096, warnThreshold: 2048 })
  assert.deepEqual(resolveFrameSizeProfile({ maxMessageSize: MAX_MESSAGE_SIZE }).maxMessageSize, 2 ** 30)
  // The result is a copy: changing it cannot change the built-in profile.
  resolveFrameSizeProfile('default').maxMessageSize = 1
  assert.equal(FRAME_SIZE_PROFILES.default.maxMessageSize, MiB)
})

test('invalid frame size options are refused with the coded error', () => {
  assertInvalid(() => resolveFrameSizeProfile('huge'), 'frameSize')
  assertInvalid(() => resolveFrameSizeProfile('toString'), 'frameSize')
  assertInvalid(() => resolveFrameSizeProfile(null), 'frameSize')
  assertInvalid(() => resolveFrameSizeProfile([]), 'frameSize')
  assertInvalid(() => resolveFrameSizeProfile(1024), 'frameSize')
  assertInvalid(() => resolveFrameSizeProfile({ maxMessageSize: 0 }), 'frameSize.maxMessageSize')
  assertInvalid(() => resolveFrameSizeProfile({ maxMessageSize: 1.5 }), 'frameSize.maxMessageSize')
  assertInvalid(() => resolveFrameSizeProfile({ maxMessageSize: '1024' }), 'frameSize.maxMessageSize')
  assertInvalid(() => resolveFrameSizeProfile({}), 'frameSize.maxMessageSize')
  // 2 GiB would wrap to a negative number in ws's `maxPayload | 0`, which means no limit at all.
  assertInvalid(() => resolveFrameSizeProfile({ maxMessageSize: 2 * 1024 * MiB }), 'frameSize.maxMessageSize')
  assertInvalid(() => resolveFrameSizeProfile({ maxMessageSize: 1000, warnThreshold: 2000 }), 'frameSize.warnThreshold')
  assertInvalid(() => resolveFrameSizeProfile({ maxMessageSize: 1000, warnThreshold: 0 }), 'frameSize.warnThreshold')
  assertInvalid(() => resolveFrameSizeProfile({ maxMessageSize: 1000, max: 1 }), 'frameSize.max')
  assertInvalid(() => resolveFrameSizeProfile('bogus', 'routes.chat.frameSize'), 'routes.chat.frameSize')
  assertInvalid(() => new FrameSizeValidator({ maxMessageSize: 1000, warnThreshold: 2000 }), 'frameSize.warnThreshold')
  assertInvalid(() => new FrameSizeValidator({ maxMessageSize: -1 }), 'frameSize.maxMessageSize')
  assertInvalid(() => new FrameSizeValidator({ warnThreshold: 2 * MiB }), 'frameSize.warnThreshold')
})

test('observe classifies, counts and logs without building objects for ordinary messages', () => {
  const { log, lines } = capture()
  const v = new FrameSizeValidator({ maxMessageSize: 1000, warnThreshold: 600, log })
  assert.equal(v.observe(0, 'u1', 'c1'), 0)
  assert.equal(v.observe(599, 'u1', 'c1'), 0)
  assert.equal(lines.length, 0, 'ordinary messages are not logged')
  assert.equal(v.observe(600, 'u1', 'c1'), 1, 'at the warning threshold')
  assert.equal(v.observe(1000, 'u1', 'c1'), 1, 'at the limit: allowed, with a warning')
  assert.equal(v.observe(1001, 'u1', 'c1'), 2, 'over the limit')
  assert.equal(v.observe(5000, null, 'c2'), 2)

  const s = v.getStats()
  assert.equal(s.messagesValidated, 6)
  assert.equal(s.warnings, 2)
  assert.equal(s.violations, 2)
  assert.equal(s.largestMessage, 5000)
  assert.deepEqual(s.violationsByUser, { u1: 1 })
  assert.equal(s.violationsAnonymous, 1)
  assert.deepEqual(s.violationsByConnection, { c1: 1, c2: 1 })

  assert.equal(lines.length, 4)
  assert.deepEqual(lines.map((l) => l.msg), ['large message', 'large message', 'message over size limit', 'message over size limit'])
  assert.deepEqual(lines[0].obj, { userId: 'u1', connectionId: 'c1', size: 600, warnThreshold: 600, maxMessageSize: 1000 })
  assert.equal(lines[3].obj.userId, null)
})

test('validateFrameSize describes the verdict; validateAndHandle closes with 1009', () => {
  const v = new FrameSizeValidator({ maxMessageSize: 100, warnThreshold: 50 })
  assert.deepEqual(v.validateFrameSize(10, 'u', 'c'), { valid: true, frameSize: 10, maxSize: 100, warning: false })
  assert.deepEqual(v.validateFrameSize(50, 'u', 'c'), { valid: true, frameSize: 50, maxSize: 100, warning: true })
  assert.deepEqual(v.validateFrameSize(101, 'u', 'c'), { valid: false, frameSize: 101, maxSize: 100, warning: false })

  const closes: Array<[number | undefined, unknown]> = []
  const ws = { close: (code?: number, reason?: unknown) => { closes.push([code, reason]) } }
  assert.equal(v.validateAndHandle(ws, 100, 'u', 'c'), true)
  assert.deepEqual(closes, [])
  assert.equal(v.validateAndHandle(ws, 101, 'u', 'c'), false)
  assert.deepEqual(closes, [[1009, 'Message too large']])
  assert.equal(v.getStats().violations, 2)
})

test('recordViolation counts per user and connection, bounded; reset and summary', () => {
  const { log, lines } = capture()
  const v = new FrameSizeValidator({ maxMessageSize: 100, log })
  v.recordViolation('bob', 'c1')
  v.recordViolation('bob', 'c2', 5000)
  v.recordViolation(null, 'c3')
  let s = v.getStats()
  assert.equal(s.violations, 3)
  assert.equal(s.messagesValidated, 0, 'refused messages were never delivered')
  assert.equal(s.largestMessage, 0)
  assert.deepEqual(s.violationsByUser, { bob: 2 })
  assert.equal(s.violationsAnonymous, 1, 'anonymous violations are apart from every user id')
  assert.deepEqual(s.violationsByConnection, { c1: 1, c2: 1, c3: 1 })
  assert.deepEqual(lines[1], { msg: 'message over size limit', obj: { userId: 'bob', connectionId: 'c2', size: 5000, maxMessageSize: 100 } })
  assert.equal(lines[0].obj.size, null)

  // Ids come from clients: past 10,000 keys, new ones are summed apart.
  for (let i = 0; i < 10_050; i++) v.recordViolation(`user-${i}`, 'c1')
  v.recordViolation('(anonymous)', 'c1')
  v.recordViolation('(other)', 'c1')
  s = v.getStats()
  assert.equal(Object.keys(s.violationsByUser).length, 10_000)
  assert.equal(s.violationsUntrackedUsers, 53)
  assert.equal(s.violationsAnonymous, 1, 'a user named (anonymous) is not counted as anonymous')

  v.observe(80, 'x', 'y')
  assert.match(v.getSummary(), /^frame size: limit 100 B \(warn at 50 B\), 1 messages validated, largest 80 B, 1 warnings, 10055 violations by 10000 users$/)
  v.reset()
  s = v.getStats()
  assert.deepEqual(s, {
    maxMessageSize: 100,
    warnThreshold: 50,
    messagesValidated: 0,
    warnings: 0,
    violations: 0,
    largestMessage: 0,
    violationsByUser: {},
    violationsAnonymous: 0,
    violationsUntrackedUsers: 0,
    violationsByConnection: {}
  })
})

test('getServerOptions derives ws limits from the frame limit', () => {
  assert.deepEqual(FrameSizeValidator.createDefault().getServerOptions(), { maxPayload: MiB, maxFragments: 1024, maxBufferedChunks: 8192 })
  assert.deepEqual(FrameSizeValidator.createStrict().getServerOptions(), { maxPayload: 256 * 1024, maxFragments: 256, maxBufferedChunks: 2048 })
  assert.deepEqual(FrameSizeValidator.createLenient().getServerOptions(), { maxPayload: 10 * MiB, maxFragments: 10_240, maxBufferedChunks: 81_920 })
  assert.deepEqual(frameSizeServerOptions(100), { maxPayload: 100, maxFragments: 16, maxBufferedChunks: 1024 })
  assert.deepEqual(frameSizeServerOptions(MAX_MESSAGE_SIZE), { maxPayload: MAX_MESSAGE_SIZE, maxFragments: 16_384, maxBufferedChunks: 262_144 })
})

test('isFrameSizeError recognises ws size errors only', () => {
  assert.equal(isFrameSizeError(Object.assign(new RangeError('x'), { code: 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' })), true)
  assert.equal(isFrameSizeError({ code: 'WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH' }), true)
  assert.equal(isFrameSizeError({ code: 'WS_ERR_INVALID_UTF8' }), false)
  assert.equal(isFrameSizeError(new Error('x')), false)
  assert.equal(isFrameSizeError(null), false)
  assert.equal(isFrameSizeError('WS_ERR_UNSUPPORTED_MESSAGE_LENGTH'), false)
})

test('a ws server with getServerOptions() accepts 1 MiB and closes 1 MiB + 1 with 1009', async (t) => {
  const validator = FrameSizeValidator.createDefault()
  const server = await serve(t, validator)
  const ws = await connect(t, server.url, { perMessageDeflate: false })

  ws.send(Buffer.alloc(MiB))
  await waitFor(() => server.received.length === 1, 5000, 'the 1 MiB message')
  assert.deepEqual(server.received, [MiB])
  assert.equal(validator.getStats().warnings, 1, '1 MiB is at or over the 512 KiB warning threshold')

  const closed = closeOf(ws)
  ws.send(Buffer.alloc(MiB + 1))
  assert.equal(await closed, 1009)
  await waitFor(() => server.errors.length === 1, 2000, 'the server-side error')
  assert.equal((server.errors[0] as Error & { code: string }).code, 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH')
  assert.deepEqual(server.received, [MiB], 'the oversized message was never delivered')
  const s = validator.getStats()
  assert.equal(s.violations, 1)
  assert.deepEqual(s.violationsByUser, { alice: 1 })
  assert.deepEqual(s.violationsByConnection, { c1: 1 })
})

test('a frame header claiming 1 GiB is refused at once, without buffering', async (t) => {
  const validator = FrameSizeValidator.createDefault()
  const server = await serve(t, validator)
  const raw = await rawConnect(t, server.port)
  const before = process.memoryUsage()

  // Only the 14-byte header: the server must answer without waiting for any payload.
  raw.send({ opcode: 2, declaredLength: 1024 * MiB })
  const frame = await raw.nextFrame(2000)
  assert.equal(frame.opcode, 8)
  assert.equal(closeCodeOf(frame), 1009)
  await raw.waitEnded(2000)

  // Had the server tried to buffer or allocate the claimed payload, this would be 1 GiB.
  const after = process.memoryUsage()
  assert.ok(after.rss - before.rss < 50 * MiB, `rss grew ${after.rss - before.rss} bytes`)
  assert.ok(after.arrayBuffers - before.arrayBuffers < 50 * MiB, `arrayBuffers grew ${after.arrayBuffers - before.arrayBuffers} bytes`)
  await waitFor(() => validator.getStats().violations === 1, 2000, 'the violation to be recorded')
  assert.deepEqual(server.received, [])
})

test('a message split into more fragments than maxFragments is refused with 1008', async (t) => {
  const validator = new FrameSizeValidator({ maxMessageSize: 4096 })
  assert.equal(validator.getServerOptions().maxFragments, 16)
  const server = await serve(t, validator)
  const raw = await rawConnect(t, server.port)
  const piece = Buffer.alloc(10, 0x61)

  const fragmented = (count: number): void => {
    for (let i = 0; i < count; i++) raw.send({ opcode: i === 0 ? 1 : 0, fin: i === count - 1, payload: piece })
  }
  fragmented(16)
  await waitFor(() => server.received.length === 1, 2000, 'the 16-fragment message')
  assert.deepEqual(server.received, [160])

  fragmented(17)
  const frame = await raw.nextFrame(2000)
  assert.equal(closeCodeOf(frame), 1008)
  await raw.waitEnded(2000)
  assert.deepEqual(server.received, [160])
  assert.equal(validator.getStats().violations, 0, 'too many fragments is not a size violation')
})

test('a small compressed message that inflates past the limit gets 1009 (ws client)', async (t) => {
  const validator = FrameSizeValidator.createDefault()
  const server = await serve(t, validator, { perMessageDeflate: CompressionManager.createDefault().getCompressionOptions() })
  const ws = await connect(t, server.url)
  assert.equal(ws.extensions, 'permessage-deflate')
  const socket = (ws as unknown as { _socket: { bytesWritten: number } })._socket
  const sentBefore = socket.bytesWritten

  const closed = closeOf(ws)
  ws.send(Buffer.alloc(2 * MiB))
  assert.equal(await closed, 1009)
  assert.ok(socket.bytesWritten - sentBefore < 16 * 1024, `2 MiB of zeros went out as ${socket.bytesWritten - sentBefore} bytes`)
  await waitFor(() => validator.getStats().violations === 1, 2000, 'the violation to be recorded')
  assert.deepEqual(server.received, [])
})

test('a decompression bomb (128 MiB of zeros in ~128 KiB) is refused without inflating it', async (t) => {
  const validator = FrameSizeValidator.createDefault()
  const server = await serve(t, validator, { perMessageDeflate: CompressionManager.createDefault().getCompressionOptions() })
  const bomb = await deflatedZeros(128 * MiB)
  assert.ok(bomb.length < MiB, 'under the limit on the wire')
  const raw = await rawConnect(t, server.port, 'permessage-deflate; client_max_window_bits')
  assert.match(raw.headers['sec-websocket-extensions'] ?? '', /^permessage-deflate/)
  const before = process.memoryUsage()

  raw.send({ opcode: 2, rsv1: true, payload: bomb })
  const frame = await raw.nextFrame(5000)
  assert.equal(closeCodeOf(frame), 1009)
  await raw.waitEnded(2000)

  const after = process.memoryUsage()
  assert.ok(after.rss - before.rss < 50 * MiB, `rss grew ${after.rss - before.rss} bytes`)
  assert.ok(after.arrayBuffers - before.arrayBuffers < 50 * MiB, `arrayBuffers grew ${after.arrayBuffers - before.arrayBuffers} bytes`)
  await waitFor(() => server.errors.length === 1, 2000, 'the server-side error')
  assert.equal(isFrameSizeError(server.errors[0]), true)
  assert.deepEqual(server.received, [])
  assert.equal(validator.getStats().violations, 1)
})
