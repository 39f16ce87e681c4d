// Turns per-round figures into the table (console and Markdown), the goal verdicts and the
// JSON record. The goals are targets from issue 7, not tests: a miss is reported, not thrown.

import { HEARTBEAT_INTERVAL_MS, type Params } from './scenarios'
import type { SystemName } from './servers'
import { roundRatios, summarize, type Summary } from './stats'

/** Per round, per system: the figures of every row, or null where the run failed. */
export type Collected = Record<string, { systems: SystemName[], rounds: Array<Record<string, Record<string, Record<string, number | null>> | null>> }>

type Series = Array<number | null>

/** Reads one figure of one system over rounds, across scenarios. */
export class Figures {
  readonly #data: Collected

  constructor (data: Collected) {
    this.#data = data
  }

  /** The figure `metric` of `row` for `system`, one value per round of `scenario`. */
  series (scenario: string, row: string, metric: string, system: SystemName): Series {
    const s = this.#data[scenario]
    if (s === undefined) return []
    return s.rounds.map((round) => round[system]?.[row]?.[metric] ?? null)
  }

  has (scenario: string, system: SystemName): boolean {
    return this.#data[scenario]?.systems.includes(system) ?? false
  }
}

export type Verdict = 'met' | 'MISSED' | 'n/a'

export interface Goal {
  text: string
  verdict: Verdict
  /** The figure the verdict rests on, e.g. "1.03x (1.01-1.06)". */
  value: string
}

interface Line {
  scenario: string
  row: string
  label: string
  metric: string
  digits: number
  /** A derived figure instead of a measured one. */
  derive?: (f: Figures, system: SystemName) => Series
  compare?: { num: SystemName, den: SystemName, kind: 'ratio' | 'difference' }
  goal?: (f: Figures, p: Params) => Goal
}

/** The system columns, in order. */
export const COLUMNS: readonly SystemName[] = ['raw-ws', 'bare', 'plugin', 'plugin+deflate', 'plugin+shared', 'plugin+drop', 'plugin-untraced', 'plugin+metrics', 'plugin+otel']

function fmt (v: number, digits: number): string {
  if (Math.abs(v) >= 10_000) return Math.round(v).toLocaleString('en-US')
  return v.toFixed(digits)
}

function cell (s: Summary | null, digits: number): string {
  if (s === null) return ''
  if (s.n === 1) return fmt(s.median, digits)
  return `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`
}

function ratioCell (s: Summary | null, suffix = '×'): string {
  if (s === null) return 'n/a'
  const d = 2
  return s.n === 1 ? `${s.median.toFixed(d)}${suffix}` : `${s.median.toFixed(d)}${suffix} (${s.min.toFixed(d)}–${s.max.toFixed(d)})`
}

function differences (a: Series, b: Series): Summary | null {
  const out: number[] = []
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const x = a[i]
    const y = b[i]
    if (x !== null && y !== null) out.push(x - y)
  }
  return summarize(out)
}

function verdict (ok: boolean | null): Verdict {
  return ok === null ? 'n/a' : ok ? 'met' : 'MISSED'
}

// The verdict rests on the median; when the rounds fall on both sides of the limit the
// value says so, as more rounds (--rounds) would be needed to be sure.
function straddles (s: Summary, limit: number): string {
  return s.n > 1 && s.min <= limit && s.max >= limit ? ', rounds on both sides' : ''
}

function ratioGoal (scenario: string, row: string, metric: string, num: SystemName, den: SystemName, limit: number, text: string): (f: Figures) => Goal {
  return (f) => {
    const r = roundRatios(f.series(scenario, row, metric, num), f.series(scenario, row, metric, den))
    return { text, verdict: verdict(r === null ? null : r.median <= limit), value: r === null ? 'n/a' : ratioCell(r) + straddles(r, limit) }
  }
}

// Liveness cost at the real interval: the rate-equivalent run (as many connections as give
// the real ping rate at the scaled-down interval) plus the background of idle connections
// at the plugin's real settings (capacity scenario: no ping due yet, idle sweep running),
// scaled to the heartbeat scenario's connection count.
function projectedAt30s (f: Figures, system: SystemName, p: Params): Series {
  const sparse = f.series('heartbeat', 'heartbeat', 'sparseCpuPercent', system)
  const idle = summarize(f.series('capacity', 'idle', 'idleCpuPercent', system))
  const idleScale = p.heartbeat.connections / p.capacity.points[p.capacity.points.length - 1]
  return sparse.map((pct) => pct === null ? null : pct + (idle === null ? 0 : idle.median * idleScale))
}

