// Cluster mode across real processes: three node processes (test/fixtures/cluster-node.ts)
// sharing the machine's Redis on 6379 (or a private redis-server for the outage), real
// clients on each, real JWTs signed by @fastify/jwt.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { Redis } from 'ioredis'
import {
  Client, ClusterNode, freePort, openClient, PrivateRedis, sleep, startNode, uniquePrefix, waitUntil
} from './fixtures/cluster'

interface Answer<T> { complete: boolean, unanswered?: string[], entries?: T[], nodes?: T[], results?: T[] }
interface ClusterStatsLike { cluster: { received: number, published: number, malformed: number, channels: number, healthy: boolean } }

async function cluster (t: TestContext, env: Record<string, string> = {}, count = 3, redisUrl?: string): Promise<{ prefix: string, nodes: ClusterNode[] }> {
  const prefix = uniquePrefix()
  const nodes = await Promise.all(Array.from({ length: count }, (_, i) =>
    startNode(t, { prefix, nodeId: `node-${'abc'[i] ?? i}`, env, redisUrl })))
  return { prefix, nodes }
}

async function stats (node: ClusterNode): Promise<ClusterStatsLike['cluster']> {
  return (await node.call<ClusterStatsLike>('stats')).cluster
}

/** Every client has exactly `n` copies of the message once things settle. */
async function expectCopies (clients: Client[], message: string, n: number): Promise<void> {
  await waitUntil(() => clients.every((c) => c.count(message) >= n), 3000, `${n} copies of ${message}`)
  await sleep(150)
  for (const c of clients) assert.equal(c.count(message), n, `copies of ${message}`)
}

test('sendToUser from one node reaches the user on the other nodes exactly once, with one publication', async (t) => {
  const { nodes: [a, b, c] } = await cluster(t)
  const onA = await openClient(t, a.url(), 'alice')
  const onB = await openClient(t, b.url(), 'alice')
  const onC = await openClient(t, c.url('/feed'), 'alice')
  const bob = await openClient(t, b.url(), 'bob')
  const before = await stats(a)
  assert.equal(await a.call('sendToUser', 'alice', 'for alice'), 1, 'resolves with the local count')
  await expectCopies([onA, onB, onC], 'for alice', 1)
  assert.equal(bob.count('for alice'), 0)
  assert.equal((await stats(a)).published - before.published, 1, 'one Redis publication per call')
  // A user on no other node: still one publication, nobody else receives it.
  await a.call('sendToUser', 'nobody', 'lost')
  await sleep(100)
  assert.equal([onA, onB, onC, bob].some((cl) => cl.count('lost') > 0), false)
})

test('sendToUser reaches only the nodes that hold the user', async (t) => {
  const { nodes: [a, b, c] } = await cluster(t)
  await openClient(t, b.url(), 'carol')
  await openClient(t, c.url(), 'dave')
  const beforeC = await stats(c)
  for (let i = 0; i < 20; i++) await a.call('sendToUser', 'carol', `m${i}`)
  await sleep(200)
  assert.equal((await stats(c)).received - beforeC.received, 0, 'a node without the user receives none of it')
})

test('broadcast by route reaches every node once, and only that route', async (t) => {
  const { nodes: [a, b, c] } = await cluster(t)
  const ws = await Promise.all([a, b, c].map(async (n, i) => openClient(t, n.url('/ws'), `u${i}`)))
  const feed = await Promise.all([a, b, c].map(async (n, i) => openClient(t, n.url('/feed'), `f${i}`)))
  await b.call('broadcast', 'to /ws', '/ws')
  await expectCopies(ws, 'to /ws', 1)
  assert.equal(feed.some((cl) => cl.count('to /ws') > 0), false)
  await c.call('broadcast', 'to all')
  await expectCopies([...ws, ...feed], 'to all', 1)
})

test('disconnectUser closes the user on every node with its code, and says who answered', async (t) => {
  const { nodes: [a, b, c] } = await cluster(t)
  const clients = [await openClient(t, a.url(), 'erin'), await openClient(t, b.url(), 'erin'), await openClient(t, c.url('/feed'), 'erin')]
  const other = await openClient(t, b.url(), 'frank')
  const answer = await b.call<Answer<{ code: number, reason: string, clean: boolean }>>('disconnectUser', 'erin', { code: 4001, reason: 'Moved' })
  assert.equal(answer.complete, true)
  assert.deepEqual(answer.unanswered, [])
  assert.equal(answer.results?.length, 3)
  for (const r of answer.results ?? []) assert.deepEqual([r.code, r.reason, r.clean], [4001, 'Moved', true])
  await waitUntil(() => clients.every((cl) => cl.closeInfo !== null), 3000, 'closes')
  for (const cl of clients) assert.deepEqual(cl.closeInfo, { code: 4001, reason: 'Moved' })
  assert.equal(other.closeInfo, null)
  // A bad code is refused before anything closes, on any node.
  await assert.rejects(a.call('disconnectUser', 'frank', { code: 1006 }), { code: 'FST_WSM_CLOSE_CODE_INVALID' })
  await sleep(100)
  assert.equal(other.closeInfo, null)
})

