// The figures of the scale benchmark (bench/scale.ts) and their table: one table, the three
// systems side by side, for the terminal and for BENCHMARKS.md; goals and whether each was met.

import { SCALE_SYSTEMS, type MemoryPoint, type ScaleParams, type ScaleSystem } from './scale-common'

/** Latency figures, ms. */
export interface Latency { p50: number, p90: number, p99: number, max: number, mean: number }

/** The idle phase of one system. */
export interface IdleResult {
  system: ScaleSystem
  /** Connections the phase aimed at and the server held at the end. */
  target: number
  held: number
  clientProcesses: number
  points: MemoryPoint[]
  /** Least-squares slopes over the points, bytes per connection. */
  heapPerConnection: number
  rssPerConnection: number
  setup: {
    /** Connections opened in the measured segments (the warm-up left out). */
    connections: number
    wallMs: number
    serverCpuUs: number
    clientsCpuUs: number
    perSecond: number
    serverUsPerConnection: number
    clientsUsPerConnection: number
  }
  /** The second steady window, without the event-loop monitor. */
  cpu: Window
  /** The first steady window, with the monitor on. */
  eld: Window & { maxMs: number, p99Ms: number, meanMs: number, maxWithoutGcMs: number }
  /** Connections the server or the clients lost during the phase (closed by neither side's choice). */
  lost: number
}

/** A steady window of the idle phase. */
export interface Window {
  ms: number
  serverCpuPercent: number
  serverSystemPercent: number
  clientsCpuPercent: number
  /** Pings the clients answered over the window, per connection: 1 is one full round. */
  pingsPerConnection: number
  /** Cores busy with neither the server nor the clients: other work, kernel threads. */
  otherCores: number
  /** The server's garbage-collection pauses in the window. */
  gcCount: number
  gcTotalMs: number
  gcMaxMs: number
  /** What the longest pause was: minor, major, incremental (a step of incremental marking), weak callbacks; with V8's flags. */
  gcMaxKind: string
}

/** The broadcast phase of one system. */
export interface BroadcastResult {
  system: ScaleSystem
  connections: number
  /** Broadcasts sent (warm-up included) and deliveries expected, received, doubled, missing, stray. */
  broadcasts: number
  recorded: number
  expected: number
  received: number
  duplicates: number
  missing: number
  other: number
  /** From the broadcast call's stamp to receipt, every recorded delivery. */
  latencyMs: Latency
  /** Per recorded broadcast, from the call to the last client's receipt: median and worst. */
  fanOutMs: { median: number, max: number }
  /** Median duration of the broadcast call itself. */
  callMs: number
  /** Deliveries over the time spent in the calls: the server's loop. */
  loopPerSecond: number
  /** Connections over the fan-out time, median over broadcasts. */
  endToEndPerSecond: number
  serverUsPerDelivery: number
  clientsCpuPercent: number
}

/** Everything a run writes to its JSON file. */
export interface ScaleResults {
  meta: {
    date: string
    mode: 'full' | 'quick'
    durationS: number
    machine: Record<string, string | number>
    /** Cores busy with other work in the second before the run. */
    machineBusy: number
  }
  params: ScaleParams
  /** The idle target asked for, what was measured, and why they differ (the open-file limit). */
  limit: { asked: number, measured: number, fileLimit: number, reason: string | null }
  idle: IdleResult[]
  broadcast: BroadcastResult[]
  failures: string[]
}

/** Whether a quick run's windows were shorter than a ping round. */
export function coversPingRound (params: ScaleParams, pingIntervalMs: number): boolean {
  return params.idle.cpuWindowMs >= pingIntervalMs && params.idle.eldWindowMs >= pingIntervalMs
}

