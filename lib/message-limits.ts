import { BoundedCounts, countsOf, zeroCount, type Count } from './counters'
import { checkInt, checkOneOf, section } from './validate'

/** The per-user message rate limit. */
export interface MessageRateLimitOptions {
  /** Messages allowed per `timeWindow` (the refill rate). Client pings count as messages. @default 100 */
  max: number
  /** Milliseconds the `max` is counted over. @default 1000 */
  timeWindow: number
  /** Bucket size: messages a user may send at once after a quiet spell. @default 2 × max */
  burst: number
  /**
   * 'close': close with 1008 "Rate limit exceeded"; 'drop': drop the message (a ping goes
   * unanswered) and count it.
   * @default 'close'
   */
  policy: 'close' | 'drop'
}

/** The defaults of {@link MessageRateLimitOptions}. */
export const MESSAGE_RATE_DEFAULTS: Readonly<MessageRateLimitOptions> = Object.freeze({ max: 100, timeWindow: 1000, burst: 200, policy: 'close' })

/**
 * Validates the `messageRateLimit` option; false turns the limit off. `burst` defaults to
 * twice `max` (or the defaults' burst when `max` is not given).
 * @throws FST_WSM_OPTION_INVALID naming `messageRateLimit.<option>`.
 */
export function resolveMessageRateLimit (input: unknown): MessageRateLimitOptions | false {
  if (input === false) return false
  const base = MESSAGE_RATE_DEFAULTS
  if (input === undefined) return { ...base }
  const m = section('messageRateLimit', input, ['max', 'timeWindow', 'burst', 'policy'])
  const max = checkInt('messageRateLimit.max', m.max ?? base.max, 1, 1_000_000_000)
  return {
    max,
    timeWindow: checkInt('messageRateLimit.timeWindow', m.timeWindow ?? base.timeWindow, 1, 86_400_000),
    // The largest default burst (2 × 1e9) must pass its own check.
    burst: checkInt('messageRateLimit.burst', m.burst ?? (m.max === undefined ? base.burst : max * 2), 1, 2_000_000_000),
    policy: checkOneOf('messageRateLimit.policy', m.policy ?? base.policy, ['close', 'drop'] as const)
  }
}

/** A token bucket shared by every connection of one user (or, without a user, one IP) on this server. */
export interface Bucket {
  /** The user id, or the IP key for anonymous connections. */
  readonly key: string
  /** True for an IP's bucket (no user). */
  readonly anonymous: boolean
  tokens: number
  last: number
  /** Connections holding this bucket; it is dropped with the last one. */
  refs: number
  /** True from the first refused message until one is allowed again: one log line per episode. */
  limited: boolean
}

/** Rate-limit counters in `stats()`. */
export interface MessageLimitStats {
  /** Users and IPs with a bucket now. */
  buckets: number
  /** Messages (and pings) refused since start. */
  refused: number
  /** Refused messages per user id (the first 10,000 users; the rest in `refusedUntracked`). */
  refusedByUser: Record<string, number>
  /** Refused messages of connections without a user, per IP (IPv6 per /64), bounded the same way. */
  refusedByIp: Record<string, number>
  /** Refused messages of users and IPs past the bound. */
  refusedUntracked: number
}

/**
 * Token buckets per user for incoming messages. `take()` is on every message's path:
 * synchronous, O(1), no allocation. Users and IPs are kept in separate maps, so no user id
 * can share an IP's bucket.
 */
export class MessageRateLimiter {
  readonly options: MessageRateLimitOptions
  readonly #rate: number
  readonly #users = new Map<string, Bucket>()
  readonly #ips = new Map<string, Bucket>()
  readonly #refusedByUser = new BoundedCounts<Count>(zeroCount)
  readonly #refusedByIp = new BoundedCounts<Count>(zeroCount)
  #refused = 0

  constructor (options: MessageRateLimitOptions) {
    this.options = options
    this.#rate = options.max / options.timeWindow
  }

  /** The bucket of a user, or of an IP when `userId` is null, created full on first use; pair with release(). */
  acquire (userId: string | null, ip: string, now: number): Bucket {
    const anonymous = userId === null
    const map = anonymous ? this.#ips : this.#users
    const key = anonymous ? ip : userId
    let bucket = map.get(key)
    if (bucket === undefined) {
      bucket = { key, anonymous, tokens: this.options.burst, last: now, refs: 0, limited: false }
      map.set(key, bucket)
    }
    bucket.refs++
    return bucket
  }

  /** Drops a connection's hold on its bucket; the bucket goes with the last one. */
  release (bucket: Bucket): void {
    if (--bucket.refs <= 0) (bucket.anonymous ? this.#ips : this.#users).delete(bucket.key)
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
    ;(bucket.anonymous ? this.#refusedByIp : this.#refusedByUser).entry(bucket.key).n++
    return false
  }

  getStats (): MessageLimitStats {
    return {
      buckets: this.#users.size + this.#ips.size,
      refused: this.#refused,
      refusedByUser: countsOf(this.#refusedByUser),
      refusedByIp: countsOf(this.#refusedByIp),
      refusedUntracked: this.#refusedByUser.untracked.n + this.#refusedByIp.untracked.n
    }
  }
}
