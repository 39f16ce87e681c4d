// Cluster mode: several processes behind one load balancer act as one server over Redis.
// Delivery goes over pub/sub (one publish per call; a node subscribes a user's or a topic's
// channel only while it holds a subscriber), presence and the per-user cap live in Redis
// hashes kept atomic by Lua scripts, and nothing ever waits on a dead node or on Redis longer
// than `requestTimeout`. See the README's "Running several processes".
import { randomBytes, randomUUID } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { Redis, type RedisOptions } from 'ioredis'
import type { CloseResult } from './close'
import type { ResolvedClusterOptions } from './cluster-options'
import {
  ADMIT, COLLECT, ClusterNames, decode, DEREGISTER, encode, FORGET, NODES, PRESENCE, PUBLISH_TOPIC, REGISTER, TOPIC_SINCE,
  type Envelope, type Header, type Script
} from './cluster-protocol'
import { errors } from './errors'
import type { TopicListener } from './topics'

/** A live node, from `cluster.nodes()`. */
export interface ClusterNode {
  nodeId: string
  /** Open connections at its last refresh (every `presenceTtl / 3`). */
  connections: number
  /** Epoch milliseconds. */
  startedAt: number
}

/** One connection of a user somewhere in the cluster, from `cluster.presence()`. */
export interface PresenceEntry {
  connectionId: string
  nodeId: string
  route: string
  /** Epoch milliseconds. */
  openedAt: number
}

/**
 * An answer gathered from Redis or other nodes: the array, and whether it is whole.
 * `complete` is false when Redis could not be reached (the array then holds what this node
 * knows) or a node did not answer in time; `unanswered` names those nodes.
 */
export type ClusterAnswer<T> = T[] & { readonly complete: boolean, readonly unanswered: readonly string[] }

/** Cluster counters in `stats().cluster`. */
export interface ClusterStats {
  nodeId: string
  healthy: boolean
  /** 'sharded' or 'classic' once known. */
  pubsub: string | null
  /** Channels this node subscribes to (its node, broadcast, one per local user, one per topic). */
  channels: number
  published: number
  received: number
  /** Publications that failed (Redis unreachable or erroring). */
  publishFailures: number
  /** Other Redis commands that failed or timed out. */
  commandFailures: number
  /** Times Redis became unreachable. */
  outages: number
  /** Messages on our channels that were not ours to read (malformed or from an unknown version). */
  malformed: number
  /** Answers to disconnectUser that never came, by the node that owed them. */
  unanswered: number
}

/** What the cluster asks of the manager. */
export interface ClusterHost {
  /** Deliver a payload from another node to local connections. */
  deliverToUser (userId: string, payload: Buffer, binary: boolean, traceparent: string | undefined): void
  deliverToRoute (route: string | null, payload: Buffer, binary: boolean, traceparent: string | undefined): void
  deliverToTopic (topic: string, payload: Buffer, binary: boolean, traceparent: string | undefined, offset: number | undefined, epoch: string | undefined): void
  /** Closes a user's local connections; rejects on a bad code or reason. */
  disconnectLocal (userId: string, code: number, reason: string, timeout: number): Promise<CloseResult[]>
  /** Closes local connections by id (closeOldest from another node). */
  closeLocal (ids: string[], code: number, reason: string): void
  /** Every open local connection of a user, for re-registration after an outage. */
  localPresence (): Iterable<{ userId: string, entry: PresenceEntry }>
  connectionCount (): number
}

/** What admit() decided. */
export type Admission =
  | { outcome: 'admitted', evict: Array<{ connectionId: string, nodeId: string }> }
  | { outcome: 'refused' }
  /** Redis could not be asked: the caller falls back to local counts. */
  | { outcome: 'unavailable' }

interface PendingRequest {
  waiting: Set<string>
  results: CloseResult[]
  done: () => void
}

interface Subscription {
  ready: Promise<void>
  resolve: () => void
}

const FAILED = Symbol('failed')
const BATCH = 1000

function noop (): void {}

/**
 * The array with `complete` and `unanswered` as non-enumerable properties: code that compares
 * or spreads the array sees the items only, as before cluster mode existed.
 */
