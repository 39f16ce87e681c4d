// Scale (issue 17): many idle connections on one server process, and broadcast latency, for
// raw ws, bare @fastify/websocket and the plugin with its defaults, side by side in one run.
//
//   npm run bench:scale                      full run, under 10 minutes; updates BENCHMARKS.md
//   npm run bench:scale -- --quick           under a minute: 10,000 idle, 2,000 broadcast, short windows
//   npm run bench:scale -- --no-md           leave BENCHMARKS.md alone
//   npm run bench:scale -- --out FILE        figures to FILE (default bench/results/scale.json)
//   npm run bench:scale -- --fit-limit       when the open-file limit cannot be raised to what the
//                                            idle target needs, measure at the largest count it allows
//   npm run bench:scale -- --connections N   idle connections (default 100,000; quick 10,000)
//   npm run bench:scale -- --only idle       one phase: idle or broadcast
//   npm run bench:scale -- --systems a,b     some systems: raw-ws, bare, plugin
//   npm run bench:scale -- --profile plugin  CPU-profile that system's windows and summarize them
//                                            (bench/profile.ts; a profiled run's figures are not for the table)
//   npm run bench:scale -- --heap plugin     heap snapshots of that system at each memory point, and
//                                            the heap per connection by kind of object (bench/scale-heap.ts)
//   (with --connections, --only, --systems, --profile or --heap BENCHMARKS.md is left alone)
//
// Each system in each phase gets a fresh server child (bench/scale-server.ts, run with
// --expose-gc) and fresh client children (bench/scale-clients.ts, raw TCP sockets, at most
// 17,000 each). Every connection binds its own source address of 127.0.0.0/8, 50 to an
// address (the plugin's default cap is 100 per IP), and presents its own JWT.
//
// Idle phase: a warm-up, then a ramp in steps to 50 %, 75 % and 100 % of the target, memory
// after forced GC at each step (per-connection heap and RSS are the slopes); the setup rate
// and the server's CPU per connection over the ramp; then two steady windows of one ping
// interval (30 s) each: first the longest event-loop block (monitorEventLoopDelay at 1 ms),
// then CPU without that monitor, whose own timer would count as CPU.
// Broadcast phase: every client flags every sequence number; latency from the stamp taken
// just before the broadcast call to receipt, on the machine-wide monotonic clock, into HDR
// histograms (µs) merged over the clients.
//
// The server child needs one open file per connection: with a hard limit below that the run
// starts it through `ulimit -n` in a shell, and fails with a clear message when that is not
// permitted (CAP_SYS_RESOURCE), unless --fit-limit is given.

import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { parseArgs } from 'node:util'
import { decodeFromCompressedBase64 } from 'hdr-histogram-js'
import { BUILD_DIR, buildChildren } from './build'
import { Peer, sleep, started } from './ipc'
import { headerHelp, machineBasics, packageVersion, writeBetweenMarkers } from './markdown'
import { summarizeProfile } from './profile'
import { heapDiff } from './scale-heap'
import {
  cannotRaise, clientCount, FD_RESERVE, fileLimits, FULL, JWT_SECRET, PHASES, PING_INTERVAL_MS, QUICK, SCALE_SYSTEMS,
  type MemoryPoint, type Phase, type ScaleParams, type ScaleServerReady, type ScaleSystem, type ServerWindow
} from './scale-common'
import type { ScaleClientsApi } from './scale-clients'
import { markdownSection, rows, textTable, type BroadcastResult, type IdleResult, type Latency, type ScaleResults, type Window } from './scale-report'
import type { ScaleServerApi } from './scale-server'
import { remote, type Remote } from './scenarios'
import { fitLine } from './stats'

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    'no-md': { type: 'boolean', default: false },
    out: { type: 'string', default: join(__dirname, 'results', 'scale.json') },
    'fit-limit': { type: 'boolean', default: false },
    connections: { type: 'string' },
    only: { type: 'string' },
    systems: { type: 'string' },
    profile: { type: 'string' },
    heap: { type: 'string' },
    help: { type: 'boolean', default: false }
  }
})

const ROOT = join(__dirname, '..')
const PROFILE_DIR = join(__dirname, 'results', 'profiles')
const MARK_START = '<!-- scale-results:start -->'
const MARK_END = '<!-- scale-results:end -->'

