// Cluster faults and caps across real processes: node processes (test/fixtures/cluster-node.ts)
// started per test with their own settings, sharing the machine's Redis on 6379 (or a private
// redis-server for the outage), real clients, real JWTs signed by @fastify/jwt.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import {
  type Answer, type Client, clusterStats, expectCopies, freePort, openClient, PrivateRedis, sleep, startCluster, startNode, uniquePrefix, waitUntil
} from './fixtures/cluster'

test('the per-user cap holds across nodes under racing upgrades', async (t) => {
  const { nodes } = await startCluster(t, { MAX_PER_USER: '3' })
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
  const { nodes: [a, b, c] } = await startCluster(t, { MAX_PER_USER: '2', ON_USER_LIMIT: 'closeOldest' })
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
  const { nodes: [a, b, c] } = await startCluster(t, { UPGRADE_RATE: '3' })
  for (const node of [a, b, c]) (await openClient(t, node.url(), 'kim')).ws.close()
  await assert.rejects(openClient(t, a.url(), 'kim'), { status: 429 })
  // Another user has a budget of its own.
  await openClient(t, a.url(), 'lee')
})

test('a node killed with SIGKILL leaves nodes(), presence and the counts within presenceTtl', async (t) => {
  const { nodes: [a, b] } = await startCluster(t, { MAX_PER_USER: '1', PRESENCE_TTL: '1000' }, 2)
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
  const { nodes: [a, b] } = await startCluster(t, { PRESENCE_TTL: '60000', REQUEST_TIMEOUT: '500' }, 2)
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

test('a Redis outage: local delivery and upgrades go on, cluster calls answer at once, and everything comes back', async (t) => {
  const redis = new PrivateRedis(await freePort())
  await redis.start()
  t.after(() => redis.stop())
  const { nodes: [a, b] } = await startCluster(t, { MAX_PER_USER: '2', REQUEST_TIMEOUT: '500' }, 2, redis.url)
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
  const s = await clusterStats(a)
  assert.ok(s.healthy)
})
