// The scenarios: which server each needs, what each asks of it and of the generator, and
// which figures it returns. One call of `run` is one system in one round. bench/run.ts
// starts one server child per system, server configuration and round, runs on it every
// scenario that asks for that configuration (in the order of SCENARIOS), and interleaves
// the systems round by round. Every run leaves the server with no connection.

import type { ConnectResult, Counts, GeneratorApi, RatioResult } from './generator'
import { sleep, type Peer } from './ipc'
import type { BroadcastResult, EventLoopDelay, MemorySnapshot, ServerApi, ServerReady, ServerWindow, StreamResult } from './server-process'
import type { ServerSpec, SystemName } from './servers'
import { fitLine } from './stats'

/** The heartbeat scenario's ping interval: the real 30 s scaled down. */
export const HEARTBEAT_INTERVAL_MS = 1000

/** Sizes and durations; `quick` shrinks them so the whole run stays under a minute. */
export interface Params {
  echo: { connections: number, inFlight: number, sizes: number[], warmupMs: number, measureMs: number }
  capacity: { warmup: number, setup: number, points: number[], idleWindowMs: number, broadcasts: number, broadcastBytes: number }
  /** `broadcasts` of a `broadcastBytes` JSON value to every compressed connection (above every profile's threshold). */
  compression: { points: number[], pageBytes: number, pages: number, broadcasts: number, broadcastBytes: number }
  /**
   * Windows are whole ping intervals, so a loop that pings in bursts is counted fairly.
   * `denseCpu`: also measure CPU per ping with all connections (quick runs skip it).
   */
  heartbeat: { connections: number, realIntervalMs: number, settleMs: number, cpuWindowMs: number, denseCpu: boolean, eldWindowMs: number }
  slow: { connections: number, ms: number, bytes: number, capBytes: number, highWaterMark: number }
  /** Handshakes the generator keeps in progress at once. */
  concurrency: number
}

export const FULL: Params = {
  echo: { connections: 100, inFlight: 8, sizes: [64, 16_384], warmupMs: 600, measureMs: 1200 },
  capacity: { warmup: 500, setup: 5000, points: [5500, 7750, 10_000], idleWindowMs: 1000, broadcasts: 6, broadcastBytes: 1024 },
  compression: { points: [500, 1250, 2000], pageBytes: 10 * 1024, pages: 50, broadcasts: 10, broadcastBytes: 4096 },
  heartbeat: { connections: 10_000, realIntervalMs: 30_000, settleMs: 1100, cpuWindowMs: 2000, denseCpu: true, eldWindowMs: 2000 },
  slow: { connections: 4, ms: 2500, bytes: 16 * 1024, capBytes: 1024 ** 3, highWaterMark: 1024 ** 2 },
  concurrency: 200
}

export const QUICK: Params = {
  echo: { connections: 100, inFlight: 8, sizes: [64, 16_384], warmupMs: 200, measureMs: 400 },
  capacity: { warmup: 100, setup: 1000, points: [1100, 1550, 2000], idleWindowMs: 300, broadcasts: 5, broadcastBytes: 1024 },
  compression: { points: [200, 350, 500], pageBytes: 10 * 1024, pages: 10, broadcasts: 5, broadcastBytes: 4096 },
  heartbeat: { connections: 1500, realIntervalMs: 30_000, settleMs: 1050, cpuWindowMs: 1000, denseCpu: false, eldWindowMs: 1050 },
  slow: { connections: 4, ms: 800, bytes: 16 * 1024, capBytes: 512 * 1024 ** 2, highWaterMark: 1024 ** 2 },
  concurrency: 200
}

/** The figures of one row for one system in one round; null where a figure does not apply. */
export type Metrics = Record<string, number | null>

/** What one run returns: figures by row, and raw series worth keeping in the JSON. */
export interface RunResult {
  rows: Record<string, Metrics>
  detail?: unknown
}

/** A typed handle on a child: `call('measure')` knows what it returns. */
export interface Remote<Api> {
  call<K extends keyof Api & string> (cmd: K, args?: Api[K] extends (a: infer A) => unknown ? A : never, timeoutMs?: number):
  Promise<Api[K] extends (...a: never[]) => infer R ? Awaited<R> : never>
}

