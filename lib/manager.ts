import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type WebSocket from 'ws'
import { authOf } from './admission'
import { ipKey } from './auth'
import { GracefulCloseManager, type CloseRequest, type CloseResult, type CloseStats } from './close'
import { CompressionManager, type CompressionStats } from './compression'
import { Connection, type ConnectionHost, type MessageHook, type RouteSettings } from './connection'
import { DeliveryCounters, prepare, type DeliveryStats, type Sendable, type SendResult } from './delivery'
import { CloseCode } from './errors'
import { FrameSizeValidator, type FrameSizeStats } from './frame-size'
import { HeartbeatManager, type HeartbeatManagerStats, type HeartbeatStats } from './heartbeat'
import { MessageRateLimiter, type Bucket, type MessageLimitStats } from './limits'
import type { ResolvedOptions, ResolvedRouteConfig } from './options'
import { LocalConnectionRegistry, type ConnectionRegistry } from './registry'
import type { MessageRouter } from './router'
import { kAttach, type ManagedWebSocket } from './socket'

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
  /** Open now. */
  active: number
  /** Accepted since the plugin started. */
  opened: number
  /** Closed since the plugin started. */
  closed: number
  /** Closed by the idle timeout. */
  idleClosed: number
  /** Closed because the heartbeat found them dead. */
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

/** One snapshot of every component's statistics, from `fastify.wsManager.stats()`. */
export interface WsManagerStats {
  connections: ConnectionStats
  close: CloseStats
  heartbeat: HeartbeatManagerStats
  frames: FrameSizeStats
  compression: CompressionStats
  delivery: DeliveryStats
  admission: AdmissionStats
}

/** Which connections `broadcast()` reaches. */
export interface BroadcastOptions {
  /** Only connections of this route (its URL pattern). */
  route?: string
  /** Only connections for which this returns true. */
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

// Per received message: frame-size warning threshold, compression statistics, the user's
// rate limit, then the route's router. One object per route, built at route registration.
class RouteHook implements MessageHook {
  readonly #frames: FrameSizeValidator
  readonly #compression: CompressionManager | null
  readonly #limiter: MessageRateLimiter | null
  readonly #router: MessageRouter | null

  constructor (frames: FrameSizeValidator, compression: CompressionManager | null, limiter: MessageRateLimiter | null, router: MessageRouter | null) {
    this.#frames = frames
    this.#compression = compression
    this.#limiter = limiter
    this.#router = router
  }

  onMessage (connection: Connection, data: WebSocket.RawData, isBinary: boolean, size: number): boolean {
    this.#frames.observe(size, connection.userId, connection.id)
    if (this.#compression !== null && connection.compressing) this.#compression.recordReceived(connection.socket, size)
    const bucket = connection.rateBucket
    if (this.#limiter !== null && bucket !== null && !this.#limiter.take(bucket, connection.lastActivityAt)) {
      return this.#overLimit(connection, bucket)
    }
    return this.#router === null || this.#router.onMessage(connection, data, isBinary)
  }

  #overLimit (connection: Connection, bucket: Bucket): boolean {
    const limiter = this.#limiter as MessageRateLimiter
    const first = !bucket.limited
    bucket.limited = true
    if (limiter.options.policy === 'drop') {
      if (first) connection.log.warn({ policy: 'drop' }, 'message rate limit exceeded')
      return false
    }
    if (connection.state === 'open') {
      connection.log.warn({ policy: 'close' }, 'message rate limit exceeded')
      connection.close(CloseCode.POLICY_VIOLATION, 'Rate limit exceeded').catch(noop)
    }
    return false
  }
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
  /** Backpressure counters. */
  readonly delivery = new DeliveryCounters()
  /** Per-user message rate limiting, or null when off. */
  readonly messageLimiter: MessageRateLimiter | null
  /** The validated options in force. */
  readonly options: ResolvedOptions
  readonly #registry: LocalConnectionRegistry
  #shuttingDown = false
  #opened = 0
  #closed = 0
  #idleClosed = 0
  #heartbeatClosed = 0
  #expiredClosed = 0
  #authFailures = 0
  readonly #refused: Record<string, number> = {}
  #sweepTimer: NodeJS.Timeout | null = null
  // The sweep closes idle connections, at most a quarter of the shortest idle timeout (and
  // never more than a second) late. Token expiry has a timer per connection instead: exact,
  // and nothing to scan while connections sit idle.
  #sweepMs = 1000
  #sweepNeeded = false

