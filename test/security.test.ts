// Issue 10, security: each test here failed on the code before the fix it guards.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import cookie from '@fastify/cookie'
import jwt, { type FastifyJWTOptions } from '@fastify/jwt'
import type { FastifyInstance } from 'fastify'
import WebSocket, { type ClientOptions } from 'ws'
import type { WsManagerOptions } from '../lib/index'
import { ipKey } from '../lib/ip'
import { DeliveryCounters } from '../lib/delivery'
import { attempt, build, closed, connect, listen, logCapture, nextMessage, waitFor } from './helper'

const SECRET = 'security-test-secret-0123456789-abcdefghijklmnop'

interface Seen { userId: string | null, closeAt: number, authorization: unknown }

interface Setup {
  jwt?: Partial<FastifyJWTOptions>
  cookie?: boolean
  logs?: ReturnType<typeof logCapture>
  trustProxy?: boolean
}

async function start (t: TestContext, options: WsManagerOptions = {}, setup: Setup = {}): Promise<{ app: FastifyInstance, url: string, seen: Seen[] }> {
  const seen: Seen[] = []
  const app = await build(t, { upgradeRateLimit: false, ...options }, {
    fastify: {
      logger: setup.logs === undefined ? false : { level: 'trace', stream: setup.logs.stream },
      trustProxy: setup.trustProxy === true
    },
    before: async (app) => {
      if (setup.cookie === true) await app.register(cookie)
      await app.register(jwt, { secret: SECRET, ...setup.jwt } as FastifyJWTOptions)
    }
  })
  app.get('/ws', { websocket: true }, (socket, request) => {
    const connection = request.wsConnection
    seen.push({ userId: connection?.userId ?? null, closeAt: connection?.closeAt ?? NaN, authorization: request.headers.authorization })
    socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }))
  })
  app.get('/other', { websocket: true }, (socket) => {
    socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }))
  })
  app.get('/open', { websocket: true, config: { wsManager: { auth: false } } }, (socket) => {
    socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }))
  })
  app.get('/api', async (request) => ({ query: request.query }))
  const url = await listen(app)
  return { app, url, seen }
}

// A token for `sub` whose signature is not the server's: what an attacker can make.
function forged (app: FastifyInstance, sub: string): string {
  const token = app.jwt.sign({ sub: 'someone' })
  const [header, , signature] = token.split('.')
  const payload = Buffer.from(JSON.stringify({ sub })).toString('base64url')
  return `${header}.${payload}.${signature}`
}

async function status (t: TestContext, url: string, options: ClientOptions & { protocols?: string[] } = {}): Promise<number | 'open'> {
  const result = await attempt(t, url, options)
  return result.ws === null ? result.status as number : 'open'
}

test('1. with verify.extractToken, a forged Bearer beside a valid token never connects as the forged subject', async (t) => {
  const { app, url, seen } = await start(t, {}, { jwt: { verify: { extractToken: (request) => request.headers['x-token'] as string | undefined } } })
  const good = app.jwt.sign({ sub: 'alice' }, { expiresIn: 60 })
  // The application's extractToken looks in x-token; the plugin picks the Authorization header first.
  assert.equal(await status(t, `${url}/ws`, { headers: { 'x-token': good, authorization: `Bearer ${forged(app, 'admin')}` } }), 401)
  assert.equal(seen.length, 0, 'no connection was accepted')
  // Each source of the plugin, with a valid token, connects as its own subject.
  await connect(t, `${url}/ws`, { headers: { authorization: `Bearer ${good}` } })
  await connect(t, `${url}/ws`, { protocols: ['chat', `bearer.${good}`] })
  await connect(t, `${url}/ws?access_token=${good}`)
  assert.deepEqual(seen.map((s) => s.userId), ['alice', 'alice', 'alice'])
  const exp = (app.jwt.decode(good) as { exp: number }).exp
  assert.ok(seen.every((s) => s.closeAt === exp * 1000), 'expiry from the verified token')
  // Forged tokens in each source are refused even with the valid one in x-token.
  assert.equal(await status(t, `${url}/ws`, { headers: { 'x-token': good }, protocols: [`bearer.${forged(app, 'admin')}`] }), 401)
  assert.equal(await status(t, `${url}/ws?access_token=${forged(app, 'admin')}`, { headers: { 'x-token': good } }), 401)
})

