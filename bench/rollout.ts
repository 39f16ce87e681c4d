// A rolling restart, measured (issue 15): three cluster nodes behind a load balancer that
// follows their readiness (bench/balancer.ts, a Kubernetes Service in miniature), the
// project's client on every connection, one topic published at a steady rate with history
// on. Each node in turn is replaced as a Deployment with maxSurge 1 / maxUnavailable 0 does
// it: a fresh node starts and turns ready, then the old one drains (or, with drain off, closes
// everything at once) and exits.
//
//   npm run bench:rollout                full run: drain on and drain off; updates BENCHMARKS.md
//   npm run bench:rollout -- --quick     a short run of both modes (what the test runs)
//   npm run bench:rollout -- --no-md     leave BENCHMARKS.md alone
//   npm run bench:rollout -- --out FILE  figures to FILE (default bench/results/rollout.json)
//
// Measured for each mode: whether every client ends connected; duplicates and gaps in each
// client's topic offsets (recovery); reconnects per second (the busiest one-second window)
// against the drain's own pace; upgrades refused per client; the rollout's length.
import { mkdirSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { parseArgs } from 'node:util'
import WebSocket from 'ws'
import { createClient, type Client } from '../lib/client/index'
import type { DrainResult } from '../lib/drain'
import { startNode, tokenFor, uniquePrefix, type ClusterNode } from '../test/fixtures/cluster'
import { busiestWindow } from '../test/helper'
import { startBalancer } from './balancer'
import { headerHelp, machineBasics, writeBetweenMarkers } from './markdown'

/** What one run does. */
export interface RolloutParams {
  nodes: number
  clients: number
  /** Publications a second to the topic. */
  rate: number
  /** Milliseconds each node drains over; 0 with mode 'off'. */
  drainMs: number
  mode: 'drain' | 'off'
  /** Topic history (messages) each node keeps for recovery. */
  history: number
}

/** What one run measured. */
export interface RolloutResult {
  params: RolloutParams
  /** From the first replacement starting to the last old node gone. */
  rolloutMs: number
  /** Of which starting the replacement nodes until the balancer saw them ready. */
  startsMs: number
  clientsOpenAtEnd: number
  published: number
  /** Messages each client got twice or more, summed over clients. */
  duplicates: number
  /** Offsets a client never got, summed over clients. */
  missing: number
  /** Resubscriptions the server could not recover (recovered: false). */
  unrecovered: number
  reconnects: number
  /** The most reconnects in any one-second window. */
  reconnectPeakPerS: number
  /** The drain's pace: the most connections a node held at drain time over the drain duration, per second. */
  drainPacePerS: number | null
  /** Upgrades refused (HTTP status) per client: the worst client, and all of them. */
  refusedMax: number
  refusedTotal: number
  /** Close codes the clients saw. */
  closeCodes: Record<string, number>
  drains: Array<Pick<DrainResult, 'connections' | 'clean' | 'forced' | 'durationMs'>>
}

interface Tracked {
  client: Client
  last: number | null
  duplicates: number
  missing: number
  unrecovered: number
  opens: number
  refused: number
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

async function until (predicate: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms
  while (!await predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await sleep(20)
  }
}

/** One rolling restart; every process and client it starts is gone when it resolves or rejects. */
export async function runRollout (params: RolloutParams, log: (line: string) => void = () => {}): Promise<RolloutResult> {
  const cleanups: Array<() => unknown> = []
  const scope = { after: (fn: () => unknown) => { cleanups.push(fn) } }
  const prefix = uniquePrefix()
  // Every client reaches the nodes from the balancer's address: no per-IP cap (as behind a
  // proxy without trustProxy; see the README's note on maxConnectionsPerIp).
  const env = { TOPICS_HISTORY: String(params.history), PRESENCE_TTL: '3000', REQUEST_TIMEOUT: '1000', CLOSE_TIMEOUT: '2000', MAX_PER_IP: '0' }
  const balancer = await startBalancer()
  const tracked: Tracked[] = []
  try {
    let generation = 0
    const start = async (): Promise<ClusterNode> => startNode(scope, { prefix, nodeId: `node-${generation++}`, env })
    const publisher = await startNode(scope, { prefix, nodeId: 'publisher', env })
    const serving = await Promise.all(Array.from({ length: params.nodes }, start))
    for (const node of serving) balancer.add(node.port)
    await until(() => balancer.backends().every((b) => b.ready), 10_000, 'every node ready')

    const url = `ws://127.0.0.1:${balancer.port}/rec`
    const reopens: number[] = []
    const closeCodes: Record<string, number> = {}
    for (let i = 0; i < params.clients; i++) {
      const token = await tokenFor(`user-${i}`)
      const client = createClient({ url, getToken: () => token, WebSocket: WebSocket as never, tokenRefresh: false })
      const entry: Tracked = { client, last: null, duplicates: 0, missing: 0, unrecovered: 0, opens: 0, refused: 0 }
      client.on('open', () => {
        entry.opens++
        if (entry.opens > 1) reopens.push(Date.now())
      })
      client.on('close', (event) => {
        if (event.status !== null) entry.refused++
        const key = event.status !== null ? `HTTP ${event.status}` : String(event.code)
        closeCodes[key] = (closeCodes[key] ?? 0) + 1
      })
      client.on('subscribed', (event) => { if (event.resumed && !event.recovered) entry.unrecovered++ })
      client.on('error', () => {})
      client.subscribe<{ n: number }>('feed', (_data, meta) => {
        if (entry.last !== null) {
          if (meta.offset <= entry.last) {
            entry.duplicates++
            return
          }
          entry.missing += meta.offset - entry.last - 1
        }
        entry.last = meta.offset
      })
      tracked.push(entry)
    }
    // Connected a slice at a time, as a fleet of browsers would arrive.
    for (let i = 0; i < tracked.length; i += 50) await Promise.all(tracked.slice(i, i + 50).map((e) => e.client.connect()))
    await until(() => tracked.every((e) => e.client.state === 'open'), 15_000, 'every client open')
    log(`${tracked.length} clients open over ${params.nodes} nodes`)

    await publisher.call('startPublishing', 'feed', params.rate)
    await until(() => tracked.every((e) => e.last !== null), 10_000, 'every client to receive the topic')

    const drains: RolloutResult['drains'] = []
    const rolloutStarted = Date.now()
    let startsMs = 0
    for (let i = 0; i < params.nodes; i++) {
      const starting = Date.now()
      const fresh = await start()
      balancer.add(fresh.port)
      await until(() => balancer.backends().some((b) => b.port === fresh.port && b.ready), 10_000, 'the new node ready')
      startsMs += Date.now() - starting
      const old = serving[i] as ClusterNode
      if (params.mode === 'drain') {
        const result = await old.call<DrainResult>('drain', { duration: params.drainMs })
        drains.push({ connections: result.connections, clean: result.clean, forced: result.forced, durationMs: result.durationMs })
        log(`node ${old.nodeId}: drained ${result.connections} connections in ${result.durationMs} ms`)
      }
      await old.call('close')
      balancer.remove(old.port)
      old.child.kill('SIGKILL')
      serving[i] = fresh
    }
    const rolloutMs = Date.now() - rolloutStarted
    log(`rollout done in ${rolloutMs} ms`)

    await until(() => tracked.every((e) => e.client.state === 'open'), 20_000, 'every client open again').catch((err: Error) => {
      const states: Record<string, number> = {}
      for (const e of tracked) states[e.client.state] = (states[e.client.state] ?? 0) + 1
      throw new Error(`${err.message}: states ${JSON.stringify(states)}, close codes ${JSON.stringify(closeCodes)}`)
    })
    await sleep(500)
    const stopped = await publisher.call<{ published: number, failed: number }>('stopPublishing')
    // Every client must catch up to the last offset any client saw.
    let final = 0
    await until(() => {
      final = Math.max(...tracked.map((e) => e.last ?? 0))
      return tracked.every((e) => e.last === final)
    }, 10_000, 'every client to reach the last offset').catch((err: Error) => log(err.message))
    const pace = params.mode === 'drain' && drains.length > 0
      ? Math.max(...drains.map((d) => d.connections)) / (params.drainMs / 1000)
      : null
    const laggards = tracked.filter((e) => e.last !== final)
    return {
      params,
      rolloutMs,
      startsMs,
      clientsOpenAtEnd: tracked.filter((e) => e.client.state === 'open').length,
      published: stopped.published,
      duplicates: tracked.reduce((n, e) => n + e.duplicates, 0),
      // A client short of the last offset is missing the difference too.
      missing: tracked.reduce((n, e) => n + e.missing, 0) + laggards.reduce((n, e) => n + (final - (e.last ?? 0)), 0),
      unrecovered: tracked.reduce((n, e) => n + e.unrecovered, 0),
      reconnects: reopens.length,
      reconnectPeakPerS: busiestWindow(reopens, 1000),
      drainPacePerS: pace,
      refusedMax: Math.max(...tracked.map((e) => e.refused)),
      refusedTotal: tracked.reduce((n, e) => n + e.refused, 0),
      closeCodes: { ...closeCodes },
      drains
    }
  } finally {
    await Promise.all(tracked.map((e) => e.client.close().catch(() => {})))
    await balancer.close()
    for (const fn of cleanups.reverse()) await fn()
  }
}

const ROOT = join(__dirname, '..')
const MARK_START = '<!-- rollout-results:start -->'
const MARK_END = '<!-- rollout-results:end -->'

function markdown (runs: RolloutResult[], quick: boolean): string {
  const machine = machineBasics(ROOT)
  const head = runs[0] as RolloutResult
  const lines = [
    `Measured ${new Date().toISOString().slice(0, 10)} on ${machine.cpu} (${machine.cores} cores), Node ${machine.node}, commit ${machine.commit}` +
      `${quick ? ', quick mode' : ''}: ${head.params.nodes} nodes and a publisher node on Redis, ${head.params.clients} clients (the project's client) ` +
      `behind a readiness-following balancer, one topic at ${head.params.rate} messages/s with history ${head.params.history}.`,
    '',
    '| | drain on | drain off (close all at once) |',
    '|---|---|---|'
  ]
  const on = runs.find((r) => r.params.mode === 'drain')
  const off = runs.find((r) => r.params.mode === 'off')
  const cell = (r: RolloutResult | undefined, f: (r: RolloutResult) => string): string => r === undefined ? 'not run' : f(r)
  const row = (name: string, f: (r: RolloutResult) => string): string => `| ${name} | ${cell(on, f)} | ${cell(off, f)} |`
  lines.push(
    row('drain duration per node', (r) => r.params.mode === 'drain' ? `${r.params.drainMs / 1000} s` : '0'),
    row('rollout time (3 nodes)', (r) => `${(r.rolloutMs / 1000).toFixed(1)} s, of which ${(r.startsMs / 1000).toFixed(1)} s starting new nodes`),
    row('clients connected at the end', (r) => `${r.clientsOpenAtEnd} of ${r.params.clients}`),
    row('messages published', (r) => String(r.published)),
    row('duplicates / gaps over all clients', (r) => `${r.duplicates} / ${r.missing}`),
    row('resubscriptions not recovered', (r) => String(r.unrecovered)),
    row('reconnects', (r) => String(r.reconnects)),
    row('busiest second of reconnects', (r) => String(r.reconnectPeakPerS)),
    row('drain pace (connections per node / duration)', (r) => r.drainPacePerS === null ? 'n/a' : `${r.drainPacePerS.toFixed(1)}/s`),
    row('upgrades refused: worst client / all clients', (r) => `${r.refusedMax} / ${r.refusedTotal}`),
    row('close codes seen by clients', (r) => Object.entries(r.closeCodes).map(([c, n]) => `${c}: ${n}`).join(', '))
  )
  return lines.join('\n')
}

async function main (): Promise<void> {
  const { values: args } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      'no-md': { type: 'boolean', default: false },
      out: { type: 'string', default: join(__dirname, 'results', 'rollout.json') },
      help: { type: 'boolean', default: false }
    }
  })
  if (args.help === true) {
    process.stdout.write(headerHelp(__filename) + '\n')
    return
  }
  const quick = args.quick === true
  const base = { nodes: 3, clients: 300, rate: 50, history: 5000 }
  const runs: RolloutResult[] = []
  for (const mode of ['drain', 'off'] as const) {
    const params: RolloutParams = { ...base, mode, drainMs: mode === 'off' ? 0 : quick ? 3000 : 10_000 }
    process.stderr.write(`rollout, drain ${mode === 'drain' ? `on (${params.drainMs} ms)` : 'off'}\n`)
    runs.push(await runRollout(params, (line) => process.stderr.write(`  ${line}\n`)))
  }
  mkdirSync(dirname(args.out as string), { recursive: true })
  writeFileSync(args.out as string, JSON.stringify({ quick, runs }, null, 2))
  const section = markdown(runs, quick)
  process.stdout.write(section + '\n')
  if (args['no-md'] !== true && !quick) writeBetweenMarkers(join(ROOT, 'BENCHMARKS.md'), MARK_START, MARK_END, section, (l) => process.stderr.write(l + '\n'))
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`${String((err as Error).stack ?? err)}\n`)
    process.exit(1)
  })
}
