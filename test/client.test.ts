// The client (fastify-ws-manager/client) in Node against the real plugin on loopback, with
// tokens signed by @fastify/jwt. The client uses the ws package here (Node 20 has no global
// WebSocket), which shows it the status and Retry-After of a refused upgrade.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import Fastify, { type FastifyInstance } from 'fastify'
import jwt from '@fastify/jwt'
import WebSocket from 'ws'
import wsManager, { type WsManagerOptions } from '../lib/index'
import { createClient, backoffDelay, RECONNECT_DEFAULTS, type Client, type ClientOptions, type CloseEvent } from '../lib/client/index'
import { connect, waitFor, within } from './helper'

const SECRET = 'client-test-secret-0123456789-abcdefghijklmn'

/** A seeded PRNG (mulberry32): the same jitter on every run. */
function seeded (seed: number): () => number {
  let a = seed
  return () => {
    a = (a + 0x6D2B79F5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

interface Server { app: FastifyInstance, base: string, url: string, sign: (sub?: string, seconds?: number) => string }

async function server (t: TestContext, options: WsManagerOptions = {}): Promise<Server> {
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(jwt, { secret: SECRET })
  await app.register(wsManager, { heartbeat: false, ...options })
  app.get('/ws', {
    websocket: true,
    config: {
      wsManager: {
        messages: {
          echo: { handler: (message: Record<string, unknown>) => ({ ...message, type: 'echoed' }) },
          value: { handler: () => 42 },
          nothing: { handler: () => undefined },
          slow: { handler: () => new Promise(() => {}) },
          whoami: { handler: (_m: unknown, connection: { id: string, userId: string | null }) => ({ type: 'me', connectionId: connection.id, userId: connection.userId }) },
          // The close codes on command.
          close: {
            handler: (message: { code: number, reason?: string }, connection: { close: (code: number, reason: string) => Promise<unknown> }) => {
              connection.close(message.code, message.reason ?? '').catch(() => {})
            }
          },
          drop: { handler: (_m: unknown, connection: { terminate: () => Promise<unknown> }) => { connection.terminate().catch(() => {}) } }
        }
      }
    }
  }, () => {})
  // No message router: auth.refresh goes unanswered there.
  app.get('/plain', { websocket: true }, () => {})
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  const base = `ws://127.0.0.1:${address.port}`
  const sign = (sub = 'ann', seconds = 3600): string => app.jwt.sign({ sub, exp: Math.floor(Date.now() / 1000) + seconds })
  return { app, base, url: base + '/ws', sign }
}

/** A client closed when the test ends, with every event it emitted recorded. */
function client (t: TestContext, options: ClientOptions): { c: Client, closes: CloseEvent[], opens: number[], errors: Error[], statesAtClose: string[] } {
  const c = createClient(options)
  const closes: CloseEvent[] = []
  const opens: number[] = []
  const errors: Error[] = []
  // The state as the close event fires: a short jitter may have reconnected by the time a test polls.
  const statesAtClose: string[] = []
  c.on('close', (event) => {
    closes.push(event)
    statesAtClose.push(c.state)
  })
  c.on('open', () => opens.push(Date.now()))
  c.on('error', (err) => errors.push(err))
  t.after(() => c.close())
  return { c, closes, opens, errors, statesAtClose }
}

function code (err: unknown): string | undefined {
  return (err as { code?: string }).code
}

test('backoff: full jitter stays within random(0, min(max, base × 2^attempt)) over many attempts', () => {
  const random = seeded(14)
  const options = { ...RECONNECT_DEFAULTS }
  for (let attempt = 0; attempt < 40; attempt++) {
    const cap = Math.min(options.max, options.base * 2 ** attempt)
    let low = Infinity
    let high = 0
    for (let i = 0; i < 500; i++) {
      const delay = backoffDelay(options, attempt, 0, random)
      assert.ok(delay >= 0 && delay <= cap, `attempt ${attempt}: ${delay} outside [0, ${cap}]`)
      low = Math.min(low, delay)
      high = Math.max(high, delay)
    }
    // Full jitter spreads over the whole range, not around its middle.
    assert.ok(low < cap * 0.05 && high > cap * 0.95, `attempt ${attempt}: [${low}, ${high}] of ${cap}`)
  }
  // A floor (Retry-After, 1013) comes first, the jitter after it.
  for (let i = 0; i < 200; i++) {
    const delay = backoffDelay(options, 3, 2000, random)
    assert.ok(delay >= 2000 && delay <= 2000 + 4000)
  }
})

test('backoff: the client grows its delay per failed attempt and resets after a connection stayed open', async (t) => {
  // A port nothing listens on: every attempt is a 1006.
  const s = await server(t)
  await s.app.close()
  const { c, closes } = client(t, { url: s.url, getToken: () => s.sign(), reconnect: { base: 4, max: 64, resetAfter: 100 }, random: () => 0.999 })
  c.connect().catch(() => {})
  await waitFor(() => closes.length >= 8, 5000, '8 failed attempts')
  await c.close()
  for (let n = 0; n < 8; n++) {
    assert.equal(closes[n].code, 1006)
    assert.equal(closes[n].willReconnect, true)
    assert.equal(closes[n].delay, Math.floor(0.999 * Math.min(64, 4 * 2 ** n)), `attempt ${n}`)
  }

  const live = await server(t)
  const second = client(t, { url: live.url, getToken: () => live.sign(), reconnect: { base: 40, max: 1000, resetAfter: 300 }, random: () => 0.5 })
  await second.c.connect()
  // Closed at once twice: the attempt count grows (20, then 40 ms).
  second.c.send({ type: 'close', code: 1012 })
  await waitFor(() => second.opens.length === 2, 3000, 'reopen')
  second.c.send({ type: 'close', code: 1012 })
  await waitFor(() => second.opens.length === 3, 3000, 'reopen')
  // Open past resetAfter: back to the first step.
  await new Promise((resolve) => setTimeout(resolve, 350))
  second.c.send({ type: 'close', code: 1012 })
  await waitFor(() => second.closes.length === 3, 3000, 'third close')
  assert.deepEqual(second.closes.map((e) => e.delay), [20, 40, 20])
})

test('close codes: which ones reconnect, after how long, and which ones stop', async (t) => {
  const s = await server(t)
  const base = 50
  const cases: Array<{ code: number, reason?: string, reconnect: boolean, min?: number, max?: number }> = [
    { code: 1000, reconnect: false },
    { code: 1008, reason: 'Rate limit', reconnect: false },
    { code: 1008, reason: 'Token expired', reconnect: true, min: 0, max: 0 },
    { code: 1001, reason: 'Going away', reconnect: true, min: 0, max: base },
    { code: 1011, reconnect: true, min: 0, max: base },
    { code: 1012, reconnect: true, min: 0, max: base },
    { code: 1009, reconnect: true, min: 0, max: base },
    { code: 1007, reconnect: false },
    // No hint in the reason: at least base × 4.
    { code: 1013, reason: 'Try again later', reconnect: true, min: base * 4, max: base * 5 },
    // A hint: never sooner.
    { code: 1013, reason: 'Overloaded, retry after 1', reconnect: true, min: 1000, max: 1000 + base },
    // No close frame at all.
    { code: 1006, reconnect: true, min: 0, max: base }
  ]
  for (const item of cases) {
    let tokens = 0
    const { c, closes, opens, statesAtClose } = client(t, { url: s.url, getToken: () => { tokens++; return s.sign() }, reconnect: { base, max: 10_000, resetAfter: 60_000 } })
    await c.connect()
    if (item.code === 1006) c.send({ type: 'drop' })
    else c.send({ type: 'close', code: item.code, reason: item.reason })
    const what = `${item.code} ${item.reason ?? ''}`
    await waitFor(() => closes.length === 1, 3000, `close ${what}`)
    const [event] = closes
    assert.equal(event.code, item.code, what)
    assert.equal(event.willReconnect, item.reconnect, what)
    if (!item.reconnect) {
      assert.equal(event.delay, null)
      assert.equal(statesAtClose[0], 'closed', what)
    } else {
      assert.ok(event.delay !== null && event.delay >= (item.min ?? 0) && event.delay <= (item.max ?? Infinity), `${what}: delay ${event.delay}`)
      if (event.delay !== 0) assert.equal(statesAtClose[0], 'reconnecting', what)
      if ((event.delay ?? 0) < 1000) {
        await waitFor(() => opens.length === 2, 3000, `reconnect after ${what}`)
        // A new token for every connect.
        assert.equal(tokens, 2, what)
      }
    }
    await c.close()
    assert.equal(c.state, 'closed')
  }
})

test('an HTTP 429 before the upgrade: the next attempt waits for Retry-After; a 401 stops', async (t) => {
  const s = await server(t, { maxConnectionsPerIp: 1 })
  await connect(t, s.url, { headers: { authorization: 'Bearer ' + s.sign('first') } })
  const { c, closes } = client(t, { url: s.url, getToken: () => s.sign(), reconnect: { base: 100, max: 10_000, resetAfter: 5000 } })
  c.connect().catch(() => {})
  await waitFor(() => closes.length === 1, 3000, 'refusal')
  assert.equal(closes[0].status, 429)
  assert.equal(closes[0].willReconnect, true)
  // The plugin's per-IP cap says Retry-After: 5.
  assert.ok(closes[0].delay !== null && closes[0].delay >= 5000 && closes[0].delay <= 5100, `delay ${closes[0].delay}`)
  assert.equal(c.state, 'reconnecting')
  await c.close()

  const refused = client(t, { url: s.base + '/ws', getToken: () => 'not-a-token' })
  // The first socket still holds the per-IP slot, but the token is checked before the caps.
  const rejection = await within(refused.c.connect().catch((e: unknown) => e), 3000, 'refusal')
  assert.equal(code(rejection), 'FST_WSM_CLIENT_REFUSED')
  assert.equal((rejection as { status: number }).status, 401)
  assert.equal(refused.closes[0].willReconnect, false)
  assert.equal(refused.c.state, 'closed')
})

test('request(): replies by id, wrapped values, error replies, timeouts, and rejection of pending requests on close', async (t) => {
  const s = await server(t)
  const { c } = client(t, { url: s.url, getToken: () => s.sign(), reconnect: false, requestTimeout: 2000 })
  const early = await c.request('echo').catch((e: unknown) => e)
  assert.equal(code(early), 'FST_WSM_CLIENT_NOT_OPEN')
  await c.connect()

  // Concurrent requests each get their own reply.
  const [a, b] = await Promise.all([c.request('echo', { n: 1 }), c.request('echo', { n: 2 })])
  assert.equal(a.n, 1)
  assert.equal(b.n, 2)
  assert.equal(a.type, 'echoed')
  assert.notEqual(a.id, b.id)
  const value = await c.request('value')
  assert.deepEqual({ ...value, id: undefined }, { type: 'reply', id: undefined, data: 42 })
  assert.deepEqual({ ...(await c.request('nothing')), id: undefined }, { type: 'reply', id: undefined })
  // Ids carry a random prefix of this client's own, then its count: not a bare 'r1', 'r2', ...
  // that an application push could carry by chance.
  for (const reply of [a, b, value]) assert.match(String(reply.id), /^[0-9a-z]{4,}\.\d+$/)
  assert.equal(new Set([a, b, value].map((reply) => String(reply.id).split('.')[0])).size, 1)

  const unknown = await c.request('no-such-type').catch((e: unknown) => e)
  assert.equal(code(unknown), 'FST_WSM_CLIENT_ERROR_REPLY')
  assert.equal((unknown as { serverCode: string }).serverCode, 'UNKNOWN_TYPE')

  const started = Date.now()
  const late = await c.request('slow', {}, { timeout: 150 }).catch((e: unknown) => e)
  assert.equal(code(late), 'FST_WSM_CLIENT_TIMEOUT')
  assert.ok(Date.now() - started >= 140)

  // Closed by the server with requests in flight: each rejects with the close code.
  const pending = [c.request('slow'), c.request('slow')].map((p) => p.catch((e: unknown) => e))
  c.send({ type: 'close', code: 1012 })
  for (const err of await within(Promise.all(pending), 2000, 'rejections')) {
    assert.equal(code(err), 'FST_WSM_CLIENT_CLOSED')
    assert.equal((err as { closeCode: number }).closeCode, 1012)
  }

  // Closed by the application: the same.
  const again = client(t, { url: s.url, getToken: () => s.sign(), reconnect: false })
  await again.c.connect()
  const inFlight = again.c.request('slow').catch((e: unknown) => e)
  await again.c.close()
  assert.equal(code(await inFlight), 'FST_WSM_CLIENT_CLOSED')
})

test('token refresh in band: the same connection outlives the first token', async (t) => {
  const s = await server(t)
  let calls = 0
  // Four seconds of life: the refresh is due a quarter before (about 3 s in).
  const { c, opens, closes, errors } = client(t, { url: s.url, getToken: () => { calls++; return s.sign('ann', 4) } })
  const refreshed: Array<number | null> = []
  c.on('refreshed', ({ exp }) => refreshed.push(exp))
  await c.connect()
  const before = await c.request('whoami')
  const firstExp = Math.floor(Date.now() / 1000) + 4
  await waitFor(() => refreshed.length >= 1, 6000, 'refresh')
  assert.ok(typeof refreshed[0] === 'number' && refreshed[0] > firstExp - 1, `new exp ${refreshed[0]}`)
  // Past the first token's expiry: still the same connection.
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, firstExp * 1000 - Date.now()) + 300))
  const after = await c.request('whoami')
  assert.equal(after.connectionId, before.connectionId)
  assert.equal(opens.length, 1)
  assert.equal(closes.length, 0)
  assert.equal(calls, 2)
  assert.deepEqual(errors, [])
})

