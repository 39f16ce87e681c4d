import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify, { type FastifyInstance } from 'fastify'
import jwt from '@fastify/jwt'
import { utils } from 'ssh2'
import WebSocket from 'ws'
import wsManager, { loadConfig } from '../lib/index'
import { registerTerminal } from '../examples/terminal'
import { startRefusingServer, startSshd } from './fixtures/sshd'
import { logCapture } from './helper'

const SECRET = 'terminal-test-secret-0123456789-abcdefghij'

type Env = Record<string, string | undefined>

/** JWT and the plugin as the reference server registers them; the terminal is left to the test. */
async function baseApp (t: TestContext, stream?: NodeJS.WritableStream): Promise<FastifyInstance> {
  const config = loadConfig({ JWT_SECRET: SECRET, LOG_LEVEL: 'silent', UPGRADE_RATE_LIMIT: 'off' })
  const app = Fastify({ logger: stream === undefined ? false : { level: 'debug', stream } })
  t.after(() => app.close())
  await app.register(jwt, { secret: SECRET, verify: { algorithms: ['HS256'] } })
  await app.register(wsManager, config.options)
  return app
}

async function listen (app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return `ws://127.0.0.1:${address.port}`
}

function tempDir (t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'wsm-terminal-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** Opens /terminal/ws as the page does and resolves with how it closed and what it received. */
async function session (t: TestContext, base: string, app: FastifyInstance, input = ''): Promise<{ code: number, reason: string, output: string, texts: string[] }> {
  const ws = new WebSocket(`${base}/terminal/ws`, ['terminal', `bearer.${app.jwt.sign({ sub: 'terminal-user' })}`])
  t.after(() => ws.terminate())
  let output = ''
  const texts: string[] = []
  ws.on('message', (data: Buffer, isBinary) => {
    if (isBinary) output += data.toString('utf8')
    else texts.push(data.toString('utf8'))
  })
  if (input !== '') ws.once('open', () => ws.send(Buffer.from(input)))
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no close within 10 s; got ${JSON.stringify(output)}`)), 10_000)
    ws.once('close', (code, reason) => {
      clearTimeout(timer)
      resolve({ code, reason: reason.toString(), output, texts })
    })
    ws.once('unexpected-response', (_request, response) => reject(new Error(`unexpected response ${response.statusCode}`)))
  })
}

test('bad SSH settings fail the start with FST_WSM_ENV_INVALID naming the variable, before anything is registered', async (t) => {
  const dir = tempDir(t)
  const key = utils.generateKeyPairSync('ed25519')
  const encrypted = utils.generateKeyPairSync('ed25519', { passphrase: 'pass', cipher: 'aes256-ctr', rounds: 2 })
  const hostKey = utils.generateKeyPairSync('ed25519').public.split(' ').slice(0, 2).join(' ')
  const files = {
    key: join(dir, 'id'),
    encrypted: join(dir, 'id_encrypted'),
    publicKey: join(dir, 'id.pub'),
    knownHosts: join(dir, 'known_hosts'),
    badKnownHosts: join(dir, 'bad_known_hosts')
  }
  writeFileSync(files.key, key.private, { mode: 0o600 })
  writeFileSync(files.encrypted, encrypted.private, { mode: 0o600 })
  writeFileSync(files.publicKey, key.public)
  writeFileSync(files.knownHosts, `[127.0.0.1]:2222 ${hostKey}\n`)
  writeFileSync(files.badKnownHosts, '127.0.0.1 ssh-ed25519 not-base64!\n')
  const good = { SSH_HOST: '127.0.0.1', SSH_PORT: '2222', SSH_USER: 'demo', SSH_KEY_FILE: files.key, SSH_KNOWN_HOSTS: files.knownHosts }

  const cases: Array<[string, Env, string, RegExp]> = [
    ['port 0', { ...good, SSH_PORT: '0' }, 'SSH_PORT', /from 1 to 65535/],
    ['port too high', { ...good, SSH_PORT: '65536' }, 'SSH_PORT', /from 1 to 65535/],
    ['port not a number', { ...good, SSH_PORT: '22x' }, 'SSH_PORT', /from 1 to 65535/],
    ['no host with the others', { ...good, SSH_HOST: undefined }, 'SSH_HOST', /required when/],
    ['a host with spaces', { ...good, SSH_HOST: 'a host' }, 'SSH_HOST', /host name/],
    ['only a port', { SSH_PORT: '22' }, 'SSH_HOST', /required when SSH_PORT is set/],
    ['no user', { ...good, SSH_USER: '' }, 'SSH_USER', /required when/],
    ['no key file', { ...good, SSH_KEY_FILE: undefined }, 'SSH_KEY_FILE', /required when/],
    ['a missing key file', { ...good, SSH_KEY_FILE: join(dir, 'nope') }, 'SSH_KEY_FILE', /cannot read the file \(ENOENT\)/],
    ['a directory as key file', { ...good, SSH_KEY_FILE: dir }, 'SSH_KEY_FILE', /cannot read the file \(EISDIR\)/],
    ['an encrypted key', { ...good, SSH_KEY_FILE: files.encrypted }, 'SSH_KEY_FILE', /unencrypted private key/],
    ['a public key', { ...good, SSH_KEY_FILE: files.publicKey }, 'SSH_KEY_FILE', /unencrypted private key/],
    ['no known hosts', { ...good, SSH_KNOWN_HOSTS: undefined }, 'SSH_KNOWN_HOSTS', /SSH_INSECURE_ACCEPT_ANY_HOST_KEY=true/],
    ['a missing known hosts file', { ...good, SSH_KNOWN_HOSTS: join(dir, 'nope') }, 'SSH_KNOWN_HOSTS', /ENOENT/],
    ['a bad known hosts line', { ...good, SSH_KNOWN_HOSTS: files.badKnownHosts }, 'SSH_KNOWN_HOSTS', /line 1/],
    ['both host key settings', { ...good, SSH_INSECURE_ACCEPT_ANY_HOST_KEY: 'true' }, 'SSH_INSECURE_ACCEPT_ANY_HOST_KEY', /not both/],
    ['insecure not a boolean', { ...good, SSH_KNOWN_HOSTS: undefined, SSH_INSECURE_ACCEPT_ANY_HOST_KEY: 'sure' }, 'SSH_INSECURE_ACCEPT_ANY_HOST_KEY', /true or false/]
  ]
  const keyLines = [key.private, encrypted.private].flatMap((k) => k.split('\n').filter((l) => l !== '' && !l.startsWith('-----')))
  for (const [name, env, variable, problem] of cases) {
    const app = await baseApp(t)
    await assert.rejects(registerTerminal(app, env), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'FST_WSM_ENV_INVALID', name)
      assert.ok(err.message.startsWith(`Invalid environment variable ${variable}=`), `${name}: ${err.message}`)
      assert.match(err.message, problem, name)
      for (const line of keyLines) assert.ok(!err.message.includes(line), `${name}: the message quotes a key`)
      return true
    })
    assert.equal(app.hasRoute({ method: 'GET', url: '/terminal' }), false, `${name}: nothing registered`)
  }

  // The same settings, well formed, start.
  const app = await baseApp(t)
  await registerTerminal(app, good)
  assert.equal(app.hasRoute({ method: 'GET', url: '/terminal/ws' }), true)
})

test('the page and its assets: types, no-cache with an ETag, 304, the configured flag, no source map comment', async (t) => {
  const app = await baseApp(t)
  await registerTerminal(app, {})
  const page = await app.inject({ url: '/terminal' })
  assert.match(page.body, /<body data-terminal="unconfigured">/)
  assert.equal(app.hasRoute({ method: 'GET', url: '/terminal/ws' }), false)
  const expected: Array<[string, RegExp]> = [
    ['/terminal', /^text\/html; charset=utf-8$/],
    ['/terminal/xterm.js', /^text\/javascript; charset=utf-8$/],
    ['/terminal/addon-fit.js', /^text\/javascript; charset=utf-8$/],
    ['/terminal/xterm.css', /^text\/css; charset=utf-8$/]
  ]
  for (const [url, type] of expected) {
    const first = await app.inject({ url })
    assert.equal(first.statusCode, 200, url)
    assert.match(first.headers['content-type'] as string, type, url)
    assert.equal(first.headers['cache-control'], 'no-cache', url)
    const etag = first.headers.etag as string
    assert.match(etag, /^"[\w-]+"$/, url)
    assert.ok(!first.body.includes('sourceMappingURL'), `${url} points at a map that is not served`)
    const again = await app.inject({ url, headers: { 'if-none-match': etag } })
    assert.equal(again.statusCode, 304, url)
    assert.equal(again.body, '', url)
  }
  assert.match((await app.inject({ url: '/terminal/xterm.js' })).body, /Terminal/)
  assert.match((await app.inject({ url: '/terminal/addon-fit.js' })).body, /FitAddon/)
})

test('the configured host key is enforced, insecure mode warns, and closing the app ends the SSH connections', async (t) => {
  const sshd = await startSshd()
  t.after(() => sshd.stop())
  const dir = tempDir(t)
  const keyFile = join(dir, 'id_ed25519')
  writeFileSync(keyFile, sshd.privateKey, { mode: 0o600 })
  // Another server's key under this server's name: the terminal must refuse it.
  const other = await startRefusingServer()
  t.after(() => other.stop())
  const wrongHosts = join(dir, 'wrong_known_hosts')
  writeFileSync(wrongHosts, `[127.0.0.1]:${sshd.port} ${other.hostPublicKey}\n`)
  const env = { SSH_HOST: sshd.host, SSH_PORT: String(sshd.port), SSH_USER: sshd.username, SSH_KEY_FILE: keyFile }

  const wrong = await baseApp(t)
  await registerTerminal(wrong, { ...env, SSH_KNOWN_HOSTS: wrongHosts })
  const refused = await session(t, await listen(wrong), wrong)
  assert.deepEqual([refused.code, refused.reason], [1008, 'Upstream host key not verified'])

  const logs = logCapture()
  const insecure = await baseApp(t, logs.stream)
  await registerTerminal(insecure, { ...env, SSH_INSECURE_ACCEPT_ANY_HOST_KEY: 'true' })
  const warning = logs.lines.find((l) => l.level === 40)
  assert.equal(warning?.msg, 'terminal accepts any ssh host key: SSH_INSECURE_ACCEPT_ANY_HOST_KEY is true')
  const base = await listen(insecure)
  const done = await session(t, base, insecure, 'exit 3\n')
  assert.deepEqual([done.code, done.reason], [1000, 'exit 3'])
  assert.deepEqual(done.texts.map((text) => JSON.parse(text) as unknown), [{ type: 'exit', code: 3, signal: null }])

  // A shell left open: app.close() closes the socket (the plugin) and the pool (our onClose hook).
  const ws = new WebSocket(`${base}/terminal/ws`, ['terminal', `bearer.${insecure.jwt.sign({ sub: 'terminal-user' })}`])
  t.after(() => ws.terminate())
  await new Promise<void>((resolve, reject) => {
    ws.on('message', (_data, isBinary) => { if (isBinary) resolve() })
    ws.once('close', (code) => reject(new Error(`closed ${code} before any output`)))
  })
  assert.ok(sshd.connectionCount() >= 1)
  const closed = new Promise<number>((resolve) => ws.once('close', resolve))
  await insecure.close()
  assert.equal(await closed, 1001)
  const deadline = Date.now() + 5000
  while (sshd.connectionCount() > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  assert.equal(sshd.connectionCount(), 0, 'sshd still serves a connection after app.close()')
  for (const line of sshd.privateKey.split('\n').filter((l) => l !== '' && !l.startsWith('-----'))) {
    assert.ok(!logs.text().includes(line), 'a line of the private key was logged')
  }
})
