import { connectionId } from './ids'
import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { AuthResult } from './auth'
import type WebSocket from 'ws'
import { checkCloseRequest, GracefulCloseManager, type CloseRequest, type CloseResult, type CloseStats } from './close'
import { CompressionManager, type CompressionStats } from './compression'
import { SharedDeflate, type SharedDeflateStats } from './shared-deflate'
import { freeDeflateContexts } from './internals'
import { forwardingHost, type ForwardingStats } from './forward-session'
import { checkDrainRequest, Drain, type CheckedDrain, type DrainOptions, type DrainResult } from './drain'
import { Connection, type CloseInfo, type ConnectionHost, type HookRunner, type RouteSettings } from './connection'
import { DeliveryCounters, prepare, type DeliveryStats, type Prepared, type Sendable } from './delivery'
import { CloseCode, errors } from './errors'
import { channels } from './diagnostics'
import { FrameSizeValidator, type FrameSizeStats } from './frame-size'
import { HookSet, type HookName, type HookTypes } from './hooks'
import { HeartbeatManager, type HeartbeatManagerStats, type HeartbeatStats } from './heartbeat'
import { ipKey } from './ip'
import { MessageRateLimiter, type MessageLimitStats } from './message-limits'
import type { ResolvedOptions, ResolvedRouteConfig } from './options'
import { InboundPipeline } from './pipeline'
import { answer, Cluster, type ClusterAnswer, type ClusterHost, type ClusterNode, type ClusterStats, type PresenceEntry } from './cluster'
import type { ResolvedClusterOptions } from './cluster-options'
import { checkTopic, TopicRegistry } from './topics'
import { LocalTopicLog } from './topic-log'
import { TrafficTotals, type RouteTraffic } from './traffic'
import type { WsTracing } from './tracing'
import { IdleSweeper } from './idle'
import { LocalConnectionRegistry, type ConnectionRegistry } from './registry'
import type { MessageRouter } from './router'
import type { ManagedWebSocket } from './socket'
import { kAttach, kAuth } from './symbols'

/** What `checkConnectionHealth()` resolves with. */
export interface HealthReport {
  /** Open connections. */
  activeConnections: number
  /** Open connections with no missed pong outstanding (all of them where heartbeat is off). */
  healthyConnections: number
  /** Open connections with at least one missed pong. */
  unhealthyConnections: number
  /** Mean ping round trip in milliseconds over connections that answered one; null when none has. */
  averageLatency: number | null
}

/** Connection counters in {@link WsManagerStats}. */
export interface ConnectionStats {
  /** Open now (the same count as the health check's activeConnections). */
  active: number
  /** Closing now: a close began and the socket has not closed yet. */
  closing: number
  /** Accepted since the plugin started. */
  opened: number
  /** Closed since the plugin started. */
  closed: number
  /** Closed by the idle timeout. */
  idleClosed: number
  /** Terminated because the heartbeat found them dead. */
  heartbeatClosed: number
  /** Closed because their token expired. */
  expiredClosed: number
}

/** Admission counters in {@link WsManagerStats}. */
export interface AdmissionStats {
  /** Upgrades refused, by HTTP status. */
  refused: Record<string, number>
  /** Failed authentications (bad or missing tokens). */
  authFailures: number
  /** Message rate limiting. */
  messages: MessageLimitStats | null
}

function forwardingStats (owner: object): ForwardingStats {
  const host = forwardingHost(owner)
  return host.counters.snapshot(host.open)
}

/** One snapshot of every component's statistics, from `fastify.wsManager.stats()`. */
export interface WsManagerStats {
  connections: ConnectionStats
  close: CloseStats
  heartbeat: HeartbeatManagerStats
  frames: FrameSizeStats
  /** permessage-deflate figures; `shared`: the one-deflate-per-broadcast counts of the `shared` profile, else null. */
  compression: CompressionStats & { shared: SharedDeflateStats | null }
  delivery: DeliveryStats
  admission: AdmissionStats
  /** Topics with a local subscriber. */
  topics: { active: number }
  /** Connections, closes (by code and initiator), messages and wire bytes, by route. */
  routes: Record<string, RouteTraffic>
  /** Cluster counters; null when cluster mode is off. */
  cluster: ClusterStats | null
  /** Sessions of the forwarding handlers (sshTerminal, tcpTunnel, sshTunnel). */
  forwarding: ForwardingStats
}

/**
 * `fastify.wsManager.cluster` in cluster mode: this node and the cluster as Redis sees it.
 * Every call resolves within `requestTimeout`; when Redis cannot be reached it resolves with
 * what this node knows and `complete: false`.
 */
export interface ClusterApi {
  readonly nodeId: string
  /** Redis reachable, this node registered and its channels subscribed. */
  readonly healthy: boolean
  /** The live nodes with their connection counts (refreshed every `presenceTtl / 3`). */
  nodes (): Promise<ClusterAnswer<ClusterNode>>
  /** A user's open connections on every node. */
  presence (userId: string): Promise<ClusterAnswer<PresenceEntry>>
  /** How many open connections a user has on every node (this node's when Redis cannot be reached). */
  countByUser (userId: string): Promise<number>
}