// What a slow consumer may hold beyond its high-water mark: the message that crossed it,
// frame headers, socket and stream state.
const SLOW_OVERHEAD_MIB = 2

// The larger figure of the two plugin systems in the slow-consumer scenario, over rounds.
function worstOf (f: Figures, metric: string): number | null {
  const values = [...f.series('slow', 'slow', metric, 'plugin'), ...f.series('slow', 'slow', metric, 'plugin+drop')]
  const s = summarize(values)
  return s === null ? null : s.max
}

function lines (p: Params): Line[] {
  const echoLines = (bytes: number, label: string): Line[] => [
    {
      scenario: 'echo',
      row: `echo-${bytes}`,
      label: `echo ${label}: server CPU µs/msg`,
      metric: 'cpuPerMessageUs',
      digits: 2,
      compare: { num: 'plugin', den: 'bare', kind: 'ratio' },
      goal: ratioGoal('echo', `echo-${bytes}`, 'cpuPerMessageUs', 'plugin', 'bare', 1.05, 'plugin ≤ 1.05× bare')
    },
    {
      scenario: 'echo',
      row: `echo-${bytes}`,
      label: `echo ${label}: of which user space µs/msg`,
      metric: 'userCpuPerMessageUs',
      digits: 2,
      compare: { num: 'plugin', den: 'bare', kind: 'ratio' }
    },
    { scenario: 'echo', row: `echo-${bytes}`, label: `echo ${label}: msgs/s`, metric: 'messagesPerSecond', digits: 0 },
    { scenario: 'echo', row: `echo-${bytes}`, label: `echo ${label}: server CPU (share of a core)`, metric: 'serverUtil', digits: 2 },
    { scenario: 'echo', row: `echo-${bytes}`, label: `echo ${label}: generator CPU (share of a core)`, metric: 'generatorUtil', digits: 2 },
    { scenario: 'echo', row: `echo-${bytes}`, label: `echo ${label}: other load on the machine (cores)`, metric: 'otherLoad', digits: 2 }
  ]
  const slowBound = p.slow.connections * p.slow.highWaterMark / 1024 ** 2 + SLOW_OVERHEAD_MIB
  const hbN = p.heartbeat.connections.toLocaleString('en-US')
  const compN = p.compression.points[p.compression.points.length - 1].toLocaleString('en-US')
  const sparseN = Math.ceil(p.heartbeat.connections * HEARTBEAT_INTERVAL_MS / p.heartbeat.realIntervalMs)
  return [
    ...p.echo.sizes.flatMap((b) => echoLines(b, b >= 1024 ? `${b / 1024} KiB` : `${b} B`)),
    {
      scenario: 'capacity',
      row: 'setup',
      label: `setup ${p.capacity.setup.toLocaleString('en-US')} conns: server CPU µs/conn`,
      metric: 'cpuPerConnectionUs',
      digits: 1,
      compare: { num: 'plugin', den: 'bare', kind: 'ratio' },
      goal: ratioGoal('capacity', 'setup', 'cpuPerConnectionUs', 'plugin', 'bare', 1.5, 'plugin ≤ 1.5× bare (no auth)')
    },
    { scenario: 'capacity', row: 'setup', label: 'setup: connections/s', metric: 'connectionsPerSecond', digits: 0 },
    { scenario: 'capacity', row: 'setup', label: 'setup: server CPU (share of a core)', metric: 'serverUtil', digits: 2 },
    { scenario: 'capacity', row: 'setup', label: 'setup: generator CPU (share of a core)', metric: 'generatorUtil', digits: 2 },
    {
      scenario: 'capacity',
      row: 'idle',
      label: `idle ${p.capacity.points[p.capacity.points.length - 1].toLocaleString('en-US')}: heap B/conn`,
      metric: 'heapPerConnection',
      digits: 0,
      compare: { num: 'plugin', den: 'bare', kind: 'difference' },
      goal: (f) => {
        const d = differences(f.series('capacity', 'idle', 'heapPerConnection', 'plugin'), f.series('capacity', 'idle', 'heapPerConnection', 'bare'))
        return { text: 'plugin ≤ bare + 1024 B', verdict: verdict(d === null ? null : d.median <= 1024), value: d === null ? 'n/a' : `${d.median >= 0 ? '+' : ''}${cell(d, 0)} B` }
      }
    },
    {
      scenario: 'capacity',
      row: 'idle',
      label: 'idle: RSS B/conn',
      metric: 'rssPerConnection',
      digits: 0,
      compare: { num: 'plugin', den: 'bare', kind: 'ratio' },
      goal: ratioGoal('capacity', 'idle', 'rssPerConnection', 'plugin', 'bare', 1.2, 'plugin ≤ 1.2× bare')
    },
    { scenario: 'capacity', row: 'idle', label: 'idle: server CPU % of a core', metric: 'idleCpuPercent', digits: 3 },
    {
      scenario: 'compression',
      row: 'compression',
      label: `deflate ${compN}: RSS KiB/conn`,
      metric: 'rssPerConnection',
      digits: 1,
      derive: (f, s) => f.series('compression', 'compression', 'rssPerConnection', s).map((v) => v === null ? null : v / 1024),
      compare: { num: 'plugin+deflate', den: 'raw-ws', kind: 'ratio' },
      // Issue 17: the goal is on the shared profile; the default profile stays as a column.
      goal: ratioGoal('compression', 'compression', 'rssPerConnection', 'plugin+shared', 'raw-ws', 0.25, 'plugin+shared ≤ 0.25× raw-ws (pmd: true)')
    },
    {
      scenario: 'compression',
      row: 'compression',
      label: 'deflate: heap KiB/conn',
      metric: 'heapPerConnection',
      digits: 1,
      derive: (f, s) => f.series('compression', 'compression', 'heapPerConnection', s).map((v) => v === null ? null : v / 1024)
    },
    {
      scenario: 'compression',
      row: 'compression',
      label: 'deflate: wire/payload (sample JSON)',
      metric: 'wireRatio',
      digits: 3,
      compare: { num: 'plugin+shared', den: 'raw-ws', kind: 'ratio' },
      goal: (f) => {
        // Compression factor payload/wire relative to ws's default: 1.0 = as good.
        const r = roundRatios(f.series('compression', 'compression', 'wireRatio', 'raw-ws'), f.series('compression', 'compression', 'wireRatio', 'plugin+deflate'))
        return { text: 'plugin+deflate factor ≥ 0.9× raw-ws', verdict: verdict(r === null ? null : r.median >= 0.9), value: ratioCell(r) }
      }
    },
    {
      scenario: 'compression',
      row: 'compressedBroadcast',
      label: `compressed broadcast ${p.compression.broadcastBytes / 1024} KiB × ${compN}, ${p.compression.broadcasts} times: deliveries/s`,
      metric: 'deliveriesPerSecond',
      digits: 0,
      compare: { num: 'plugin+shared', den: 'raw-ws', kind: 'ratio' }
    },
    {
      scenario: 'compression',
      row: 'compressedBroadcast',
      label: 'compressed broadcast: server CPU µs/delivery (until all arrived)',
      metric: 'cpuPerDeliveryUs',
      digits: 2,
      compare: { num: 'plugin+shared', den: 'raw-ws', kind: 'ratio' }
    },
    { scenario: 'compression', row: 'compressedBroadcast', label: 'compressed broadcast: of which in the send loop µs/delivery', metric: 'loopCpuPerDeliveryUs', digits: 2 },
    { scenario: 'compression', row: 'compressedBroadcast', label: 'compressed broadcast: deflate calls (shared profile)', metric: 'sharedDeflates', digits: 0 },
    {
      scenario: 'heartbeat',
      row: 'heartbeat',
      label: `heartbeat ${hbN} @ ${HEARTBEAT_INTERVAL_MS} ms: CPU µs/ping`,
      metric: 'cpuPerPingUs',
      digits: 2,
      compare: { num: 'plugin', den: 'bare', kind: 'ratio' }
    },
    {
      scenario: 'heartbeat',
      row: 'heartbeat',
      label: `heartbeat: % of a core, ${sparseN} conns @ ${HEARTBEAT_INTERVAL_MS} ms (= ${hbN} @ 30 s)`,
      metric: 'sparseCpuPercent',
      digits: 3
    },
    {
      scenario: 'heartbeat',
      row: 'heartbeat',
      label: `heartbeat: + idle background = % of a core at 30 s (${hbN} conns)`,
      metric: 'projected',
      digits: 3,
      derive: (f, s) => projectedAt30s(f, s, p),
      goal: (f) => {
        const s = summarize(projectedAt30s(f, 'plugin', p))
        return { text: 'plugin < 1% of a core', verdict: verdict(s === null ? null : s.median < 1), value: s === null ? 'n/a' : `${cell(s, 3)} %` }
      }
    },
    {
      scenario: 'heartbeat',
      row: 'heartbeat',
      label: 'heartbeat: longest event-loop block ms',
      metric: 'maxBlockMs',
      digits: 1,
      goal: (f) => {
        const s = summarize(f.series('heartbeat', 'heartbeat', 'maxBlockMs', 'plugin'))
        return { text: 'plugin: no block > 10 ms', verdict: verdict(s === null ? null : s.max <= 10), value: s === null ? 'n/a' : `max ${s.max.toFixed(1)} ms` }
      }
    },
    { scenario: 'heartbeat', row: 'heartbeat', label: 'heartbeat: longest GC pause ms (same window)', metric: 'gcMaxMs', digits: 1 },
    {
      scenario: 'capacity',
      row: 'broadcast',
      label: `broadcast 1 KiB × ${p.capacity.points[p.capacity.points.length - 1].toLocaleString('en-US')}: deliveries/s`,
      metric: 'deliveriesPerSecond',
      digits: 0,
      compare: { num: 'plugin', den: 'raw-ws', kind: 'ratio' },
      goal: (f) => {
        const r = roundRatios(f.series('capacity', 'broadcast', 'deliveriesPerSecond', 'plugin'), f.series('capacity', 'broadcast', 'deliveriesPerSecond', 'raw-ws'))
        return { text: 'plugin ≥ raw ws loop', verdict: verdict(r === null ? null : r.median >= 1), value: ratioCell(r) }
      }
    },
    { scenario: 'capacity', row: 'broadcast', label: 'broadcast: server CPU µs/delivery', metric: 'cpuPerDeliveryUs', digits: 3 },
    { scenario: 'capacity', row: 'broadcast', label: 'broadcast: received by generator /s', metric: 'endToEndPerSecond', digits: 0 },
    {
      scenario: 'slow',
      row: 'slow',
      label: `slow consumer ×${p.slow.connections}, ${p.slow.ms / 1000} s: peak RSS growth MiB`,
      metric: 'peakGrowthMiB',
      digits: 1,
      compare: { num: 'plugin', den: 'bare', kind: 'ratio' }
    },
    { scenario: 'slow', row: 'slow', label: 'slow consumer: RSS growth over the 2nd half MiB', metric: 'secondHalfGrowthMiB', digits: 1 },
    {
      scenario: 'slow',
      row: 'slow',
      label: 'slow consumer: held after GC MiB',
      metric: 'retainedMiB',
      digits: 1,
      goal: (f) => {
        // Bounded, and the comparison means something only if bare did grow past the bound.
        const worst = worstOf(f, 'retainedMiB')
        const bare = summarize(f.series('slow', 'slow', 'retainedMiB', 'bare'))
        return {
          text: `plugin ≤ ${p.slow.connections} × HWM + ${SLOW_OVERHEAD_MIB} MiB; bare above`,
          verdict: verdict(worst === null || bare === null ? null : worst <= slowBound && bare.median > slowBound),
          value: worst === null ? 'n/a' : `max ${worst.toFixed(1)} MiB (bare ${bare === null ? 'n/a' : bare.median.toFixed(0)} MiB)`
        }
      }
    },
    { scenario: 'slow', row: 'slow', label: 'slow consumer: MiB offered to send()', metric: 'offeredMiB', digits: 0 },
    ...p.echo.sizes.flatMap((b) => observeLines(b, b >= 1024 ? `${b / 1024} KiB` : `${b} B`))
  ]
}