export interface ServerHandle {
  server: Remote<ServerApi>
  ready: ServerReady
  stop (): Promise<void>
}

export interface Context {
  generator: Remote<GeneratorApi>
  params: Params
  startServer (spec: ServerSpec): Promise<ServerHandle>
}

export interface Scenario {
  id: string
  title: string
  systems: readonly SystemName[]
  rounds: { full: number, quick: number }
  /** The server a system needs; scenarios that need equal servers share one child per round. */
  server (system: SystemName): ServerSpec
  run (ctx: Context, h: ServerHandle, system: SystemName): Promise<RunResult>
}

/** Wraps a Peer with the API type of its child. */
export function remote<Api> (peer: Peer): Remote<Api> {
  return peer as unknown as Remote<Api>
}

const util = (cpuUs: number, wallMs: number): number => cpuUs / (wallMs * 1000)

// Whatever happens, the scenario hands the server on with no connection left: the generator
// drops its sockets and the server is given time to process the closes before the next
// scenario measures anything.
async function clean<T> (ctx: Context, h: ServerHandle, body: () => Promise<T>): Promise<T> {
  let result: T
  try {
    result = await body()
  } catch (err) {
    await ctx.generator.call('closeAll', {}, 15_000).catch(() => {})
    throw err
  }
  await ctx.generator.call('closeAll', {}, 15_000)
  const left = await h.server.call('waitEmpty', { timeoutMs: 20_000 }, 25_000)
  if (left > 0) throw new Error(`${left} connections still open on the server after the scenario`)
  return result
}

async function connect (ctx: Context, h: ServerHandle, count: number, deflate = false): Promise<ConnectResult> {
  const result = await ctx.generator.call('connect', {
    port: h.ready.port,
    path: '/ws',
    deflate,
    headers: h.ready.headers,
    count,
    concurrency: ctx.params.concurrency,
    timeoutMs: 60_000
  }, 70_000)
  if (result.failed > 0) throw new Error(`${result.failed} of ${count} connections failed: ${result.firstError ?? ''}`)
  return result
}

// A measurement window, timed by each process on its own clock: server and generator get
// one message each, so a saturated server's slow IPC does not stretch the window.
async function window (ctx: Context, h: ServerHandle, ms: number, label: string, delayMs = 0): Promise<[ServerWindow, Counts]> {
  return Promise.all([
    h.server.call('timedWindow', { delayMs, ms, label }, delayMs + ms + 30_000),
    ctx.generator.call('timedWindow', { delayMs, ms }, delayMs + ms + 30_000)
  ])
}

function slopes (points: MemorySnapshot[]): { heap: number, rss: number, external: number } {
  const fit = (key: 'heapUsed' | 'rss' | 'external'): number => fitLine(points.map((p) => [p.connections, p[key]] as const)).slope
  return { heap: fit('heapUsed'), rss: fit('rss'), external: fit('external') }
}

const echo: Scenario = {
  id: 'echo',
  title: 'echo',
  systems: ['raw-ws', 'bare', 'plugin', 'plugin+deflate'],
  rounds: { full: 4, quick: 2 },
  server: (system) => ({ system }),
  run: (ctx, h, system) => clean(ctx, h, async () => {
    const p = ctx.params.echo
    await connect(ctx, h, p.connections, system === 'plugin+deflate')
    const rows: Record<string, Metrics> = {}
    // Compression leaves small messages alone (threshold 1 KiB): the 64 B row would repeat the plugin's.
    const sizes = system === 'plugin+deflate' ? p.sizes.filter((s) => s >= 1024) : p.sizes
    for (const bytes of sizes) {
      await ctx.generator.call('echoStart', { bytes, inFlight: p.inFlight, maxMs: 60_000 })
      const [s, g] = await window(ctx, h, p.measureMs, `echo-${bytes}`, p.warmupMs)
      const outstanding = await ctx.generator.call('echoStop')
      if (s.messages === 0) throw new Error('no message was echoed')
      if (outstanding > 0) throw new Error(`${outstanding} echoes never came back`)
      rows[`echo-${bytes}`] = {
        cpuPerMessageUs: s.cpuUs / s.messages,
        userCpuPerMessageUs: (s.cpuUs - s.systemUs) / s.messages,
        messagesPerSecond: s.messages / (s.wallMs / 1000),
        serverUtil: util(s.cpuUs, s.wallMs),
        generatorUtil: util(g.cpuUs, g.wallMs),
        generatorCpuPerMessageUs: g.cpuUs / Math.max(1, g.messages),
        // Cores busy with neither: other processes on the machine, or kernel threads.
        otherLoad: Math.max(0, g.machineBusy - util(s.cpuUs, s.wallMs) - util(g.cpuUs, g.wallMs))
      }
    }
    return { rows }
  })
}

