// Adversarial review of issue 14 (request ids, auth.refresh, topic recovery, the client).
// Each test fails on the code under review for the reason its name gives.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import Fastify, { type FastifyInstance } from 'fastify'
import jwt from '@fastify/jwt'
import WebSocket from 'ws'
import wsManager, { type WsManagerOptions } from '../lib/index'
import { createClient, type Client } from '../lib/client/index'
import { connectQueued, listen } from './helper'

const SECRET = 'review-secret-0123456789-abcdefghijklmnopqrstu'
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

async function app (t: TestContext, options: WsManagerOptions, jwtOptions: Record<string, unknown> = { secret: SECRET }, messages: Record<string, unknown> = {}, setup: (fastify: FastifyInstance) => void = () => {}): Promise<{ app: FastifyInstance, url: string }> {
  const fastify = Fastify({ logger: false })
  t.after(() => fastify.close())
  setup(fastify)
  await fastify.register(jwt, jwtOptions as never)
  await fastify.register(wsManager, { heartbeat: false, ...options })
  fastify.get('/ws', { websocket: true, config: { wsManager: { messages: messages as never } } }, () => {})
  return { app: fastify, url: await listen(fastify) + '/ws' }
}

test('auth.refresh bypasses the failed-auth budget: bad tokens sent in band keep reaching the key callback', async (t) => {
  let keyCalls = 0
  const { url } = await app(t, { auth: { failureLimit: { max: 3, ipMax: 5, timeWindow: 60_000 } } }, {
    secret: async () => { keyCalls++; return SECRET }
  })
  // Both signed by @fastify/jwt: one with the app's secret, one with another.
  const signer = async (secret: string): Promise<(payload: object) => string> => {
    const instance = Fastify({ logger: false })
    await instance.register(jwt, { secret })
    await instance.ready()
    t.after(() => instance.close())
    return (payload) => instance.jwt.sign(payload)
  }
  const good = (await signer(SECRET))({ sub: 'ada' })
  const bad = (await signer('not-the-secret-0123456789-abcdefghijklmnop'))({ sub: 'ada' })
  const { ws, next } = await connectQueued(t, url, { headers: { authorization: `Bearer ${good}` } })
  const before = keyCalls
  for (let i = 0; i < 30; i++) {
    ws.send(JSON.stringify({ type: 'auth.refresh', id: i, token: bad }))
    assert.ok(['INVALID_TOKEN', 'AUTH_RATE_LIMITED'].includes(JSON.parse(await next()).code as string))
  }
  // An upgrade with that token would be refused with 429 before any signature check after 3
  // failures (5 per IP); in band, each of the 30 runs the key callback and a signature check.
  assert.ok(keyCalls - before <= 5, `the key callback ran ${keyCalls - before} times for 30 bad in-band tokens (budget: 3 per subject, 5 per IP)`)
})

test('auth.refresh verifies on a stand-in request whose request.server throws, so a trusted() that uses it refuses every refresh', async (t) => {
  const revoked = new Set<string>()
  const { app: fastify, url } = await app(t, {}, {
    secret: SECRET,
    // The usual shape of a revocation check: state hung on the instance, reached through the request.
    trusted: (request: { server: { revoked: Set<string> } }, decoded: { jti?: string }) => !request.server.revoked.has(decoded.jti ?? '')
  }, {}, (f) => f.decorate('revoked', revoked))
  const now = Math.floor(Date.now() / 1000)
  const { ws, next } = await connectQueued(t, url, { headers: { authorization: `Bearer ${fastify.jwt.sign({ sub: 'bo', jti: 'a', exp: now + 60 })}` } })
  ws.send(JSON.stringify({ type: 'auth.refresh', id: 'r', token: fastify.jwt.sign({ sub: 'bo', jti: 'b', exp: now + 600 }) }))
  const reply = JSON.parse(await next())
  assert.deepEqual(reply, { type: 'auth.refreshed', exp: now + 600, id: 'r' }, `a valid, unrevoked token was refused in band: ${JSON.stringify(reply)}`)
})

