// The SSH connection pool against a real OpenSSH sshd on loopback (test/fixtures/sshd.ts), an
// ssh2 Server that refuses every authentication, and a TCP server that never sends a banner.
import assert from 'node:assert/strict'
import { spawn, execFileSync } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { createServer, type Socket } from 'node:net'
import { join } from 'node:path'
import { inspect } from 'node:util'
import { test, type TestContext } from 'node:test'
import Fastify from 'fastify'
import { utils, type ClientChannel } from 'ssh2'
import { SSH_CLOSE_CODES, SshConnectionPool, isSshPoolError, type SshPoolOptions } from '../lib/ssh-pool'
import { freePort } from './fixtures/cluster'
import { startRefusingServer, startSilentServer, startSshd, type Sshd } from './fixtures/sshd'
import { assertOptionInvalid, logCapture, waitFor, within } from './helper'

const WAIT_MS = 5000

async function sshd (t: TestContext, options?: Parameters<typeof startSshd>[0]): Promise<Sshd> {
  const server = await startSshd(options)
  t.after(() => server.stop())
  return server
}

function pool (t: TestContext, options: SshPoolOptions): SshConnectionPool {
  const p = new SshConnectionPool(options)
  t.after(() => p.close())
  return p
}

/** Everything a channel printed and how it ended, once it closes; rejects after `ms`. */
function collect (channel: ClientChannel, ms = WAIT_MS): Promise<{ out: string, err: string, code: number | null | undefined }> {
  let out = ''
  let err = ''
  channel.on('data', (chunk: Buffer) => { out += chunk.toString() })
  channel.stderr.on('data', (chunk: Buffer) => { err += chunk.toString() })
  return within(new Promise((resolve) => {
    channel.once('close', (code?: number | null) => resolve({ out, err, code }))
  }), ms, 'channel close')
}

/** Closes a `cat` channel (EOF ends it) and waits for its close. */
async function finish (channel: ClientChannel): Promise<void> {
  const done = collect(channel)
  channel.end()
  await done
}

function assertNoSecret (where: string, text: string, secrets: string[]): void {
  for (const secret of secrets) assert.ok(!text.includes(secret), `${where} holds a secret`)
}

test('exec: stdout and the exit code of `echo hi; exit 3`', async (t) => {
  const server = await sshd(t, { rsa: true })
  const p = pool(t, { hostVerifier: { knownHosts: server.knownHosts } })
  const result = await collect(await p.exec(server.target, 'echo hi; exit 3'))
  assert.deepEqual(result, { out: 'hi\n', err: '', code: 3 })
  const stats = p.stats()
  assert.equal(stats.connections, 1)
  assert.equal(stats.sessions, 0)
  assert.equal(stats.opened, 1)
  // An RSA key works as well; a credential of its own is a target of its own.
  const rsa = await collect(await p.exec({ ...server.target, privateKey: server.rsaPrivateKey ?? '' }, 'echo rsa'))
  assert.equal(rsa.out, 'rsa\n')
  assert.equal(p.stats().targets, 2)
})

test('25 concurrent sessions share 3 connections (10 per connection, 4 per target)', async (t) => {
  const server = await sshd(t)
  const p = pool(t, { hostVerifier: { knownHosts: server.knownHosts }, maxSessionsPerConnection: 10, maxConnectionsPerTarget: 4 })
  const channels = await within(Promise.all(Array.from({ length: 25 }, () => p.exec(server.target, 'cat'))), 10_000, '25 sessions')
  const stats = p.stats()
  assert.equal(stats.sessions, 25)
  assert.equal(stats.connections, 3, 'ceil(25 / 10) connections')
  assert.equal(stats.opened, 3)
  assert.equal(server.connectionCount(), 3, 'sshd serves 3 connections')
  // Every channel is live: each echoes what it is sent.
  const echoes = channels.map((channel, i) => {
    const done = collect(channel)
    channel.end(`line ${i}\n`)
    return done
  })
  const results = await Promise.all(echoes)
  results.forEach((r, i) => assert.equal(r.out, `line ${i}\n`))
  assert.equal(p.stats().sessions, 0)
  assert.equal(p.stats().connections, 3, 'kept for reuse until idleTimeout')
})

