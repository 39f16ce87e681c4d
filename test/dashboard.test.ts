import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { execFile } from 'node:child_process'
import { request as httpRequest } from 'node:http'
import { join } from 'node:path'
import Fastify, { type FastifyInstance, type FastifyPluginAsync } from 'fastify'
import jwt from '@fastify/jwt'
import WebSocket from 'ws'
import { chromium, type Browser, type Page } from 'playwright-core'
import type { ClusterApi, WsManager, WsManagerStats } from '../lib/manager'
import { DashboardSampler, DASHBOARD_TABLE_ROWS, type DashboardSample } from '../lib/dashboard-sampler'
import { build, closed, connect, listen, waitFor } from './helper'

const CHROMIUM = '/usr/bin/chromium'
const SECRET = 'dashboard-test-secret-0123456789-abcdefghij'
const OUTPUT = join(__dirname, 'output')
const XSS_USER = '<img src=x onerror="globalThis.pwned=1">'

interface Started { app: FastifyInstance, ws: string, http: string, token: (sub: string) => string }

// A real app: @fastify/jwt, the dashboard for the user 'operator' only, and an echo route.
async function start (t: TestContext): Promise<Started> {
  const app = await build(t, {
    upgradeRateLimit: false,
    heartbeat: { pingInterval: 300, pongTimeout: 250, maxMissedPongs: 3 },
    dashboard: { authorize: (request) => (request.user as { sub?: string } | undefined)?.sub === 'operator' }
  }, {
    before: async (app) => { await app.register(jwt, { secret: SECRET }) }
  })
  app.get('/chat', { websocket: true }, (socket) => {
    socket.on('message', (data) => socket.send(data))
  })
  const ws = await listen(app)
  return { app, ws, http: ws.replace('ws:', 'http:'), token: (sub) => app.jwt.sign({ sub }) }
}

/** A raw GET, so that the path reaches the server exactly as written (no URL normalization). */
function rawGet (base: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number, headers: Record<string, unknown>, body: string }> {
  const url = new URL(base)
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: url.hostname, port: url.port, path, headers }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }))
    })
    req.on('error', reject)
    req.end()
  })
}

/** The status a refused upgrade was answered with. */
function refusedWith (url: string, options: WebSocket.ClientOptions & { protocols?: string[] } = {}): Promise<number> {
  const { protocols, ...rest } = options
  const ws = new WebSocket(url, protocols, rest)
  return new Promise((resolve, reject) => {
    ws.once('open', () => {
      ws.terminate()
      reject(new Error('the upgrade was accepted'))
    })
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0)
      ws.terminate()
    })
    ws.once('error', () => {})
  })
}

/** A dashboard viewer over a plain ws client, recording every sample. */
async function viewer (t: TestContext, s: Started): Promise<{ ws: WebSocket, samples: DashboardSample[], next: (predicate?: (sample: DashboardSample) => boolean, ms?: number) => Promise<DashboardSample> }> {
  const ws = await connect(t, `${s.ws}/ws/dashboard/live`, { protocols: ['wsm-dashboard', `bearer.${s.token('operator')}`] })
  const samples: DashboardSample[] = []
  ws.on('message', (data) => samples.push(JSON.parse(data.toString()) as DashboardSample))
  async function next (predicate: (sample: DashboardSample) => boolean = () => true, ms = 5000): Promise<DashboardSample> {
    const from = samples.length
    let found: DashboardSample | undefined
    await waitFor(() => {
      found = samples.slice(from).find(predicate)
      return found !== undefined
    }, ms, 'a matching sample')
    return found as DashboardSample
  }
  return { ws, samples, next }
}