test('token refresh by reconnecting before expiry: a route without a router, and tokenRefresh: reconnect', async (t) => {
  const s = await server(t)
  for (const { path, mode } of [{ path: '/plain', mode: 'in-band' }, { path: '/ws', mode: 'reconnect' }] as const) {
    let calls = 0
    const { c, opens, closes } = client(t, { url: s.base + path, getToken: () => { calls++; return s.sign('ann', 4) }, tokenRefresh: mode })
    await c.connect()
    await waitFor(() => opens.length === 2, 6000, `${path}: reconnect before expiry`)
    // The client closed first: 1000 "Token refresh", not the server's 1008 "Token expired".
    assert.equal(closes.length, 1)
    assert.equal(closes[0].code, 1000, path)
    assert.equal(closes[0].reason, 'Token refresh', path)
    assert.equal(closes[0].delay, 0)
    assert.ok(calls >= 2)
    await c.close()
  }
})

test('1008 "Token expired" from the server: a new token and a reconnect at once', async (t) => {
  const s = await server(t)
  let calls = 0
  const { c, opens, closes } = client(t, { url: s.url, getToken: () => { calls++; return s.sign('ann', calls === 1 ? 1 : 3600) }, tokenRefresh: false })
  await c.connect()
  await waitFor(() => opens.length === 2, 4000, 'reconnect after expiry')
  assert.equal(closes[0].code, 1008)
  assert.equal(closes[0].reason, 'Token expired')
  assert.equal(closes[0].delay, 0)
  assert.ok(opens[1] - opens[0] < 2500)
  assert.equal(calls, 2)
})

