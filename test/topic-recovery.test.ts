// Topic offsets, history and recovery through the built-in topic.subscribe message (issue 14's
// server side): real sockets, tokens signed by @fastify/jwt.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import Fastify, { type FastifyInstance } from 'fastify'
import jwt from '@fastify/jwt'
import wsManager, { normalizeOptions, type WsManagerOptions } from '../lib/index'
import { connectQueued, listen } from './helper'

const SECRET = 'topics-test-secret-0123456789-abcdefghijklmn'

interface Frame { type: string, topic?: string, epoch?: string, offset?: number, data?: unknown, recovered?: boolean, code?: string, id?: unknown }

async function build (t: TestContext, topics: WsManagerOptions['topics']): Promise<{ app: FastifyInstance, url: string, open: (user: string) => Promise<{ ask: (m: object) => Promise<Frame>, next: () => Promise<Frame>, close: () => void }> }> {
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(jwt, { secret: SECRET })
  await app.register(wsManager, { messageRateLimit: false, topics })
  app.get('/ws', { websocket: true, config: { wsManager: { messages: {} } } }, () => {})
  const url = await listen(app) + '/ws'
  const open = async (user: string): Promise<{ ask: (m: object) => Promise<Frame>, next: () => Promise<Frame>, close: () => void }> => {
    const { ws, next } = await connectQueued(t, url, { headers: { authorization: `Bearer ${app.jwt.sign({ sub: user })}` } })
    const nextFrame = async (): Promise<Frame> => JSON.parse(await next()) as Frame
    return {
      next: nextFrame,
      ask: async (m) => {
        ws.send(JSON.stringify(m))
        return nextFrame()
      },
      close: () => ws.close()
    }
  }
  return { app, url, open }
}

const everyone = { authorize: () => true, history: { size: 200, ttl: 60_000 } }

test('a subscriber gets each publication with its topic, epoch and offset', async (t) => {
  const { app, open } = await build(t, everyone)
  const c = await open('ann')
  const subscribed = await c.ask({ type: 'topic.subscribe', id: 's1', topic: 'news' })
  assert.deepEqual({ ...subscribed, epoch: typeof subscribed.epoch }, { type: 'topic.subscribed', id: 's1', topic: 'news', epoch: 'string', offset: 0, recovered: true })
  for (const n of [1, 2, 3]) await app.wsManager.publish('news', { n })
  for (const n of [1, 2, 3]) assert.deepEqual(await c.next(), { type: 'topic.message', topic: 'news', epoch: subscribed.epoch, offset: n, data: { n } })
  assert.deepEqual(await c.ask({ type: 'topic.unsubscribe', id: 'u1', topic: 'news' }), { type: 'topic.unsubscribed', topic: 'news', id: 'u1' })
  assert.equal(await app.wsManager.publish('news', 'after'), 0)
})

test('a subscriber away while 100 messages are published gets every one once, in order, then the live ones', async (t) => {
  const { app, open } = await build(t, everyone)
  const first = await open('bo')
  const sub = await first.ask({ type: 'topic.subscribe', topic: 'feed' })
  await app.wsManager.publish('feed', 'before')
  const seen = await first.next()
  first.close()
  for (let i = 1; i <= 100; i++) await app.wsManager.publish('feed', i)
  const again = await open('bo')
  const answer = await again.ask({ type: 'topic.subscribe', topic: 'feed', since: { offset: seen.offset, epoch: sub.epoch } })
  assert.deepEqual([answer.recovered, answer.offset], [true, 101])
  for (let i = 1; i <= 100; i++) {
    const frame = await again.next()
    assert.deepEqual([frame.offset, frame.data], [i + 1, i])
  }
  await app.wsManager.publish('feed', 'live')
  const live = await again.next()
  assert.deepEqual([live.offset, live.data], [102, 'live'])
})

