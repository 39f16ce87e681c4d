import type { Connection } from './connection'

/**
 * Read side of the connection registry, as `fastify.wsManager.connections`.
 * Callers depend on this interface only, so a cluster-wide registry (connections of other
 * servers, over Redis pub/sub) can stand beside the in-process one without changing them.
 */
export interface ConnectionRegistry extends Iterable<Connection> {
  /** Open connections on this server. */
  readonly size: number
  /** The connection with this id, if it is open here. */
  get (id: string): Connection | undefined
  /** Open connections of one user (a fresh array). */
  byUser (userId: string): Connection[]
  /** Open connections of one route, by its URL pattern (a fresh array). */
  byRoute (route: string): Connection[]
  /** How many connections a user has registered (open or closing); O(1), for limits. */
  countByUser (userId: string): number
  /** How many connections come from an IP key (IPv6 by /64), open or closing; O(1), for limits. */
  countByIp (ipKey: string): number
}

/** Write side of the registry; only the plugin adds and removes. */
export interface MutableConnectionRegistry extends ConnectionRegistry {
  add (connection: Connection): void
  /** Removes a connection; false when it was not there (a second removal is harmless). */
  delete (connection: Connection): boolean
}

function addTo<K> (index: Map<K, Set<Connection>>, key: K, connection: Connection): void {
  const set = index.get(key)
  if (set === undefined) index.set(key, new Set([connection]))
  else set.add(connection)
}

// Empty sets are dropped so that user churn leaves no keys behind.
function deleteFrom<K> (index: Map<K, Set<Connection>>, key: K, connection: Connection): void {
  const set = index.get(key)
  if (set === undefined) return
  set.delete(connection)
  if (set.size === 0) index.delete(key)
}

/** The in-process registry: a map by id with indexes by user and by route. */
export class LocalConnectionRegistry implements MutableConnectionRegistry {
  readonly #byId = new Map<string, Connection>()
  readonly #byUser = new Map<string, Set<Connection>>()
  readonly #byRoute = new Map<string, Set<Connection>>()
  readonly #byIp = new Map<string, number>()

  get size (): number {
    return this.#byId.size
  }

  add (connection: Connection): void {
    this.#byId.set(connection.id, connection)
    if (connection.userId !== null) addTo(this.#byUser, connection.userId, connection)
    addTo(this.#byRoute, connection.route, connection)
    this.#byIp.set(connection.ipKey, (this.#byIp.get(connection.ipKey) ?? 0) + 1)
  }

  delete (connection: Connection): boolean {
    if (this.#byId.get(connection.id) !== connection) return false
    this.#byId.delete(connection.id)
    if (connection.userId !== null) deleteFrom(this.#byUser, connection.userId, connection)
    deleteFrom(this.#byRoute, connection.route, connection)
    const n = (this.#byIp.get(connection.ipKey) ?? 1) - 1
    if (n === 0) this.#byIp.delete(connection.ipKey)
    else this.#byIp.set(connection.ipKey, n)
    return true
  }

  get (id: string): Connection | undefined {
    return this.#byId.get(id)
  }

  byUser (userId: string): Connection[] {
    const set = this.#byUser.get(userId)
    return set === undefined ? [] : [...set]
  }

  countByUser (userId: string): number {
    return this.#byUser.get(userId)?.size ?? 0
  }

  countByIp (ipKey: string): number {
    return this.#byIp.get(ipKey) ?? 0
  }

  byRoute (route: string): Connection[] {
    const set = this.#byRoute.get(route)
    return set === undefined ? [] : [...set]
  }

  /** How many users, routes and IPs are indexed; for the leak tests. */
  indexSizes (): { users: number, routes: number, ips: number } {
    return { users: this.#byUser.size, routes: this.#byRoute.size, ips: this.#byIp.size }
  }

  [Symbol.iterator] (): Iterator<Connection> {
    return this.#byId.values()
  }
}