test('beyond the caps callers queue: served when a session ends, refused past maxQueue and after queueTimeout', async (t) => {
  const server = await sshd(t)
  const p = pool(t, {
    hostVerifier: { knownHosts: server.knownHosts },
    maxSessionsPerConnection: 2,
    maxConnectionsPerTarget: 1,
    maxQueue: 1,
    queueTimeout: 400
  })
  const [a, b] = await Promise.all([p.exec(server.target, 'cat'), p.exec(server.target, 'cat')])
  const queued = p.exec(server.target, 'echo served')
  assert.equal(p.stats().queued, 1)
  await assert.rejects(p.exec(server.target, 'true'), { code: 'FST_WSM_SSH_SATURATED', kind: 'saturated', closeCode: 1013 })
  await finish(a)
  assert.equal((await collect(await within(queued, WAIT_MS, 'the queued session'))).out, 'served\n')
  assert.equal(p.stats().connections, 1, 'served on the same connection')

  // Full again (b and c); the next caller waits queueTimeout, then is refused.
  const c = await p.exec(server.target, 'cat')
  const started = performance.now()
  await assert.rejects(p.exec(server.target, 'true'), { kind: 'saturated' })
  const waited = performance.now() - started
  assert.ok(waited >= 390 && waited < 2000, `refused after ${Math.round(waited)} ms`)
  assert.equal(p.stats().failures.saturated, 2)
  assert.equal(p.stats().queued, 0)
  await Promise.all([finish(b), finish(c)])
})

test('a session OpenSSH refuses beyond MaxSessions goes to another connection or waits, without looping', async (t) => {
  const server = await sshd(t, { maxSessions: 10 })
  // The pool allows 12 per connection, the server only 10.
  const p = pool(t, { hostVerifier: { knownHosts: server.knownHosts }, maxSessionsPerConnection: 12, maxConnectionsPerTarget: 3 })
  const channels = await within(Promise.all(Array.from({ length: 25 }, () => p.exec(server.target, 'cat'))), 10_000, '25 sessions')
  assert.equal(p.stats().sessions, 25)
  assert.equal(p.stats().connections, 3)
  await Promise.all(channels.map(finish))

  // One connection: the 11th waits for a slot instead of failing. Then each session that ends
  // is replaced at once: sshd frees a closed session only after reading what follows the
  // close, so a replacement can be refused below the real cap, and must not lower it.
  const capture = logCapture()
  const app = Fastify({ logger: { level: 'debug', stream: capture.stream } })
  t.after(() => app.close())
  const q = pool(t, { hostVerifier: { knownHosts: server.knownHosts }, maxSessionsPerConnection: 12, maxConnectionsPerTarget: 1, queueTimeout: 3000, logger: app.log })
  let open = await Promise.all(Array.from({ length: 10 }, () => q.exec(server.target, 'cat')))
  const eleventh = q.exec(server.target, 'echo eleventh')
  await waitFor(() => q.stats().queued === 1, WAIT_MS, 'the refused session to wait')
  await finish(open[0])
  assert.equal((await collect(await within(eleventh, WAIT_MS, 'the 11th session'))).out, 'eleventh\n')
  open = [...open.slice(1), await q.exec(server.target, 'cat')]
  for (let i = 0; i < 20; i++) {
    const next = q.exec(server.target, 'cat')
    await finish(open[0])
    open = [...open.slice(1), await within(next, WAIT_MS, `replacement ${i}`)]
  }
  assert.deepEqual([q.stats().sessions, q.stats().connections, q.stats().opened, q.stats().failures.saturated], [10, 1, 1, 0])
  const refusals = capture.lines.filter((l) => l.msg === 'ssh session refused by the server').length
  t.diagnostic(`sessions refused by sshd: ${refusals} (1 beyond MaxSessions, the rest raced a close)`)
  await Promise.all(open.map(finish))
})