const quick = args.quick === true
const params: ScaleParams = structuredClone(quick ? QUICK : FULL)
const live = new Set<Peer>()
// Source addresses and users are numbered over the whole run: no phase reuses an address.
const counters = { address: 0, user: 0 }

function log (msg: string): void {
  process.stderr.write(`${msg}\n`)
}

function killAll (): void {
  for (const peer of live) peer.kill()
}

/** Busy and total CPU time of the machine so far, from /proc/stat, in jiffies. */
function machineTicks (): { busy: number, total: number } {
  const fields = readFileSync('/proc/stat', 'latin1').split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number)
  const total = fields.reduce((a, b) => a + b, 0)
  return { busy: total - fields[3] - fields[4], total }
}

function coresBusy (from: { busy: number, total: number }, cores: number): number {
  const now = machineTicks()
  const total = now.total - from.total
  return total > 0 ? cores * (now.busy - from.busy) / total : 0
}

/** Spawns a bench child with IPC; through `ulimit -n` in a shell when it needs more files than the hard limit. */
function spawnChild (file: string, argv: string[], execArgv: string[], nofile: number): ChildProcess {
  const command = [process.execPath, ...execArgv, join(BUILD_DIR, 'bench', file), ...argv]
  const stdio: ['ignore', 'inherit', 'inherit', 'ipc'] = ['ignore', 'inherit', 'inherit', 'ipc']
  if (nofile <= fileLimits().hard) return spawn(command[0], command.slice(1), { stdio })
  return spawn('sh', ['-c', `ulimit -n ${nofile} && exec "$@"`, 'sh', ...command], { stdio })
}

interface Server {
  peer: Peer
  api: Remote<ScaleServerApi>
  ready: ScaleServerReady
}

async function startServer (system: ScaleSystem, phase: Phase, nofile: number): Promise<Server> {
  const spec = { system, profilePrefix: args.profile === system ? join(PROFILE_DIR, `scale-${phase}-${system}`) : undefined }
  const peer = new Peer(`server ${system}`, spawnChild('scale-server.js', [JSON.stringify(spec)], ['--expose-gc'], nofile))
  live.add(peer)
  try {
    const ready = await started<ScaleServerReady>(peer, 30_000)
    if (ready.nofile < nofile) throw new Error(`server ${system} runs with an open-file limit of ${ready.nofile}, below the ${nofile} it needs`)
    return { peer, api: remote<ScaleServerApi>(peer), ready }
  } catch (err) {
    peer.kill()
    live.delete(peer)
    throw err
  }
}

async function stop (peer: Peer): Promise<void> {
  await peer.stop(10_000)
  live.delete(peer)
}

/** The client children as one: connections shared out, figures added up. */
class Clients {
  readonly #peers: Peer[]
  readonly #all: Array<Remote<ScaleClientsApi>>