test('topics reach subscribers on every node; a node without subscribers gets none of the traffic', async (t) => {
  const { nodes: [a, b, c] } = await cluster(t)
  const subA = await openClient(t, a.url(), 'g1')
  const subB = await openClient(t, b.url('/feed'), 'g2')
  const idleA = await openClient(t, a.url(), 'g3')
  const onC = await openClient(t, c.url(), 'g4')
  await subA.subscribe('room:1')
  await subB.subscribe('room:1')
  await onC.subscribe('room:2')
  await c.call('publish', 'room:1', 'hello room')
  await expectCopies([subA, subB], 'hello room', 1)
  assert.equal(idleA.count('hello room') + onC.count('hello room'), 0)

  const beforeC = await stats(c)
  for (let i = 0; i < 20; i++) await a.call('publish', 'room:1', `r${i}`)
  await expectCopies([subA, subB], 'r19', 1)
  assert.equal((await stats(c)).received - beforeC.received, 0, 'node C subscribes no channel of room:1')

  // Unsubscribing the last local subscriber stops the node's traffic for the topic.
  subB.ws.send(JSON.stringify({ unsub: 'room:1' }))
  await sleep(100)
  const beforeB = await stats(b)
  await a.call('publish', 'room:1', 'after unsub')
  await expectCopies([subA], 'after unsub', 1)
  assert.equal(subB.count('after unsub'), 0)
  assert.equal((await stats(b)).received - beforeB.received, 0)

  // A connection's topics go with it: the node drops the channel when its last subscriber closes.
  const channelsBefore = (await stats(c)).channels
  onC.ws.close()
  await waitUntil(async () => (await stats(c)).channels < channelsBefore, 3000, 'channel dropped')
})

test('bad topic names are refused with a coded error and nothing breaks', async (t) => {
  const { nodes: [a] } = await cluster(t, {}, 1)
  const client = await openClient(t, a.url(), 'h1')
  for (const topic of ['', 'x'.repeat(257), 'a\nb', 'a\u0000b', 'a\u0085b', 'a\uD800b']) {
    client.ws.send(JSON.stringify({ sub: topic }))
    await assert.rejects(a.call('publish', topic, 'x'), { code: 'FST_WSM_TOPIC_INVALID' })
  }
  await waitUntil(() => client.count(JSON.stringify({ error: 'FST_WSM_TOPIC_INVALID' })) === 6, 3000, 'six refusals')
  await client.subscribe('x'.repeat(256))
  assert.equal(client.closeInfo, null)
})

test('presence, countByUser and nodes() see the whole cluster', async (t) => {
  const { nodes: [a, b, c] } = await cluster(t)
  await openClient(t, a.url(), 'ivy')
  await openClient(t, b.url('/feed'), 'ivy')
  const p = await c.call<Answer<{ nodeId: string, route: string, connectionId: string, openedAt: number }>>('presence', 'ivy')
  assert.equal(p.complete, true)
  assert.deepEqual(p.entries?.map((e) => `${e.nodeId} ${e.route}`).sort(), ['node-a /ws', 'node-b /feed'])
  assert.equal(await c.call('countByUser', 'ivy'), 2)
  assert.equal(await c.call('countByUser', 'nobody'), 0)
  const n = await c.call<Answer<{ nodeId: string, connections: number }>>('nodes')
  assert.deepEqual(n.nodes?.map((x) => x.nodeId).sort(), ['node-a', 'node-b', 'node-c'])
})

test('the per-user cap holds across nodes under racing upgrades', async (t) => {
  const { nodes } = await cluster(t, { MAX_PER_USER: '3' })
  for (let round = 0; round < 3; round++) {
    const attempts = Array.from({ length: 12 }, (_, i) => openClient(t, nodes[i % 3].url(), 'racer'))
    const settled = await Promise.allSettled(attempts)
    const open = settled.filter((s) => s.status === 'fulfilled').map((s) => (s as PromiseFulfilledResult<Client>).value)
    const refused = settled.filter((s) => s.status === 'rejected').map((s) => (s as PromiseRejectedResult).reason as { status?: number })
    assert.equal(open.length, 3, `round ${round}: exactly the cap is admitted`)
    assert.ok(refused.every((r) => r.status === 429), `round ${round}: the rest get 429`)
    assert.equal(await nodes[0].call('countByUser', 'racer'), 3)
    for (const cl of open) cl.ws.close()
    await waitUntil(async () => await nodes[1].call('countByUser', 'racer') === 0, 3000, 'places given back')
  }
})