/** What the metrics learn at connection events (lib/metrics.ts); none of it per message. */
export interface ConnectionObserver {
  closed (connection: Connection, info: CloseInfo): void
  refused (statusCode: number, reason: string, request: FastifyRequest | null): void
}

/** `fastify.wsManager.metrics` when metrics are on. */
export interface MetricsApi {
  /** The prom-client Registry holding the plugin's metrics. */
  readonly registry: import('prom-client').Registry
}

/** What `disconnectUser()` resolves with: every close result, local and remote. */
export type DisconnectResults = ClusterAnswer<CloseResult>

/** Which connections `broadcast()` reaches. */
export interface BroadcastOptions {
  /** Only connections of this route (its URL pattern). */
  route?: string
  /** In cluster mode, this node's connections only (no Redis publication). @default false */
  local?: boolean
  /**
   * Only connections for which this returns true. A throw counts as false (and is logged once
   * per call). A function cannot travel to other processes: in cluster mode a broadcast with
   * a filter reaches this node's connections only.
   */
  filter?: (connection: Connection) => boolean
}

/** How `disconnectUser()` closes. */
export interface DisconnectOptions {
  /** @default 1000 */
  code?: number
  /** @default 'Disconnected' */
  reason?: string
  /** @default the close timeout */
  timeout?: number
}

/**
 * The object decorated as `fastify.wsManager`: the registry, the components, and the
 * operations over all connections. Every operation over many connections returns a
 * promise, so a cluster backend can reach other servers without changing the signatures.
 */
export class WsManager implements ConnectionHost {
  /** The open connections, by id, user and route. */
  readonly connections: ConnectionRegistry
  /** The close manager every close goes through. */
  readonly closer: GracefulCloseManager
  /** Ping/pong liveness of every connection. */
  readonly heartbeat: HeartbeatManager
  /** Message size limits and their statistics. */
  readonly frames: FrameSizeValidator
  /** permessage-deflate settings and statistics. */
  readonly compression: CompressionManager
  /** @internal The one deflate of every fan-out under the `shared` profile, else null. */
  readonly sharedDeflate: SharedDeflate | null
  /** Backpressure counters. */
  readonly delivery = new DeliveryCounters()
  /** The hooks added with addHook(), for every route. */
  readonly hooks = new HookSet()
  /** Per-user message rate limiting, or null when off. */
  readonly messageLimiter: MessageRateLimiter | null
  /** The validated options in force. */
  readonly options: ResolvedOptions
  /** Local topic subscriptions. */
  readonly topics: TopicRegistry<Connection>
  /** Topic offsets and history when the `topics` option is on, else null. */
  readonly topicLog: LocalTopicLog | null
  #topicSweep: NodeJS.Timeout | null = null
  // Subscriptions being recovered in cluster mode: live messages wait here, with their
  // offsets, until the replay from Redis has gone out. After it, `through` is the last offset
  // the replay sent: the replay's answer comes on the command connection and the live
  // messages on the subscriber connection, so one the replay held can still arrive live; it is
  // dropped, and the entry goes with the first live message past `through`.
  readonly #recovering = new Map<Connection, Map<string, Recovering>>()
  /** Per-route totals, kept at connection events. */
  readonly traffic = new TrafficTotals()
  /** Prometheus metrics when the `metrics` option is on, else null. */
  metrics: MetricsApi | null = null
  /** @internal Told of closes and refusals (metrics, tracing); null when nobody listens. */
  observer: ConnectionObserver | null = null
  /** @internal Spans, when the `tracing` option is on. */
  tracing: WsTracing | null = null
  readonly #registry: LocalConnectionRegistry
  #cluster: Cluster | null = null
  #clusterApi: ClusterApi | null = null
  readonly #log: FastifyBaseLogger
  #shuttingDown = false
  #drain: Drain | null = null
  #drainRequest: CheckedDrain | null = null
  #drainPromise: Promise<DrainResult> | null = null
  #whenEmpty: (() => void) | null = null
  #open = 0
  #opened = 0
  #closed = 0
  #idleClosed = 0
  #heartbeatClosed = 0
  #expiredClosed = 0
  #authFailures = 0
  readonly #refused: Record<string, number> = {}
  // Closes idle connections, at most a quarter of the shortest idle timeout (and never more
  // than a second) late, looking only at connections that may be due (lib/idle.ts). Token
  // expiry has a timer per connection instead: exact, and nothing to scan.
  #idle: IdleSweeper<Connection> | null = null
  #sweepMs = 1000
  #sweepNeeded = false

