// The soak's verdict and its printout: memory slopes after the warm-up, everything that must
// come back to its baseline once the load is gone, what the clients saw, and what the server
// logged. Pure functions of the samples, so the verdict can be read (and re-derived) from the
// JSON that `--out` writes.

import { KINDS, type Kind, type Tally } from './soak-clients'
import type { LogCensus, SoakSample } from './soak-config'
import { fitLine } from './stats'

const MiB = 1024 * 1024

/** A bound on a memory series: `perMinute` of steady growth plus a one-time `allowance`. */
export interface GrowthBound {
  perMinute: number
  allowance: number
}

/**
 * Memory bounds. The least-squares slope over the window after the warm-up must stay below
 * `perMinute + allowance / window` (window in minutes): a steady rate, plus a fixed amount of
 * growth that a process still warming up may show in any window, whatever its length.
 *
 * Rates. The load opens about 2,300 connections a minute (some 40 a second, most short-lived),
 * so 1 MiB/min of heap is about 450 bytes per connection: less than one retained closure with
 * its context, a Map entry keyed by a UUID, or a child logger. External memory (Buffers) gets
 * half that: it stays within 0.02 MiB of its level on a clean run. RSS gets twice the heap's:
 * it lags the heap (V8 keeps freed pages, malloc keeps its arenas at their high-water mark).
 * Ten clean minutes measured 0.04 MiB/min of heap and 0.16 MiB/min of RSS.
 *
 * Allowances. JIT code, V8's old space and its committed pages, and malloc's arenas keep
 * growing for the first minute or two of load, priming or not; a clean 60-second run still
 * shows about 0.4 MiB of heap and 2 MiB of RSS growth in its 48-second window, a 15-second run
 * about 0.2 MiB and 2 MiB in 12 seconds. The allowances are twice that. They matter only in
 * short runs: at 10 minutes they add a twentieth to the rate, at 60 s they let RSS grow by
 * 7 MiB/min, so there the heap and external bounds carry the verdict, and at 15 s only gross
 * leaks fail.
 */
export const BOUNDS = Object.freeze({
  heap: Object.freeze({ perMinute: 1 * MiB, allowance: 0.5 * MiB }),
  external: Object.freeze({ perMinute: 0.5 * MiB, allowance: 0.25 * MiB }),
  rss: Object.freeze({ perMinute: 2 * MiB, allowance: 4 * MiB })
})

/** The slope bound, per minute, for a window of `windowMinutes`. */
export function slopeBound (bound: GrowthBound, windowMinutes: number): number {
  return bound.perMinute + bound.allowance / windowMinutes
}

/** The share of the load phase left out of the slopes: start-up growth (JIT, pools, caches). */
export const WARM_UP = 0.2

/** A sample with the orchestrator's clock: seconds since the load began. */
export interface TimedSample extends SoakSample {
  t: number
  phase: 'baseline' | 'load' | 'drained'
}

export interface Check {
  name: string
  ok: boolean
  detail: string
  /** Informational: reported, never fails the run. */
  warnOnly?: boolean
}

export interface SoakResult {
  durationS: number
  samples: TimedSample[]
  baseline: TimedSample
  drained: TimedSample
  tally: Tally
  census: LogCensus
  /** Non-null when the server child died before the end. */
  crashed: string | null
  leftRunning: number
}

interface Series {
  name: string
  unit: 'MiB' | 'n'
  pick: (s: TimedSample) => number
}

