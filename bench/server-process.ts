// The server under test: a child process running one system (bench/servers.ts) with an echo
// route, plus the instruments the orchestrator reads over IPC. Everything it reports is
// measured inside this process: CPU time from process.cpuUsage() (user + system, all
// threads), memory after forced garbage collection (run with --expose-gc), event-loop delay
// from perf_hooks.monitorEventLoopDelay. The instruments cost nothing while not in use.

import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks'
import type WebSocket from 'ws'
import { serve, sleep } from './ipc'
import { broadcastValue, exactJson } from './payloads'
import { startSystem, type ServerSpec, type SystemServer } from './servers'
import { CpuWindows, type CpuSpan } from './shared-io'

export interface ServerReady {
  port: number
  headers: Record<string, string>
  pid: number
}

export interface ServerWindow extends CpuSpan {
  /** Data messages the route handler received. */
  messages: number
  /** Connections the route handler accepted. */
  connections: number
}

export interface MemorySnapshot {
  connections: number
  rss: number
  heapUsed: number
  external: number
  arrayBuffers: number
}

export interface EventLoopDelay {
  maxMs: number
  p99Ms: number
  meanMs: number
  /** Longest garbage-collection pause in the window, and how many there were: a block may be GC's. */
  gcMaxMs: number
  gcCount: number
}

export interface BroadcastResult {
  deliveries: number
  cpuUs: number
  wallMs: number
}

export interface StreamResult {
  /** [ms since start, RSS growth in bytes] every sampleMs. */
  samples: Array<[number, number]>
  /** Bytes handed to send(), accepted or not. */
  offeredBytes: number
  peakGrowth: number
  finalGrowth: number
  /** RSS growth between the middle and the end of the run: 0 when memory is bounded. */
  secondHalfGrowth: number
  /** heapUsed + external after garbage collection at the end, over the same at the start: what is really held. */
  retained: number
  /** Connections still open at the end. */
  open: number
}

const TEXT = Object.freeze({ binary: false })
const spec = JSON.parse(process.argv[2] ?? '{}') as ServerSpec
const counters = { messages: 0, connections: 0 }
// With a path prefix, every measurement window (mark to measure) is CPU-profiled into
// <prefix>-<label>.cpuprofile.
const windows = new CpuWindows(counters, { prefix: process.argv[3], intervalUs: 200 })

// The route handler every system runs: count, echo. One shared listener, no closure per socket.
function echo (this: WebSocket, data: WebSocket.RawData, isBinary: boolean): void {
  counters.messages++
  this.send(data as Buffer, { binary: isBinary })
}

function onSocket (socket: WebSocket): void {
  counters.connections++
  socket.on('message', echo)
}

const gc = (globalThis as { gc?: () => void }).gc
const eld = monitorEventLoopDelay({ resolution: 1 })
const gcPauses = { max: 0, count: 0 }
const gcObserver = new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    gcPauses.count++
    if (entry.duration > gcPauses.max) gcPauses.max = entry.duration
  }
})
let system: SystemServer

function cpuUs (since: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(since)
  return d.user + d.system
}

async function collected (): Promise<NodeJS.MemoryUsage> {
  if (gc === undefined) throw new Error('the server must run with --expose-gc')
  for (let i = 0; i < 4; i++) {
    gc()
    await sleep(20)
  }
  return process.memoryUsage()
}

async function held (): Promise<number> {
  const m = await collected()
  return m.heapUsed + m.external
}

