// The scenarios: what each one asks of a fresh server child and the generator, and which
// figures it returns. One call of `run` is one system in one round; bench/run.ts interleaves
// the systems round by round.

import type { ConnectResult, Counts, GeneratorApi, RatioResult } from './generator'
import { sleep, type Peer } from './ipc'
import type { BroadcastResult, EventLoopDelay, MemorySnapshot, ServerApi, ServerReady, ServerWindow, StreamResult } from './server-process'
import type { ServerSpec, SystemName } from './servers'
import { fitLine } from './stats'

/** Sizes and durations; `quick` shrinks them so the whole run stays under a minute. */
export interface Params {
  echo: { connections: number, inFlight: number, sizes: number[], warmupMs: number, measureMs: number }
  capacity: { warmup: number, setup: number, points: number[], idleWindowMs: number, broadcasts: number, broadcastBytes: number }
  compression: { points: number[], pageBytes: number, pages: number }
  heartbeat: { connections: number, intervalMs: number, realIntervalMs: number, settleMs: number, cpuWindowMs: number, eldWindowMs: number }
  slow: { connections: number, ms: number, bytes: number, capBytes: number, highWaterMark: number }
  /** Handshakes the generator keeps in progress at once. */
  concurrency: number
}

export const FULL: Params = {
  echo: { connections: 100, inFlight: 8, sizes: [64, 16_384], warmupMs: 600, measureMs: 1200 },
  capacity: { warmup: 500, setup: 5000, points: [5500, 7750, 10_000], idleWindowMs: 1000, broadcasts: 20, broadcastBytes: 1024 },
  compression: { points: [500, 1250, 2000], pageBytes: 10 * 1024, pages: 50 },
  heartbeat: { connections: 10_000, intervalMs: 1000, realIntervalMs: 30_000, settleMs: 1100, cpuWindowMs: 2000, eldWindowMs: 2000 },
  slow: { connections: 4, ms: 2500, bytes: 16 * 1024, capBytes: 1024 ** 3, highWaterMark: 1024 ** 2 },
  concurrency: 200
}

export const QUICK: Params = {
  echo: { connections: 100, inFlight: 8, sizes: [64, 16_384], warmupMs: 250, measureMs: 500 },
  capacity: { warmup: 100, setup: 1000, points: [1100, 2000, 3000], idleWindowMs: 400, broadcasts: 5, broadcastBytes: 1024 },
  compression: { points: [200, 400, 600], pageBytes: 10 * 1024, pages: 10 },
  heartbeat: { connections: 3000, intervalMs: 1000, realIntervalMs: 30_000, settleMs: 1050, cpuWindowMs: 1000, eldWindowMs: 1100 },
  slow: { connections: 4, ms: 1000, bytes: 16 * 1024, capBytes: 512 * 1024 ** 2, highWaterMark: 1024 ** 2 },
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
  run (ctx: Context, system: SystemName): Promise<RunResult>
}

/** Wraps a Peer with the API type of its child. */
export function remote<Api> (peer: Peer): Remote<Api> {
  return peer as unknown as Remote<Api>
}

const util = (cpuUs: number, wallMs: number): number => cpuUs / (wallMs * 1000)