const SERIES: readonly Series[] = [
  { name: 'rss', unit: 'MiB', pick: (s) => s.rss },
  { name: 'rss anonymous', unit: 'MiB', pick: (s) => s.rssAnon },
  { name: 'rss file-backed', unit: 'MiB', pick: (s) => s.rssFile },
  { name: 'heapUsed', unit: 'MiB', pick: (s) => s.heapUsed },
  { name: 'heapUsed without code', unit: 'MiB', pick: (s) => s.heapUsed - (s.spaces.code_space ?? 0) },
  { name: 'heapTotal', unit: 'MiB', pick: (s) => s.heapTotal },
  { name: 'external', unit: 'MiB', pick: (s) => s.external },
  { name: 'file descriptors', unit: 'n', pick: (s) => s.fds },
  { name: 'timers (all, async_hooks)', unit: 'n', pick: (s) => s.live.Timeout ?? 0 },
  { name: 'active resources (ref\'d)', unit: 'n', pick: (s) => sum(s.active) },
  { name: 'TCP sockets (active)', unit: 'n', pick: (s) => s.active.TCPSocketWrap ?? 0 },
  { name: 'registry size', unit: 'n', pick: (s) => s.registry },
  { name: 'websocketServer.clients', unit: 'n', pick: (s) => s.wsClients },
  { name: 'close.closing', unit: 'n', pick: (s) => s.closing },
  { name: 'heartbeat.tracked', unit: 'n', pick: (s) => s.heartbeatTracked },
  { name: 'message buckets', unit: 'n', pick: (s) => s.buckets },
  { name: 'delivery.byUser keys', unit: 'n', pick: (s) => s.deliveryUsers },
  { name: 'refusedByUser keys', unit: 'n', pick: (s) => s.refusedUsers },
  { name: 'frame violation keys', unit: 'n', pick: (s) => s.frameUsers + s.frameConnections },
  { name: 'server CPU (share of a core)', unit: 'n', pick: (s) => s.wallMs > 0 ? s.cpuMs / s.wallMs : 0 },
  { name: 'event-loop max delay ms', unit: 'n', pick: (s) => s.loopMaxMs }
]

function sum (counts: Record<string, number>): number {
  let n = 0
  for (const v of Object.values(counts)) n += v
  return n
}

/** Samples of the load phase after the warm-up. */
export function steadySamples (r: Pick<SoakResult, 'samples' | 'durationS'>): TimedSample[] {
  return r.samples.filter((s) => s.phase === 'load' && s.t >= r.durationS * WARM_UP)
}

/** Least-squares slope per minute of `pick` over the steady samples. */
export function slopePerMinute (steady: readonly TimedSample[], pick: (s: TimedSample) => number): number {
  return fitLine(steady.map((s) => [s.t / 60, pick(s)] as const)).slope
}

/**
 * The slope per minute with the number of open connections held constant: y = a + b·t + c·n.
 * Reported beside the plain slope, which is the verdict; when they disagree, the growth went
 * with the number of connections, not with time.
 */
export function adjustedSlopePerMinute (steady: readonly TimedSample[], pick: (s: TimedSample) => number): number {
  const n = steady.length
  const mean = (f: (s: TimedSample) => number): number => steady.reduce((a, s) => a + f(s), 0) / n
  const mt = mean((s) => s.t / 60)
  const mc = mean((s) => s.registry)
  const my = mean(pick)
  let stt = 0; let scc = 0; let stc = 0; let sty = 0; let scy = 0
  for (const s of steady) {
    const t = s.t / 60 - mt
    const c = s.registry - mc
    const y = pick(s) - my
    stt += t * t; scc += c * c; stc += t * c; sty += t * y; scy += c * y
  }
  const det = stt * scc - stc * stc
  return det === 0 ? sty / stt : (scc * sty - stc * scy) / det
}

function sameCounts (a: Record<string, number>, b: Record<string, number>): string | null {
  const diffs: string[] = []
  for (const key of new Set([...Object.keys(a), ...Object.keys(b)])) {
    if ((a[key] ?? 0) !== (b[key] ?? 0)) diffs.push(`${key} ${a[key] ?? 0} -> ${b[key] ?? 0}`)
  }
  return diffs.length === 0 ? null : diffs.join(', ')
}

/** Whether the server is back where it started (used to poll the drain too). */
export function drainChecks (baseline: SoakSample, s: SoakSample): Check[] {
  const zero = (name: string, v: number): Check => ({ name, ok: v === 0, detail: `${v} after the drain (must be 0)` })
  const active = sameCounts(baseline.active, s.active)
  return [
    zero('registry empty', s.registry),
    zero('websocketServer.clients empty', s.wsClients),
    zero('no close in progress', s.closing),
    zero('heartbeat tracks nothing', s.heartbeatTracked),
    zero('no message bucket held', s.buckets),
    { name: 'file descriptors back to baseline', ok: s.fds === baseline.fds, detail: `${baseline.fds} -> ${s.fds}` },
    {
      name: 'timers back to baseline',
      ok: (s.live.Timeout ?? 0) === (baseline.live.Timeout ?? 0),
      detail: `${baseline.live.Timeout ?? 0} -> ${s.live.Timeout ?? 0} (async_hooks: unref'd ones included)`
    },
    { name: 'active handles back to baseline', ok: active === null, detail: active ?? `${sum(s.active)} (${Object.keys(s.active).sort().join(', ')})` }
  ]
}