test('options are validated: a coded error names the option', () => {
  const base: ClientOptions = { url: 'ws://127.0.0.1:1/ws', getToken: () => null }
  for (const [options, name] of [
    [{ ...base, url: 'http://x' }, 'url'],
    [{ ...base, reconnect: { base: -1 } }, 'reconnect.base'],
    [{ ...base, requestTimeout: 0 }, 'requestTimeout'],
    [{ ...base, protocols: ['bearer.x'] }, 'protocols'],
    [{ ...base, tokenRefresh: 'sometimes' }, 'tokenRefresh']
  ] as Array<[ClientOptions, string]>) {
    assert.throws(() => createClient(options), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'FST_WSM_CLIENT_OPTION_INVALID')
      assert.ok(err.message.includes(`"${name}"`), err.message)
      return true
    })
  }
})

test('the application protocol is selected, the token entry never', async (t) => {
  const s = await server(t)
  const { c } = client(t, { url: s.url, getToken: () => s.sign(), protocols: ['chat.v1'] })
  const opened = new Promise<string>((resolve) => c.once('open', ({ protocol }) => resolve(protocol)))
  await c.connect()
  assert.equal(await opened, 'chat.v1')
  assert.equal(WebSocket.OPEN, 1)
})

test('topics: a subscriber dropped while 100 messages are published gets all of them once, in order; too short a history says recovered: false', async (t) => {
  for (const size of [200, 10]) {
    const s = await server(t, { messageRateLimit: false, topics: { authorize: () => true, history: { size, ttl: 60_000 } } })
    const { c, closes, opens } = client(t, { url: s.url, getToken: () => s.sign(), reconnect: { base: 400, max: 400, resetAfter: 60_000 }, random: () => 0.5 })
    const received: unknown[] = []
    const subscribed: Array<{ recovered: boolean, resumed: boolean }> = []
    c.on('subscribed', (event) => subscribed.push(event))
    c.subscribe('feed', (data) => received.push(data))
    await c.connect()
    await waitFor(() => subscribed.length === 1, 2000, 'subscribed')
    await s.app.wsManager.publish('feed', 0)
    await waitFor(() => received.length === 1, 2000, 'first message')
    c.send({ type: 'drop' })
    await waitFor(() => closes.length === 1, 2000, 'drop')
    // Published while the client waits its 200 ms (400 × 0.5) before reconnecting.
    for (let i = 1; i <= 100; i++) await s.app.wsManager.publish('feed', i)
    await waitFor(() => opens.length === 2 && subscribed.length === 2, 3000, 'resubscribed')
    await s.app.wsManager.publish('feed', 101)
    assert.deepEqual(subscribed.map((e) => e.resumed), [false, true])
    if (size === 200) {
      await waitFor(() => received.length === 102, 3000, 'every message')
      assert.deepEqual(received, Array.from({ length: 102 }, (_, i) => i))
      assert.equal(subscribed[1].recovered, true)
    } else {
      await waitFor(() => received.includes(101), 3000, 'the live message')
      assert.equal(subscribed[1].recovered, false)
      // Nothing replayed: the gap is the application's to reload.
      assert.deepEqual(received, [0, 101])
    }
    await c.close()
  }
})