test('host keys: unknown refused by default, known (plain or hashed) accepted, a function or insecure-accept-any when given', async (t) => {
  const server = await sshd(t)
  const other = await startRefusingServer()
  t.after(() => other.stop())
  const line = (key: string, host = `[127.0.0.1]:${server.port}`): string => `${host} ${key}\n`

  // Another key for this host:port, and this key for the host on port 22 only.
  for (const knownHosts of [line(other.hostPublicKey), line(server.hostPublicKey, '127.0.0.1')]) {
    const p = pool(t, { hostVerifier: { knownHosts } })
    await assert.rejects(p.exec(server.target, 'true'), { code: 'FST_WSM_SSH_HOSTKEY', kind: 'hostkey', closeCode: 1008 })
    assert.equal(p.stats().failures.hostkey, 1)
    assert.equal(p.stats().opened, 0)
  }
  // The key of sshd presented by another server (its own key differs).
  const mismatch = pool(t, { hostVerifier: { knownHosts: line(server.hostPublicKey, `[127.0.0.1]:${other.port}`) } })
  await assert.rejects(mismatch.exec({ host: '127.0.0.1', port: other.port, username: 'root', password: 'x' }, 'true'), { kind: 'hostkey' })
  assert.deepEqual(other.attempts, [], 'no credential goes to an unverified host')

  // Hashed by OpenSSH's own ssh-keygen -H, among comments and other hosts.
  const file = join(server.dir, 'known_hosts')
  writeFileSync(file, `# comment\nexample.org ${other.hostPublicKey}\n${server.knownHosts}`)
  execFileSync('ssh-keygen', ['-q', '-H', '-f', file], { stdio: 'ignore' })
  const hashed = readFileSync(file, 'utf8')
  assert.match(hashed, /^\|1\|/m)
  assert.ok(!hashed.includes('127.0.0.1'))
  const ok = pool(t, { hostVerifier: { knownHosts: hashed } })
  assert.equal((await collect(await ok.exec(server.target, 'echo hashed'))).out, 'hashed\n')

  // A revoked key is refused even where a line lists it.
  const revoked = pool(t, { hostVerifier: { knownHosts: `${server.knownHosts}@revoked * ${server.hostPublicKey}\n` } })
  await assert.rejects(revoked.exec(server.target, 'true'), { kind: 'hostkey' })

  // A function gets the key blob and the target without its credential.
  const seen: unknown[] = []
  const refusing = pool(t, { hostVerifier: (key, target) => { seen.push(key, target); return false } })
  await assert.rejects(refusing.exec(server.target, 'true'), { kind: 'hostkey' })
  assert.deepEqual(seen, [Buffer.from(server.hostPublicKey.split(' ')[1], 'base64'), { host: '127.0.0.1', port: server.port, username: 'root' }])
  const asyncAccept = pool(t, { hostVerifier: async (key) => key.equals(Buffer.from(server.hostPublicKey.split(' ')[1], 'base64')) })
  assert.equal((await collect(await asyncAccept.exec(server.target, 'echo async'))).out, 'async\n')
  const throwing = pool(t, { hostVerifier: () => { throw new Error('verifier broke') } })
  await assert.rejects(throwing.exec(server.target, 'true'), { kind: 'hostkey' })

  const any = pool(t, { hostVerifier: 'insecure-accept-any' })
  assert.equal((await collect(await any.exec(server.target, 'echo any'))).out, 'any\n')
  // Leaving it out is not the same thing.
  assertOptionInvalid(() => new SshConnectionPool({} as SshPoolOptions), 'hostVerifier')
  assertOptionInvalid(() => new SshConnectionPool({ hostVerifier: 'accept-any' } as unknown as SshPoolOptions), 'hostVerifier')
})