export function answer<T> (items: T[], complete: boolean, unanswered: string[] = []): ClusterAnswer<T> {
  return Object.defineProperties(items, {
    complete: { value: complete, enumerable: false },
    unanswered: { value: Object.freeze(unanswered), enumerable: false }
  }) as ClusterAnswer<T>
}

/** One node's membership of the cluster: its Redis connections, subscriptions and presence. */
export class Cluster implements TopicListener {
  readonly nodeId: string
  readonly options: ResolvedClusterOptions
  readonly names: ClusterNames
  /** The connection for commands and publications (also given to @fastify/rate-limit). */
  readonly commands: Redis
  readonly #sub: Redis
  readonly #host: ClusterHost
  readonly #log: FastifyBaseLogger
  // Proves to Redis that a refresh of this node id comes from this process.
  readonly #token = randomUUID()
  readonly #startedAt = Date.now()
  readonly #wanted = new Map<string, Subscription>()
  readonly #pending = new Map<string, PendingRequest>()
  // Admissions that took their place in Redis and have no connection yet.
  readonly #reserved = new Map<string, { userId: string, entry: string }>()
  #mode: 'sharded' | 'classic' | null = null
  #registered = false
  #started = false
  #stopped = false
  #stopping = false
  // Drained: out of nodes() for good, its Redis connections still open for publishing.
  #withdrawn = false
  #down = false
  #fallbackWarned = false
  #beat: NodeJS.Timeout | null = null
  #recovering: Promise<void> | null = null
  readonly #stats = { published: 0, received: 0, publishFailures: 0, commandFailures: 0, outages: 0, malformed: 0, unanswered: 0 }

