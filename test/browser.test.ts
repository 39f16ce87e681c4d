import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import { existsSync } from 'node:fs'
import type { FastifyInstance } from 'fastify'
import { chromium, type Browser, type Page } from 'playwright-core'
import { loadConfig } from '../lib/index'
import { buildServer } from '../examples/server'

const CHROMIUM = '/usr/bin/chromium'
const SECRET = 'browser-test-secret-0123456789-abcdefghij'

// What examples/public/index.html records, as seen from the test.
type DemoEvent =
  | { type: 'open', protocol: string }
  | { type: 'message', data: string }
  | { type: 'error' }
  | { type: 'close', code: number, reason: string }

interface DemoGlobal {
  demo?: { events: DemoEvent[], ws: { send: (data: string) => void, addEventListener: (type: string, listener: () => void) => void } }
  closedAt?: number
}

async function launch (t: TestContext): Promise<Browser> {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run']
  })
  t.after(() => browser.close())
  return browser
}

// The reference server, configured from an environment as `npm start` would be, on port 0.
async function startServer (t: TestContext): Promise<{ app: FastifyInstance, origin: string }> {
  const config = loadConfig({ WEBSOCKET_PORT: '0', JWT_SECRET: SECRET, LOG_LEVEL: 'silent', UPGRADE_RATE_LIMIT: 'off' })
  const { app } = await buildServer(config, { tickInterval: 0 })
  t.after(() => app.close())
  await app.listen({ port: config.port, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return { app, origin: `http://127.0.0.1:${address.port}` }
}

async function events (page: Page): Promise<DemoEvent[]> {
  return page.evaluate(() => (globalThis as unknown as DemoGlobal).demo?.events ?? [])
}

/** Waits, with a deadline, until the page has recorded an event matching `expression` (a predicate over `e`). */
async function waitForEvent (page: Page, predicate: string, timeout: number): Promise<void> {
  await page.waitForFunction(`(globalThis.demo?.events ?? []).some((e) => ${predicate})`, undefined, { timeout, polling: 20 })
}

function forgedToken (sub: string): string {
  const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  const signed = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, iat: Math.floor(Date.now() / 1000) })}`
  return `${signed}.${createHmac('sha256', 'not-the-server-secret-not-the-server-secret').update(signed).digest('base64url')}`
}

test('Chromium connects with the subprotocol token, exchanges a message, sees the expiry close, and fails with a bad token', {
  skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed (apt-get install -y chromium); the browser test needs it`
}, async (t) => {
  const started = Date.now()
  const { app, origin } = await startServer(t)
  const browser = await launch(t)

  // Six to seven seconds of life: time to load the page and talk on a loaded machine (tests run
  // two at a time), and exp has a one-second resolution.
  const exp = Math.ceil(Date.now() / 1000) + 6
  const token = app.jwt.sign({ sub: 'browser-user', exp })
  const page = await browser.newPage()
  await page.goto(`${origin}/#token=${token}`)
  await waitForEvent(page, "e.type === 'open'", 10_000)
  // The close time is taken in the page itself, on the same clock as exp.
  await page.evaluate(() => {
    const g = globalThis as unknown as DemoGlobal
    g.demo?.ws.addEventListener('close', () => { g.closedAt = Date.now() })
  })
  assert.equal(await page.evaluate(() => typeof (globalThis as unknown as { demo?: { client?: { request?: unknown } } }).demo?.client?.request), 'function', 'the page runs on fastify-ws-manager/client')
  const open = (await events(page)).find((e) => e.type === 'open')
  assert.deepEqual(open, { type: 'open', protocol: 'chat' }, 'the browser accepted the handshake with the chat protocol')

  const connection = app.wsManager.connections.byUser('browser-user')
  assert.equal(connection.length, 1)
  assert.equal(connection[0].socket.protocol, 'chat')
  assert.equal((connection[0].user as { exp: number }).exp, exp)

  await waitForEvent(page, "e.type === 'message' && JSON.parse(e.data).type === 'welcome'", 5000)
  await page.evaluate(() => {
    (globalThis as unknown as DemoGlobal).demo?.ws.send(JSON.stringify({ type: 'chat', text: 'hello from chromium' }))
  })
  await waitForEvent(page, "e.type === 'message' && JSON.parse(e.data).type === 'sent'", 5000)
  const messages = (await events(page)).flatMap((e) => e.type === 'message' ? [JSON.parse(e.data) as Record<string, unknown>] : [])
  assert.deepEqual(messages.find((m) => m.type === 'welcome')?.userId, 'browser-user')
  assert.deepEqual(messages.find((m) => m.type === 'chat'), { type: 'chat', from: 'browser-user', text: 'hello from chromium' })
  assert.deepEqual(messages.find((m) => m.type === 'sent'), { type: 'sent', delivered: 1 })

  await waitForEvent(page, "e.type === 'close'", Math.max(0, exp * 1000 - Date.now()) + 3000)
  const close = (await events(page)).find((e) => e.type === 'close')
  assert.deepEqual(close, { type: 'close', code: 1008, reason: 'Token expired' })
  const closedAt = await page.evaluate(() => (globalThis as unknown as DemoGlobal).closedAt ?? 0)
  assert.ok(closedAt >= exp * 1000, `closed ${exp * 1000 - closedAt} ms before exp`)
  assert.ok(closedAt <= exp * 1000 + 750, `closed ${closedAt - exp * 1000} ms after exp`)
  assert.equal(app.wsManager.stats().connections.expiredClosed, 1)

  // A token signed with another secret: 401 before the upgrade, so the page sees error and 1006, never open.
  const refusedBefore = app.wsManager.stats().admission.refused['401'] ?? 0
  const bad = await browser.newPage()
  await bad.goto(`${origin}/#token=${forgedToken('browser-user')}`)
  await waitForEvent(bad, "e.type === 'close'", 10_000)
  const badEvents = await events(bad)
  assert.ok(!badEvents.some((e) => e.type === 'open'), 'the page never opened')
  assert.ok(badEvents.some((e) => e.type === 'error'))
  assert.deepEqual(badEvents.find((e) => e.type === 'close'), { type: 'close', code: 1006, reason: '' })
  // At least this refusal; the first page's client may be retrying its expired token meanwhile.
  assert.ok((app.wsManager.stats().admission.refused['401'] ?? 0) >= refusedBefore + 1)
  assert.equal(app.wsManager.connections.size, 0)

  t.diagnostic(`browser test took ${Date.now() - started} ms`)
})
