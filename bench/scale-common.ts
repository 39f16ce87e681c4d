// What the processes of the scale benchmark (bench/scale.ts) share: the sizes of a run, the
// shapes of the commands and answers, the source addresses, the tokens, the open-file limit.
//
// Times are microseconds of the machine-wide monotonic clock (nowUs from cluster-common.ts):
// a stamp taken in the server child and a reading taken in a client child subtract without
// any offset between them.

import { spawnSync } from 'node:child_process'
import { createHmac } from 'node:crypto'
import { readFileSync } from 'node:fs'

/** The systems side by side: raw ws, bare @fastify/websocket, the plugin with its defaults. */
export const SCALE_SYSTEMS = ['raw-ws', 'bare', 'plugin'] as const
export type ScaleSystem = typeof SCALE_SYSTEMS[number]

/** The phases of a run: idle connections, then broadcast latency. */
export const PHASES = ['idle', 'broadcast'] as const
export type Phase = typeof PHASES[number]

/** The real ping interval: the plugin's default, and the interval of the baselines' loop. */
export const PING_INTERVAL_MS = 30_000

/** The sizes of a run. */
export interface ScaleParams {
  idle: {
    /** Connections held at the end of the ramp. */
    connections: number
    /** Connections opened first and not measured, so the ramp does not pay for JIT compilation. */
    warmup: number
    /** Memory is read at these shares of `connections`; the per-connection figure is the slope. */
    shares: number[]
    /** The CPU window, without the event-loop monitor; a whole ping interval contains one full round. */
    cpuWindowMs: number
    /** The event-loop window (monitorEventLoopDelay at 1 ms, whose own timer costs CPU, hence apart). */
    eldWindowMs: number
  }
  broadcast: {
    connections: number
    /** JSON bytes of every broadcast value. */
    bytes: number
    /** Broadcasts sent first and not recorded (their deliveries are still checked). */
    warmup: number
    /** Recorded broadcasts. */
    count: number
    /** From one broadcast call to the next. */
    intervalMs: number
  }
  /** Connections per source address: below the plugin's default maxConnectionsPerIp (100). */
  perAddress: number
  /** The most connections one client child holds, under the usual 20,000 open-file limit. */
  perClient: number
  /** Handshakes each client child keeps in progress at once. */
  concurrency: number
}

export const FULL: ScaleParams = {
  idle: { connections: 100_000, warmup: 1000, shares: [0.5, 0.75, 1], cpuWindowMs: PING_INTERVAL_MS, eldWindowMs: PING_INTERVAL_MS },
  broadcast: { connections: 10_000, bytes: 1024, warmup: 5, count: 20, intervalMs: 200 },
  perAddress: 50,
  perClient: 17_000,
  concurrency: 100
}

// Quick windows are far shorter than a ping interval: their CPU and block figures show that
// the instruments work, not what a ping round costs.
export const QUICK: ScaleParams = {
  idle: { connections: 10_000, warmup: 500, shares: [0.5, 0.75, 1], cpuWindowMs: 2000, eldWindowMs: 2000 },
  broadcast: { connections: 2000, bytes: 1024, warmup: 3, count: 10, intervalMs: 100 },
  perAddress: 50,
  perClient: 17_000,
  concurrency: 100
}

/** Open files a server child needs beyond its sockets: stdio, IPC, libuv, the listener, modules. */
export const FD_RESERVE = 500

/** Client children for `connections`: at least two, none holding more than `perClient`. */
export function clientCount (connections: number, params: ScaleParams): number {
  return Math.max(2, Math.ceil(connections / params.perClient))
}

// ---- source addresses ------------------------------------------------------------------
//
// Each connection binds a source address of 127.0.0.0/8 (the kernel routes the whole block to
// loopback), `perAddress` to one address. The orchestrator hands out address numbers from one
// counter over the whole run, so no phase reuses an address whose ports an earlier one left
// in TIME_WAIT. Number n is 127.(10 + n / 64,000).(n / 250 mod 256).(1 + n mod 250).
/** Source address number `n`. */
export function sourceAddress (n: number): string {
  return `127.${10 + Math.floor(n / 64_000) % 240}.${Math.floor(n / 250) % 256}.${1 + n % 250}`
}

// ---- tokens ------------------------------------------------------------------------------
//
// Every connection presents its own JWT (subject `user-<n>`), HS256 with the secret the
// plugin's @fastify/jwt verifies with. The client children sign them with node:crypto: one
// HMAC per connection, no JWT library in the clients.
export const JWT_SECRET = 'fastify-ws-manager-scale-bench-secret-not-for-production'
const JWT_HEADER = Buffer.from(JSON.stringify({ alg: 'HS256', typ: 'JWT' })).toString('base64url')

