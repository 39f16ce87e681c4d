import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify, { type FastifyInstance } from 'fastify'
import jwt from '@fastify/jwt'
import { chromium, type Page } from 'playwright-core'
import WebSocket from 'ws'
import wsManager, { loadConfig } from '../lib/index'
import { registerTerminal } from '../examples/terminal'
import { startSshd } from './fixtures/sshd'
import { logCapture } from './helper'

const CHROMIUM = '/usr/bin/chromium'
const SECRET = 'terminal-test-secret-0123456789-abcdefghij'

type Env = Record<string, string | undefined>

// What examples/public/terminal.html records: the server's control messages and the close.
type TerminalEvent = { type: 'exit', code: number | null, signal: string | null } | { type: 'close', code: number, reason: string } | { type: string }

interface TerminalGlobal {
  terminalDemo?: {
    term: { cols: number, rows: number, buffer: { active: { length: number, getLine: (i: number) => { translateToString: (trim: boolean) => string } | undefined } } }
    events: TerminalEvent[]
  }
}

/** The reference server's stack (JWT, the plugin, the terminal) with `env`, on port 0. */
async function startApp (t: TestContext, env: Env, stream?: NodeJS.WritableStream): Promise<{ app: FastifyInstance, origin: string }> {
  const config = loadConfig({ WEBSOCKET_PORT: '0', JWT_SECRET: SECRET, LOG_LEVEL: 'silent', UPGRADE_RATE_LIMIT: 'off' })
  const app = Fastify({ logger: stream === undefined ? false : { level: 'debug', stream } })
  t.after(() => app.close())
  await app.register(jwt, { secret: SECRET, verify: { algorithms: ['HS256'] } })
  await app.register(wsManager, config.options)
  await registerTerminal(app, env)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return { app, origin: `http://127.0.0.1:${address.port}` }
}

function tempDir (t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'wsm-terminal-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** The terminal's buffer (scrollback and screen), one string per row, right-trimmed. */
async function screen (page: Page): Promise<string[]> {
  return page.evaluate(() => {
    const term = (globalThis as unknown as TerminalGlobal).terminalDemo?.term
    if (term === undefined) return []
    const buffer = term.buffer.active
    const lines: string[] = []
    for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i)?.translateToString(true) ?? '')
    return lines
  })
}

/** Waits, with a deadline, until some row of the buffer matches `re` (and says what it saw if not). */
async function waitForLine (page: Page, re: RegExp, timeout = 10_000): Promise<void> {
  try {
    await page.waitForFunction(([source, flags]) => {
      const term = (globalThis as unknown as TerminalGlobal).terminalDemo?.term
      if (term === undefined) return false
      const buffer = term.buffer.active
      const re = new RegExp(source, flags)
      for (let i = 0; i < buffer.length; i++) if (re.test(buffer.getLine(i)?.translateToString(true) ?? '')) return true
      return false
    }, [re.source, re.flags] as const, { timeout, polling: 20 })
  } catch (err) {
    throw new Error(`no line matched ${String(re)} within ${timeout} ms; the terminal shows:\n${(await screen(page)).filter((l) => l !== '').join('\n')}`, { cause: err })
  }
}

async function size (page: Page): Promise<{ cols: number, rows: number }> {
  return page.evaluate(() => {
    const term = (globalThis as unknown as TerminalGlobal).terminalDemo?.term
    return { cols: term?.cols ?? 0, rows: term?.rows ?? 0 }
  })
}

/** Counts the rows that are exactly `text`: a command's output, not the line that typed it. */
async function countLines (page: Page, text: string): Promise<number> {
  return (await screen(page)).filter((line) => line === text).length
}

