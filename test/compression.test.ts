import assert from 'node:assert/strict'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { test, type TestContext } from 'node:test'
import zlib from 'node:zlib'
import WebSocket, { WebSocketServer, type ServerOptions } from 'ws'
import { CompressionManager } from '../lib/compression'
import {
  COMPRESSED, COMPRESSION_PROFILES, UNCOMPRESSED, isCompressionError, perMessageDeflateOptions,
  resolveCompressionProfile, type CompressionProfileName
} from '../lib/compression-profiles'
import type { WarnLogger } from '../lib/frame-size'
import { feedPage } from './fixtures/feed'
import { RawWebSocket, closeCodeOf, type RawFrame } from './fixtures/raw-ws'
import { assertOptionInvalid } from './helper'

const ENABLED: CompressionProfileName[] = ['default', 'high', 'fast']

const assertInvalid = assertOptionInvalid

interface Server {
  wss: WebSocketServer
  port: number
  url: string
  /** Server-side sockets, in connection order. */
  sockets: WebSocket[]
  /** Messages each server-side socket received, by index. */
  received: number[]
  errors: Error[]
}

/**
 * A plain ws server (not the plugin), created without perMessageDeflate: configureServer()
 * turns compression on (or leaves it off) and tracks every connection. Server sockets count
 * received messages and pass errors on, as the plugin will.
 */
async function serve (t: TestContext, manager: CompressionManager, options: ServerOptions = {}): Promise<Server> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, ...options })
  manager.configureServer(wss)
  await once(wss, 'listening')
  const port = (wss.address() as AddressInfo).port
  const server: Server = { wss, port, url: `ws://127.0.0.1:${port}`, sockets: [], received: [], errors: [] }
  wss.on('connection', (ws) => {
    const index = server.sockets.push(ws) - 1
    server.received.push(0)
    ws.on('message', (data: Buffer) => {
      server.received[index]++
      manager.recordReceived(ws, data.length)
    })
    ws.on('error', (err) => {
      server.errors.push(err)
      if (isCompressionError(err)) manager.recordError(ws, err)
    })
  })
  t.after(() => new Promise<void>((resolve) => {
    for (const ws of wss.clients) ws.terminate()
    wss.close(() => resolve())
  }))
  return server
}

/** What the plugin's send override will do: honour the threshold itself, then count. */
function managedSend (manager: CompressionManager, ws: WebSocket, data: string | Buffer): void {
  const bytes = typeof data === 'string' ? Buffer.byteLength(data) : data.length
  const compress = manager.shouldCompress(bytes)
  ws.send(data, compress ? COMPRESSED : UNCOMPRESSED)
  manager.recordSent(ws, bytes, compress && ws.extensions === 'permessage-deflate')
}

async function connect (t: TestContext, url: string, options: WebSocket.ClientOptions = {}): Promise<WebSocket> {
  const ws = new WebSocket(url, options)
  t.after(() => ws.terminate())
  await once(ws, 'open')
  return ws
}

async function rawConnect (t: TestContext, port: number, extensions?: string): Promise<RawWebSocket> {
  const raw = await RawWebSocket.connect(port, extensions)
  t.after(() => raw.destroy())
  return raw
}

