// Prometheus metrics: scraped over real HTTP from a real app, the exposition parsed, and each
// value checked against what happened on real sockets.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import Fastify, { type FastifyInstance } from 'fastify'
import jwt from '@fastify/jwt'
import { Registry } from 'prom-client'
import WebSocket from 'ws'
import wsManager, { normalizeOptions, type WsManagerOptions } from '../lib/index'
import { closed, connect, listen, waitFor } from './helper'
import { freePort, PrivateRedis, uniquePrefix } from './fixtures/cluster'

const SECRET = 'metrics-test-secret-0123456789-abcdefghijkl'

/** One sample of the exposition: name, labels, value. */
interface Sample { name: string, labels: Record<string, string>, value: number }

/** Parses Prometheus's text exposition (the subset prom-client writes). */
function parse (text: string): Sample[] {
  const samples: Sample[] = []
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (match === null) throw new Error(`unparsable line: ${line}`)
    const labels: Record<string, string> = {}
    for (const pair of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2]
    samples.push({ name: match[1], labels, value: Number(match[3]) })
  }
  return samples
}

/** The value of one sample, or undefined. */
function value (samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  return samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v) &&
    Object.keys(s.labels).length === Object.keys(labels).length)?.value
}

async function scrape (app: FastifyInstance, path = '/metrics', headers: Record<string, string> = {}): Promise<{ status: number, type: string | null, samples: Sample[], text: string }> {
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  const response = await fetch(`http://127.0.0.1:${address.port}${path}`, { headers })
  const text = await response.text()
  return { status: response.status, type: response.headers.get('content-type'), samples: response.ok ? parse(text) : [], text }
}

async function build (t: TestContext, options: WsManagerOptions): Promise<{ app: FastifyInstance, url: string }> {
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(jwt, { secret: SECRET })
  await app.register(wsManager, options)
  const routed = {
    messages: {
      work: { handler: async () => { await new Promise((resolve) => setTimeout(resolve, 20)); return { type: 'done' } } },
      boom: { handler: () => { throw new Error('handler failed') } }
    }
  }
  app.get('/a', { websocket: true, config: { wsManager: routed } }, (socket) => {
    socket.on('message', (data, isBinary) => { if (isBinary) socket.send(data) })
  })
  app.get('/b', { websocket: true }, (socket, request) => {
    socket.on('message', (data) => {
      if (String(data) === 'close me') request.wsConnection?.close(4001, 'Asked').catch(() => {})
    })
  })
  const url = await listen(app)
  return { app, url }
}

