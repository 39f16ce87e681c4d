// Topic offsets and recovery across real node processes (issue 14's server side in cluster
// mode): the history is a Redis stream; a subscriber whose node is killed comes back on
// another node and gets everything it missed, once and in order.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import { createClient } from '../lib/client'
import { failoverProxy, openClient, sleep, slowSubscriberProxy, startCluster, startNode, tokenFor, uniquePrefix, waitUntil, type Client } from './fixtures/cluster'

interface Frame { type: string, topic?: string, epoch?: string | null, offset?: number | null, data?: unknown, recovered?: boolean }

function frames (client: Client, type: string): Frame[] {
  return client.received.map((m) => JSON.parse(m) as Frame).filter((f) => f.type === type)
}

async function subscribe (client: Client, topic: string, since?: { offset: number, epoch: string }): Promise<Frame> {
  const before = frames(client, 'topic.subscribed').length
  client.ws.send(JSON.stringify({ type: 'topic.subscribe', topic, since }))
  await waitUntil(() => frames(client, 'topic.subscribed').length > before, 5000, `topic.subscribed (got ${client.received.slice(-3).join(' | ')})`)
  return frames(client, 'topic.subscribed')[before]
}

test('a subscriber whose node is killed recovers everything on another node, once and in order', async (t) => {
  const { nodes: [a, b, c] } = await startCluster(t, { TOPICS_HISTORY: '500' })
  const first = await openClient(t, a.url('/rec'), 'ivy')
  const sub = await subscribe(first, 'orders')
  assert.deepEqual([sub.offset, sub.recovered], [0, true])
  for (let i = 1; i <= 5; i++) await b.call('publish', 'orders', { i })
  await waitUntil(() => frames(first, 'topic.message').length === 5, 5000, 'five messages')
  assert.deepEqual(frames(first, 'topic.message').map((f) => f.offset), [1, 2, 3, 4, 5])
  const last = frames(first, 'topic.message')[4]

  a.child.kill('SIGKILL')
  await waitUntil(() => first.closeInfo !== null, 5000, 'the client to see its node die')
  for (let i = 6; i <= 105; i++) await c.call('publish', 'orders', { i })

  const again = await openClient(t, b.url('/rec'), 'ivy')
  const answer = await subscribe(again, 'orders', { offset: last.offset as number, epoch: last.epoch as string })
  assert.deepEqual([answer.recovered, answer.offset, answer.epoch], [true, 105, last.epoch])
  await c.call('publish', 'orders', { i: 106 })
  await waitUntil(() => frames(again, 'topic.message').length >= 101, 5000, 'the missed and the live')
  await sleep(200)
  const got = frames(again, 'topic.message')
  assert.deepEqual(got.map((f) => f.offset), Array.from({ length: 101 }, (_, k) => k + 6), 'offsets 6 to 106, once each, in order')
  assert.deepEqual(got.map((f) => (f.data as { i: number }).i), Array.from({ length: 101 }, (_, k) => k + 6))
})

test('publications racing a resubscription on another node are neither lost nor doubled', async (t) => {
  const { nodes: [a, b] } = await startCluster(t, { TOPICS_HISTORY: '5000' }, 2)
  const first = await openClient(t, a.url('/rec'), 'jay')
  const sub = await subscribe(first, 'race')
  first.ws.close()
  let published = 0
  let stop = false
  const publishing = (async () => {
    for (;;) {
      if (stop || published >= 2000) break
      await a.call('publish', 'race', ++published)
    }
  })()
  await sleep(100)
  const again = await openClient(t, b.url('/rec'), 'jay')
  const answer = await subscribe(again, 'race', { offset: 0, epoch: sub.epoch as string })
  assert.equal(answer.recovered, true)
  await sleep(200)
  stop = true
  await publishing
  // Up to 2000 messages through Redis and two processes: a loaded machine can take seconds.
  await waitUntil(() => frames(again, 'topic.message').length >= published, 15_000, `every message (${frames(again, 'topic.message').length} of ${published})`)
  await sleep(100)
  const offsets = frames(again, 'topic.message').map((f) => f.offset as number)
  const missing = Array.from({ length: published }, (_, k) => k + 1).filter((o) => !offsets.includes(o))
  assert.deepEqual(missing, [], 'no gap')
  assert.deepEqual(offsets, Array.from({ length: published }, (_, k) => k + 1), 'once each, in order')
})

