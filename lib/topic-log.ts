// Topic offsets and history (issue 14): with the `topics` option, every publication of a topic
// gets the next offset of that topic and its epoch, and the last `history.size` of them are
// kept for `history.ttl` so a subscriber that was away can ask for what it missed.
import { randomBytes } from 'node:crypto'
import { checkInt, fail, section } from './validate'

/** The `topics` option. */
export interface TopicsOptions {
  /** Keep the last messages of each topic for recovery; off unless set. */
  history?: false | { size?: number, ttl?: number }
  /**
   * Decides whether a connection may subscribe to a topic through the built-in
   * `topic.subscribe` message. Required: clients choose the names.
   */
  authorize: (connection: import('./connection').Connection, topic: string) => boolean | Promise<boolean>
}

/** The topics options after validation. */
export interface ResolvedTopicsOptions {
  history: { size: number, ttl: number } | false
  authorize: TopicsOptions['authorize']
}

/** Validates the `topics` option; false or undefined is off. */
export function resolveTopics (input: unknown): ResolvedTopicsOptions | false {
  if (input === undefined || input === false) return false
  const given = section('topics', input, ['history', 'authorize'])
  if (typeof given.authorize !== 'function') fail('topics.authorize', 'required: a function (connection, topic) => boolean deciding who may subscribe to what')
  let history: ResolvedTopicsOptions['history'] = false
  if (given.history !== undefined && given.history !== false) {
    const h = section('topics.history', given.history, ['size', 'ttl'])
    history = {
      size: h.size === undefined ? 100 : checkInt('topics.history.size', h.size, 1, 1_000_000),
      ttl: h.ttl === undefined ? 300_000 : checkInt('topics.history.ttl', h.ttl, 1000, 86_400_000)
    }
  }
  return { history, authorize: given.authorize as TopicsOptions['authorize'] }
}

/** One message as subscribers receive it: `{ type: 'topic.message', topic, epoch, offset, data }`. */
export function topicFrame (topic: string, epoch: string, offset: number, dataJson: string): Buffer {
  return Buffer.from(`{"type":"topic.message","topic":${JSON.stringify(topic)},"epoch":${JSON.stringify(epoch)},"offset":${offset},"data":${dataJson}}`)
}

interface Entry { offset: number, frame: Buffer, at: number }

interface TopicState {
  epoch: string
  offset: number
  entries: Entry[]
  lastAt: number
}

/** What a subscriber that asked for `since` gets. */
export interface Recovery {
  epoch: string
  /** The topic's last offset now. */
  offset: number
  /** Every message after `since` is in `frames`, in order; false when the gap is not held (or the epoch changed). */
  recovered: boolean
  frames: Buffer[]
}

/** Offsets and history of one process's topics. */
export class LocalTopicLog {
  readonly #topics = new Map<string, TopicState>()
  readonly #history: { size: number, ttl: number } | false

  constructor (history: { size: number, ttl: number } | false) {
    this.#history = history
  }

  #state (topic: string, now: number): TopicState {
    let state = this.#topics.get(topic)
    // A topic silent past the ttl starts over with a new epoch: what it held is gone.
    if (state !== undefined && now - state.lastAt > this.ttl && state.entries.length === 0) {
      this.#topics.delete(topic)
      state = undefined
    }
    if (state === undefined) {
      state = { epoch: randomBytes(8).toString('hex'), offset: 0, entries: [], lastAt: now }
      this.#topics.set(topic, state)
    }
    return state
  }

  #trim (state: TopicState, now: number): void {
    const history = this.#history
    if (history === false) return
    let drop = Math.max(0, state.entries.length - history.size)
    while (drop < state.entries.length && now - state.entries[drop].at > history.ttl) drop++
    if (drop > 0) state.entries.splice(0, drop)
  }

  /** The next message of a topic: its frame, offset and epoch. */
  append (topic: string, dataJson: string): { frame: Buffer, offset: number, epoch: string } {
    const now = Date.now()
    const state = this.#state(topic, now)
    state.offset++
    state.lastAt = now
    const frame = topicFrame(topic, state.epoch, state.offset, dataJson)
    if (this.#history !== false) {
      state.entries.push({ offset: state.offset, frame, at: now })
      this.#trim(state, now)
    }
    return { frame, offset: state.offset, epoch: state.epoch }
  }

  /** Where a topic stands, and what a subscriber missed since `since` (if given). */
  recover (topic: string, since: { offset: number, epoch: string } | undefined): Recovery {
    const now = Date.now()
    const state = this.#state(topic, now)
    this.#trim(state, now)
    const base = { epoch: state.epoch, offset: state.offset }
    if (since === undefined) return { ...base, recovered: true, frames: [] }
    if (since.epoch !== state.epoch || since.offset > state.offset) return { ...base, recovered: false, frames: [] }
    if (since.offset === state.offset) return { ...base, recovered: true, frames: [] }
    const first = state.entries[0]
    // Held only when the history still starts at or before the first missed message.
    if (first === undefined || first.offset > since.offset + 1) return { ...base, recovered: false, frames: [] }
    return { ...base, recovered: true, frames: state.entries.filter((e) => e.offset > since.offset).map((e) => e.frame) }
  }

  /** Topics known now; for tests and stats. */
  get size (): number {
    return this.#topics.size
  }

  /** Milliseconds a silent topic keeps its offset and epoch. */
  get ttl (): number {
    return this.#history === false ? 300_000 : this.#history.ttl
  }

  /**
   * Drops topics silent past the ttl (called now and then by the manager), so that a stream of
   * one-off topic names cannot grow the map: a topic that comes back starts a new epoch.
   */
  sweep (): void {
    const now = Date.now()
    const ttl = this.ttl
    for (const [topic, state] of this.#topics) {
      this.#trim(state, now)
      if (state.entries.length === 0 && now - state.lastAt > ttl) this.#topics.delete(topic)
    }
  }
}
