// Staged drain and the probe endpoints: what a rolling deploy relies on, over real sockets.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import Fastify, { type FastifyInstance } from 'fastify'
import jwt from '@fastify/jwt'
import WebSocket from 'ws'
import wsManager, { normalizeOptions, type WsManagerOptions } from '../lib/index'
import { defaultBatches, planBatches } from '../lib/drain'
import { assertOptionInvalid, build, busiestWindow, closed, connect, listen, rawPeer, refusedUpgrade, socketClosed, waitFor } from './helper'
import { freePort, JWT_SECRET, PrivateRedis, tokenFor, uniquePrefix, waitUntil } from './fixtures/cluster'

async function server (t: TestContext, options: WsManagerOptions = {}): Promise<{ app: FastifyInstance, url: string, http: string }> {
  const app = await build(t, { auth: false, upgradeRateLimit: false, maxConnectionsPerIp: 0, ...options })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  return { app, url, http: url.replace('ws:', 'http:') }
}

test('the batch plan: one fire time in each slot, random within it, never two plans alike', () => {
  const times = planBatches(2000, 8)
  assert.equal(times.length, 8)
  // The middle half of each slot: two batches are at least half a slot apart.
  times.forEach((at, i) => assert.ok(at >= i * 250 + 62 && at <= i * 250 + 188, `batch ${i} at ${at}`))
  assert.notDeepEqual(planBatches(30_000, 120), planBatches(30_000, 120))
  assert.deepEqual(planBatches(1000, 4, () => 0), [62, 312, 562, 812])
  assert.equal(defaultBatches(300, 25_000), 100)
  assert.equal(defaultBatches(10, 25_000), 10)
  assert.equal(defaultBatches(10, 0), 1)
  // The pace bound: whatever the jitter, no second holds more than twice the average pace.
  for (const random of [() => 0, () => 0.999, Math.random]) {
    const count = 3000
    const duration = 30_000
    const batches = defaultBatches(count, duration)
    const per = count / batches
    const fires = planBatches(duration, batches, random).flatMap((at) => Array.from({ length: per }, () => at))
    assert.ok(busiestWindow(fires, 1000) <= 2 * count / (duration / 1000), `busiest second: ${busiestWindow(fires, 1000)}`)
  }
  // Few connections, one per batch: still at most twice the pace, or two closes when the pace
  // is under one a second, whatever the jitter.
  for (const count of [16, 35, 40, 90]) {
    const duration = 30_000
    const batches = defaultBatches(count, duration)
    for (const random of [() => 0, () => 0.9999, Math.random]) {
      const plan = planBatches(duration, batches, random)
      const late = plan.map((at, i) => i % 2 === 0 ? at : planBatches(duration, batches, () => 0)[i] as number)
      for (const fires of [plan, late]) {
        const most = busiestWindow(fires, 1000)
        assert.ok(most <= Math.max(2, 2 * count / (duration / 1000)), `${count} over 30 s: ${most} in one second`)
      }
    }
  }
})

test('drain(): not ready at once, upgrades get 503 with Retry-After, 1012 closes spread over the duration at the promised pace', async (t) => {
  const { app, url, http } = await server(t)
  const count = 40
  const clients = await Promise.all(Array.from({ length: count }, () => connect(t, url + '/ws')))
  const started = Date.now()
  const closes = clients.map(async (ws) => ({ ...await closed(ws, 8000), at: Date.now() - started }))
  assert.equal((await fetch(`${http}/ready`)).status, 200)
  const drained = app.wsManager.drain({ duration: 2000 })
  assert.equal(app.wsManager.draining, true)
  const ready = await fetch(`${http}/ready`)
  assert.equal(ready.status, 503)
  assert.deepEqual(await ready.json(), { status: 'draining' })
  assert.equal((await fetch(`${http}/health`)).status, 200)
  assert.deepEqual(await refusedUpgrade(url + '/ws'), { status: 503, retryAfter: '1' })
  const results = await Promise.all(closes)
  const result = await drained
  for (const r of results) assert.deepEqual({ code: r.code, reason: r.reason }, { code: 1012, reason: 'Service restart' })
  const times = results.map((r) => r.at).sort((a, b) => a - b)
  assert.ok((times[0] as number) < 700, `first close at ${times[0] as number} ms`)
  assert.ok((times.at(-1) as number) >= 1200 && (times.at(-1) as number) < 2600, `last close at ${times.at(-1) as number} ms`)
  // 40 over 2 s is 20 a second; the promise is at most about twice that in any second.
  assert.ok(busiestWindow(times, 1000) <= 40, `busiest second: ${busiestWindow(times, 1000)}`)
  assert.equal(result.connections, count)
  assert.equal(result.batches, 8)
  assert.equal(result.clean + result.forced + result.closedOtherwise, count)
  assert.equal(result.clean, count)
  assert.equal(app.wsManager.connections.size, 0)
  assert.equal(app.wsManager.stats().admission.refused[503], 1)
})

