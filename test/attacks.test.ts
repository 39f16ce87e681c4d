// Issue 10: what an attacker's review of the hardening found, each reproduced here first.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { connect as netConnect, type Socket } from 'node:net'
import jwt, { type FastifyJWTOptions } from '@fastify/jwt'
import type { FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import { loadConfig, type Connection, type WsManagerOptions } from '../lib/index'
import { encodeFrame } from './fixtures/raw-ws'
import { attempt, build, closed, connect, connectQueued, listen, waitFor } from './helper'

const SECRET = 'attacks-test-secret-0123456789-abcdefghijklmnop'

async function start (t: TestContext, options: WsManagerOptions = {}, jwtOptions: Partial<FastifyJWTOptions> = {}, onSocket?: (socket: WebSocket) => void): Promise<{ app: FastifyInstance, url: string, seen: Connection[] }> {
  const seen: Connection[] = []
  const app = await build(t, { upgradeRateLimit: false, ...options }, {
    before: async (a) => { await a.register(jwt, { secret: SECRET, ...jwtOptions } as FastifyJWTOptions) }
  })
  app.get('/ws', { websocket: true }, (socket, request) => {
    seen.push(request.wsConnection as Connection)
    onSocket?.(socket)
  })
  app.get('/status', async () => ({ ok: true }))
  const url = await listen(app)
  return { app, url, seen }
}

const bearer = (app: FastifyInstance, sub: string, claims: Record<string, unknown> = {}, expiresIn?: number): { headers: Record<string, string> } =>
  ({ headers: { authorization: `Bearer ${app.jwt.sign({ sub, ...claims }, expiresIn === undefined ? {} : { expiresIn })}` } })

/** A raw upgrade; resolves with the status line and the socket (destroyed when the test ends). */
function rawUpgrade (t: TestContext, url: string, path: string, headers: Record<string, string> = {}): Promise<{ status: string, socket: Socket }> {
  const { port } = new URL(url)
  const socket = netConnect({ port: Number(port), host: '127.0.0.1' })
  t.after(() => socket.destroy())
  socket.on('error', () => {})
  return new Promise((resolve, reject) => {
    let head = ''
    socket.on('data', (chunk) => {
      head += chunk.toString('latin1')
      if (head.includes('\r\n\r\n')) resolve({ status: head.split('\r\n')[0], socket })
    })
    socket.once('close', () => reject(new Error('closed before an answer')))
    let extra = ''
    for (const [k, v] of Object.entries(headers)) extra += `${k}: ${v}\r\n`
    socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${extra}\r\n`)
  })
}

test('an upgrade to a route without a WebSocket handler is refused before any 101, with a JSON body', async (t) => {
  const { app, url } = await start(t, { maxConnectionsPerIp: 2 })
  for (let i = 0; i < 5; i++) {
    const { status } = await rawUpgrade(t, url, '/status', { origin: 'http://evil.example' })
    assert.equal(status, 'HTTP/1.1 404 Not Found')
  }
  const answer = await attempt(t, `${url}/status`)
  assert.equal(answer.status, 404)
  assert.equal(answer.body?.message, 'Not a WebSocket route')
  assert.equal(app.wsManager.stats().admission.refused['404'], 6)
  // The route still answers plain requests.
  assert.deepEqual((await app.inject({ url: '/status' })).json(), { ok: true })
})

test('an async listener that rejects closes its connection with 1011; the process carries on', async (t) => {
  const { app, url } = await start(t, { auth: false }, {}, (socket) => {
    socket.on('message', async (data) => { JSON.parse(data.toString()) })
    socket.once('message', async () => { throw new Error('once, async') })
  })
  const client = await connect(t, `${url}/ws`)
  const end = closed(client)
  client.send('not json')
  assert.deepEqual(await end, { code: 1011, reason: 'Internal error' })
  await waitFor(() => app.wsManager.connections.size === 0, 2000, 'registry empty')
  // The wrappers stay invisible: listeners() gives back what the application added.
  const other = await connect(t, `${url}/ws`)
  await waitFor(() => app.wsManager.connections.size === 1, 2000, 'second accepted')
  const socket = [...app.wsManager.connections][0].socket
  const handler = (): void => {}
  socket.on('pong', handler)
  assert.ok(socket.listeners('pong').includes(handler))
  socket.removeListener('pong', handler)
  assert.ok(!socket.listeners('pong').includes(handler))
  other.terminate()
})

test('once a close has begun, the user\'s further messages are not handled', async (t) => {
  const handled: number[] = []
  const { app, url } = await start(t, { close: { timeout: 3000 } }, {}, (socket) => {
    socket.on('message', () => { handled.push(Date.now()) })
  })
  const { port } = new URL(url)
  const socket = netConnect({ port: Number(port), host: '127.0.0.1' })
  t.after(() => socket.destroy())
  await new Promise<void>((resolve) => socket.once('connect', resolve))
  const token = app.jwt.sign({ sub: 'mallory' })
  socket.write(`GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nAuthorization: Bearer ${token}\r\n` +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')
  await waitFor(() => app.wsManager.connections.size === 1, 2000, 'accepted')
  const timer = setInterval(() => socket.write(encodeFrame({ opcode: 1, payload: Buffer.from('x') })), 20)
  t.after(() => clearInterval(timer))
  await waitFor(() => handled.length >= 3, 2000, 'messages handled while open')
  const closing = app.wsManager.disconnectUser('mallory', { code: 1008, reason: 'Revoked' })
  const at = Date.now()
  await new Promise((resolve) => setTimeout(resolve, 300))
  assert.equal(handled.filter((h) => h > at).length, 0, 'nothing handled after the close began')
  clearInterval(timer)
  socket.destroy()
  await closing
})

test("under the 'drop' policy a flooding client is not read while its budget refills", async (t) => {
  const { app, url, seen } = await start(t, { auth: false, messageRateLimit: { max: 10, timeWindow: 1000, burst: 10, policy: 'drop' } })
  const { socket } = await rawUpgrade(t, url, '/ws')
  await waitFor(() => seen.length === 1, 2000, 'accepted')
  const frame = encodeFrame({ opcode: 1, payload: Buffer.from('flood') })
  const batch = Buffer.concat(Array.from({ length: 2000 }, () => frame))
  let sent = 0
  const until = Date.now() + 1500
  while (Date.now() < until) {
    if (socket.write(batch)) sent += 2000
    else {
      sent += 2000
      await new Promise((resolve) => socket.once('drain', resolve))
    }
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  const received = seen[0].messagesIn
  // Without pausing, the server reads and parses everything (hundreds of thousands); paused, a
  // read's worth of frames per second gets through.
  assert.ok(received < sent / 10, `server read ${received} of ${sent} messages`)
  assert.equal(seen[0].state, 'open')
  socket.destroy()
  // A paused socket reads no FIN either: the heartbeat or a close ends it.
  await app.wsManager.closeAll({ timeout: 100 })
  assert.equal(app.wsManager.connections.size, 0)
})

test('failed attempts without a readable subject count against the IP only: a NAT neighbour with a formatUser id still gets in', async (t) => {
  const { app, url } = await start(t, { auth: { userIdClaim: 'id', failureLimit: { max: 3, ipMax: 100, timeWindow: 60_000 } } },
    { formatUser: (payload) => ({ id: `user:${String((payload as { sub: string }).sub)}` }) })
  for (let i = 0; i < 10; i++) assert.equal((await attempt(t, `${url}/ws`)).status, 401)
  await connect(t, `${url}/ws`, bearer(app, 'bob'))
  // A token whose payload is large (many groups) still has its subject read.
  await connect(t, `${url}/ws`, bearer(app, 'carol', { groups: 'g'.repeat(9000) }))
})

test('concurrent attempts cannot pass the failure budget together (a slow key callback)', async (t) => {
  let verifications = 0
  const { url } = await start(t, { auth: { failureLimit: { max: 5, ipMax: 100, timeWindow: 60_000 } } }, {
    secret: async () => {
      verifications++
      await new Promise((resolve) => setTimeout(resolve, 20))
      return SECRET
    }
  })
  const part = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  const forged = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub: 'victim' })}.${'A'.repeat(43)}`
  const answers = await Promise.all(Array.from({ length: 40 }, () => attempt(t, `${url}/ws`, { headers: { authorization: `Bearer ${forged}` } })))
  const statuses = answers.map((a) => a.status)
  assert.equal(statuses.filter((s) => s === 401).length, 5)
  assert.equal(statuses.filter((s) => s === 429).length, 35)
  assert.ok(verifications <= 6, `${verifications} verifications`)
})

test('an asynchronous ws verifyClient cannot carry connections past the caps', async (t) => {
  const { app, url } = await start(t, {
    auth: false,
    maxConnectionsPerIp: 2,
    ws: { verifyClient: (_info: unknown, done: (ok: boolean) => void) => setTimeout(done, 50, true) }
  })
  const answers = await Promise.all(Array.from({ length: 10 }, () => attempt(t, `${url}/ws`).then(async (a) => {
    if (a.ws === null) return a.status
    const code = await closed(a.ws, 2000).then((c) => c.code, () => 'open')
    return code
  })))
  assert.equal(answers.filter((a) => a === 'open').length, 2, String(answers))
  assert.ok(app.wsManager.connections.size <= 2)
})

test('expiry is taken from the verified token when formatUser leaves exp out', async (t) => {
  const { app, url, seen } = await start(t, { auth: { userIdClaim: 'id' } }, { formatUser: (p) => ({ id: (p as { sub: string }).sub }) })
  const client = await connect(t, `${url}/ws`, bearer(app, 'erin', {}, 1))
  await waitFor(() => seen.length === 1, 2000, 'accepted')
  assert.ok(Number.isFinite(seen[0].closeAt))
  const { code, reason } = await closed(client, 3000)
  assert.deepEqual({ code, reason }, { code: 1008, reason: 'Token expired' })
})

test("'closeOldest' makes room only for a connection that was accepted: a bad handshake costs nothing", async (t) => {
  const { app, url } = await start(t, { maxConnectionsPerUser: 1, onUserLimit: 'closeOldest' })
  const first = await connect(t, `${url}/ws`, bearer(app, 'frank'))
  const { status } = await rawUpgrade(t, url, '/ws', { authorization: bearer(app, 'frank').headers.authorization, 'sec-websocket-version': '7' })
  assert.match(status, /^HTTP\/1\.1 400/)
  await new Promise((resolve) => setTimeout(resolve, 100))
  assert.equal(first.readyState, WebSocket.OPEN)
  const end = closed(first)
  await connect(t, `${url}/ws`, bearer(app, 'frank'))
  assert.deepEqual(await end, { code: 1008, reason: 'Connection limit exceeded' })
})

test('a user id of __proto__ is counted like any other', async (t) => {
  const { app, url } = await start(t, { messageRateLimit: { max: 1, timeWindow: 60_000, burst: 1, policy: 'drop' } })
  for (const sub of ['__proto__', 'bob']) {
    const client = await connect(t, `${url}/ws`, bearer(app, sub))
    for (let i = 0; i < 5; i++) client.send('x')
  }
  await waitFor(() => app.wsManager.stats().admission.messages?.refused === 8, 2000, 'refusals')
  const byUser = app.wsManager.stats().admission.messages?.refusedByUser ?? {}
  assert.deepEqual(Object.keys(byUser).sort(), ['__proto__', 'bob'])
  assert.equal(Object.getOwnPropertyDescriptor(byUser, '__proto__')?.value, 4)
})

test('a Blob sent through the connection API goes out as its bytes', async (t) => {
  const { url, seen } = await start(t, { auth: false }, {}, (socket) => {
    const connection = (socket as unknown as { connection: Connection }).connection
    connection.send(new Blob(['blob bytes']) as unknown as Buffer)
  })
  const { next } = await connectQueued(t, `${url}/ws`)
  assert.equal(await next(), 'blob bytes')
  assert.equal(seen[0].bytesOut, 10)
})

test('an ALLOWED_ORIGINS with no origin in it names the variable', () => {
  for (const value of [',', ' , ']) {
    assert.throws(() => loadConfig({ ALLOWED_ORIGINS: value }), (err: Error & { code?: string }) => err.code === 'FST_WSM_ENV_INVALID' && err.message.includes('ALLOWED_ORIGINS'))
  }
})
