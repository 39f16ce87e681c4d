// Forwarding over managed WebSockets: sshTerminal against a real OpenSSH sshd on loopback,
// tcpTunnel and sshTunnel to real TCP services, with the hostile cases (targets outside the
// allowlist, host keys, caps, a peer that stops reading, an upstream that stops reading, a
// server killed mid-session) and the audit line.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { createServer, type Server, type Socket } from 'node:net'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import jwt from '@fastify/jwt'
import WebSocket from 'ws'
import { Server as SshServer, utils } from 'ssh2'
import wsManager, { SshConnectionPool, sshTerminal, sshTunnel, tcpTunnel, type SshPoolOptions, type WsManagerOptions } from '../lib/index'
import { assertOptionInvalid, logCapture, waitFor, within } from './helper'
import { startRefusingServer, startSshd, type Sshd } from './fixtures/sshd'

const SECRET = 'forward-test-secret-0123456789-abcdefghijkl'

let shared: Sshd | null = null
async function sshd (_t: TestContext): Promise<Sshd> {
  if (shared === null) {
    shared = await startSshd()
  }
  return shared
}
test.after(async () => { await shared?.stop() })

function pool (t: TestContext, options: Partial<SshPoolOptions> & Pick<SshPoolOptions, 'hostVerifier'>): SshConnectionPool {
  const p = new SshConnectionPool(options)
  t.after(() => p.close())
  return p
}

interface App { app: FastifyInstance, url: string, token: (sub: string) => string }

async function server (t: TestContext, routes: (app: FastifyInstance) => void, options: WsManagerOptions = {}, logs?: ReturnType<typeof logCapture>): Promise<App> {
  const app = Fastify({ logger: logs === undefined ? false : { level: 'info', stream: logs.stream } })
  t.after(() => app.close())
  await app.register(jwt, { secret: SECRET })
  await app.register(wsManager, { upgradeRateLimit: false, messageRateLimit: false, maxConnectionsPerIp: 0, ...options })
  routes(app)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return { app, url: `ws://127.0.0.1:${address.port}`, token: (sub) => app.jwt.sign({ sub }) }
}

const ROUTE = { websocket: true, config: { wsManager: { idleTimeout: 0 } } } as const

/** A client that collects what it gets. */
class Peer {
  readonly ws: WebSocket
  readonly texts: unknown[] = []
  bytes = Buffer.alloc(0)
  received = 0
  closed: Promise<{ code: number, reason: string }>
  constructor (ws: WebSocket, keep = true) {
    this.ws = ws
    ws.on('message', (data: Buffer, isBinary) => {
      if (!isBinary) this.texts.push(JSON.parse(data.toString()))
      else {
        this.received += data.length
        if (keep) this.bytes = Buffer.concat([this.bytes, data])
      }
    })
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })))
  }

  get text (): string {
    return this.bytes.toString('utf8')
  }

  type (text: string): void {
    this.ws.send(Buffer.from(text))
  }
}

async function open (t: TestContext, url: string, token: string | null, keep = true): Promise<Peer> {
  const ws = new WebSocket(url, token === null ? {} : { headers: { authorization: `Bearer ${token}` } })
  t.after(() => ws.terminate())
  const peer = new Peer(ws, keep)
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve())
    ws.once('error', reject)
    ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)))
  })
  return peer
}

async function until (predicate: () => boolean, ms: number, what: string): Promise<void> {
  await waitFor(predicate, ms, what)
}

function terminalRoute (p: SshConnectionPool, target: Sshd, extra: Record<string, unknown> = {}) {
  return sshTerminal({ pool: p, target: () => target.target, allowedTargets: [`127.0.0.1:${target.port}`], ...extra })
}

