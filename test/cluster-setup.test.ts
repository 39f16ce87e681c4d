// Cluster mode's options, environment, connections to Redis and the reference server: what a
// deployment sets up, and what the plugin opens and closes.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import type { Writable } from 'node:stream'
import Fastify, { type FastifyInstance } from 'fastify'
import jwt from '@fastify/jwt'
import { Cluster as RedisCluster, Redis } from 'ioredis'
import wsManager, { loadConfig, normalizeOptions, type WsManagerOptions } from '../lib/index'
import { logCapture } from './helper'
import { Client, freePort, JWT_SECRET, openClient, PrivateRedis, uniquePrefix, waitUntil } from './fixtures/cluster'

const REDIS = 'redis://127.0.0.1:6379'

async function app (t: TestContext, options: WsManagerOptions, stream?: Writable): Promise<FastifyInstance> {
  const instance = Fastify({ logger: stream === undefined ? false : { level: 'info', stream } })
  t.after(() => instance.close())
  await instance.register(jwt, { secret: JWT_SECRET })
  await instance.register(wsManager, options)
  instance.get('/ws', { websocket: true }, (socket, request) => {
    socket.on('message', (data) => {
      request.wsConnection?.subscribe(String(data)).then(() => socket.send(JSON.stringify({ subscribed: String(data) })),
        (err: Error & { code?: string }) => socket.send(JSON.stringify({ error: err.code })))
    })
  })
  await instance.listen({ port: 0, host: '127.0.0.1' })
  return instance
}

function urlOf (instance: FastifyInstance): string {
  const address = instance.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return `ws://127.0.0.1:${address.port}/ws`
}

async function clientNames (redis: Redis): Promise<string[]> {
  const list = await redis.client('LIST') as string
  return [...list.matchAll(/name=(\S*)/g)].map((m) => m[1])
}

test('the cluster option is validated with FST_WSM_OPTION_INVALID', () => {
  const bad: Array<[unknown, string]> = [
    [{ redis: 6379 }, 'cluster.redis'],
    [{ redis: 'http://127.0.0.1:6379' }, 'cluster.redis'],
    [{ redis: {} }, 'cluster.redis'],
    [{ redis: REDIS, prefix: '{tag}' }, 'cluster.prefix'],
    [{ redis: REDIS, prefix: '' }, 'cluster.prefix'],
    [{ redis: REDIS, prefix: 'app:topic' }, 'cluster.prefix'],
    [{ redis: REDIS, nodeId: 'a b' }, 'cluster.nodeId'],
    [{ redis: REDIS, nodeId: 'x'.repeat(65) }, 'cluster.nodeId'],
    [{ redis: REDIS, requestTimeout: 0 }, 'cluster.requestTimeout'],
    [{ redis: REDIS, presenceTtl: 100 }, 'cluster.presenceTtl'],
    [{ redis: REDIS, pubsub: 'fast' }, 'cluster.pubsub'],
    [{ redis: REDIS, required: 'yes' }, 'cluster.required'],
    [{ redis: REDIS, nodes: 3 }, 'cluster.nodes'],
    ['redis://127.0.0.1', 'cluster']
  ]
  for (const [cluster, name] of bad) {
    assert.throws(() => normalizeOptions({ cluster }), (err: Error & { code?: string }) =>
      err.code === 'FST_WSM_OPTION_INVALID' && err.message.includes(`"${name}"`), JSON.stringify(cluster))
  }
  assert.throws(() => normalizeOptions({ maxTopicsPerConnection: -1 }), { code: 'FST_WSM_OPTION_INVALID' })
  const resolved = normalizeOptions({ cluster: { redis: REDIS } })
  assert.ok(resolved.cluster !== false)
  assert.deepEqual({ ...resolved.cluster, nodeId: typeof resolved.cluster.nodeId },
    { redis: REDIS, prefix: 'wsm', nodeId: 'string', requestTimeout: 2000, presenceTtl: 15_000, pubsub: 'auto', required: false })
  assert.equal(normalizeOptions({}).cluster, false)
})

test('a Redis Cluster client is refused rather than half supported', () => {
  const client = new RedisCluster([{ host: '127.0.0.1', port: 1 }], { lazyConnect: true })
  try {
    assert.throws(() => normalizeOptions({ cluster: { redis: client as unknown as Redis } }), /Redis Cluster client is not supported/)
  } finally {
    client.disconnect()
  }
})

