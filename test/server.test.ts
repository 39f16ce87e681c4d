import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { connect as netConnect, type Socket } from 'node:net'
import { join } from 'node:path'
import { closed, connectQueued, refusedUpgrade, socketClosed, waitFor } from './helper'

const root = join(__dirname, '..')

interface Running { child: ChildProcess, url: string, port: number, token: string, exited: Promise<number | null>, output: () => string }

// Runs the reference server the way `npm start` does, in its own process.
async function start (t: TestContext, env: Record<string, string> = {}): Promise<Running> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'examples', 'server.ts')], {
    cwd: root,
    env: { ...process.env, WEBSOCKET_PORT: '0', LOG_LEVEL: 'info', TICK_INTERVAL: '0', JWT_SECRET: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  child.stdout?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  await waitFor(() => /listening at http:\/\/127\.0\.0\.1:\d+/.test(output) || child.exitCode !== null, 20_000, 'server to listen')
  const match = /listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(output)
  if (match === null) throw new Error(`server did not start:\n${output}`)
  const port = Number(match[1])
  await waitFor(() => /Dev token[^\n]*\n(\S+)\n/.test(output), 5000, 'dev token')
  const token = (/Dev token[^\n]*\n(\S+)\n/.exec(output) as RegExpExecArray)[1]
  return { child, url: `ws://127.0.0.1:${port}`, port, token, exited, output: () => output }
}

async function poll (predicate: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms
  while (!await predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

function openFds (pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length
}

function rawConnect (t: TestContext, port: number): Promise<Socket> {
  const socket = netConnect({ port, host: '127.0.0.1' })
  t.after(() => socket.destroy())
  socket.on('error', () => {})
  return new Promise((resolve) => socket.once('connect', () => resolve(socket)))
}

test('the reference server routes chat, whispers, echoes binary, reports health and closes with 1001 on SIGINT', async (t) => {
  const server = await start(t)
  const headers = { authorization: `Bearer ${server.token}` }
  const { ws: a, next: nextA } = await connectQueued(t, server.url + '/ws', { headers })
  const welcome = JSON.parse(await nextA())
  assert.equal(welcome.type, 'welcome')
  assert.equal(welcome.userId, 'dev-user')
  const { ws: b, next: nextB } = await connectQueued(t, server.url + '/ws', { headers })
  assert.equal(JSON.parse(await nextB()).type, 'welcome')

  a.send(JSON.stringify({ type: 'chat', text: 'hello all' }))
  assert.deepEqual(JSON.parse(await nextB()), { type: 'chat', from: 'dev-user', text: 'hello all' })
  const replies: unknown[] = [JSON.parse(await nextA()), JSON.parse(await nextA())]
  assert.ok(replies.some((r) => JSON.stringify(r) === JSON.stringify({ type: 'sent', delivered: 2 })), JSON.stringify(replies))
  a.on('message', (data) => replies.push(JSON.parse(data.toString())))

  a.send(JSON.stringify({ type: 'chat' }))
  await waitFor(() => replies.some((r) => (r as { code?: string }).code === 'INVALID_MESSAGE'))

  const echoed = new Promise<Buffer>((resolve) => b.once('message', (data, isBinary) => { if (isBinary) resolve(data as Buffer) }))
  b.send(Buffer.from([1, 2, 3]))
  assert.deepEqual([...await echoed], [1, 2, 3])

  const health = await (await fetch(`http://127.0.0.1:${server.port}/health/connections`)).json() as { activeConnections: number }
  assert.equal(health.activeConnections, 2)
  assert.deepEqual(await (await fetch(`http://127.0.0.1:${server.port}/health`)).json(), { status: 'ok' })
  assert.deepEqual(await (await fetch(`http://127.0.0.1:${server.port}/ready`)).json(), { status: 'ready' })
  assert.equal((await fetch(`http://127.0.0.1:${server.port}/stats`)).status, 401)
  assert.equal((await fetch(`http://127.0.0.1:${server.port}/stats`, { headers })).status, 200)
  assert.match(await (await fetch(`http://127.0.0.1:${server.port}/`)).text(), /bearer\./)

  assert.ok(!server.output().includes(server.token.split('.')[2] + '"'), 'the token never reaches a log line')

  const seen = [closed(a), closed(b)]
  server.child.kill('SIGINT')
  for (const result of await Promise.all(seen)) assert.deepEqual(result, { code: 1001, reason: 'Server shutting down' })
  assert.equal(await server.exited, 0)
})

test('on SIGTERM the reference server drains over DRAIN_DURATION: not ready, upgrades 503, 1012 closes spread out, exit 0', async (t) => {
  const server = await start(t, { DRAIN_DURATION: '2000' })
  const headers = { authorization: `Bearer ${server.token}` }
  const clients = await Promise.all(Array.from({ length: 8 }, async () => (await connectQueued(t, server.url + '/ws', { headers })).ws))
  const closes = clients.map(async (ws) => {
    const result = await closed(ws)
    return { ...result, at: Date.now() }
  })
  const signalled = Date.now()
  server.child.kill('SIGTERM')
  const base = `http://127.0.0.1:${server.port}`
  await poll(async () => (await fetch(`${base}/ready`)).status === 503, 2000, 'readiness to turn false')
  assert.deepEqual(await (await fetch(`${base}/ready`)).json(), { status: 'draining' })
  assert.equal((await fetch(`${base}/health`)).status, 200, 'alive while draining')
  const refused = await refusedUpgrade(server.url + '/ws', headers)
  assert.equal(refused.status, 503)
  assert.equal(refused.retryAfter, '1')
  const results = await Promise.all(closes)
  for (const result of results) assert.deepEqual({ code: result.code, reason: result.reason }, { code: 1012, reason: 'Service restart' })
  const times = results.map((r) => r.at - signalled).sort((x, y) => x - y)
  // Eight clients in eight batches over two seconds: never all at once.
  assert.ok((times.at(-1) as number) - (times[0] as number) >= 600, `closes spread over ${(times.at(-1) as number) - (times[0] as number)} ms: ${times.join(', ')}`)
  assert.ok((times.at(-1) as number) < 2000 + 1500, `the last close came ${times.at(-1) as number} ms after SIGTERM`)
  assert.equal(await server.exited, 0)
  assert.match(server.output(), /"msg":"drain finished"/)
})

test('a second SIGTERM during a drain closes what remains at once with the shutdown code', async (t) => {
  const server = await start(t, { DRAIN_DURATION: '600000' })
  const headers = { authorization: `Bearer ${server.token}` }
  const clients = await Promise.all(Array.from({ length: 3 }, async () => (await connectQueued(t, server.url + '/ws', { headers })).ws))
  const done = clients.map((ws) => closed(ws))
  server.child.kill('SIGTERM')
  await poll(async () => (await fetch(`http://127.0.0.1:${server.port}/ready`)).status === 503, 2000, 'the drain to begin')
  const second = Date.now()
  server.child.kill('SIGTERM')
  const results = await Promise.all(done)
  assert.ok(Date.now() - second < 3000)
  // Three batches over ten minutes: one may have fired already (a 0.5 % chance), not two.
  const codes = results.map((r) => r.code)
  assert.ok(codes.filter((c) => c === 1001).length >= 2 && codes.every((c) => c === 1001 || c === 1012), `closed with ${codes.join(', ')}`)
  assert.equal(await server.exited, 0)
})

test('a client that sends its upgrade one header line at a time is cut off within seconds', async (t) => {
  const server = await start(t, { HEADERS_TIMEOUT: '1000', REQUEST_TIMEOUT: '2000' })
  const slow = await rawConnect(t, server.port)
  const started = Date.now()
  slow.write('GET /ws HTTP/1.1\r\n')
  const lines = ['Host: 127.0.0.1', 'Upgrade: websocket', 'Connection: Upgrade', 'Sec-WebSocket-Version: 13',
    'X-Padding-1: a', 'X-Padding-2: b', 'X-Padding-3: c', 'X-Padding-4: d', 'X-Padding-5: e', 'X-Padding-6: f']
  const trickle = setInterval(() => {
    const line = lines.shift()
    if (line !== undefined && !slow.destroyed) slow.write(line + '\r\n')
  }, 300)
  t.after(() => clearInterval(trickle))
  await socketClosed(slow, 4000)
  const elapsed = Date.now() - started
  clearInterval(trickle)
  assert.ok(elapsed < 3500, `cut off after ${elapsed} ms`)
  assert.ok(lines.length > 0, 'the server waited for every header line')
})

test('rejected upgrades leave no file descriptor behind', async (t) => {
  const server = await start(t)
  const pid = server.child.pid as number
  // Warm up: the first requests open lazily loaded files.
  await fetch(`http://127.0.0.1:${server.port}/health`)
  const before = openFds(pid)
  const clients: Socket[] = []
  for (let i = 0; i < 40; i++) {
    const socket = await rawConnect(t, server.port)
    // Not a websocket route: 404, and the client never closes its side.
    socket.write('GET /nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')
    clients.push(socket)
  }
  await Promise.all(clients.map((socket) => socketClosed(socket, 3000)))
  await waitFor(() => openFds(pid) <= before + 2, 3000, 'server fds to be released')
})

test('the reference server serves the live dashboard to the dev token\'s user and prints its address', async (t) => {
  const server = await start(t)
  await waitFor(() => server.output().includes('Live dashboard: '), 5000, 'the dashboard address')
  const printed = /Live dashboard: (\S+)/.exec(server.output())?.[1] ?? ''
  assert.equal(printed, `http://127.0.0.1:${server.port}/ws/dashboard?access_token=${server.token}`)
  const page = await fetch(printed)
  assert.equal(page.status, 200)
  assert.match(page.headers.get('content-type') ?? '', /^text\/html/)
  assert.equal((await fetch(`http://127.0.0.1:${server.port}/ws/dashboard`)).status, 401)
  // The token never reaches the log (its JSON lines), only the console lines printed for the operator.
  const logLines = server.output().split('\n').filter((line) => line.startsWith('{'))
  assert.ok(logLines.some((line) => line.includes('/ws/dashboard')), 'the requests were logged')
  assert.equal(logLines.some((line) => line.includes(server.token)), false)
})