// What a clean run must have exercised: a soak that never reached a limit proves nothing about it.
function coverage (r: SoakResult): Check {
  const c = r.tally
  const b = r.baseline
  const last = r.drained
  const wanted: Array<[string, boolean]> = [
    ['401', c.count('bad-token', 'http 401') > 0],
    ['403', c.count('bad-origin', 'http 403') > 0],
    ['429 per user', c.count('greedy', 'http 429') > 0],
    ['503 at the cap', (last.refused['503'] ?? 0) > (b.refused['503'] ?? 0)],
    ['1000', c.count('echo', 'close 1000') > 0],
    ['heartbeat', c.count('silent', 'ended') > 0 && last.heartbeatClosed > b.heartbeatClosed],
    ['idle 1001', c.count('idle', 'close 1001 Idle timeout') > 0 && last.idleClosed > b.idleClosed],
    ['rate 1008', c.count('flood', 'close 1008 Rate limit exceeded') > 0],
    ['expiry 1008', c.count('expire', 'close 1008 Token expired') > 0 && last.expiredClosed > b.expiredClosed],
    ['1009', c.count('oversize', 'close 1009') > 0],
    ['1013', last.slowConsumerCloses > b.slowConsumerCloses],
    ['1006', c.count('echo-die', 'terminated') + c.count('raw-die', 'terminated') > 0]
  ]
  const missing = wanted.filter(([, ok]) => !ok).map(([name]) => name)
  return { name: 'every limit and timer was reached', ok: missing.length === 0, detail: missing.length === 0 ? wanted.map(([n]) => n).join(', ') : `never seen: ${missing.join(', ')}` }
}

/** Every check of the verdict, in order. */
export function verdict (r: SoakResult): Check[] {
  const steady = steadySamples(r)
  const checks: Check[] = []
  checks.push({ name: 'server child stayed up', ok: r.crashed === null, detail: r.crashed ?? 'yes' })
  if (steady.length < 8) {
    checks.push({ name: 'enough samples after the warm-up', ok: false, detail: `${steady.length} (need 8)` })
  } else {
    const window = (steady[steady.length - 1].t - steady[0].t) / 60
    const memory: Array<[string, GrowthBound, (s: TimedSample) => number]> = [
      ['heap slope', BOUNDS.heap, (s) => s.heapUsed],
      ['external slope', BOUNDS.external, (s) => s.external],
      ['RSS slope', BOUNDS.rss, (s) => s.rss]
    ]
    for (const [name, bound, pick] of memory) {
      const slope = slopePerMinute(steady, pick)
      const limit = slopeBound(bound, window)
      checks.push({
        name,
        ok: slope < limit,
        detail: `${mib(slope)}/min (bound ${mib(limit)}/min: ${mib(bound.perMinute)}/min + ${mib(bound.allowance)} over ${(window * 60).toFixed(0)} s; ${steady.length} samples)`
      })
    }
  }
  checks.push(...drainChecks(r.baseline, r.drained))
  const anomalies = [...r.tally.anomalies].map(([k, n]) => `${k} ×${n}`)
  checks.push({ name: 'no client anomaly', ok: anomalies.length === 0, detail: anomalies.length === 0 ? 'none' : anomalies.join('; ') })
  checks.push({ name: 'every client finished', ok: r.leftRunning === 0, detail: `${r.leftRunning} still running after the drain` })
  const errors = Object.entries(r.census).filter(([k]) => k.startsWith('error ')).map(([k, n]) => `${k} ×${n}`)
  checks.push({ name: 'no error logged by the server', ok: errors.length === 0, detail: errors.length === 0 ? 'none' : errors.join('; ') })
  checks.push(coverage(r))
  // Counters per user id are statistics kept for the process's life, capped at 10,000 keys
  // each in lib/counters.ts: they grow here by design, by one key per stalled reader (each
  // is a new user). Reported, never judged; a key count past the cap would mean the cap broke.
  const maps = [r.drained.deliveryUsers, r.drained.refusedUsers, r.drained.frameUsers, r.drained.frameConnections]
  checks.push({
    name: 'per-user statistics maps within their cap',
    ok: maps.every((n) => n <= 10_000),
    warnOnly: true,
    detail: `delivery.byUser ${r.baseline.deliveryUsers} -> ${r.drained.deliveryUsers} keys, refusedByUser ${r.baseline.refusedUsers} -> ${r.drained.refusedUsers}, ` +
      `frame violations by user ${r.baseline.frameUsers} -> ${r.drained.frameUsers}, by connection ${r.baseline.frameConnections} -> ${r.drained.frameConnections}`
  })
  return checks
}