test("authentication failures are kind 'auth'; no error, stat or log line holds a credential", async (t) => {
  const server = await sshd(t)
  const refusing = await startRefusingServer()
  t.after(() => refusing.stop())
  const capture = logCapture()
  const app = Fastify({ logger: { level: 'debug', stream: capture.stream } })
  t.after(() => app.close())
  const p = pool(t, { hostVerifier: 'insecure-accept-any', logger: app.log })

  const stranger = utils.generateKeyPairSync('ed25519').private
  const password = 'correct horse battery staple 8e1f'
  const passphrase = 'passphrase 5c2d'
  const encrypted = utils.generateKeyPairSync('ed25519', { passphrase, cipher: 'aes256-ctr', rounds: 16 }).private
  const secrets = [password, passphrase, ...[stranger, encrypted, server.privateKey].map((k) => k.split('\n')[2])]

  const failures = [
    await p.exec({ ...server.target, privateKey: stranger }, 'true').catch((e: unknown) => e),
    await p.exec({ host: '127.0.0.1', port: server.port, username: 'root', password }, 'true').catch((e: unknown) => e),
    await p.exec({ host: '127.0.0.1', port: refusing.port, username: 'root', password }, 'true').catch((e: unknown) => e),
    await p.exec({ ...server.target, privateKey: encrypted, passphrase: 'wrong' }, 'true').catch((e: unknown) => e),
    await p.exec({ ...server.target, privateKey: encrypted }, 'true').catch((e: unknown) => e)
  ]
  for (const err of failures) {
    assert.ok(isSshPoolError(err), inspect(err))
    assert.equal(err.kind, 'auth')
    assert.equal(err.code, 'FST_WSM_SSH_AUTH')
    assert.equal(err.closeCode, SSH_CLOSE_CODES.auth)
    assertNoSecret('an error', `${inspect(err)} ${JSON.stringify(err)} ${err.stack ?? ''}`, secrets)
  }
  // The password did reach the server that refused it: the test is not vacuous.
  assert.deepEqual(refusing.attempts, [{ method: 'password', username: 'root', password }])
  await collect(await p.exec(server.target, 'true'))
  assert.equal(p.stats().failures.auth, 5)
  assertNoSecret('stats', JSON.stringify(p.stats()), secrets)
  assert.ok(capture.lines.some((l) => l.msg === 'ssh connection failed'), 'failures are logged')
  assertNoSecret('the log', capture.text(), secrets)
})

test("nothing listening, or no SSH banner within readyTimeout: kind 'unreachable'", async (t) => {
  const silent = await startSilentServer()
  t.after(() => silent.stop())
  const p = pool(t, { hostVerifier: 'insecure-accept-any', readyTimeout: 300 })
  const closed = { host: '127.0.0.1', port: await freePort(), username: 'root', password: 'x' }
  await assert.rejects(p.exec(closed, 'true'), { code: 'FST_WSM_SSH_UNREACHABLE', kind: 'unreachable', closeCode: 1011 })
  const started = performance.now()
  await assert.rejects(p.exec({ ...closed, port: silent.port }, 'true'), (err: Error) => {
    assert.equal((err as { kind?: string }).kind, 'unreachable')
    assert.match(err.message, /readyTimeout \(300 ms\)/)
    return true
  })
  const waited = performance.now() - started
  assert.ok(waited >= 290 && waited < 2000, `refused after ${Math.round(waited)} ms`)
  assert.equal(silent.connections(), 1)
  // Callers waiting behind a connect that fails fail with it, without waiting queueTimeout.
  const single = pool(t, { hostVerifier: 'insecure-accept-any', readyTimeout: 300, maxSessionsPerConnection: 1, maxConnectionsPerTarget: 1 })
  const first = single.exec({ ...closed, port: silent.port }, 'true')
  const second = single.exec({ ...closed, port: silent.port }, 'true')
  assert.equal(single.stats().queued, 1)
  const both = await within(Promise.allSettled([first, second]), 2000, 'both callers to fail')
  assert.deepEqual(both.map((r) => r.status === 'rejected' && (r.reason as { kind?: string }).kind), ['unreachable', 'unreachable'])
  assert.equal(silent.connections(), 2, 'one connect for both')
  // A name that does not resolve.
  await assert.rejects(p.exec({ ...closed, host: 'no-such-host.invalid' }, 'true'), { kind: 'unreachable' })
  assert.deepEqual(p.stats(), { ...p.stats(), connections: 0, targets: 0 })
})

