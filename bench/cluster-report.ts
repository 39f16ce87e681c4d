// The figures of the cross-node fan-out benchmark (bench/cluster.ts) and their tables: text
// for the terminal, Markdown for BENCHMARKS.md. With several rounds a cell is the median over
// rounds; losses and duplicates are summed, since a single one is a finding.

import type { CommandCount } from './cluster-redis'
import { CLUSTER_SYSTEMS, type ClusterParams, type ClusterSystem, type CountedCall, type PublishKind } from './cluster-common'
import { summarize } from './stats'

/** Latency figures of a window, ms. */
export interface Latency { p50: number, p90: number, p99: number, p999: number, max: number, mean: number }

/** One measurement window of one system. */
export interface WindowResult {
  kind: PublishKind
  /** Measurements of this window; more than one when other work on the machine disturbed the first (the quietest is kept). */
  attempts: number
  /** Publishes per second over the cluster; null for the burst (back to back). */
  rate: number | null
  published: number
  publishFailed: number
  publishError: string | null
  /** Deliveries expected: published × connections. */
  expected: number
  /** Distinct deliveries received. */
  received: number
  duplicates: number
  missing: number
  /** Latencies below zero (a clock problem), recorded as 0. */
  negative: number
  /** Deliveries over the span from the earliest publish stamp to the last receipt. */
  deliveredPerS: number
  offeredPerS: number | null
  latencyMs: Latency
  /** Deliveries on the node that published, and those that crossed Redis to another node. */
  localMs: Latency
  remoteMs: Latency
  /** Cores busy over the window: the three nodes together, the client processes together, Redis, everything else on the machine. */
  cpu: { nodes: number, clients: number, redis: number, other: number }
}

/** Everything a run writes to its JSON file. */
export interface ClusterResults {
  meta: {
    date: string
    mode: string
    durationS: number
    machine: { commit: string, cpu: string, cores: number, memoryGiB: number, node: string, redis: string, versions: Record<string, string> }
    dateClockSpreadMs: number
    /** Cores busy with other work in the second before the run. */
    machineBusy: number
  }
  params: ClusterParams
  runs: Array<{
    system: ClusterSystem
    round: number
    connections: number
    connectMs: number
    clockOffsetsMs: number[]
    windows: WindowResult[]
    commands: Partial<Record<CountedCall, CommandCount>>
    /** Each node's own counters at the end (the plugin's stats(); null for Socket.IO). */
    nodeStats: unknown[]
  }>
}

const NAMES: Record<ClusterSystem, string> = { plugin: 'plugin', 'socket.io': 'Socket.IO' }

function median (values: number[]): number {
  return summarize(values)?.median ?? NaN
}

