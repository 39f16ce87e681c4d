// Frame size limits: what ws enforces, and what the plugin counts and logs.
//
// Enforcement is ws's, through the server options from getServerOptions(): the receiver
// compares a frame's declared length with `maxPayload` as soon as the header is read, so an
// oversized message is refused before any of its payload is buffered (a header claiming 1 GiB
// costs 14 bytes). For permessage-deflate messages ws checks the inflated length as well,
// chunk by chunk while inflating (permessage-deflate.js inflateOnData), and stops inflating
// once it passes `maxPayload`: a small message that inflates to gigabytes is refused with 1009
// after at most one zlib output chunk past the limit. Either way ws emits 'error' with code
// WS_ERR_UNSUPPORTED_MESSAGE_LENGTH and closes with 1009 itself; the plugin only reports it
// here through recordViolation().
//
// observe() is the per-message path for what ws delivered: two comparisons and two counter
// updates, no allocation unless a message is large enough to be logged.

import type WebSocket from 'ws'
import { BoundedCounts, countsOf, zeroCount, type Count } from './counters'
import { CloseCode, errors } from './errors'
import { checkInt } from './validate'

/** The part of a pino-like logger this module uses; Fastify's logger fits. */
export interface WarnLogger {
  warn (obj: object, msg: string): void
}

/** The limits of a frame size profile, in bytes. */
export interface FrameSizeLimits {
  /**
   * Largest message accepted, in bytes (after decompression). Integer from 1 to 1 GiB.
   * @default 1048576 (1 MiB)
   */
  maxMessageSize: number
  /**
   * Messages of at least this many bytes are counted and logged as warnings. Integer from 1 to
   * `maxMessageSize`.
   * @default half of maxMessageSize (524288 for the default profile)
   */
  warnThreshold: number
}

/** The named profiles: `default` (1 MiB / 512 KiB), `strict` (256 / 128 KiB), `lenient` (10 / 5 MiB). */
export type FrameSizeProfileName = 'default' | 'strict' | 'lenient'

/** The plugin's `frameSize` option: a profile name or explicit limits. */
export type FrameSizeOption = FrameSizeProfileName | { maxMessageSize: number, warnThreshold?: number }

/** Options of a {@link FrameSizeValidator}. */
export interface FrameSizeValidatorOptions extends Partial<FrameSizeLimits> {
  /** Where warnings and violations are logged (at warn). @default no logging */
  log?: WarnLogger
}

/** What {@link FrameSizeValidator.observe} decided: within limits, at or over the warning threshold, over the limit. */
export type FrameSizeVerdict = 0 | 1 | 2

/** The result of {@link FrameSizeValidator.validateFrameSize}. */
export interface FrameSizeResult {
  /** False when the message is over `maxSize`. */
  valid: boolean
  /** The size that was checked, in bytes. */
  frameSize: number
  /** The limit it was checked against, in bytes. */
  maxSize: number
  /** True when the message is valid but at or over the warning threshold. */
  warning: boolean
}

/** Counters of a {@link FrameSizeValidator}, since creation or the last reset(). */
export interface FrameSizeStats {
  /** The limit in bytes. */
  maxMessageSize: number
  /** The warning threshold in bytes. */
  warnThreshold: number
  /** Messages passed to observe() / validateFrameSize() / validateAndHandle(). */
  messagesValidated: number
  /** Of those, messages within the limit but at or over the warning threshold. */
  warnings: number
  /** Messages over the limit: observed ones plus those ws refused (recordViolation()). */
  violations: number
  /** The largest size passed to observe() and friends, in bytes; refused messages are not included, ws does not report their size. */
  largestMessage: number
  /** Violations per user id, as a plain object (JSON-ready), for the first 10,000 users. */
  violationsByUser: Record<string, number>
  /** Violations of connections without a user. */
  violationsAnonymous: number
  /** Violations of users past the first 10,000. */
  violationsUntrackedUsers: number
  /** Violations per connection id, for the first 10,000 connections. */
  violationsByConnection: Record<string, number>
}

