// Prometheus metrics on prom-client (issue 13). Counters the plugin already keeps are read at
// scrape time through `collect()`; histograms are observed per pong, per close and per routed
// message only. Nothing here runs per message when metrics are off, and next to nothing when on.
import type { FastifyInstance, FastifyRequest, onRequestHookHandler } from 'fastify'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type Metric } from 'prom-client'
import type { ResolvedMetricsOptions } from './metrics-options'
import type { CloseInfo, Connection } from './connection'
import type { WsManagerStats } from './manager'
import type { RouterErrorCode, RouterObserver } from './router'
import type { RouteTraffic } from './traffic'
import { fail } from './validate'

/** A refusal's reason as a bounded label. */
export function refusalReasonLabel (statusCode: number, reason: string): string {
  if (statusCode === 401) return reason === 'no token' ? 'no_token' : 'invalid_token'
  if (reason.startsWith('origin')) return 'origin'
  switch (reason) {
    case 'shutting down': return 'shutting_down'
    case 'auth failures over budget': return 'auth_failures'
    case 'upgrade rate limit': return 'upgrade_rate_limit'
    case 'maxConnections': return 'max_connections'
    case 'maxConnectionsPerIp': return 'max_connections_per_ip'
    case 'maxConnectionsPerUser': return 'max_connections_per_user'
    case 'not a websocket route': return 'not_websocket_route'
    case 'handshake': return 'handshake'
    default: return 'other'
  }
}

/** What the metrics read at scrape time. */
export interface MetricsSource {
  stats (): WsManagerStats
  /** Live nodes in cluster mode (null when off); resolves within the cluster's requestTimeout. */
  clusterNodes (): Promise<number> | null
}

const SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
const DURATION_BUCKETS = [1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 24 * 3600]

/** The plugin's metrics, as `fastify.wsManager.metrics`. */
export class WsMetrics implements RouterObserver {
  /** The registry the metrics are in: the application's, or one of the plugin's own. */
  readonly registry: Registry
  readonly #own: Metric[] = []
  readonly #duration: Histogram<'route'>
  readonly #latency: Histogram
  readonly #handler: Histogram<'route' | 'type'>
  readonly #routerErrors: Counter<'route' | 'code'>
  readonly #refused = new Map<string, number>()

