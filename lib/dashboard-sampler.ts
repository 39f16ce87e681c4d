// What the dashboard's live socket sends every second: one sample taken for every viewer at
// once, from counters the plugin already keeps. Nothing here runs unless a viewer is watching.
import type { FastifyBaseLogger } from 'fastify'
import type { Connection } from './connection'
import type { ClusterNode } from './cluster'
import type { WsManager } from './manager'

/** Connections listed in a sample's table; the rest are only counted. */
export const DASHBOARD_TABLE_ROWS = 500

/** One route in a {@link DashboardSample}. */
export interface DashboardRouteSample {
  /** Open connections. */
  active: number
  /** Messages received per second over the last interval. */
  messagesIn: number
  /** Messages sent per second over the last interval. */
  messagesOut: number
}

/** One row of the connections table. */
export interface DashboardRow {
  id: string
  /** Attacker-controlled (it comes from a token's claim): the page shows it as text only. */
  user: string | null
  route: string
  /** Milliseconds since the connection opened. */
  age: number
  /** Round trip of the last answered ping in milliseconds, or null. */
  latency: number | null
  /** Bytes queued in the socket and not yet written. */
  buffered: number
}

/** What the live socket sends every interval, as JSON. Counts are of the application's routes, the dashboard's own excluded. */
export interface DashboardSample {
  type: 'sample'
  /** Epoch milliseconds when the sample was taken. */
  time: number
  /** Seconds the rates and deltas below cover (0 in the first sample). */
  interval: number
  /** Open connections, all routes. */
  active: number
  routes: Record<string, DashboardRouteSample>
  /** Percentiles of the connections' last ping round trips in milliseconds; null when none has answered a ping. */
  latency: { p50: number | null, p99: number | null, count: number }
  /** Closes during the interval by close code ('other' for unregistered codes). */
  closes: Record<string, number>
  /** Refused upgrades during the interval by HTTP status. */
  refused: Record<string, number>
  /** Backpressure during the interval: messages dropped and connections closed as slow consumers. */
  drops: { dropped: number, slowConsumerCloses: number }
  /** Cluster nodes as last read from Redis (at most once per interval); null outside cluster mode. */
  cluster: { nodeId: string, healthy: boolean, complete: boolean, nodes: ClusterNode[] } | null
  /** The first {@link DASHBOARD_TABLE_ROWS} open connections, oldest first, and how many more there are. */
  connections: { rows: DashboardRow[], more: number }
  /** Dashboard viewers connected to this server. */
  viewers: number
}

/** Someone watching: receives each sample as JSON text. */
export interface DashboardViewer {
  send (sample: string): void
}

/** Settings of the sampler. */
export interface SamplerSettings {
  /** Milliseconds between samples. @default 1000 */
  interval?: number
  /** Routes left out of every figure (the dashboard's own). */
  isOwnRoute: (route: string) => boolean
  log: FastifyBaseLogger
}

interface Totals {
  time: number
  messagesIn: Map<string, number>
  messagesOut: Map<string, number>
  closes: Map<string, number>
  refused: Map<string, number>
  dropped: number
  slowConsumerCloses: number
}

function delta (now: Map<string, number>, before: Map<string, number>): Record<string, number> {
  const result: Record<string, number> = {}
  for (const [key, value] of now) {
    const d = value - (before.get(key) ?? 0)
    if (d > 0) result[key] = d
  }
  return result
}

/** Nearest-rank percentile of sorted values. */
function percentile (sorted: Float64Array, p: number): number | null {
  if (sorted.length === 0) return null
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]
}

/**
 * Takes a sample every interval while at least one viewer watches: one timer for all of them,
 * started by the first viewer and stopped when the last one leaves (or by stop()).
 */
export class DashboardSampler {
  readonly #manager: WsManager
  readonly #interval: number
  readonly #isOwnRoute: (route: string) => boolean
  readonly #log: FastifyBaseLogger
  readonly #viewers = new Set<DashboardViewer>()
  #timer: NodeJS.Timeout | null = null
  #previous: Totals | null = null
  #last: string | null = null
  #stopped = false
  // The cluster's node list, read in the background: a slow Redis delays the list, never a sample.
  #nodes: { complete: boolean, nodes: ClusterNode[] } | null = null
  #nodesPending = false

  constructor (manager: WsManager, settings: SamplerSettings) {
    this.#manager = manager
    this.#interval = settings.interval ?? 1000
    this.#isOwnRoute = settings.isOwnRoute
    this.#log = settings.log
  }

  /** Viewers watching now. */
  get viewers (): number {
    return this.#viewers.size
  }

  /** True while the timer runs. */
  get running (): boolean {
    return this.#timer !== null
  }