/** The server options that enforce a profile in ws, for `new WebSocketServer()` or @fastify/websocket's `options`. */
export interface FrameSizeServerOptions {
  /** ws's per-message limit in bytes, checked on frame headers and on inflated output. */
  maxPayload: number
  /** Most data frames one message may be split into. */
  maxFragments: number
  /** Most socket chunks ws buffers while it waits for the rest of a frame. */
  maxBufferedChunks: number
}

/** The built-in profiles. */
export const FRAME_SIZE_PROFILES: Readonly<Record<FrameSizeProfileName, Readonly<FrameSizeLimits>>> = Object.freeze({
  default: Object.freeze({ maxMessageSize: 1024 * 1024, warnThreshold: 512 * 1024 }),
  strict: Object.freeze({ maxMessageSize: 256 * 1024, warnThreshold: 128 * 1024 }),
  lenient: Object.freeze({ maxMessageSize: 10 * 1024 * 1024, warnThreshold: 5 * 1024 * 1024 })
})

/**
 * The largest `maxMessageSize` accepted: 1 GiB. ws reads `maxPayload` with `| 0`, so anything
 * from 2^31 on would wrap around to a negative number, which ws takes as "no limit".
 */
export const MAX_MESSAGE_SIZE = 1024 * 1024 * 1024

const OBJECT_KEYS = ['maxMessageSize', 'warnThreshold'] as const

/** Error codes ws gives a message refused for its size (both close with 1009). */
const SIZE_ERROR_CODES: ReadonlySet<string> = new Set([
  'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH', // over maxPayload, declared or inflated
  'WS_ERR_UNSUPPORTED_DATA_PAYLOAD_LENGTH' // a 64-bit length beyond 2^53 - 1
])

/**
 * Whether an 'error' a ws socket emitted means a message was refused for its size; the plugin
 * calls {@link FrameSizeValidator.recordViolation} for those.
 */
export function isFrameSizeError (err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false
  const code = (err as { code?: unknown }).code
  return typeof code === 'string' && SIZE_ERROR_CODES.has(code)
}

function checkLimits (maxMessageSize: unknown, warnThreshold: unknown, prefix: string): FrameSizeLimits {
  const max = checkInt(`${prefix}maxMessageSize`, maxMessageSize, 1, MAX_MESSAGE_SIZE)
  const warn = checkInt(`${prefix}warnThreshold`, warnThreshold ?? Math.max(1, Math.floor(max / 2)), 1, max)
  return { maxMessageSize: max, warnThreshold: warn }
}

/**
 * Turns the plugin's `frameSize` option into limits: a profile name, or an object with
 * `maxMessageSize` and optionally `warnThreshold` (half the limit when left out).
 * @throws FST_WSM_OPTION_INVALID for an unknown profile, an unknown key, a value that is not
 * an integer in range, or a `warnThreshold` above `maxMessageSize`.
 */