test('the page and its socket are gated: 401 without a token, 403 for a user authorize refuses', async (t) => {
  const s = await start(t)
  const page = await rawGet(s.http, '/ws/dashboard')
  assert.equal(page.status, 401)
  assert.equal(JSON.parse(page.body).statusCode, 401)
  assert.equal((await rawGet(s.http, `/ws/dashboard?access_token=${s.token('someone')}`)).status, 403)
  assert.equal((await rawGet(s.http, '/ws/dashboard', { authorization: `Bearer ${s.token('someone')}` })).status, 403)
  assert.equal((await rawGet(s.http, '/ws/dashboard?access_token=not-a-jwt')).status, 401)

  const ok = await rawGet(s.http, `/ws/dashboard?access_token=${s.token('operator')}`)
  assert.equal(ok.status, 200)
  assert.equal(ok.headers['content-type'], 'text/html; charset=utf-8')
  const csp = String(ok.headers['content-security-policy'])
  assert.match(csp, /script-src 'self'(;|$)/)
  assert.match(csp, /default-src 'none'/)
  assert.match(csp, /frame-ancestors 'none'/)
  assert.equal(ok.headers['x-content-type-options'], 'nosniff')
  assert.equal(ok.headers['cache-control'], 'no-store')
  assert.equal(ok.headers['referrer-policy'], 'no-referrer')
  assert.ok(ok.body.includes('<script src="/ws/dashboard/assets/dashboard.js" defer></script>'))
  assert.ok(!/<script>|<script [^>]*>[^<]/.test(ok.body), 'no inline script')
  assert.ok(!ok.body.includes('{{'), 'every placeholder filled')
  assert.ok(!ok.body.includes(s.token('operator')), 'the token is not echoed into the page')
  assert.equal((await rawGet(s.http, '/ws/dashboard', { authorization: `Bearer ${s.token('operator')}` })).status, 200)

  const live = `${s.ws}/ws/dashboard/live`
  assert.equal(await refusedWith(live), 401)
  assert.equal(await refusedWith(live, { protocols: ['wsm-dashboard', `bearer.${s.token('someone')}`] }), 403)
  // A page of another site cannot open it with the operator's credentials.
  assert.equal(await refusedWith(live, { protocols: ['wsm-dashboard', `bearer.${s.token('operator')}`], origin: 'http://evil.example' }), 403)
  assert.equal(await refusedWith(live, { protocols: ['wsm-dashboard', `bearer.${s.token('operator')}`], origin: 'null' }), 403)
  const origin = new URL(s.http).origin
  const ws = await connect(t, live, { protocols: ['wsm-dashboard', `bearer.${s.token('operator')}`], origin })
  assert.equal(ws.protocol, 'wsm-dashboard', 'the token entry is never selected')
  ws.terminate()
})

test('assets: the allow-listed files only, with their types; traversal and other names get 404', async (t) => {
  const s = await start(t)
  const expected: Record<string, [string, string]> = {
    'dashboard.js': ['text/javascript; charset=utf-8', readFileSync(join(__dirname, '../lib/dashboard-assets/dashboard.js'), 'utf8')],
    'dashboard.css': ['text/css; charset=utf-8', readFileSync(join(__dirname, '../lib/dashboard-assets/dashboard.css'), 'utf8')],
    'uPlot.iife.min.js': ['text/javascript; charset=utf-8', readFileSync(require.resolve('uplot/dist/uPlot.iife.min.js'), 'utf8')],
    'uPlot.min.css': ['text/css; charset=utf-8', readFileSync(require.resolve('uplot/dist/uPlot.min.css'), 'utf8')]
  }
  for (const [name, [type, body]] of Object.entries(expected)) {
    const res = await rawGet(s.http, `/ws/dashboard/assets/${name}`)
    assert.equal(res.status, 200, name)
    assert.equal(res.headers['content-type'], type, name)
    assert.equal(res.headers['x-content-type-options'], 'nosniff', name)
    assert.equal(res.body, body, name)
    const again = await rawGet(s.http, `/ws/dashboard/assets/${name}`, { 'if-none-match': String(res.headers.etag) })
    assert.equal(again.status, 304, name)
  }
  for (const path of [
    '/ws/dashboard/assets/../package.json', '/ws/dashboard/assets/..%2Fpackage.json', '/ws/dashboard/assets/%2e%2e%2fpackage.json',
    '/ws/dashboard/assets/..%2F..%2F..%2Fpackage.json', '/ws/dashboard/assets/%2e%2e%2f%2e%2e%2fpackage.json', '/ws/dashboard/assets/..%5Cpackage.json',
    '/ws/dashboard/assets/index.html', '/ws/dashboard/assets/dashboard.ts', '/ws/dashboard/assets/uPlot.cjs.js', '/ws/dashboard/assets/',
    '/ws/dashboard/assets/%00dashboard.js', '/ws/dashboard/assets/dashboard.js%00', '/ws/dashboard/assets/constructor', '/ws/dashboard/assets/__proto__'
  ]) {
    const res = await rawGet(s.http, path)
    assert.equal(res.status, 404, path)
    assert.ok(!res.body.includes('"name"'), `${path} leaked a file`)
  }
})