/** A TCP service: `echo` echoes; `source` writes `bytes` then ends; `sink` never reads. */
async function service (t: TestContext, kind: 'echo' | 'source' | 'sink', bytes = 0): Promise<{ port: number, written: () => number, sockets: Set<Socket> }> {
  let written = 0
  const sockets = new Set<Socket>()
  const srv: Server = createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
    if (kind === 'echo') socket.pipe(socket)
    else if (kind === 'sink') socket.pause()
    else {
      const chunk = Buffer.alloc(64 * 1024, 7)
      const pump = (): void => {
        while (written < bytes) {
          const n = Math.min(chunk.length, bytes - written)
          written += n
          if (!socket.write(n === chunk.length ? chunk : chunk.subarray(0, n))) {
            socket.once('drain', pump)
            return
          }
        }
        socket.end()
      }
      pump()
    }
  })
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise<void>((resolve) => {
    for (const s of sockets) s.destroy()
    srv.close(() => resolve())
  }))
  const address = srv.address()
  return { port: typeof address === 'object' && address !== null ? address.port : 0, written: () => written, sockets }
}

test('a shell: a command runs, resize reaches the pty, and the exit code becomes the close', async (t) => {
  const target = await sshd(t)
  const p = pool(t, { hostVerifier: { knownHosts: target.knownHosts } })
  const { url, token, app } = await server(t, (a) => a.get('/term', ROUTE, terminalRoute(p, target)))
  const peer = await open(t, url + '/term', token('alice'))
  peer.ws.send(JSON.stringify({ type: 'resize', cols: 101, rows: 37 }))
  peer.type('stty size; echo $((6*7))x\r')
  await until(() => /37 101/.test(peer.text) && /42x/.test(peer.text), 10_000, 'the command output')
  // A bad control message gets an error answer; the session goes on.
  peer.ws.send('{"type":"resize","cols":0,"rows":5}')
  await until(() => peer.texts.some((m) => (m as { type?: string }).type === 'error'), 3000, 'an error answer')
  assert.equal(app.wsManager.stats().forwarding.active.terminal, 1)
  peer.type('exit 3\r')
  assert.deepEqual(await peer.closed, { code: 1000, reason: 'exit 3' })
  assert.deepEqual(peer.texts.at(-1), { type: 'exit', code: 3, signal: null })
  await until(() => app.wsManager.stats().forwarding.active.terminal === 0, 2000, 'the session to end')
  const f = app.wsManager.stats().forwarding
  assert.equal(f.opened.terminal, 1)
  assert.ok(f.bytesUp.terminal > 0 && f.bytesDown.terminal > 0)
})

test('25 terminals share SSH connections as the pool\'s caps say', async (t) => {
  const target = await sshd(t)
  const p = pool(t, { hostVerifier: { knownHosts: target.knownHosts }, maxSessionsPerConnection: 10, maxConnectionsPerTarget: 4 })
  const { url, token } = await server(t, (a) => a.get('/term', ROUTE, terminalRoute(p, target, { maxSessionsPerUser: 0 })))
  const before = target.connectionCount()
  const peers = await Promise.all(Array.from({ length: 25 }, async () => open(t, url + '/term', token('bob'))))
  for (const peer of peers) peer.type('echo ready-$((1+1))\r')
  await until(() => peers.every((peer) => peer.text.includes('ready-2')), 45_000, 'every shell to answer')
  assert.equal(p.stats().connections, 3)
  assert.equal(p.stats().sessions, 25)
  assert.equal(target.connectionCount() - before, 3)
  for (const peer of peers) peer.ws.close()
  await until(() => p.stats().sessions === 0, 10_000, 'every session to end')
})

test('a saturated pool: one waits then gets 1013, one past the queue gets 1013 at once', async (t) => {
  const target = await sshd(t)
  const p = pool(t, { hostVerifier: { knownHosts: target.knownHosts }, maxSessionsPerConnection: 1, maxConnectionsPerTarget: 1, maxQueue: 1, queueTimeout: 400 })
  const { url, token } = await server(t, (a) => a.get('/term', ROUTE, terminalRoute(p, target, { maxSessionsPerUser: 0 })))
  const first = await open(t, url + '/term', token('carol'))
  first.type('echo first\r')
  await until(() => first.text.includes('first'), 10_000, 'the first shell')
  const started = Date.now()
  const queued = await open(t, url + '/term', token('carol'))
  await until(() => p.stats().queued === 1, 3000, 'the second to queue')
  const refused = await open(t, url + '/term', token('carol'))
  assert.deepEqual(await refused.closed, { code: 1013, reason: 'Try again later' })
  assert.deepEqual(await queued.closed, { code: 1013, reason: 'Try again later' })
  assert.ok(Date.now() - started >= 350, 'the queued one waited queueTimeout')
  assert.equal(first.ws.readyState, WebSocket.OPEN)
})

