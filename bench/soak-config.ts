// What the soak's two processes share: the plugin options the server child registers, the
// wire commands of its route, and the shape of one sample it reports (bench/soak.ts reads
// these; bench/soak-server.ts produces them).

import type { WsManagerOptions } from '../lib/index'

/** The route every soak client connects to. */
export const SOAK_PATH = '/ws'

/**
 * A text message that makes the route stream to the sender until its backpressure policy
 * closes it (a stalled reader) or STREAM_MAX_BYTES went out. Anything else is echoed.
 */
export const STREAM_COMMAND = 'stream'
export const STREAM_CHUNK_BYTES = 16 * 1024
// Loopback socket buffers take several MiB before ws starts buffering; this is well past that.
export const STREAM_MAX_BYTES = 48 * 1024 * 1024

/**
 * The plugin's options in the soak: its defaults, with timers short enough that every one of
 * them fires many times a minute, and limits small enough that the load reaches each of them.
 */
export const SOAK_PLUGIN_OPTIONS = {
  auth: { algorithms: ['HS256'] },
  // A silent peer is declared dead 1000 + 2 × 500 = 2000 ms after its last pong, before the
  // idle timeout (3000 ms) would close it: the two paths stay distinguishable.
  heartbeat: { pingInterval: 1000, pongTimeout: 500, maxMissedPongs: 2 },
  idleTimeout: 3000,
  close: { timeout: 1000 },
  // About 170 connections are open in steady state; surges push past the cap for 503s.
  maxConnections: 250,
  // "Greedy" clients open four connections as one user to reach 429.
  maxConnectionsPerUser: 3,
  // Bucket of 40, refilled at 20/s: chatty clients send 5/s, floods send 120 at once.
  messageRateLimit: { max: 20, timeWindow: 1000 },
  backpressure: { highWaterMark: 64 * 1024 }
} satisfies WsManagerOptions

/** What the orchestrator hands the server child (as JSON in argv[2]). */
export interface SoakServerSpec {
  /** HS256 secret, also known to the orchestrator, which signs the clients' tokens. */
  secret: string
  /**
   * Self-check only (SOAK_INJECT_LEAK): leak on purpose per accepted connection, so the
   * verdict can be seen to fail. 'memory' keeps a 2,048-character string and a 2 KiB Buffer,
   * 'timer' an interval that is never cleared, 'fd' an open file descriptor.
   */
  leak: Array<'memory' | 'timer' | 'fd'>
}

/** One measurement of the server child, taken after forced garbage collection. */
export interface SoakSample {
  /** Milliseconds since the server child started (its own monotonic clock). */
  at: number
  rss: number
  /** RSS split as /proc/self/status has it: anonymous memory, and pages of mapped files (the node binary's code, faulted in as new paths run). */
  rssAnon: number
  rssFile: number
  heapUsed: number
  /** V8's committed heap: grows with the young generation's adaptive size, and with old space. */
  heapTotal: number
  external: number
  arrayBuffers: number
  /** Used bytes of each V8 heap space (code_space holds JIT output, which grows while code warms up). */
  spaces: Record<string, number>
  /** Entries of /proc/self/fd. */
  fds: number
  /** process.getActiveResourcesInfo() by type: what keeps the loop alive (ref'd handles, ref'd timers, requests). */
  active: Record<string, number>
  /** Live async resources by type from async_hooks (unref'd timers included; promises not counted). */
  live: Record<string, number>
  /** app.wsManager.connections.size */
  registry: number
  /** app.websocketServer.clients.size */
  wsClients: number
  /** stats().close.closing */
  closing: number
  /** stats().heartbeat.tracked */
  heartbeatTracked: number
  /** stats().admission.messages.buckets */
  buckets: number
  /** Keys of stats().delivery.byUser (kept for every user ever counted). */
  deliveryUsers: number
  /** Keys of stats().admission.messages.refusedByUser. */
  refusedUsers: number
  /** Keys of stats().frames.violationsByUser and violationsByConnection. */
  frameUsers: number
  frameConnections: number
  /** stats().connections */
  opened: number
  closed: number
  idleClosed: number
  heartbeatClosed: number
  expiredClosed: number
  slowConsumerCloses: number
  /** stats().admission.refused, by status. */
  refused: Record<string, number>
  /** CPU time (user + system) since the previous sample, in ms, and the wall time it covers. */
  cpuMs: number
  wallMs: number
  /** Longest event-loop delay since the previous sample, in ms. */
  loopMaxMs: number
  /** Milliseconds the forced garbage collection and the sample took. */
  sampleMs: number
}

/** What the server child's log said, counted: closes by code, reason and initiator; refusals; errors. */
export type LogCensus = Record<string, number>