// The page's CSP forbids eval, so Playwright's string predicates cannot run there: locators poll instead.
async function rowCount (page: Page, n: number): Promise<void> {
  const deadline = Date.now() + 5000
  while (await page.locator('#connections tbody tr').count() !== n) {
    if (Date.now() > deadline) throw new Error(`the table never had ${n} rows`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

const ROOT = join(__dirname, '..')

test('the built package ships the page and its files and serves them from dist/', {
  skip: existsSync(join(ROOT, 'dist', 'dashboard.js')) ? false : 'dist/ is not built (npm run build)'
}, async (t) => {
  const packed = await new Promise<string>((resolve, reject) => {
    execFile('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT }, (err, stdout) => err === null ? resolve(stdout) : reject(err))
  })
  const files = (JSON.parse(packed) as Array<{ files: Array<{ path: string }> }>)[0].files.map((f) => f.path)
  for (const name of ['index.html', 'dashboard.js', 'dashboard.css']) assert.ok(files.includes(`dist/dashboard-assets/${name}`), name)
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }
  assert.ok(pkg.dependencies.uplot !== undefined, 'uplot is a dependency, not a dev dependency')

  const built = require(join(ROOT, 'dist', 'index.js')) as FastifyPluginAsync<{ dashboard: { authorize: () => boolean } }>
  const app = Fastify()
  t.after(() => app.close())
  await app.register(jwt, { secret: SECRET })
  await app.register(built, { dashboard: { authorize: () => true } })
  const http = (await listen(app)).replace('ws:', 'http:')
  const token = app.jwt.sign({ sub: 'operator' })
  assert.equal((await rawGet(http, `/ws/dashboard?access_token=${token}`)).status, 200)
  for (const name of ['dashboard.js', 'dashboard.css', 'uPlot.iife.min.js', 'uPlot.min.css']) {
    assert.equal((await rawGet(http, `/ws/dashboard/assets/${name}`)).status, 200, name)
  }
})

test('the live socket: samples follow connections, messages, closes and refusals; one sampler for every viewer', async (t) => {
  const s = await start(t)
  let statsCalls = 0
  const stats = s.app.wsManager.stats.bind(s.app.wsManager)
  s.app.wsManager.stats = () => {
    statsCalls++
    return stats()
  }
  const a = await viewer(t, s)
  const first = await a.next()
  assert.equal(first.type, 'sample')
  assert.equal(first.active, 0)
  assert.deepEqual(first.connections, { rows: [], more: 0 }, 'the dashboard\'s own socket is left out')
  assert.equal(first.viewers, 1)
  assert.equal(first.cluster, null)

  const c1 = await connect(t, `${s.ws}/chat`, { headers: { authorization: `Bearer ${s.token('alice')}` } })
  const c2 = await connect(t, `${s.ws}/chat`, { headers: { authorization: `Bearer ${s.token(XSS_USER)}` } })
  for (let i = 0; i < 20; i++) c1.send('x')
  const busy = await a.next((x) => x.active === 2 && x.routes['/chat'].messagesIn > 0)
  assert.equal(busy.routes['/chat'].active, 2)
  assert.ok(busy.routes['/chat'].messagesOut > 0)
  assert.deepEqual(busy.connections.rows.map((r) => r.user).sort(), [XSS_USER, 'alice'].sort())
  assert.ok(busy.connections.rows.every((r) => r.route === '/chat' && r.age >= 0 && r.buffered === 0))
  assert.equal(busy.routes['/ws/dashboard/live'], undefined)
  const withLatency = await a.next((x) => x.latency.count === 2)
  assert.ok(withLatency.latency.p50 !== null && withLatency.latency.p99 !== null && withLatency.latency.p50 <= withLatency.latency.p99)

  // A second viewer shares the sampler: the same samples, no second timer.
  const b = await viewer(t, s)
  const shared = await b.next((x) => x.viewers === 2)
  await waitFor(() => a.samples.some((x) => x.time === shared.time), 5000, 'the same sample for both viewers')

  // A close and a refusal show up once, as deltas (perhaps in different samples).
  const mark = a.samples.length
  const sum = (pick: (x: DashboardSample) => number | undefined): number => a.samples.slice(mark).reduce((n, x) => n + (pick(x) ?? 0), 0)
  c2.close(4001, 'bye')
  assert.equal(await refusedWith(`${s.ws}/chat`), 401)
  await waitFor(() => sum((x) => x.closes.other) === 1 && sum((x) => x.refused['401']) === 1 && a.samples[a.samples.length - 1].active === 1,
    5000, 'the close and the refusal')
  const later = await a.next()
  assert.equal(sum((x) => x.closes.other), 1)
  assert.equal(sum((x) => x.refused['401']), 1)
  assert.deepEqual(later.closes, {})
  assert.deepEqual(later.drops, { dropped: 0, slowConsumerCloses: 0 })

  // The timer runs once a second for both viewers together, and stops with the last one.
  const calls = statsCalls
  await a.next()
  await a.next()
  assert.ok(statsCalls - calls <= 3, `${statsCalls - calls} samples in two intervals for two viewers`)
  a.ws.terminate()
  b.ws.terminate()
  await waitFor(() => s.app.wsManager.connections.size === 1, 5000, 'viewers gone')
  const idle = statsCalls
  await new Promise((resolve) => setTimeout(resolve, 1300))
  assert.equal(statsCalls, idle, 'no sample without a viewer')
  c1.terminate()
})

test('the disconnect command closes that connection with 1000; malformed and unknown commands are ignored', async (t) => {
  const s = await start(t)
  const v = await viewer(t, s)
  const client = await connect(t, `${s.ws}/chat`, { headers: { authorization: `Bearer ${s.token('alice')}` } })
  const sample = await v.next((x) => x.active === 1)
  const id = sample.connections.rows[0].id
  const ownId = s.app.wsManager.connections.byUser('operator')[0].id

  for (const junk of ['', 'not json', 'null', '42', '[]', '{"type":"disconnect"}', '{"type":"disconnect","connectionId":42}',
    '{"type":"disconnect","connectionId":"no-such-id"}', `{"type":"disconnect","connectionId":"${ownId}"}`, '{"type":"other","connectionId":"x"}',
    '{"__proto__":{"type":"disconnect"},"connectionId":"' + id + '"}']) {
    v.ws.send(junk)
  }
  v.ws.send(Buffer.from(JSON.stringify({ type: 'disconnect', connectionId: id })), { binary: true })
  await v.next()
  assert.equal(v.ws.readyState, WebSocket.OPEN, 'the viewer is still connected')
  assert.equal(client.readyState, WebSocket.OPEN, 'nothing was closed')

  const close = closed(client)
  const mark = v.samples.length
  v.ws.send(JSON.stringify({ type: 'disconnect', connectionId: id }))
  assert.deepEqual(await close, { code: 1000, reason: 'Disconnected by an operator' })
  await waitFor(() => v.samples.slice(mark).some((x) => x.closes['1000'] === 1) && v.samples[v.samples.length - 1].active === 0, 5000, 'the close in a sample')
})

test('the sampler: nearest-rank latency percentiles over open connections, at most 500 rows and a count of the rest', (t) => {
  const open = Array.from({ length: DASHBOARD_TABLE_ROWS + 20 }, (_, i) => ({
    id: `c${i}`, userId: `u${i}`, route: '/a', connectedAt: Date.now() - 1000, bufferedAmount: i, state: 'open', socket: { latency: i < 100 ? i + 1 : null }
  }))
  const others = [{ ...open[0], id: 'closing', state: 'closing' }, { ...open[0], id: 'viewer', route: '/dash/live', socket: { latency: 5000 } }]
  const fake = {
    connections: [...open, ...others],
    heartbeat: { getHeartbeatStats: (socket: { latency: number | null }) => ({ latency: socket.latency }) },
    cluster: null,
    stats: () => ({
      admission: { refused: {} },
      delivery: { dropped: 0, slowConsumerCloses: 0 },
      routes: { '/a': { active: open.length, closed: {}, messagesReceived: 0, messagesSent: 0 } }
    }) as unknown as WsManagerStats
  }
  const sampler = new DashboardSampler(fake as unknown as WsManager, { isOwnRoute: (route) => route === '/dash/live', log: { error: () => {} } as never })
  t.after(() => sampler.stop())
  let sample: DashboardSample | undefined
  sampler.add({ send: (text) => { sample = JSON.parse(text) as DashboardSample } })
  assert.ok(sample !== undefined, 'the first viewer gets a sample at once')
  assert.deepEqual(sample.latency, { p50: 50, p99: 99, count: 100 })
  assert.equal(sample.connections.rows.length, DASHBOARD_TABLE_ROWS)
  assert.equal(sample.connections.more, 20)
  assert.deepEqual(sample.connections.rows[1], { id: 'c1', user: 'u1', route: '/a', age: sample.connections.rows[1].age, latency: 2, buffered: 1 })
  assert.ok(sampler.running)
  sampler.stop()
  assert.ok(!sampler.running)
})

test('cluster nodes are read at most once per interval and a slow Redis never holds a sample', async (t) => {
  const s = await start(t)
  let calls = 0
  let answer: (nodes: unknown) => void = () => {}
  const nodes = [{ nodeId: 'n1', connections: 3, startedAt: Date.now() - 5000 }, { nodeId: 'n2', connections: 4, startedAt: Date.now() }]
  const fake: ClusterApi = {
    nodeId: 'n1',
    healthy: true,
    nodes: () => {
      calls++
      return new Promise((resolve) => { answer = resolve as (nodes: unknown) => void })
    },
    presence: async () => Object.assign([], { complete: true, unanswered: [] }),
    countByUser: async () => 0
  }
  Object.defineProperty(s.app.wsManager, 'cluster', { value: fake })
  const v = await viewer(t, s)
  const first = await v.next()
  assert.deepEqual(first.cluster, { nodeId: 'n1', healthy: true, complete: false, nodes: [] })
  await v.next()
  await v.next()
  assert.equal(calls, 1, 'one call in flight at a time')
  answer(Object.assign([...nodes], { complete: true, unanswered: [] }))
  const known = await v.next((x) => x.cluster?.complete === true)
  assert.deepEqual(known.cluster?.nodes, nodes)
  assert.ok(calls <= 3, `${calls} calls`)
})

test('Chromium: the page loads for the operator, follows connections, disconnects one, and shows hostile user ids as text', {
  skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed (apt-get install -y chromium); the dashboard test needs it`
}, async (t) => {
  const started = Date.now()
  const s = await start(t)
  const browser: Browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run']
  })
  t.after(() => browser.close())
  const page = await browser.newPage({ viewport: { width: 1400, height: 1300 } })

  // Refused in the browser too.
  assert.equal((await page.goto(`${s.http}/ws/dashboard`))?.status(), 401)
  assert.equal((await page.goto(`${s.http}/ws/dashboard?access_token=${s.token('someone')}`))?.status(), 403)

  const problems: string[] = []
  // The refused navigations above were JSON answers without an icon link: Chromium asks for
  // /favicon.ico for them, and a late 404 of that request is not the dashboard's.
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.location().url.endsWith('/favicon.ico')) problems.push(`${message.text()} (${message.location().url})`)
  })
  page.on('pageerror', (err) => problems.push(err.message))

  const loaded = await page.goto(`${s.http}/ws/dashboard?access_token=${s.token('operator')}`)
  assert.equal(loaded?.status(), 200)
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 10_000 })
  await page.waitForSelector('#active >> text="0"', { timeout: 5000 })
  assert.equal(s.app.wsManager.connections.byUser('operator')[0].socket.protocol, 'wsm-dashboard')

  const alice = await connect(t, `${s.ws}/chat`, { headers: { authorization: `Bearer ${s.token('alice')}` } })
  const bob = await connect(t, `${s.ws}/chat`, { headers: { authorization: `Bearer ${s.token('bob')}` } })
  const hostile = await connect(t, `${s.ws}/chat`, { headers: { authorization: `Bearer ${s.token(XSS_USER)}` } })
  for (let i = 0; i < 10; i++) alice.send('hello')
  await page.waitForSelector('#active >> text="3"', { timeout: 5000 })
  await rowCount(page, 3)
  const users = await page.$$eval('#connections tbody td.user', (cells) => cells.map((cell) => cell.textContent))
  assert.deepEqual(users.sort(), ['alice', 'bob', XSS_USER].sort())
  assert.equal(await page.$$eval('#connections img, #routes img', (imgs) => imgs.length), 0, 'the user id was not parsed as HTML')
  assert.equal(await page.evaluate(() => (globalThis as { pwned?: number }).pwned), undefined)
  assert.equal(await page.$$eval('.uplot', (plots) => plots.length), 6, 'six charts, no cluster chart')
  await page.locator('#latency', { hasText: 'ms' }).waitFor({ timeout: 5000 })

  // A client leaving is seen within a sample or two.
  bob.terminate()
  await page.waitForSelector('#active >> text="2"', { timeout: 5000 })

  // The disconnect button closes that connection, and the client sees why.
  const aliceId = s.app.wsManager.connections.byUser('alice')[0].id
  const aliceClosed = closed(alice)
  await page.click(`#connections tr[data-connection-id="${aliceId}"] button`)
  assert.deepEqual(await aliceClosed, { code: 1000, reason: 'Disconnected by an operator' })
  await page.waitForSelector('#active >> text="1"', { timeout: 5000 })
  await rowCount(page, 1)

  // The page reconnects after losing its socket (1 s backoff, doubling).
  await s.app.wsManager.connections.byUser('operator')[0].close(1012, 'restart')
  await page.waitForSelector('#status[data-state="disconnected"]', { timeout: 5000 })
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 5000 })
  await page.waitForSelector('#active >> text="1"', { timeout: 5000 })

  mkdirSync(OUTPUT, { recursive: true })
  await page.screenshot({ path: join(OUTPUT, 'dashboard.png'), fullPage: true })
  assert.deepEqual(problems, [], 'no script error or CSP violation on the page')
  hostile.terminate()
  t.diagnostic(`dashboard browser test took ${Date.now() - started} ms`)
})