test('refusals: an unknown host key, a target outside the allowlist, a throwing target, a user over the session cap', async (t) => {
  const target = await sshd(t)
  const stranger = await startRefusingServer()
  t.after(() => stranger.stop())
  // The pool knows another server's key: this sshd's key is unknown.
  const wrongKeys = pool(t, { hostVerifier: { knownHosts: stranger.knownHosts.replace(String(stranger.port), String(target.port)) } })
  const p = pool(t, { hostVerifier: { knownHosts: target.knownHosts } })
  const { url, token, app } = await server(t, (a) => {
    a.get('/wrong-key', ROUTE, terminalRoute(wrongKeys, target))
    // The application's target names a server the allowlist does not hold.
    a.get('/elsewhere', ROUTE, sshTerminal({ pool: p, target: () => ({ ...target.target, port: stranger.port }), allowedTargets: [`127.0.0.1:${target.port}`] }))
    a.get('/broken', ROUTE, sshTerminal({ pool: p, target: () => { throw new Error('no login for you') }, allowedTargets: [`127.0.0.1:${target.port}`] }))
    a.get('/capped', ROUTE, terminalRoute(p, target, { maxSessionsPerUser: 2 }))
  })
  const wrong = await open(t, url + '/wrong-key', token('dave'))
  assert.deepEqual(await wrong.closed, { code: 1008, reason: 'Upstream host key not verified' })
  const elsewhere = await open(t, url + '/elsewhere', token('dave'))
  assert.deepEqual(await elsewhere.closed, { code: 1008, reason: 'Target not allowed' })
  assert.equal(stranger.connections(), 0, 'nothing connected to the target outside the list')
  const broken = await open(t, url + '/broken', token('dave'))
  assert.deepEqual(await broken.closed, { code: 1011, reason: 'Internal error' })

  const a = await open(t, url + '/capped', token('erin'))
  const b = await open(t, url + '/capped', token('erin'))
  const c = await open(t, url + '/capped', token('erin'))
  assert.deepEqual(await c.closed, { code: 1008, reason: 'Too many sessions' })
  // Another user is not counted against erin's cap.
  const other = await open(t, url + '/capped', token('frank'))
  other.type('echo other\r')
  await until(() => other.text.includes('other'), 10_000, 'the other user\'s shell')
  a.ws.close()
  await a.closed
  await until(() => app.wsManager.stats().forwarding.active.terminal === 2, 3000, 'the cap to free a place')
  const d = await open(t, url + '/capped', token('erin'))
  d.type('echo again\r')
  await until(() => d.text.includes('again'), 10_000, 'a session after one ended')
  assert.equal(b.ws.readyState, WebSocket.OPEN)
  const failed = app.wsManager.stats().forwarding.failed
  assert.equal(failed['terminal:hostkey'], 1)
  assert.equal(failed['terminal:notAllowed'], 1)
  assert.equal(failed['terminal:targetFailed'], 1)
  assert.equal(failed['terminal:tooMany'], 1)
})

test('session time limit and idle timeout', async (t) => {
  const target = await sshd(t)
  const p = pool(t, { hostVerifier: { knownHosts: target.knownHosts } })
  const { url, token } = await server(t, (a) => {
    a.get('/short', ROUTE, terminalRoute(p, target, { maxSessionDuration: 600, idleTimeout: 0 }))
    a.get('/idle', ROUTE, terminalRoute(p, target, { idleTimeout: 500 }))
  })
  const short = await open(t, url + '/short', token('gina'))
  const started = Date.now()
  // Busy all along: the time limit, not the idle timeout, ends it.
  const typing = setInterval(() => { if (short.ws.readyState === WebSocket.OPEN) short.type('\r') }, 100)
  t.after(() => clearInterval(typing))
  assert.deepEqual(await short.closed, { code: 1000, reason: 'Session time limit' })
  clearInterval(typing)
  assert.ok(Date.now() - started >= 550)
  const idle = await open(t, url + '/idle', token('gina'))
  assert.deepEqual(await idle.closed, { code: 1001, reason: 'Idle timeout' })
})