async function waitFor (predicate: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

function within (actual: number, expected: number, tolerance: number, what: string): void {
  const off = Math.abs(actual - expected) / expected
  assert.ok(off <= tolerance, `${what}: ${actual} vs ${expected} (${(off * 100).toFixed(2)}% off)`)
}

interface TcpCounters { bytesRead: number, bytesWritten: number }

function tcp (ws: WebSocket): TcpCounters {
  return (ws as unknown as { _socket: TcpCounters })._socket
}

/**
 * Inflates the messages of one raw connection in order with one zlib stream, as a browser
 * does: with context takeover, a compressed message refers back to earlier compressed ones.
 */
function inflater (): (payload: Buffer) => Promise<string> {
  const inflate = zlib.createInflateRaw()
  let out: Buffer[] = []
  inflate.on('data', (chunk: Buffer) => out.push(chunk))
  return (payload) => new Promise((resolve) => {
    inflate.write(Buffer.concat([payload, Buffer.from([0x00, 0x00, 0xff, 0xff])]))
    inflate.flush(() => {
      const text = Buffer.concat(out).toString()
      out = []
      resolve(text)
    })
  })
}

/** A message of exactly `bytes` bytes that compresses well. */
function text (bytes: number): string {
  return 'abcdefgh'.repeat(Math.ceil(bytes / 8)).slice(0, bytes)
}

test('profiles resolve from names, booleans and settings', () => {
  assert.deepEqual(resolveCompressionProfile('default'), COMPRESSION_PROFILES.default)
  assert.deepEqual(resolveCompressionProfile(true), COMPRESSION_PROFILES.default)
  assert.deepEqual(resolveCompressionProfile(false), COMPRESSION_PROFILES.disabled)
  assert.deepEqual(resolveCompressionProfile('disabled').enabled, false)
  const high = resolveCompressionProfile('high')
  assert.equal(high.level, 9)
  assert.equal(high.threshold, 512)
  const fast = resolveCompressionProfile('fast')
  assert.equal(fast.level, 1)
  assert.equal(fast.threshold, 2048)
  assert.equal(COMPRESSION_PROFILES.default.level, 6)
  assert.equal(COMPRESSION_PROFILES.default.threshold, 1024)
  assert.deepEqual(resolveCompressionProfile({ level: 3, threshold: 0 }), { ...COMPRESSION_PROFILES.default, level: 3, threshold: 0 })
  resolveCompressionProfile('default').level = 0
  assert.equal(COMPRESSION_PROFILES.default.level, 6, 'a resolved profile is a copy')

  assert.equal(CompressionManager.createDefault().settings.level, 6)
  assert.equal(CompressionManager.createHigh().settings.level, 9)
  assert.equal(CompressionManager.createFast().settings.level, 1)
  assert.equal(CompressionManager.createDisabled().settings.enabled, false)
  assert.equal(CompressionManager.fromOption('fast').settings.threshold, 2048)
  assert.equal(new CompressionManager({ level: 2 }).settings.threshold, 1024)
})

test('invalid compression options are refused with the coded error', () => {
  assertInvalid(() => resolveCompressionProfile({ level: 12 }), 'compression.level')
  assertInvalid(() => resolveCompressionProfile({ level: -1 }), 'compression.level')
  assertInvalid(() => resolveCompressionProfile({ level: 1.5 }), 'compression.level')
  assertInvalid(() => resolveCompressionProfile({ threshold: -1 }), 'compression.threshold')
  assertInvalid(() => resolveCompressionProfile({ threshold: '1024' }), 'compression.threshold')
  assertInvalid(() => resolveCompressionProfile({ memLevel: 0 }), 'compression.memLevel')
  assertInvalid(() => resolveCompressionProfile({ serverMaxWindowBits: 8 }), 'compression.serverMaxWindowBits')
  assertInvalid(() => resolveCompressionProfile({ serverMaxWindowBits: 16 }), 'compression.serverMaxWindowBits')
  assertInvalid(() => resolveCompressionProfile({ chunkSize: 32 }), 'compression.chunkSize')
  assertInvalid(() => resolveCompressionProfile({ concurrencyLimit: 0 }), 'compression.concurrencyLimit')
  assertInvalid(() => resolveCompressionProfile({ enabled: 'yes' }), 'compression.enabled')
  assertInvalid(() => resolveCompressionProfile({ serverNoContextTakeover: 1 }), 'compression.serverNoContextTakeover')
  assertInvalid(() => resolveCompressionProfile({ clientMaxWindowBits: 10 }), 'compression.clientMaxWindowBits')
  assertInvalid(() => resolveCompressionProfile('turbo'), 'compression')
  assertInvalid(() => resolveCompressionProfile('constructor'), 'compression')
  assertInvalid(() => resolveCompressionProfile(null), 'compression')
  assertInvalid(() => resolveCompressionProfile(9), 'compression')
  assertInvalid(() => resolveCompressionProfile([]), 'compression')
  assertInvalid(() => resolveCompressionProfile('x', 'routes.feed.compression'), 'routes.feed.compression')
  assertInvalid(() => new CompressionManager({ level: 12 }), 'compression.level')
  assertInvalid(() => new CompressionManager({ threshold: -1 }), 'compression.threshold')
  assertInvalid(() => CompressionManager.fromOption('max'), 'compression')
})

test('getCompressionOptions gives ws the profile, or false', () => {
  assert.equal(CompressionManager.createDisabled().getCompressionOptions(), false)
  assert.deepEqual(CompressionManager.createDefault().getCompressionOptions(), {
    threshold: 1024,
    concurrencyLimit: 10,
    serverMaxWindowBits: 13,
    zlibDeflateOptions: { level: 6, memLevel: 5, chunkSize: 4096 },
    zlibInflateOptions: { chunkSize: 4096 }
  })
  // No `serverNoContextTakeover: false`: ws would read it as a refusal of clients asking for it.
  const options = CompressionManager.createHigh().getCompressionOptions()
  assert.ok(options !== false && !('serverNoContextTakeover' in options) && !('clientMaxWindowBits' in options))
  const noTakeover = perMessageDeflateOptions({ ...COMPRESSION_PROFILES.default, serverNoContextTakeover: true, clientNoContextTakeover: true })
  assert.ok(noTakeover !== false && noTakeover.serverNoContextTakeover === true && noTakeover.clientNoContextTakeover === true)
  assert.notEqual(CompressionManager.createDefault().getCompressionOptions(), CompressionManager.createDefault().getCompressionOptions())
})

test('shouldCompress applies the threshold, inclusive, and never when disabled', () => {
  const m = CompressionManager.createDefault()
  assert.equal(m.shouldCompress(0), false)
  assert.equal(m.shouldCompress(1023), false)
  assert.equal(m.shouldCompress(1024), true)
  assert.equal(new CompressionManager({ threshold: 0 }).shouldCompress(0), true)
  assert.equal(CompressionManager.createDisabled().shouldCompress(10 * 1024 * 1024), false)
  assert.ok(Object.isFrozen(UNCOMPRESSED) && Object.isFrozen(COMPRESSED))
})

test('clients offering permessage-deflate get it with default, high and fast, not with disabled', async (t) => {
  for (const name of [...ENABLED, 'disabled'] as const) {
    const manager = CompressionManager.fromOption(name)
    const server = await serve(t, manager)
    const offering = await connect(t, server.url)
    assert.equal(offering.extensions, name === 'disabled' ? '' : 'permessage-deflate', name)
    const plain = await connect(t, server.url, { perMessageDeflate: false })
    assert.equal(plain.extensions, '', `${name}: a client not offering it`)

    // Both still carry messages, a large one included.
    const page = feedPage(7)
    for (const [i, client] of [offering, plain].entries()) {
      const got = once(client, 'message')
      managedSend(manager, server.sockets[i], page)
      assert.equal(String((await got)[0]), page)
      client.send(page)
    }
    await waitFor(() => server.received[0] === 1 && server.received[1] === 1, 2000, `${name}: messages to the server`)
    assert.equal(manager.getStats().compressedConnections, name === 'disabled' ? 0 : 1)
  }
})

test('offers without client_max_window_bits or asking for server_no_context_takeover are accepted', async (t) => {
  for (const name of ENABLED) {
    const server = await serve(t, CompressionManager.fromOption(name))
    const bits = COMPRESSION_PROFILES[name].serverMaxWindowBits
    // RFC 7692 makes client_max_window_bits optional in an offer, and some browsers omit it.
    const bare = await rawConnect(t, server.port, 'permessage-deflate')
    assert.equal(bare.statusCode, 101, name)
    assert.equal(bare.headers['sec-websocket-extensions'], `permessage-deflate; server_max_window_bits=${bits}`)
    const nct = await rawConnect(t, server.port, 'permessage-deflate; server_no_context_takeover; client_max_window_bits')
    assert.equal(nct.statusCode, 101, name)
    assert.equal(nct.headers['sec-websocket-extensions'], `permessage-deflate; server_no_context_takeover; server_max_window_bits=${bits}`)
  }
  const off = await serve(t, CompressionManager.createDisabled())
  const raw = await rawConnect(t, off.port, 'permessage-deflate; client_max_window_bits')
  assert.equal(raw.statusCode, 101)
  assert.equal(raw.headers['sec-websocket-extensions'], undefined)
})

test('ws refuses with 400 what it cannot accept: why the profiles leave clientMaxWindowBits unset', async (t) => {
  const options = CompressionManager.createDefault().getCompressionOptions()
  assert.ok(options !== false)
  const server = await serve(t, CompressionManager.createDisabled(), {})
  server.wss.options.perMessageDeflate = { ...options, clientMaxWindowBits: 10 }
  const raw = await rawConnect(t, server.port, 'permessage-deflate')
  assert.equal(raw.statusCode, 400)

  // The same holds for the server's window, documented on serverMaxWindowBits: a client asking
  // for a smaller one than the profile's is refused rather than served uncompressed.
  const strict = await serve(t, CompressionManager.createDefault())
  assert.equal((await rawConnect(t, strict.port, 'permessage-deflate; server_max_window_bits=10')).statusCode, 400)
  assert.equal((await rawConnect(t, strict.port, 'permessage-deflate; server_max_window_bits=14')).statusCode, 101)
})

for (const offer of ['permessage-deflate; client_max_window_bits', 'permessage-deflate; server_no_context_takeover; client_max_window_bits']) {
  test(`below-threshold messages go out uncompressed on the wire (${offer.includes('server_no') ? 'with' : 'without'} server_no_context_takeover)`, async (t) => {
    const manager = CompressionManager.createDefault()
    const server = await serve(t, manager)
    const raw = await rawConnect(t, server.port, offer)
    assert.equal(raw.statusCode, 101)
    assert.equal(raw.headers['sec-websocket-extensions']?.includes('server_no_context_takeover'), offer.includes('server_no_context_takeover'))
    await waitFor(() => server.sockets.length === 1, 2000, 'the server socket')
    const ws = server.sockets[0]
    const inflate = inflater()

    const cases: Array<[string, boolean]> = [
      [text(10), false],
      [feedPage(1), true],
      [text(1023), false], // one byte under the threshold
      [text(1024), true], // at the threshold
      [JSON.stringify({ type: 'typing', userId: 'u_1' }), false],
      [feedPage(2), true]
    ]
    for (const [message, compressed] of cases) {
      managedSend(manager, ws, message)
      const frame: RawFrame = await raw.nextFrame(2000)
      assert.equal(frame.opcode, 1)
      assert.equal(frame.rsv1, compressed, `${Buffer.byteLength(message)} bytes: RSV1 ${frame.rsv1}`)
      if (compressed) {
        assert.ok(frame.payload.length < Buffer.byteLength(message) / 2, 'compressed on the wire')
        assert.equal(await inflate(frame.payload), message, 'inflates with the connection\'s context')
      } else {
        assert.equal(frame.payload.toString(), message, 'sent as is')
      }
    }
    const stats = manager.getConnectionStats(ws)
    assert.equal(stats?.messagesSent, 6)
    assert.equal(stats?.messagesCompressed, 3)
  })
}

test('the disabled profile never compresses, even when the client offers it', async (t) => {
  const manager = CompressionManager.createDisabled()
  const server = await serve(t, manager)
  const raw = await rawConnect(t, server.port, 'permessage-deflate; client_max_window_bits')
  await waitFor(() => server.sockets.length === 1, 2000, 'the server socket')
  const page = feedPage(3)
  managedSend(manager, server.sockets[0], page)
  const frame = await raw.nextFrame(2000)
  assert.equal(frame.rsv1, false)
  assert.equal(frame.payload.toString(), page)
})

test('statistics agree with the bytes the client actually read, within 5%', async (t) => {
  const manager = CompressionManager.createDefault()
  const server = await serve(t, manager)
  const client = await connect(t, server.url)
  await waitFor(() => server.sockets.length === 1, 2000, 'the server socket')
  const ws = server.sockets[0]
  assert.equal(manager.isTracked(ws), true)
  const counters = tcp(client)
  const readBefore = counters.bytesRead
  const writtenBefore = counters.bytesWritten

  let got = 0
  client.on('message', () => { got++ })
  let payload = 0
  for (let i = 0; i < 50; i++) {
    const page = feedPage(100 + i)
    payload += Buffer.byteLength(page)
    managedSend(manager, ws, page)
  }
  await waitFor(() => got === 50, 5000, '50 messages at the client')
  const clientRead = counters.bytesRead - readBefore

  let sentIn = 0
  for (let i = 0; i < 5; i++) {
    const page = feedPage(200 + i)
    sentIn += Buffer.byteLength(page)
    client.send(page)
  }
  await waitFor(() => server.received[0] === 5, 5000, '5 messages at the server')
  const clientWritten = counters.bytesWritten - writtenBefore

  const s = manager.getStats()
  assert.equal(s.messagesSent, 50)
  assert.equal(s.messagesCompressed, 50)
  assert.equal(s.messagesReceived, 5)
  assert.equal(s.payloadBytesOut, payload)
  assert.equal(s.payloadBytesIn, sentIn)
  assert.equal(s.wireMeasured, true)
  within(s.wireBytesOut, clientRead, 0.05, 'wire bytes out vs client bytesRead')
  within(s.ratio ?? NaN, clientRead / payload, 0.05, 'ratio vs client-observed ratio')
  within(s.wireBytesIn, clientWritten, 0.05, 'wire bytes in vs client bytesWritten')
  within(s.ratioIn ?? NaN, clientWritten / sentIn, 0.05, 'inbound ratio')
  assert.ok((s.ratio ?? 1) < 0.4, `feed pages compress: ratio ${s.ratio}`)
  assert.equal(s.bytesSaved, payload - s.wireBytesOut)
  assert.ok(s.bytesSaved > 0)
  assert.equal(s.compressionErrors, 0)
  assert.equal(manager.getCompressionRatioPercent(), Math.round((s.ratio ?? 0) * 1000) / 10)
  assert.equal(manager.getAverageBytesSaved(), s.bytesSaved / 50)
  assert.match(manager.getSummary(), /^compression: level 6, threshold 1\.0 KiB, window 2\^13, memLevel 5; 1 connections \(1 compressed\), 50 messages out \(50 compressed\), /)

  const c = manager.getConnectionStats(ws)
  assert.ok(c !== undefined)
  assert.equal(c.negotiated, true)
  assert.equal(c.wireBytesOut, s.wireBytesOut)
  assert.equal(c.ratio, s.ratio)
  assert.equal(c.messagesReceived, 5)

  // On close the connection is untracked and its figures stay in the totals.
  const wireOut = s.wireBytesOut
  client.close()
  await waitFor(() => !manager.isTracked(ws), 2000, 'the connection to be untracked')
  assert.equal(manager.getConnectionStats(ws), undefined)
  const after = manager.getStats()
  assert.equal(after.connections, 0)
  assert.equal(after.messagesSent, 50)
  assert.equal(after.payloadBytesOut, payload)
  assert.ok(after.wireBytesOut >= wireOut && after.wireBytesOut - wireOut < 16, 'plus the close frame')
})

test('without compression the wire carries the payload plus framing', async (t) => {
  const manager = CompressionManager.createDisabled()
  const server = await serve(t, manager)
  const client = await connect(t, server.url)
  await waitFor(() => server.sockets.length === 1, 2000, 'the server socket')
  const counters = tcp(client)
  const before = counters.bytesRead
  let got = 0
  client.on('message', () => { got++ })
  const page = feedPage(9)
  for (let i = 0; i < 10; i++) managedSend(manager, server.sockets[0], page)
  await waitFor(() => got === 10, 5000, '10 messages')
  const s = manager.getStats()
  assert.equal(s.messagesCompressed, 0)
  assert.equal(s.wireBytesOut, counters.bytesRead - before)
  assert.equal(s.wireBytesOut, 10 * (Buffer.byteLength(page) + 4), '4-byte headers, payload as is')
  assert.ok(s.bytesSaved < 0)
  assert.ok((s.ratio ?? 0) > 1)
})

test('a socket without byte counters is tracked but reported unmeasured', () => {
  const manager = CompressionManager.createDefault()
  // A server-side socket before ws gives it a TCP socket; injectWS() streams have no counters either.
  const ws = new WebSocket(null as unknown as string, [], {})
  assert.equal(manager.track(ws), true)
  assert.equal(manager.track(ws), false, 'tracked once')
  manager.recordSent(ws, 5000, true)
  manager.recordReceived(ws, 300)
  const c = manager.getConnectionStats(ws)
  assert.deepEqual(c, {
    negotiated: false,
    messagesSent: 1,
    messagesCompressed: 1,
    messagesReceived: 1,
    payloadBytesOut: 5000,
    payloadBytesIn: 300,
    wireBytesOut: 0,
    wireBytesIn: 0,
    bytesSaved: 0,
    ratio: null,
    compressionErrors: 0,
    wireMeasured: false
  })
  const s = manager.getStats()
  assert.equal(s.wireMeasured, false)
  assert.equal(s.ratio, null)
  assert.equal(s.payloadBytesOut, 5000)
  assert.equal(manager.getAverageBytesSaved(), 0)
  assert.match(manager.getSummary(), /some connections unmeasured$/)

  assert.equal(manager.untrack(ws), true)
  assert.equal(manager.untrack(ws), false)
  assert.equal(manager.getStats().messagesSent, 1, 'figures kept after untracking')
  assert.equal(manager.getStats().wireMeasured, false)
  // Untracked sockets are not counted.
  manager.recordSent(ws, 1, false)
  manager.recordReceived(ws, 1)
  assert.equal(manager.getStats().messagesSent, 1)
  assert.equal(manager.getStats().messagesReceived, 1)
})

test('compressed data that does not inflate is counted as a compression error and logged', async (t) => {
  const lines: Array<{ obj: object, msg: string }> = []
  const log: WarnLogger = { warn: (obj, msg) => { lines.push({ obj, msg }) } }
  const manager = new CompressionManager({ log })
  const server = await serve(t, manager)
  const raw = await rawConnect(t, server.port, 'permessage-deflate; client_max_window_bits')
  await waitFor(() => server.sockets.length === 1, 2000, 'the server socket')

  raw.send({ opcode: 1, rsv1: true, payload: Buffer.from([0xff, 0xff, 0xff, 0xff, 0x00, 0x12, 0x34]) })
  const frame = await raw.nextFrame(2000)
  assert.equal(closeCodeOf(frame), 1007, 'ws closes with 1007 itself')
  await waitFor(() => manager.getStats().compressionErrors === 1, 2000, 'the error to be counted')
  assert.equal(isCompressionError(server.errors[0]), true)
  assert.equal(lines.length, 1)
  assert.equal(lines[0].msg, 'permessage-deflate error')
  assert.equal(isCompressionError({ code: 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' }), false)
  assert.equal(isCompressionError(null), false)
})

test('configureServer hooks a server once; track() refuses closed or tracked sockets', async (t) => {
  const manager = CompressionManager.createDefault()
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  t.after(() => new Promise<void>((resolve) => {
    for (const ws of wss.clients) ws.terminate()
    wss.close(() => resolve())
  }))
  const listeners = wss.listenerCount('connection')
  manager.configureServer(wss)
  manager.configureServer(wss)
  assert.equal(wss.listenerCount('connection'), listeners + 1)
  assert.deepEqual(wss.options.perMessageDeflate, manager.getCompressionOptions())

  const untracked = new CompressionManager()
  untracked.configureServer(wss, { track: false })
  assert.equal(wss.listenerCount('connection'), listeners + 1)

  await once(wss, 'listening')
  const connection = once(wss, 'connection') as Promise<[WebSocket]>
  const client = await connect(t, `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`)
  const [ws] = await connection
  assert.equal(manager.isTracked(ws), true)
  assert.equal(untracked.isTracked(ws), false)
  assert.equal(manager.track(ws), false)
  const closeListeners = ws.listenerCount('close')
  client.terminate()
  await once(ws, 'close')
  assert.equal(manager.isTracked(ws), false)
  assert.equal(manager.track(ws), false, 'a closed socket is not tracked')
  assert.equal(ws.listenerCount('close'), closeListeners - 1, 'the close listener was removed')
})
