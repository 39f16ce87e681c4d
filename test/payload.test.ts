import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { deflateRawSync, inflateRawSync } from 'node:zlib'
import jwt from '@fastify/jwt'
import type { FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import { loadConfig, normalizeOptions, type Connection, type WsManagerOptions } from '../lib/index'
import { feedPage } from './fixtures/feed'
import { RawWebSocket, closeCodeOf } from './fixtures/raw-ws'
import { build, closed, connect, listen, logCapture, waitFor } from './helper'

const SECRET = 'payload-test-secret-that-is-long-enough!'

interface Served { app: FastifyInstance, url: string, port: number, connections: Connection[], logs: ReturnType<typeof logCapture> }

// One route at '/', where the hand-written client connects; a text "send:<n>" makes the
// application send an n-byte text message with its raw socket.send().
async function serve (t: TestContext, options: WsManagerOptions, withJwt = false): Promise<Served> {
  const logs = logCapture()
  const app = await build(t, { upgradeRateLimit: false, ...(withJwt ? {} : { auth: false }), ...options }, {
    fastify: { logger: { level: 'info', stream: logs.stream } },
    before: withJwt ? async (a) => { await a.register(jwt, { secret: SECRET }) } : undefined
  })
  const connections: Connection[] = []
  app.get('/', { websocket: true }, (socket, request) => {
    connections.push(request.wsConnection as Connection)
    socket.on('message', (data, isBinary) => {
      const text = isBinary ? '' : data.toString()
      if (text.startsWith('send:')) socket.send('x'.repeat(Number(text.slice(5))))
    })
  })
  const url = await listen(app)
  return { app, url, port: Number(new URL(url).port), connections, logs }
}

test('clients that offer permessage-deflate get it when compression is on, and not when it is off', async (t) => {
  for (const [compression, expected] of [['default', true], ['high', true], ['fast', true], ['disabled', false]] as const) {
    const { url } = await serve(t, { compression })
    const offering = await connect(t, url + '/', { perMessageDeflate: true })
    assert.equal(offering.extensions.includes('permessage-deflate'), expected, compression)
    const plain = await connect(t, url + '/', { perMessageDeflate: false })
    assert.equal(plain.extensions, '')
    plain.send('send:5000')
    const got = await new Promise<string>((resolve) => plain.once('message', (d) => resolve(d.toString())))
    assert.equal(got.length, 5000, 'a client that offers nothing still works')
  }
})

for (const offer of ['permessage-deflate; client_max_window_bits', 'permessage-deflate; server_no_context_takeover; client_max_window_bits']) {
  test(`the application's socket.send() honours the threshold on the wire (${offer.includes('server_no') ? 'with' : 'without'} server_no_context_takeover)`, async (t) => {
    const { port, connections, app } = await serve(t, { compression: { level: 6, threshold: 1024 } })
    const raw = await RawWebSocket.connect(port, offer)
    t.after(() => raw.destroy())
    assert.equal(raw.statusCode, 101)
    await waitFor(() => connections.length === 1)
    for (const [size, compressed] of [[10, false], [1023, false], [1024, true], [8000, true], [200, false]] as const) {
      raw.send({ opcode: 1, payload: Buffer.from(`send:${size}`) })
      const frame = await raw.nextFrame(2000)
      assert.equal(frame.rsv1, compressed, `${size} bytes`)
      if (!compressed) assert.equal(frame.payload.length, size, 'sent as is')
      else if (offer.includes('server_no')) {
        // Without context takeover each message inflates on its own.
        assert.equal(inflateRawSync(Buffer.concat([frame.payload, Buffer.from([0, 0, 0xff, 0xff])]), { finishFlush: 2 }).length, size)
      } else assert.ok(frame.payload.length < size / 4, 'compressed on the wire')
    }
    const stats = connections[0].compressionStats()
    assert.equal(stats?.messagesSent, 5)
    assert.equal(stats?.messagesCompressed, 2)
    assert.equal(app.wsManager.stats().compression.messagesCompressed, 2)
  })
}

test('compression statistics through request.wsConnection agree with the bytes the client read, within 5%', async (t) => {
  const { url, connections } = await serve(t, { compression: 'default' })
  const client = await connect(t, url + '/', { perMessageDeflate: true })
  await waitFor(() => connections.length === 1)
  const tcp = (client as unknown as { _socket: import('node:net').Socket })._socket
  const before = tcp.bytesRead
  let got = 0
  client.on('message', () => { got++ })
  let payload = 0
  for (let i = 0; i < 50; i++) {
    const page = feedPage(300 + i)
    payload += Buffer.byteLength(page)
    connections[0].socket.send(page)
  }
  await waitFor(() => got === 50, 5000, 'all 50 pages')
  const clientRatio = (tcp.bytesRead - before) / payload
  const stats = connections[0].compressionStats()
  assert.ok(stats !== undefined)
  assert.equal(stats.payloadBytesOut, payload)
  assert.equal(connections[0].bytesOut, payload)
  const ratio = stats.ratio as number
  assert.ok(Math.abs(ratio - clientRatio) / clientRatio < 0.05, `reported ${ratio}, client saw ${clientRatio}`)
  assert.ok(ratio < 0.4, `JSON compresses: ${ratio}`)
})

test('a message of 1 MiB + 1 gets 1009 and is counted against its user', async (t) => {
  const { app, url, logs } = await serve(t, {}, true)
  const token = app.jwt.sign({ sub: 'mallory' })
  const client = await connect(t, url + '/', { headers: { authorization: `Bearer ${token}` } })
  await waitFor(() => app.wsManager.connections.size === 1)
  const end = closed(client)
  client.send(Buffer.alloc(1024 * 1024 + 1))
  assert.equal((await end).code, 1009)
  const frames = app.wsManager.stats().frames
  assert.equal(frames.violations, 1)
  assert.equal(frames.violationsByUser.mallory, 1)
  await waitFor(() => logs.lines.some((l) => l.level === 40 && l.userId === 'mallory'), 2000, 'a warn line with the user')
  assert.ok(!logs.text().includes(token), 'the token is not logged')

  // Exactly the limit is fine.
  const ok = await connect(t, url + '/', { headers: { authorization: `Bearer ${token}` } })
  ok.send(Buffer.alloc(1024 * 1024))
  ok.send('send:3')
  await new Promise((resolve) => ok.once('message', resolve))
})

test('a frame header claiming 1 GiB is refused at once, without the server buffering it', async (t) => {
  const { port } = await serve(t, {})
  const raw = await RawWebSocket.connect(port)
  t.after(() => raw.destroy())
  const rss = process.memoryUsage().rss
  const started = Date.now()
  raw.send({ opcode: 2, payload: Buffer.alloc(16), declaredLength: 1024 * 1024 * 1024, fin: true })
  const frame = await raw.nextFrame(2000)
  assert.equal(frame.opcode, 8)
  assert.equal(closeCodeOf(frame), 1009)
  assert.ok(Date.now() - started < 1000)
  assert.ok(process.memoryUsage().rss - rss < 50 * 1024 * 1024)
})

test('a small compressed message that inflates past the limit gets 1009', async (t) => {
  const { app, port } = await serve(t, { compression: 'default' })
  const raw = await RawWebSocket.connect(port, 'permessage-deflate; client_max_window_bits')
  t.after(() => raw.destroy())
  assert.match(raw.headers['sec-websocket-extensions'] ?? '', /permessage-deflate/)
  const bomb = deflateRawSync(Buffer.alloc(8 * 1024 * 1024), { finishFlush: 2 })
  const body = bomb.subarray(0, bomb.length - 4) // RFC 7692: the empty final block's tail is left out
  assert.ok(body.length < 16 * 1024, `bomb is ${body.length} bytes`)
  const rss = process.memoryUsage().rss
  raw.send({ opcode: 2, payload: body, rsv1: true })
  const frame = await raw.nextFrame(3000)
  assert.equal(closeCodeOf(frame), 1009)
  assert.ok(process.memoryUsage().rss - rss < 50 * 1024 * 1024)
  assert.equal(app.wsManager.stats().frames.violations, 1)
})

test('messages at or over the warn threshold are counted and logged', async (t) => {
  const { app, url, logs } = await serve(t, { frameSize: { maxMessageSize: 64 * 1024, warnThreshold: 16 * 1024 } })
  const client = await connect(t, url + '/')
  client.send(Buffer.alloc(16 * 1024 - 1))
  client.send(Buffer.alloc(16 * 1024))
  client.send(Buffer.alloc(40 * 1024))
  client.send('send:1')
  await new Promise((resolve) => client.once('message', resolve))
  const frames = app.wsManager.stats().frames
  assert.equal(frames.warnings, 2)
  assert.equal(frames.largestMessage, 40 * 1024)
  assert.equal(frames.violations, 0)
  assert.equal(logs.lines.filter((l) => l.level === 40 && typeof l.connectionId === 'string').length, 2)
  const end = closed(client)
  client.send(Buffer.alloc(64 * 1024 + 1))
  assert.equal((await end).code, 1009)
})

test('the environment maps to frame and compression options; bad values are refused', async (t) => {
  const config = loadConfig({ COMPRESSION_ENABLED: 'true', COMPRESSION_LEVEL: '9', COMPRESSION_THRESHOLD: '512', MAX_MESSAGE_SIZE: '2048', MESSAGE_WARN_THRESHOLD: '1024' })
  assert.deepEqual(config.options.frameSize, { maxMessageSize: 2048, warnThreshold: 1024 })
  assert.deepEqual(config.options.compression, { level: 9, threshold: 512 })
  const resolved = normalizeOptions(config.options)
  assert.equal(resolved.compression.enabled, true)
  assert.equal(resolved.compression.level, 9)
  assert.equal(loadConfig({}).options.compression, 'disabled')
  assert.equal(normalizeOptions(loadConfig({ MAX_MESSAGE_SIZE: '4096' }).options).frameSize.warnThreshold, 2048)

  for (const env of [{ COMPRESSION_LEVEL: '12', COMPRESSION_ENABLED: 'true' }, { COMPRESSION_ENABLED: 'sometimes' },
    { COMPRESSION_THRESHOLD: '-1', COMPRESSION_ENABLED: 'true' }, { MAX_MESSAGE_SIZE: '0' },
    { MAX_MESSAGE_SIZE: '1024', MESSAGE_WARN_THRESHOLD: '2048' }]) {
    assert.throws(() => loadConfig(env), { code: 'FST_WSM_ENV_INVALID' }, JSON.stringify(env))
  }
  for (const options of [{ compression: { level: 12 } }, { compression: 'max' }, { frameSize: 'huge' }, { frameSize: { maxMessageSize: 10, warnThreshold: 20 } }]) {
    assert.throws(() => normalizeOptions(options), { code: 'FST_WSM_OPTION_INVALID' }, JSON.stringify(options))
  }

  const { url } = await serve(t, { ...config.options, auth: false, upgradeRateLimit: false })
  const client = new WebSocket(url + '/', { perMessageDeflate: true })
  t.after(() => client.terminate())
  await new Promise((resolve) => client.once('open', resolve))
  assert.match(client.extensions, /permessage-deflate/)
  const end = closed(client)
  client.send(Buffer.alloc(2049))
  assert.equal((await end).code, 1009)
})