test('1. with verify.onlyCookie, a valid cookie and a forged Bearer (no exp) never connect as admin', async (t) => {
  const { app, url, seen } = await start(t, {}, { cookie: true, jwt: { cookie: { cookieName: 'token', signed: false }, verify: { onlyCookie: true } } })
  const good = app.jwt.sign({ sub: 'alice' }, { expiresIn: 60 })
  assert.equal(await status(t, `${url}/ws`, { headers: { cookie: `token=${good}`, authorization: `Bearer ${forged(app, 'admin')}` } }), 401)
  assert.equal(await status(t, `${url}/ws`, { headers: { cookie: `token=${good}` }, protocols: [`bearer.${forged(app, 'admin')}`] }), 401)
  assert.equal(await status(t, `${url}/ws?access_token=${forged(app, 'admin')}`, { headers: { cookie: `token=${good}` } }), 401)
  assert.equal(await status(t, `${url}/ws`, { headers: { cookie: `token=${forged(app, 'admin')}` } }), 401)
  assert.equal(seen.length, 0)
  // A good token from each source connects as alice, expiry taken from that token.
  await connect(t, `${url}/ws`, { headers: { cookie: `token=${good}` } })
  await connect(t, `${url}/ws`, { headers: { authorization: `Bearer ${good}`, cookie: `token=${forged(app, 'admin')}` } })
  await connect(t, `${url}/ws`, { protocols: ['chat', `bearer.${good}`] })
  await connect(t, `${url}/ws?access_token=${good}`)
  assert.deepEqual(seen.map((s) => s.userId), ['alice', 'alice', 'alice', 'alice'])
  assert.ok(seen.every((s) => Number.isFinite(s.closeAt)))
})

test('1. identity comes from what the verifier returned: formatUser applies; request headers are left as sent', async (t) => {
  const { app, url, seen } = await start(t, { auth: { userIdClaim: 'id' } }, {
    jwt: { formatUser: (payload) => ({ id: `user:${String((payload as { sub: string }).sub)}` }) }
  })
  await connect(t, `${url}/ws`, { protocols: ['chat', `bearer.${app.jwt.sign({ sub: 'alice' })}`] })
  assert.deepEqual(seen.map((s) => s.userId), ['user:alice'])
  assert.equal(seen[0].authorization, undefined, 'no Authorization header was written into the request')
})

test('2. the query token is taken out of WebSocket routes only: other routes keep ?access_token=', async (t) => {
  const logs = logCapture()
  const { app, url } = await start(t, {}, { logs })
  const token = app.jwt.sign({ sub: 'alice' })
  const api = await app.inject({ method: 'GET', url: '/api?access_token=keep-me&x=1' })
  assert.deepEqual(api.json(), { query: { access_token: 'keep-me', x: '1' } })
  const http = `http${url.slice(2)}`
  const viaSocket = await fetch(`${http}/api?access_token=keep-me-too`)
  assert.deepEqual(await viaSocket.json(), { query: { access_token: 'keep-me-too' } })
  await connect(t, `${url}/ws?access_token=${token}&room=1`)
  // A plain GET to the WebSocket route (a proxy that dropped Upgrade) is redacted too.
  await fetch(`${http}/ws?access_token=${token}`)
  await waitFor(() => logs.text().includes('connection opened'), 2000, 'open logged')
  assert.ok(!logs.text().includes(token), 'the token never reaches a log line')
  assert.ok(logs.text().includes('keep-me-too'), 'the other route logged its own query as it came')
})

test('3. same-origin compares scheme, host and effective port', async (t) => {
  const { app, url } = await start(t, {}, { trustProxy: true })
  const token = app.jwt.sign({ sub: 'alice' })
  const host = new URL(url).host
  const as = (headers: Record<string, string>): ClientOptions => ({ headers: { authorization: `Bearer ${token}`, ...headers } })
  assert.equal(await status(t, `${url}/ws`, as({ origin: `http://${host}` })), 'open')
  // A plain-HTTP upgrade is not same-origin with an https page of the same host (nor the reverse).
  assert.equal(await status(t, `${url}/ws`, as({ origin: `https://${host}` })), 403)
  // Behind a TLS proxy: X-Forwarded-Proto https, Host with the default port, Origin without it.
  assert.equal(await status(t, `${url}/ws`, as({ origin: 'https://app.example', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'app.example:443' })), 'open')
  assert.equal(await status(t, `${url}/ws`, as({ origin: 'http://app.example', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'app.example' })), 403)
  assert.equal(await status(t, `${url}/ws`, as({ origin: 'https://app.example:8443', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'app.example' })), 403)
  assert.equal(await status(t, `${url}/ws`, as({ origin: 'null' })), 403)
})

test('4. a user whose id is ip:<address> has a bucket of its own, apart from anonymous clients of that address', async (t) => {
  const { app, url } = await start(t, { messageRateLimit: { max: 1, timeWindow: 60_000, burst: 2, policy: 'drop' } })
  const anonymous = await connect(t, `${url}/open`)
  const echoed: string[] = []
  anonymous.on('message', (data) => echoed.push(data.toString()))
  for (let i = 0; i < 3; i++) anonymous.send(`a${i}`)
  await waitFor(() => (app.wsManager.stats().admission.messages?.refused ?? 0) === 1, 2000, 'third message refused')
  await waitFor(() => echoed.length === 2, 2000, 'two echoes')
  assert.deepEqual(echoed, ['a0', 'a1'])
  const crafted = await connect(t, `${url}/ws`, { headers: { authorization: `Bearer ${app.jwt.sign({ sub: 'ip:127.0.0.1' })}` } })
  crafted.send('mine')
  assert.equal(await nextMessage(crafted), 'mine', 'the crafted user id does not share the exhausted IP bucket')
  const stats = app.wsManager.stats().admission.messages
  assert.deepEqual(stats?.refusedByIp, { '127.0.0.1': 1 })
  assert.deepEqual(stats?.refusedByUser, {})
})

