// The server under test of the scale benchmark (bench/scale.ts): a child process running one
// system, with the instruments the orchestrator reads over IPC. Every figure is measured in
// this process: CPU from process.cpuUsage() (user + system, all threads), memory after forced
// garbage collection (the child runs with --expose-gc), event-loop delay from
// perf_hooks.monitorEventLoopDelay at 1 ms, GC pauses from a PerformanceObserver.
//
// The systems, each with a heartbeat at the real 30 s interval:
//   raw-ws  ws's WebSocketServer on a node http server with the ping loop from ws's README
//           (bench/servers.ts, one setInterval over wss.clients)
//   bare    Fastify + @fastify/websocket with the same loop
//   plugin  Fastify + @fastify/jwt + this plugin registered with no options at all: auth on,
//           heartbeat 30 s, idle timeout, rate limits and per-IP cap at their defaults

import { createRequire } from 'node:module'
import type { AddressInfo } from 'node:net'
import { constants as perfConstants, monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks'
import { writeHeapSnapshot } from 'node:v8'
import type { FastifyInstance } from 'fastify'
import type WebSocket from 'ws'
import { nowUs, stamped } from './cluster-common'
import { serve, sleep } from './ipc'
import { fileLimits, JWT_SECRET, PING_INTERVAL_MS, type BroadcastSeries, type MemoryPoint, type ScaleServerReady, type ScaleServerSpec, type SentBroadcast, type ServerWindow } from './scale-common'
import { startSystem, type OnSocket, type SystemServer } from './servers'
import { CpuWindows } from './shared-io'

const load = createRequire(__filename)
const spec = JSON.parse(process.argv[2] ?? '{}') as ScaleServerSpec
const counters = { accepted: 0, closed: 0 }
const windows = new CpuWindows(counters, { prefix: spec.profilePrefix, intervalUs: 500 })

// The route handler of every system: count, and echo what arrives (nothing does here). One
// shared listener of each kind, no closure per socket.
function echo (this: WebSocket, data: WebSocket.RawData, isBinary: boolean): void {
  this.send(data as Buffer, { binary: isBinary })
}
function onClose (): void {
  counters.closed++
}
const onSocket: OnSocket = (socket) => {
  counters.accepted++
  socket.on('message', echo)
  socket.on('close', onClose)
}

// The plugin as an application registers it with nothing but its JWT secret: every option
// of the plugin at its default.
async function pluginSystem (): Promise<SystemServer> {
  const fastify = load('fastify') as typeof import('fastify')
  const app: FastifyInstance = fastify.default({ logger: false })
  await app.register(load('@fastify/jwt') as Parameters<FastifyInstance['register']>[0], { secret: JWT_SECRET, sign: { algorithm: 'HS256' } } as never)
  await app.register((load('../lib/index') as typeof import('../lib/index')).default)
  app.get('/ws', { websocket: true }, (socket) => onSocket(socket))
  await app.listen({ port: 0, host: '127.0.0.1' })
  return {
    port: (app.server.address() as AddressInfo).port,
    headers: {},
    clients: () => app.websocketServer.clients,
    broadcast: (value) => app.wsManager.broadcast(value as Record<string, unknown>),
    stats: () => app.wsManager.stats(),
    close: () => app.close()
  }
}

const gc = (globalThis as { gc?: () => void }).gc
const eld = monitorEventLoopDelay({ resolution: 1 })
const gcPauses = { max: 0, count: 0, totalMs: 0, maxKind: '', spans: [] as Array<[number, number]> }
const GC_KINDS: Record<number, string> = {
  [perfConstants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
  [perfConstants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
  [perfConstants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [perfConstants.NODE_PERFORMANCE_GC_WEAKCB]: 'weak callbacks'
}
const gcObserver = new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    gcPauses.count++
    gcPauses.totalMs += entry.duration
    gcPauses.spans.push([entry.startTime, entry.startTime + entry.duration])
    if (entry.duration > gcPauses.max) {
      gcPauses.max = entry.duration
      const detail = (entry as { detail?: { kind?: number, flags?: number } }).detail
      gcPauses.maxKind = `${GC_KINDS[detail?.kind ?? -1] ?? 'unknown'}${(detail?.flags ?? 0) !== 0 ? ` (flags ${String(detail?.flags)})` : ''}`
    }
  }
})
let system: SystemServer

const api = {
  /** Starts a window: CPU and counters from now (and the profiler, when asked for). */
  async mark (args: { label?: string } = {}): Promise<true> {
    await windows.mark(args.label)
    return true
  },

  async measure (): Promise<ServerWindow> {
    const { cpuUs, systemUs, wallMs, accepted, closed } = await windows.measure()
    return { cpuUs, systemUs, wallMs, open: system.clients().size, accepted, closed, gc: null, eld: null }
  },

  /**
   * A window of `ms` timed by this process, so no IPC falls inside it, with the GC observer
   * on (it has no timer); with `eld` the event-loop monitor runs during it too.
   */
  async window (args: { ms: number, eld: boolean, label: string }): Promise<ServerWindow> {
    // Beside the monitor, a 1 ms timer logs every stall of more than 5 ms with its span, so
    // that a stall can be told apart by whether a GC pause fell into it.
    // Instruments start after mark(), whose profiler start (with --profile) stalls the loop.
    await api.mark({ label: args.label })
    const stalls: Array<[number, number]> = []
    let last = performance.now()
    const ticker = args.eld
      ? setInterval(() => {
        const now = performance.now()
        if (now - last > 6) stalls.push([last, now])
        last = now
      }, 1)
      : null
    if (args.eld) {
      eld.reset()
      eld.enable()
    }
    gcPauses.max = 0
    gcPauses.count = 0
    gcPauses.totalMs = 0
    gcPauses.maxKind = ''
    gcPauses.spans = []
    gcObserver.observe({ entryTypes: ['gc'] })
    await sleep(args.ms)
    const result = await api.measure()
    gcObserver.disconnect()
    result.gc = { count: gcPauses.count, totalMs: gcPauses.totalMs, maxMs: gcPauses.max, maxKind: gcPauses.maxKind }
    if (args.eld) {
      eld.disable()
      clearInterval(ticker ?? undefined)
      let withoutGc = 0
      for (const [from, to] of stalls) {
        if (gcPauses.spans.some(([a, b]) => a < to && b > from)) continue
        withoutGc = Math.max(withoutGc, to - from - 1)
      }
      result.eld = { maxMs: eld.max / 1e6, p99Ms: eld.percentile(99) / 1e6, meanMs: eld.mean / 1e6, maxWithoutGcMs: withoutGc }
    }
    return result
  },

  /** Resolves once `count` connections are open, or at the deadline; with the number open. */
  async waitConnections (args: { count: number, timeoutMs: number }): Promise<number> {
    const deadline = performance.now() + args.timeoutMs
    while (system.clients().size < args.count && performance.now() < deadline) await sleep(5)
    return system.clients().size
  },

  /** Memory once garbage collection has settled. */
  async memory (): Promise<MemoryPoint> {
    if (gc === undefined) throw new Error('the server must run with --expose-gc')
    for (let i = 0; i < 4; i++) {
      gc()
      await sleep(20)
    }
    const m = process.memoryUsage()
    return { connections: system.clients().size, rss: m.rss, heapUsed: m.heapUsed, external: m.external }
  },

  /**
   * `warmup + count` broadcasts of a stamped JSON value of `bytes` bytes, one every
   * `intervalMs` on this process's own schedule (a late one does not push the next back).
   * CPU is counted from the first recorded broadcast to one interval after the last.
   */
  async broadcastSeries (args: { warmup: number, count: number, intervalMs: number, bytes: number }): Promise<BroadcastSeries> {
    const sent: SentBroadcast[] = []
    const start = performance.now()
    let cpu = process.cpuUsage()
    let at = start
    for (let seq = 0; seq < args.warmup + args.count; seq++) {
      const wait = start + seq * args.intervalMs - performance.now()
      if (wait > 0) await sleep(wait)
      if (seq === args.warmup) {
        await windows.startProfile('broadcast')
        cpu = process.cpuUsage()
        at = performance.now()
      }
      const value = stamped(seq, args.bytes)
      const deliveries = await system.broadcast(value)
      sent.push({ seq, t: value.t, callUs: nowUs() - value.t, deliveries })
    }
    await sleep(args.intervalMs)
    const d = process.cpuUsage(cpu)
    const wallMs = performance.now() - at
    await windows.stopProfile()
    return { sent, cpuUs: d.user + d.system, wallMs }
  },

  /** A heap snapshot into `file` (bench/scale-heap.ts compares two); the path written. */
  heapSnapshot (args: { file: string }): string {
    return writeHeapSnapshot(args.file)
  },

  exit (): true {
    setImmediate(() => process.exit(0))
    return true
  }
}

/** The commands bench/scale.ts can send to a server child. */
export type ScaleServerApi = typeof api

async function main (): Promise<void> {
  system = spec.system === 'plugin'
    ? await pluginSystem()
    : await startSystem({ system: spec.system, heartbeatMs: PING_INTERVAL_MS }, onSocket)
  serve(api, 20 * 60_000)
  const ready: ScaleServerReady = { port: system.port, pid: process.pid, nofile: fileLimits().soft }
  process.send?.({ ready })
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
