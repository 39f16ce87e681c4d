import type { FastifyBaseLogger } from 'fastify'
import type WebSocket from 'ws'
import { COMPRESSED, UNCOMPRESSED } from './compression-profiles'
import { BoundedCounts } from './counters'
import { checkInt, checkOneOf, section } from './validate'

/**
 * What a send did: went out, was dropped by the backpressure policy, found the connection
 * closed (or closed it), or (fan-outs under 'wait' only) was queued behind a full buffer.
 */
export type SendResult = 'sent' | 'dropped' | 'closed' | 'queued'

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
  /**
   * Under 'wait': bytes a connection may hold queued behind its buffer. A send that would
   * pass it closes the connection with 1013 "Slow consumer", so one paused reader costs at
   * most `highWaterMark + maxQueued` bytes.
   * @default highWaterMark
   */
  maxQueued: number
}

const MiB = 1024 * 1024

/** The defaults of {@link BackpressureOptions}. */
export const BACKPRESSURE_DEFAULTS: Readonly<BackpressureOptions> = Object.freeze({
  highWaterMark: MiB, lowWaterMark: MiB / 4, policy: 'close', maxQueued: MiB
})

const BACKPRESSURE_KEYS = ['highWaterMark', 'lowWaterMark', 'policy', 'maxQueued'] as const
const POLICIES: readonly BackpressurePolicy[] = ['close', 'drop', 'wait']

/**
 * Validates backpressure settings over a base. When `highWaterMark` is given, the low-water
 * mark defaults to a quarter of it and `maxQueued` to it.
 * @throws FST_WSM_OPTION_INVALID naming `<name>.<option>`.
 */
export function resolveBackpressure (input: unknown, base: BackpressureOptions, name: string): BackpressureOptions {
  const bp = section(name, input, BACKPRESSURE_KEYS)
  const highWaterMark = checkInt(`${name}.highWaterMark`, bp.highWaterMark ?? base.highWaterMark, 1024, 1024 * MiB)
  const changed = bp.highWaterMark !== undefined
  const lowWaterMark = checkInt(`${name}.lowWaterMark`, bp.lowWaterMark ?? (changed ? Math.floor(highWaterMark / 4) : base.lowWaterMark), 0, highWaterMark)
  const policy = checkOneOf(`${name}.policy`, bp.policy ?? base.policy, POLICIES)
  const maxQueued = checkInt(`${name}.maxQueued`, bp.maxQueued ?? (changed ? highWaterMark : base.maxQueued), 0, 1024 * MiB)
  return { highWaterMark, lowWaterMark, policy, maxQueued }
}

/**
 * Byte length of anything ws accepts or delivers, without copying it: strings, Buffers and
 * other views, ArrayBuffers, fragment arrays, and Blobs (ws 8.18+ sends those).
 */
export function payloadSize (data: WebSocket.Data | Blob | number): number {
  if (typeof data === 'string') return Buffer.byteLength(data)
  if (typeof data === 'object' && data !== null) {
    const length = (data as { byteLength?: unknown }).byteLength
    if (typeof length === 'number') return length
    if (Array.isArray(data)) {
      let n = 0
      for (let i = 0; i < data.length; i++) n += payloadSize(data[i])
      return n
    }
    if (data instanceof Blob) return data.size
  }
  return Buffer.byteLength(String(data))
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
  if (data instanceof Blob) return { data: data as unknown as ArrayBuffer, options: undefined }
  if (Array.isArray(data) && data.length > 0 && data.every(Buffer.isBuffer)) {
    return { data: Buffer.concat(data as Buffer[]), options: undefined }
  }
  return { data: Buffer.from(JSON.stringify(data)), options: TEXT }
}

interface UserCount {
  dropped: number
  slowConsumerCloses: number
}

function zeroUserCount (): UserCount {
  return { dropped: 0, slowConsumerCloses: 0 }
}

/** Delivery counters in `stats()`. */
export interface DeliveryStats {
  /** Messages dropped by the 'drop' policy. */
  dropped: number
  /** Connections closed with 1013 by the 'close' policy or a full 'wait' queue. */
  slowConsumerCloses: number
  /** Per user id, for the first 10,000 users. */
  byUser: Record<string, UserCount>
  /** Connections without a user. */
  anonymous: UserCount
  /** Users past the first 10,000. */
  untracked: UserCount
}

/** Keeps the backpressure counters per user (bounded) and logs each episode once. */
export class DeliveryCounters {
  #dropped = 0
  #slowConsumerCloses = 0
  readonly #byUser = new BoundedCounts<UserCount>(zeroUserCount)
  readonly #anonymous = zeroUserCount()

  #user (userId: string | null): UserCount {
    return userId === null ? this.#anonymous : this.#byUser.entry(userId)
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
      byUser: this.#byUser.snapshot(),
      anonymous: { ...this.#anonymous },
      untracked: { ...this.#byUser.untracked }
    }
  }
}