test('topic.subscribe on a topic the connection already holds replays the whole history again, every time (amplification)', async (t) => {
  const { app: fastify, url } = await app(t, { messageRateLimit: false, topics: { authorize: () => true, history: { size: 100, ttl: 60_000 } } })
  for (let i = 0; i < 100; i++) await fastify.wsManager.publish('feed', { i, pad: 'x'.repeat(1000) })
  const { ws, next } = await connectQueued(t, url, { headers: { authorization: `Bearer ${fastify.jwt.sign({ sub: 'cy' })}` } })
  ws.send(JSON.stringify({ type: 'topic.subscribe', topic: 'feed' }))
  const first = JSON.parse(await next()) as { epoch: string }
  let bytes = 0
  ws.on('message', (data: Buffer) => { bytes += data.length })
  const request = JSON.stringify({ type: 'topic.subscribe', topic: 'feed', since: { offset: 0, epoch: first.epoch } })
  for (let i = 0; i < 20; i++) ws.send(request)
  await sleep(500)
  // One 90-byte message per replay of ~100 KB; a connection that already holds the topic has
  // nothing to recover, so at most one history's worth should come back.
  assert.ok(bytes < 150_000, `20 re-subscriptions of ${request.length} bytes each brought back ${bytes} bytes`)
})

test('client: a token the server accepts but expires at once (jwt clockTolerance) makes a reconnect loop with no backoff', async (t) => {
  let upgrades = 0
  const { app: fastify, url } = await app(t, { messageRateLimit: false, upgradeRateLimit: false }, { secret: SECRET, verify: { clockTolerance: 60_000 } })
  fastify.wsManager.addHook('onConnection', () => { upgrades++ })
  // Five seconds past exp: inside the server's tolerance, so the upgrade is accepted.
  const stale = fastify.jwt.sign({ sub: 'di', exp: Math.floor(Date.now() / 1000) - 5 })
  const client: Client = createClient({ url, getToken: () => stale, WebSocket: WebSocket as never })
  const reasons = new Set<string>()
  client.on('error', () => {})
  client.on('close', (event) => reasons.add(`${event.code} ${event.reason} delay=${String(event.delay)}`))
  t.after(() => client.close())
  client.connect().catch(() => {})
  await sleep(1500)
  await client.close()
  // With backoff (base 500 ms, full jitter) a second and a half holds a handful of attempts.
  assert.ok(upgrades <= 6, `${upgrades} upgrades in 1.5 s; closes: ${[...reasons].join(', ')}`)
})

test('client: subscribe() in an open listener sends topic.subscribe twice for one topic', async (t) => {
  let asked = 0
  const { app: fastify, url } = await app(t, { topics: { authorize: () => { asked++; return true }, history: { size: 10, ttl: 60_000 } } })
  const client: Client = createClient({ url, getToken: () => fastify.jwt.sign({ sub: 'ed' }), WebSocket: WebSocket as never })
  t.after(() => client.close())
  let subscribed = 0
  client.on('subscribed', () => { subscribed++ })
  client.on('open', () => { client.subscribe('news', () => {}) })
  await client.connect()
  await sleep(300)
  assert.equal(asked, 1, `authorize ran ${asked} times, 'subscribed' fired ${subscribed} times for one subscribe() on one connection`)
})

test('request ids: a handler reply that has its own id field loses it to the request id', async (t) => {
  const { app: fastify, url } = await app(t, { messageRateLimit: false }, { secret: SECRET }, {
    item: { handler: () => ({ type: 'item', id: 'item-42', name: 'chair' }) }
  })
  const { ws, next } = await connectQueued(t, url, { headers: { authorization: `Bearer ${fastify.jwt.sign({ sub: 'fa' })}` } })
  ws.send(JSON.stringify({ type: 'item' }))
  assert.deepEqual(JSON.parse(await next()), { type: 'item', id: 'item-42', name: 'chair' })
  ws.send(JSON.stringify({ type: 'item', id: 'q1' }))
  const reply = JSON.parse(await next()) as Record<string, unknown>
  assert.ok(JSON.stringify(reply).includes('item-42'), `the handler's id is gone from ${JSON.stringify(reply)}`)
})