test("onUserLimit 'closeOldest' closes the user's oldest connection on another node", async (t) => {
  const { nodes: [a, b, c] } = await cluster(t, { MAX_PER_USER: '2', ON_USER_LIMIT: 'closeOldest' })
  const first = await openClient(t, a.url(), 'jo')
  await sleep(5)
  const second = await openClient(t, b.url(), 'jo')
  await sleep(5)
  const third = await openClient(t, c.url(), 'jo')
  await waitUntil(() => first.closeInfo !== null, 3000, 'the oldest to close')
  assert.deepEqual(first.closeInfo, { code: 1008, reason: 'Connection limit exceeded' })
  await sleep(100)
  assert.equal(second.closeInfo, null)
  assert.equal(third.closeInfo, null)
  assert.equal(await b.call('countByUser', 'jo'), 2)
})

test('the upgrade rate limit counts in Redis, across nodes', async (t) => {
  const { nodes: [a, b, c] } = await cluster(t, { UPGRADE_RATE: '3' })
  for (const node of [a, b, c]) (await openClient(t, node.url(), 'kim')).ws.close()
  await assert.rejects(openClient(t, a.url(), 'kim'), { status: 429 })
  // Another user has a budget of its own.
  await openClient(t, a.url(), 'lee')
})

test('a node killed with SIGKILL leaves nodes(), presence and the counts within presenceTtl', async (t) => {
  const { nodes: [a, b] } = await cluster(t, { MAX_PER_USER: '1', PRESENCE_TTL: '1000' }, 2)
  await openClient(t, b.url(), 'max')
  await assert.rejects(openClient(t, a.url(), 'max'), { status: 429 })
  b.child.kill('SIGKILL')
  const killedAt = Date.now()
  await waitUntil(async () => (await a.call<Answer<{ nodeId: string }>>('nodes')).nodes?.length === 1, 3000, 'node-b to leave')
  const gone = Date.now() - killedAt
  assert.ok(gone <= 1500, `left nodes() after ${gone} ms`)
  const p = await a.call<Answer<unknown>>('presence', 'max')
  assert.deepEqual(p.entries, [])
  // Its stale entry no longer blocks the user.
  await openClient(t, a.url(), 'max')
  assert.equal(await a.call('countByUser', 'max'), 1)
})

test('a frozen node never holds up a call: disconnectUser names it, presence and nodes answer at once', async (t) => {
  const { nodes: [a, b] } = await cluster(t, { PRESENCE_TTL: '60000', REQUEST_TIMEOUT: '500' }, 2)
  const onA = await openClient(t, a.url(), 'nia')
  await openClient(t, b.url(), 'nia')
  b.child.kill('SIGSTOP')
  t.after(() => { if (b.alive) b.child.kill('SIGCONT') })
  let started = Date.now()
  const answer = await a.call<Answer<{ code: number }>>('disconnectUser', 'nia', { code: 4002, reason: 'Frozen', timeout: 300 })
  const took = Date.now() - started
  assert.equal(answer.complete, false)
  assert.deepEqual(answer.unanswered, ['node-b'])
  assert.equal(answer.results?.length, 1, "this node's result")
  assert.ok(took < 300 + 500 + 400, `resolved after ${took} ms`)
  assert.deepEqual(onA.closeInfo, { code: 4002, reason: 'Frozen' })
  started = Date.now()
  await a.call('presence', 'nia')
  await a.call('nodes')
  assert.ok(Date.now() - started < 500, 'Redis answers for the frozen node')
})

test('two live nodes cannot share a node id', async (t) => {
  const prefix = uniquePrefix()
  await startNode(t, { prefix, nodeId: 'twin' })
  await assert.rejects(startNode(t, { prefix, nodeId: 'twin' }), { code: 'FST_WSM_CLUSTER_NODE_ID_TAKEN' })
  // Another prefix is another cluster.
  await startNode(t, { prefix: uniquePrefix(), nodeId: 'twin' })
})