  /** Adds a viewer; it gets the latest sample at once. */
  add (viewer: DashboardViewer): void {
    if (this.#stopped) return
    this.#viewers.add(viewer)
    if (this.#timer === null) {
      this.#previous = null
      this.#timer = setInterval(() => this.#tick(), this.#interval)
      this.#timer.unref()
      // The first sample sets the baseline the rates are measured from.
      this.#tick()
      return
    }
    if (this.#last !== null) viewer.send(this.#last)
  }

  /** Removes a viewer; the timer stops with the last one. */
  delete (viewer: DashboardViewer): void {
    this.#viewers.delete(viewer)
    if (this.#viewers.size === 0) this.#halt()
  }

  /** Stops for good (the application is closing). */
  stop (): void {
    this.#stopped = true
    this.#viewers.clear()
    this.#halt()
  }

  #halt (): void {
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
    this.#previous = null
    this.#last = null
  }

  #tick (): void {
    this.#refreshNodes()
    let text: string
    try {
      text = JSON.stringify(this.#sample())
    } catch (err) {
      // A timer callback that throws would take the process down: a dashboard must not.
      this.#log.error({ err }, 'dashboard sample failed')
      return
    }
    this.#last = text
    for (const viewer of this.#viewers) viewer.send(text)
  }

  #refreshNodes (): void {
    const cluster = this.#manager.cluster
    if (cluster === null || this.#nodesPending) return
    this.#nodesPending = true
    cluster.nodes().then((nodes) => {
      this.#nodes = { complete: nodes.complete, nodes: [...nodes] }
    }, () => {
      this.#nodes = { complete: false, nodes: [] }
    }).finally(() => {
      this.#nodesPending = false
    })
  }

  // One sample, its rates and deltas measured from the previous one.
  #sample (): DashboardSample {
    const manager = this.#manager
    const stats = manager.stats()
    const now: Totals = {
      time: Date.now(),
      messagesIn: new Map(),
      messagesOut: new Map(),
      closes: new Map(),
      refused: new Map(Object.entries(stats.admission.refused)),
      dropped: stats.delivery.dropped,
      slowConsumerCloses: stats.delivery.slowConsumerCloses
    }
    const routes: Record<string, DashboardRouteSample> = {}
    let active = 0
    for (const [route, traffic] of Object.entries(stats.routes)) {
      if (this.#isOwnRoute(route)) continue
      active += traffic.active
      now.messagesIn.set(route, traffic.messagesReceived)
      now.messagesOut.set(route, traffic.messagesSent)
      for (const [key, n] of Object.entries(traffic.closed)) {
        const code = key.slice(0, key.indexOf('|'))
        now.closes.set(code, (now.closes.get(code) ?? 0) + n)
      }
      routes[route] = { active: traffic.active, messagesIn: 0, messagesOut: 0 }
    }
    const before = this.#previous ?? now
    const seconds = (now.time - before.time) / 1000
    if (seconds > 0) {
      for (const [route, r] of Object.entries(routes)) {
        r.messagesIn = Math.max(0, (now.messagesIn.get(route) ?? 0) - (before.messagesIn.get(route) ?? 0)) / seconds
        r.messagesOut = Math.max(0, (now.messagesOut.get(route) ?? 0) - (before.messagesOut.get(route) ?? 0)) / seconds
      }
    }
    this.#previous = now

    const rows: DashboardRow[] = []
    let more = 0
    const latencies: number[] = []
    for (const connection of manager.connections) {
      if (connection.state !== 'open' || this.#isOwnRoute(connection.route)) continue
      const latency = manager.heartbeat.getHeartbeatStats(connection.socket)?.latency ?? null
      if (latency !== null) latencies.push(latency)
      if (rows.length < DASHBOARD_TABLE_ROWS) rows.push(row(connection, latency, now.time))
      else more++
    }
    const sorted = Float64Array.from(latencies).sort()

    const cluster = manager.cluster
    return {
      type: 'sample',
      time: now.time,
      interval: seconds,
      active,
      routes,
      latency: { p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), count: sorted.length },
      closes: delta(now.closes, before.closes),
      refused: delta(now.refused, before.refused),
      drops: { dropped: now.dropped - before.dropped, slowConsumerCloses: now.slowConsumerCloses - before.slowConsumerCloses },
      cluster: cluster === null
        ? null
        : { nodeId: cluster.nodeId, healthy: cluster.healthy, complete: this.#nodes?.complete ?? false, nodes: this.#nodes?.nodes ?? [] },
      connections: { rows, more },
      viewers: this.#viewers.size
    }
  }
}

function row (connection: Connection, latency: number | null, now: number): DashboardRow {
  return {
    id: connection.id,
    user: connection.userId,
    route: connection.route,
    age: Math.max(0, now - connection.connectedAt),
    latency,
    buffered: connection.bufferedAmount
  }
}