test('an upgrade held in the application\'s own hook when the drain begins gets 503, not a 101', async (t) => {
  const app = await build(t, { auth: false, upgradeRateLimit: false })
  let entered: () => void = () => {}
  const inHook = new Promise<void>((resolve) => { entered = resolve })
  app.get('/ws', {
    websocket: true,
    preHandler: async () => {
      entered()
      await new Promise((resolve) => setTimeout(resolve, 300))
    }
  }, () => {})
  const url = await listen(app)
  const answer = refusedUpgrade(url + '/ws')
  await inHook
  const result = await app.wsManager.drain({ duration: 1000 })
  assert.equal(result.connections, 0)
  assert.deepEqual(await answer, { status: 503, retryAfter: '1' })
  assert.equal(app.wsManager.connections.size, 0)
})

test('drain() terminates a peer that never answers the close within close.timeout, and resolves', async (t) => {
  const { app, url } = await server(t, { close: { timeout: 300 }, heartbeat: false })
  const silent = await rawPeer(t, url)
  const polite = await connect(t, url + '/ws')
  const politeClosed = closed(polite)
  const gone = socketClosed(silent, 3000)
  const started = Date.now()
  const result = await app.wsManager.drain({ duration: 200 })
  await gone
  assert.ok(Date.now() - started < 2000)
  assert.equal((await politeClosed).code, 1012)
  assert.deepEqual({ clean: result.clean, forced: result.forced }, { clean: 1, forced: 1 })
})

test('app.close() during a drain closes what remains with the shutdown code at once', async (t) => {
  const { app, url } = await server(t)
  const clients = await Promise.all(Array.from({ length: 6 }, () => connect(t, url + '/ws')))
  const codes = clients.map((ws) => closed(ws))
  const drained = app.wsManager.drain({ duration: 600_000 })
  const started = Date.now()
  await app.close()
  const result = await drained
  assert.ok(Date.now() - started < 3000)
  const seen = (await Promise.all(codes)).map((c) => c.code)
  // Six batches over ten minutes: the first may fire within the first second (1 in 600).
  assert.ok(seen.filter((c) => c === 1001).length >= 5 && seen.every((c) => c === 1001 || c === 1012), seen.join(','))
  assert.equal(result.connections, 6)
  assert.ok(result.closedOtherwise >= 5)
})

test('drain() with no connections resolves at once; a second call returns the first one\'s promise', async (t) => {
  const { app } = await server(t)
  const first = app.wsManager.drain({ duration: 10_000 })
  const second = app.wsManager.drain({ duration: 1 })
  assert.equal(first, second)
  const result = await first
  assert.deepEqual({ connections: result.connections, batches: result.batches }, { connections: 0, batches: 0 })
})

