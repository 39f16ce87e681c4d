import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import type { FastifyInstance, FastifyServerOptions } from 'fastify'
import jwt from '@fastify/jwt'
import rateLimit from '@fastify/rate-limit'
import { Redis } from 'ioredis'
import WebSocket, { type ClientOptions } from 'ws'
import { loadConfig, normalizeOptions, type WsManagerOptions } from '../lib/index'
import { attempt, build, closed, connect, listen, logCapture, nextMessage, waitFor, type Attempt } from './helper'

const SECRET = 'admission-test-secret-0123456789-abcdefghij'

type Options = ClientOptions & { protocols?: string[] }

interface Started {
  app: FastifyInstance
  url: string
  /** Client options carrying a valid token for this user. */
  as: (sub: string, extra?: ClientOptions) => ClientOptions
  /** `connections.size` seen by every handler run, to check caps were never exceeded. */
  sizes: number[]
}

interface StartOptions {
  logs?: ReturnType<typeof logCapture>
  fastify?: FastifyServerOptions
  /** Runs before @fastify/jwt and the plugin are registered. */
  before?: (app: FastifyInstance) => Promise<void>
  /** Extra routes, added before listening. */
  routes?: (app: FastifyInstance) => void
}

async function start (t: TestContext, options: WsManagerOptions = {}, setup: StartOptions = {}): Promise<Started> {
  const sizes: number[] = []
  const logger = setup.logs === undefined ? false : { level: 'info', stream: setup.logs.stream }
  const app = await build(t, options, {
    fastify: { logger, ...setup.fastify },
    before: async (app) => {
      if (setup.before !== undefined) await setup.before(app)
      await app.register(jwt, { secret: SECRET })
    }
  })
  app.get('/ws', { websocket: true }, (socket) => {
    sizes.push(app.wsManager.connections.size)
    socket.on('message', (data) => socket.send(data))
  })
  setup.routes?.(app)
  const url = await listen(app)
  const as = (sub: string, extra: ClientOptions = {}): ClientOptions => ({
    ...extra,
    headers: { ...extra.headers, authorization: `Bearer ${app.jwt.sign({ sub })}` }
  })
  return { app, url, as, sizes }
}

/** Like attempt(), but the answer must be a refusal with this status and a JSON error body. */
async function refused (t: TestContext, url: string, status: number, options: Options = {}): Promise<Attempt> {
  const result = await attempt(t, url, options)
  assert.equal(result.ws, null, `expected ${status}, the upgrade succeeded`)
  assert.equal(result.status, status)
  assert.equal(result.body?.statusCode, status)
  assert.equal(typeof result.body?.error, 'string')
  assert.equal(typeof result.body?.message, 'string')
  return result
}

function assertRetryAfter (result: Attempt): void {
  const value = Number(result.headers['retry-after'])
  assert.ok(Number.isInteger(value) && value >= 1, `Retry-After ${String(result.headers['retry-after'])}`)
}

test('an Origin not allowed gets 403 before the upgrade and is logged; no Origin passes unless requireOrigin', async (t) => {
  const logs = logCapture()
  const { url, as, app } = await start(t, { allowedOrigins: ['https://app.example.com', /^https:\/\/[a-z]+\.example\.org$/] }, { logs })
  await connect(t, url + '/ws', as('alice', { origin: 'https://app.example.com' }))
  await connect(t, url + '/ws', as('alice', { origin: 'https://chat.example.org' }))
  await connect(t, url + '/ws', as('alice'))
  for (const origin of ['https://evil.example.com', 'https://app.example.com.evil.net', 'http://app.example.com', 'null']) {
    const answer = await refused(t, url + '/ws', 403, as('alice', { origin }))
    assert.equal(answer.body?.error, 'Forbidden', origin)
  }
  // The origin is checked first: a forbidden origin without a token is a 403, not a 401.
  await refused(t, url + '/ws', 403, { origin: 'https://evil.example.com' })
  assert.equal(app.wsManager.connections.size, 3)
  assert.equal(app.wsManager.stats().admission.refused['403'], 5)
  assert.equal(app.wsManager.stats().admission.authFailures, 0)
  const lines = logs.lines.filter((l) => l.msg === 'upgrade rejected')
  assert.equal(lines.length, 5)
  assert.ok(lines.every((l) => l.statusCode === 403))

  const strict = await start(t, { allowedOrigins: ['https://app.example.com'], requireOrigin: true })
  await refused(t, strict.url + '/ws', 403, strict.as('alice'))
  await connect(t, strict.url + '/ws', strict.as('alice', { origin: 'https://app.example.com' }))
})