test('topics: unsubscribing the last listener sends topic.unsubscribe; a topic the server refuses is an error event', async (t) => {
  const s = await server(t, { topics: { authorize: (_connection: unknown, topic: string) => topic !== 'secret' } })
  const { c, errors } = client(t, { url: s.url, getToken: () => s.sign() })
  await c.connect()
  const got: unknown[] = []
  const subscribed: string[] = []
  c.on('subscribed', (event) => subscribed.push(event.topic))
  const off = c.subscribe('news', (data) => got.push(data))
  c.subscribe('secret', () => {})
  await waitFor(() => subscribed.length === 1 && errors.length === 1, 2000, 'answers')
  assert.equal((errors[0] as { serverCode?: string }).serverCode, 'TOPIC_FORBIDDEN')
  assert.equal(await s.app.wsManager.publish('news', 'one'), 1)
  await waitFor(() => got.length === 1, 2000, 'message')
  off()
  await waitFor(() => !c.topics.includes('news'), 2000, 'unsubscribed')
  let delivered = 1
  for (let i = 0; i < 100 && delivered !== 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10))
    delivered = await s.app.wsManager.publish('news', 'more')
  }
  assert.equal(delivered, 0, 'still subscribed on the server')
  assert.deepEqual(got, ['one'])
})