async function withServer (ctx: Context, spec: ServerSpec, body: (h: ServerHandle) => Promise<RunResult>): Promise<RunResult> {
  const handle = await ctx.startServer(spec)
  try {
    return await body(handle)
  } finally {
    // The server goes first: its sockets close from its side, so no TIME_WAIT is left on
    // the generator's source ports.
    await handle.stop()
    await ctx.generator.call('closeAll', {}, 15_000)
  }
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

async function window (ctx: Context, h: ServerHandle, ms: number): Promise<[ServerWindow, Counts]> {
  await Promise.all([h.server.call('mark'), ctx.generator.call('mark')])
  await sleep(ms)
  return Promise.all([h.server.call('measure'), ctx.generator.call('measure')])
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
  run: (ctx, system) => withServer(ctx, { system }, async (h) => {
    const p = ctx.params.echo
    await connect(ctx, h, p.connections, system === 'plugin+deflate')
    const rows: Record<string, Metrics> = {}
    // Compression leaves small messages alone (threshold 1 KiB): the 64 B row would repeat the plugin's.
    const sizes = system === 'plugin+deflate' ? p.sizes.filter((s) => s >= 1024) : p.sizes
    for (const bytes of sizes) {
      await ctx.generator.call('echoStart', { bytes, inFlight: p.inFlight, maxMs: 60_000 })
      await sleep(p.warmupMs)
      const [s, g] = await window(ctx, h, p.measureMs)
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

const capacity: Scenario = {
  id: 'capacity',
  title: 'connection setup, idle connections and broadcast',
  systems: ['raw-ws', 'bare', 'plugin'],
  rounds: { full: 2, quick: 1 },
  run: (ctx, system) => withServer(ctx, { system }, async (h) => {
    const p = ctx.params.capacity
    // Warm the upgrade path first, so the measured connections do not pay for JIT compilation.
    await connect(ctx, h, p.warmup)
    await h.server.call('waitConnections', { count: p.warmup, timeoutMs: 10_000 })
    await sleep(100)

    await Promise.all([h.server.call('mark'), ctx.generator.call('mark')])
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
    const [idle] = await window(ctx, h, p.idleWindowMs)

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

const compression: Scenario = {
  id: 'compression',
  title: 'compressed connections',
  systems: ['raw-ws', 'bare', 'plugin', 'plugin+deflate'],
  rounds: { full: 2, quick: 1 },
  // The baselines with ws's own default, `perMessageDeflate: true`; the plugin with its
  // default (compression off) shows what a connection costs without deflate.
  run: (ctx, system) => withServer(ctx, { system, deflate: system === 'raw-ws' || system === 'bare' }, async (h) => {
    const p = ctx.params.compression
    const points: MemorySnapshot[] = []
    let open = 0
    let negotiated = 0
    for (const target of p.points) {
      const c = await connect(ctx, h, target - open, true)
      negotiated += c.deflate
      // One message each way, so both zlib contexts of each new connection exist.
      const sent = await ctx.generator.call('sendEach', { from: open, seed: 1, bytes: p.pageBytes, timeoutMs: 20_000 }, 30_000)
      if (sent.received < sent.sent) throw new Error(`only ${sent.received} of ${sent.sent} echoes arrived`)
      open = target
      points.push(await h.server.call('memory', {}, 20_000))
    }
    const mem = slopes(points)
    const ratio: RatioResult = await ctx.generator.call('ratio', { pages: p.pages, bytes: p.pageBytes, timeoutMs: 5000 }, 30_000)
    return {
      rows: {
        compression: {
          rssPerConnection: mem.rss,
          heapPerConnection: mem.heap,
          externalPerConnection: mem.external,
          wireRatio: ratio.wire / ratio.payload,
          firstMessageRatio: ratio.firstWire / ratio.firstPayload,
          negotiatedShare: negotiated / open
        }
      },
      detail: { memory: points }
    }
  })
}

const heartbeat: Scenario = {
  id: 'heartbeat',
  title: 'heartbeat',
  systems: ['raw-ws', 'bare', 'plugin'],
  rounds: { full: 2, quick: 1 },
  run: (ctx, system) => withServer(ctx, { system, heartbeatMs: ctx.params.heartbeat.intervalMs }, async (h) => {
    const p = ctx.params.heartbeat
    // First as many connections as give, at the scaled-down interval, the ping rate of all of
    // them at the real interval (10,000 at 30 s = 334 at 1 s): pings as sparse as in
    // production, so their cost is measured without the batching a dense schedule gets.
    const sparse = Math.ceil(p.connections * p.intervalMs / p.realIntervalMs)
    await connect(ctx, h, sparse)
    await sleep(p.settleMs)
    const [rs, rg] = await window(ctx, h, p.cpuWindowMs)
    // Then all of them: the dense schedule, for the cost per ping and the longest block.
    await connect(ctx, h, p.connections - sparse)
    await sleep(p.settleMs)
    // CPU first, without the delay monitor, whose own timer would be counted.
    const [s, g] = await window(ctx, h, p.cpuWindowMs)
    await h.server.call('eldStart')
    await sleep(p.eldWindowMs)
    const eld: EventLoopDelay = await h.server.call('eldStop')
    const gEnd = await ctx.generator.call('measure')
    if (g.pings === 0 || rg.pings === 0) throw new Error(`no ping arrived (sparse window ${rg.pings}, dense window ${g.pings})`)
    if (gEnd.closes > 0) throw new Error(`${gEnd.closes} connections were closed by the server`)
    return {
      rows: {
        heartbeat: {
          sparseCpuPercent: 100 * util(rs.cpuUs, rs.wallMs),
          sparsePingsPerSecond: rg.pings / (rg.wallMs / 1000),
          sparseCpuPerPingUs: rs.cpuUs / rg.pings,
          cpuPerPingUs: s.cpuUs / g.pings,
          pingsPerSecond: g.pings / (g.wallMs / 1000),
          serverCpuPercent: 100 * util(s.cpuUs, s.wallMs),
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
  run: (ctx, system) => withServer(ctx, { system }, async (h) => {
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

export const SCENARIOS: readonly Scenario[] = [echo, capacity, compression, heartbeat, slow]