  constructor (options: ResolvedOptions, log: FastifyBaseLogger) {
    this.options = options
    this.#log = log
    this.#registry = new LocalConnectionRegistry()
    this.connections = this.#registry
    this.closer = new GracefulCloseManager({ timeout: options.close.timeout })
    const base = options.heartbeat === false ? undefined : options.heartbeat
    this.heartbeat = new HeartbeatManager(base === undefined ? {} : { ...base, maxDetectionTime: base.maxDetectionTime ?? undefined })
    this.frames = new FrameSizeValidator({ ...options.frameSize, log })
    this.compression = new CompressionManager({ ...options.compression, log })
    const deflate = this.compression.settings
    this.sharedDeflate = deflate.enabled && deflate.shared ? new SharedDeflate(deflate.level, deflate.memLevel, deflate.threshold) : null
    this.messageLimiter = options.messageRateLimit === false ? null : new MessageRateLimiter(options.messageRateLimit)
    this.topics = new TopicRegistry<Connection>(options.maxTopicsPerConnection)
    this.topicLog = options.topics === false ? null : new LocalTopicLog(options.topics.history)
    if (this.topicLog !== null) {
      const log = this.topicLog
      this.#topicSweep = setInterval(() => log.sweep(), Math.max(1000, Math.floor(log.ttl / 2)))
      this.#topicSweep.unref()
    }
  }

  /** The cluster (nodes, presence, counts) in cluster mode, else null. */
  get cluster (): ClusterApi | null {
    return this.#clusterApi
  }

  /** @internal The node's cluster membership, for admission. */
  get clusterNode (): Cluster | null {
    return this.#cluster
  }