test('the default same-origin policy lets the page\'s own origin in and refuses others with 403', async (t) => {
  const { url, as } = await start(t)
  const own = url.replace('ws://', 'http://')
  await connect(t, url + '/ws', as('alice', { origin: own }))
  await refused(t, url + '/ws', 403, as('alice', { origin: 'http://localhost:1' }))
  await refused(t, url + '/ws', 403, as('alice', { origin: 'not an origin' }))
})

test('the default upgrade limit is 30 a minute per user, then 429 with Retry-After before the upgrade', async (t) => {
  assert.deepEqual(normalizeOptions({}).upgradeRateLimit, { max: 30, timeWindow: 60_000 })
  const logs = logCapture()
  const { url, as, app } = await start(t, {}, { logs })
  for (let i = 0; i < 30; i++) {
    const client = await connect(t, url + '/ws', as('alice'))
    client.terminate()
  }
  const over = await refused(t, url + '/ws', 429, as('alice'))
  assertRetryAfter(over)
  assert.equal(over.body?.error, 'Too Many Requests')
  assert.equal(app.wsManager.stats().connections.opened, 30)
  assert.ok(logs.lines.some((l) => l.msg === 'upgrade rejected' && l.statusCode === 429))
})

test('the upgrade limit is keyed by user after authentication: user A over it gets 429 while user B from the same IP connects', async (t) => {
  const { url, as, app } = await start(t, { upgradeRateLimit: { max: 2, timeWindow: 60_000 }, auth: { failureLimit: false } })
  // Failed authentications come first and are refused as such: they never reach the rate limit.
  for (let i = 0; i < 3; i++) await refused(t, url + '/ws', 401, { headers: { authorization: 'Bearer not.a.token' } })
  await connect(t, url + '/ws', as('alice'))
  await connect(t, url + '/ws', as('alice'))
  assertRetryAfter(await refused(t, url + '/ws', 429, as('alice')))
  // Keyed by IP, bob would share alice's exhausted budget.
  await connect(t, url + '/ws', as('bob'))
  await connect(t, url + '/ws', as('bob'))
  await refused(t, url + '/ws', 429, as('bob'))
  // A bad token is still a 401 while both users are over their budgets.
  await refused(t, url + '/ws', 401, { headers: { authorization: 'Bearer not.a.token' } })
  assert.equal(app.wsManager.connections.size, 4)
  assert.deepEqual(app.wsManager.stats().admission.refused, { 401: 4, 429: 2 })
})

test('without auth the upgrade limit is keyed by IP; per-route config sets or lifts it', async (t) => {
  const { url } = await start(t, { auth: false, upgradeRateLimit: { max: 2, timeWindow: 60_000 } }, {
    fastify: { trustProxy: true },
    routes: (app) => {
      app.get('/free', { websocket: true, config: { wsManager: { upgradeRateLimit: false } } }, () => {})
      app.get('/tight', { websocket: true, config: { wsManager: { upgradeRateLimit: { max: 1, timeWindow: 60_000 } } } }, () => {})
    }
  })
  const from = (ip: string): ClientOptions => ({ headers: { 'x-forwarded-for': ip } })
  await connect(t, url + '/ws', from('10.0.0.1'))
  await connect(t, url + '/ws', from('10.0.0.1'))
  assertRetryAfter(await refused(t, url + '/ws', 429, from('10.0.0.1')))
  await connect(t, url + '/ws', from('10.0.0.2'))

  for (let i = 0; i < 5; i++) await connect(t, url + '/free', from('10.0.0.1'))

  await connect(t, url + '/tight', from('10.0.0.3'))
  await refused(t, url + '/tight', 429, from('10.0.0.3'))
})