test('sshd killed mid-session: the channel closes, the connection is dropped, sessions work again once it is back', async (t) => {
  const server = await sshd(t)
  const p = pool(t, { hostVerifier: { knownHosts: server.knownHosts } })
  const channel = await p.exec(server.target, 'cat')
  const ended = collect(channel)
  await server.kill()
  await ended
  assert.equal(p.channelError(channel)?.kind, 'unreachable')
  await waitFor(() => p.stats().connections === 0, WAIT_MS, 'the connection to be dropped')
  assert.equal(p.stats().dropped, 1)
  await assert.rejects(p.exec(server.target, 'true'), { kind: 'unreachable' })
  await server.start()
  assert.equal((await collect(await p.exec(server.target, 'echo back'))).out, 'back\n')
  assert.equal(p.stats().opened, 2)
})

test('a connection that stops answering keepalives is dropped; its waiters get a new one', async (t) => {
  const server = await sshd(t)
  const p = pool(t, { hostVerifier: { knownHosts: server.knownHosts }, keepaliveInterval: 150, keepaliveCountMax: 2, maxSessionsPerConnection: 2, maxConnectionsPerTarget: 1 })
  const channel = await p.exec(server.target, 'cat')
  const ended = collect(channel)
  server.freeze()
  t.after(() => server.thaw())
  const started = performance.now()
  // A session asked for now waits on a server that no longer answers, and fails with it.
  const inflight = p.exec(server.target, 'true')
  // The connection is full (cat and inflight): this one waits, and gets the next connection,
  // which sshd serves from a process that is not frozen.
  const queued = p.exec(server.target, 'echo healed')
  assert.equal(p.stats().queued, 1)
  await ended
  const took = performance.now() - started
  assert.ok(took >= 300 && took < 3000, `dropped after ${Math.round(took)} ms`)
  assert.match(p.channelError(channel)?.message ?? '', /keepalive/)
  await assert.rejects(inflight, (err: Error) => {
    assert.equal((err as { kind?: string }).kind, 'unreachable')
    assert.match(err.message, /keepalive/)
    return true
  })
  assert.equal((await collect(await within(queued, WAIT_MS, 'the waiter'))).out, 'healed\n')
  assert.deepEqual([p.stats().dropped, p.stats().opened, p.stats().failures.saturated], [1, 2, 0])
})

test('a connection without sessions is reused, then ended after idleTimeout', async (t) => {
  const server = await sshd(t)
  const p = pool(t, { hostVerifier: { knownHosts: server.knownHosts }, idleTimeout: 300 })
  await collect(await p.exec(server.target, 'true'))
  await collect(await p.exec(server.target, 'true'))
  assert.equal(p.stats().opened, 1, 'reused')
  const idleSince = performance.now()
  await waitFor(() => p.stats().connections === 0, WAIT_MS, 'the idle connection to be ended')
  const idled = performance.now() - idleSince
  assert.ok(idled >= 250, `ended after ${Math.round(idled)} ms`)
  assert.equal(p.stats().evicted, 1)
  assert.equal(p.stats().dropped, 0)
  assert.equal(p.stats().targets, 0, 'the target and its credential are forgotten')
  await waitFor(() => server.connectionCount() === 0, WAIT_MS, 'sshd to see the connection end')
})

