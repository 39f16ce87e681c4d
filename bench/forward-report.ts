// The figures of the forwarding benchmark (bench/forward.ts) and their tables: text for the
// terminal, Markdown for BENCHMARKS.md. Cells are medians over runs, with the range.
import { summarize, type Summary } from './stats'

/** The four ways the bytes travel. */
export const PATHS = ['direct', 'ssh -L', 'tcpTunnel', 'sshTunnel'] as const
export type ForwardPath = typeof PATHS[number]
export type Direction = 'download' | 'upload'

/** Processes whose CPU is measured; which of them forward bytes depends on the path. */
export const PROCS = ['server', 'sshd', 'ssh', 'source', 'client'] as const
export type Proc = typeof PROCS[number]

/** The processes that do the forwarding on each path (the client and the source are the ends). */
export const FORWARDERS: Record<ForwardPath, Proc[]> = {
  direct: [],
  'ssh -L': ['ssh', 'sshd'],
  tcpTunnel: ['server'],
  sshTunnel: ['server', 'sshd']
}

/** What one run does. */
export interface ForwardParams {
  /** Bytes of each bulk transfer. */
  bytes: number
  /** Measured transfers per path and direction. */
  runs: number
  /** Measured session openings per kind. */
  opens: number
  /** Most milliseconds one transfer may take. */
  timeoutMs: number
}

/** One bulk transfer. */
export interface TransferRun {
  path: ForwardPath
  direction: Direction
  run: number
  /** What arrived (download) or what the sink counted (upload); must equal params.bytes. */
  bytes: number
  ms: number
  /** 10^6 bytes per second, from the client's connect to the last byte (download) or the sink's count (upload). */
  mbps: number
  /** CPU µs of each process over the transfer. */
  cpuUs: Record<Proc, number>
  /** Cores the rest of the machine kept busy meanwhile (other work disturbs the figure). */
  otherCores: number
}

/** The session openings of one kind. */
export interface OpenSeries {
  kind: string
  what: string
  ms: number[]
  median: number
  p90: number
}

/** Everything a run writes to its JSON file. */
export interface ForwardResults {
  meta: {
    date: string
    mode: 'full' | 'quick'
    durationS: number
    machine: { commit: string, cpu: string, cores: number, memoryGiB: number, node: string }
    /** Cores busy with other work in the second before the run. */
    machineBusy: number
    versions: Record<string, string>
  }
  params: ForwardParams
  transfers: TransferRun[]
  opens: OpenSeries[]
  /** The server's forwarding counters and pool counts at the end. */
  server: unknown
  /** Transfers that did not move exactly params.bytes, and other failures: empty on a good run. */
  problems: string[]
}

/** Nearest-rank percentile of the values, q in (0, 1]. */
export function percentile (values: readonly number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.max(0, Math.ceil(q * sorted.length) - 1)] as number
}

/** Cores the process `p` kept busy over a transfer. */
export function cores (run: TransferRun, p: Proc): number {
  return run.cpuUs[p] / (run.ms * 1000)
}

function runsOf (r: ForwardResults, path: ForwardPath, direction: Direction): TransferRun[] {
  return r.transfers.filter((t) => t.path === path && t.direction === direction)
}

/** Median MB/s of a path and direction; null when it was not run. */
export function medianMbps (r: ForwardResults, path: ForwardPath, direction: Direction): Summary | null {
  return summarize(runsOf(r, path, direction).map((t) => t.mbps))
}

const fmt = (n: number, digits = 0): string => n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })

function range (s: Summary | null, digits = 0): string {
  if (s === null) return 'not run'
  return s.n === 1 ? fmt(s.median, digits) : `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`
}

const LABEL: Record<Proc, string> = { server: 'node', sshd: 'sshd', ssh: 'ssh', source: 'source', client: 'client' }

// The forwarders' CPU: cores each (median over runs), and CPU seconds per GiB moved, all together.
function cpuCell (runs: TransferRun[], path: ForwardPath): string {
  const procs = FORWARDERS[path]
  if (procs.length === 0 || runs.length === 0) return '–'
  const parts = procs.map((p) => `${LABEL[p]} ${fmt(summarize(runs.map((t) => cores(t, p)))?.median ?? 0, 2)}`)
  const perGiB = summarize(runs.map((t) => procs.reduce((n, p) => n + t.cpuUs[p], 0) / 1e6 / (t.bytes / 1024 ** 3)))?.median ?? 0
  return `${parts.join(' + ')} cores; ${fmt(perGiB, 2)} s/GiB`
}

function clientCell (runs: TransferRun[]): string {
  return runs.length === 0 ? '–' : fmt(summarize(runs.map((t) => cores(t, 'client')))?.median ?? 0, 2)
}