// Once a 500 "fastify.createRateLimit is not a function": @fastify/rate-limit was only registered for a plugin-level limit.
test('a route limit where the plugin-level upgrade limit is off still limits (and does not fail)', async (t) => {
  const { url } = await start(t, { auth: false, upgradeRateLimit: false }, {
    routes: (app) => {
      app.get('/limited', { websocket: true, config: { wsManager: { upgradeRateLimit: { max: 1, timeWindow: 60_000 } } } }, () => {})
    }
  })
  await connect(t, url + '/limited')
  await refused(t, url + '/limited', 429)
})

test('two app instances sharing a Redis store share the upgrade budget', async (t) => {
  const nameSpace = `fastify-ws-manager-test-${process.pid}-${randomUUID()}-`
  // No retries: without Redis the test fails at once with ECONNREFUSED instead of hanging.
  const clients = [0, 1].map(() => new Redis({ host: '127.0.0.1', port: 6379, lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null }))
  t.after(async () => {
    try {
      const keys = await clients[0].keys(`${nameSpace}*`)
      if (keys.length > 0) await clients[0].del(...keys)
    } finally {
      for (const c of clients) c.disconnect()
    }
  })
  await Promise.all(clients.map((c) => c.connect())).catch((err: Error) => {
    throw new Error(`this test needs Redis on 127.0.0.1:6379: ${err.message}`)
  })
  const instances = await Promise.all(clients.map((redis) => start(t, { upgradeRateLimit: { max: 3, timeWindow: 60_000 } }, {
    before: async (app) => { await app.register(rateLimit, { global: false, redis, nameSpace }) }
  })))
  const [one, two] = instances
  await connect(t, one.url + '/ws', one.as('alice'))
  await connect(t, two.url + '/ws', two.as('alice'))
  await connect(t, one.url + '/ws', one.as('alice'))
  // Each instance alone has seen at most two of alice's upgrades; together they saw three.
  assertRetryAfter(await refused(t, two.url + '/ws', 429, two.as('alice')))
  await refused(t, one.url + '/ws', 429, one.as('alice'))
  await connect(t, two.url + '/ws', two.as('bob'))

  const keys = await clients[0].keys(`${nameSpace}*`)
  // One key space for every route: ["ws","*","user",id].
  const alice = keys.find((k) => k.endsWith('["ws","*","user","alice"]'))
  assert.ok(alice !== undefined, `alice's counter lives in Redis: ${keys.join(', ')}`)
  assert.equal(Number(await clients[0].get(alice)), 5)
})