/** Types a command into the terminal as a user would, and waits for the output line `expected`. */
async function run (page: Page, command: string, expected: string): Promise<void> {
  const before = await countLines(page, expected)
  await page.keyboard.type(command)
  await page.keyboard.press('Enter')
  await page.waitForFunction(([text, n]) => {
    const term = (globalThis as unknown as TerminalGlobal).terminalDemo?.term
    if (term === undefined) return false
    let count = 0
    for (let i = 0; i < term.buffer.active.length; i++) if (term.buffer.active.getLine(i)?.translateToString(true) === text) count++
    return count > n
  }, [expected, before] as const, { timeout: 10_000, polling: 20 }).catch(async (err: unknown) => {
    throw new Error(`"${command}" did not print "${expected}"; the terminal shows:\n${(await screen(page)).filter((l) => l !== '').join('\n')}`, { cause: err })
  })
}

test('Chromium runs a shell on a real sshd through /terminal: keystrokes, output, resize, exit', {
  skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed (apt-get install -y chromium); the browser test needs it`
}, async (t) => {
  const started = Date.now()
  const sshd = await startSshd()
  t.after(() => sshd.stop())
  const dir = tempDir(t)
  writeFileSync(join(dir, 'id_ed25519'), sshd.privateKey, { mode: 0o600 })
  writeFileSync(join(dir, 'known_hosts'), sshd.knownHosts)
  const logs = logCapture()
  const { app, origin } = await startApp(t, {
    SSH_HOST: sshd.host,
    SSH_PORT: String(sshd.port),
    SSH_USER: sshd.username,
    SSH_KEY_FILE: join(dir, 'id_ed25519'),
    SSH_KNOWN_HOSTS: join(dir, 'known_hosts')
  }, logs.stream)
  // The server's side of a failure, at debug level, only when the test did not get to its end.
  let finished = false
  t.after(() => { if (!finished) process.stderr.write(logs.text()) })

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run']
  })
  t.after(() => browser.close())
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } })
  const pageErrors: string[] = []
  page.on('pageerror', (err) => pageErrors.push(err.message))
  await page.goto(`${origin}/terminal#token=${app.jwt.sign({ sub: 'terminal-user' })}`)
  assert.equal(await page.locator('body').getAttribute('data-terminal'), 'ready')
  // A prompt: the shell is up and its output reached the terminal.
  await waitForLine(page, /[#$] ?$/)
  const connections = app.wsManager.connections.byUser('terminal-user')
  assert.equal(connections.length, 1)
  assert.equal(connections[0].socket.protocol, 'terminal', 'the server selected the page\'s protocol, not the token entry')
  await page.locator('.xterm-helper-textarea').focus()

  await run(page, 'echo $((6*7))', '42')

  // The pty has the page's size, not the 80x24 it started with.
  const first = await size(page)
  assert.notDeepEqual(first, { cols: 80, rows: 24 }, 'a viewport that fits 80x24 exactly would prove nothing')
  await run(page, 'stty size', `${first.rows} ${first.cols}`)
  // And follows the window.
  await page.setViewportSize({ width: 640, height: 400 })
  await page.waitForFunction(([cols, rows]) => {
    const term = (globalThis as unknown as TerminalGlobal).terminalDemo?.term
    return term !== undefined && (term.cols !== cols || term.rows !== rows)
  }, [first.cols, first.rows] as const, { timeout: 5000, polling: 20 })
  const second = await size(page)
  assert.ok(second.cols < first.cols && second.rows < first.rows, `smaller window, smaller terminal: ${JSON.stringify({ first, second })}`)
  await run(page, 'stty size', `${second.rows} ${second.cols}`)

  await page.keyboard.type('exit 7')
  await page.keyboard.press('Enter')
  await page.waitForFunction(() => ((globalThis as unknown as TerminalGlobal).terminalDemo?.events ?? []).some((e) => e.type === 'close'), undefined, { timeout: 10_000, polling: 20 })
  const events = await page.evaluate(() => (globalThis as unknown as TerminalGlobal).terminalDemo?.events ?? [])
  assert.deepEqual(events.filter((e) => e.type === 'exit' || e.type === 'close'), [
    { type: 'exit', code: 7, signal: null },
    { type: 'close', code: 1000, reason: 'exit 7' }
  ])
  await waitForLine(page, /^\[shell exited: code 7\]$/, 2000)
  await waitForLine(page, /^\[connection closed: 1000 exit 7\]$/, 2000)
  // The server saw the close too (the page may hear of it first).
  const deadline = Date.now() + 2000
  while (app.wsManager.connections.size > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
  assert.equal(app.wsManager.connections.size, 0)
  assert.deepEqual(pageErrors, [])

  // The key never reaches the logs: none of its base64 lines, at debug level.
  const keyLines = sshd.privateKey.split('\n').filter((l) => l !== '' && !l.startsWith('-----'))
  assert.ok(keyLines.length > 0)
  for (const line of keyLines) assert.ok(!logs.text().includes(line), 'a line of the private key was logged')
  assert.ok(logs.lines.some((l) => l.msg === 'terminal ready'), 'the terminal said it was ready')

  finished = true
  t.diagnostic(`terminal browser test took ${Date.now() - started} ms`)
})

test('without SSH settings the page says what to set and /terminal/ws is 404; a bad SSH_KEY_FILE fails the start', async (t) => {
  const { app, origin } = await startApp(t, {})
  const page = await app.inject({ url: '/terminal' })
  assert.equal(page.statusCode, 200)
  assert.match(page.headers['content-type'] as string, /^text\/html/)
  assert.match(page.body, /<body data-terminal="unconfigured">/)
  for (const name of ['SSH_HOST', 'SSH_PORT', 'SSH_USER', 'SSH_KEY_FILE', 'SSH_KNOWN_HOSTS', 'SSH_INSECURE_ACCEPT_ANY_HOST_KEY']) {
    assert.ok(page.body.includes(`${name}=`), `the page shows how to set ${name}`)
  }
  // The assets are served all the same: the page loads without errors.
  const xterm = await app.inject({ url: '/terminal/xterm.js' })
  assert.equal(xterm.statusCode, 200)
  assert.match(xterm.headers['content-type'] as string, /^text\/javascript/)

  const token = app.jwt.sign({ sub: 'terminal-user' })
  const status = await new Promise<number>((resolve, reject) => {
    const ws = new WebSocket(`${origin.replace('http', 'ws')}/terminal/ws`, [`bearer.${token}`])
    t.after(() => ws.terminate())
    ws.once('open', () => reject(new Error('/terminal/ws opened without SSH settings')))
    ws.once('unexpected-response', (_request, response) => resolve(response.statusCode ?? 0))
    ws.once('error', reject)
  })
  assert.equal(status, 404)

  // A key file that is not a key, and one that is not there: named, and never quoted.
  const dir = tempDir(t)
  const secret = 'PRETEND-KEY-MATERIAL-8c1f0e'
  writeFileSync(join(dir, 'id_bad'), `-----BEGIN OPENSSH PRIVATE KEY-----\n${secret}\n-----END OPENSSH PRIVATE KEY-----\n`, { mode: 0o600 })
  writeFileSync(join(dir, 'known_hosts'), '')
  const env = { SSH_HOST: '127.0.0.1', SSH_USER: 'root', SSH_KNOWN_HOSTS: join(dir, 'known_hosts') }
  for (const keyFile of [join(dir, 'id_bad'), join(dir, 'missing')]) {
    const other = Fastify({ logger: false })
    t.after(() => other.close())
    await other.register(jwt, { secret: SECRET })
    await other.register(wsManager, {})
    await assert.rejects(registerTerminal(other, { ...env, SSH_KEY_FILE: keyFile }), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'FST_WSM_ENV_INVALID')
      assert.match(err.message, /SSH_KEY_FILE=/)
      assert.ok(err.message.includes(keyFile), 'the message names the file')
      assert.ok(!err.message.includes(secret), 'the message quotes the key')
      return true
    })
    assert.equal(other.hasRoute({ method: 'GET', url: '/terminal' }), false, 'nothing registered after a bad setting')
  }
})