test('the SSH server killed mid-session: 1011, and the pool heals once it is back', async (t) => {
  const target = await startSshd()
  t.after(() => target.stop())
  const p = pool(t, { hostVerifier: { knownHosts: target.knownHosts }, keepaliveInterval: 500 })
  const { url, token } = await server(t, (a) => a.get('/term', ROUTE, terminalRoute(p, target)))
  const peer = await open(t, url + '/term', token('hana'))
  peer.type('echo up\r')
  await until(() => peer.text.includes('up'), 10_000, 'the shell')
  await target.kill()
  assert.deepEqual(await peer.closed, { code: 1011, reason: 'Upstream unavailable' })
  await target.start()
  const again = await open(t, url + '/term', token('hana'))
  again.type('echo healed\r')
  await until(() => again.text.includes('healed'), 10_000, 'a shell after the restart')
})

test('tcpTunnel: bytes both ways, the service\'s end closes 1000, text frames 1003, a target outside the list 1008', async (t) => {
  const echo = await service(t, 'echo')
  const other = await service(t, 'echo')
  const { url, token } = await server(t, (a) => {
    a.get('/tcp', ROUTE, tcpTunnel({ target: () => ({ host: '127.0.0.1', port: echo.port }), allowedTargets: [`127.0.0.1:${echo.port}`] }))
    a.get('/other', ROUTE, tcpTunnel({ target: () => ({ host: '127.0.0.1', port: other.port }), allowedTargets: [`127.0.0.1:${echo.port}`] }))
    a.get('/nowhere', ROUTE, tcpTunnel({ target: () => ({ host: '127.0.0.1', port: 1 }), allowedTargets: ['127.0.0.1:1'] }))
  })
  const peer = await open(t, url + '/tcp', token('ivan'))
  peer.type('ping')
  await until(() => peer.text === 'ping', 3000, 'the echo')
  for (const s of echo.sockets) s.end()
  assert.deepEqual(await peer.closed, { code: 1000, reason: 'Upstream closed' })
  const texty = await open(t, url + '/tcp', token('ivan'))
  texty.ws.send('hello')
  assert.deepEqual(await texty.closed, { code: 1003, reason: 'Binary frames only' })
  const denied = await open(t, url + '/other', token('ivan'))
  assert.deepEqual(await denied.closed, { code: 1008, reason: 'Target not allowed' })
  assert.equal(other.sockets.size, 0)
  const down = await open(t, url + '/nowhere', token('ivan'))
  assert.deepEqual(await down.closed, { code: 1011, reason: 'Upstream unavailable' })
})

test('sshTunnel: through the SSH server\'s direct-tcpip channel, destinations on their own allowlist', async (t) => {
  const target = await sshd(t)
  const echo = await service(t, 'echo')
  const p = pool(t, { hostVerifier: { knownHosts: target.knownHosts } })
  const options = { pool: p, target: () => target.target, allowedTargets: [`127.0.0.1:${target.port}`], allowedDestinations: [`127.0.0.1:${echo.port}`] }
  const { url, token } = await server(t, (a) => {
    a.get('/ssh', ROUTE, sshTunnel({ ...options, to: () => ({ host: '127.0.0.1', port: echo.port }) }))
    a.get('/ssh-other', ROUTE, sshTunnel({ ...options, to: () => ({ host: '127.0.0.1', port: 22 }) }))
  })
  const peer = await open(t, url + '/ssh', token('jo'))
  peer.type('through ssh')
  await until(() => peer.text === 'through ssh', 5000, 'the echo through ssh')
  const denied = await open(t, url + '/ssh-other', token('jo'))
  assert.deepEqual(await denied.closed, { code: 1008, reason: 'Target not allowed' })
})