// Issue 13: metrics on against off, and tracing (no SDK, a real SDK) against none, per message.
function observeLines (bytes: number, label: string): Line[] {
  const row = `echo-${bytes}`
  return [
    {
      scenario: 'observe',
      row,
      label: `observe ${label}: metrics on vs off (CPU µs/msg)`,
      metric: 'cpuPerMessageUs',
      digits: 2,
      compare: { num: 'plugin+metrics', den: 'plugin', kind: 'ratio' },
      goal: ratioGoal('observe', row, 'cpuPerMessageUs', 'plugin+metrics', 'plugin', 1.02, 'metrics on ≤ 1.02× off')
    },
    {
      scenario: 'observe',
      row,
      label: `observe ${label}: tracing, no SDK vs tracing off`,
      metric: 'cpuPerMessageUs',
      digits: 2,
      compare: { num: 'plugin', den: 'plugin-untraced', kind: 'ratio' }
    },
    {
      scenario: 'observe',
      row,
      label: `observe ${label}: tracing, in-memory SDK vs tracing off`,
      metric: 'cpuPerMessageUs',
      digits: 2,
      compare: { num: 'plugin+otel', den: 'plugin-untraced', kind: 'ratio' }
    },
    {
      scenario: 'observe',
      row,
      label: `observe ${label}: plugin-untraced vs bare`,
      metric: 'cpuPerMessageUs',
      digits: 2,
      compare: { num: 'plugin-untraced', den: 'bare', kind: 'ratio' }
    }
  ]
}