  constructor (count: number) {
    this.#peers = Array.from({ length: count }, (_, i) => {
      const peer = new Peer(`clients ${i + 1}`, spawnChild('scale-clients.js', [], [], params.perClient + FD_RESERVE))
      live.add(peer)
      return peer
    })
    this.#all = this.#peers.map((p) => remote<ScaleClientsApi>(p))
  }

  /** Opens `count` more connections to `port`, shared evenly; throws when one failed. */
  async connect (port: number, count: number): Promise<{ wallMs: number, cpuUs: number }> {
    const n = this.#all.length
    const concurrency = Math.max(10, Math.ceil(2 * params.concurrency / n))
    const at = performance.now()
    const results = await Promise.all(this.#all.map((client, c) => {
      const share = Math.floor(count / n) + (c < count % n ? 1 : 0)
      const firstAddress = counters.address
      const firstUser = counters.user
      counters.address += Math.ceil(share / params.perAddress)
      counters.user += share
      const timeoutMs = 60_000 + share * 5
      return client.call('connect', { port, count: share, firstAddress, perAddress: params.perAddress, firstUser, secret: JWT_SECRET, concurrency, timeoutMs }, timeoutMs + 10_000)
    }))
    const failed = results.reduce((s, r) => s + r.failed, 0)
    if (failed > 0) throw new Error(`${failed} of ${count} connections failed: ${results.find((r) => r.firstError !== null)?.firstError ?? ''}`)
    return { wallMs: performance.now() - at, cpuUs: results.reduce((s, r) => s + r.cpuUs, 0) }
  }

  async mark (): Promise<void> {
    await Promise.all(this.#all.map((c) => c.call('mark')))
  }

  async measure (): Promise<{ cpuUs: number, pings: number, lost: number, closes: number, open: number }> {
    const parts = await Promise.all(this.#all.map((c) => c.call('measure')))
    const sum = (k: 'cpuUs' | 'pings' | 'lost' | 'closes' | 'open'): number => parts.reduce((s, p) => s + p[k], 0)
    return { cpuUs: sum('cpuUs'), pings: sum('pings'), lost: sum('lost'), closes: sum('closes'), open: sum('open') }
  }

  async expect (expected: number, from: number): Promise<void> {
    await Promise.all(this.#all.map((c) => c.call('expect', { expected, from })))
  }

  async progress (): Promise<number> {
    return (await Promise.all(this.#all.map((c) => c.call('progress')))).reduce((a, b) => a + b, 0)
  }

  async result (): Promise<{ received: number, duplicates: number, missing: number, other: number, cpuUs: number, lastUs: number[], latencyMs: Latency }> {
    const parts = await Promise.all(this.#all.map((c) => c.call('result', {}, 30_000)))
    const histogram = decodeFromCompressedBase64(parts[0].histogram)
    for (const p of parts.slice(1)) histogram.add(decodeFromCompressedBase64(p.histogram))
    const ms = (us: number): number => us / 1000
    const sum = (k: 'received' | 'duplicates' | 'missing' | 'other' | 'cpuUs'): number => parts.reduce((s, p) => s + p[k], 0)
    return {
      received: sum('received'),
      duplicates: sum('duplicates'),
      missing: sum('missing'),
      other: sum('other'),
      cpuUs: sum('cpuUs'),
      lastUs: parts[0].lastUs.map((_, seq) => Math.max(...parts.map((p) => p.lastUs[seq]))),
      latencyMs: {
        p50: ms(histogram.getValueAtPercentile(50)),
        p90: ms(histogram.getValueAtPercentile(90)),
        p99: ms(histogram.getValueAtPercentile(99)),
        max: ms(histogram.maxValue),
        mean: ms(histogram.mean)
      }
    }
  }

  /** Resets every connection, then ends the children. */
  async stop (): Promise<void> {
    await Promise.all(this.#all.map((c) => c.call('closeAll', {}, 20_000).catch(() => {})))
    await Promise.all(this.#peers.map(stop))
  }
}

const pct = (cpuUs: number, wallMs: number): number => 100 * cpuUs / (wallMs * 1000)

/** The idle phase of one system: ramp with memory points, then the CPU window and the event-loop window. */
async function idlePhase (system: ScaleSystem, target: number, cores: number): Promise<IdleResult> {
  const p = params.idle
  const server = await startServer(system, 'idle', target + FD_RESERVE)
  const clients = new Clients(clientCount(target, params))
  try {
    await clients.connect(server.ready.port, p.warmup)
    await server.api.call('waitConnections', { count: p.warmup, timeoutMs: 20_000 })
    await sleep(200)
    const setup = { connections: 0, wallMs: 0, serverCpuUs: 0, clientsCpuUs: 0 }
    const points: MemoryPoint[] = []
    const snapshots: string[] = []
    let open = p.warmup
    for (const [k, share] of p.shares.entries()) {
      const goal = Math.round(share * target)
      if (goal > open) {
        await server.api.call('mark', { label: `setup-${k + 1}` })
        const c = await clients.connect(server.ready.port, goal - open)
        const held = await server.api.call('waitConnections', { count: goal, timeoutMs: 20_000 }, 30_000)
        const s = await server.api.call('measure')
        if (held < goal) throw new Error(`the server holds ${held} connections, ${goal} were opened`)
        setup.connections += goal - open
        setup.wallMs += s.wallMs
        setup.serverCpuUs += s.cpuUs
        setup.clientsCpuUs += c.cpuUs
        open = goal
      }
      points.push(await server.api.call('memory', {}, 60_000))
      if (args.heap === system) snapshots.push(await server.api.call('heapSnapshot', { file: join(PROFILE_DIR, `scale-heap-${system}-${open}.heapsnapshot`) }, 300_000))
      log(`  ${system}: ${open.toLocaleString('en-US')} connections, heap ${(points[points.length - 1].heapUsed / 2 ** 20).toFixed(0)} MiB, rss ${(points[points.length - 1].rss / 2 ** 20).toFixed(0)} MiB`)
    }
    await sleep(1000)
    const steady = async (eld: boolean): Promise<{ window: Window, eld: ServerWindow['eld'] }> => {
      const ms = eld ? p.eldWindowMs : p.cpuWindowMs
      await clients.mark()
      const ticks = machineTicks()
      const s = await server.api.call('window', { ms, eld, label: eld ? 'idle-eld' : 'idle-cpu' }, ms + 30_000)
      const busy = coresBusy(ticks, cores)
      const c = await clients.measure()
      const serverPct = pct(s.cpuUs, s.wallMs)
      const clientsPct = pct(c.cpuUs, s.wallMs)
      return {
        window: {
          ms: s.wallMs,
          serverCpuPercent: serverPct,
          serverSystemPercent: pct(s.systemUs, s.wallMs),
          clientsCpuPercent: clientsPct,
          pingsPerConnection: c.pings / open,
          gcCount: s.gc?.count ?? 0,
          gcTotalMs: s.gc?.totalMs ?? 0,
          gcMaxMs: s.gc?.maxMs ?? 0,
          gcMaxKind: s.gc?.maxKind ?? '',
          otherCores: Math.max(0, busy - (serverPct + clientsPct) / 100)
        },
        eld: s.eld
      }
    }
    // The event-loop window first: V8's memory reducer runs a few full collections in the
    // half-minute after the ramp, and those belong among the blocks, not in the steady CPU figure.
    log(`  ${system}: steady windows, ${(p.eldWindowMs / 1000).toFixed(0)} s with the event-loop monitor, then ${(p.cpuWindowMs / 1000).toFixed(0)} s for CPU`)
    const withEld = await steady(true)
    const cpu = await steady(false)
    const held = await server.api.call('waitConnections', { count: target, timeoutMs: 0 })
    const end = await clients.measure()
    if (snapshots.length > 1) {
      console.log(`\n${system}, heap between ${points[0].connections} and ${points[points.length - 1].connections} connections:\n` +
        heapDiff(snapshots[0], snapshots[snapshots.length - 1], points[points.length - 1].connections - points[0].connections))
    }
    const fit = (key: 'heapUsed' | 'rss'): number => fitLine(points.map((pt) => [pt.connections, pt[key]] as const)).slope
    const e = withEld.eld ?? { maxMs: NaN, p99Ms: NaN, meanMs: NaN, maxWithoutGcMs: NaN }
    return {
      system,
      target,
      held,
      clientProcesses: clientCount(target, params),
      points,
      heapPerConnection: fit('heapUsed'),
      rssPerConnection: fit('rss'),
      setup: {
        ...setup,
        perSecond: setup.connections / (setup.wallMs / 1000),
        serverUsPerConnection: setup.serverCpuUs / setup.connections,
        clientsUsPerConnection: setup.clientsCpuUs / setup.connections
      },
      cpu: cpu.window,
      eld: { ...withEld.window, ...e },
      lost: Math.max(target - held, target - end.open)
    }
  } finally {
    await clients.stop()
    await stop(server.peer)
  }
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/** The broadcast phase of one system. */
async function broadcastPhase (system: ScaleSystem): Promise<BroadcastResult> {
  const p = params.broadcast
  const server = await startServer(system, 'broadcast', p.connections + FD_RESERVE)
  const clients = new Clients(clientCount(p.connections, params))
  try {
    await clients.connect(server.ready.port, p.connections)
    const held = await server.api.call('waitConnections', { count: p.connections, timeoutMs: 20_000 })
    if (held < p.connections) throw new Error(`the server holds ${held} connections, ${p.connections} were opened`)
    await sleep(500)
    const total = p.warmup + p.count
    await clients.expect(total, p.warmup)
    const series = await server.api.call('broadcastSeries', { warmup: p.warmup, count: p.count, intervalMs: p.intervalMs, bytes: p.bytes }, total * p.intervalMs + 60_000)
    const expected = total * p.connections
    const deadline = performance.now() + 20_000
    while (performance.now() < deadline && await clients.progress() < expected) await sleep(50)
    const r = await clients.result()
    const recorded = series.sent.filter((s) => s.seq >= p.warmup)
    const fanOut = recorded.map((s) => (r.lastUs[s.seq] - s.t) / 1000)
    const deliveries = recorded.reduce((n, s) => n + s.deliveries, 0)
    return {
      system,
      connections: p.connections,
      broadcasts: total,
      recorded: p.count,
      expected,
      received: r.received,
      duplicates: r.duplicates,
      missing: r.missing,
      other: r.other,
      latencyMs: r.latencyMs,
      fanOutMs: { median: median(fanOut), max: Math.max(...fanOut) },
      callMs: median(recorded.map((s) => s.callUs / 1000)),
      loopPerSecond: deliveries / (recorded.reduce((n, s) => n + s.callUs, 0) / 1e6),
      endToEndPerSecond: median(fanOut.map((ms) => p.connections / (ms / 1000))),
      serverUsPerDelivery: series.cpuUs / deliveries,
      // The clients' CPU from expect() to now: the whole series, warm-up and drain included.
      clientsCpuPercent: pct(r.cpuUs, (total + 1) * p.intervalMs)
    }
  } finally {
    await clients.stop()
    await stop(server.peer)
  }
}

function machine (): Record<string, string | number> {
  const { commit, ...basics } = machineBasics(ROOT)
  return { ...basics, ws: packageVersion('ws'), fastify: packageVersion('fastify'), fastifyWebsocket: packageVersion('@fastify/websocket'), commit }
}

async function main (): Promise<void> {
  if (args.help === true) {
    process.stdout.write(headerHelp(__filename) + '\n')
    return
  }
  const phases = args.only === undefined ? [...PHASES] : args.only.split(',') as Phase[]
  if (phases.some((ph) => !(PHASES as readonly string[]).includes(ph))) throw new Error(`--only takes ${PHASES.join(', ')}`)
  const systems = args.systems === undefined ? [...SCALE_SYSTEMS] : args.systems.split(',') as ScaleSystem[]
  if (systems.some((s) => !(SCALE_SYSTEMS as readonly string[]).includes(s))) throw new Error(`--systems takes ${SCALE_SYSTEMS.join(', ')}`)
  if (args.profile !== undefined && !(SCALE_SYSTEMS as readonly string[]).includes(args.profile)) throw new Error(`--profile takes one of ${SCALE_SYSTEMS.join(', ')}`)
  if (args.connections !== undefined) {
    const n = Number(args.connections)
    if (!Number.isInteger(n) || n < 2 * params.idle.warmup) throw new Error(`--connections takes an integer of at least ${2 * params.idle.warmup}`)
    params.idle.connections = n
  }

  // The server child needs one file per connection; say so now, not with EMFILE half-way.
  const asked = params.idle.connections
  const { hard } = fileLimits()
  let reason: string | null = null
  if (phases.includes('idle')) {
    reason = cannotRaise(asked + FD_RESERVE)
    if (reason !== null) {
      const fits = Math.floor((hard - FD_RESERVE) / 500) * 500
      if (args['fit-limit'] !== true) {
        throw new Error(`cannot hold ${asked.toLocaleString('en-US')} connections in one server process: ${reason}. ` +
          `Run where the limit can be raised (root with CAP_SYS_RESOURCE, or a hard limit of ${asked + FD_RESERVE} or more), ` +
          `or pass --fit-limit to measure at ${fits.toLocaleString('en-US')} connections, the most this limit allows.`)
      }
      params.idle.connections = fits
      log(`warning: ${reason}; measuring at ${fits.toLocaleString('en-US')} idle connections instead of ${asked.toLocaleString('en-US')} (--fit-limit)`)
    }
  }
  if (cannotRaise(params.broadcast.connections + FD_RESERVE) !== null || cannotRaise(params.perClient + FD_RESERVE) !== null) {
    throw new Error(`the open-file limit (${hard}) is too low even for ${params.perClient} connections per client child and ${params.broadcast.connections} broadcast connections`)
  }
  if (args.heap !== undefined && !(SCALE_SYSTEMS as readonly string[]).includes(args.heap)) throw new Error(`--heap takes one of ${SCALE_SYSTEMS.join(', ')}`)
  if (args.profile !== undefined || args.heap !== undefined) {
    // Only this benchmark's own files: bench/run.ts keeps its profiles in the same folder.
    mkdirSync(PROFILE_DIR, { recursive: true })
    for (const file of readdirSync(PROFILE_DIR).filter((f) => f.startsWith('scale-'))) rmSync(join(PROFILE_DIR, file), { force: true })
  }

  const begun = performance.now()
  const watchdog = setTimeout(() => {
    log('watchdog: the run took too long, stopping')
    killAll()
    process.exit(3)
  }, quick ? 240_000 : 30 * 60_000)
  const compiled = buildChildren()
  if (compiled > 0) log(`compiled ${compiled} files for the child processes`)
  const ticks = machineTicks()
  await sleep(1000)
  const cores = machineBasics(ROOT).cores
  const machineBusy = coresBusy(ticks, cores)
  log(`machine busy with other work: ${machineBusy.toFixed(2)} cores`)
  if (machineBusy > 0.25) log('warning: the machine is not idle; figures will be noisy')

  const results: ScaleResults = {
    meta: { date: '', mode: quick ? 'quick' : 'full', durationS: 0, machine: machine(), machineBusy },
    params,
    limit: { asked, measured: params.idle.connections, fileLimit: hard, reason },
    idle: [],
    broadcast: [],
    failures: []
  }
  for (const phase of phases) {
    for (const system of systems) {
      const t0 = performance.now()
      log(`${phase} ${system}`)
      try {
        // A lost connection or a delivery missing, doubled or stray fails the run; its figures stay in the record.
        if (phase === 'idle') {
          const r = await idlePhase(system, params.idle.connections, cores)
          results.idle.push(r)
          if (r.lost > 0) results.failures.push(`idle ${system}: ${r.lost} of ${r.target} connections lost`)
        } else {
          const r = await broadcastPhase(system)
          results.broadcast.push(r)
          if (r.received !== r.expected || r.duplicates + r.other > 0) {
            results.failures.push(`broadcast ${system}: ${r.received} of ${r.expected} deliveries, ${r.duplicates} doubled, ${r.other} stray`)
          }
        }
      } catch (err) {
        const msg = `${phase} ${system}: ${err instanceof Error ? err.message : String(err)}`
        results.failures.push(msg)
        log(`FAILED ${msg}`)
      }
      log(`${phase} ${system} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
    }
  }
  clearTimeout(watchdog)
  results.meta.date = new Date().toISOString().slice(0, 16).replace('T', ' ') + ' UTC'
  results.meta.durationS = Math.round((performance.now() - begun) / 1000)

  console.log(`\n${textTable(rows(results, PING_INTERVAL_MS))}\n`)
  for (const f of results.failures) console.log(`FAILED: ${f}`)
  console.log(`${results.meta.mode} run in ${results.meta.durationS} s`)
  const out = args.out as string
  mkdirSync(dirname(out), { recursive: true })
  writeFileSync(out, JSON.stringify(results, null, 1) + '\n')
  log(`figures written to ${out}`)
  const custom = args.connections !== undefined || args.only !== undefined || args.systems !== undefined || args.profile !== undefined || args.heap !== undefined
  if (!quick && !custom && args['no-md'] !== true) {
    writeBetweenMarkers(join(ROOT, 'BENCHMARKS.md'), MARK_START, MARK_END, markdownSection(results, PING_INTERVAL_MS), log)
  }
  if (args.profile !== undefined) {
    for (const file of readdirSync(PROFILE_DIR).filter((f) => f.startsWith('scale-') && f.endsWith('.cpuprofile')).sort()) {
      const summary = summarizeProfile(join(PROFILE_DIR, file))
      writeFileSync(join(PROFILE_DIR, file.replace(/\.cpuprofile$/, '.txt')), summary + '\n')
      console.log(`\n${summary}`)
    }
  }
  if (results.failures.length > 0) process.exitCode = 1
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err)
  killAll()
  process.exit(1)
})