test('loadConfig: REDIS_URL turns cluster mode on, with CLUSTER_PREFIX and NODE_ID', () => {
  const secret = 's'.repeat(32)
  assert.equal(loadConfig({}).options.cluster, undefined)
  assert.deepEqual(loadConfig({ REDIS_URL: REDIS, JWT_SECRET: secret }).options.cluster, { redis: REDIS, prefix: 'wsm', required: false })
  assert.deepEqual(loadConfig({ REDIS_URL: REDIS, JWT_SECRET: secret, CLUSTER_PREFIX: 'chat', NODE_ID: 'pod-1', CLUSTER_REQUIRED: 'true' }).options.cluster,
    { redis: REDIS, prefix: 'chat', nodeId: 'pod-1', required: true })
  const invalid = (env: Record<string, string>, name: string): void => {
    assert.throws(() => loadConfig(env), (err: Error & { code?: string }) => err.code === 'FST_WSM_ENV_INVALID' && err.message.includes(name))
  }
  invalid({ REDIS_URL: 'http://user:hunter2@host', JWT_SECRET: secret }, 'REDIS_URL')
  // The URL's password never reaches the error.
  assert.throws(() => loadConfig({ REDIS_URL: 'http://user:hunter2@host', JWT_SECRET: secret }), (err: Error) => !err.message.includes('hunter2'))
  invalid({ REDIS_URL: REDIS }, 'JWT_SECRET')
  invalid({ CLUSTER_PREFIX: 'a{b}' }, 'CLUSTER_PREFIX')
  invalid({ CLUSTER_PREFIX: 'a:b' }, 'CLUSTER_PREFIX')
  invalid({ NODE_ID: 'pod 1' }, 'NODE_ID')
  invalid({ REDIS_URL: REDIS, JWT_SECRET: secret, CLUSTER_REQUIRED: 'maybe' }, 'CLUSTER_REQUIRED')
})

test("the plugin opens its own Redis connections, closes them on app.close(), and leaves the caller's client alone", async (t) => {
  const mine = new Redis(REDIS)
  t.after(() => mine.disconnect())
  const nodeId = `own-${process.pid}`
  const instance = await app(t, { auth: false, cluster: { redis: mine, prefix: uniquePrefix(), nodeId } })
  const names = await clientNames(mine)
  assert.equal(names.filter((n) => n.endsWith(nodeId)).length, 2, 'a command and a subscriber connection')
  await instance.close()
  assert.equal(mine.status, 'ready', "the caller's client is still open")
  await waitUntil(async () => (await clientNames(mine)).filter((n) => n.endsWith(nodeId)).length === 0, 3000, 'connections closed')
})

test('a node leaves the cluster on app.close(): its entry and its presence go at once', async (t) => {
  const prefix = uniquePrefix()
  const a = await app(t, { cluster: { redis: REDIS, prefix, nodeId: 'a' } })
  const b = await app(t, { cluster: { redis: REDIS, prefix, nodeId: 'b' } })
  await openClient(t, urlOf(b), 'quinn')
  assert.equal(await a.wsManager.cluster?.countByUser('quinn'), 1)
  await b.close()
  assert.deepEqual((await a.wsManager.cluster?.nodes())?.map((n) => n.nodeId), ['a'])
  assert.equal(await a.wsManager.cluster?.countByUser('quinn'), 0)
})

test('a node that starts while Redis is down starts unhealthy, serves local traffic, and joins when Redis comes', async (t) => {
  const redis = new PrivateRedis(await freePort())
  t.after(() => redis.stop())
  const started = Date.now()
  const instance = await app(t, { cluster: { redis: redis.url, prefix: uniquePrefix(), nodeId: 'late', requestTimeout: 300 } })
  assert.ok(Date.now() - started < 3000, `ready after ${Date.now() - started} ms`)
  const cluster = instance.wsManager.cluster
  assert.equal(cluster?.healthy, false)
  const client = await openClient(t, urlOf(instance), 'rae')
  assert.equal(await instance.wsManager.sendToUser('rae', 'local'), 1)
  const presence = await cluster?.presence('rae')
  assert.equal(presence?.complete, false)
  assert.equal(presence?.length, 1)
  assert.ok((instance.wsManager.stats().cluster?.outages ?? 0) >= 1)
  await redis.start()
  await waitUntil(() => cluster?.healthy === true, 5000, 'healthy')
  await waitUntil(async () => (await cluster?.countByUser('rae')) === 1, 3000, 'presence registered')
  await waitUntil(() => client.received.includes('local'), 1000, 'local delivery')
})

