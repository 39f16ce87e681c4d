// What the client does after a close, and how long it waits: the close-code table of the
// README in code. Kept apart from the socket handling so it can be read (and tested) alone.

/** The `reconnect` option. */
export interface ReconnectOptions {
  /**
   * Milliseconds of the first backoff step; the n-th retry waits random(0, min(max, base × 2^n)).
   * @default 500
   */
  base: number
  /**
   * Upper bound of a backoff step, in milliseconds.
   * @default 30000
   */
  max: number
  /**
   * Milliseconds a connection must stay open before the attempt count starts again from 0.
   * @default 5000
   */
  resetAfter: number
}

/** The defaults of {@link ReconnectOptions}. */
export const RECONNECT_DEFAULTS: Readonly<ReconnectOptions> = Object.freeze({ base: 500, max: 30_000, resetAfter: 5000 })

/** What the client does after a close. */
export type Decision =
  /** Stop: state 'closed'; connect() starts again. */
  | { action: 'stop' }
  /** Connect again with a fresh token, without waiting. */
  | { action: 'now' }
  /** Connect again after a backoff step, never sooner than `floor` ms. */
  | { action: 'backoff', floor: number }

/** What ended a connection attempt or a connection. */
export interface Ending {
  /** Close code the client saw (1006 when the socket dropped or the upgrade was refused). */
  code: number
  reason: string
  /** Whether the server sent the close frame (false: our close(), or no close frame at all). */
  byServer: boolean
  /** HTTP status of a refused upgrade, when the runtime exposes it (ws does, browsers do not). */
  status: number | null
  /** Retry-After of that refusal in milliseconds, or null. */
  retryAfter: number | null
}

/** Reason of the plugin's 1008 when a token expires. */
export const TOKEN_EXPIRED = 'Token expired'

// 1002, 1003, 1007 and 1010 say this client broke the protocol or sent what the server will
// never accept: the same client would be closed again.
const STOP_CODES = new Set([1002, 1003, 1007, 1010])

/** The close-code table: see the README's Client section. */
export function decide (ending: Ending, base: number): Decision {
  if (ending.status !== null) {
    // 401 (token) and 403 (origin) are refused again with the same inputs: the application
    // decides, through the 'close' event, what to change and when to connect() again.
    if (ending.status === 401 || ending.status === 403) return { action: 'stop' }
    if (ending.retryAfter !== null) return { action: 'backoff', floor: ending.retryAfter }
    return { action: 'backoff', floor: 0 }
  }
  const { code, reason } = ending
  if (code === 1000) return ending.byServer ? { action: 'stop' } : { action: 'backoff', floor: 0 }
  if (code === 1008) return reason === TOKEN_EXPIRED ? { action: 'now' } : { action: 'stop' }
  if (STOP_CODES.has(code)) return { action: 'stop' }
  if (code === 1013) {
    // The plugin's 1013 reasons ('Try again later', 'Slow consumer') carry no hint: four base
    // steps keep a crowd of overloaded clients from coming straight back.
    const hint = retryHint(reason)
    return { action: 'backoff', floor: hint ?? base * 4 }
  }
  return { action: 'backoff', floor: 0 }
}

/**
 * A wait the server put in a close reason, as `retry after 5` or `retry-after=5` (seconds,
 * case-insensitive), in milliseconds; null when there is none.
 */
export function retryHint (reason: string): number | null {
  const match = /retry[- ]after[=:\s]\s*(\d+(?:\.\d+)?)/i.exec(reason)
  return match === null ? null : Math.round(Number(match[1]) * 1000)
}

/** The Retry-After header's value in milliseconds (delta-seconds or an HTTP date), or null. */
export function parseRetryAfter (value: string | null | undefined, now: number): number | null {
  if (value === null || value === undefined || value === '') return null
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000
  const date = Date.parse(value)
  return Number.isNaN(date) ? null : Math.max(0, date - now)
}

/**
 * Full jitter: random(0, min(max, base × 2^attempt)), after `floor` when the server asked for
 * a wait. `random` returns [0, 1) like Math.random.
 */
export function backoffDelay (options: ReconnectOptions, attempt: number, floor: number, random: () => number): number {
  // 2^attempt overflows to Infinity past ~1000 attempts, which min() handles.
  const cap = Math.min(options.max, options.base * 2 ** attempt)
  return Math.floor(floor + random() * cap)
}
