import type { FastifyBaseLogger } from 'fastify'
import type WebSocket from 'ws'
import { COMPRESSED, UNCOMPRESSED } from './compression'

/** What a send did: went out, was dropped by the backpressure policy, or found the connection closed (or closed it). */
export type SendResult = 'sent' | 'dropped' | 'closed'

/** What to do when a connection's buffered bytes are over the high-water mark. */
export type BackpressurePolicy = 'close' | 'drop' | 'wait'

/** Backpressure settings of a route or of the whole plugin. */
export interface BackpressureOptions {
  /**
   * Bytes buffered for a connection (ws's `bufferedAmount`) above which the policy applies.
   * @default 1048576 (1 MiB)
   */
  highWaterMark: number
  /**
   * Bytes below which a waiting send goes out and `waitForDrain()` resolves.
   * @default highWaterMark / 4
   */
  lowWaterMark: number
  /**
   * 'close': close with 1013 "Slow consumer"; 'drop': drop the new message and count it;
   * 'wait': `connection.send()` returns a promise that resolves once the buffer drains.
   * Sends straight on the raw socket follow 'close' and 'drop'; under 'wait' they go out.
   * @default 'close'
   */
  policy: BackpressurePolicy
}

/** Options accepted by `connection.send()`, as ws's `send()`. */
export interface SendOptions {
  binary?: boolean
  compress?: boolean
  fin?: boolean
  mask?: boolean
}

/** Anything `send()`, `sendToUser()` and `broadcast()` accept: raw data, or a JSON value to stringify. */
export type Sendable = WebSocket.Data | Record<string, unknown> | unknown[] | number | boolean | null

/** A payload ready for the wire: serialized once, reusable for every socket. */
export interface Prepared {
  data: string | Buffer | ArrayBuffer | ArrayBufferView
  options: SendOptions | undefined
}

// Frozen option objects: picking one costs nothing per message, unlike building one.
export const TEXT = Object.freeze({ binary: false }) as SendOptions
const COMPRESS = COMPRESSED as SendOptions
const NO_COMPRESS = UNCOMPRESSED as SendOptions
const TEXT_COMPRESS = Object.freeze({ binary: false, compress: true }) as SendOptions
const TEXT_NO_COMPRESS = Object.freeze({ binary: false, compress: false }) as SendOptions
const BINARY_COMPRESS = Object.freeze({ binary: true, compress: true }) as SendOptions
const BINARY_NO_COMPRESS = Object.freeze({ binary: true, compress: false }) as SendOptions

/**
 * The send options with `compress` decided by the plugin's threshold, where the caller left
 * it open. ws honours its own threshold only under server_no_context_takeover.
 */
export function withCompress (options: SendOptions | undefined, compress: boolean): SendOptions {
  if (options === undefined) return compress ? COMPRESS : NO_COMPRESS
  if (options.compress !== undefined) return options
  if (options.fin === undefined && options.mask === undefined) {
    if (options.binary === true) return compress ? BINARY_COMPRESS : BINARY_NO_COMPRESS
    if (options.binary === false) return compress ? TEXT_COMPRESS : TEXT_NO_COMPRESS
    return compress ? COMPRESS : NO_COMPRESS
  }
  return { ...options, compress }
}

function isRaw (data: unknown): data is Buffer | ArrayBuffer | ArrayBufferView {
  return data instanceof ArrayBuffer || ArrayBuffer.isView(data)
}

/**
 * Serializes once: raw data goes as it is; any other value is stringified to JSON and turned
 * into one Buffer sent as a text frame, so a broadcast shares it across every socket.
 */
export function prepare (data: Sendable): Prepared {
  // A string would be turned into a Buffer by ws once per socket; do it once here.
  if (typeof data === 'string') return { data: Buffer.from(data), options: TEXT }
  if (isRaw(data)) return { data, options: undefined }
  if (Array.isArray(data) && data.length > 0 && data.every(Buffer.isBuffer)) {
    return { data: Buffer.concat(data as Buffer[]), options: undefined }
  }
  return { data: Buffer.from(JSON.stringify(data)), options: TEXT }
}

interface UserCount {
  dropped: number
  slowConsumerCloses: number
}

/** Delivery counters in `stats()`. */
export interface DeliveryStats {
  /** Messages dropped by the 'drop' policy. */
  dropped: number
  /** Connections closed with 1013 by the 'close' policy. */
  slowConsumerCloses: number
  /** Per user id (`(anonymous)` without auth). */
  byUser: Record<string, UserCount>
}

/** Keeps the backpressure counters per user and logs each episode once. */
export class DeliveryCounters {
  #dropped = 0
  #slowConsumerCloses = 0
  readonly #byUser = new Map<string, UserCount>()

  #user (userId: string | null): UserCount {
    const key = userId ?? '(anonymous)'
    let entry = this.#byUser.get(key)
    if (entry === undefined) {
      entry = { dropped: 0, slowConsumerCloses: 0 }
      this.#byUser.set(key, entry)
    }
    return entry
  }

  /** Counts a dropped message; logs only when an episode starts. */
  dropped (userId: string | null, log: FastifyBaseLogger, firstOfEpisode: boolean, buffered: number): void {
    this.#dropped++
    this.#user(userId).dropped++
    if (firstOfEpisode) log.warn({ bufferedAmount: buffered }, 'slow consumer: dropping messages')
  }

  /** Counts and logs a slow-consumer close. */
  slowConsumerClosed (userId: string | null, log: FastifyBaseLogger, buffered: number): void {
    this.#slowConsumerCloses++
    this.#user(userId).slowConsumerCloses++
    log.warn({ bufferedAmount: buffered }, 'slow consumer: closing')
  }

  snapshot (): DeliveryStats {
    return {
      dropped: this.#dropped,
      slowConsumerCloses: this.#slowConsumerCloses,
      byUser: Object.fromEntries([...this.#byUser].map(([k, v]) => [k, { ...v }]))
    }
  }
}