export interface TableRow {
  label: string
  cells: Record<string, string>
  compare: string
  goal: Goal | null
  summaries: Record<string, Summary | null>
}

/** Builds every table row from the collected figures. */
export function buildTable (data: Collected, p: Params): TableRow[] {
  const f = new Figures(data)
  const rows: TableRow[] = []
  for (const line of lines(p)) {
    if (data[line.scenario] === undefined) continue
    const series = (s: SystemName): Series => line.derive !== undefined ? line.derive(f, s) : f.series(line.scenario, line.row, line.metric, s)
    const cells: Record<string, string> = {}
    const summaries: Record<string, Summary | null> = {}
    for (const system of COLUMNS) {
      const s = f.has(line.scenario, system) ? summarize(series(system)) : null
      summaries[system] = s
      cells[system] = cell(s, line.digits)
    }
    let compare = ''
    if (line.compare !== undefined) {
      const { num, den, kind } = line.compare
      compare = kind === 'ratio'
        ? `${num}/${den} ${ratioCell(roundRatios(series(num), series(den)))}`
        : `${num}−${den} ${cell(differences(series(num), series(den)), line.digits)}`
    }
    rows.push({ label: line.label, cells, compare, goal: line.goal === undefined ? null : line.goal(f, p), summaries })
  }
  return rows
}