// Issue 13: what metrics and tracing cost on the per-message path, the echo of `echo` with
// every observability setting side by side.
const observe: Scenario = {
  ...echo,
  id: 'observe',
  title: 'echo with metrics and tracing',
  systems: ['bare', 'plugin-untraced', 'plugin', 'plugin+metrics', 'plugin+otel']
}

const capacity: Scenario = {
  id: 'capacity',
  title: 'connection setup, idle connections and broadcast',
  systems: ['raw-ws', 'bare', 'plugin'],
  rounds: { full: 2, quick: 1 },
  server: (system) => ({ system }),
  run: (ctx, h) => clean(ctx, h, async () => {
    const p = ctx.params.capacity
    // Warm the upgrade path first, so the measured connections do not pay for JIT compilation.
    await connect(ctx, h, p.warmup)
    await h.server.call('waitConnections', { count: p.warmup, timeoutMs: 10_000 })
    await sleep(100)

    await Promise.all([h.server.call('mark', { label: 'setup' }), ctx.generator.call('mark')])
    const gen = await connect(ctx, h, p.setup)
    await h.server.call('waitConnections', { count: p.warmup + p.setup, timeoutMs: 10_000 })
    const setup = await h.server.call('measure')

    const points: MemorySnapshot[] = []
    let open = p.warmup + p.setup
    for (const target of p.points) {
      if (target > open) {
        await connect(ctx, h, target - open)
        open = target
        await h.server.call('waitConnections', { count: open, timeoutMs: 10_000 })
      }
      points.push(await h.server.call('memory', {}, 20_000))
    }
    const mem = slopes(points)
    const [idle] = await window(ctx, h, p.idleWindowMs, 'idle')

    await ctx.generator.call('mark')
    const expected = open * p.broadcasts
    const [b, received] = await Promise.all([
      h.server.call('broadcast', { times: p.broadcasts, bytes: p.broadcastBytes }, 60_000) as Promise<BroadcastResult>,
      ctx.generator.call('waitMessages', { count: expected, timeoutMs: 30_000 }, 40_000)
    ])
    if (received.received < b.deliveries) throw new Error(`broadcast: ${received.received} of ${b.deliveries} deliveries arrived`)

    return {
      rows: {
        setup: {
          cpuPerConnectionUs: setup.cpuUs / setup.connections,
          connectionsPerSecond: setup.connections / (setup.wallMs / 1000),
          serverUtil: util(setup.cpuUs, setup.wallMs),
          generatorUtil: util(gen.cpuUs, gen.wallMs)
        },
        idle: {
          heapPerConnection: mem.heap,
          rssPerConnection: mem.rss,
          externalPerConnection: mem.external,
          idleCpuPercent: 100 * util(idle.cpuUs, idle.wallMs)
        },
        broadcast: {
          deliveriesPerSecond: b.deliveries / (b.wallMs / 1000),
          cpuPerDeliveryUs: b.cpuUs / b.deliveries,
          endToEndPerSecond: received.received / (received.ms / 1000)
        }
      },
      detail: { memory: points }
    }
  })
}

// The systems that compress in the compression scenario; plugin (compression off) is the reference.
const COMPRESSING: readonly SystemName[] = ['raw-ws', 'bare', 'plugin+deflate', 'plugin+shared']

interface SharedCounts {
  deflated: number
  deliveries: number
}