test('failed authentications are limited per (IP, subject) and per IP: 429 before the signature is checked, NAT neighbours unaffected', async (t) => {
  let verified = 0
  const { url, app, as } = await start(t, { auth: { failureLimit: { max: 3, ipMax: 5, timeWindow: 60_000 } }, upgradeRateLimit: false }, {
    fastify: { trustProxy: true },
    // Counts every verification the plugin asks @fastify/jwt for (request.jwtVerify()).
    before: async (app) => {
      app.addHook('onRequest', async (request) => {
        const own = request as unknown as { jwtVerify: (...args: unknown[]) => Promise<unknown> }
        const original = own.jwtVerify
        own.jwtVerify = function (this: unknown, ...args: unknown[]) {
          // The promise form calls itself again with a callback: count the outer call only.
          if (typeof args[1] !== 'function') verified++
          return original.apply(this, args)
        }
      })
    }
  })
  const from = (ip: string, options: ClientOptions = {}): ClientOptions => ({ ...options, headers: { ...options.headers, 'x-forwarded-for': ip } })
  const forged = (sub: string): ClientOptions => ({ headers: { authorization: `Bearer ${app.jwt.sign({ sub }).slice(0, -4)}AAAA` } })

  for (let i = 0; i < 3; i++) await refused(t, url + '/ws', 401, from('10.1.1.1', forged('alice')))
  assert.equal(verified, 3)
  const blocked = await refused(t, url + '/ws', 429, from('10.1.1.1', forged('alice')))
  assertRetryAfter(blocked)
  // Over the budget even alice's good token waits: refused before any verification.
  await refused(t, url + '/ws', 429, from('10.1.1.1', as('alice')))
  assert.equal(verified, 3, 'no signature was checked for (IP, alice) over its budget')
  // Another user behind the same address (a NAT) is not locked out by alice's failures.
  await connect(t, url + '/ws', from('10.1.1.1', as('bob')))
  await refused(t, url + '/ws', 401, from('10.1.1.1'))

  // The IP-wide budget (ipMax 5) bounds a client that rotates subjects: 4 failures so far.
  await refused(t, url + '/ws', 401, from('10.1.1.1', forged('carol')))
  await refused(t, url + '/ws', 429, from('10.1.1.1', as('bob')))
  await refused(t, url + '/ws', 429, from('10.1.1.1', forged('dave')))

  // Another IP is not affected.
  await refused(t, url + '/ws', 401, from('10.1.1.2', forged('alice')))
  await connect(t, url + '/ws', from('10.1.1.2', as('alice')))
  const stats = app.wsManager.stats().admission
  assert.equal(stats.authFailures, 6)
  assert.equal(stats.refused['429'], 4)
})

test('message rate limit, policy close: one bucket per user across connections; the connection over it closes with 1008', async (t) => {
  const logs = logCapture()
  const { url, as, app } = await start(t, {
    upgradeRateLimit: false,
    messageRateLimit: { max: 3, timeWindow: 60_000, burst: 3, policy: 'close' }
  }, { logs })
  const a = await connect(t, url + '/ws', as('alice'))
  const b = await connect(t, url + '/ws', as('alice'))
  const bob = await connect(t, url + '/ws', as('bob'))
  for (const text of ['1', '2']) {
    a.send(text)
    assert.equal(await nextMessage(a), text)
  }
  b.send('3')
  assert.equal(await nextMessage(b), '3')
  // alice's bucket is empty now, whichever of her sockets sends.
  const bClosed = closed(b)
  for (let i = 0; i < 5; i++) b.send(`over ${i}`)
  assert.deepEqual(await bClosed, { code: 1008, reason: 'Rate limit exceeded' })

  bob.send('bob is fine')
  assert.equal(await nextMessage(bob), 'bob is fine')
  const aClosed = closed(a)
  a.send('4')
  assert.deepEqual(await aClosed, { code: 1008, reason: 'Rate limit exceeded' })

  const messages = app.wsManager.stats().admission.messages
  assert.ok(messages !== null)
  // At least the two messages that closed the two sockets; the rest of b's burst may land while it closes.
  assert.ok(messages.refused >= 2)
  assert.equal(messages.refusedByUser.alice, messages.refused)
  assert.equal(messages.refusedByUser.bob, undefined)
  // One line per connection closed, not one per refused message.
  const lines = logs.lines.filter((l) => l.msg === 'message rate limit exceeded')
  assert.equal(lines.length, 2)
  assert.ok(lines.every((l) => l.userId === 'alice' && l.level === 40))
})

