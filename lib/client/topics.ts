// Topic subscriptions that outlive a connection: each topic remembers the last offset and
// epoch it delivered, subscribes again after every reconnect with `since`, and drops what it
// already delivered, so that a replay overlapping live messages reaches the listeners once.

import { ClientError } from './errors'

/** What a topic listener gets beside the data. */
export interface TopicMeta {
  topic: string
  offset: number
  epoch: string | number
}

/** A topic listener: the message's data, and where it sits in the topic. */
export type TopicListener<T = unknown> = (data: T, meta: TopicMeta) => void

/** Payload of the client's 'subscribed' event. */
export interface SubscribedEvent {
  topic: string
  epoch: string | number | null
  offset: number | null
  /**
   * Whether the server replayed everything missed since the last delivered message. False
   * after a reconnect means a gap (history too short, or the epoch changed): reload the
   * topic's state from the application's own store.
   */
  recovered: boolean
  /** Whether this subscription asked for a replay (`since`), i.e. it is a resubscription. */
  resumed: boolean
}

interface Subscription {
  readonly topic: string
  readonly listeners: Set<TopicListener>
  offset: number | null
  epoch: string | number | null
  /** The connection (by its number) on which it was last asked for. */
  askedOn: number
}

/** What the subscriptions need from the client. */
export interface SubscriptionHost {
  request (type: string, payload: Record<string, unknown>): Promise<Record<string, unknown>>
  isOpen (): boolean
  onSubscribed (event: SubscribedEvent): void
  onError (err: Error): void
}

function isEpoch (value: unknown): value is string | number {
  return typeof value === 'string' || typeof value === 'number'
}

/** The client's topics. */
export class Subscriptions {
  readonly #host: SubscriptionHost
  readonly #topics = new Map<string, Subscription>()
  #connection = 0

  constructor (host: SubscriptionHost) {
    this.#host = host
  }

  names (): string[] {
    return [...this.#topics.keys()]
  }

  /** @throws FST_WSM_CLIENT_OPTION_INVALID for an empty topic or a listener that is not a function. */
  add (topic: string, listener: TopicListener): () => void {
    if (typeof topic !== 'string' || topic === '') throw new ClientError('FST_WSM_CLIENT_OPTION_INVALID', 'subscribe(): topic must be a non-empty string')
    if (typeof listener !== 'function') throw new ClientError('FST_WSM_CLIENT_OPTION_INVALID', 'subscribe(): onMessage must be a function')
    let subscription = this.#topics.get(topic)
    const first = subscription === undefined
    if (subscription === undefined) {
      subscription = { topic, listeners: new Set(), offset: null, epoch: null, askedOn: -1 }
      this.#topics.set(topic, subscription)
    }
    // A wrapper per call, so that the same function subscribed twice is removed once per call.
    const entry: TopicListener = (data, meta) => listener(data, meta)
    subscription.listeners.add(entry)
    if (first && this.#host.isOpen()) this.#subscribe(subscription)
    const owner = subscription
    return () => {
      if (!owner.listeners.delete(entry) || owner.listeners.size > 0) return
      if (this.#topics.get(topic) !== owner) return
      this.#topics.delete(topic)
      if (this.#host.isOpen()) this.#host.request('topic.unsubscribe', { topic }).catch((err: ClientError) => this.#failed(err))
    }
  }

  /** A new connection opened (before its 'open' listeners run). */
  opened (): void {
    this.#connection++
  }

  /** After every open: subscribe to each topic not yet asked for on this connection, asking for what was missed. */
  resubscribe (): void {
    for (const subscription of this.#topics.values()) {
      if (subscription.askedOn !== this.#connection) this.#subscribe(subscription)
    }
  }

  /** Delivers a `topic.message`; false when it is not for a topic of ours (the client emits it). */
  deliver (message: Record<string, unknown>): boolean {
    const subscription = typeof message.topic === 'string' ? this.#topics.get(message.topic) : undefined
    const { offset, epoch } = message
    if (subscription === undefined || typeof offset !== 'number' || !isEpoch(epoch)) return false
    // Already delivered: a replay that overlaps what came live, or a resubscription's echo.
    if (subscription.epoch === epoch && subscription.offset !== null && offset <= subscription.offset) return true
    subscription.offset = offset
    subscription.epoch = epoch
    const meta: TopicMeta = { topic: subscription.topic, offset, epoch }
    for (const listener of [...subscription.listeners]) {
      try {
        listener(message.data, meta)
      } catch (err) {
        this.#host.onError(err as Error)
      }
    }
    return true
  }

  #subscribe (subscription: Subscription): void {
    subscription.askedOn = this.#connection
    const since = subscription.offset !== null && subscription.epoch !== null
      ? { offset: subscription.offset, epoch: subscription.epoch }
      : undefined
    const payload: Record<string, unknown> = since === undefined ? { topic: subscription.topic } : { topic: subscription.topic, since }
    this.#host.request('topic.subscribe', payload).then((reply) => {
      if (this.#topics.get(subscription.topic) !== subscription) return
      const epoch = isEpoch(reply.epoch) ? reply.epoch : null
      const offset = typeof reply.offset === 'number' ? reply.offset : null
      const recovered = reply.recovered !== false
      // The reply's offset is where live messages start: the starting point of a first
      // subscription, and of one whose gap the server could not fill. When it did fill it,
      // the replay's own offsets move ours, so the reply's must not skip them.
      const startsHere = since === undefined ? subscription.offset === null : !recovered || epoch !== since.epoch
      if (startsHere && offset !== null && epoch !== null) {
        subscription.offset = offset
        subscription.epoch = epoch
      }
      this.#host.onSubscribed({ topic: subscription.topic, epoch, offset, recovered: since === undefined ? true : recovered && epoch === since.epoch, resumed: since !== undefined })
    }, (err: ClientError) => this.#failed(err))
  }

  #failed (err: ClientError): void {
    // A close rejects every pending request; the resubscription after the reconnect follows.
    if (err.code === 'FST_WSM_CLIENT_CLOSED') return
    this.#host.onError(err)
  }
}