// stats().compression.shared of the plugin systems (the shared profile's deflates); null elsewhere.
async function sharedCounts (h: ServerHandle): Promise<SharedCounts | null> {
  const stats = await h.server.call('stats', {}, 20_000) as { compression?: { shared?: SharedCounts | null } } | null
  return stats?.compression?.shared ?? null
}

const compression: Scenario = {
  id: 'compression',
  title: 'compressed connections',
  systems: ['raw-ws', 'bare', 'plugin', 'plugin+deflate', 'plugin+shared'],
  rounds: { full: 2, quick: 1 },
  // The baselines with ws's own default, `perMessageDeflate: true`; the plugin with its
  // default (compression off) shows what a connection costs without deflate.
  server: (system) => system === 'raw-ws' || system === 'bare' ? { system, deflate: true } : { system },
  run: (ctx, h, system) => clean(ctx, h, async () => {
    const p = ctx.params.compression
    const compressing = COMPRESSING.includes(system)
    const points: MemorySnapshot[] = []
    let open = 0
    let negotiated = 0
    for (const target of p.points) {
      // The generator offers what browsers offer (`permessage-deflate; client_max_window_bits`);
      // the shared profile answers with no context takeover both ways, which RFC 7692 lets a
      // server add to any offer. Each generator frame is deflated on its own, so it is valid either way.
      const c = await connect(ctx, h, target - open, true)
      if (compressing && c.deflate < target - open) {
        throw new Error(`permessage-deflate was negotiated on ${c.deflate} of ${target - open} connections`)
      }
      negotiated += c.deflate
      // One message each way, so both zlib contexts of each new connection exist (or, for the
      // shared profile, existed and were freed).
      const sent = await ctx.generator.call('sendEach', { from: open, seed: 1, bytes: p.pageBytes, timeoutMs: 20_000 }, 30_000)
      if (sent.received < sent.sent) throw new Error(`only ${sent.received} of ${sent.sent} echoes arrived`)
      open = target
      points.push(await h.server.call('memory', {}, 20_000))
    }
    const mem = slopes(points)
    const ratio: RatioResult = await ctx.generator.call('ratio', { pages: p.pages, bytes: p.pageBytes, timeoutMs: 5000 }, 30_000)

    // A compressible JSON value broadcast to every open connection, `broadcasts` times. ws
    // deflates on its thread pool after send() returns, so the window runs from the first
    // send until the generator holds every delivery; process.cpuUsage() counts every thread.
    const before = await sharedCounts(h)
    await Promise.all([h.server.call('mark', { label: 'compressed-broadcast' }), ctx.generator.call('mark')])
    const expected = open * p.broadcasts
    const [b, received] = await Promise.all([
      h.server.call('broadcast', { times: p.broadcasts, bytes: p.broadcastBytes }, 60_000) as Promise<BroadcastResult>,
      ctx.generator.call('waitMessages', { count: expected, timeoutMs: 30_000 }, 40_000)
    ])
    const s = await h.server.call('measure')
    if (b.deliveries !== expected) throw new Error(`compressed broadcast: the server sent ${b.deliveries} of ${expected} deliveries`)
    if (received.received < expected) throw new Error(`compressed broadcast: ${received.received} of ${expected} deliveries arrived`)
    const after = await sharedCounts(h)
    const shared = before === null || after === null ? null : { deflated: after.deflated - before.deflated, deliveries: after.deliveries - before.deliveries }
    if (system === 'plugin+shared' && (shared === null || shared.deliveries < expected)) {
      throw new Error(`compressed broadcast: the shared deflate served ${shared?.deliveries ?? 0} of ${expected} deliveries`)
    }

    return {
      rows: {
        compression: {
          rssPerConnection: mem.rss,
          heapPerConnection: mem.heap,
          externalPerConnection: mem.external,
          wireRatio: ratio.wire / ratio.payload,
          firstMessageRatio: ratio.firstWire / ratio.firstPayload,
          negotiatedShare: negotiated / open
        },
        compressedBroadcast: {
          deliveriesPerSecond: received.received / (received.ms / 1000),
          cpuPerDeliveryUs: s.cpuUs / expected,
          // The broadcast loop alone; with ws's own deflate most of the work comes after it.
          loopCpuPerDeliveryUs: b.cpuUs / expected,
          sharedDeflates: shared === null ? null : shared.deflated
        }
      },
      detail: { memory: points, broadcast: { loop: b, window: s, received, shared } }
    }
  })
}