test('a client that stops reading while the upstream sends 100 MiB: the server holds no more than the high-water mark and a bounded overhead', async (t) => {
  const total = 100 * 1024 * 1024
  const source = await service(t, 'source', total)
  const highWaterMark = 1024 * 1024
  const { url, token, app } = await server(t, (a) => a.get('/tcp', ROUTE, tcpTunnel({ target: () => ({ host: '127.0.0.1', port: source.port }), allowedTargets: [`127.0.0.1:${source.port}`] })),
    { backpressure: { highWaterMark } })
  const peer = await open(t, url + '/tcp', token('kim'), false)
  // The client's TCP socket stops reading.
  const raw = (peer.ws as unknown as { _socket: Socket })._socket
  raw.pause()
  const before = process.memoryUsage()
  await until(() => source.written() > 0, 3000, 'the source to start')
  await new Promise((resolve) => setTimeout(resolve, 1500))
  const stalled = source.written()
  const after = process.memoryUsage()
  // Buffers held in this process (the server and, here, the source): the high-water mark and
  // stream buffers, nowhere near the 100 MiB on offer.
  const grown = (after.arrayBuffers + after.external) - (before.arrayBuffers + before.external)
  assert.ok(grown < 16 * 1024 * 1024, `buffers grew by ${grown} bytes`)
  const connection = [...app.wsManager.connections][0]
  assert.ok(connection !== undefined && connection.state === 'open', 'not closed as a slow consumer: paused instead')
  assert.ok(connection.bufferedAmount <= highWaterMark, `buffered ${connection.bufferedAmount}`)
  // Kernel buffers on both hops and the stream buffers: a few MiB, not 100.
  assert.ok(stalled < 24 * 1024 * 1024, `the source wrote ${stalled} bytes into a paused path`)
  await new Promise((resolve) => setTimeout(resolve, 500))
  assert.ok(source.written() - stalled < 1024 * 1024, 'still stalled')
  raw.resume()
  await until(() => peer.received === total, 30_000, 'every byte once the client reads again')
  assert.deepEqual(await peer.closed, { code: 1000, reason: 'Upstream closed' })
})

test('an upstream that stops reading while the client floods: the server stops reading the client', async (t) => {
  const sink = await service(t, 'sink')
  const { url, token, app } = await server(t, (a) => a.get('/tcp', ROUTE, tcpTunnel({ target: () => ({ host: '127.0.0.1', port: sink.port }), allowedTargets: [`127.0.0.1:${sink.port}`] })))
  const peer = await open(t, url + '/tcp', token('lee'))
  const frame = Buffer.alloc(64 * 1024, 1)
  // 64 MiB offered; the client's own buffer takes what the server does not read.
  for (let i = 0; i < 1024; i++) peer.ws.send(frame)
  await new Promise((resolve) => setTimeout(resolve, 1500))
  const up = app.wsManager.stats().forwarding.bytesUp.tcp
  assert.ok(up < 24 * 1024 * 1024, `the server read ${up} bytes towards a paused upstream`)
  assert.ok(peer.ws.bufferedAmount > 32 * 1024 * 1024, 'the client holds the rest')
  const connection = [...app.wsManager.connections][0]
  assert.ok(connection !== undefined && connection.state === 'open')
  // The sink reads again: everything flows.
  let got = 0
  for (const s of sink.sockets) {
    s.on('data', (chunk: Buffer) => { got += chunk.length })
    s.resume()
  }
  await until(() => got === 1024 * frame.length, 30_000, 'every byte to reach the sink')
})