function fmt (n: number | undefined, digits = 0): string {
  if (n === undefined || !Number.isFinite(n)) return '–'
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

interface Row {
  label: string
  cells: Partial<Record<ScaleSystem, string>>
  compare?: string
  goal?: string
  status?: string
}

function rowOf<T extends { system: ScaleSystem }> (list: T[], label: string, f: (r: T) => number | string, digits = 0): Row {
  const cells: Partial<Record<ScaleSystem, string>> = {}
  for (const r of list) {
    const v = f(r)
    cells[r.system] = typeof v === 'string' ? v : fmt(v, digits)
  }
  return { label, cells }
}

function ratio (a: number | undefined, b: number | undefined, digits = 2): string {
  return a === undefined || b === undefined || b === 0 ? '' : `${(a / b).toFixed(digits)}×`
}

/** The rows of the table, with goals and their status. */
export function rows (results: ScaleResults, pingIntervalMs: number): Row[] {
  const out: Row[] = []
  const full = coversPingRound(results.params, pingIntervalMs)
  const idle = results.idle
  const by = <T extends { system: ScaleSystem }>(list: T[], s: ScaleSystem): T | undefined => list.find((r) => r.system === s)
  const [iRaw, iBare, iPlugin] = SCALE_SYSTEMS.map((s) => by(idle, s))
  if (idle.length > 0) {
    const n = results.limit.measured
    const counts = (iPlugin ?? idle[0]).points.map((p) => fmt(p.connections)).join(', ')
    out.push(rowOf(idle, `idle: connections held (of ${fmt(n)})`, (r) => `${fmt(r.held)}${r.lost > 0 ? ` (${fmt(r.lost)} lost)` : ''}`))
    const heap = rowOf(idle, `idle: heap B/conn after GC (slope over ${counts})`, (r) => r.heapPerConnection)
    if (iPlugin !== undefined && iBare !== undefined) {
      const d = iPlugin.heapPerConnection - iBare.heapPerConnection
      Object.assign(heap, { compare: `plugin−bare ${fmt(d)} B`, goal: 'plugin ≤ bare', status: d <= 0 ? `**met** ${fmt(d)} B` : `**MISSED** +${fmt(d)} B` })
    }
    out.push(heap)
    const rss = rowOf(idle, 'idle: RSS B/conn (same slope)', (r) => r.rssPerConnection)
    if (iPlugin !== undefined && iBare !== undefined) {
      const q = iPlugin.rssPerConnection / iBare.rssPerConnection
      Object.assign(rss, { compare: `plugin/bare ${ratio(iPlugin.rssPerConnection, iBare.rssPerConnection)}`, goal: 'plugin ≤ bare', status: q <= 1 ? `**met** ${q.toFixed(2)}×` : `**MISSED** ${q.toFixed(2)}×` })
    }
    out.push(rss)
    out.push(rowOf(idle, 'setup while ramping: connections/s', (r) => r.setup.perSecond))
    const setupCpu = rowOf(idle, 'setup: server CPU µs/conn', (r) => r.setup.serverUsPerConnection, 1)
    if (iPlugin !== undefined && iBare !== undefined) setupCpu.compare = `plugin/bare ${ratio(iPlugin.setup.serverUsPerConnection, iBare.setup.serverUsPerConnection)}`
    out.push(setupCpu)
    out.push(rowOf(idle, 'setup: client processes CPU µs/conn', (r) => r.setup.clientsUsPerConnection, 1))
    const span = (ms: number): string => full ? `${fmt(ms / 1000)} s` : `${fmt(ms)} ms, shorter than a ping round`
    const gc = (w: Window): string => `${fmt(w.gcCount)} / ${fmt(w.gcTotalMs, 1)} / ${fmt(w.gcMaxMs, 1)}${w.gcMaxKind === '' ? '' : ` ${w.gcMaxKind}`}`
    const block = rowOf(idle, `idle, first window (${span(results.params.idle.eldWindowMs)}, event-loop monitor on): longest event-loop block ms`, (r) => r.eld.maxMs, 1)
    if (iPlugin !== undefined) {
      const ms = iPlugin.eld.maxMs
      block.goal = 'plugin: no block > 20 ms'
      block.status = !full ? 'n/a (quick)' : ms <= 20 ? `**met** ${ms.toFixed(1)} ms` : `**MISSED** ${ms.toFixed(1)} ms`
    }
    out.push(block)
    out.push(rowOf(idle, 'idle: longest block with no GC pause in it ms (0: none over 5 ms)', (r) => r.eld.maxWithoutGcMs, 1))
    out.push(rowOf(idle, 'idle: event-loop delay p99 ms', (r) => r.eld.p99Ms, 2))
    out.push(rowOf(idle, 'idle: GC pauses in that window: count / total ms / longest ms (its kind)', (r) => gc(r.eld)))
    out.push(rowOf(idle, 'idle: pings answered per connection in that window', (r) => r.eld.pingsPerConnection, 2))
    const cpu = rowOf(idle, `idle, second window (${span(results.params.idle.cpuWindowMs)}, no monitor): server CPU % of a core`, (r) => r.cpu.serverCpuPercent, 2)
    if (iPlugin !== undefined) {
      const p = iPlugin.cpu.serverCpuPercent
      cpu.compare = iRaw === undefined ? '' : `plugin/raw-ws ${ratio(p, iRaw.cpu.serverCpuPercent)}`
      cpu.goal = 'plugin < 1 % of a core'
      cpu.status = !full ? 'n/a (quick)' : p < 1 ? `**met** ${p.toFixed(2)} %` : `**MISSED** ${p.toFixed(2)} %${iRaw === undefined ? '' : ` (raw ws loop ${iRaw.cpu.serverCpuPercent.toFixed(2)} %)`}`
    }
    out.push(cpu)
    out.push(rowOf(idle, 'idle: of which kernel (system time) %', (r) => r.cpu.serverSystemPercent, 2))
    out.push(rowOf(idle, 'idle: server CPU µs per ping answered', (r) => r.cpu.pingsPerConnection > 0 ? 10 * r.cpu.serverCpuPercent * r.cpu.ms / (r.cpu.pingsPerConnection * r.held) : NaN, 1))
    out.push(rowOf(idle, 'idle: GC pauses in that window: count / total ms / longest ms (its kind)', (r) => gc(r.cpu)))
    out.push(rowOf(idle, 'idle: pings answered per connection in that window', (r) => r.cpu.pingsPerConnection, 2))
    out.push(rowOf(idle, 'idle: client processes CPU % of a core', (r) => r.cpu.clientsCpuPercent, 2))
    out.push(rowOf(idle, 'idle: other load on the machine (cores)', (r) => r.cpu.otherCores, 2))
  }
  const b = results.broadcast
  if (b.length > 0) {
    const p = results.params.broadcast
    const [bRaw, , bPlugin] = SCALE_SYSTEMS.map((s) => by(b, s))
    const vsRaw = (f: (r: BroadcastResult) => number): string => bPlugin === undefined || bRaw === undefined ? '' : `plugin/raw-ws ${ratio(f(bPlugin), f(bRaw))}`
    const head = `broadcast ${fmt(p.bytes)} B × ${fmt(p.connections)}`
    out.push({ ...rowOf(b, `${head}: latency p50 ms`, (r) => r.latencyMs.p50, 2), compare: vsRaw((r) => r.latencyMs.p50) })
    out.push({ ...rowOf(b, 'broadcast: latency p99 ms', (r) => r.latencyMs.p99, 2), compare: vsRaw((r) => r.latencyMs.p99) })
    out.push(rowOf(b, 'broadcast: latency max ms', (r) => r.latencyMs.max, 2))
    out.push(rowOf(b, 'broadcast: call to last client ms (median / worst)', (r) => `${fmt(r.fanOutMs.median, 2)} / ${fmt(r.fanOutMs.max, 2)}`))
    out.push(rowOf(b, 'broadcast: duration of the call ms (median)', (r) => r.callMs, 2))
    out.push({ ...rowOf(b, 'broadcast: deliveries/s in the call', (r) => r.loopPerSecond), compare: vsRaw((r) => r.loopPerSecond) })
    out.push({ ...rowOf(b, 'broadcast: deliveries/s, call to last client', (r) => r.endToEndPerSecond), compare: vsRaw((r) => r.endToEndPerSecond) })
    out.push({ ...rowOf(b, 'broadcast: server CPU µs/delivery', (r) => r.serverUsPerDelivery, 2), compare: vsRaw((r) => r.serverUsPerDelivery) })
    out.push(rowOf(b, 'broadcast: client processes CPU % of a core', (r) => r.clientsCpuPercent, 1))
    out.push(rowOf(b, 'broadcast: delivered exactly once', (r) =>
      r.received === r.expected && r.duplicates === 0 && r.other === 0 ? `all ${fmt(r.expected)}` : `${fmt(r.received)} of ${fmt(r.expected)}, ${fmt(r.duplicates)} doubled, ${fmt(r.other)} stray`))
  }
  return out
}

/** The table as Markdown. */
export function markdownTable (list: Row[]): string {
  const systems = SCALE_SYSTEMS
  const lines = [
    `| measure | ${systems.join(' | ')} | compare | goal | status |`,
    `|---|${systems.map(() => '---:').join('|')}|---|---|---|`
  ]
  for (const r of list) lines.push(`| ${r.label} | ${systems.map((s) => r.cells[s] ?? '').join(' | ')} | ${r.compare ?? ''} | ${r.goal ?? ''} | ${r.status ?? ''} |`)
  return lines.join('\n')
}

/** The table as aligned text, for the terminal. */
export function textTable (list: Row[]): string {
  const head = ['measure', ...SCALE_SYSTEMS, 'compare', 'status']
  const body = list.map((r) => [r.label, ...SCALE_SYSTEMS.map((s) => r.cells[s] ?? ''), r.compare ?? '', (r.status ?? '').replace(/\*\*/g, '')])
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)))
  const line = (cells: string[]): string => cells.map((c, i) => i === 0 || i > SCALE_SYSTEMS.length ? c.padEnd(widths[i]) : c.padStart(widths[i])).join('  ')
  return [line(head), ...body.map(line)].join('\n')
}