test('drain() with a bad option rejects with a coded error and changes nothing', async (t) => {
  const { app, url } = await server(t)
  const ws = await connect(t, url + '/ws')
  const bad: Array<[unknown, string]> = [
    [{ duration: -1 }, 'FST_WSM_ARGUMENT_INVALID'],
    [{ duration: 1.5 }, 'FST_WSM_ARGUMENT_INVALID'],
    [{ duration: 3_600_001 }, 'FST_WSM_ARGUMENT_INVALID'],
    [{ batches: 0 }, 'FST_WSM_ARGUMENT_INVALID'],
    [{ code: 1005 }, 'FST_WSM_CLOSE_CODE_INVALID'],
    [{ code: 5000 }, 'FST_WSM_CLOSE_CODE_INVALID'],
    [{ reason: 42 }, 'FST_WSM_ARGUMENT_INVALID'],
    [{ reason: null }, 'FST_WSM_ARGUMENT_INVALID'],
    [{ duration: null }, 'FST_WSM_ARGUMENT_INVALID'],
    [{ code: null }, 'FST_WSM_CLOSE_CODE_INVALID'],
    [{ durations: 5 }, 'FST_WSM_ARGUMENT_INVALID'],
    ['soon', 'FST_WSM_ARGUMENT_INVALID'],
    [null, 'FST_WSM_ARGUMENT_INVALID']
  ]
  for (const [options, code] of bad) {
    await assert.rejects(app.wsManager.drain(options as never), (err: Error & { code?: string }) => err.code === code, JSON.stringify(options))
  }
  assert.equal(app.wsManager.draining, false)
  assert.equal(ws.readyState, WebSocket.OPEN)
  // A long reason is cut to 123 bytes, as every close reason is.
  const done = closed(ws)
  await app.wsManager.drain({ duration: 0, code: 4000, reason: 'é'.repeat(100) })
  const seen = await done
  assert.equal(seen.code, 4000)
  assert.ok(Buffer.byteLength(seen.reason) <= 123)
})

test('the health option: paths, false, validation, and a clash with an existing route', async (t) => {
  const a = await server(t, { health: { liveness: '/livez', readiness: '/readyz' } })
  assert.equal((await fetch(`${a.http}/livez`)).status, 200)
  const readyz = await fetch(`${a.http}/readyz`)
  assert.equal(readyz.headers.get('cache-control'), 'no-store')
  assert.deepEqual(await readyz.json(), { status: 'ready' })
  assert.equal((await fetch(`${a.http}/health`)).status, 404)
  const b = await server(t, { health: false })
  assert.equal((await fetch(`${b.http}/health`)).status, 404)
  assert.equal((await fetch(`${b.http}/ready`)).status, 404)
  const c = await server(t, { health: { readiness: false } })
  assert.equal((await fetch(`${c.http}/health`)).status, 200)
  assert.equal((await fetch(`${c.http}/ready`)).status, 404)

  for (const [health, name] of [[{ liveness: 'health' }, 'health.liveness'], [{ readiness: 3 }, 'health.readiness'],
    [{ liveness: '/x', readiness: '/x' }, 'health.readiness'], [{ probes: '/x' }, 'health.probes'], ['yes', 'health'],
    [{ liveness: '/a b' }, 'health.liveness'], [{ liveness: '//x/../y' }, 'health.liveness'], [{ readiness: '/a/./b' }, 'health.readiness'],
    [{ liveness: '/Health', readiness: '/health' }, 'health.readiness']] as const) {
    assertOptionInvalid(() => normalizeOptions({ health } as never), name)
  }
  assertOptionInvalid(() => normalizeOptions({ health: { readiness: false }, cluster: { redis: 'redis://127.0.0.1:6379', required: true } }), 'cluster.required')
  assertOptionInvalid(() => normalizeOptions({ health: false, cluster: { redis: 'redis://127.0.0.1:6379', required: true } }), 'cluster.required')
  // A route the application adds after the plugin, at a probe path: the coded error too.
  const later = await build(t, { auth: false })
  assert.throws(() => later.get('/health', async () => 'mine'), (err: Error & { code?: string }) => err.code === 'FST_WSM_OPTION_INVALID' && err.message.includes('health.liveness'))
  later.get('/healthz', async () => 'fine')
  // Under a prefix, the probes live under it, and a root route of the same name is no clash.
  const root = Fastify({ logger: false })
  t.after(() => root.close())
  root.get('/ready', async () => 'root')
  await root.register(async (scope) => {
    await scope.register(wsManager, { auth: false })
    scope.get('/ws', { websocket: true }, () => {})
  }, { prefix: '/api' })
  await root.ready()
  assert.equal((await root.inject({ url: '/ready' })).body, 'root')
  assert.deepEqual((await root.inject({ url: '/api/ready' })).json(), { status: 'ready' })
  const clash = Fastify({ logger: false })
  t.after(() => clash.close())
  clash.get('/ready', async () => 'mine')
  await assert.rejects(async () => { await clash.register(wsManager, { auth: false }).after() }, (err: Error & { code?: string }) =>
    err.code === 'FST_WSM_OPTION_INVALID' && err.message.includes('health.readiness'))
})