test('4. delivery counters keep anonymous and untracked users apart from every user id, and bounded', () => {
  const counters = new DeliveryCounters()
  const log = { warn () {} } as never
  counters.slowConsumerClosed(null, log, 0)
  counters.slowConsumerClosed('(anonymous)', log, 0)
  for (let i = 0; i < 10_010; i++) counters.dropped(`u${i}`, log, false, 0)
  const s = counters.snapshot()
  assert.equal(s.anonymous.slowConsumerCloses, 1)
  assert.equal(s.byUser['(anonymous)'].slowConsumerCloses, 1, 'a user named (anonymous) is a user')
  assert.equal(Object.keys(s.byUser).length, 10_000)
  assert.equal(s.untracked.dropped, 11)
})

test('5. maxConnectionsPerIp defaults to 100: the 101st connection from one address gets 429; IPv6 counts by /64', async (t) => {
  const { url } = await start(t, { auth: false, messageRateLimit: false })
  const clients: WebSocket[] = []
  for (let i = 0; i < 100; i++) {
    const ws = new WebSocket(`${url}/open`)
    t.after(() => ws.terminate())
    clients.push(ws)
  }
  await Promise.all(clients.map((ws) => once(ws, 'open')))
  const answer = await attempt(t, `${url}/open`)
  assert.equal(answer.status, 429)
  assert.equal(answer.body?.message, 'Too many connections from this address')
  clients[0].terminate()
  await waitFor(() => clients[0].readyState === WebSocket.CLOSED, 2000, 'one closed')
  // A slot frees once the server has seen the close.
  const deadline = Date.now() + 2000
  let reopened = await attempt(t, `${url}/open`)
  while (reopened.ws === null && Date.now() < deadline) reopened = await attempt(t, `${url}/open`)
  assert.ok(reopened.ws !== null)
  assert.equal(ipKey('2001:db8:1:2:aaaa::1'), ipKey('2001:0db8:0001:0002:ffff:ffff:ffff:ffff'))
  assert.notEqual(ipKey('2001:db8:1:2::1'), ipKey('2001:db8:1:3::1'))
  assert.equal(ipKey('::ffff:10.0.0.1'), '10.0.0.1')
})

test('5. client pings come out of the message budget: a ping flood is not answered thousands of times', async (t) => {
  const { app, url } = await start(t, { messageRateLimit: { max: 10, timeWindow: 1000, burst: 20, policy: 'close' } })
  const client = await connect(t, `${url}/ws`, { headers: { authorization: `Bearer ${app.jwt.sign({ sub: 'alice' })}` } })
  let pongs = 0
  client.on('pong', () => { pongs++ })
  const end = closed(client)
  for (let i = 0; i < 5000; i++) client.ping()
  const { code, reason } = await end
  assert.equal(code, 1008)
  assert.equal(reason, 'Rate limit exceeded')
  assert.ok(pongs <= 21, `${pongs} pongs for 5000 pings`)
})

test('5. under the drop policy, pings over the budget go unanswered and the connection stays', async (t) => {
  const { app, url } = await start(t, { messageRateLimit: { max: 1, timeWindow: 60_000, burst: 5, policy: 'drop' } })
  const client = await connect(t, `${url}/ws`, { headers: { authorization: `Bearer ${app.jwt.sign({ sub: 'alice' })}` } })
  let pongs = 0
  client.on('pong', () => { pongs++ })
  for (let i = 0; i < 50; i++) client.ping()
  await waitFor(() => (app.wsManager.stats().admission.messages?.refused ?? 0) === 45, 2000, 'pings refused')
  // The five pongs may still be on their way to the client when the server has counted.
  await waitFor(() => pongs >= 5, 2000, 'the pongs within the budget')
  await new Promise((resolve) => setTimeout(resolve, 100))
  assert.equal(pongs, 5)
  assert.equal(client.readyState, WebSocket.OPEN)
})

test('5. the plugin-wide upgrade limit is one budget across every route, not one per route', async (t) => {
  const { app, url } = await start(t, { upgradeRateLimit: { max: 3, timeWindow: 60_000 } })
  const as = { headers: { authorization: `Bearer ${app.jwt.sign({ sub: 'alice' })}` } }
  const opened: Array<number | 'open'> = []
  for (const path of ['/ws', '/ws', '/other', '/other', '/ws']) opened.push(await status(t, `${url}${path}`, as))
  assert.deepEqual(opened, ['open', 'open', 'open', 429, 429])
})