test('hostile publications on the cluster channels are counted and dropped, never crash a node', async (t) => {
  const { prefix, nodes: [a, b] } = await cluster(t, {}, 2)
  const onA = await openClient(t, a.url(), 'ola')
  const redis = new Redis('redis://127.0.0.1:6379')
  t.after(() => redis.disconnect())
  const before = await stats(a)
  const garbage = [Buffer.from('not json'), Buffer.from([1, 0xff, 0xff, 0xff, 0xff]), Buffer.from([1, 0, 0, 0, 2, 0x7b, 0x7d]),
    Buffer.from([2, 0, 0, 0, 0]), Buffer.alloc(0)]
  for (const g of garbage) await redis.spublish(`${prefix}:broadcast`, g)
  // Well-formed but hostile: a disconnect with a code that may not be sent, a close with ids that are not there.
  const forged = (header: object): Buffer => {
    const json = Buffer.from(JSON.stringify(header))
    const head = Buffer.alloc(5)
    head[0] = 1
    head.writeUInt32BE(json.length, 1)
    return Buffer.concat([head, json])
  }
  await redis.spublish(`${prefix}:user:"ola"`, forged({ n: 'evil', k: 'd', u: 'ola', q: 'q', c: 1005, r: 'x', o: 10 }))
  await redis.spublish(`${prefix}:node:node-a`, forged({ n: 'evil', k: 'x', ids: ['nope'], c: 99999, r: 'x' }))
  await redis.spublish(`${prefix}:node:node-a`, forged({ n: 'evil', k: 'a', q: 'unknown', res: [{}] }))
  await waitUntil(async () => (await stats(a)).malformed - before.malformed === garbage.length, 3000, 'malformed counted')
  assert.equal(onA.closeInfo, null, 'a forged disconnect with a bad code closes nothing')
  await b.call('sendToUser', 'ola', 'still here')
  await expectCopies([onA], 'still here', 1)
})

test('user ids that differ only in lone surrogates never share a channel or a presence entry', async (t) => {
  const { nodes: [a, b] } = await cluster(t, {}, 2)
  const high = await openClient(t, b.url(), 'x\uD800')
  const low = await openClient(t, b.url(), 'x\uDC00')
  await a.call('sendToUser', 'x\uD800', 'high only')
  await expectCopies([high], 'high only', 1)
  assert.equal(low.count('high only'), 0)
  assert.equal(await a.call('countByUser', 'x\uD800'), 1)
})

test('a Redis outage: local delivery and upgrades go on, cluster calls answer at once, and everything comes back', async (t) => {
  const redis = new PrivateRedis(await freePort())
  await redis.start()
  t.after(() => redis.stop())
  const { nodes: [a, b] } = await cluster(t, { MAX_PER_USER: '2', REQUEST_TIMEOUT: '500' }, 2, redis.url)
  const onA = await openClient(t, a.url(), 'pat')
  const onB = await openClient(t, b.url(), 'pat')
  await onA.subscribe('news')
  await onB.subscribe('news')
  await a.call('sendToUser', 'pat', 'before')
  await expectCopies([onA, onB], 'before', 1)

  await redis.stop()
  await waitUntil(async () => !(await a.call<boolean>('healthy')) && !(await b.call<boolean>('healthy')), 3000, 'unhealthy')
  // Local delivery goes on; other nodes are out of reach.
  await a.call('sendToUser', 'pat', 'during')
  await a.call('publish', 'news', 'local news')
  await expectCopies([onA], 'during', 1)
  await expectCopies([onA], 'local news', 1)
  // Every cluster call answers at once, saying it is not whole.
  const started = Date.now()
  const p = await a.call<Answer<{ nodeId: string }>>('presence', 'pat')
  const n = await a.call<Answer<{ nodeId: string }>>('nodes')
  const d = await a.call<Answer<unknown>>('disconnectUser', 'nobody', {})
  assert.ok(Date.now() - started < 1000, `cluster calls took ${Date.now() - started} ms`)
  assert.equal(p.complete, false)
  assert.deepEqual(p.entries?.map((e) => e.nodeId), ['node-a'])
  assert.equal(n.complete, false)
  assert.equal(d.complete, false)
  // Upgrades go on, capped by local counts.
  const extra = await openClient(t, a.url(), 'pat')
  await assert.rejects(openClient(t, a.url(), 'pat'), { status: 429 })
  extra.ws.close()

  // Redis is back (empty: every key was lost): channels, topics and presence are restored.
  await redis.start()
  await waitUntil(async () => await a.call<boolean>('healthy') && await b.call<boolean>('healthy'), 5000, 'healthy again')
  await waitUntil(async () => {
    await a.call('sendToUser', 'pat', 'probe')
    await sleep(50)
    return onB.count('probe') > 0
  }, 5000, 'cross-node delivery')
  await b.call('publish', 'news', 'after')
  await expectCopies([onA, onB], 'after', 1)
  await waitUntil(async () => await a.call('countByUser', 'pat') === 2, 3000, 'presence re-registered')
  const s = await stats(a)
  assert.ok(s.healthy)
})
