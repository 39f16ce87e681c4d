// What a load test run measured, and its two renderings: the plain-text summary table the
// command prints on stdout, and JSON (the same object, for --json-out). Times are in
// milliseconds; histograms are read once, at the end.

import type { Histogram } from 'hdr-histogram-js'

/** Percentiles of an HDR histogram, in milliseconds (recorded in microseconds, 3 significant digits). */
export interface Percentiles {
  count: number
  min: number
  mean: number
  p50: number
  p90: number
  p99: number
  max: number
}

/** Closes seen, grouped by code, reason and who began the close. */
export interface CloseTally {
  code: number
  reason: string
  /** `'tool'`: the load tester closed (1000 at the end, or terminated a straggler); `'server'`: the server or the network did. */
  initiatedBy: 'tool' | 'server'
  count: number
}

/** Connection attempts and successes from one source address. */
export interface SourceTally {
  attempted: number
  opened: number
}

/** Everything a run measured; `--json-out` writes this object. */
export interface LoadTestResult {
  /** The target, without its query string (which may carry a token). */
  url: string
  /** ISO time the run began. */
  startedAt: string
  /** From the first connection attempt to the last socket closed. */
  elapsedMs: number
  /** From the first to the last connection attempt. */
  rampMs: number
  /** From the end of the ramp to the end of sending (shorter than `duration` when stopped early). */
  holdMs: number
  /** True when the run was stopped (SIGINT, the signal option) before its duration. */
  stoppedEarly: boolean
  settings: {
    connections: number
    rampRate: number
    duration: number
    messageRate: number
    mode: 'idle' | 'text' | 'json' | 'request'
    subscribe: string[]
    tokenIn: 'header' | 'subprotocol' | 'none'
    sourceAddresses: string[]
  }
  connections: {
    /** `--connections`. */
    target: number
    attempted: number
    opened: number
    /** Attempts that did not open (refused, timed out, failed); see `errors`. */
    failed: number
    /** Attempts still in progress when the run ended, aborted without counting as errors. */
    cancelled: number
    /** Open when sending ended, before the load tester closed them. */
    openAtEnd: number
    peakOpen: number
    /** Connections that did not finish the closing handshake within `closeTimeout` and were terminated. */
    terminated: number
  }
  /** Upgrade request to open connection; null when none opened. */
  connectMs: Percentiles | null
  /** Request to reply (`--request`); null when no reply came. */
  latencyMs: Percentiles | null
  messages: {
    /** Every data message sent: scheduled messages, requests and subscriptions. */
    sent: number
    /** Every data message received (welcome messages, replies, broadcasts ...). */
    received: number
    requests: number
    /** Replies matched to a request by `id`. */
    replies: number
    /** Scheduled sends left out because the connection's buffer was full or the process fell behind. */
    skipped: number
    subscriptions: number
    /** `topic.subscribed` answers to the subscriptions. */
    subscribed: number
    /** `topic.message`s received. */
    topicMessages: number
  }
  /** Over the ramp and the hold. */
  rates: { sentPerSecond: number, receivedPerSecond: number }
  /**
   * Errors by kind: `HTTP 401` (refused upgrades), `ECONNREFUSED` and other socket error
   * codes, `connect timeout`, `reply timeout`, `no reply` (still unanswered at the end),
   * `reply error CODE` (an error reply to a request), `subscribe error CODE`,
   * `closed by server CODE` (before the end), `token command failed`.
   */
  errors: Record<string, number>
  errorCount: number
  closes: CloseTally[]
  /** Per source address (`'default'` without `--source-addresses`). */
  sources: Record<string, SourceTally>
}

function ms (us: number): number {
  return Math.round(us) / 1000
}