const api = {
  async mark (args: { label?: string } = {}): Promise<true> {
    await windows.mark(args.label)
    return true
  },

  measure (): Promise<ServerWindow> {
    return windows.measure()
  },

  /**
   * mark, then measure `ms` later, after waiting `delayMs`: one round trip instead of three,
   * which matters when the event loop is saturated and every IPC message waits its turn.
   */
  async timedWindow (args: { delayMs: number, ms: number, label?: string }): Promise<ServerWindow> {
    await sleep(args.delayMs)
    await api.mark({ label: args.label })
    await sleep(args.ms)
    return api.measure()
  },

  /** Resolves once `count` connections are open, or at the deadline; with the number open. */
  async waitConnections (args: { count: number, timeoutMs: number }): Promise<number> {
    const deadline = performance.now() + args.timeoutMs
    while (system.clients().size < args.count && performance.now() < deadline) await sleep(2)
    return system.clients().size
  },

  /** Resolves once no connection is open and the closes were processed, or at the deadline; with the number open. */
  async waitEmpty (args: { timeoutMs: number }): Promise<number> {
    const deadline = performance.now() + args.timeoutMs
    while (system.clients().size > 0 && performance.now() < deadline) await sleep(5)
    // Let the close callbacks and the garbage they leave settle before the next measurement.
    await sleep(50)
    return system.clients().size
  },

  /** Memory after garbage collection has settled. */
  async memory (): Promise<MemorySnapshot> {
    const m = await collected()
    return { connections: system.clients().size, rss: m.rss, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers }
  },

  eldStart (): true {
    eld.reset()
    eld.enable()
    gcPauses.max = 0
    gcPauses.count = 0
    gcObserver.observe({ entryTypes: ['gc'] })
    return true
  },

  eldStop (): EventLoopDelay {
    eld.disable()
    gcObserver.disconnect()
    return { maxMs: eld.max / 1e6, p99Ms: eld.percentile(99) / 1e6, meanMs: eld.mean / 1e6, gcMaxMs: gcPauses.max, gcCount: gcPauses.count }
  },

  /** `times` broadcasts of one JSON value of `bytes` bytes, one after the other. */
  async broadcast (args: { times: number, bytes: number }): Promise<BroadcastResult> {
    const value = broadcastValue(args.bytes)
    const cpu = process.cpuUsage()
    const at = performance.now()
    let deliveries = 0
    for (let i = 0; i < args.times; i++) {
      value.seq = i
      deliveries += await system.broadcast(value)
      // Let the writes complete and I/O run between broadcasts, as a server with other work would.
      await new Promise((resolve) => setImmediate(resolve))
    }
    return { deliveries, cpuUs: cpuUs(cpu), wallMs: performance.now() - at }
  },

  /**
   * Sends to every connection as fast as the loop turns, ignoring backpressure as a naive
   * producer does, for `ms` or until `capBytes` were offered; samples RSS meanwhile. Every
   * send gets a fresh copy of the payload, as fresh data would be: ws queues what it is given
   * without copying, so sending one buffer or string over and over would cost no memory.
   */
  async stream (args: { ms: number, bytes: number, capBytes: number, perTick: number, sampleMs: number }): Promise<StreamResult> {
    const payload = exactJson(7, args.bytes)
    const held0 = await held()
    const rss0 = process.memoryUsage.rss()
    const samples: Array<[number, number]> = []
    const start = performance.now()
    let offered = 0
    const sample = (): void => { samples.push([Math.round(performance.now() - start), process.memoryUsage.rss() - rss0]) }
    const sampler = setInterval(sample, args.sampleMs)
    await new Promise<void>((resolve) => {
      const tick = (): void => {
        if (performance.now() - start >= args.ms) {
          resolve()
          return
        }
        for (const ws of system.clients()) {
          for (let i = 0; i < args.perTick && ws.readyState === 1 && offered < args.capBytes; i++) {
            ws.send(Buffer.from(payload), TEXT)
            offered += args.bytes
          }
        }
        setImmediate(tick)
      }
      tick()
    })
    clearInterval(sampler)
    sample()
    let open = 0
    for (const ws of system.clients()) if (ws.readyState === 1) open++
    const growth = samples.map((s) => s[1])
    const finalGrowth = growth[growth.length - 1]
    const retained = (await held()) - held0
    return {
      samples,
      offeredBytes: offered,
      peakGrowth: Math.max(...growth),
      finalGrowth,
      secondHalfGrowth: finalGrowth - growth[Math.floor(growth.length / 2)],
      retained,
      open
    }
  },

  stats (): unknown {
    return system.stats()
  },

  exit (): true {
    // Through process.exit so that --cpu-prof writes its profile.
    setImmediate(() => process.exit(0))
    return true
  }
}

/** The commands bench/run.ts can send to a server child. */
export type ServerApi = typeof api

async function main (): Promise<void> {
  system = await startSystem(spec, onSocket)
  serve(api, 10 * 60_000)
  const ready: ServerReady = { port: system.port, headers: system.headers, pid: process.pid }
  process.send?.({ ready })
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