test('message rate limit, policy drop: messages over it are dropped and counted, logged once per episode', async (t) => {
  const logs = logCapture()
  // One token a second: a burst of six is well inside one refill.
  const { url, as, app } = await start(t, {
    upgradeRateLimit: false,
    messageRateLimit: { max: 3, timeWindow: 3000, burst: 3, policy: 'drop' }
  }, { logs })
  const client = await connect(t, url + '/ws', as('alice'))
  const echoes: string[] = []
  client.on('message', (data) => echoes.push(data.toString()))
  const refusedCount = (): number => app.wsManager.stats().admission.messages?.refused ?? 0

  for (let i = 0; i < 6; i++) client.send(`m${i}`)
  await waitFor(() => refusedCount() === 3, 5000, 'three refused messages')
  await waitFor(() => echoes.length === 3, 5000, 'three echoes')
  assert.deepEqual(echoes, ['m0', 'm1', 'm2'])

  // The episode ends when a message gets through again: after a refill (one token a second)
  // and after the second the plugin stops reading a client over its budget.
  await new Promise((resolve) => setTimeout(resolve, 1100))
  client.send('probe')
  await waitFor(() => echoes.includes('probe'), 3000, 'the probe after the refill')
  const beforeSecond = refusedCount()
  for (let i = 0; i < 4; i++) client.send(`n${i}`)
  await waitFor(() => refusedCount() >= beforeSecond + 3, 5000, 'the second episode')

  assert.equal(client.readyState, WebSocket.OPEN, 'drop never closes')
  const stats = app.wsManager.stats().admission.messages
  assert.equal(stats?.refusedByUser.alice, refusedCount())
  const lines = logs.lines.filter((l) => l.msg === 'message rate limit exceeded')
  assert.equal(lines.length, 2, 'one line per episode')
  assert.ok(lines.every((l) => l.userId === 'alice' && l.policy === 'drop'))
})

test('maxConnections: over it 503 with Retry-After before the upgrade; the count stays exact under churn', async (t) => {
  const logs = logCapture()
  const { url, as, app, sizes } = await start(t, { maxConnections: 3, upgradeRateLimit: false }, { logs })

  const burst = await Promise.all(Array.from({ length: 12 }, (_, i) => attempt(t, url + '/ws', as(`u${i}`))))
  const opened = burst.filter((r) => r.ws !== null)
  assert.equal(opened.length, 3)
  for (const r of burst.filter((r) => r.ws === null)) {
    assert.equal(r.status, 503)
    assert.equal(r.body?.error, 'Service Unavailable')
    assertRetryAfter(r)
  }
  for (const r of opened) r.ws?.terminate()
  await waitFor(() => app.wsManager.connections.size === 0)

  // Churn: rounds of concurrent upgrades, each opened socket dropped a few milliseconds later.
  let refusals = burst.length - opened.length
  let churned = 0
  for (let round = 0; round < 6; round++) {
    await Promise.all(Array.from({ length: 8 }, async (_, i) => {
      const r = await attempt(t, url + '/ws', as(`r${round}-${i}`))
      if (r.ws !== null) {
        churned++
        const ws = r.ws
        setTimeout(() => ws.terminate(), (i * 3) % 10)
      } else {
        assert.equal(r.status, 503)
        refusals++
      }
    }))
  }
  assert.ok(churned > 3, `only ${churned} upgrades got through the churn`)
  await waitFor(() => app.wsManager.connections.size === 0, 5000, 'every connection to close')
  const stats = app.wsManager.stats()
  assert.equal(stats.connections.opened, stats.connections.closed)
  assert.equal(stats.admission.refused['503'], refusals)
  assert.ok(Math.max(...sizes) <= 3, `at most 3 open, saw ${Math.max(...sizes)}`)
  assert.equal(logs.lines.filter((l) => l.msg === 'upgrade rejected' && l.statusCode === 503).length, refusals)

  // After all that, exactly three fit again.
  for (let i = 0; i < 3; i++) await connect(t, url + '/ws', as(`after${i}`))
  await refused(t, url + '/ws', 503, as('after3'))
})