  constructor (options: ResolvedOptions, log: FastifyBaseLogger) {
    this.options = options
    this.#registry = new LocalConnectionRegistry()
    this.connections = this.#registry
    this.closer = new GracefulCloseManager({ timeout: options.close.timeout })
    const base = options.heartbeat === false ? undefined : options.heartbeat
    this.heartbeat = new HeartbeatManager(base === undefined ? {} : { ...base, maxDetectionTime: base.maxDetectionTime ?? undefined })
    this.frames = new FrameSizeValidator({ ...options.frameSize, log })
    this.compression = new CompressionManager({ ...options.compression, log })
    this.messageLimiter = options.messageRateLimit === false ? null : new MessageRateLimiter(options.messageRateLimit)
  }

  /** True once the application started closing; new upgrades are refused with 503. */
  get shuttingDown (): boolean {
    return this.#shuttingDown
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
   * Sends to every open connection of one user on this server.
   * Resolves with how many connections got it (dropped or closed by backpressure do not count).
   */
  async sendToUser (userId: string, data: Sendable): Promise<number> {
    return this.#fanOut(this.#registry.byUser(userId), data, undefined)
  }

  /**
   * Sends to every open connection, or those of a route, or those passing a filter.
   * The value is serialized once and the same buffer goes to every socket; the backpressure
   * policy applies per connection. Resolves with how many got it.
   */
  async broadcast (data: Sendable, options: BroadcastOptions = {}): Promise<number> {
    const targets = options.route === undefined ? this.#registry : this.#registry.byRoute(options.route)
    return this.#fanOut(targets, data, options.filter)
  }

  /** Closes every connection of a user gracefully; resolves when all are closed. */
  disconnectUser (userId: string, options: DisconnectOptions = {}): Promise<CloseResult[]> {
    const code = options.code ?? CloseCode.NORMAL
    const reason = options.reason ?? 'Disconnected'
    return Promise.all(this.#registry.byUser(userId).map((c) => c.close(code, reason, options.timeout)))
  }

  async #fanOut (targets: Iterable<Connection>, data: Sendable, filter: ((c: Connection) => boolean) | undefined): Promise<number> {
    const prepared = prepare(data)
    let count = 0
    let waiting: Array<Promise<SendResult>> | null = null
    for (const connection of targets) {
      if (connection.state !== 'open') continue
      if (filter !== undefined && !filter(connection)) continue
      const result = connection.deliver(prepared.data as WebSocket.Data, prepared.options)
      if (result === 'sent') count++
      else if (typeof result === 'object') (waiting ??= []).push(result)
    }
    if (waiting !== null) {
      for (const result of await Promise.all(waiting)) if (result === 'sent') count++
    }
    return count
  }

  /**
   * Closes every open connection in parallel; peers silent past the timeout are terminated.
   * @default code and reason: the `close.shutdownCode` and `close.shutdownReason` options
   */
  closeAll (request: CloseRequest = {}): Promise<CloseResult[]> {
    const code = request.code ?? this.options.close.shutdownCode
    const reason = request.reason ?? this.options.close.shutdownReason
    const all: Promise<CloseResult>[] = []
    for (const connection of this.#registry) all.push(connection.close(code, reason, request.timeout))
    return Promise.all(all)
  }

  /** One snapshot of every component's statistics. */
  stats (): WsManagerStats {
    return {
      connections: {
        active: this.#registry.size,
        opened: this.#opened,
        closed: this.#closed,
        idleClosed: this.#idleClosed,
        heartbeatClosed: this.#heartbeatClosed,
        expiredClosed: this.#expiredClosed
      },
      close: this.closer.getStats(),
      heartbeat: this.heartbeat.getStats(),
      frames: this.frames.getStats(),
      compression: this.compression.getStats(),
      delivery: this.delivery.snapshot(),
      admission: {
        refused: { ...this.#refused },
        authFailures: this.#authFailures,
        messages: this.messageLimiter === null ? null : this.messageLimiter.getStats()
      }
    }
  }

  /** @internal Counts a refused upgrade by status. */
  countRefusal (statusCode: number): void {
    this.#refused[statusCode] = (this.#refused[statusCode] ?? 0) + 1
    if (statusCode === 401) this.#authFailures++
  }

  /** @internal Builds the settings shared by every connection of one route. */
  routeSettings (config: ResolvedRouteConfig, router: MessageRouter | null): RouteSettings {
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
      heartbeat,
      idleTimeout: config.idleTimeout,
      messageHook: new RouteHook(this.frames, compression, this.messageLimiter, router)
    }
  }

  /** @internal Turns an upgraded socket into a managed connection, registered and logged. */
  accept (socket: ManagedWebSocket, request: FastifyRequest, route: string, settings: RouteSettings): Connection {
    const id = randomUUID()
    const auth = authOf(request)
    const userId = auth === undefined ? null : auth.userId
    const limiter = this.messageLimiter
    const connection = new Connection(this, {
      id,
      socket,
      route,
      remoteAddress: request.ip ?? '',
      userId,
      user: auth === undefined ? null : auth.user,
      log: request.log.child({ connectionId: id, userId, route }),
      settings,
      closeAt: auth === undefined ? Infinity : auth.closeAt,
      // Without auth the bucket is the IP's: one client cannot dodge it by opening more sockets.
      rateBucket: limiter === null ? null : limiter.acquire(userId ?? `ip:${ipKey(request.ip)}`, Date.now())
    })
    socket[kAttach](connection)
    this.#registry.add(connection)
    this.#opened++
    request.wsConnection = connection
    if (connection.compressing) this.compression.track(socket)
    if (settings.heartbeat !== false) {
      this.heartbeat.startHeartbeat(socket, this.#onHeartbeatTimeout, settings.heartbeat)
    }
    if (connection.closeAt !== Infinity) connection.expireAt(this.#onExpired)
    if (this.#sweepNeeded && this.#sweepTimer === null) {
      this.#sweepTimer = setInterval(this.#sweep, this.#sweepMs)
      this.#sweepTimer.unref()
    }
    connection.log.info({ remoteAddress: connection.remoteAddress }, 'connection opened')
    return connection
  }

  readonly #onHeartbeatTimeout = (socket: ManagedWebSocket, stats: HeartbeatStats): void => {
    const connection = socket.connection
    if (connection === null || connection.state !== 'open') return
    this.#heartbeatClosed++
    connection.log.warn({ missedPongs: stats.missedPongs, latency: stats.latency }, 'heartbeat timeout')
    connection.close(CloseCode.GOING_AWAY, 'Connection timeout').catch(noop)
  }

  readonly #onExpired = (connection: Connection): void => {
    if (connection.state !== 'open') return
    this.#expiredClosed++
    connection.log.info('token expired')
    connection.close(CloseCode.POLICY_VIOLATION, 'Token expired').catch(noop)
  }

  readonly #sweep = (): void => {
    const now = Date.now()
    for (const connection of this.#registry) {
      if (connection.state !== 'open') continue
      const idle = connection.settings.idleTimeout
      if (idle > 0 && now - connection.lastActivityAt >= idle) {
        this.#idleClosed++
        connection.log.info({ idleMs: now - connection.lastActivityAt }, 'idle timeout')
        connection.close(CloseCode.GOING_AWAY, 'Idle timeout').catch(noop)
      }
    }
  }

  /** @internal The application is closing: refuse upgrades, close everything, wait. */
  async shutdown (): Promise<void> {
    this.#shuttingDown = true
    await this.closeAll()
    this.heartbeat.stopAll()
    this.#stopSweep()
  }

  /** @internal */
  connectionClosed (connection: Connection): void {
    if (!this.#registry.delete(connection)) return
    this.#closed++
    this.heartbeat.stopHeartbeat(connection.socket)
    if (connection.rateBucket !== null) this.messageLimiter?.release(connection.rateBucket)
    if (this.#registry.size === 0) this.#stopSweep()
  }

  #stopSweep (): void {
    if (this.#sweepTimer !== null) {
      clearInterval(this.#sweepTimer)
      this.#sweepTimer = null
    }
  }
}

function noop (): void {}