function mib (bytes: number): string {
  return `${(bytes / MiB).toFixed(2)} MiB`
}

function fmt (v: number, unit: Series['unit']): string {
  if (unit === 'MiB') return (v / MiB).toFixed(1)
  return Number.isInteger(v) ? String(v) : v.toFixed(2)
}

function table (rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)))
  return rows.map((r) => r.map((c, i) => i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join('  ')).join('\n')
}

/** The printout: series, client outcomes, server census, checks. */
export function summary (r: SoakResult, checks: Check[]): string {
  const steady = steadySamples(r)
  const load = r.samples.filter((s) => s.phase === 'load')
  const out: string[] = []
  out.push(`samples: ${r.samples.length} (${load.length} under load, ${steady.length} after the ${WARM_UP * 100}% warm-up, 1 baseline, 1 drained)`)
  const rows = [['series', 'unit', 'baseline', 'min', 'max', 'drained', 'slope/min', 'adj. slope/min']]
  for (const series of SERIES) {
    const values = load.map(series.pick)
    const canFit = steady.length >= 2
    rows.push([
      series.name,
      series.unit,
      fmt(series.pick(r.baseline), series.unit),
      values.length === 0 ? '-' : fmt(Math.min(...values), series.unit),
      values.length === 0 ? '-' : fmt(Math.max(...values), series.unit),
      fmt(series.pick(r.drained), series.unit),
      canFit ? (series.unit === 'MiB' ? (slopePerMinute(steady, series.pick) / MiB).toFixed(3) : slopePerMinute(steady, series.pick).toFixed(2)) : '-',
      canFit && series.unit === 'MiB' ? (adjustedSlopePerMinute(steady, series.pick) / MiB).toFixed(3) : ''
    ])
  }
  out.push(table(rows))

  out.push('', 'clients (launched per kind, by outcome; * = not an outcome this kind may have)')
  const clientRows = [['kind', 'n', 'outcomes']]
  for (const kind of Object.keys(KINDS) as Kind[]) {
    const outcomes = r.tally.outcomes.get(kind)
    if (outcomes === undefined) continue
    let n = 0
    for (const v of outcomes.values()) n += v
    const parts = [...outcomes].sort((a, b) => b[1] - a[1]).map(([o, v]) => `${o}${r.tally.anomalies.has(`${kind}: ${o}`) ? '*' : ''} ${v}`)
    clientRows.push([kind, String(n), parts.join(', ')])
  }
  out.push(table(clientRows))
  out.push(`launched ${r.tally.launched}, skipped at the client cap ${r.tally.skipped}`)

  out.push('', 'server, over its whole life (priming included): closes (code, reason, initiator), refusals and warnings as logged; plugin counters')
  const census = Object.entries(r.census).sort((a, b) => b[1] - a[1])
  out.push(table([['event', 'n'], ...census.map(([k, v]) => [k, String(v)])]))
  const d = r.drained
  out.push(`opened ${d.opened}, closed ${d.closed}, idle ${d.idleClosed}, heartbeat ${d.heartbeatClosed}, expired ${d.expiredClosed}, ` +
    `slow consumer ${d.slowConsumerCloses}, refused ${JSON.stringify(d.refused)}`)

  out.push('', 'verdict')
  for (const c of checks) out.push(`${c.ok ? 'PASS' : c.warnOnly === true ? 'WARN' : 'FAIL'}  ${c.name}: ${c.detail}`)
  return out.join('\n')
}