test('publications racing a resubscription are neither lost nor doubled', async (t) => {
  const { app, open } = await build(t, everyone)
  const first = await open('cy')
  const sub = await first.ask({ type: 'topic.subscribe', topic: 'race' })
  first.close()
  let published = 0
  const timer = setInterval(() => { app.wsManager.publish('race', ++published).catch(() => {}) }, 1)
  t.after(() => clearInterval(timer))
  await new Promise((resolve) => setTimeout(resolve, 50))
  const again = await open('cy')
  const answer = await again.ask({ type: 'topic.subscribe', topic: 'race', since: { offset: 0, epoch: sub.epoch } })
  assert.equal(answer.recovered, true)
  await new Promise((resolve) => setTimeout(resolve, 50))
  clearInterval(timer)
  const last = published
  let expected = 1
  while (expected <= last) {
    const frame = await again.next()
    assert.equal(frame.offset, expected, 'offsets follow one another')
    expected++
  }
})

test('history too short, another epoch or an offset from the future: recovered false and no replay', async (t) => {
  const { app, open } = await build(t, { authorize: () => true, history: { size: 10, ttl: 60_000 } })
  const c = await open('dee')
  const sub = await c.ask({ type: 'topic.subscribe', topic: 'short' })
  c.close()
  for (let i = 1; i <= 50; i++) await app.wsManager.publish('short', i)
  // Each on a connection of its own: a connection already subscribed gets no replay.
  for (const since of [{ offset: 0, epoch: sub.epoch }, { offset: 45, epoch: 'not-the-epoch' }, { offset: 99, epoch: sub.epoch }]) {
    const other = await open('dee')
    const answer = await other.ask({ type: 'topic.subscribe', topic: 'short', since })
    assert.deepEqual([answer.type, answer.recovered, answer.offset], ['topic.subscribed', false, 50], JSON.stringify(since))
    other.close()
  }
  // Within the history it is recovered.
  const again = await open('dee')
  const held = await again.ask({ type: 'topic.subscribe', topic: 'short', since: { offset: 45, epoch: sub.epoch } })
  assert.equal(held.recovered, true)
  for (let i = 46; i <= 50; i++) assert.equal((await again.next()).offset, i)
})

test('topic.subscribe asks authorize; bad names and refusals are error replies; publish takes JSON values', async (t) => {
  const { app, open } = await build(t, {
    authorize: (connection, topic) => {
      if (topic === 'boom') throw new Error('authorize failed')
      return topic.startsWith(`user:${connection.userId ?? ''}:`) || topic === 'public'
    }
  })
  const c = await open('eve')
  for (const topic of ['user:mallory:inbox', 'boom']) {
    const refused = await c.ask({ type: 'topic.subscribe', id: topic, topic })
    assert.deepEqual([refused.type, refused.code, refused.id], ['error', 'TOPIC_FORBIDDEN', topic])
  }
  const bad = await c.ask({ type: 'topic.subscribe', id: 'b', topic: 'a\nb' })
  assert.deepEqual([bad.code, bad.id], ['INVALID_MESSAGE', 'b'])
  const ok = await c.ask({ type: 'topic.subscribe', topic: 'user:eve:inbox' })
  assert.equal(ok.type, 'topic.subscribed')
  assert.equal(await app.wsManager.publish('user:mallory:inbox', 'secret'), 0)
  await assert.rejects(app.wsManager.publish('public', Buffer.from('raw')), { code: 'FST_WSM_ARGUMENT_INVALID' })
})

test('the topics option: authorize required, history bounds checked', () => {
  assert.throws(() => normalizeOptions({ topics: {} as never }), { code: 'FST_WSM_OPTION_INVALID' })
  assert.throws(() => normalizeOptions({ topics: { authorize: () => true, history: { size: 0 } } }), { code: 'FST_WSM_OPTION_INVALID' })
  assert.deepEqual(normalizeOptions({ topics: { authorize: () => true, history: {} } }).topics && { ...normalizeOptions({ topics: { authorize: () => true, history: {} } }).topics, authorize: null },
    { history: { size: 100, ttl: 300_000 }, authorize: null })
})
