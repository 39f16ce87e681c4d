// The soak run: the plugin under a steady mixed load for a bounded time, with a verdict on
// memory growth and on what must come back once the load is gone.
//
//   npm run soak                          10 minutes (or SOAK_SECONDS)
//   npm run soak -- --duration 60         what CI runs
//   npm run soak -- --seed 7 --out f.json fixed client lifetimes; every sample as JSON
//   SOAK_INJECT_LEAK=memory npm run soak -- --duration 60
//                                         self-check: the server leaks on purpose per connection
//                                         (memory, timer, fd, or several comma-separated, or 1
//                                         for all); the verdict must fail
//
// A server child (bench/soak-server.ts: Fastify, @fastify/jwt, the plugin with short timers
// and small limits from bench/soak-config.ts) runs compiled and with --expose-gc; this process
// drives it with some 45 clients a second of every kind (bench/soak-clients.ts): chatty,
// long-lived, idle, silent, stalled, dying, flooding, expiring, oversized, refused, greedy, and
// surges past maxConnections every 10 s. About 150 connections are open at a time, 250 (the
// cap) during a surge; the server opens some 2,300 a minute.
//
// 1. Priming: the same load for a quarter of the duration (3 to 15 s), then a drain, so that
//    what is created once (JIT code, pools, lazily built objects, the young generation at its
//    working size) exists before the baseline is taken.
// 2. Baseline sample, then the load for the duration; the child is sampled every second (every
//    2 s in runs over 2 minutes), after forced garbage collection.
// 3. Drain: the load stops, every client closes, and the server is polled until it is back at
//    its baseline (or 20 s passed); then the drained sample.
// 4. Verdict (bench/soak-report.ts): heap, external and RSS slopes after the first 20% of the
//    load within bounds; fds, handles, timers and the plugin's per-connection state back to
//    baseline; no client saw an outcome its kind may not have; no error logged by the server;
//    every limit and timer was reached.
//    Exit code 0 on a pass, 1 on a failure, 3 when the watchdog had to stop the run.

import { fork } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import jwt from '@fastify/jwt'
import Fastify from 'fastify'
import { BUILD_DIR, buildChildren } from './build'
import { Peer, sleep } from './ipc'
import { prng } from './payloads'
import { remote } from './scenarios'
import { LIFETIMES, Load, RATES, type Kind, type LoadTarget } from './soak-clients'
import { SOAK_PLUGIN_OPTIONS, type LogCensus, type SoakSample, type SoakServerSpec } from './soak-config'
import { drainChecks, summary, verdict, type SoakResult, type TimedSample } from './soak-report'
import type { SoakReady, SoakServerApi } from './soak-server'

const { values: args } = parseArgs({
  options: {
    duration: { type: 'string' },
    seed: { type: 'string' },
    out: { type: 'string' },
    help: { type: 'boolean', default: false }
  }
})

// Priming: a quarter of the run, 3 to 15 s. JIT code, V8's young generation and malloc's
// arenas grow for the first minute or two of load whatever the plugin does; the longer the
// run's window, the less that matters, and a short run would mostly measure it.
const PRIME_SHARE = 0.25
const PRIME_MIN_MS = 3000
const PRIME_MAX_MS = 15_000
const FIRST_SURGE_S = 3
const SURGE_EVERY_S = 10
const SURGE_HOLD_MS = 1000
// Clients alive at once, whatever happens: the machine has two cores.
const MAX_LIVE = 600
const DRAIN_CLIENTS_MS = 15_000
const DRAIN_SERVER_MS = 20_000

function log (msg: string): void {
  process.stderr.write(`${msg}\n`)
}

function durationSeconds (): number {
  const env = process.env.SOAK_SECONDS
  const raw = args.duration ?? (env === undefined || env === '' ? '600' : env)
  const s = Number(raw)
  if (!Number.isFinite(s) || s < 10 || s > 24 * 3600) throw new Error(`--duration / SOAK_SECONDS: seconds from 10 to 86400, got ${JSON.stringify(raw)}`)
  return s
}

function leakFlag (): SoakServerSpec['leak'] {
  const raw = process.env.SOAK_INJECT_LEAK ?? ''
  if (raw === '' || raw === '0') return []
  if (raw === '1' || raw === 'all') return ['memory', 'timer', 'fd']
  const kinds = raw.split(',').map((k) => k.trim())
  for (const k of kinds) if (k !== 'memory' && k !== 'timer' && k !== 'fd') throw new Error(`SOAK_INJECT_LEAK: memory, timer, fd, 1 or all; got ${JSON.stringify(raw)}`)
  return kinds as SoakServerSpec['leak']
}