  /** @throws FST_WSM_OPTION_INVALID when the registry already holds one of the names. */
  constructor (options: ResolvedMetricsOptions, source: MetricsSource) {
    this.registry = options.registry ?? new Registry()
    const p = options.prefix
    const registers = [this.registry]
    const add = <T extends Metric>(make: () => T): T => {
      let metric: T
      try {
        metric = make()
      } catch (err) {
        this.remove()
        fail('metrics.registry', `cannot register the plugin's metrics: ${(err as Error).message}`)
      }
      this.#own.push(metric)
      return metric
    }
    let snapshot: WsManagerStats | null = null
    // One stats() per scrape, shared by every metric read in it (stats() is one O(n) pass):
    // prom-client runs the collect() of every metric in one synchronous loop.
    const stats = (): WsManagerStats => {
      if (snapshot === null) {
        snapshot = source.stats()
        setImmediate(() => { snapshot = null })
      }
      return snapshot
    }
    const routes = (): Array<[string, RouteTraffic]> => Object.entries(stats().routes)

    add(() => new Gauge({
      name: `${p}connections_active`,
      help: 'Open WebSocket connections',
      labelNames: ['route'],
      registers,
      collect () {
        this.reset()
        for (const [route, r] of routes()) this.set({ route }, r.active)
      }
    }))
    add(() => new Counter({
      name: `${p}connections_opened_total`,
      help: 'WebSocket connections accepted',
      labelNames: ['route'],
      registers,
      collect () {
        this.reset()
        for (const [route, r] of routes()) this.inc({ route }, r.opened)
      }
    }))
    add(() => new Counter({
      name: `${p}connections_closed_total`,
      help: 'WebSocket connections closed, by close code (registered codes; others as "other") and who began the close',
      labelNames: ['route', 'code', 'initiator'],
      registers,
      collect () {
        this.reset()
        for (const [route, r] of routes()) {
          for (const [key, n] of Object.entries(r.closed)) {
            const [code, initiator] = key.split('|')
            this.inc({ route, code, initiator }, n)
          }
        }
      }
    }))
    add(() => new Counter({
      name: `${p}messages_received_total`,
      help: 'Messages received from clients',
      labelNames: ['route'],
      registers,
      collect () {
        this.reset()
        for (const [route, r] of routes()) this.inc({ route }, r.messagesReceived)
      }
    }))
    add(() => new Counter({
      name: `${p}messages_sent_total`,
      help: 'Messages sent to clients',
      labelNames: ['route'],
      registers,
      collect () {
        this.reset()
        for (const [route, r] of routes()) this.inc({ route }, r.messagesSent)
      }
    }))
    add(() => new Counter({
      name: `${p}received_bytes_total`,
      help: 'Bytes read from WebSocket TCP sockets (frames and handshakes)',
      registers,
      collect () {
        this.reset()
        this.inc(routes().reduce((n, [, r]) => n + r.wireBytesReceived, 0))
      }
    }))
    add(() => new Counter({
      name: `${p}sent_bytes_total`,
      help: 'Bytes written to WebSocket TCP sockets (frames and handshakes)',
      registers,
      collect () {
        this.reset()
        this.inc(routes().reduce((n, [, r]) => n + r.wireBytesSent, 0))
      }
    }))
    const refused = this.#refused
    add(() => new Counter({
      name: `${p}upgrades_refused_total`,
      help: 'Upgrades refused before the handshake, by HTTP status and reason',
      labelNames: ['status', 'reason'],
      registers,
      collect () {
        this.reset()
        for (const [key, n] of refused) {
          const [status, reason] = key.split('|')
          this.inc({ status, reason }, n)
        }
      }
    }))
    const scalar = (name: string, help: string, read: (s: WsManagerStats) => number): void => {
      add(() => new Counter({
        name: `${p}${name}`,
        help,
        registers,
        collect () {
          this.reset()
          this.inc(read(stats()))
        }
      }))
    }
    scalar('heartbeat_timeouts_total', 'Connections terminated because they stopped answering pings', (s) => s.heartbeat.timeouts)
    scalar('frame_violations_total', 'Messages over the size limit (closed with 1009)', (s) => s.frames.violations)
    scalar('messages_rate_limited_total', 'Messages and pings refused by the message rate limit', (s) => s.admission.messages?.refused ?? 0)
    scalar('backpressure_dropped_total', "Messages dropped by the 'drop' backpressure policy", (s) => s.delivery.dropped)
    scalar('slow_consumer_closes_total', 'Connections closed with 1013 for reading too slowly', (s) => s.delivery.slowConsumerCloses)
    add(() => new Gauge({
      name: `${p}compression_ratio`,
      help: 'Wire bytes over payload bytes of compressed connections (below 1 saves bytes), by direction; absent before any payload',
      labelNames: ['direction'],
      registers,
      collect () {
        this.reset()
        const c = stats().compression
        if (c.ratio !== null) this.set({ direction: 'out' }, c.ratio)
        if (c.ratioIn !== null) this.set({ direction: 'in' }, c.ratioIn)
      }
    }))
    this.#duration = add(() => new Histogram({
      name: `${p}connection_duration_seconds`,
      help: 'How long connections stayed open, observed at their close',
      labelNames: ['route'],
      buckets: DURATION_BUCKETS,
      registers
    }))
    this.#latency = add(() => new Histogram({
      name: `${p}heartbeat_latency_seconds`,
      help: 'Ping to pong round trip',
      buckets: SECONDS_BUCKETS,
      registers
    }))
    this.#handler = add(() => new Histogram({
      name: `${p}router_handler_duration_seconds`,
      help: 'Time a routed message handler took, to its reply (declared types only)',
      labelNames: ['route', 'type'],
      buckets: SECONDS_BUCKETS,
      registers
    }))
    this.#routerErrors = add(() => new Counter({
      name: `${p}router_errors_total`,
      help: 'Routed messages answered with an error, or whose handler failed (HANDLER_ERROR)',
      labelNames: ['route', 'code'],
      registers
    }))
    // Forwarding sessions (sshTerminal, tcpTunnel, sshTunnel); zero until a handler is used.
    add(() => new Gauge({
      name: `${p}forward_sessions_active`,
      help: 'Forwarding sessions open now, by kind (terminal, tcp, ssh-tunnel)',
      labelNames: ['kind'],
      registers,
      collect () {
        this.reset()
        for (const [kind, n] of Object.entries(stats().forwarding.active)) this.set({ kind }, n)
      }
    }))
    add(() => new Counter({
      name: `${p}forward_sessions_opened_total`,
      help: 'Forwarding sessions whose upstream opened, by kind',
      labelNames: ['kind'],
      registers,
      collect () {
        this.reset()
        for (const [kind, n] of Object.entries(stats().forwarding.opened)) this.inc({ kind }, n)
      }
    }))
    add(() => new Counter({
      name: `${p}forward_sessions_failed_total`,
      help: 'Forwarding sessions refused or failed before their upstream opened, by kind and reason',
      labelNames: ['kind', 'reason'],
      registers,
      collect () {
        this.reset()
        for (const [key, n] of Object.entries(stats().forwarding.failed)) {
          const [kind, reason] = key.includes(':') ? key.split(':') : ['', key]
          this.inc({ kind, reason }, n)
        }
      }
    }))
    add(() => new Counter({
      name: `${p}forward_bytes_total`,
      help: 'Bytes through forwarding sessions, by kind and direction (up: client to upstream)',
      labelNames: ['kind', 'direction'],
      registers,
      collect () {
        this.reset()
        const f = stats().forwarding
        for (const [kind, n] of Object.entries(f.bytesUp)) this.inc({ kind, direction: 'up' }, n)
        for (const [kind, n] of Object.entries(f.bytesDown)) this.inc({ kind, direction: 'down' }, n)
      }
    }))
    if (source.clusterNodes() !== null) {
      add(() => new Gauge({
        name: `${p}cluster_nodes`,
        help: 'Live nodes of the cluster, as Redis sees them (this node alone while Redis is out of reach)',
        registers,
        async collect () {
          this.set(await (source.clusterNodes() ?? Promise.resolve(1)))
        }
      }))
      add(() => new Gauge({
        name: `${p}cluster_redis_up`,
        help: '1 while Redis is reachable and this node registered, else 0',
        registers,
        collect () { this.set(stats().cluster?.healthy === true ? 1 : 0) }
      }))
      scalar('cluster_publish_failures_total', 'Publications to other nodes that failed', (s) => s.cluster?.publishFailures ?? 0)
    }
    if (options.defaultMetrics) {
      // Taken out with the plugin's own at close, so the registry can hold them again.
      const before = new Set(this.registry.getMetricsAsArray().map((m) => (m as unknown as { name: string }).name))
      try {
        collectDefaultMetrics({ register: this.registry })
      } catch (err) {
        this.remove()
        fail('metrics.defaultMetrics', `cannot register prom-client's default metrics: ${(err as Error).message}`)
      }
      for (const metric of this.registry.getMetricsAsArray()) {
        if (!before.has((metric as unknown as { name: string }).name)) this.#own.push(metric as unknown as Metric)
      }
    }
  }

  /** A latency sample from the heartbeat, in milliseconds. */
  readonly observeLatency = (ms: number): void => {
    this.#latency.observe(ms / 1000)
  }

  /** A connection closed. */
  closed (connection: Connection, info: CloseInfo): void {
    this.#duration.observe({ route: connection.route }, info.durationMs / 1000)
  }

  /** An upgrade was refused. */
  refused (statusCode: number, reason: string): void {
    const key = `${statusCode}|${refusalReasonLabel(statusCode, reason)}`
    this.#refused.set(key, (this.#refused.get(key) ?? 0) + 1)
  }

  handle (connection: Connection, type: string, _message: Record<string, unknown>, _size: number, run: () => unknown): unknown {
    const started = performance.now()
    const done = (ok: boolean): void => {
      this.#handler.observe({ route: connection.route, type }, (performance.now() - started) / 1000)
      if (!ok) this.#routerErrors.inc({ route: connection.route, code: 'HANDLER_ERROR' })
    }
    let result: unknown
    try {
      result = run()
    } catch (err) {
      done(false)
      throw err
    }
    if (result !== null && typeof result === 'object' && typeof (result as Promise<unknown>).then === 'function') {
      return (result as Promise<unknown>).then((value) => {
        done(true)
        return value
      }, (err: unknown) => {
        done(false)
        throw err
      })
    }
    done(true)
    return result
  }

  rejected (connection: Connection, code: RouterErrorCode): void {
    this.#routerErrors.inc({ route: connection.route, code })
  }

  /** Takes the plugin's metrics out of the registry (at app close, so it can be registered again). */
  remove (): void {
    for (const metric of this.#own) this.registry.removeSingleMetric((metric as unknown as { name: string }).name)
    this.#own.length = 0
  }

  /** Registers the scrape route. */
  route (fastify: FastifyInstance, endpoint: string, onRequest: onRequestHookHandler[]): void {
    const registry = this.registry
    fastify.get(endpoint, { onRequest }, async (_request: FastifyRequest, reply) => {
      const body = await registry.metrics()
      return reply.type(registry.contentType).send(body)
    })
  }
}
