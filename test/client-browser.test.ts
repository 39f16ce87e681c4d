// The browser bundle (dist/client/browser.js, npm run build first) in Chromium: served as is to
// a `<script type="module">`, it connects with a token, answers a request, survives a restart
// of the server on the same port, and recovers its topic: the servers run in cluster mode, so
// the topic's history is in Redis, and what another node published while the page's server was
// down reaches the page, once and in order, before the live messages.
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import Fastify, { type FastifyInstance } from 'fastify'
import jwt from '@fastify/jwt'
import { chromium, type Page } from 'playwright-core'
import wsManager, { type WsManagerOptions } from '../lib/index'
import { uniquePrefix } from './fixtures/cluster'

const CHROMIUM = '/usr/bin/chromium'
const BUNDLE = join(__dirname, '..', 'dist', 'client', 'browser.js')
const SECRET = 'client-browser-secret-0123456789-abcdefghij'

const PAGE = `<!doctype html><meta charset="utf-8"><script type="module">
import { createClient } from '/client.js'
const log = globalThis.log = []
const token = new URLSearchParams(location.hash.slice(1)).get('token')
const client = globalThis.client = createClient({ url: 'ws://' + location.host + '/ws', getToken: () => token, protocols: ['app.v1'], reconnect: { base: 100, max: 400 } })
client.on('open', (e) => log.push({ open: e.protocol }))
client.on('close', (e) => log.push({ close: e.code, willReconnect: e.willReconnect }))
client.on('subscribed', (e) => log.push({ subscribed: e.topic, resumed: e.resumed, recovered: e.recovered }))
client.subscribe('room', (data) => log.push({ data }))
client.connect().then(() => client.request('echo', { text: 'hi' })).then((reply) => log.push({ reply: reply.text }))
</script>`

const PREFIX = uniquePrefix()

function options (nodeId: string): WsManagerOptions {
  return { topics: { authorize: () => true, history: { size: 100, ttl: 60_000 } }, cluster: { redis: 'redis://127.0.0.1:6379', prefix: PREFIX, nodeId } }
}

async function start (t: TestContext, port = 0): Promise<{ app: FastifyInstance, port: number }> {
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(jwt, { secret: SECRET })
  await app.register(wsManager, options('web'))
  app.get('/', (_request, reply) => { reply.type('text/html').send(PAGE) })
  app.get('/client.js', (_request, reply) => { reply.type('text/javascript').send(readFileSync(BUNDLE, 'utf8')) })
  app.get('/ws', { websocket: true, config: { wsManager: { messages: { echo: { handler: (m: Record<string, unknown>) => ({ ...m, type: 'echoed' }) } } } } }, () => {})
  await app.listen({ port, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return { app, port: address.port }
}

async function until (page: Page, predicate: string, ms = 5000): Promise<void> {
  await page.waitForFunction(predicate, undefined, { timeout: ms })
}

test('the browser bundle in Chromium: token, request, a server restart, and the topic recovered', {
  skip: !existsSync(CHROMIUM) ? `${CHROMIUM} is not installed` : !existsSync(BUNDLE) ? 'run npm run build first' : false
}, async (t) => {
  const first = await start(t)
  // Another node of the cluster publishes, also while the page's server is down.
  const publisher = Fastify({ logger: false })
  t.after(() => publisher.close())
  await publisher.register(jwt, { secret: SECRET })
  await publisher.register(wsManager, options('pub'))
  await publisher.ready()
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--no-first-run'] })
  t.after(() => browser.close())
  const page = await browser.newPage()
  const token = first.app.jwt.sign({ sub: 'ann' })
  await page.goto(`http://127.0.0.1:${first.port}/#token=${token}`)
  await until(page, 'globalThis.log?.some((e) => e.reply === "hi") && globalThis.log.some((e) => e.subscribed)')
  await publisher.wsManager.publish('room', 'before')
  await until(page, 'globalThis.log.some((e) => e.data === "before")')

  await first.app.close()
  for (const n of [1, 2, 3]) await publisher.wsManager.publish('room', `missed-${n}`)
  await start(t, first.port)
  await until(page, 'globalThis.log.filter((e) => e.subscribed).length === 2')
  await publisher.wsManager.publish('room', 'after')
  await until(page, 'globalThis.log.some((e) => e.data === "after")')
  const log = await page.evaluate(() => (globalThis as unknown as { log: Array<Record<string, unknown>> }).log)
  const opens = log.filter((e) => 'open' in e)
  assert.equal(opens.length, 2)
  assert.equal(opens[0].open, 'app.v1')
  const closes = log.filter((e) => 'close' in e)
  assert.equal(closes[0].willReconnect, true)
  assert.deepEqual(log.filter((e) => 'subscribed' in e).map((e) => [e.resumed, e.recovered]), [[false, true], [true, true]])
  assert.deepEqual(log.filter((e) => 'data' in e).map((e) => e.data), ['before', 'missed-1', 'missed-2', 'missed-3', 'after'])
  await page.evaluate(() => (globalThis as unknown as { client: { close: () => Promise<void> } }).client.close())
})