test('maxConnectionsPerUser: over it 429 before the upgrade for that user only, exact under concurrent upgrades', async (t) => {
  const { url, as, app } = await start(t, { maxConnectionsPerUser: 2, upgradeRateLimit: false })
  const results = await Promise.all(Array.from({ length: 8 }, () => attempt(t, url + '/ws', as('alice'))))
  const opened = results.filter((r) => r.ws !== null)
  assert.equal(opened.length, 2)
  for (const r of results.filter((r) => r.ws === null)) {
    assert.equal(r.status, 429)
    assert.equal(r.body?.error, 'Too Many Requests')
  }
  await connect(t, url + '/ws', as('bob'))
  assert.equal(app.wsManager.connections.countByUser('alice'), 2)

  // Room frees as soon as one of alice's sockets is gone.
  const first = opened[0].ws as WebSocket
  const gone = closed(first)
  first.close(1000)
  await gone
  await waitFor(() => app.wsManager.connections.countByUser('alice') === 1)
  await connect(t, url + '/ws', as('alice'))
  await refused(t, url + '/ws', 429, as('alice'))
})

test('maxConnectionsPerUser with onUserLimit closeOldest: the new connection gets in and the oldest closes with 1008', async (t) => {
  const { url, as, app } = await start(t, { maxConnectionsPerUser: 2, onUserLimit: 'closeOldest', upgradeRateLimit: false })
  const sockets: WebSocket[] = []
  const closes: Array<Promise<{ code: number, reason: string }>> = []
  for (let i = 0; i < 5; i++) {
    const ws = await connect(t, url + '/ws', as('alice'))
    sockets.push(ws)
    closes.push(closed(ws))
    await waitFor(() => app.wsManager.connections.byUser('alice').filter((c) => c.state === 'open').length === Math.min(i + 1, 2))
  }
  for (let i = 0; i < 3; i++) assert.deepEqual(await closes[i], { code: 1008, reason: 'Connection limit exceeded' })
  await waitFor(() => app.wsManager.connections.countByUser('alice') === 2)
  for (const ws of sockets.slice(3)) {
    assert.equal(ws.readyState, WebSocket.OPEN)
    ws.send('still open')
    assert.equal(await nextMessage(ws), 'still open')
  }
  const bob = await connect(t, url + '/ws', as('bob'))
  assert.equal(bob.readyState, WebSocket.OPEN)
  assert.equal(app.wsManager.connections.size, 3)
})

test('a route opts out of auth with config.wsManager.auth: false; the others still require a token', async (t) => {
  const seen: Array<{ userId: string | null, user: unknown }> = []
  const { url, as } = await start(t, {}, {
    routes: (app) => {
      app.get('/public', { websocket: true, config: { wsManager: { auth: false } } }, (_socket, request) => {
        seen.push({ userId: request.wsConnection?.userId ?? null, user: request.wsConnection?.user ?? null })
      })
    }
  })
  await connect(t, url + '/public')
  // A token on an opted-out route is neither required nor verified.
  await connect(t, url + '/public', { headers: { authorization: 'Bearer not.a.token' } })
  await waitFor(() => seen.length === 2)
  assert.deepEqual(seen, [{ userId: null, user: null }, { userId: null, user: null }])
  await refused(t, url + '/ws', 401)
  await connect(t, url + '/ws', as('alice'))
})