const PATH_LABEL: Record<ForwardPath, string> = {
  direct: 'direct TCP (baseline)',
  'ssh -L': '`ssh -L` (OpenSSH client and sshd)',
  tcpTunnel: '`tcpTunnel` (WebSocket → TCP)',
  sshTunnel: '`sshTunnel` (WebSocket → SSH direct-tcpip, warm pool)'
}

/** The two tables, as Markdown. */
export function markdownSection (r: ForwardResults): string {
  const m = r.meta.machine
  const v = r.meta.versions
  const mib = r.params.bytes / 1024 ** 2
  const lines = [
    `Run ${r.meta.date.slice(0, 16).replace('T', ' ')} UTC (${r.meta.mode}, ${r.meta.durationS} s) on ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB; ` +
      `Node ${m.node}, ssh2 ${v.ssh2}, ${v.openssh}, fastify ${v.fastify}, ws ${v.ws}; commit ${m.commit}.`,
    '',
    `Bulk transfer of ${fmt(mib)} MiB, ${r.params.runs} run${r.params.runs === 1 ? '' : 's'} per path and direction, paths interleaved. ` +
      'MB/s is 10^6 bytes a second from the client\'s connect to the last byte (download) or to the sink\'s count (upload); ' +
      'cells are the median (min–max) over runs. Forwarder CPU: cores each forwarding process kept busy during the transfer, ' +
      'and their CPU seconds together per GiB moved.',
    '',
    '| path | download MB/s | forwarder CPU (download) | upload MB/s | forwarder CPU (upload) | client CPU (cores, down / up) |',
    '|---|---:|---|---:|---|---|'
  ]
  for (const path of PATHS) {
    const down = runsOf(r, path, 'download')
    const up = runsOf(r, path, 'upload')
    lines.push(`| ${PATH_LABEL[path]} | ${range(medianMbps(r, path, 'download'))} | ${cpuCell(down, path)} | ` +
      `${range(medianMbps(r, path, 'upload'))} | ${cpuCell(up, path)} | ${clientCell(down)} / ${clientCell(up)} |`)
  }
  const other = summarize(r.transfers.map((t) => t.otherCores))
  if (other !== null) {
    lines.push('', `Other work on the machine: ${fmt(r.meta.machineBusy, 2)} cores in the second before the run; ` +
      `${fmt(other.median, 2)} cores (max ${fmt(other.max, 2)}) during the transfers, besides the processes above.`)
  }
  const tcp = medianMbps(r, 'tcpTunnel', 'download')?.median
  const ssh = medianMbps(r, 'sshTunnel', 'download')?.median
  const sshL = medianMbps(r, 'ssh -L', 'download')?.median
  if (tcp !== undefined && ssh !== undefined && sshL !== undefined) {
    lines.push('', `Download, against \`ssh -L\`: tcpTunnel ${fmt(tcp / sshL, 2)}×, sshTunnel ${fmt(ssh / sshL, 2)}×.`)
  }
  lines.push(
    '',
    `Session open time, ${r.params.opens} openings of each kind, interleaved (one more first, not counted): ` +
      'from connecting (`new WebSocket()` for the handlers) to the first byte of a service that writes a greeting as it accepts.',
    '',
    '| session | median ms | p90 ms |',
    '|---|---:|---:|'
  )
  for (const o of r.opens) lines.push(`| ${o.what} | ${fmt(o.median, 2)} | ${fmt(o.p90, 2)} |`)
  return lines.join('\n')
}

/** A short text summary for the terminal. */
export function textReport (r: ForwardResults): string {
  const lines: string[] = []
  for (const direction of ['download', 'upload'] as const) {
    for (const path of PATHS) {
      const s = medianMbps(r, path, direction)
      if (s === null) continue
      const runs = runsOf(r, path, direction)
      const cpu = FORWARDERS[path].map((p) => `${p} ${fmt(summarize(runs.map((t) => cores(t, p)))?.median ?? 0, 2)}`).join(', ')
      lines.push(`${direction.padEnd(8)} ${path.padEnd(10)} ${range(s).padStart(22)} MB/s  ${cpu}`)
    }
  }
  for (const o of r.opens) lines.push(`open ${o.kind.padEnd(18)} median ${fmt(o.median, 2)} ms, p90 ${fmt(o.p90, 2)} ms`)
  const other = summarize(r.transfers.map((t) => t.otherCores))
  lines.push(`other load: ${fmt(r.meta.machineBusy, 2)} cores before the run, ${fmt(other?.median ?? 0, 2)} (max ${fmt(other?.max ?? 0, 2)}) during transfers`)
  return lines.join('\n')
}