test('every metric is present and each value follows what happened', async (t) => {
  const { app, url } = await build(t, {
    metrics: true,
    heartbeat: { pingInterval: 200, pongTimeout: 100, maxMissedPongs: 1 },
    frameSize: { maxMessageSize: 1024, warnThreshold: 512 },
    messageRateLimit: { max: 1000, timeWindow: 1000, burst: 1000, policy: 'close' }
  })
  const headers = (user: string): { authorization: string } => ({ authorization: `Bearer ${app.jwt.sign({ sub: user })}` })

  const a1 = await connect(t, url + '/a', { headers: headers('secret-user-1') })
  const a2 = await connect(t, url + '/a', { headers: headers('secret-user-2') })
  const b1 = await connect(t, url + '/b', { headers: headers('u3') })
  // Messages: 3 binary echoes on a1 (3 in, 3 out), a routed 'work' (1 in, 1 reply), an unknown type, a throwing handler.
  for (let i = 0; i < 3; i++) a1.send(Buffer.from([i]))
  a2.send(JSON.stringify({ type: 'work' }))
  a2.send(JSON.stringify({ type: 'no-such-type-for-user-secret-user-2' }))
  await waitFor(() => app.wsManager.stats().routes['/a'].messagesSent >= 5, 3000, 'echoes and replies')
  // A client close (1000) and a server close with an application code (4001 → 'other').
  a1.close(1000)
  await closed(a1)
  b1.send('close me')
  assert.deepEqual(await closed(b1), { code: 4001, reason: 'Asked' })
  // A frame violation (1009) on a new connection.
  const big = await connect(t, url + '/b', { headers: headers('u4') })
  big.send(Buffer.alloc(2048))
  assert.equal((await closed(big)).code, 1009)
  // A handler that throws closes its connection with 1011 and counts HANDLER_ERROR.
  a2.send(JSON.stringify({ type: 'boom' }))
  assert.equal((await closed(a2)).code, 1011)
  // Refusals: no token (401), a bad origin (403).
  const refusals = [
    new WebSocket(url + '/a'),
    new WebSocket(url + '/a', { headers: { ...headers('u5'), origin: 'https://evil.example' } })
  ]
  await Promise.all(refusals.map((ws) => new Promise((resolve) => ws.once('unexpected-response', resolve))))
  // A peer that stops answering pings: terminated by the heartbeat.
  const silent = await connect(t, url + '/b', { headers: headers('u6'), autoPong: false })
  await waitFor(() => app.wsManager.stats().heartbeat.timeouts >= 1, 3000, 'a heartbeat timeout')
  await closed(silent).catch(() => {})
  const live = await connect(t, url + '/b', { headers: headers('u7') })
  await waitFor(() => (app.wsManager.heartbeat.getHeartbeatStats(([...app.wsManager.connections].find((c) => c.userId === 'u7') as { socket: WebSocket }).socket)?.latency ?? null) !== null, 3000, 'a pong')
  await waitFor(() => app.wsManager.stats().connections.active === 1, 3000, 'one open connection')

  const { status, type, samples, text } = await scrape(app)
  assert.equal(status, 200)
  assert.match(type ?? '', /^text\/plain; version=0\.0\.4/)
  assert.equal(value(samples, 'ws_connections_active', { route: '/a' }), 0)
  assert.equal(value(samples, 'ws_connections_active', { route: '/b' }), 1)
  assert.equal(value(samples, 'ws_connections_opened_total', { route: '/a' }), 2)
  assert.equal(value(samples, 'ws_connections_opened_total', { route: '/b' }), 4)
  assert.equal(value(samples, 'ws_connections_closed_total', { route: '/a', code: '1000', initiator: 'client' }), 1)
  assert.equal(value(samples, 'ws_connections_closed_total', { route: '/a', code: '1011', initiator: 'server' }), 1)
  assert.equal(value(samples, 'ws_connections_closed_total', { route: '/b', code: 'other', initiator: 'server' }), 1)
  assert.equal(value(samples, 'ws_connections_closed_total', { route: '/b', code: '1009', initiator: 'server' }), 1)
  assert.equal(value(samples, 'ws_connections_closed_total', { route: '/b', code: '1006', initiator: 'server' }), 1, 'the terminated silent peer')
  assert.equal(value(samples, 'ws_connection_duration_seconds_count', { route: '/a' }), 2)
  assert.equal(value(samples, 'ws_connection_duration_seconds_count', { route: '/b' }), 3)
  // a1: 3 binary; a2: work, unknown, boom; b1: 'close me'; big: one 2 KiB message refused before it counts.
  assert.equal(value(samples, 'ws_messages_received_total', { route: '/a' }), 6)
  assert.equal(value(samples, 'ws_messages_received_total', { route: '/b' }), 1)
  // a1: 3 echoes; a2: 'done' reply and the error reply for the unknown type.
  assert.equal(value(samples, 'ws_messages_sent_total', { route: '/a' }), 5)
  assert.ok((value(samples, 'ws_received_bytes_total') ?? 0) > 2048, 'wire bytes in include the oversized frame')
  assert.ok((value(samples, 'ws_sent_bytes_total') ?? 0) > 5 * 129, 'wire bytes out include handshakes')
  assert.equal(value(samples, 'ws_upgrades_refused_total', { status: '401', reason: 'no_token' }), 1)
  assert.equal(value(samples, 'ws_upgrades_refused_total', { status: '403', reason: 'origin' }), 1)
  assert.ok((value(samples, 'ws_heartbeat_latency_seconds_count') ?? 0) >= 1)
  assert.equal(value(samples, 'ws_heartbeat_timeouts_total'), 1)
  assert.equal(value(samples, 'ws_frame_violations_total'), 1)
  assert.equal(value(samples, 'ws_messages_rate_limited_total'), 0)
  assert.equal(value(samples, 'ws_backpressure_dropped_total'), 0)
  assert.equal(value(samples, 'ws_slow_consumer_closes_total'), 0)
  assert.equal(value(samples, 'ws_router_errors_total', { route: '/a', code: 'UNKNOWN_TYPE' }), 1)
  assert.equal(value(samples, 'ws_router_errors_total', { route: '/a', code: 'HANDLER_ERROR' }), 1)
  assert.equal(value(samples, 'ws_router_handler_duration_seconds_count', { route: '/a', type: 'work' }), 1)
  assert.ok((value(samples, 'ws_router_handler_duration_seconds_sum', { route: '/a', type: 'work' }) ?? 0) >= 0.015)
  // Bounded labels: no user or connection id, no undeclared message type; no cluster metrics.
  assert.doesNotMatch(text, /secret-user|no-such-type/)
  for (const id of [...app.wsManager.connections].map((c) => c.id)) assert.equal(text.includes(id), false)
  assert.doesNotMatch(text, /ws_cluster_/)
  assert.doesNotMatch(text, /process_cpu/, 'default metrics are off by default')
  live.close()
})