test('close() refuses waiters, closes channels, and later calls reject with kind closed', async (t) => {
  const server = await sshd(t)
  const p = pool(t, { hostVerifier: { knownHosts: server.knownHosts }, maxSessionsPerConnection: 1, maxConnectionsPerTarget: 1 })
  const channel = await p.exec(server.target, 'cat')
  const ended = collect(channel)
  const waiting = p.exec(server.target, 'true')
  const closing = p.close()
  assert.equal(p.close(), closing)
  await assert.rejects(waiting, { code: 'FST_WSM_SSH_CLOSED', kind: 'closed', closeCode: 1001 })
  await within(closing, WAIT_MS, 'close()')
  await ended
  assert.equal(p.channelError(channel)?.kind, 'closed')
  await assert.rejects(p.exec(server.target, 'true'), { kind: 'closed' })
  assert.equal(p.closed, true)
  const stats = p.stats()
  assert.equal(stats.connections, 0)
  assert.equal(stats.failures.closed, 2)
  await waitFor(() => server.connectionCount() === 0, WAIT_MS, 'sshd to see the connection end')

  // A caller whose connection is still connecting, and one whose channel is opening.
  const connecting = pool(t, { hostVerifier: { knownHosts: server.knownHosts } })
  const early = connecting.exec(server.target, 'true')
  await connecting.close()
  await assert.rejects(early, { kind: 'closed' })
  const warm = pool(t, { hostVerifier: { knownHosts: server.knownHosts } })
  await collect(await warm.exec(server.target, 'true'))
  const opening = warm.exec(server.target, 'true')
  await warm.close()
  await assert.rejects(opening, { kind: 'closed' })
})

test('close() does not wait on a server that stopped answering', async (t) => {
  const server = await sshd(t)
  const p = pool(t, { hostVerifier: { knownHosts: server.knownHosts }, keepaliveInterval: 0 })
  const channel = await p.exec(server.target, 'cat')
  const ended = collect(channel)
  server.freeze()
  t.after(() => server.thaw())
  const started = performance.now()
  await within(p.close(), 3000, 'close()')
  const took = performance.now() - started
  assert.ok(took < 2000, `closed after ${Math.round(took)} ms`)
  await ended
  assert.equal(p.stats().connections, 0)
})

test('shell gets a pty of the asked size; forwardOut reaches a TCP server from the SSH server', async (t) => {
  const server = await sshd(t)
  const p = pool(t, { hostVerifier: { knownHosts: server.knownHosts } })
  const shell = await p.shell(server.target, { cols: 100, rows: 30 })
  const output = collect(shell)
  shell.write('stty size; echo "term=$TERM"; exit\n')
  const { out } = await output
  assert.match(out, /30 100/)
  assert.match(out, /term=xterm-256color/)

  const echo = createServer((socket: Socket) => socket.pipe(socket))
  await new Promise<void>((resolve) => echo.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise<void>((resolve) => echo.close(() => resolve())))
  const address = echo.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  const forward = await p.forwardOut(server.target, { host: '127.0.0.1', port })
  const forwarded = collect(forward)
  forward.end('ping')
  assert.equal((await forwarded).out, 'ping')
  await assert.rejects(p.forwardOut(server.target, { host: '127.0.0.1', port: await freePort() }), { code: 'FST_WSM_SSH_REFUSED', kind: 'refused' })
  assert.equal(p.stats().connections, 1, 'a refused forward does not drop the connection')
})