export function resolveFrameSizeProfile (value: unknown, name = 'frameSize'): FrameSizeLimits {
  if (typeof value === 'string') {
    if (Object.hasOwn(FRAME_SIZE_PROFILES, value)) return { ...FRAME_SIZE_PROFILES[value as FrameSizeProfileName] }
    throw new errors.FST_WSM_OPTION_INVALID(name, `expected 'default', 'strict', 'lenient' or { maxMessageSize, warnThreshold }, got ${JSON.stringify(value)}`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new errors.FST_WSM_OPTION_INVALID(name, `expected 'default', 'strict', 'lenient' or { maxMessageSize, warnThreshold }, got ${JSON.stringify(value)}`)
  }
  const input = value as Record<string, unknown>
  for (const key of Object.keys(input)) {
    if (!(OBJECT_KEYS as readonly string[]).includes(key)) {
      throw new errors.FST_WSM_OPTION_INVALID(`${name}.${key}`, `unknown option; known: ${OBJECT_KEYS.join(', ')}`)
    }
  }
  return checkLimits(input.maxMessageSize, input.warnThreshold, `${name}.`)
}

/**
 * The ws server options that enforce a limit. `maxPayload` is the limit itself. The two
 * others are ws's bounds on the bookkeeping a message costs, which ws sizes for its own 100
 * MiB default (16384 fragments, 262144 chunks); left there, a peer could pin far more memory
 * than the payload limit suggests:
 * - `maxFragments`: every non-empty fragment stays a separate Buffer (a view, or an inflated
 *   chunk, roughly 100 bytes of object each) until the message is complete, and empty ones
 *   keep a message open forever. Browsers and ws send a message as one frame unless it is
 *   streamed, so one fragment per KiB of the limit (1024 at 1 MiB) is generous; never fewer
 *   than 16, never more than ws's own 16384.
 * - `maxBufferedChunks`: while a frame is incomplete ws keeps every socket read as its own
 *   Buffer. A peer dribbling one byte per TCP segment would make each byte cost a Buffer
 *   object and its backing store (a few hundred bytes), a hundredfold amplification. One chunk
 *   per 128 bytes of the limit (8192 at 1 MiB) caps that overhead at about the limit itself,
 *   while an honest peer, whose reads carry at least a TCP segment (536 bytes or more), stays
 *   four times under it; never fewer than 1024, never more than ws's own 262144.
 */
export function frameSizeServerOptions (maxMessageSize: number): FrameSizeServerOptions {
  return {
    maxPayload: maxMessageSize,
    maxFragments: Math.min(16_384, Math.max(16, Math.ceil(maxMessageSize / 1024))),
    maxBufferedChunks: Math.min(262_144, Math.max(1024, Math.ceil(maxMessageSize / 128)))
  }
}

/**
 * Counts and logs message sizes against a limit, and gives ws the server options that enforce
 * it. One validator per server (or per route with its own limit); it holds no per-connection
 * state beyond the bounded violation counts.
 */
export class FrameSizeValidator {
  readonly #max: number
  readonly #warn: number
  readonly #log: WarnLogger | null
  #frames = 0
  #warnings = 0
  #violations = 0
  #largest = 0
  #byUser = new BoundedCounts<Count>(zeroCount)
  #anonymous = 0
  #byConnection = new BoundedCounts<Count>(zeroCount)

  /**
   * @throws FST_WSM_OPTION_INVALID when a limit is not an integer in range or `warnThreshold`
   * exceeds `maxMessageSize`.
   */
  constructor (options: FrameSizeValidatorOptions = {}) {
    const limits = checkLimits(options.maxMessageSize ?? FRAME_SIZE_PROFILES.default.maxMessageSize,
      options.warnThreshold ?? (options.maxMessageSize === undefined ? FRAME_SIZE_PROFILES.default.warnThreshold : undefined),
      'frameSize.')
    this.#max = limits.maxMessageSize
    this.#warn = limits.warnThreshold
    this.#log = options.log ?? null
  }

  /** 1 MiB limit, warnings from 512 KiB. */
  static createDefault (log?: WarnLogger): FrameSizeValidator {
    return new FrameSizeValidator({ ...FRAME_SIZE_PROFILES.default, log })
  }

  /** 256 KiB limit, warnings from 128 KiB: chat and control traffic. */
  static createStrict (log?: WarnLogger): FrameSizeValidator {
    return new FrameSizeValidator({ ...FRAME_SIZE_PROFILES.strict, log })
  }

  /** 10 MiB limit, warnings from 5 MiB: file or snapshot transfer. */
  static createLenient (log?: WarnLogger): FrameSizeValidator {
    return new FrameSizeValidator({ ...FRAME_SIZE_PROFILES.lenient, log })
  }

  /** The limit in bytes. */
  get maxMessageSize (): number {
    return this.#max
  }

  /** The warning threshold in bytes. */
  get warnThreshold (): number {
    return this.#warn
  }

  /** The ws server options that enforce this validator's limit; see {@link frameSizeServerOptions}. */
  getServerOptions (): FrameSizeServerOptions {
    return frameSizeServerOptions(this.#max)
  }

  /**
   * Counts one message and classifies it: 0 within limits, 1 at or over the warning threshold
   * (counted and logged at warn), 2 over the limit (counted as a violation and logged). The
   * per-message call of the plugin; allocates only when it logs.
   */
  observe (size: number, userId: string | null, connectionId: string): FrameSizeVerdict {
    this.#frames++
    if (size > this.#largest) this.#largest = size
    if (size > this.#max) {
      this.#violation(userId, connectionId, size)
      return 2
    }
    if (size >= this.#warn) {
      this.#warnings++
      if (this.#log !== null) {
        this.#log.warn({ userId, connectionId, size, warnThreshold: this.#warn, maxMessageSize: this.#max }, 'large message')
      }
      return 1
    }
    return 0
  }

  /** Counts one message like {@link observe} and describes the verdict. */
  validateFrameSize (size: number, userId: string | null, connectionId: string): FrameSizeResult {
    const verdict = this.observe(size, userId, connectionId)
    return { valid: verdict !== 2, frameSize: size, maxSize: this.#max, warning: verdict === 1 }
  }

  /**
   * Counts one message like {@link observe} and closes the socket with 1009 "Message too large"
   * when it is over the limit. For messages ws did not check itself (a socket without
   * `maxPayload`, or data that arrived another way).
   * @returns false when the socket was closed.
   */
  validateAndHandle (ws: Pick<WebSocket, 'close'>, size: number, userId: string | null, connectionId: string): boolean {
    if (this.observe(size, userId, connectionId) !== 2) return true
    ws.close(CloseCode.MESSAGE_TOO_BIG, 'Message too large')
    return false
  }

  /**
   * Counts a message ws refused (its 'error' with code WS_ERR_UNSUPPORTED_MESSAGE_LENGTH; see
   * {@link isFrameSizeError}) and logs it at warn. ws has closed the socket with 1009 already.
   * @param size the size, when known; ws does not report it
   */
  recordViolation (userId: string | null, connectionId: string, size?: number): void {
    this.#violation(userId, connectionId, size ?? null)
  }

  #violation (userId: string | null, connectionId: string, size: number | null): void {
    this.#violations++
    if (userId === null) this.#anonymous++
    else this.#byUser.entry(userId).n++
    this.#byConnection.entry(connectionId).n++
    if (this.#log !== null) {
      this.#log.warn({ userId, connectionId, size, maxMessageSize: this.#max }, 'message over size limit')
    }
  }

  /** A snapshot of the counters. */
  getStats (): FrameSizeStats {
    return {
      maxMessageSize: this.#max,
      warnThreshold: this.#warn,
      messagesValidated: this.#frames,
      warnings: this.#warnings,
      violations: this.#violations,
      largestMessage: this.#largest,
      violationsByUser: countsOf(this.#byUser),
      violationsAnonymous: this.#anonymous,
      violationsUntrackedUsers: this.#byUser.untracked.n,
      violationsByConnection: countsOf(this.#byConnection)
    }
  }

  /** The counters as one readable line. */
  getSummary (): string {
    return `frame size: limit ${formatBytes(this.#max)} (warn at ${formatBytes(this.#warn)}), ` +
      `${this.#frames} messages validated, largest ${formatBytes(this.#largest)}, ` +
      `${this.#warnings} warnings, ${this.#violations} violations by ${this.#byUser.size} users`
  }

  /** Zeroes every counter and forgets the per-user and per-connection counts. */
  reset (): void {
    this.#frames = 0
    this.#warnings = 0
    this.#violations = 0
    this.#largest = 0
    this.#byUser = new BoundedCounts<Count>(zeroCount)
    this.#anonymous = 0
    this.#byConnection = new BoundedCounts<Count>(zeroCount)
  }
}

/** Bytes as B, KiB or MiB with one decimal, for summaries and logs. */
export function formatBytes (n: number): string {
  if (n < 1024) return `${n} B`
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`
}