/** The section written between the markers of BENCHMARKS.md. */
export function markdownSection (results: ScaleResults, pingIntervalMs: number): string {
  const m = results.meta.machine
  const l = results.limit
  const p = results.params
  const lines = [
    `Run ${results.meta.date} (${results.meta.mode}, ${results.meta.durationS} s) on ${String(m.cpu)}, ${String(m.cores)} cores, ${String(m.memoryGiB)} GiB; ` +
      `Node ${String(m.node)}, ws ${String(m.ws)}, fastify ${String(m.fastify)}, @fastify/websocket ${String(m.fastifyWebsocket)}; commit ${String(m.commit)}; ` +
      `machine busy with other work before the run: ${results.meta.machineBusy.toFixed(2)} cores.`,
    ''
  ]
  if (l.reason !== null) {
    lines.push(`**${fmt(l.asked)} idle connections were not reached: ${l.reason}. Measured at ${fmt(l.measured)} connections instead.**`, '')
  }
  lines.push(
    `One run, one server child per system and phase, systems one after the other. Idle: ${fmt(l.measured)} connections ` +
      `(${fmt(p.idle.warmup)} to warm up, then memory at ${p.idle.shares.map((s) => `${Math.round(100 * s)} %`).join(', ')}), ` +
      `${fmt(p.perAddress)} per source address; windows of ${fmt(p.idle.cpuWindowMs / 1000)} s. Broadcast: ${fmt(p.broadcast.connections)} connections, ` +
      `${p.broadcast.warmup} broadcasts to warm up, then ${p.broadcast.count} recorded, ${p.broadcast.intervalMs} ms apart.`,
    '',
    markdownTable(rows(results, pingIntervalMs))
  )
  for (const f of results.failures) lines.push('', `FAILED: ${f}`)
  return lines.join('\n')
}