test('a publication both in the replay and late on the subscriber connection reaches the client once', async (t) => {
  // Node b hears publications 300 ms late: the replay, read on its command connection, holds
  // messages that then also arrive live.
  const prefix = uniquePrefix()
  const env = { TOPICS_HISTORY: '5000' }
  const a = await startNode(t, { prefix, nodeId: 'node-a', env })
  const b = await startNode(t, { prefix, nodeId: 'node-b', env, redisUrl: `redis://127.0.0.1:${await slowSubscriberProxy(t, 6379, 300)}` })
  const first = await openClient(t, a.url('/rec'), 'ned')
  const sub = await subscribe(first, 'late')
  first.ws.close()
  let published = 0
  let stop = false
  const publishing = (async () => {
    for (;;) {
      if (stop || published >= 3000) break
      await a.call('publish', 'late', ++published)
      await sleep(2)
    }
  })()
  await sleep(200)
  const again = await openClient(t, b.url('/rec'), 'ned')
  const answer = await subscribe(again, 'late', { offset: 0, epoch: sub.epoch as string })
  assert.equal(answer.recovered, true)
  const replayed = answer.offset as number
  await sleep(600)
  stop = true
  await publishing
  assert.ok(published > replayed, 'publications went on after the replay was read')
  await waitUntil(() => frames(again, 'topic.message').length >= published, 15_000, `every message (${frames(again, 'topic.message').length} of ${published})`)
  await sleep(500)
  assert.deepEqual(frames(again, 'topic.message').map((f) => f.offset as number), Array.from({ length: published }, (_, k) => k + 1), 'once each, in order')
})

test('with too short a history the subscriber is told it was not recovered', async (t) => {
  const { nodes: [a, b] } = await startCluster(t, { TOPICS_HISTORY: '10' }, 2)
  const first = await openClient(t, a.url('/rec'), 'kai')
  const sub = await subscribe(first, 'short')
  first.ws.close()
  for (let i = 1; i <= 50; i++) await b.call('publish', 'short', i)
  const again = await openClient(t, b.url('/rec'), 'kai')
  const answer = await subscribe(again, 'short', { offset: 0, epoch: sub.epoch as string })
  assert.deepEqual([answer.recovered, answer.offset], [false, 50])
  // A connection already subscribed gets no replay: within the history, on a new one.
  again.ws.close()
  const third = await openClient(t, b.url('/rec'), 'kai')
  const held = await subscribe(third, 'short', { offset: 45, epoch: sub.epoch as string })
  assert.equal(held.recovered, true)
  await waitUntil(() => frames(third, 'topic.message').length >= 5, 3000, 'the five held')
  assert.deepEqual(frames(third, 'topic.message').map((f) => f.offset), [46, 47, 48, 49, 50])
})

test('the client, behind a load balancer: its node killed, it reconnects to another and recovers everything', async (t) => {
  const { nodes: [a, b, c] } = await startCluster(t, { TOPICS_HISTORY: '500' })
  const port = await failoverProxy(t, () => [a, b].filter((n) => n.alive).map((n) => n.port))
  const token = await tokenFor('lou')
  const client = createClient({ url: `ws://127.0.0.1:${port}/rec`, getToken: () => token, WebSocket, reconnect: { base: 50, max: 200, resetAfter: 5000 } })
  t.after(() => client.close())
  const got: Array<{ offset: number, data: unknown }> = []
  const subscribed: Array<{ recovered: boolean, resumed: boolean }> = []
  client.on('subscribed', (e) => subscribed.push({ recovered: e.recovered, resumed: e.resumed }))
  client.subscribe('ledger', (data, meta) => got.push({ offset: meta.offset, data }))
  await client.connect()
  await waitUntil(() => subscribed.length === 1, 5000, 'the subscription')
  for (let i = 1; i <= 5; i++) await c.call('publish', 'ledger', i)
  await waitUntil(() => got.length === 5, 5000, 'five messages')

  a.child.kill('SIGKILL')
  for (let i = 6; i <= 105; i++) await c.call('publish', 'ledger', i)
  await waitUntil(() => subscribed.length === 2, 10_000, 'the resubscription on node b')
  await c.call('publish', 'ledger', 106)
  await waitUntil(() => got.length >= 106, 10_000, 'every message')
  await sleep(200)
  assert.deepEqual(subscribed, [{ recovered: true, resumed: false }, { recovered: true, resumed: true }])
  assert.deepEqual(got.map((m) => m.offset), Array.from({ length: 106 }, (_, k) => k + 1))
  assert.deepEqual(got.map((m) => m.data), Array.from({ length: 106 }, (_, k) => k + 1))
  assert.equal(await b.call('local'), 1, 'the client is on node b now')
})