test('the audit line: user, target, bytes and close; never a key, a password or a token', async (t) => {
  const target = await sshd(t)
  const refusing = await startRefusingServer()
  t.after(() => refusing.stop())
  const logs = logCapture()
  const p = pool(t, { hostVerifier: { knownHosts: target.knownHosts + refusing.knownHosts } })
  const password = 'hunter2-correct-horse-battery'
  const { url, token } = await server(t, (a) => {
    a.get('/term', ROUTE, terminalRoute(p, target))
    a.get('/pw', ROUTE, sshTerminal({ pool: p, target: () => ({ host: '127.0.0.1', port: refusing.port, username: 'root', password }), allowedTargets: [`127.0.0.1:${refusing.port}`] }))
  }, {}, logs)
  const jwtToken = token('mia')
  const peer = await open(t, url + '/term', jwtToken)
  peer.type('exit 0\r')
  assert.deepEqual(await peer.closed, { code: 1000, reason: 'exit 0' })
  const pw = await open(t, url + '/pw', jwtToken)
  assert.deepEqual(await pw.closed, { code: 1008, reason: 'Upstream authentication failed' })
  assert.equal(refusing.attempts.find((a) => a.method === 'password')?.password, password, 'the password did reach the SSH server')
  await until(() => logs.lines.filter((l) => l.msg === 'forwarding session ended').length === 2, 3000, 'two audit lines')
  const audit = logs.lines.find((l) => l.msg === 'forwarding session ended' && l.closeCode === 1000) as Record<string, unknown>
  assert.equal(audit.userId, 'mia')
  assert.equal(audit.target, `root@127.0.0.1:${target.port}`)
  assert.equal(audit.exitCode, 0)
  assert.equal(audit.forward, 'terminal')
  assert.ok((audit.bytesUp as number) > 0 && (audit.bytesDown as number) > 0 && typeof audit.durationMs === 'number')
  const text = logs.text()
  const keyBody = target.privateKey.split('\n').filter((l) => l !== '' && !l.startsWith('-----'))
  for (const secret of [password, jwtToken, jwtToken.split('.')[2] as string, ...keyBody]) assert.ok(!text.includes(secret), 'a secret reached the logs')
})

test('handler options are validated with FST_WSM_OPTION_INVALID', async (t) => {
  const target = await sshd(t)
  const p = pool(t, { hostVerifier: { knownHosts: target.knownHosts } })
  const base = { pool: p, target: (_r: FastifyRequest) => target.target, allowedTargets: ['127.0.0.1:22'] }
  assertOptionInvalid(() => sshTerminal({ ...base, allowedTargets: [] }), 'sshTerminal.allowedTargets')
  assertOptionInvalid(() => sshTerminal({ ...base, allowedTargets: ['127.0.0.1'] }), 'sshTerminal.allowedTargets')
  assertOptionInvalid(() => sshTerminal({ ...base, allowedTargets: ['127.0.0.1:70000'] }), 'sshTerminal.allowedTargets')
  assertOptionInvalid(() => sshTerminal({ ...base, allowedTargets: undefined as never }), 'sshTerminal.allowedTargets')
  assertOptionInvalid(() => sshTerminal({ ...base, pool: {} as never }), 'sshTerminal.pool')
  assertOptionInvalid(() => sshTerminal({ ...base, target: 'host' as never }), 'sshTerminal.target')
  assertOptionInvalid(() => sshTerminal({ ...base, term: 'x term' }), 'sshTerminal.term')
  assertOptionInvalid(() => sshTerminal({ ...base, maxSessionsPerUser: -1 }), 'sshTerminal.maxSessionsPerUser')
  assertOptionInvalid(() => sshTerminal({ ...base, hosts: [] } as never), 'sshTerminal.hosts')
  assertOptionInvalid(() => tcpTunnel({ target: () => ({ host: 'a', port: 1 }), allowedTargets: ['a:1'], connectTimeout: 0 }), 'tcpTunnel.connectTimeout')
  assertOptionInvalid(() => sshTunnel({ ...base, to: () => ({ host: 'a', port: 1 }), allowedDestinations: [] }), 'sshTunnel.allowedDestinations')
  assertOptionInvalid(() => tcpTunnel(undefined as never), 'tcpTunnel')
})

