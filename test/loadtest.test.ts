import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runLoadTest } from '../lib/loadtest/run'
import { compileRequestTemplate, compileTemplate } from '../lib/loadtest/template'
import type { LoadTestResult } from '../lib/loadtest/report'
import { waitFor } from './helper'

const root = join(__dirname, '..')
const cli = join(root, 'lib', 'loadtest', 'cli.ts')

interface Server { port: number, url: string, token: string }

// The reference server in its own process, as `npm start` runs it, with the limits that
// would refuse one user's many connections and messages turned off.
async function startServer (t: TestContext): Promise<Server> {
  const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'examples', 'server.ts')], {
    cwd: root,
    env: {
      ...process.env,
      WEBSOCKET_PORT: '0',
      LOG_LEVEL: 'info',
      TICK_INTERVAL: '0',
      JWT_SECRET: '',
      MESSAGE_RATE_LIMIT: 'false',
      UPGRADE_RATE_LIMIT: 'false',
      MAX_CONNECTIONS_PER_IP: '0'
    },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  const ready = (): boolean => /listening at http:\/\/127\.0\.0\.1:\d+/.test(output) && /Dev token[^\n]*\n(\S+)\n/.test(output)
  await waitFor(() => ready() || child.exitCode !== null, 20_000, 'the server to listen')
  if (!ready()) throw new Error(`server did not start:\n${output}`)
  const port = Number((/listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(output) as RegExpExecArray)[1])
  const token = (/Dev token[^\n]*\n(\S+)\n/.exec(output) as RegExpExecArray)[1] as string
  return { port, url: `ws://127.0.0.1:${port}/ws`, token }
}

interface Ran { code: number | null, stdout: string, stderr: string }

// The command as a user runs it, with a deadline well past any run these tests ask for.
function runCli (t: TestContext, args: string[], ms = 30_000): Promise<Ran> {
  const child = spawn(process.execPath, ['--import', 'tsx', cli, ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] })
  t.after(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const timer = setTimeout(() => child.kill('SIGKILL'), ms)
  return new Promise((resolve) => child.once('close', (code) => {
    clearTimeout(timer)
    resolve({ code, stdout, stderr })
  }))
}

interface Stats {
  routes: Record<string, { opened: number, closed: Record<string, number>, messagesReceived: number, messagesSent: number }>
}

async function stats (server: Server): Promise<Stats> {
  const response = await fetch(`http://127.0.0.1:${server.port}/stats`, { headers: { authorization: `Bearer ${server.token}` } })
  assert.equal(response.status, 200)
  return await response.json() as Stats
}

test('a run of requests agrees with the server\'s stats, times every reply and spreads over the source addresses', async (t) => {
  const server = await startServer(t)
  const dir = mkdtempSync(join(tmpdir(), 'loadtest-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const out = join(dir, 'result.json')
  const ran = await runCli(t, [server.url, '--connections', '50', '--duration', '3', '--message-rate', '2',
    '--request', '{"type":"who"}', '--token', server.token, '--source-addresses', '127.0.0.1-127.0.0.4', '--json-out', out])
  assert.equal(ran.code, 0, ran.stderr)
  const result = JSON.parse(readFileSync(out, 'utf8')) as LoadTestResult
  const summary = JSON.stringify(result)
  // The table on stdout reports the same run.
  assert.match(ran.stdout, /reply latency\s+p50 [\d.]+ {2}p90 [\d.]+ {2}p99 [\d.]+ {2}max [\d.]+ ms/)
  assert.match(ran.stdout, new RegExp(`sent ${result.messages.sent} `))
  assert.ok(!ran.stdout.includes(server.token) && !ran.stderr.includes(server.token), 'the token is never printed')

  assert.deepEqual(result.errors, {}, summary)
  assert.equal(result.errorCount, 0)
  assert.equal(result.connections.opened, 50, summary)
  assert.equal(result.connections.openAtEnd, 50)
  assert.deepEqual(result.closes, [{ code: 1000, reason: 'load test done', initiatedBy: 'tool', count: 50 }])

  // Nothing else connected to this server: its counts are the tool's.
  const route = (await stats(server)).routes['/ws']
  assert.ok(route !== undefined)
  assert.equal(route.opened, result.connections.opened)
  assert.equal(route.closed['1000|client'], 50)
  assert.equal(route.messagesReceived, result.messages.sent)
  assert.equal(route.messagesSent, result.messages.received, 'a welcome per connection and a reply per request')

  // Every request answered and matched by its id.
  assert.equal(result.messages.requests, result.messages.sent)
  assert.equal(result.messages.replies, result.messages.requests)
  // 2 per second for 50 connections over the 3 s hold, and up to as many again during the 0.5 s ramp.
  // Sends the process was too busy to make on time count as skipped, not as sent.
  const scheduled = result.messages.requests + result.messages.skipped
  assert.ok(scheduled >= 240 && result.messages.requests <= 400, `sent ${result.messages.requests} requests, skipped ${result.messages.skipped}`)

  for (const p of [result.connectMs, result.latencyMs]) {
    assert.ok(p !== null)
    assert.equal(p.count, p === result.connectMs ? 50 : result.messages.replies)
    assert.ok(p.min > 0 && p.min <= p.p50 && p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.max, JSON.stringify(p))
  }

  // Round-robin over four loopback addresses: 13, 13, 12, 12.
  assert.deepEqual(result.sources, {
    '127.0.0.1': { attempted: 13, opened: 13 },
    '127.0.0.2': { attempted: 13, opened: 13 },
    '127.0.0.3': { attempted: 12, opened: 12 },
    '127.0.0.4': { attempted: 12, opened: 12 }
  })
})

test('bad arguments exit with 2 and say what is wrong; --help prints the usage', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [[], /URL to connect to is missing/],
    [['http://127.0.0.1:1/ws'], /<url>: expected a ws:\/\/ or wss:\/\/ URL, got http:/],
    [['ws://127.0.0.1:1/ws', '--connections', '-1'], /--connections: expected a whole number 1 or more.*got -1/],
    [['ws://127.0.0.1:1/ws', '--message-rate', '1', '--json', '{"type":'], /--json: the template is not JSON/],
    [['ws://127.0.0.1:1/ws', '--token', 'a.b.c', '--token-cmd', 'echo a.b.c'], /give --token or --token-cmd, not both/],
    [['ws://127.0.0.1:1/ws', '--source-addresses', '127.0.0.1,8.8.8.8'], /--source-addresses: "8\.8\.8\.8" is not an address of this machine/],
    [['ws://127.0.0.1:1/ws', '--no-such-option'], /unknown option --no-such-option/]
  ]
  const runs = await Promise.all(cases.map(([args]) => runCli(t, args, 20_000)))
  runs.forEach((ran, i) => {
    const [args, message] = cases[i] as [string[], RegExp]
    assert.equal(ran.code, 2, `${args.join(' ')}: ${ran.stderr}`)
    assert.match(ran.stderr, message)
    assert.equal(ran.stdout, '')
  })
  const help = await runCli(t, ['--help'], 20_000)
  assert.equal(help.code, 0)
  assert.match(help.stdout, /^Usage: fastify-ws-manager-loadtest <url> \[options\]/)
  for (const flag of ['--connections', '--ramp-rate', '--duration', '--source-addresses', '--message-rate', '--json-out', '--token-in', '--fail-on-error']) {
    assert.ok(help.stdout.includes(flag), flag)
  }

  // Placeholders become numbers, in strings or bare; a request gets its id before the last brace.
  assert.equal(compileTemplate('{"text":"{{conn}}-{{seq}}","at":{{ts}}}').render(7, 3, 1234), '{"text":"3-7","at":1234}')
  assert.equal(compileRequestTemplate('{"type":"who"} ').render(0, 0, 0, 42), '{"type":"who","id":42}')
  assert.equal(compileRequestTemplate('{}').render(0, 0, 0, 1), '{"id":1}')

  // In process, runLoadTest rejects with the coded error before connecting anywhere.
  await assert.rejects(runLoadTest({ url: 'http://127.0.0.1:1/ws' }), { code: 'FST_WSM_LOADTEST_OPTION_INVALID' })
  await assert.rejects(runLoadTest({ url: 'ws://127.0.0.1:1/ws', connections: -1 }), { code: 'FST_WSM_LOADTEST_OPTION_INVALID' })
})