test('during an outage the per-user cap counts this node, with one warn log per outage', async (t) => {
  const redis = new PrivateRedis(await freePort())
  await redis.start()
  t.after(() => redis.stop())
  const log = logCapture()
  const instance = await app(t, { maxConnectionsPerUser: 2, cluster: { redis: redis.url, prefix: uniquePrefix(), nodeId: 'solo', requestTimeout: 300 } }, log.stream)
  const fallbacks = (): number => log.lines.filter((l) => l.level === 40 && String(l.msg).includes('limits count this node only')).length
  for (let outage = 1; outage <= 2; outage++) {
    await redis.stop()
    await waitUntil(() => instance.wsManager.cluster?.healthy === false, 3000, 'unhealthy')
    const clients = [await openClient(t, urlOf(instance), `u${outage}`), await openClient(t, urlOf(instance), `u${outage}`)]
    await assert.rejects(openClient(t, urlOf(instance), `u${outage}`), { status: 429 })
    await assert.rejects(openClient(t, urlOf(instance), `u${outage}`), { status: 429 })
    assert.equal(fallbacks(), outage, 'one warn log per outage')
    for (const c of clients) c.ws.close()
    await redis.start()
    await waitUntil(() => instance.wsManager.cluster?.healthy === true, 5000, 'healthy again')
  }
  assert.ok((instance.wsManager.stats().cluster?.commandFailures ?? 0) > 0)
})

test('topics work without a cluster, and a connection has at most maxTopicsPerConnection', async (t) => {
  const instance = Fastify({ logger: false })
  t.after(() => instance.close())
  await instance.register(wsManager, { auth: false, maxTopicsPerConnection: 2 })
  instance.get('/ws', { websocket: true }, (socket, request) => {
    socket.on('message', (data) => {
      request.wsConnection?.subscribe(String(data)).then(() => socket.send(`ok ${String(data)}`),
        (err: Error & { code?: string }) => socket.send(`refused ${String(err.code)}`))
    })
  })
  await instance.listen({ port: 0, host: '127.0.0.1' })
  const { default: WebSocket } = await import('ws')
  const ws = new WebSocket(urlOf(instance))
  t.after(() => ws.terminate())
  const client = new Client(ws)
  await new Promise((resolve) => ws.once('open', resolve))
  for (const topic of ['a', 'b', 'c', 'a']) ws.send(topic)
  await waitUntil(() => client.received.length === 4, 3000, 'answers')
  // A refusal is answered a tick sooner than a subscription: compare without order.
  assert.deepEqual(client.received.sort(), ['ok a', 'ok a', 'ok b', 'refused FST_WSM_TOPIC_INVALID'])
  assert.equal(await instance.wsManager.publish('a', 'to a'), 1)
  assert.equal(await instance.wsManager.publish('c', 'to c'), 0)
  await waitUntil(() => client.received.includes('to a'), 1000, 'publication')
  assert.equal(instance.wsManager.stats().topics.active, 2)
  const connection = [...instance.wsManager.connections][0]
  assert.deepEqual(connection.topics, ['a', 'b'])
  assert.equal(connection.unsubscribe('a'), true)
  assert.equal(connection.unsubscribe('a'), false)
  ws.close()
  await waitUntil(() => instance.wsManager.stats().topics.active === 0, 3000, 'topics gone with the connection')
  assert.equal(instance.wsManager.cluster, null)
  assert.equal(instance.wsManager.stats().cluster, null)
})

test('the reference server runs in cluster mode when REDIS_URL is set: a whisper crosses processes', async (t) => {
  const prefix = uniquePrefix()
  const servers = await Promise.all(['ref-1', 'ref-2'].map(async (nodeId) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(__dirname, '..', 'examples', 'server.ts')], {
      env: { ...process.env, WEBSOCKET_PORT: '0', LOG_LEVEL: 'info', TICK_INTERVAL: '0', JWT_SECRET, REDIS_URL: REDIS, CLUSTER_PREFIX: prefix, NODE_ID: nodeId },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    t.after(() => { if (child.exitCode === null) child.kill('SIGKILL') })
    let output = ''
    child.stdout?.on('data', (chunk: Buffer) => { output += chunk.toString() })
    child.stderr?.on('data', (chunk: Buffer) => { output += chunk.toString() })
    await waitUntil(() => /listening at http:\/\/127\.0\.0\.1:\d+/.test(output) || child.exitCode !== null, 20_000, 'listening')
    const port = /listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(output)?.[1]
    if (port === undefined) throw new Error(output)
    return `ws://127.0.0.1:${port}/ws`
  }))
  const sam = await openClient(t, servers[0], 'sam')
  const tess = await openClient(t, servers[1], 'tess')
  await waitUntil(() => sam.received.length > 0 && tess.received.length > 0, 3000, 'welcomes')
  sam.ws.send(JSON.stringify({ type: 'whisper', to: 'tess', text: 'psst' }))
  await waitUntil(() => tess.received.some((m) => m.includes('psst')), 3000, 'the whisper on the other server')
  assert.deepEqual(JSON.parse(tess.received.find((m) => m.includes('psst')) as string), { type: 'whisper', from: 'sam', text: 'psst' })
})