/** The percentiles of a histogram of microseconds, in milliseconds; null when it is empty. */
export function percentiles (histogram: Histogram): Percentiles | null {
  if (histogram.totalCount === 0) return null
  // getValueAtPercentile() answers with the top of the value's bucket, which can exceed the
  // exact maximum by up to the histogram's resolution (0.1 %): no percentile is above max.
  const max = histogram.maxValue
  const at = (percentile: number): number => ms(Math.min(histogram.getValueAtPercentile(percentile), max))
  return {
    count: histogram.totalCount,
    min: ms(histogram.minNonZeroValue),
    mean: ms(histogram.mean),
    p50: at(50),
    p90: at(90),
    p99: at(99),
    max: ms(max)
  }
}

/** The URL without query or fragment (a token may ride in `access_token`), nor credentials. */
export function redactUrl (href: string): string {
  const url = new URL(href)
  url.search = ''
  url.hash = ''
  url.username = ''
  url.password = ''
  return url.href
}

function fixed (n: number, digits = 2): string {
  return n.toFixed(digits)
}

function latencyLine (p: Percentiles | null, unit: string): string {
  if (p === null) return 'none'
  return `p50 ${fixed(p.p50)}  p90 ${fixed(p.p90)}  p99 ${fixed(p.p99)}  max ${fixed(p.max)} ms  (${p.count} ${unit})`
}

function tally (entries: Array<[string, number | string]>): string[] {
  if (entries.length === 0) return ['none']
  const width = Math.max(...entries.map(([k]) => k.length))
  return entries.map(([k, n]) => `${k.padEnd(width)}  ${n}`)
}

/** The plain-text summary table. */
export function formatSummary (result: LoadTestResult): string {
  const c = result.connections
  const m = result.messages
  const rows: Array<[string, string[]]> = [
    ['target', [result.url]],
    ['run', [`${fixed(result.elapsedMs / 1000)} s (ramp ${fixed(result.rampMs / 1000)} s, hold ${fixed(result.holdMs / 1000)} s)${result.stoppedEarly ? ', stopped early' : ''}`]],
    ['connections', [`${c.opened} of ${c.target} opened (${c.attempted} attempted, ${c.failed} failed${c.cancelled > 0 ? `, ${c.cancelled} cancelled` : ''}); peak ${c.peakOpen}; ${c.openAtEnd} open at the end${c.terminated > 0 ? `; ${c.terminated} terminated` : ''}`]],
    ['connect time', [latencyLine(result.connectMs, 'connections')]],
    ['reply latency', [latencyLine(result.latencyMs, 'replies')]],
    ['messages', [
      `sent ${m.sent} (${fixed(result.rates.sentPerSecond, 1)}/s)${m.requests > 0 ? `, ${m.requests} requests` : ''}${m.skipped > 0 ? `, ${m.skipped} skipped` : ''}`,
      `received ${m.received} (${fixed(result.rates.receivedPerSecond, 1)}/s)${m.requests > 0 ? `, ${m.replies} replies` : ''}`,
      ...(m.subscriptions > 0 ? [`subscriptions ${m.subscriptions}, ${m.subscribed} confirmed, ${m.topicMessages} topic messages`] : [])
    ]],
    ['errors', tally(Object.entries(result.errors).sort((a, b) => b[1] - a[1]))],
    ['closes', tally(result.closes.map((t) => [`${t.code}${t.reason === '' ? '' : ` ${JSON.stringify(t.reason)}`} by ${t.initiatedBy}`, t.count]))],
    ['sources', tally(Object.entries(result.sources).map(([address, s]) => [address, `${s.opened} opened of ${s.attempted}`]))]
  ]
  const width = Math.max(...rows.map(([label]) => label.length))
  const lines: string[] = []
  for (const [label, values] of rows) {
    values.forEach((value, i) => lines.push(`${(i === 0 ? label : '').padEnd(width)}  ${value}`))
  }
  return lines.join('\n') + '\n'
}

/** The result as JSON text, indented, ending with a newline. */
export function formatJson (result: LoadTestResult): string {
  return JSON.stringify(result, null, 2) + '\n'
}