test('invalid options throw the coded error naming the option; a bad argument rejects without a secret', async (t) => {
  const base = { hostVerifier: 'insecure-accept-any' } as const
  const bad: Array<[string, unknown]> = [
    ['maxSessionsPerConnection', 0], ['maxSessionsPerConnection', 1.5], ['maxConnectionsPerTarget', '4'],
    ['idleTimeout', -1], ['keepaliveInterval', null], ['keepaliveCountMax', 0], ['readyTimeout', 0],
    ['maxQueue', -1], ['queueTimeout', 0], ['logger', {}], ['retries', 1]
  ]
  for (const [name, value] of bad) {
    assertOptionInvalid(() => new SshConnectionPool({ ...base, [name]: value } as SshPoolOptions), name)
  }
  const key = utils.generateKeyPairSync('ed25519').public
  for (const knownHosts of ['', '# nothing but a comment\n', '[h]:2222 ssh-ed25519', '[h]:2222 ssh-ed25519 bm90IGEga2V5', `[h]:2222 ssh-rsa ${key.split(' ')[1]}`, `@cert-authority * ${key}`, `|2|c2FsdA==|aGFzaA== ${key}`]) {
    assertOptionInvalid(() => new SshConnectionPool({ hostVerifier: { knownHosts } }), 'hostVerifier.knownHosts')
  }
  assertOptionInvalid(() => new SshConnectionPool({ hostVerifier: { knownHosts: 1 } } as unknown as SshPoolOptions), 'hostVerifier.knownHosts')

  const p = pool(t, base)
  const secret = 'hunter2-secret'
  const target = { host: '127.0.0.1', port: 22, username: 'root' }
  const wrong: Array<[unknown, string]> = [
    [{ ...target }, 'target'],
    [{ ...target, password: secret, privateKey: secret }, 'target'],
    [{ ...target, password: Buffer.from(secret) }, 'target.password'],
    [{ ...target, privateKey: secret, passphrase: 42 }, 'target.passphrase'],
    [{ ...target, password: secret, port: 0 }, 'target.port'],
    [{ ...target, password: secret, host: '' }, 'target.host'],
    [{ ...target, password: secret, username: 'root\n' }, 'target.username'],
    [{ ...target, password: secret, pasword: secret }, 'target.pasword'],
    [null, 'target']
  ]
  for (const [value, name] of wrong) {
    const call = p.exec(value as typeof target, 'true')
    await assert.rejects(call, (err: Error & { code?: string }) => {
      assert.equal(err.code, 'FST_WSM_ARGUMENT_INVALID')
      assert.ok(err.message.includes(`"${name}"`), err.message)
      assertNoSecret('an argument error', err.message, [secret])
      return true
    })
  }
  await assert.rejects(p.exec({ ...target, password: secret }, ''), { code: 'FST_WSM_ARGUMENT_INVALID' })
  await assert.rejects(p.shell({ ...target, password: secret }, { cols: 0 }), { code: 'FST_WSM_ARGUMENT_INVALID' })
  await assert.rejects(p.forwardOut({ ...target, password: secret }, { host: 'x', port: 70000 }), { code: 'FST_WSM_ARGUMENT_INVALID' })
  assert.deepEqual(p.stats().targets, 0, 'nothing was started')
})

test('no timer of the pool keeps the process alive: an idle pool that is never closed lets it exit', async (t) => {
  const server = await sshd(t)
  const script = join(server.dir, 'idle.ts')
  writeFileSync(script, `
    import { SshConnectionPool } from ${JSON.stringify(join(__dirname, '..', 'lib', 'ssh-pool'))}
    const pool = new SshConnectionPool({ hostVerifier: { knownHosts: ${JSON.stringify(server.knownHosts)} }, idleTimeout: 200, keepaliveInterval: 100, queueTimeout: 60000 })
    pool.exec(${JSON.stringify(server.target)}, 'true').then((channel) => {
      channel.resume()
      channel.on('close', () => process.stdout.write('done\\n'))
    })
  `)
  const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: join(__dirname, '..'), stdio: ['ignore', 'pipe', 'inherit'] })
  t.after(() => child.kill('SIGKILL'))
  let doneAt = 0
  child.stdout.on('data', () => { doneAt = performance.now() })
  const code = await within(new Promise((resolve) => child.once('exit', resolve)), 10_000, 'the process to exit')
  assert.equal(code, 0)
  assert.ok(doneAt > 0, 'the session ran')
  const lingered = performance.now() - doneAt
  t.diagnostic(`exited ${Math.round(lingered)} ms after its last session closed`)
  assert.ok(lingered < 1000, `exited ${Math.round(lingered)} ms after its last session (idleTimeout 200)`)
})
