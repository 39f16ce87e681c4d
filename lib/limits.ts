import type { FastifyRequest } from 'fastify'

/** The per-user message rate limit. */
export interface MessageRateLimitOptions {
  /** Messages allowed per `timeWindow` (the refill rate). @default 100 */
  max: number
  /** Milliseconds the `max` is counted over. @default 1000 */
  timeWindow: number
  /** Bucket size: messages a user may send at once after a quiet spell. @default 2 × max */
  burst: number
  /** 'close': close with 1008 "Rate limit exceeded"; 'drop': drop the message and count it. @default 'close' */
  policy: 'close' | 'drop'
}

/** A token bucket shared by every connection of one user on this server. */
export interface Bucket {
  readonly key: string
  tokens: number
  last: number
  /** Connections holding this bucket; it is dropped with the last one. */
  refs: number
  /** True from the first refused message until one is allowed again: one log line per episode. */
  limited: boolean
}

/** Rate-limit counters in `stats()`. */
export interface MessageLimitStats {
  /** Users (or IPs, without auth) with a bucket now. */
  buckets: number
  /** Messages refused since start. */
  refused: number
  /** Refused messages per user. */
  refusedByUser: Record<string, number>
}

const MAX_KEYS = 10_000
const OTHER_KEY = '(other)'

/**
 * Token buckets per user for incoming messages. `take()` is on every message's path:
 * synchronous, O(1), no allocation.
 */
export class MessageRateLimiter {
  readonly options: MessageRateLimitOptions
  readonly #rate: number
  readonly #buckets = new Map<string, Bucket>()
  readonly #refusedByUser = new Map<string, number>()
  #refused = 0

  constructor (options: MessageRateLimitOptions) {
    this.options = options
    this.#rate = options.max / options.timeWindow
  }

  /** The bucket of a user, created full on first use; pair with release(). */
  acquire (key: string, now: number): Bucket {
    let bucket = this.#buckets.get(key)
    if (bucket === undefined) {
      bucket = { key, tokens: this.options.burst, last: now, refs: 0, limited: false }
      this.#buckets.set(key, bucket)
    }
    bucket.refs++
    return bucket
  }

  /** Drops a connection's hold on its bucket; the bucket goes with the last one. */
  release (bucket: Bucket): void {
    if (--bucket.refs <= 0) this.#buckets.delete(bucket.key)
  }

  /** Takes one token; false when the user is over the limit. */
  take (bucket: Bucket, now: number): boolean {
    let tokens = bucket.tokens + (now - bucket.last) * this.#rate
    if (tokens > this.options.burst) tokens = this.options.burst
    bucket.last = now
    if (tokens >= 1) {
      bucket.tokens = tokens - 1
      bucket.limited = false
      return true
    }
    bucket.tokens = tokens
    this.#refused++
    const n = this.#refusedByUser.get(bucket.key)
    if (n !== undefined) this.#refusedByUser.set(bucket.key, n + 1)
    else if (this.#refusedByUser.size < MAX_KEYS) this.#refusedByUser.set(bucket.key, 1)
    else this.#refusedByUser.set(OTHER_KEY, (this.#refusedByUser.get(OTHER_KEY) ?? 0) + 1)
    return false
  }

  getStats (): MessageLimitStats {
    return { buckets: this.#buckets.size, refused: this.#refused, refusedByUser: Object.fromEntries(this.#refusedByUser) }
  }
}

/** Which origins may open a WebSocket from a browser. */
export type OriginPolicy =
  | 'same-origin'
  | '*'
  | Array<string | RegExp>
  | ((origin: string, request: FastifyRequest) => boolean)

/**
 * Builds the origin check. 'same-origin' allows an Origin whose host equals the request's
 * own host (trustProxy applies); '*' allows any; a list allows exact strings and matching
 * RegExps; a function decides. Requests without an Origin (non-browser clients) pass unless
 * `requireOrigin` is set.
 */
export function createOriginCheck (policy: OriginPolicy, requireOrigin: boolean): (request: FastifyRequest) => boolean {
  const decide = originDecider(policy)
  return function checkOrigin (request: FastifyRequest): boolean {
    const origin = request.headers.origin
    if (origin === undefined || origin === '') return !requireOrigin
    return decide(origin, request)
  }
}

function originDecider (policy: OriginPolicy): (origin: string, request: FastifyRequest) => boolean {
  if (policy === '*') return () => true
  if (typeof policy === 'function') return policy
  if (policy === 'same-origin') {
    return (origin, request) => {
      try {
        return new URL(origin).host === request.host
      } catch {
        return false
      }
    }
  }
  const exact = new Set(policy.filter((p): p is string => typeof p === 'string'))
  const patterns = policy.filter((p): p is RegExp => p instanceof RegExp)
  return (origin) => {
    if (exact.has(origin)) return true
    for (const re of patterns) {
      re.lastIndex = 0 // a /g or /y pattern keeps state between test() calls
      if (re.test(origin)) return true
    }
    return false
  }
}
