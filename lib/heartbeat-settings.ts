// Heartbeat settings: the timing options, their defaults and their validation. The scheduler
// that applies them is lib/heartbeat.ts.

import { checkInt, fail, section } from './validate'

/** Timing settings of a heartbeat; per manager, and overridable per socket. */
export interface HeartbeatSettings {
  /**
   * Milliseconds between pings to a peer that answers. Integer, at least 10.
   * @default 30000
   */
  pingInterval: number
  /**
   * Milliseconds to wait for the pong before the ping counts as missed; after a miss the next
   * ping goes out at once. Integer, at least 5 and below `pingInterval`.
   * @default 5000
   */
  pongTimeout: number
  /**
   * Misses in a row after which the peer is declared dead. Integer from 1 to 100.
   * @default 3
   */
  maxMissedPongs: number
}

/** Options of a {@link HeartbeatManager}. */
export interface HeartbeatOptions extends Partial<HeartbeatSettings> {
  /**
   * Upper limit, in milliseconds, for the worst-case detection time
   * `pingInterval + maxMissedPongs × pongTimeout`; settings (or per-socket overrides) whose
   * bound exceeds it are rejected. Unset means no limit.
   * @default undefined
   */
  maxDetectionTime?: number
}

/** Per-socket overrides given to {@link HeartbeatManager.startHeartbeat}, e.g. per route. */
export type HeartbeatOverrides = Partial<HeartbeatSettings>

/** The options after defaults were applied and every value was validated. */
export interface ResolvedHeartbeatOptions extends HeartbeatSettings {
  /** The detection limit, or null when there is none. */
  maxDetectionTime: number | null
}

/** The defaults every heartbeat starts from. */
export const HEARTBEAT_DEFAULTS: Readonly<HeartbeatSettings> = Object.freeze({
  pingInterval: 30_000,
  pongTimeout: 5_000,
  maxMissedPongs: 3
})

// A day: keeps every delay well below setTimeout's 2^31-1 ms limit.
const MAX_MS = 86_400_000
const OPTION_KEYS = ['pingInterval', 'pongTimeout', 'maxMissedPongs', 'maxDetectionTime'] as const
export const OVERRIDE_KEYS = ['pingInterval', 'pongTimeout', 'maxMissedPongs'] as const
// Only undefined means "not set": null or any other value is validated, never replaced.
function pick (value: unknown, fallback: number): unknown {
  return value === undefined ? fallback : value
}

export function resolveSettings (input: Record<string, unknown>, base: HeartbeatSettings, maxDetectionTime: number | null, prefix: string): HeartbeatSettings {
  const pingInterval = checkInt(`${prefix}pingInterval`, pick(input.pingInterval, base.pingInterval), 10, MAX_MS)
  const pongTimeout = pick(input.pongTimeout, base.pongTimeout)
  if (typeof pongTimeout !== 'number' || !Number.isInteger(pongTimeout) || pongTimeout < 5 || pongTimeout >= pingInterval) {
    // Below the interval so that a pong always moves a socket's next event later, and a
    // retry ping never overlaps the regular one.
    fail(`${prefix}pongTimeout`,
      `expected an integer from 5 to ${pingInterval - 1} (below pingInterval), got ${JSON.stringify(pongTimeout)}`)
  }
  const maxMissedPongs = checkInt(`${prefix}maxMissedPongs`, pick(input.maxMissedPongs, base.maxMissedPongs), 1, 100)
  const bound = pingInterval + maxMissedPongs * pongTimeout
  if (maxDetectionTime !== null && bound > maxDetectionTime) {
    fail(`${prefix}maxDetectionTime`,
      `pingInterval + maxMissedPongs × pongTimeout = ${bound} ms exceeds the limit of ${maxDetectionTime} ms`)
  }
  return { pingInterval, pongTimeout, maxMissedPongs }
}

/**
 * Applies the defaults and validates heartbeat options; the plugin can call it at
 * registration with a prefix such as `'heartbeat.'` so errors name the full option path.
 * @throws FST_WSM_OPTION_INVALID naming the option and what it allows.
 */
export function resolveHeartbeatOptions (input: unknown = {}, prefix = ''): ResolvedHeartbeatOptions {
  const opts = section(prefix === '' ? 'options' : prefix.slice(0, -1), input, OPTION_KEYS)
  const maxDetectionTime = opts.maxDetectionTime === undefined
    ? null
    : checkInt(`${prefix}maxDetectionTime`, opts.maxDetectionTime, 1, Number.MAX_SAFE_INTEGER)
  return { ...resolveSettings(opts, HEARTBEAT_DEFAULTS, maxDetectionTime, prefix), maxDetectionTime }
}

/**
 * The worst-case time from a peer going silent to its timeout callback, in milliseconds:
 * `pingInterval + maxMissedPongs × pongTimeout` (45000 with the defaults).
 */
export function detectionBound (settings: HeartbeatSettings): number {
  return settings.pingInterval + settings.maxMissedPongs * settings.pongTimeout
}