test('refused upgrades are errors by HTTP status (exit 1 with --fail-on-error); an aborted run still reports; a token command per connection, as a subprotocol', async (t) => {
  const server = await startServer(t)
  const ran = await runCli(t, [server.url, '--connections', '5', '--duration', '0.5', '--token', 'not.a.jwt', '--json-out', '-', '--fail-on-error'])
  assert.equal(ran.code, 1, ran.stderr + ran.stdout)
  const refused = JSON.parse(ran.stdout) as LoadTestResult
  assert.deepEqual(refused.errors, { 'HTTP 401': 5 }, ran.stdout)
  assert.equal(refused.connections.failed, 5)
  assert.equal(refused.connections.opened, 0)
  assert.equal(refused.connectMs, null)

  // In process: a 30 s run stopped once all its connections are open and sending closes
  // everything with 1000 and reports.
  const controller = new AbortController()
  const started = Date.now()
  const seen: number[] = []
  const result = await runLoadTest({
    url: server.url,
    connections: 20,
    rampRate: 200,
    duration: 30,
    messageRate: 10,
    json: '{"type":"chat","text":"{{conn}}-{{seq}}"}',
    token: server.token,
    signal: controller.signal
  }, (progress) => {
    seen.push(progress.open)
    if (progress.open === 20 && progress.sent > 0) controller.abort()
  })
  const summary = JSON.stringify(result)
  assert.ok(Date.now() - started < 15_000, `took ${Date.now() - started} ms`)
  assert.equal(result.stoppedEarly, true)
  assert.equal(result.connections.opened, 20, summary)
  assert.deepEqual(result.errors, {}, summary)
  assert.deepEqual(result.closes.map((c) => [c.code, c.initiatedBy, c.count]), [[1000, 'tool', 20]])
  assert.ok(result.messages.sent > 0)
  // The close went after the last message on each socket: the server received every one.
  const route = (await stats(server)).routes['/ws']
  assert.ok(route !== undefined)
  assert.equal(route.messagesReceived, result.messages.sent, summary)
  assert.ok(seen.includes(20), 'progress was reported')

  // A token from a command run per connection, sent as the bearer.<jwt> subprotocol beside an
  // application protocol; the reference server has no topics, so each subscription is refused.
  const viaCommand = await runLoadTest({
    url: server.url,
    connections: 3,
    duration: 1.5,
    tokenCommand: `echo ${server.token}`,
    tokenPerConnection: true,
    tokenIn: 'subprotocol',
    protocols: ['chat'],
    subscribe: ['news']
  })
  assert.equal(viaCommand.connections.opened, 3, JSON.stringify(viaCommand))
  assert.equal(viaCommand.messages.subscriptions, 3)
  assert.deepEqual(viaCommand.errors, { 'subscribe error UNKNOWN_TYPE': 3 }, JSON.stringify(viaCommand))
})