const heartbeat: Scenario = {
  id: 'heartbeat',
  title: 'heartbeat',
  systems: ['raw-ws', 'bare', 'plugin'],
  rounds: { full: 2, quick: 1 },
  server: (system) => ({ system, heartbeatMs: HEARTBEAT_INTERVAL_MS }),
  run: (ctx, h) => clean(ctx, h, async () => {
    const p = ctx.params.heartbeat
    // First as many connections as give, at the scaled-down interval, the ping rate of all of
    // them at the real interval (10,000 at 30 s = 334 at 1 s): pings as sparse as in
    // production, so their cost is measured without the batching a dense schedule gets.
    const sparse = Math.ceil(p.connections * HEARTBEAT_INTERVAL_MS / p.realIntervalMs)
    await connect(ctx, h, sparse)
    await sleep(p.settleMs)
    const [rs, rg] = await window(ctx, h, p.cpuWindowMs, 'sparse')
    // Then all of them: the dense schedule, for the cost per ping and the longest block.
    await connect(ctx, h, p.connections - sparse)
    await sleep(p.settleMs)
    // CPU first, without the delay monitor, whose own timer would be counted.
    const dense = p.denseCpu ? await window(ctx, h, p.cpuWindowMs, 'dense') : null
    await ctx.generator.call('mark')
    await h.server.call('eldStart')
    await sleep(p.eldWindowMs)
    const eld: EventLoopDelay = await h.server.call('eldStop')
    const g = await ctx.generator.call('measure')
    if (rg.pings === 0 || g.pings === 0) throw new Error(`no ping arrived (sparse window ${rg.pings}, last window ${g.pings})`)
    if (rg.closes + (dense?.[1].closes ?? 0) + g.closes > 0) throw new Error('the server closed connections that answered every ping')
    return {
      rows: {
        heartbeat: {
          sparseCpuPercent: 100 * util(rs.cpuUs, rs.wallMs),
          sparsePingsPerSecond: rg.pings / (rg.wallMs / 1000),
          sparseCpuPerPingUs: rs.cpuUs / rg.pings,
          cpuPerPingUs: dense === null ? null : dense[0].cpuUs / dense[1].pings,
          pingsPerSecond: g.pings / (g.wallMs / 1000),
          serverCpuPercent: dense === null ? null : 100 * util(dense[0].cpuUs, dense[0].wallMs),
          maxBlockMs: eld.maxMs,
          p99DelayMs: eld.p99Ms,
          gcMaxMs: eld.gcMaxMs,
          gcCount: eld.gcCount
        }
      }
    }
  })
}

const slow: Scenario = {
  id: 'slow',
  title: 'slow consumer',
  systems: ['raw-ws', 'bare', 'plugin', 'plugin+drop'],
  rounds: { full: 2, quick: 1 },
  server: (system) => ({ system }),
  run: (ctx, h) => clean(ctx, h, async () => {
    const p = ctx.params.slow
    await connect(ctx, h, p.connections)
    await ctx.generator.call('pause')
    const r: StreamResult = await h.server.call('stream', {
      ms: p.ms, bytes: p.bytes, capBytes: p.capBytes, perTick: 16, sampleMs: 100
    }, p.ms + 30_000)
    return {
      rows: {
        slow: {
          peakGrowthMiB: r.peakGrowth / 1024 ** 2,
          finalGrowthMiB: r.finalGrowth / 1024 ** 2,
          secondHalfGrowthMiB: r.secondHalfGrowth / 1024 ** 2,
          retainedMiB: r.retained / 1024 ** 2,
          offeredMiB: r.offeredBytes / 1024 ** 2,
          openAtEnd: r.open
        }
      },
      detail: { samples: r.samples }
    }
  })
}

// Capacity first: its setup and memory figures want a server that has done nothing else yet.
// Slow consumer last: it leaves a server with hundreds of MiB it may keep.
export const SCENARIOS: readonly Scenario[] = [capacity, echo, compression, heartbeat, slow, observe]