  /** @internal Creates the cluster membership (the plugin starts it). */
  createCluster (options: ResolvedClusterOptions): Cluster {
    const cluster = new Cluster(options, this.#clusterHost, this.#log)
    this.#cluster = cluster
    this.topics.listen(cluster)
    const registry = this.#registry
    const localPresence = (userId: string): PresenceEntry[] => registry.byUser(userId)
      .filter((c) => c.state === 'open')
      .map((c) => ({ connectionId: c.id, nodeId: cluster.nodeId, route: c.route, openedAt: c.connectedAt }))
    this.#clusterApi = Object.freeze({
      nodeId: cluster.nodeId,
      get healthy () { return cluster.healthy },
      nodes: async () => cluster.nodes(),
      presence: async (userId: string) => cluster.presence(userId, () => localPresence(userId)),
      countByUser: async (userId: string) => (await cluster.presence(userId, () => localPresence(userId))).length
    })
    return cluster
  }

  /** True once the application started closing; new upgrades are refused with 503. */
  get shuttingDown (): boolean {
    return this.#shuttingDown
  }

  /** True once `drain()` was called: readiness is false and new upgrades are refused with 503. */
  get draining (): boolean {
    return this.#drainRequest !== null
  }

  /** @internal The close code and reason of the drain under way, or null. */
  get drainClose (): { code: number, reason: string } | null {
    return this.#drainRequest
  }

  /**
   * Takes the node out of service for a deploy: at once readiness turns false and upgrades
   * get 503 with Retry-After; the open connections are closed (code 1012 by default) in
   * batches spread over `duration` with random jitter, a peer that does not answer within
   * `close.timeout` being terminated. In cluster mode the node then leaves `nodes()`.
   * Resolves when every connection is closed. A second call returns the first call's promise.
   * Rejects, changing nothing, with FST_WSM_ARGUMENT_INVALID or FST_WSM_CLOSE_CODE_INVALID
   * on a bad option.
   */
  drain (options?: DrainOptions): Promise<DrainResult> {
    const checked = checkDrainRequest(options)
    if (checked instanceof Error) return Promise.reject(checked)
    if (this.#drainPromise !== null) return this.#drainPromise
    this.#drainRequest = checked
    const empty = this.#registry.size === 0
      ? Promise.resolve()
      : new Promise<void>((resolve) => { this.#whenEmpty = resolve })
    const registry = this.#registry
    const drain = new Drain(this.#open, () => registry, checked, empty)
    this.#drain = drain
    this.#log.info({ connections: this.#open, durationMs: checked.duration, batches: drain.batches, code: checked.code }, 'drain started')
    this.#drainPromise = drain.promise.then(async (result) => {
      // The node's presence left with each connection; now the node itself leaves nodes().
      if (this.#cluster !== null) await this.#cluster.withdraw()
      this.#log.info(result, 'drain finished')
      return result
    })
    return this.#drainPromise
  }

  /** The seed's name for `connections.byUser(userId)`. */
  getConnectionsByUserId (userId: string): Connection[] {
    return this.#registry.byUser(userId)
  }

  /** Counts of healthy and unhealthy connections and the mean latency, from the heartbeat. */
  async checkConnectionHealth (): Promise<HealthReport> {
    // A connection the heartbeat gave up on is untracked at once but stays in the registry
    // until its close finishes: only open ones count, and those are judged by the heartbeat.
    let active = 0
    let unhealthy = 0
    for (const connection of this.#registry) {
      if (connection.state !== 'open') continue
      active++
      if (this.heartbeat.isTracked(connection.socket) && !this.heartbeat.isConnectionHealthy(connection.socket)) unhealthy++
    }
    return {
      activeConnections: active,
      healthyConnections: active - unhealthy,
      unhealthyConnections: unhealthy,
      averageLatency: this.heartbeat.getStats().averageLatency
    }
  }

  /**
   * Sends to every open connection of one user: on this server, and in cluster mode on every
   * node that holds one (one Redis publication). Never waits on a slow reader or another
   * node: under the 'wait' policy a message for a full buffer is queued.
   * Resolves with how many connections of this node took it (sent or queued).
   */
  async sendToUser (userId: string, data: Sendable): Promise<number> {
    const tracing = this.tracing
    if (tracing === null) return this.#sendToUser(userId, data, undefined)
    return tracing.produce('ws.send_to_user', { 'enduser.id': userId }, (carrier) => this.#sendToUser(userId, data, carrier.traceparent))
  }

  async #sendToUser (userId: string, data: Sendable, traceparent: string | undefined): Promise<number> {
    const prepared = prepare(data)
    const count = this.#fanOut(this.#registry.byUser(userId), prepared, undefined)
    const cluster = this.#cluster
    if (cluster !== null) {
      const wire = await wireBytes(prepared)
      cluster.publishToUser(userId, wire.bytes, wire.binary, traceparent)
    }
    return count
  }

  /**
   * Sends to every open connection, or those of a route, or those passing a filter; in
   * cluster mode on every node (one Redis publication), except with a filter or `local: true`
   * (this node only).
   * The value is serialized once and the same buffer goes to every socket; the backpressure
   * policy applies per connection, and a slow reader never holds up the others.
   * Resolves with how many connections of this node took it (sent or queued).
   */
  async broadcast (data: Sendable, options: BroadcastOptions = {}): Promise<number> {
    const tracing = this.tracing
    if (tracing === null) return this.#broadcast(data, options, undefined)
    const attributes = options.route === undefined ? {} : { 'messaging.destination.name': options.route }
    return tracing.produce('ws.broadcast', attributes, (carrier) => this.#broadcast(data, options, carrier.traceparent))
  }

  async #broadcast (data: Sendable, options: BroadcastOptions, traceparent: string | undefined): Promise<number> {
    const prepared = prepare(data)
    const targets = options.route === undefined ? this.#registry : this.#registry.byRoute(options.route)
    const count = this.#fanOut(targets, prepared, options.filter)
    const cluster = this.#cluster
    if (cluster !== null && options.filter === undefined && options.local !== true) {
      const wire = await wireBytes(prepared)
      cluster.publishBroadcast(options.route ?? null, wire.bytes, wire.binary, traceparent)
    }
    return count
  }

  /**
   * Sends to every subscriber of a topic (`connection.subscribe(topic)`), on every node in
   * cluster mode (one Redis publication). Resolves with how many connections of this node took it.
   * Rejects with FST_WSM_TOPIC_INVALID for a bad topic name.
   */
  async publish (topic: string, data: Sendable): Promise<number> {
    checkTopic(topic)
    const tracing = this.tracing
    if (tracing === null) return this.#publish(topic, data, undefined)
    return tracing.produce('ws.publish', { 'messaging.destination.name': topic }, (carrier) => this.#publish(topic, data, carrier.traceparent))
  }

  async #publish (topic: string, data: Sendable, traceparent: string | undefined): Promise<number> {
    const log = this.topicLog
    if (log !== null) {
      // With offsets, subscribers get { type: 'topic.message', topic, epoch, offset, data }:
      // the data must be a JSON value.
      const json = typeof data === 'object' && data !== null && (Buffer.isBuffer(data) || data instanceof ArrayBuffer || ArrayBuffer.isView(data) || data instanceof Blob)
        ? undefined
        : JSON.stringify(data)
      if (json === undefined) throw new errors.FST_WSM_ARGUMENT_INVALID('data', 'with the topics option, publish() takes a JSON value (its offset travels with it)')
      const cluster = this.#cluster
      const topicsOptions = this.options.topics
      if (cluster !== null && topicsOptions !== false) {
        // Offsets come from Redis; this node delivers when Redis publishes, like every node.
        const published = await cluster.publishTopicLogged(topic, json, topicsOptions.history, log.ttl)
        if (published !== null) return this.topics.subscribers(topic)?.size ?? 0
        // Redis out of reach: this node's subscribers get it under this node's own epoch, so
        // a later recovery says recovered: false rather than pretend.
      }
      const { frame } = log.append(topic, json)
      const subscribers = this.topics.subscribers(topic)
      return subscribers === undefined ? 0 : this.#fanOut(subscribers, { data: frame, options: TEXT_FRAME }, undefined)
    }
    const prepared = prepare(data)
    const subscribers = this.topics.subscribers(topic)
    const count = subscribers === undefined ? 0 : this.#fanOut(subscribers, prepared, undefined)
    const cluster = this.#cluster
    if (cluster !== null) {
      const wire = await wireBytes(prepared)
      cluster.publishTopic(topic, wire.bytes, wire.binary, traceparent)
    }
    return count
  }

  /**
   * Closes every connection of a user gracefully, on every node in cluster mode; resolves
   * when all are closed, or, for other nodes, when the close timeout and then `requestTimeout`
   * have passed: `unanswered` names the nodes that did not answer. Rejects, closing none,
   * on a bad code, reason or timeout.
   */
  async disconnectUser (userId: string, options: DisconnectOptions = {}): Promise<DisconnectResults> {
    const checked = checkCloseRequest(options.code ?? CloseCode.NORMAL, options.reason ?? 'Disconnected', options.timeout, this.closer.timeout)
    if (checked instanceof Error) throw checked
    const local = Promise.all(this.#registry.byUser(userId).map((c) => c.close(checked.code, checked.reason, checked.timeout)))
    const cluster = this.#cluster
    if (cluster === null) return answer(await local, true)
    const [mine, remote] = await Promise.all([local, cluster.disconnectRemote(userId, checked.code, checked.reason, checked.timeout)])
    return answer([...mine, ...remote.results], remote.complete, remote.unanswered)
  }

  #fanOut (targets: Iterable<Connection>, prepared: Prepared, filter: ((c: Connection) => boolean) | undefined): number {
    let count = 0
    let filterFailed = false
    // The shared profile deflates it in write(), once, for the first recipient that takes it.
    const forShared = this.sharedDeflate === null ? null : prepared
    for (const connection of targets) {
      if (connection.state !== 'open') continue
      if (filter !== undefined) {
        let pass: boolean
        try {
          pass = filter(connection)
        } catch (err) {
          if (!filterFailed) this.#log.error({ err }, 'broadcast filter failed')
          filterFailed = true
          continue
        }
        if (!pass) continue
      }
      const result = connection.deliver(prepared.data as WebSocket.Data, prepared.options, false, forShared)
      if (result === 'sent' || result === 'queued') count++
    }
    return count
  }

  /**
   * Closes every open connection in parallel; peers silent past the timeout are terminated.
   * Rejects, closing none, on a bad code, reason or timeout.
   * @default code and reason: the `close.shutdownCode` and `close.shutdownReason` options
   */
  async closeAll (request: CloseRequest = {}): Promise<CloseResult[]> {
    const checked = checkCloseRequest(request.code ?? this.options.close.shutdownCode,
      request.reason ?? this.options.close.shutdownReason, request.timeout, this.closer.timeout)
    if (checked instanceof Error) throw checked
    const all: Promise<CloseResult>[] = []
    for (const connection of this.#registry) all.push(connection.close(checked.code, checked.reason, checked.timeout))
    return Promise.all(all)
  }

  /** One snapshot of every component's statistics. */
  stats (): WsManagerStats {
    return {
      connections: {
        active: this.#open,
        closing: this.#registry.size - this.#open,
        opened: this.#opened,
        closed: this.#closed,
        idleClosed: this.#idleClosed,
        heartbeatClosed: this.#heartbeatClosed,
        expiredClosed: this.#expiredClosed
      },
      close: this.closer.getStats(),
      heartbeat: this.heartbeat.getStats(),
      frames: this.frames.getStats(),
      compression: { ...this.compression.getStats(), shared: this.sharedDeflate === null ? null : this.sharedDeflate.stats() },
      delivery: this.delivery.snapshot(),
      admission: {
        refused: { ...this.#refused },
        authFailures: this.#authFailures,
        messages: this.messageLimiter === null ? null : this.messageLimiter.getStats()
      },
      topics: { active: this.topics.size },
      routes: this.traffic.snapshot(this.#registry),
      cluster: this.#cluster === null ? null : this.#cluster.stats(),
      forwarding: forwardingStats(this)
    }
  }

  /** @internal Counts a refused upgrade by status. */
  countRefusal (statusCode: number, reason: string, request: FastifyRequest | null = null): void {
    this.#refused[statusCode] = (this.#refused[statusCode] ?? 0) + 1
    if (statusCode === 401) this.#authFailures++
    if (this.observer !== null) {
      try {
        this.observer.refused(statusCode, reason, request)
      } catch (err) {
        this.#log.error({ err }, 'metrics or tracing failed at a refusal')
      }
    }
  }

  /** @internal Builds the settings shared by every connection of one route. */
  routeSettings (config: ResolvedRouteConfig, router: MessageRouter | null, hooks: HookRunner): RouteSettings {
    if (config.idleTimeout > 0) {
      this.#sweepNeeded = true
      this.#sweepMs = Math.max(10, Math.min(this.#sweepMs, Math.floor(config.idleTimeout / 4)))
    }
    const compression = this.compression.settings.enabled ? this.compression : null
    let heartbeat: RouteSettings['heartbeat'] = false
    if (config.heartbeat !== false) {
      const { pingInterval, pongTimeout, maxMissedPongs } = config.heartbeat
      const base = this.heartbeat.settings
      // undefined: the manager's own settings, validated once rather than per connection.
      heartbeat = pingInterval === base.pingInterval && pongTimeout === base.pongTimeout && maxMissedPongs === base.maxMissedPongs
        ? undefined
        : { pingInterval, pongTimeout, maxMissedPongs }
    }
    return {
      backpressure: config.backpressure,
      compressThreshold: compression === null ? -1 : compression.settings.threshold,
      sharedDeflate: compression === null ? null : this.sharedDeflate,
      heartbeat,
      idleTimeout: config.idleTimeout,
      messageHook: new InboundPipeline(this.frames, compression, this.messageLimiter, router, this.options.close.timeout, hooks),
      hooks
    }
  }

  /** @internal Turns an upgraded socket into a managed connection, registered and logged. */
  accept (socket: ManagedWebSocket, request: FastifyRequest, route: string, settings: RouteSettings, reservedId?: string): Connection {
    // In cluster mode an authenticated upgrade was admitted in Redis under this id already.
    const id = reservedId ?? connectionId()
    // The application's data first: a throw here leaves nothing taken (no bucket, no entry).
    const data = this.options.connectionData === null ? undefined : this.options.connectionData(request)
    if (data !== undefined && (typeof data !== 'object' || data === null || typeof (data as PromiseLike<unknown>).then === 'function')) {
      throw new errors.FST_WSM_ARGUMENT_INVALID('connectionData', 'expected the function to return an object (not a promise)')
    }
    const auth = (request as FastifyRequest & { [kAuth]?: AuthResult })[kAuth]
    const userId = auth === undefined ? null : auth.userId
    const limiter = this.messageLimiter
    const ip = ipKey(request.ip)
    const connection = new Connection(this, {
      id,
      socket,
      route,
      remoteAddress: request.ip ?? '',
      ipKey: ip,
      userId,
      user: auth === undefined ? null : auth.user,
      log: request.log.child({ connectionId: id, userId, route }),
      settings,
      closeAt: auth === undefined ? Infinity : auth.closeAt,
      // Without auth the bucket is the IP's: one client cannot dodge it by opening more sockets.
      rateBucket: limiter === null ? null : limiter.acquire(userId, ip, Date.now())
    })
    if (data !== undefined) connection.data = data as Record<string, unknown>
    socket[kAttach](connection)
    this.#registry.add(connection)
    this.traffic.opened(connection)
    if (userId !== null && this.#cluster !== null && this.#registry.countByUser(userId) === 1) this.#cluster.userJoined(userId)
    this.#open++
    this.#opened++
    request.wsConnection = connection
    if (connection.compressing) {
      this.compression.track(socket)
      // No context takeover: nothing to keep between messages, so nothing is kept.
      if (this.sharedDeflate !== null) freeDeflateContexts(socket)
    }
    if (settings.heartbeat !== false) {
      this.heartbeat.startHeartbeat(socket, this.#onHeartbeatTimeout, settings.heartbeat)
    }
    if (connection.closeAt !== Infinity) connection.expireAt(this.#onExpired)
    if (this.#sweepNeeded) (this.#idle ??= new IdleSweeper(this.#sweepMs, this.#onIdle)).add(connection)
    connection.log.info({ remoteAddress: connection.remoteAddress }, 'connection opened')
    return connection
  }

  readonly #onHeartbeatTimeout = (socket: ManagedWebSocket, stats: HeartbeatStats): void => {
    const connection = socket.connection
    if (connection === null || connection.state !== 'open') return
    this.#heartbeatClosed++
    connection.log.warn({ missedPongs: stats.missedPongs, latency: stats.latency }, 'heartbeat timeout')
    // The peer is known dead: a close frame would only wait out the close timeout.
    connection.terminate().catch(noop)
  }

  /** @internal Live messages of a topic wait for this connection until endRecovery(). */
  beginRecovery (connection: Connection, topic: string): void {
    let topics = this.#recovering.get(connection)
    if (topics === undefined) {
      topics = new Map()
      this.#recovering.set(connection, topics)
    }
    topics.set(topic, { waiting: [], through: 0, epoch: undefined })
  }

  /**
   * @internal Sends what waited, past `lastSent` of the replay's `epoch`, in order; live
   * delivery resumes past it. A message of another epoch (the topic expired or Redis lost it
   * since the replay was read) is newer than the whole replay and always goes out.
   */
  endRecovery (connection: Connection, topic: string, lastSent: number, epoch?: string): void {
    const topics = this.#recovering.get(connection)
    const entry = topics?.get(topic)
    if (topics === undefined || entry === undefined || entry.waiting === null) return
    const waiting = entry.waiting
    entry.waiting = null
    if (connection.state !== 'open') {
      this.#forgetRecovery(connection, topics, topic)
      return
    }
    const same = waiting.filter((w) => sameEpoch(w.epoch, epoch))
    same.sort((a, b) => a.offset - b.offset)
    let last = lastSent
    for (const { offset, frame } of same) {
      if (offset <= last) continue
      last = offset
      connection.deliver(frame, TEXT_FRAME, false)
    }
    // A later epoch's, in the order they came.
    let newer = false
    for (const w of waiting) {
      if (sameEpoch(w.epoch, epoch)) continue
      newer = true
      connection.deliver(w.frame, TEXT_FRAME, false)
    }
    // Something past the replay already came live: later ones come after it, in order.
    if (last > lastSent || lastSent === 0 || newer) {
      this.#forgetRecovery(connection, topics, topic)
      return
    }
    entry.through = lastSent
    entry.epoch = epoch
    // Held ones were published before the replay was read, so they are due within a round trip;
    // a quiet topic must not keep every delivery to it on the slow path.
    setTimeout(() => { if (topics.get(topic) === entry) this.#forgetRecovery(connection, topics, topic) }, RECOVERY_OVERLAP).unref()
  }

  #forgetRecovery (connection: Connection, topics: Map<string, Recovering>, topic: string): void {
    topics.delete(topic)
    if (topics.size === 0 && this.#recovering.get(connection) === topics) this.#recovering.delete(connection)
  }

  /** @internal A refreshed token of the connection's user (auth.refresh). */
  refreshAuth (connection: Connection, auth: AuthResult): void {
    connection.refreshAuth(auth.user, auth.closeAt, this.#onExpired)
    connection.log.info({ exp: auth.exp }, 'token refreshed')
  }

  readonly #onExpired = (connection: Connection): void => {
    if (connection.state !== 'open') return
    this.#expiredClosed++
    connection.log.info('token expired')
    connection.close(CloseCode.POLICY_VIOLATION, 'Token expired').catch(noop)
  }

  readonly #onIdle = (connection: Connection, idleMs: number): void => {
    this.#idleClosed++
    connection.log.info({ idleMs }, 'idle timeout')
    connection.close(CloseCode.GOING_AWAY, 'Idle timeout').catch(noop)
  }

  /** @internal The application is closing: refuse upgrades, close everything, wait. */
  async shutdown (): Promise<void> {
    this.#shuttingDown = true
    // A drain under way stops firing batches: what remains closes now, with the shutdown code.
    this.#drain?.stop()
    await this.closeAll().catch((err: unknown) => this.#log.error({ err }, 'shutdown close failed'))
    this.heartbeat.stopAll()
    this.#stopSweep()
    if (this.#topicSweep !== null) clearInterval(this.#topicSweep)
  }

  /** @internal */
  heartbeatSuspended (connection: Connection, suspended: boolean): void {
    const settings = connection.settings.heartbeat
    if (settings === false) return
    if (suspended) this.heartbeat.stopHeartbeat(connection.socket)
    else this.heartbeat.startHeartbeat(connection.socket as ManagedWebSocket, this.#onHeartbeatTimeout, settings)
  }

  /** @internal */
  connectionLeftOpen (connection: Connection): void {
    this.#open--
    this.traffic.leftOpen(connection)
    // Nothing more to learn from a connection on its way out: no pings, no idle close.
    this.heartbeat.stopHeartbeat(connection.socket)
    this.#idle?.delete(connection)
    this.topics.removeConnection(connection)
    this.#recovering.delete(connection)
    // Only open connections count against the user's cap and show in presence.
    if (connection.userId !== null) this.#cluster?.leave(connection.userId, connection.id)
  }

  /** @internal */
  connectionClosed (connection: Connection, info: CloseInfo): void {
    if (!this.#registry.delete(connection)) return
    this.#closed++
    this.traffic.closed(connection, info)

    // The heartbeat stopped when the connection left 'open' (connectionLeftOpen).
    this.compression.untrack(connection.socket)
    if (connection.rateBucket !== null) this.messageLimiter?.release(connection.rateBucket)
    const userId = connection.userId
    if (userId !== null && this.#cluster !== null && this.#registry.countByUser(userId) === 0) this.#cluster.userLeft(userId)
    if (this.#registry.size === 0) {
      this.#stopSweep()
      if (this.#whenEmpty !== null) {
        this.#whenEmpty()
        this.#whenEmpty = null
      }
    }
    if (channels.close.hasSubscribers) channels.close.publish({ connection, ...info })
    // Last of the bookkeeping, and contained: an application's tracing SDK may throw.
    if (this.observer !== null) {
      try {
        this.observer.closed(connection, info)
      } catch (err) {
        connection.log.error({ err }, 'metrics or tracing failed at close')
      }
    }
    const hooks = connection.settings.hooks
    if (hooks.has('onClose')) this.#runContained(hooks, 'onClose', [connection, info], connection.log)
  }

  /**
   * Adds a lifecycle hook for every route: 'onConnection', 'onMessage', 'onClose' or
   * 'onRefused' (see lib/hooks.ts). A route's own hooks (`config.wsManager.hooks`) run after these.
   * @throws FST_WSM_HOOK_INVALID for an unknown name or a value that is not a function.
   */
  addHook<K extends HookName> (name: K, fn: HookTypes[K]): this {
    this.hooks.add(name, fn)
    return this
  }

  /** @internal Counts, publishes and reports (onRefused) a refused upgrade. */
  refused (request: FastifyRequest, statusCode: number, reason: string, hooks: HookRunner): void {
    this.countRefusal(statusCode, reason, request)
    if (channels.refused.hasSubscribers) channels.refused.publish({ request, statusCode, reason })
    if (hooks.has('onRefused')) this.#runContained(hooks, 'onRefused', [request, { statusCode, reason }], request.log)
  }

  // onClose and onRefused: the connection or the request is past helping; an error is logged.
  #runContained (hooks: HookRunner, name: HookName, args: unknown[], log: FastifyBaseLogger): void {
    const fail = (err: unknown): void => log.error({ err, source: `hook:${name}` }, 'hook failed')
    try {
      hooks.run(name, args)?.then(undefined, fail)
    } catch (err) {
      fail(err)
    }
  }

  #stopSweep (): void {
    this.#idle?.stop()
  }

  // A publication of another node, delivered here; under a CONSUMER span child of the
  // publisher's when tracing is on.
  #deliverRemote (name: string, traceparent: string | undefined, attributes: Record<string, string>, targets: Iterable<Connection>, payload: Buffer, binary: boolean): void {
    const prepared = { data: payload, options: binary ? BINARY : TEXT_FRAME }
    const tracing = this.tracing
    if (tracing === null) {
      this.#fanOut(targets, prepared, undefined)
      return
    }
    tracing.deliver(name, traceparent, { ...attributes, 'websocket.node.id': this.#cluster?.nodeId ?? '' }, () => this.#fanOut(targets, prepared, undefined))
  }

  * #localPresence (): Generator<{ userId: string, entry: PresenceEntry }> {
    const nodeId = this.#cluster?.nodeId ?? ''
    for (const c of this.#registry) {
      if (c.userId === null || c.state !== 'open') continue
      yield { userId: c.userId, entry: { connectionId: c.id, nodeId, route: c.route, openedAt: c.connectedAt } }
    }
  }

  readonly #clusterHost: ClusterHost = {
    deliverToUser: (userId, payload, binary, traceparent) => {
      this.#deliverRemote('ws.deliver', traceparent, { 'enduser.id': userId }, this.#registry.byUser(userId), payload, binary)
    },
    deliverToRoute: (route, payload, binary, traceparent) => {
      const targets = route === null ? this.#registry : this.#registry.byRoute(route)
      this.#deliverRemote('ws.deliver', traceparent, route === null ? {} : { 'messaging.destination.name': route }, targets, payload, binary)
    },
    deliverToTopic: (topic, payload, binary, traceparent, offset, epoch) => {
      const subscribers = this.topics.subscribers(topic)
      if (subscribers === undefined) return
      if (offset !== undefined && this.#recovering.size > 0) {
        const live: Connection[] = []
        for (const connection of subscribers) {
          const topics = this.#recovering.get(connection)
          const entry = topics?.get(topic)
          if (topics === undefined || entry === undefined) live.push(connection)
          else if (entry.waiting !== null) entry.waiting.push({ offset, epoch, frame: payload })
          else if (offset > entry.through || !sameEpoch(epoch, entry.epoch)) {
            this.#forgetRecovery(connection, topics, topic)
            live.push(connection)
          }
        }
        this.#deliverRemote('ws.deliver', traceparent, { 'messaging.destination.name': topic }, live, payload, binary)
        return
      }
      this.#deliverRemote('ws.deliver', traceparent, { 'messaging.destination.name': topic }, subscribers, payload, binary)
    },
    disconnectLocal: async (userId, code, reason, timeout) => {
      const checked = checkCloseRequest(code, reason, timeout, this.closer.timeout)
      if (checked instanceof Error) throw checked
      return Promise.all(this.#registry.byUser(userId).map((c) => c.close(checked.code, checked.reason, checked.timeout)))
    },
    closeLocal: (ids, code, reason) => {
      const checked = checkCloseRequest(code, reason, undefined, this.closer.timeout)
      if (checked instanceof Error) return
      for (const id of ids) {
        const connection = this.#registry.get(id)
        if (connection === undefined || connection.state !== 'open') continue
        connection.log.info('closing oldest connection of user over its limit (asked by another node)')
        connection.close(checked.code, checked.reason).catch(noop)
      }
    },
    localPresence: () => this.#localPresence(),
    connectionCount: () => this.#open
  }
}

/** A subscription in recovery: live messages wait (`waiting`), or, replay sent, those up to `through` are dropped. */
interface Recovering {
  waiting: Array<{ offset: number, epoch: string | undefined, frame: Buffer }> | null
  through: number
  /** The replay's epoch; offsets of another epoch are not comparable with `through`. */
  epoch: string | undefined
}

// Undefined on either side (a node of an earlier version sends no epoch) compares by offset alone.
function sameEpoch (a: string | undefined, b: string | undefined): boolean {
  return a === undefined || b === undefined || a === b
}

/** How long after a replay a live duplicate of its last messages is still looked for. */
const RECOVERY_OVERLAP = 5000

const TEXT_FRAME = Object.freeze({ binary: false })
const BINARY = Object.freeze({ binary: true })

/** The bytes of a prepared payload for other nodes, and whether it goes as a binary frame. */
async function wireBytes (prepared: Prepared): Promise<{ bytes: Buffer, binary: boolean }> {
  const data = prepared.data
  const binary = prepared.options?.binary ?? typeof data !== 'string'
  if (Buffer.isBuffer(data)) return { bytes: data, binary }
  if (typeof data === 'string') return { bytes: Buffer.from(data), binary }
  if (data instanceof ArrayBuffer) return { bytes: Buffer.from(data), binary }
  if (ArrayBuffer.isView(data)) return { bytes: Buffer.from(data.buffer, data.byteOffset, data.byteLength), binary }
  return { bytes: Buffer.from(await (data as Blob).arrayBuffer()), binary }
}

function noop (): void {}