test('loadConfig reads JWT_SECRET, ALLOWED_ORIGINS, UPGRADE_RATE_LIMIT, MESSAGE_RATE_LIMIT, MAX_CONNECTIONS and MAX_CONNECTIONS_PER_USER', () => {
  const defaults = loadConfig({})
  assert.equal(defaults.jwtSecret, null)
  assert.equal(defaults.options.allowedOrigins, 'same-origin')
  assert.deepEqual(defaults.options.upgradeRateLimit, { max: 30, timeWindow: 60_000 })
  assert.deepEqual(defaults.options.messageRateLimit, { max: 100, timeWindow: 1000, burst: 200, policy: 'close' })
  assert.equal(defaults.options.maxConnections, 0)
  assert.equal(defaults.options.maxConnectionsPerUser, 0)

  const secret = 's3cret-s3cret-s3cret-s3cret-s3cret-42'
  const custom = loadConfig({
    JWT_SECRET: secret,
    ALLOWED_ORIGINS: 'https://app.example.com, http://localhost:8080',
    UPGRADE_RATE_LIMIT: '5/1000',
    MESSAGE_RATE_LIMIT: '10/2000',
    MESSAGE_RATE_POLICY: 'drop',
    MAX_CONNECTIONS: '1000',
    MAX_CONNECTIONS_PER_USER: '3'
  })
  assert.equal(custom.jwtSecret, secret)
  assert.deepEqual(custom.options.allowedOrigins, ['https://app.example.com', 'http://localhost:8080'])
  assert.deepEqual(custom.options.upgradeRateLimit, { max: 5, timeWindow: 1000 })
  assert.deepEqual(custom.options.messageRateLimit, { max: 10, timeWindow: 2000, burst: 20, policy: 'drop' })
  assert.equal(custom.options.maxConnections, 1000)
  assert.equal(custom.options.maxConnectionsPerUser, 3)
  // What loadConfig produces passes the plugin's own validation.
  normalizeOptions(custom.options)

  assert.equal(loadConfig({ ALLOWED_ORIGINS: '*' }).options.allowedOrigins, '*')
  for (const off of ['off', 'false', '0']) {
    assert.equal(loadConfig({ UPGRADE_RATE_LIMIT: off }).options.upgradeRateLimit, false, off)
    assert.equal(loadConfig({ MESSAGE_RATE_LIMIT: off }).options.messageRateLimit, false, off)
  }
})

test('bad admission environment values are FST_WSM_ENV_INVALID, and a short JWT_SECRET is not echoed', () => {
  const bad: Array<Record<string, string>> = [
    { JWT_SECRET: 'too-short-secret' },
    { ALLOWED_ORIGINS: 'app.example.com' },
    { ALLOWED_ORIGINS: 'https://app.example.com/path' },
    { ALLOWED_ORIGINS: 'ftp://files.example.com' },
    { UPGRADE_RATE_LIMIT: '30' },
    { UPGRADE_RATE_LIMIT: '0/60000' },
    { UPGRADE_RATE_LIMIT: '30/0' },
    { UPGRADE_RATE_LIMIT: 'lots' },
    { MESSAGE_RATE_LIMIT: '100/1s' },
    { MESSAGE_RATE_POLICY: 'wait' },
    { MAX_CONNECTIONS: '-1' },
    { MAX_CONNECTIONS: 'many' },
    { MAX_CONNECTIONS_PER_USER: '1.5' },
    { MAX_CONNECTIONS_PER_USER: '-2' }
  ]
  for (const env of bad) {
    assert.throws(() => loadConfig(env), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'FST_WSM_ENV_INVALID', JSON.stringify(env))
      return true
    })
  }
  assert.throws(() => loadConfig({ JWT_SECRET: 'too-short-secret' }), (err: Error) => !err.message.includes('too-short-secret'))
})

test('admission settings from the environment are enforced end to end', async (t) => {
  const config = loadConfig({ ALLOWED_ORIGINS: 'https://app.example.com', MAX_CONNECTIONS_PER_USER: '1', UPGRADE_RATE_LIMIT: '3/60000', MAX_CONNECTIONS: '2' })
  const { url, as } = await start(t, config.options)
  const origin = 'https://app.example.com'
  await connect(t, url + '/ws', as('alice', { origin }))
  await refused(t, url + '/ws', 403, as('bob', { origin: 'https://evil.example.com' }))
  await refused(t, url + '/ws', 429, as('alice', { origin }))
  await connect(t, url + '/ws', as('bob', { origin }))
  await refused(t, url + '/ws', 503, as('carol', { origin }))
  // alice's third upgrade is inside her rate budget and meets the server cap; the fourth is over the budget.
  await refused(t, url + '/ws', 503, as('alice', { origin }))
  const last = await refused(t, url + '/ws', 429, as('alice', { origin }))
  assertRetryAfter(last)
  assert.equal(last.body?.message, 'Too many connection attempts')
})