function fmt (n: number, digits = 0): string {
  if (!Number.isFinite(n)) return '–'
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

/** The windows of one system for one kind and rate, over rounds. */
function windowsOf (results: ClusterResults, system: ClusterSystem, kind: PublishKind, rate: number | null): WindowResult[] {
  return results.runs.filter((r) => r.system === system).flatMap((r) => r.windows.filter((w) => w.kind === kind && w.rate === rate))
}

function exactness (ws: WindowResult[]): string {
  const missing = ws.reduce((n, w) => n + w.missing, 0)
  const dup = ws.reduce((n, w) => n + w.duplicates, 0)
  const failed = ws.reduce((n, w) => n + w.publishFailed, 0)
  if (missing === 0 && dup === 0 && failed === 0) return 'all once'
  return [missing > 0 ? `${missing} lost` : '', dup > 0 ? `${dup} dup` : '', failed > 0 ? `${failed} publish failed` : ''].filter((s) => s !== '').join(', ')
}

interface Row { label: string, cells: string[] }

function fanOutRows (results: ClusterResults): { header: string[], rows: Row[] } {
  const header = ['publish', 'offered deliveries/s']
  for (const s of CLUSTER_SYSTEMS) header.push(`${NAMES[s]} delivered/s`, `${NAMES[s]} p50 ms`, `${NAMES[s]} p99 ms`, `${NAMES[s]} max ms`, `${NAMES[s]} CPU nodes+redis+clients (other)`, `${NAMES[s]} exactly once`)
  const rows: Row[] = []
  const connections = results.params.perNode * results.params.nodes
  for (const kind of ['broadcast', 'topic'] as const) {
    for (const rate of [...results.params.rates, null]) {
      const label = `${kind === 'broadcast' ? 'broadcast' : 'topic publish'}, ${rate === null ? `burst ${fmt(results.params.burst * results.params.nodes)} back to back` : `${rate}/s`}`
      const cells = [rate === null ? 'max' : fmt(rate * connections)]
      for (const system of CLUSTER_SYSTEMS) {
        const ws = windowsOf(results, system, kind, rate)
        if (ws.length === 0) {
          cells.push('–', '–', '–', '–', '–', '–')
          continue
        }
        const cpu = `${fmt(median(ws.map((w) => w.cpu.nodes)), 2)}+${fmt(median(ws.map((w) => w.cpu.redis)), 2)}+${fmt(median(ws.map((w) => w.cpu.clients)), 2)} ` +
          `(${fmt(median(ws.map((w) => w.cpu.other)), 2)})`
        cells.push(fmt(median(ws.map((w) => w.deliveredPerS))), fmt(median(ws.map((w) => w.latencyMs.p50)), 2),
          fmt(median(ws.map((w) => w.latencyMs.p99)), 2), fmt(median(ws.map((w) => w.latencyMs.max)), 1), cpu, exactness(ws))
      }
      rows.push({ label, cells })
    }
  }
  return { header, rows }
}

// Where the time goes: deliveries on the publishing node against those that crossed Redis.
function pathRows (results: ClusterResults): { header: string[], rows: Row[] } {
  const header = ['publish', ...CLUSTER_SYSTEMS.flatMap((s) => [`${NAMES[s]} local p50/p99 ms`, `${NAMES[s]} remote p50/p99 ms`])]
  const rows: Row[] = []
  for (const kind of ['broadcast', 'topic'] as const) {
    for (const rate of [...results.params.rates, null]) {
      const cells = CLUSTER_SYSTEMS.flatMap((system) => {
        const ws = windowsOf(results, system, kind, rate)
        if (ws.length === 0) return ['–', '–']
        const pair = (pick: (w: WindowResult) => Latency): string =>
          `${fmt(median(ws.map((w) => pick(w).p50)), 1)} / ${fmt(median(ws.map((w) => pick(w).p99)), 1)}`
        return [pair((w) => w.localMs), pair((w) => w.remoteMs)]
      })
      rows.push({ label: `${kind === 'broadcast' ? 'broadcast' : 'topic publish'}, ${rate === null ? 'burst' : `${rate}/s`}`, cells })
    }
  }
  return { header, rows }
}

function commandRows (results: ClusterResults): { header: string[], rows: Row[] } {
  const header = ['call', ...CLUSTER_SYSTEMS.map((s) => `${NAMES[s]} Redis commands per call`)]
  const label: Record<CountedCall, string> = {
    sendToUser: 'sendToUser (Socket.IO: emit to the user\'s room)',
    broadcast: 'broadcast (Socket.IO: io.emit)',
    publish: 'topic publish (Socket.IO: emit to a room)'
  }
  const rows: Row[] = (['sendToUser', 'broadcast', 'publish'] as const).map((call) => ({
    label: label[call],
    cells: CLUSTER_SYSTEMS.map((system) => {
      const counts = results.runs.filter((r) => r.system === system).map((r) => r.commands[call]).filter((c): c is CommandCount => c !== undefined)
      if (counts.length === 0) return '–'
      const per = median(counts.map((c) => c.perCall))
      const names = Object.entries(counts[0].byCommand).map(([name, n]) => `${name} ${fmt(n / counts[0].calls, 2)}`).join(', ')
      return `${fmt(per, 2)} (${names})`
    })
  }))
  return { header, rows }
}

function text ({ header, rows }: { header: string[], rows: Row[] }): string {
  const body = rows.map((r) => [r.label, ...r.cells])
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)))
  const line = (cells: string[]): string => cells.map((c, i) => i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])).join(' | ')
  return [line(header), widths.map((w) => '-'.repeat(w)).join('-|-'), ...body.map(line)].join('\n')
}

function markdown ({ header, rows }: { header: string[], rows: Row[] }): string {
  return [
    `| ${header.join(' | ')} |`,
    `|---|${header.slice(1).map(() => '---:').join('|')}|`,
    ...rows.map((r) => `| ${r.label} | ${r.cells.join(' | ')} |`)
  ].join('\n')
}

function summaryLine (results: ClusterResults): string {
  const { meta, params } = results
  const m = meta.machine
  return `Run ${meta.date} (${meta.mode}, ${meta.durationS} s, ${params.rounds} round${params.rounds === 1 ? '' : 's'} per system) on ${m.cpu}, ${m.cores} cores, ` +
    `${m.memoryGiB} GiB; Node ${m.node}, Redis ${m.redis}, socket.io ${m.versions['socket.io']}, @socket.io/redis-adapter ${m.versions['@socket.io/redis-adapter']}, ` +
    `ioredis ${m.versions.ioredis}, ws ${m.versions.ws}. ${params.nodes} nodes × ${params.perNode} connections, ${params.bytes} B JSON, ` +
    `${params.windowMs / 1000} s per rate; commit ${m.commit}; machine busy with other work before the run: ${fmt(meta.machineBusy, 2)} cores; a Date-based stamp would have been off by up to ${fmt(meta.dateClockSpreadMs * 1000, 0)} µs between these processes.`
}

/** The report printed at the end of a run. */
export function textReport (results: ClusterResults): string {
  return [summaryLine(results), '', text(fanOutRows(results)), '', text(pathRows(results)), '', text(commandRows(results))].join('\n')
}

/** The section written between the cluster-results markers of BENCHMARKS.md. */
export function markdownSection (results: ClusterResults): string {
  return [
    summaryLine(results),
    '',
    'Cells: median over rounds; "exactly once" sums over rounds. CPU in cores: the three nodes together + Redis + the client processes ' +
      'together (in brackets, the rest of the machine\'s busy time: other work, and kernel time charged to no process).',
    '',
    markdown(fanOutRows(results)),
    '',
    'Latency by path: deliveries to connections on the node that published (local) and on the other two (remote, through Redis).',
    '',
    markdown(pathRows(results)),
    '',
    markdown(commandRows(results))
  ].join('\n')
}
