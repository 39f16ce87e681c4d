// Topics (rooms): which of this node's connections subscribe to what. The cluster hears of a
// topic's first and last local subscriber and keeps its Redis channel subscribed only between.
import { errors } from './errors'

/** The longest topic name, in UTF-16 code units. */
export const MAX_TOPIC_LENGTH = 256

// C0 and C1 controls and DEL: nothing that can forge a log line or a protocol field.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/ // eslint-disable-line no-control-regex
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

/** Why a value cannot be a topic name, or null when it can. */
export function topicProblem (topic: unknown): string | null {
  if (typeof topic !== 'string') return `expected a string, got ${typeof topic}`
  if (topic.length === 0) return 'expected a non-empty string'
  if (topic.length > MAX_TOPIC_LENGTH) return `expected at most ${MAX_TOPIC_LENGTH} characters, got ${topic.length}`
  if (CONTROL.test(topic)) return 'control characters are not allowed'
  // A lone surrogate becomes U+FFFD in UTF-8: two different names would share one channel.
  if (LONE_SURROGATE.test(topic)) return 'lone surrogates are not allowed'
  return null
}

/** Throws the coded error for a bad topic name. */
export function checkTopic (topic: unknown): asserts topic is string {
  const problem = topicProblem(topic)
  if (problem !== null) throw new errors.FST_WSM_TOPIC_INVALID(String(topic).slice(0, 64), problem)
}

/** What the registry tells the cluster. */
export interface TopicListener {
  /** The first local subscriber of a topic: subscribe its channel. Resolves once other nodes' publications arrive. */
  firstSubscriber (topic: string): Promise<void>
  /** Resolves once the topic's channel is subscribed (at once when Redis is unreachable). */
  whenSubscribed (topic: string): Promise<void>
  /** The last local subscriber left. */
  lastSubscriberLeft (topic: string): void
}

/** Local subscriptions: by topic, and by connection for the clean-up on close. */
export class TopicRegistry<Connection extends object = object> {
  readonly #byTopic = new Map<string, Set<Connection>>()
  readonly #byConnection = new Map<Connection, Set<string>>()
  readonly #maxPerConnection: number
  #listener: TopicListener | null = null

  constructor (maxPerConnection: number) {
    this.#maxPerConnection = maxPerConnection
  }

  /** @internal The cluster, once it is running. */
  listen (listener: TopicListener | null): void {
    this.#listener = listener
  }

  /** Topics with at least one local subscriber. */
  get size (): number {
    return this.#byTopic.size
  }

  /** Every topic with a local subscriber (for the cluster's re-subscription). */
  topics (): IterableIterator<string> {
    return this.#byTopic.keys()
  }

  /** The local subscribers of a topic; the live set, not to be changed. */
  subscribers (topic: string): ReadonlySet<Connection> | undefined {
    return this.#byTopic.get(topic)
  }

  /** The topics of one connection (a fresh array). */
  of (connection: Connection): string[] {
    const set = this.#byConnection.get(connection)
    return set === undefined ? [] : [...set]
  }

  /** @throws FST_WSM_TOPIC_INVALID for a bad name or past the connection's topic limit. */
  subscribe (connection: Connection, topic: string): Promise<void> {
    checkTopic(topic)
    let mine = this.#byConnection.get(connection)
    if (mine?.has(topic) === true) return this.#ready(topic, false)
    if (this.#maxPerConnection > 0 && (mine?.size ?? 0) >= this.#maxPerConnection) {
      throw new errors.FST_WSM_TOPIC_INVALID(topic.slice(0, 64), `the connection already has ${this.#maxPerConnection} topics (maxTopicsPerConnection)`)
    }
    if (mine === undefined) {
      mine = new Set()
      this.#byConnection.set(connection, mine)
    }
    mine.add(topic)
    let subscribers = this.#byTopic.get(topic)
    const first = subscribers === undefined
    if (subscribers === undefined) {
      subscribers = new Set()
      this.#byTopic.set(topic, subscribers)
    }
    subscribers.add(connection)
    return this.#ready(topic, first)
  }

  /** Resolves once the topic's channel is subscribed (at once without a cluster). */
  whenReady (topic: string): Promise<void> {
    return this.#listener === null ? Promise.resolve() : this.#listener.whenSubscribed(topic)
  }

  /** False when the connection did not subscribe to the topic. */
  unsubscribe (connection: Connection, topic: string): boolean {
    const mine = this.#byConnection.get(connection)
    if (mine === undefined || !mine.delete(topic)) return false
    if (mine.size === 0) this.#byConnection.delete(connection)
    this.#leave(connection, topic)
    return true
  }

  /** Drops every subscription of a connection that is going away. */
  removeConnection (connection: Connection): void {
    const mine = this.#byConnection.get(connection)
    if (mine === undefined) return
    this.#byConnection.delete(connection)
    for (const topic of mine) this.#leave(connection, topic)
  }

  #leave (connection: Connection, topic: string): void {
    const subscribers = this.#byTopic.get(topic)
    if (subscribers === undefined) return
    subscribers.delete(connection)
    if (subscribers.size > 0) return
    this.#byTopic.delete(topic)
    this.#listener?.lastSubscriberLeft(topic)
  }

  #ready (topic: string, first: boolean): Promise<void> {
    const listener = this.#listener
    if (listener === null) return Promise.resolve()
    // A second subscriber waits for the same Redis subscription as the first.
    return first ? listener.firstSubscriber(topic) : listener.whenSubscribed(topic)
  }
}