test('after an attacker\'s review: a stalled channel request times out, abandoned sessions leave the pool\'s queue, a closed pool gives 1001, a malformed target is the application\'s error', async (t) => {
  // An SSH server that logs in, accepts the session channel and never answers the pty request.
  const keys = utils.generateKeyPairSync('ed25519')
  const clients = new Set<{ end: () => void }>()
  const stalled = new SshServer({ hostKeys: [keys.private] }, (client) => {
    clients.add(client)
    client.on('error', () => {})
    client.on('authentication', (ctx) => ctx.accept())
    client.on('ready', () => client.on('session', (accept) => { accept() }))
  })
  await new Promise<void>((resolve) => stalled.listen(0, '127.0.0.1', resolve))
  // close() waits for every connection: end them, or the pool's keepalives hold one open.
  t.after(() => new Promise<void>((resolve) => {
    for (const client of clients) client.end()
    stalled.close(() => resolve())
  }))
  const stalledPort = (stalled.address() as { port: number }).port
  const stalledPool = pool(t, { hostVerifier: 'insecure-accept-any', readyTimeout: 400 })
  const target = await sshd(t)
  const tight = pool(t, { hostVerifier: { knownHosts: target.knownHosts }, maxSessionsPerConnection: 1, maxConnectionsPerTarget: 1, maxQueue: 10, queueTimeout: 10_000 })
  const closing = pool(t, { hostVerifier: { knownHosts: target.knownHosts } })
  const { url, token, app } = await server(t, (a) => {
    a.get('/stalled', ROUTE, sshTerminal({ pool: stalledPool, target: () => ({ host: '127.0.0.1', port: stalledPort, username: 'x', password: 'y' }), allowedTargets: [`127.0.0.1:${stalledPort}`] }))
    a.get('/tight', ROUTE, terminalRoute(tight, target, { maxSessionsPerUser: 0 }))
    a.get('/closing', ROUTE, terminalRoute(closing, target))
    a.get('/odd', ROUTE, sshTerminal({ pool: closing, target: () => ({ ...target.target, readyTimeout: 1 }) as never, allowedTargets: [`127.0.0.1:${target.port}`] }))
  })
  const hung = await open(t, url + '/stalled', token('nia'))
  assert.deepEqual(await hung.closed, { code: 1011, reason: 'Upstream unavailable' })
  await until(() => stalledPool.stats().sessions === 0, 2000, 'the stalled slot to come back')

  // One slot, held; twelve sessions opened and dropped in turn leave nobody queued.
  const holder = await open(t, url + '/tight', token('olga'))
  holder.type('echo held\r')
  await until(() => holder.text.includes('held'), 10_000, 'the held shell')
  for (let i = 0; i < 12; i++) {
    const dropped = await open(t, url + '/tight', token('mallory'))
    await until(() => tight.stats().queued >= 1, 3000, 'the request to queue')
    dropped.ws.terminate()
    await until(() => tight.stats().queued === 0, 3000, 'the abandoned request to leave the queue')
  }
  assert.equal(app.wsManager.stats().forwarding.active.terminal, 1)

  const live = await open(t, url + '/closing', token('pat'))
  live.type('echo live\r')
  await until(() => live.text.includes('live'), 10_000, 'the shell')
  await closing.close()
  assert.deepEqual(await live.closed, { code: 1001, reason: 'Server shutting down' })

  const odd = await open(t, url + '/odd', token('pat'))
  assert.deepEqual(await odd.closed, { code: 1011, reason: 'Internal error' })
  assert.equal(app.wsManager.stats().forwarding.failed['terminal:targetFailed'], 1)
})

test('a shell that reports its exit and ends its output but never closes the channel still ends the session', async (t) => {
  const keys = utils.generateKeyPairSync('ed25519')
  const clients = new Set<{ end: () => void }>()
  const lingering = new SshServer({ hostKeys: [keys.private] }, (client) => {
    clients.add(client)
    client.on('error', () => {})
    client.on('authentication', (ctx) => ctx.accept())
    client.on('ready', () => client.on('session', (accept) => {
      const session = accept()
      session.on('pty', (ok) => ok?.())
      session.on('shell', (ok) => {
        const stream = ok()
        stream.write('bye\r\n')
        stream.exit(4)
        stream.eof()
      })
    }))
  })
  await new Promise<void>((resolve) => lingering.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise<void>((resolve) => {
    for (const client of clients) client.end()
    lingering.close(() => resolve())
  }))
  const port = (lingering.address() as { port: number }).port
  const p = pool(t, { hostVerifier: 'insecure-accept-any' })
  const { url, token } = await server(t, (a) => a.get('/term', ROUTE, sshTerminal({ pool: p, target: () => ({ host: '127.0.0.1', port, username: 'x', password: 'y' }), allowedTargets: [`127.0.0.1:${port}`] })))
  const peer = await open(t, url + '/term', token('quinn'))
  assert.deepEqual(await within(peer.closed, 4000, 'close after the exit'), { code: 1000, reason: 'exit 4' })
  assert.match(peer.text, /bye/)
  assert.deepEqual(peer.texts.at(-1), { type: 'exit', code: 4, signal: null })
})