function usedColumns (rows: TableRow[]): SystemName[] {
  return COLUMNS.filter((c) => rows.some((r) => r.cells[c] !== ''))
}

/** The table as aligned plain text for the console. */
export function textTable (rows: TableRow[]): string {
  const cols = usedColumns(rows)
  const header = ['measure', ...cols, 'compare (per round)', 'goal', 'status']
  const body = rows.map((r) => [r.label, ...cols.map((c) => r.cells[c]), r.compare, r.goal?.text ?? '', r.goal === null ? '' : `${r.goal.verdict} ${r.goal.value}`])
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)))
  const line = (cells: string[]): string => cells.map((c, i) => i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join(' | ')
  return [line(header), widths.map((w) => '-'.repeat(w)).join('-|-'), ...body.map(line)].join('\n')
}

/** The table as Markdown. */
export function markdownTable (rows: TableRow[]): string {
  const cols = usedColumns(rows)
  const header = `| measure | ${cols.join(' | ')} | compare (per round) | goal | status |`
  const sep = `|---|${cols.map(() => '---:').join('|')}|---|---|---|`
  const body = rows.map((r) => `| ${r.label} | ${cols.map((c) => r.cells[c]).join(' | ')} | ${r.compare} | ${r.goal?.text ?? ''} | ${r.goal === null ? '' : `**${r.goal.verdict}** ${r.goal.value}`} |`)
  return [header, sep, ...body].join('\n')
}