  constructor (options: ResolvedClusterOptions, host: ClusterHost, log: FastifyBaseLogger) {
    this.options = options
    this.nodeId = options.nodeId
    this.names = new ClusterNames(options.prefix)
    this.#host = host
    this.#log = log.child({ nodeId: options.nodeId })
    // Fail fast: a command to an unreachable Redis fails at once instead of queueing, and
    // every command gives up after requestTimeout. ioredis reconnects on its own, within a second.
    const own: RedisOptions = {
      lazyConnect: true,
      enableOfflineQueue: false,
      autoResubscribe: false,
      maxRetriesPerRequest: 0,
      commandTimeout: options.requestTimeout,
      connectTimeout: Math.max(options.requestTimeout, 1000),
      retryStrategy: (times: number) => Math.min(100 * times, 1000)
    }
    const make = (name: string): Redis => typeof options.redis === 'string'
      ? new Redis(options.redis, { ...own, connectionName: `wsm-${name}-${this.nodeId}` })
      : options.redis.duplicate({ ...own, connectionName: `wsm-${name}-${this.nodeId}` })
    this.commands = make('cmd')
    this.#sub = make('sub')
    this.commands.on('error', this.#onError)
    this.#sub.on('error', this.#onError)
    this.commands.on('close', this.#onDisconnect)
    this.#sub.on('close', this.#onDisconnect)
    this.commands.on('ready', () => { if (this.#started) this.#recover() })
    this.#sub.on('ready', () => {
      this.#subscribeAll().catch(noop)
      if (this.#started) this.#recover()
    })
    this.#sub.on('messageBuffer', this.#onMessage)
    this.#sub.on('smessageBuffer', this.#onMessage)
    this.#wanted.set(this.names.broadcast, this.#subscription())
    this.#wanted.set(this.names.nodeChannel(this.nodeId), this.#subscription())
  }

  /** Redis reachable, this node registered and its channels subscribed. */
  get healthy (): boolean {
    return this.#registered && !this.#down && this.commands.status === 'ready' && this.#sub.status === 'ready'
  }

  /**
   * Connects and registers. A Redis that cannot be reached lets the node start unhealthy
   * (it registers once Redis answers).
   * @throws FST_WSM_CLUSTER_NODE_ID_TAKEN when another live node holds this node id.
   */
  async start (): Promise<void> {
    const connect = (client: Redis): Promise<void> => client.connect().catch((err: unknown) => {
      // connect() rejects once; ioredis keeps retrying by the retry strategy.
      throw err
    })
    try {
      await withTimeout(Promise.all([connect(this.commands), connect(this.#sub)]), Math.max(this.options.requestTimeout, 1000))
    } catch (err) {
      this.#markDown(err)
      this.#started = true
      this.#startBeat()
      return
    }
    const registered = await this.#register()
    if (registered === 'taken') {
      this.#stopped = true
      this.commands.disconnect()
      this.#sub.disconnect()
      throw new errors.FST_WSM_CLUSTER_NODE_ID_TAKEN(this.nodeId)
    }
    this.#started = true
    if (registered === 'failed') this.#markDown(null)
    // Bounded: a Redis that answers slowly lets the node start, unhealthy until it catches up.
    await withTimeout(this.#subscribed(), this.options.requestTimeout).catch(() => this.#markDown(null))
    this.#startBeat()
  }

  /** Leaves the cluster: its entry and presence go, its connections to Redis close. */
  async stop (): Promise<void> {
    if (this.#stopped || this.#stopping) return
    // No more refreshes or recoveries; the last command takes the node out.
    this.#stopping = true
    if (this.#beat !== null) clearInterval(this.#beat)
    for (const pending of this.#pending.values()) pending.done()
    if (this.#registered) {
      const n = this.names
      await this.#eval(DEREGISTER, [n.nodes, n.tokens, n.info, n.nodeConnections(this.nodeId)], [this.nodeId, this.#token, n.userKeyPrefix])
    }
    this.#stopped = true
    this.#registered = false
    await Promise.all([quit(this.commands), quit(this.#sub)])
  }

  /**
   * Takes the node out of nodes() for good (a drain finished): no more refreshes or
   * re-registration; publishing and answering requests go on until stop().
   */
  async withdraw (): Promise<void> {
    if (this.#withdrawn || this.#stopped || this.#stopping) return
    this.#withdrawn = true
    if (this.#beat !== null) clearInterval(this.#beat)
    if (this.#recovering !== null) await this.#recovering.catch(noop)
    if (this.#registered) {
      const n = this.names
      const reply = await this.#eval(DEREGISTER, [n.nodes, n.tokens, n.info, n.nodeConnections(this.nodeId)], [this.nodeId, this.#token, n.userKeyPrefix])
      // Not known to have left: stop() tries again; else the entry expires after presenceTtl.
      if (reply === FAILED) this.#log.warn({ nodeId: this.nodeId }, 'cluster: leaving nodes() failed; the entry expires within presenceTtl')
      else this.#registered = false
    }
  }

  stats (): ClusterStats {
    return { nodeId: this.nodeId, healthy: this.healthy, pubsub: this.#mode, channels: this.#wanted.size, ...this.#stats }
  }

  /** The live nodes with their connection counts. */
  async nodes (): Promise<ClusterAnswer<ClusterNode>> {
    const self = (): ClusterNode => ({ nodeId: this.nodeId, connections: this.#host.connectionCount(), startedAt: this.#startedAt })
    const reply = await this.#eval(NODES, [this.names.nodes, this.names.info], [])
    if (reply === FAILED || !Array.isArray(reply)) return answer([self()], false)
    const nodes: ClusterNode[] = []
    for (let i = 0; i + 1 < reply.length; i += 2) {
      const nodeId = String(reply[i])
      if (nodeId === this.nodeId) {
        nodes.push(self())
        continue
      }
      const info = parseJson(reply[i + 1]) as { connections?: unknown, startedAt?: unknown } | null
      nodes.push({
        nodeId,
        connections: typeof info?.connections === 'number' ? info.connections : 0,
        startedAt: typeof info?.startedAt === 'number' ? info.startedAt : 0
      })
    }
    return answer(nodes, true)
  }

  /** A user's connections across the cluster; this node's only when Redis cannot be reached. */
  async presence (userId: string, local: () => PresenceEntry[]): Promise<ClusterAnswer<PresenceEntry>> {
    const reply = await this.#eval(PRESENCE, [this.names.nodes, this.names.userKey(userId)], [])
    if (reply === FAILED || !Array.isArray(reply)) return answer(local(), false)
    const entries: PresenceEntry[] = []
    for (let i = 0; i + 1 < reply.length; i += 2) {
      const e = parseJson(reply[i + 1])
      if (!Array.isArray(e)) continue
      entries.push({ connectionId: String(reply[i]), nodeId: String(e[0]), route: String(e[1]), openedAt: Number(e[2]) })
    }
    return answer(entries, true)
  }

  /**
   * Registers a connection of a user before its upgrade, against the cluster-wide cap
   * (`max` 0: no cap): atomic across nodes, so racing upgrades never exceed it.
   */
  async admit (userId: string, connectionId: string, route: string, max: number, mode: 'reject' | 'closeOldest'): Promise<Admission> {
    const n = this.names
    const entry = JSON.stringify([this.nodeId, route, Date.now()])
    const reply = await this.#eval(ADMIT, [n.nodes, n.userKey(userId), n.nodeConnections(this.nodeId)],
      [this.nodeId, connectionId, entry, n.userPart(userId), String(max), mode])
    if (reply === FAILED || !Array.isArray(reply)) {
      // It may still run in Redis after the timeout: the next resync removes that entry.
      this.#markDown(null)
      return { outcome: 'unavailable' }
    }
    if (reply[0] !== 1) return { outcome: 'refused' }
    this.#reserved.set(connectionId, { userId, entry })
    const evict: Array<{ connectionId: string, nodeId: string }> = []
    for (let i = 1; i + 1 < reply.length; i += 2) evict.push({ connectionId: String(reply[i]), nodeId: String(reply[i + 1]) })
    return { outcome: 'admitted', evict }
  }

  /** An admitted upgrade became a connection: presence now follows the connection. */
  settled (connectionId: string): void {
    this.#reserved.delete(connectionId)
  }

  /** Takes a connection out of presence (it closed, or its upgrade never happened). */
  leave (userId: string, connectionId: string): void {
    this.#reserved.delete(connectionId)
    // Out of reach: the resync when Redis is back removes the entry.
    if (!this.#usable()) return
    const n = this.names
    this.commands.multi()
      .hdel(n.userKey(userId), connectionId)
      .hdel(n.nodeConnections(this.nodeId), connectionId)
      .exec()
      .catch((err: unknown) => {
        this.#failed(err)
        this.#markDown(err)
      })
  }

  /** The first local connection of a user: subscribe the user's channel. */
  userJoined (userId: string): void {
    this.#want(this.names.userChannel(userId)).catch(noop)
  }

  /** The user's last local connection closed. */
  userLeft (userId: string): void {
    this.#unwant(this.names.userChannel(userId))
  }

  firstSubscriber (topic: string): Promise<void> {
    return this.#want(this.names.topicChannel(topic))
  }

  whenSubscribed (topic: string): Promise<void> {
    return this.#wanted.get(this.names.topicChannel(topic))?.ready ?? Promise.resolve()
  }

  lastSubscriberLeft (topic: string): void {
    this.#unwant(this.names.topicChannel(topic))
  }

  /** One publication for a user's connections on other nodes. */
  publishToUser (userId: string, payload: Buffer, binary: boolean, traceparent?: string): void {
    this.#publish(this.names.userChannel(userId), encode({ n: this.nodeId, k: 'u', u: userId, b: binary, p: traceparent }, payload))
  }

  publishBroadcast (route: string | null, payload: Buffer, binary: boolean, traceparent?: string): void {
    this.#publish(this.names.broadcast, encode({ n: this.nodeId, k: 'b', r: route, b: binary, p: traceparent }, payload))
  }

  publishTopic (topic: string, payload: Buffer, binary: boolean, traceparent?: string): void {
    this.#publish(this.names.topicChannel(topic), encode({ n: this.nodeId, k: 't', t: topic, b: binary, p: traceparent }, payload))
  }

  /**
   * Publishes a message of a topic with offsets (the `topics` option): Redis gives the offset
   * and keeps the history, and every node, this one included, delivers what Redis publishes.
   * Resolves with the offset and epoch, or null when Redis could not be asked.
   */
  async publishTopicLogged (topic: string, dataJson: string, history: { size: number, ttl: number } | false, ttl: number): Promise<{ offset: number, epoch: string } | null> {
    if (this.#mode === null) return null
    const reply = await this.#eval(PUBLISH_TOPIC, this.names.topicKeys(topic), [
      JSON.stringify(topic), dataJson, randomBytes(8).toString('hex'), String(history === false ? 0 : history.size),
      String(history === false ? ttl : history.ttl), this.names.topicChannel(topic), JSON.stringify(this.nodeId), this.#mode
    ])
    if (reply === FAILED || !Array.isArray(reply)) {
      this.#stats.publishFailures++
      return null
    }
    this.#stats.published++
    return { offset: Number(reply[0]), epoch: String(reply[1]) }
  }

  /** Where a topic stands in Redis, and the messages after `after` (-1: none); null when Redis could not be asked. */
  async topicSince (topic: string, after: number, ttl: number, epoch = ''): Promise<{ epoch: string, offset: number, first: number, frames: string[] } | null> {
    const reply = await this.#eval(TOPIC_SINCE, this.names.topicKeys(topic), [String(after), randomBytes(8).toString('hex'), String(ttl), epoch])
    if (reply === FAILED || !Array.isArray(reply)) return null
    return { epoch: String(reply[0]), offset: Number(reply[1]), first: Number(reply[2]), frames: reply.slice(3).map(String) }
  }

  /** Closes connections on another node (closeOldest). */
  closeRemote (nodeId: string, ids: string[], code: number, reason: string): void {
    this.#publish(this.names.nodeChannel(nodeId), encode({ n: this.nodeId, k: 'x', ids, c: code, r: reason }))
  }

  /**
   * Closes a user's connections on the other nodes that hold them (from presence); resolves
   * with their results once each answered, or when `requestTimeout` has passed after the
   * close timeout, naming the nodes that did not answer.
   */
  async disconnectRemote (userId: string, code: number, reason: string, timeout: number): Promise<{ results: CloseResult[], complete: boolean, unanswered: string[] }> {
    const reply = await this.#eval(PRESENCE, [this.names.nodes, this.names.userKey(userId)], [])
    if (reply === FAILED || !Array.isArray(reply)) return { results: [], complete: false, unanswered: [] }
    const holders = new Set<string>()
    for (let i = 1; i < reply.length; i += 2) {
      const e = parseJson(reply[i])
      if (Array.isArray(e) && typeof e[0] === 'string' && e[0] !== this.nodeId) holders.add(e[0])
    }
    if (holders.size === 0) return { results: [], complete: true, unanswered: [] }
    const q = randomUUID()
    const results: CloseResult[] = []
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, timeout + this.options.requestTimeout)
      const pending: PendingRequest = { waiting: holders, results, done }
      function done (): void {
        clearTimeout(timer)
        resolve()
      }
      this.#pending.set(q, pending)
      if (!this.#publish(this.names.userChannel(userId), encode({ n: this.nodeId, k: 'd', u: userId, q, c: code, r: reason, o: timeout }))) done()
    })
    this.#pending.delete(q)
    const unanswered = [...holders]
    if (unanswered.length > 0) {
      this.#stats.unanswered += unanswered.length
      this.#log.warn({ unanswered, userId }, 'cluster: nodes did not answer disconnectUser in time')
    }
    return { results, complete: unanswered.length === 0, unanswered }
  }

  /** Falls back to local counts once per outage, with one warn log. */
  noteFallback (what: string): void {
    this.#markDown(null)
    if (this.#fallbackWarned) return
    this.#fallbackWarned = true
    this.#log.warn({ what }, 'cluster: Redis unreachable, limits count this node only until it is back')
  }

  #subscription (): Subscription {
    let settle = noop
    const ready = new Promise<void>((resolve) => { settle = resolve })
    return { ready, resolve: settle }
  }

  #want (channel: string): Promise<void> {
    const existing = this.#wanted.get(channel)
    if (existing !== undefined) return existing.ready
    const subscription = this.#subscription()
    this.#wanted.set(channel, subscription)
    if (this.#sub.status === 'ready' && this.#mode !== null) {
      this.#subscribeBatch([channel]).catch(noop)
    } else {
      // Restored when Redis is back; nothing to wait for until then.
      subscription.resolve()
    }
    return subscription.ready
  }

  #unwant (channel: string): void {
    if (!this.#wanted.delete(channel)) return
    if (this.#sub.status !== 'ready' || this.#mode === null) return
    const unsubscribe = this.#mode === 'sharded' ? this.#sub.sunsubscribe(channel) : this.#sub.unsubscribe(channel)
    unsubscribe.catch((err: unknown) => this.#failed(err))
  }

  async #subscribeBatch (channels: string[]): Promise<void> {
    try {
      if (this.#mode === 'sharded') await this.#sub.ssubscribe(...channels)
      else await this.#sub.subscribe(...channels)
    } catch (err) {
      this.#failed(err)
    }
    for (const channel of channels) this.#wanted.get(channel)?.resolve()
  }

  // Every channel this node wants, after a (re)connection of the subscriber: nothing is left
  // unsubscribed after an outage (socket.io #4845).
  async #subscribeAll (): Promise<void> {
    if (this.#mode === null) {
      const mode = await this.#detectMode()
      if (mode === null) return
      this.#mode = mode
    }
    const channels = [...this.#wanted.keys()]
    const batches: Promise<void>[] = []
    for (let i = 0; i < channels.length; i += BATCH) batches.push(this.#subscribeBatch(channels.slice(i, i + BATCH)))
    await Promise.all(batches)
  }

  async #subscribed (): Promise<void> {
    if (this.#sub.status !== 'ready') return
    if (this.#mode === null) await this.#subscribeAll()
    await Promise.all([...this.#wanted.values()].map((s) => s.ready))
  }

  async #detectMode (): Promise<'sharded' | 'classic' | null> {
    if (this.options.pubsub !== 'auto') return this.options.pubsub
    // HELLO (the @connection category) first: an ACL without @dangerous refuses INFO.
    try {
      const hello = await this.#sub.call('HELLO') as unknown[]
      const at = hello.indexOf('version')
      if (at >= 0) return Number(String(hello[at + 1]).split('.')[0]) >= 7 ? 'sharded' : 'classic'
    } catch (err) {
      this.#failed(err)
    }
    try {
      const info = await this.#sub.info('server')
      const major = Number(/redis_version:(\d+)/.exec(info)?.[1] ?? 0)
      return major >= 7 ? 'sharded' : 'classic'
    } catch (err) {
      this.#failed(err)
      // Tried again at the next refresh; meanwhile nobody waits for a subscription.
      for (const subscription of this.#wanted.values()) subscription.resolve()
      return null
    }
  }

  #publish (channel: string, message: Buffer): boolean {
    if (!this.#usable() || this.#mode === null) {
      this.#stats.publishFailures++
      return false
    }
    this.#stats.published++
    const sent = this.#mode === 'sharded' ? this.commands.spublish(channel, message) : this.commands.publish(channel, message)
    sent.catch((err: unknown) => {
      this.#stats.publishFailures++
      this.#failed(err)
    })
    return true
  }

  readonly #onMessage = (channel: Buffer, message: Buffer): void => {
    const envelope = decode(message)
    // A message must belong to the channel it came on: a topic's publication is never taken
    // for a broadcast, whatever the names.
    if (envelope === null || channel.toString() !== this.#channelOf(envelope.header)) {
      this.#stats.malformed++
      return
    }
    const header = envelope.header
    // This node delivered its own share when it published, but for topics with offsets: their
    // offset comes from Redis, so every node delivers what Redis publishes, in its order.
    if (header.n === this.nodeId && !(header.k === 't' && header.o !== undefined)) return
    this.#stats.received++
    try {
      this.#dispatch(header, envelope)
    } catch (err) {
      this.#log.error({ err }, 'cluster: message handling failed')
    }
  }

  #channelOf (header: Header): string {
    switch (header.k) {
      case 'u': case 'd': return this.names.userChannel(header.u)
      case 't': return this.names.topicChannel(header.t)
      case 'b': return this.names.broadcast
      default: return this.names.nodeChannel(this.nodeId)
    }
  }

  #dispatch (header: Header, envelope: Envelope): void {
    switch (header.k) {
      case 'u': return this.#host.deliverToUser(header.u, envelope.payload, header.b, header.p)
      case 'b': return this.#host.deliverToRoute(header.r, envelope.payload, header.b, header.p)
      case 't': return this.#host.deliverToTopic(header.t, envelope.payload, header.b, header.p, header.o, header.e)
      case 'x': return this.#host.closeLocal(header.ids, header.c, header.r)
      case 'd': {
        const origin = header.n
        const q = header.q
        this.#host.disconnectLocal(header.u, header.c, header.r, header.o).then((res) => {
          this.#publish(this.names.nodeChannel(origin), encode({ n: this.nodeId, k: 'a', q, res }))
        }, (err: unknown) => this.#log.warn({ err }, 'cluster: disconnect request refused'))
        return
      }
      case 'a': {
        const pending = this.#pending.get(header.q)
        if (pending === undefined || !pending.waiting.delete(header.n)) return
        for (const r of header.res) if (isCloseResult(r)) pending.results.push(r)
        if (pending.waiting.size === 0) pending.done()
      }
    }
  }

  // 'fresh': Redis did not know this process under the id (a new Redis, an id taken back
  // from a dead process, or this node was given up for dead): its presence must be put back.
  async #register (): Promise<'ok' | 'fresh' | 'taken' | 'failed'> {
    const n = this.names
    const info = JSON.stringify({ connections: this.#host.connectionCount(), startedAt: this.#startedAt })
    const reply = await this.#eval(REGISTER, [n.nodes, n.tokens, n.info, n.nodeConnections(this.nodeId)],
      [this.nodeId, this.#token, String(this.options.presenceTtl), info, n.userKeyPrefix])
    if (reply === FAILED) return 'failed'
    if (!Array.isArray(reply)) {
      // At start the caller throws FST_WSM_CLUSTER_NODE_ID_TAKEN; later it can only be logged.
      if (this.#started && this.#registered) this.#log.error('cluster: another live node took this node id; this node stays out of the cluster')
      this.#registered = false
      return 'taken'
    }
    // A refresh that was under way when the node withdrew: DEREGISTER ran after it in Redis.
    if (this.#withdrawn) return 'ok'
    this.#registered = true
    if (typeof reply[1] === 'string' && reply[1] !== '') this.#collect(reply[1]).catch(noop)
    return reply[2] === 1 ? 'fresh' : 'ok'
  }

  // A dead node's presence entries, 500 at a time, up to 20 rounds per refresh.
  async #collect (dead: string): Promise<void> {
    const n = this.names
    for (let round = 0; round < 20; round++) {
      const reply = await this.#eval(COLLECT, [n.nodes, n.tokens, n.info, n.nodeConnections(dead)], [dead, n.userKeyPrefix])
      if (reply !== 2) return
    }
  }

  #startBeat (): void {
    if (this.#beat !== null) return
    this.#beat = setInterval(() => {
      if (!this.#usable() || this.#stopping || this.#withdrawn) return
      // A timeout without a dropped connection leaves no 'ready' to recover on: the beat does.
      if (this.#down) this.#recover()
      else {
        this.#register().then((result) => { if (result === 'fresh') this.#recover(true) }, noop)
      }
      if (this.#mode === null && this.#sub.status === 'ready') this.#subscribeAll().catch(noop)
    }, Math.max(100, Math.floor(this.options.presenceTtl / 3)))
    this.#beat.unref()
  }

  // Redis is back (or was wrong about this node): register again (checking the id), then make
  // Redis's presence of this node match its connections, both ways: entries of connections
  // that closed meanwhile (or of admissions that timed out here but ran there) go, every open
  // connection and pending admission is put back. The subscriber's own 'ready' restores channels.
  #recover (registered = false): void {
    if (this.#stopping || this.#withdrawn || this.#recovering !== null || !this.#usable()) return
    this.#recovering = (async () => {
      if (!registered) {
        const result = await this.#register()
        if (result === 'taken' || result === 'failed') return
      }
      const count = await this.#resync()
      if (this.#sub.status !== 'ready' || !this.#down) return
      this.#down = false
      this.#fallbackWarned = false
      this.#log.info({ connections: count }, 'cluster: Redis reachable again, presence restored')
    })().catch((err: unknown) => this.#failed(err)).finally(() => { this.#recovering = null })
  }

  async #resync (): Promise<number> {
    const n = this.names
    const mine = n.nodeConnections(this.nodeId)
    const local = new Map<string, { userId: string, entry: string }>()
    for (const { userId, entry } of this.#host.localPresence()) {
      local.set(entry.connectionId, { userId, entry: JSON.stringify([entry.nodeId, entry.route, entry.openedAt]) })
    }
    for (const [id, reserved] of this.#reserved) local.set(id, reserved)
    const known = await this.commands.hkeys(mine)
    await this.#forget(known.filter((id) => !local.has(id)))
    let batch = this.commands.pipeline()
    let count = 0
    for (const [id, { userId, entry }] of local) {
      batch.hset(n.userKey(userId), id, entry)
      batch.hset(mine, id, n.userPart(userId))
      if (++count % BATCH === 0) {
        await batch.exec()
        batch = this.commands.pipeline()
      }
    }
    await batch.exec()
    // A connection that closed while its entry was being put back would stay: take it out.
    const stillOpen = new Set<string>()
    for (const { entry } of this.#host.localPresence()) stillOpen.add(entry.connectionId)
    await this.#forget([...local.keys()].filter((id) => !stillOpen.has(id) && !this.#reserved.has(id)))
    return count
  }

  async #forget (ids: string[]): Promise<void> {
    const n = this.names
    for (let i = 0; i < ids.length; i += BATCH) {
      const reply = await this.#eval(FORGET, [n.nodeConnections(this.nodeId)], [n.userKeyPrefix, ...ids.slice(i, i + BATCH)])
      if (reply === FAILED) throw new Error('cluster: presence clean-up failed')
    }
  }

  #usable (): boolean {
    return !this.#stopped && this.commands.status === 'ready'
  }

  async #eval (script: Script, keys: string[], args: string[]): Promise<unknown> {
    if (!this.#usable()) {
      this.#stats.commandFailures++
      return FAILED
    }
    try {
      try {
        return await this.commands.evalsha(script.sha, keys.length, ...keys, ...args)
      } catch (err) {
        if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err
        return await this.commands.eval(script.source, keys.length, ...keys, ...args)
      }
    } catch (err) {
      this.#stats.commandFailures++
      this.#failed(err)
      return FAILED
    }
  }

  #failed (err: unknown): void {
    this.#log.debug({ err }, 'cluster: Redis command failed')
  }

  #markDown (err: unknown): void {
    if (this.#down) return
    this.#down = true
    this.#stats.outages++
    this.#log.warn({ err }, 'cluster: Redis unreachable; local connections and delivery go on')
  }

  readonly #onDisconnect = (): void => {
    if (this.#stopped) return
    this.#markDown(null)
  }

  readonly #onError = (err: Error): void => {
    // ioredis reports each failed reconnection; the outage itself is logged once.
    this.#log.debug({ err }, 'cluster: Redis connection error')
  }
}

function isCloseResult (value: unknown): value is CloseResult {
  const r = value as CloseResult
  return typeof value === 'object' && value !== null && typeof r.code === 'number' && typeof r.reason === 'string' &&
    typeof r.clean === 'boolean' && typeof r.durationMs === 'number'
}

function parseJson (value: unknown): unknown {
  if (typeof value !== 'string') return null
  try {
    return JSON.parse(value)
  } catch {
    return null
  }
}

async function withTimeout<T> (promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

async function quit (client: Redis): Promise<void> {
  if (client.status === 'end') return
  if (client.status !== 'ready') {
    client.disconnect()
    return
  }
  await withTimeout(client.quit(), 1000).catch(() => client.disconnect())
}