test('rate-limited messages, drops and slow-consumer closes are counted', async (t) => {
  const { app, url } = await build(t, {
    auth: false,
    metrics: { prefix: 'chat_' },
    messageRateLimit: { max: 1, timeWindow: 60_000, burst: 1, policy: 'drop' }
  })
  const ws = await connect(t, url + '/a')
  for (let i = 0; i < 5; i++) ws.send(Buffer.from([i]))
  await waitFor(() => (app.wsManager.stats().admission.messages?.refused ?? 0) >= 1, 3000, 'a refusal')
  const { samples } = await scrape(app)
  assert.equal(value(samples, 'chat_messages_rate_limited_total'), app.wsManager.stats().admission.messages?.refused)
  assert.equal(value(samples, 'ws_messages_rate_limited_total'), undefined, 'the prefix replaces ws_')
})

test('the scrape route: endpoint, onRequest, false; an application registry; default metrics', async (t) => {
  const registry = new Registry()
  const { app } = await build(t, {
    auth: false,
    metrics: {
      endpoint: '/internal/metrics',
      registry,
      defaultMetrics: true,
      onRequest: async (request, reply) => {
        if (request.headers['x-scrape-key'] !== 'k') return reply.code(401).send({ error: 'no' })
      }
    }
  })
  assert.equal(app.wsManager.metrics?.registry, registry)
  assert.equal((await scrape(app, '/internal/metrics')).status, 401)
  const ok = await scrape(app, '/internal/metrics', { 'x-scrape-key': 'k' })
  assert.equal(ok.status, 200)
  assert.ok(value(ok.samples, 'process_cpu_user_seconds_total') !== undefined)
  assert.equal((await scrape(app, '/metrics')).status, 404)
  // Registering a second app in the same registry collides on names: a coded error.
  const other = Fastify({ logger: false })
  await assert.rejects(async () => { await other.register(wsManager, { auth: false, metrics: { registry, endpoint: false } }).ready() }, { code: 'FST_WSM_OPTION_INVALID' })
  await other.close()
  // The plugin's metrics leave the application's registry with the app.
  await app.close()
  assert.equal(registry.getSingleMetric('ws_connections_active'), undefined)

  const { app: silent } = await build(t, { auth: false, metrics: { endpoint: false } })
  assert.equal((await scrape(silent)).status, 404)
  assert.ok((await silent.wsManager.metrics?.registry.metrics())?.includes('ws_connections_active'))
})

test('metrics options are validated', () => {
  for (const metrics of [{ endpoint: 'metrics' }, { prefix: '1x' }, { registry: {} }, { defaultMetrics: 'yes' }, { onRequest: 'x' }, { other: 1 }, 'on']) {
    assert.throws(() => normalizeOptions({ metrics } as WsManagerOptions), { code: 'FST_WSM_OPTION_INVALID' }, JSON.stringify(metrics))
  }
  assert.equal(normalizeOptions({}).metrics, false)
  assert.deepEqual({ ...normalizeOptions({ metrics: true }).metrics, registry: null },
    { endpoint: '/metrics', registry: null, prefix: 'ws_', defaultMetrics: false, onRequest: [] })
})

test('in cluster mode: nodes, Redis up and publish failures', async (t) => {
  const redis = new PrivateRedis(await freePort())
  await redis.start()
  t.after(() => redis.stop())
  const { app } = await build(t, { auth: false, metrics: true, cluster: { redis: redis.url, prefix: uniquePrefix(), nodeId: 'm1', requestTimeout: 300 } })
  let { samples } = await scrape(app)
  assert.equal(value(samples, 'ws_cluster_nodes'), 1)
  assert.equal(value(samples, 'ws_cluster_redis_up'), 1)
  assert.equal(value(samples, 'ws_cluster_publish_failures_total'), 0)
  await redis.stop()
  await waitFor(() => app.wsManager.cluster?.healthy === false, 3000, 'unhealthy')
  await app.wsManager.broadcast('lost')
  ;({ samples } = await scrape(app))
  assert.equal(value(samples, 'ws_cluster_redis_up'), 0)
  assert.equal(value(samples, 'ws_cluster_publish_failures_total'), 1)
})

test('ws_connections_active is 0 for each WebSocket route before its first connection (an autoscaler sees new nodes)', async (t) => {
  const { app } = await build(t, { auth: false, metrics: true })
  const { samples } = await scrape(app)
  assert.equal(value(samples, 'ws_connections_active', { route: '/a' }), 0)
  assert.equal(value(samples, 'ws_connections_active', { route: '/b' }), 0)
  assert.equal(app.wsManager.stats().routes['/a']?.active, 0)
})
