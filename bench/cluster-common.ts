// What the processes of the cross-node fan-out benchmark (bench/cluster.ts) share: the
// systems, the shapes of the commands and answers, the clock and the stamped payload.
//
// Times are microseconds of the monotonic clock (process.hrtime). On Linux that is
// CLOCK_MONOTONIC, one clock for every process of the machine, so a stamp taken in a server
// process and a reading taken in the client process subtract without any offset between them.
// The Date-based alternative (performance.timeOrigin + performance.now()) carries each
// process's own reading of the realtime clock at its start; clockOffsetMs() measures how far
// those readings disagree, and the run records it.

/** The two systems under test. */
export const CLUSTER_SYSTEMS = ['plugin', 'socket.io'] as const
export type ClusterSystem = typeof CLUSTER_SYSTEMS[number]

/** The size of a run. */
export interface ClusterParams {
  nodes: number
  perNode: number
  /** JSON bytes of every published value. */
  bytes: number
  /** Publishes per second over the whole cluster, one window each. */
  rates: number[]
  windowMs: number
  /** Messages each node publishes back to back in the burst window. */
  burst: number
  /** Calls whose Redis commands are counted. */
  calls: number
  rounds: number
  /** Client processes; the connections are shared out between them. */
  clients: number
  /** Length of the unrecorded warm-up window of each kind. */
  warmupMs: number
}

/** What a node is asked to build. */
export interface NodeSpec {
  system: ClusterSystem
  nodeId: string
  redis: string
  /** Keeps this run's channels apart from anything else on the same Redis. */
  prefix: string
}

export interface NodeReady {
  port: number
  pid: number
  /** Realtime minus monotonic clock in this process, ms: its spread over the processes is the error a Date-based stamp would add. */
  clockOffsetMs: number
}

/** The kinds of publish: to every connection, or to the one topic every connection is in. */
export type PublishKind = 'broadcast' | 'topic'

export interface PublishArgs {
  kind: PublishKind
  count: number
  /** 0 publishes back to back, yielding to I/O between publishes. */
  intervalMs: number
  /** Delay before the first publish: the nodes' schedules are staggered, so the cluster publishes evenly. */
  offsetMs: number
  /** Sequence number of this node's first message; the others follow. */
  seqBase: number
  bytes: number
}

export interface PublishResult {
  published: number
  failed: number
  firstError: string | null
  /** What the publish calls resolved with, summed (deliveries the system counted, where it says). */
  reported: number
  wallMs: number
}

/** Calls whose Redis commands are counted. */
export type CountedCall = 'sendToUser' | 'broadcast' | 'publish'

export interface Window {
  cpuUs: number
  wallMs: number
}

/** The topic (plugin) or room (Socket.IO) every connection joins. */
export const TOPIC = 'bench'
/** The route of every node. */
export const PATH = '/ws'
/** Socket.IO's event name for the published values. */
export const EVENT = 'm'

/** Microseconds of the machine-wide monotonic clock. */
export function nowUs (): number {
  return Number(process.hrtime.bigint()) / 1e3
}

/** Realtime minus monotonic, in ms, read back to back (the smallest gap of a few reads). */
export function clockOffsetMs (): number {
  let best = Infinity
  let offset = 0
  for (let i = 0; i < 20; i++) {
    const a = nowUs()
    const wall = performance.timeOrigin + performance.now()
    const b = nowUs()
    if (b - a < best) {
      best = b - a
      offset = wall - (a + b) / 2e3
    }
  }
  return offset
}

/** The published value: `{"t":…,"s":…,"p":"…"}`, padded so that its JSON is exactly `bytes` bytes. */
export function stamped (seq: number, bytes: number): { t: number, s: number, p: string } {
  const value = { t: Math.round(nowUs()), s: seq, p: '' }
  const room = bytes - JSON.stringify(value).length
  if (room > 0) value.p = PAD.slice(0, room)
  return value
}
const PAD = 'x'.repeat(4096)