async function startServer (spec: SoakServerSpec): Promise<{ peer: Peer, ready: SoakReady, exited: Promise<string> }> {
  const child = fork(join(BUILD_DIR, 'bench', 'soak-server.js'), [JSON.stringify(spec)], {
    execArgv: ['--expose-gc'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  const peer = new Peer('soak server', child)
  const exited = new Promise<string>((resolve) => child.once('exit', (code, signal) => resolve(`exited with code ${String(code)}, signal ${String(signal)}`)))
  const ready = await new Promise<SoakReady>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the soak server did not start within 30 s')), 30_000)
    child.on('message', (msg: { ready?: SoakReady }) => {
      if (msg.ready === undefined) return
      clearTimeout(timer)
      resolve(msg.ready)
    })
    exited.then((how) => {
      clearTimeout(timer)
      reject(new Error(`the soak server ${how} before it was ready`))
    }, () => {})
  })
  return { peer, ready, exited }
}

/** Runs the load for `ms`: every kind at its rate, and the surges. */
async function drive (load: Load, ms: number): Promise<void> {
  const kinds = Object.keys(RATES) as Array<keyof typeof RATES>
  const launched = new Map<Kind, number>(kinds.map((k) => [k, 0]))
  // Clients that chat for a while would take their longest lifetime to reach their steady
  // number, much of a short run's window: start with that number, their remaining lifetimes
  // spread evenly up to the longest.
  for (const [kind, [min, max]] of Object.entries(LIFETIMES) as Array<[keyof typeof RATES, [number, number]]>) {
    const steady = Math.round(RATES[kind] * (min + max) / 2000)
    for (let i = 0; i < steady; i++) load.launch(kind, MAX_LIVE, ((i + 0.5) / steady) * max)
  }
  const start = performance.now()
  let nextSurge = FIRST_SURGE_S
  while (performance.now() - start < ms && !load.stopped) {
    const elapsed = (performance.now() - start) / 1000
    // Each kind is due floor(elapsed × rate) launches so far: steady rates, no drift.
    for (const kind of kinds) {
      const due = Math.floor(elapsed * RATES[kind])
      for (let n = launched.get(kind) ?? 0; n < due; n++) load.launch(kind, MAX_LIVE)
      launched.set(kind, Math.max(due, launched.get(kind) ?? 0))
    }
    if (elapsed >= nextSurge) {
      nextSurge += SURGE_EVERY_S
      // Enough to pass the cap from wherever the load is now (the clients alive are about the
      // connections open), never more than the cap itself.
      const cap = SOAK_PLUGIN_OPTIONS.maxConnections
      const size = Math.min(cap, Math.max(30, cap - load.live + 30))
      load.surge(size, SURGE_HOLD_MS).catch((err: unknown) => log(`surge failed: ${String(err)}`))
    }
    await sleep(20)
  }
}

async function main (): Promise<void> {
  if (args.help === true) {
    const lines = readFileSync(__filename, 'utf8').split('\n')
    console.log(lines.slice(0, lines.findIndex((l) => !l.startsWith('//'))).map((l) => l.slice(3)).join('\n'))
    return
  }
  const durationS = durationSeconds()
  const leak = leakFlag()
  const seed = args.seed === undefined ? Date.now() % 1_000_000 : Number(args.seed)
  if (!Number.isInteger(seed)) throw new Error(`--seed: an integer, got ${JSON.stringify(args.seed)}`)
  const sampleMs = durationS <= 120 ? 1000 : 2000
  const compiled = buildChildren()
  if (compiled > 0) log(`compiled ${compiled} files for the server child`)
  const secret = randomBytes(32).toString('base64url')
  // Start-up has its own deadline (startServer); from here the run stops by itself whatever
  // happens: priming, load, drain, with room to spare.
  const server = await startServer({ secret, leak })
  const watchdog = setTimeout(() => {
    log('watchdog: the soak took too long, stopping')
    server.peer.kill()
    process.exit(3)
  }, durationS * 1000 + 120_000)
  const api = remote<SoakServerApi>(server.peer)
  const run: { loading: boolean, stopping: boolean, crashed: string | null } = { loading: true, stopping: false, crashed: null }
  server.exited.then((how) => { if (!run.stopping) run.crashed ??= `the server child ${how}` }, () => {})

  // Tokens are signed by @fastify/jwt with the app's secret, as the application would.
  const signer = Fastify({ logger: false })
  await signer.register(jwt, { secret })
  await signer.ready()
  // Seeded, so a run's client lifetimes can be replayed.
  const random = prng(seed)
  const target: LoadTarget = { port: server.ready.port, sign: (claims) => signer.jwt.sign(claims), random }
  log(`soak: ${durationS} s of load on pid ${server.ready.pid}, port ${server.ready.port}, seed ${seed}, sample every ${sampleMs} ms` +
    (leak.length > 0 ? `, INJECTED LEAK: ${leak.join(', ')}` : ''))

  const sample = async (t: number, phase: TimedSample['phase']): Promise<TimedSample> =>
    ({ ...(await api.call('sample', {}, 15_000)), t, phase })
  const quiet = async (baseline: SoakSample | null): Promise<TimedSample> => {
    const deadline = performance.now() + DRAIN_SERVER_MS
    for (;;) {
      const s = await sample(0, 'drained')
      const ok = baseline === null ? s.registry === 0 && s.closing === 0 : drainChecks(baseline, s).every((c) => c.ok)
      if (ok || performance.now() > deadline) return s
      await sleep(500)
    }
  }

  // 1. Priming.
  const prime = new Load(target)
  const primeMs = Math.min(PRIME_MAX_MS, Math.max(PRIME_MIN_MS, durationS * 1000 * PRIME_SHARE))
  await drive(prime, primeMs)
  await prime.drain(DRAIN_CLIENTS_MS)
  await quiet(null)
  await sleep(200)
  const baseline: TimedSample = { ...(await sample(0, 'baseline')) }
  log(`primed with ${prime.tally.launched} clients; baseline: heap ${(baseline.heapUsed / 2 ** 20).toFixed(1)} MiB, rss ${(baseline.rss / 2 ** 20).toFixed(1)} MiB, ${baseline.fds} fds`)

  // 2. Load, sampled.
  const load = new Load(target)
  const samples: TimedSample[] = [baseline]
  const start = performance.now()
  const sampler = (async () => {
    let next = start + sampleMs
    while (run.loading && run.crashed === null) {
      await sleep(Math.max(0, next - performance.now()))
      next += sampleMs
      if (!run.loading) break
      const s = await sample((performance.now() - start) / 1000, 'load')
      samples.push(s)
      if (samples.length % Math.round(30_000 / sampleMs) === 0) {
        log(`t=${s.t.toFixed(0)} s  open ${s.registry}  heap ${(s.heapUsed / 2 ** 20).toFixed(1)} MiB  rss ${(s.rss / 2 ** 20).toFixed(1)} MiB  fds ${s.fds}  clients ${load.live}`)
      }
    }
  })()
  await Promise.race([drive(load, durationS * 1000), server.exited])
  run.loading = false
  await sampler.catch((err: unknown) => { run.crashed ??= `sampling failed: ${String(err)}` })

  // 3. Drain.
  const leftRunning = await load.drain(DRAIN_CLIENTS_MS)
  let drained = baseline
  let census: LogCensus = {}
  if (run.crashed === null) {
    drained = await quiet(baseline)
    census = await api.call('census', {}, 15_000)
    run.stopping = true
    await api.call('shutdown', {}, 15_000).catch(() => {})
  }
  await server.peer.stop()
  await signer.close()
  clearTimeout(watchdog)

  // 4. Verdict.
  const result: SoakResult = { durationS, samples: [...samples, { ...drained, phase: 'drained' }], baseline, drained, tally: load.tally, census, crashed: run.crashed, leftRunning }
  const checks = verdict(result)
  console.log(`\nsoak: ${durationS} s, seed ${seed}, plugin options ${JSON.stringify(SOAK_PLUGIN_OPTIONS)}\n`)
  console.log(summary(result, checks))
  const failed = checks.filter((c) => !c.ok && c.warnOnly !== true)
  console.log(`\n${failed.length === 0 ? 'PASS' : `FAIL (${failed.map((c) => c.name).join('; ')})`}`)
  if (args.out !== undefined) {
    writeFileSync(args.out, JSON.stringify({
      durationS,
      seed,
      leak,
      options: SOAK_PLUGIN_OPTIONS,
      checks,
      outcomes: Object.fromEntries([...load.tally.outcomes].map(([k, v]) => [k, Object.fromEntries(v)])),
      census,
      samples: result.samples
    }, null, 1) + '\n')
  }
  process.exitCode = failed.length === 0 ? 0 : 1
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
