// Cluster delivery across real processes: three node processes (test/fixtures/cluster-node.ts)
// started once for the file and sharing the machine's Redis on 6379, real clients on each
// (every test its own users and topics), real JWTs signed by @fastify/jwt.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { Redis } from 'ioredis'
import {
  type Answer, clusterStats, type ClusterNode, expectCopies, openClient, sleep, startCluster, waitUntil
} from './fixtures/cluster'

// The nodes live for the whole file: they are killed once every test has run.
const cleanups: Array<() => unknown> = []
let shared: { prefix: string, nodes: ClusterNode[] }
before(async () => { shared = await startCluster({ after: (fn) => cleanups.push(fn) }) })
after(async () => { for (const fn of cleanups) await fn() })

test('sendToUser from one node reaches the user on the other nodes exactly once, with one publication', async (t) => {
  const [a, b, c] = shared.nodes
  const onA = await openClient(t, a.url(), 'alice')
  const onB = await openClient(t, b.url(), 'alice')
  const onC = await openClient(t, c.url('/feed'), 'alice')
  const bob = await openClient(t, b.url(), 'bob')
  const before = await clusterStats(a)
  assert.equal(await a.call('sendToUser', 'alice', 'for alice'), 1, 'resolves with the local count')
  await expectCopies([onA, onB, onC], 'for alice', 1)
  assert.equal(bob.count('for alice'), 0)
  assert.equal((await clusterStats(a)).published - before.published, 1, 'one Redis publication per call')
  // A user on no other node: still one publication, nobody else receives it.
  await a.call('sendToUser', 'nobody', 'lost')
  await sleep(100)
  assert.equal([onA, onB, onC, bob].some((cl) => cl.count('lost') > 0), false)
})

test('sendToUser reaches only the nodes that hold the user', async (t) => {
  const [a, b, c] = shared.nodes
  await openClient(t, b.url(), 'carol')
  await openClient(t, c.url(), 'dave')
  const beforeC = await clusterStats(c)
  for (let i = 0; i < 20; i++) await a.call('sendToUser', 'carol', `m${i}`)
  await sleep(200)
  assert.equal((await clusterStats(c)).received - beforeC.received, 0, 'a node without the user receives none of it')
})

test('broadcast by route reaches every node once, and only that route', async (t) => {
  const [a, b, c] = shared.nodes
  const ws = await Promise.all([a, b, c].map(async (n, i) => openClient(t, n.url('/ws'), `u${i}`)))
  const feed = await Promise.all([a, b, c].map(async (n, i) => openClient(t, n.url('/feed'), `f${i}`)))
  await b.call('broadcast', 'to /ws', '/ws')
  await expectCopies(ws, 'to /ws', 1)
  assert.equal(feed.some((cl) => cl.count('to /ws') > 0), false)
  await c.call('broadcast', 'to all')
  await expectCopies([...ws, ...feed], 'to all', 1)
})

test('disconnectUser closes the user on every node with its code, and says who answered', async (t) => {
  const [a, b, c] = shared.nodes
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
  const [a, b, c] = shared.nodes
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

  const beforeC = await clusterStats(c)
  for (let i = 0; i < 20; i++) await a.call('publish', 'room:1', `r${i}`)
  await expectCopies([subA, subB], 'r19', 1)
  assert.equal((await clusterStats(c)).received - beforeC.received, 0, 'node C subscribes no channel of room:1')

  // Unsubscribing the last local subscriber stops the node's traffic for the topic.
  subB.ws.send(JSON.stringify({ unsub: 'room:1' }))
  await sleep(100)
  const beforeB = await clusterStats(b)
  await a.call('publish', 'room:1', 'after unsub')
  await expectCopies([subA], 'after unsub', 1)
  assert.equal(subB.count('after unsub'), 0)
  assert.equal((await clusterStats(b)).received - beforeB.received, 0)

  // A connection's topics go with it: the node drops the channel when its last subscriber closes.
  const channelsBefore = (await clusterStats(c)).channels
  onC.ws.close()
  await waitUntil(async () => (await clusterStats(c)).channels < channelsBefore, 3000, 'channel dropped')
})

test('bad topic names are refused with a coded error and nothing breaks', async (t) => {
  const [a] = shared.nodes
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
  const [a, b, c] = shared.nodes
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

test('hostile publications on the cluster channels are counted and dropped, never crash a node', async (t) => {
  const { prefix, nodes: [a, b] } = shared
  const onA = await openClient(t, a.url(), 'ola')
  const redis = new Redis('redis://127.0.0.1:6379')
  t.after(() => redis.disconnect())
  const before = await clusterStats(a)
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
  await waitUntil(async () => (await clusterStats(a)).malformed - before.malformed === garbage.length, 3000, 'malformed counted')
  assert.equal(onA.closeInfo, null, 'a forged disconnect with a bad code closes nothing')
  await b.call('sendToUser', 'ola', 'still here')
  await expectCopies([onA], 'still here', 1)
})

test('user ids that differ only in lone surrogates never share a channel or a presence entry', async (t) => {
  const [a, b] = shared.nodes
  const high = await openClient(t, b.url(), 'x\uD800')
  const low = await openClient(t, b.url(), 'x\uDC00')
  await a.call('sendToUser', 'x\uD800', 'high only')
  await expectCopies([high], 'high only', 1)
  assert.equal(low.count('high only'), 0)
  assert.equal(await a.call('countByUser', 'x\uD800'), 1)
})