/** An HS256 token for `user-<n>`, as @fastify/jwt's sign() would make it. */
export function tokenFor (n: number, secret: string, iat = Math.floor(Date.now() / 1000)): string {
  const body = `${JWT_HEADER}.${Buffer.from(JSON.stringify({ sub: `user-${n}`, iat })).toString('base64url')}`
  return `${body}.${createHmac('sha256', secret).update(body).digest('base64url')}`
}

// ---- the open-file limit -------------------------------------------------------------------

/** The soft and hard open-file limits of this process, from /proc/self/limits. */
export function fileLimits (): { soft: number, hard: number } {
  const line = /^Max open files\s+(\S+)\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))
  const read = (v: string | undefined): number => v === undefined || v === 'unlimited' ? Infinity : Number(v)
  return { soft: read(line?.[1]), hard: read(line?.[2]) }
}

/**
 * Whether a child can be started with `n` open files: at once when the hard limit allows it
 * (Node raises its soft limit to the hard one at start), otherwise through `ulimit -n` in a
 * shell, which needs CAP_SYS_RESOURCE. Null when it can, or why it cannot.
 */
export function cannotRaise (n: number): string | null {
  const { hard } = fileLimits()
  if (n <= hard) return null
  const tried = spawnSync('sh', ['-c', `ulimit -n ${n}`], { encoding: 'utf8' })
  if (tried.status === 0) return null
  return `the open-file limit is ${hard} per process (hard) and raising it to ${n} failed ` +
    `(${tried.stderr.trim().split('\n')[0] ?? 'ulimit failed'}): raising a hard limit needs CAP_SYS_RESOURCE, which this process lacks`
}

// ---- commands and answers ------------------------------------------------------------------

/** What a server child is asked to build. */
export interface ScaleServerSpec {
  system: ScaleSystem
  /** CPU-profile the measurement windows into files starting with this path. */
  profilePrefix?: string
}

export interface ScaleServerReady {
  port: number
  pid: number
  /** The open-file limit the child runs with. */
  nofile: number
}

/** CPU of one process over a window, µs, and the window's length. */
export interface CpuWindow {
  cpuUs: number
  /** Of which in the kernel. */
  systemUs: number
  wallMs: number
}

export interface ServerWindow extends CpuWindow {
  /** Connections open at the end. */
  open: number
  /** Connections the route handler accepted in the window, and those that closed. */
  accepted: number
  closed: number
  /** Garbage-collection pauses in the window (steady windows only). */
  gc: { count: number, totalMs: number, maxMs: number, maxKind: string } | null
  /** Event-loop figures, when the window had the monitor on. */
  eld: {
    maxMs: number
    p99Ms: number
    meanMs: number
    /** The longest stall no GC pause fell into (from a 1 ms timer; 0 when none passed 5 ms). */
    maxWithoutGcMs: number
  } | null
}

export interface MemoryPoint {
  connections: number
  rss: number
  heapUsed: number
  external: number
}

/** One broadcast as the server made it. */
export interface SentBroadcast {
  seq: number
  /** The stamp the value carries: just before the call. */
  t: number
  /** The call's own duration, µs (the plugin's is a promise: until it resolved). */
  callUs: number
  /** What the call reported: connections that took it. */
  deliveries: number
}

export interface BroadcastSeries {
  sent: SentBroadcast[]
  /** CPU from the first recorded call to one interval after the last. */
  cpuUs: number
  wallMs: number
}

export interface ClientConnectArgs {
  port: number
  count: number
  /** Source address number of the first connection; each address takes `perAddress`. */
  firstAddress: number
  perAddress: number
  /** User number of the first connection (its token's subject). */
  firstUser: number
  secret: string
  concurrency: number
  timeoutMs: number
}

export interface ClientConnectResult extends CpuWindow {
  opened: number
  failed: number
  firstError: string | null
  /** Connections this child holds now. */
  open: number
}

export interface ClientCounts extends CpuWindow {
  pings: number
  /** Close frames and resets the server sent, and connections lost. */
  closes: number
  lost: number
  messages: number
  open: number
}

export interface ClientReceived {
  /** Distinct expected messages, over all connections. */
  received: number
  duplicates: number
  missing: number
  /** Messages that were not part of the run. */
  other: number
  /** Latency of every recorded delivery, µs, hdr-histogram-js compressed base64. */
  histogram: string
  /** The latest receipt of each sequence number, µs of the monotonic clock (0: none). */
  lastUs: number[]
  cpuUs: number
}