test('shutting down: readiness answers 503 while app.close() closes the connections', async (t) => {
  const { app, url, http } = await server(t, { close: { timeout: 1000 }, heartbeat: false })
  const silent = await rawPeer(t, url)
  const closing = app.close()
  // The silent peer holds the close open for a second; Fastify itself answers 503 meanwhile.
  await waitFor(() => app.wsManager.shuttingDown, 1000, 'shutdown to begin')
  const answer = await fetch(`${http}/ready`).catch(() => null)
  assert.ok(answer === null || answer.status === 503)
  await closing
  silent.destroy()
})

test('cluster mode: the drained node leaves nodes() and presence; cluster.required makes readiness follow Redis', async (t) => {
  const redis = new PrivateRedis(await freePort())
  await redis.start()
  t.after(() => redis.stop())
  const prefix = uniquePrefix()
  const node = async (nodeId: string, required: boolean): Promise<{ app: FastifyInstance, url: string, http: string }> => {
    const app = Fastify({ logger: false })
    t.after(() => app.close())
    await app.register(jwt, { secret: JWT_SECRET })
    await app.register(wsManager, { upgradeRateLimit: false, cluster: { redis: redis.url, prefix, nodeId, required, requestTimeout: 500, presenceTtl: 1500 } })
    app.get('/ws', { websocket: true }, () => {})
    const url = await listen(app)
    return { app, url, http: url.replace('ws:', 'http:') }
  }
  const a = await node('drain-a', true)
  const b = await node('drain-b', false)
  const token = await tokenFor('alice')
  const onA = await connect(t, a.url + '/ws', { headers: { authorization: `Bearer ${token}` } })
  await connect(t, b.url + '/ws', { headers: { authorization: `Bearer ${token}` } })
  const cluster = b.app.wsManager.cluster
  assert.ok(cluster !== null)
  await waitUntil(async () => (await cluster.presence('alice')).length === 2, 3000, 'presence on both nodes')
  assert.deepEqual((await cluster.nodes()).map((n) => n.nodeId).sort(), ['drain-a', 'drain-b'])

  const closedA = closed(onA)
  await a.app.wsManager.drain({ duration: 100 })
  assert.equal((await closedA).code, 1012)
  assert.deepEqual((await cluster.nodes()).map((n) => n.nodeId), ['drain-b'])
  assert.deepEqual((await cluster.presence('alice')).map((p) => p.nodeId), ['drain-b'])
  // Withdrawn for good: the beat does not put it back.
  await new Promise((resolve) => setTimeout(resolve, 800))
  assert.deepEqual((await cluster.nodes()).map((n) => n.nodeId), ['drain-b'])

  // Readiness with cluster.required: 503 while Redis is gone; without it, ready all along.
  const c = await node('drain-c', true)
  assert.equal((await fetch(`${c.http}/ready`)).status, 200)
  await redis.stop()
  await waitUntil(async () => (await fetch(`${c.http}/ready`)).status === 503, 5000, 'readiness to follow Redis')
  assert.deepEqual(await (await fetch(`${c.http}/ready`)).json(), { status: 'cluster unavailable' })
  assert.equal((await fetch(`${b.http}/ready`)).status, 200)
  assert.equal((await fetch(`${c.http}/health`)).status, 200)
  await redis.start()
  await waitUntil(async () => (await fetch(`${c.http}/ready`)).status === 200, 8000, 'readiness back with Redis')
})
