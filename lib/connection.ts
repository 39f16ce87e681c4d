import type { FastifyBaseLogger } from 'fastify'
import type WebSocket from 'ws'
import type { CloseRequest, CloseResult, GracefulCloseManager } from './close'
import { prepare, withCompress, type BackpressureOptions, type DeliveryCounters, type Sendable, type SendOptions, type SendResult } from './delivery'
import type { CompressionConnectionStats, CompressionManager } from './compression'
import { CloseCode } from './errors'
import type { HeartbeatSettings } from './heartbeat'
import type { Bucket } from './limits'
import { kRawSend, type CloseInitiator, type ManagedWebSocket } from './socket'

/** Where a connection is in its life. */
export type ConnectionState = 'open' | 'closing' | 'closed'

type SendCallback = (err?: Error) => void

/** Hooks a connection calls for every data message it receives; see lib/plugin.ts. */
export interface MessageHook {
  /** Returns false to stop the message here (dropped or consumed). */
  onMessage (connection: Connection, data: WebSocket.RawData, isBinary: boolean, size: number): boolean
}

/** Settings shared by every connection of one route; one object per route, not per connection. */
export interface RouteSettings {
  backpressure: BackpressureOptions
  /** Payload bytes from which messages are compressed; -1 when compression is off. */
  compressThreshold: number
  /** Heartbeat: false when the route has none, undefined for the manager's settings, or this route's own. */
  heartbeat: HeartbeatSettings | undefined | false
  /** Idle timeout in milliseconds; 0 when off. */
  idleTimeout: number
  /** Run for every received data message, or null when nothing needs to see them. */
  messageHook: MessageHook | null
}

/** What the plugin gives a connection so it can report its own end. */
export interface ConnectionHost {
  /** The close manager every close goes through. */
  readonly closer: GracefulCloseManager
  /** Backpressure counters. */
  readonly delivery: DeliveryCounters
  /** Compression statistics. */
  readonly compression: CompressionManager
  /** Called once, when the socket has closed, to drop the connection from the registry. */
  connectionClosed (connection: Connection): void
}

/** What a connection is created from; nothing here keeps the request alive. */
export interface ConnectionInit {
  id: string
  socket: ManagedWebSocket
  route: string
  remoteAddress: string
  userId: string | null
  user: Record<string, unknown> | null
  log: FastifyBaseLogger
  settings: RouteSettings
  /** Epoch ms at which the token expires (plus grace), or Infinity. */
  closeAt: number
  /** The user's message-rate bucket, or null when messages are not limited. */
  rateBucket: Bucket | null
}

/** Byte length of anything ws accepts or delivers, without copying it. */
export function payloadSize (data: WebSocket.Data | number): number {
  if (typeof data === 'string') return Buffer.byteLength(data)
  if (Array.isArray(data)) {
    let n = 0
    for (let i = 0; i < data.length; i++) n += data[i].length
    return n
  }
  if (typeof data === 'object' && data !== null) return data.byteLength
  return Buffer.byteLength(String(data))
}

interface Waiting {
  data: WebSocket.Data
  options: SendOptions | undefined
  resolve: (result: SendResult) => void
}

// How often a waiting connection re-checks its buffer when no 'drain' event comes (bytes
// queued for compression drain without one).
const DRAIN_POLL_MS = 50

/**
 * One accepted WebSocket under management: identity, counters, sending and its way out.
 * Created by the plugin for every socket of a `{ websocket: true }` route and given to the
 * handler as `request.wsConnection`.
 */
export class Connection {
  /** Unique id (a UUID, so ids from several servers never clash). */
  readonly id: string
  /** The authenticated user's id, or null when the route is not authenticated. */
  readonly userId: string | null
  /** The verified token claims, or null when the route is not authenticated. */
  readonly user: Record<string, unknown> | null
  /** The route's URL pattern, e.g. `/rooms/:id`. */
  readonly route: string
  /** The peer's IP address as Fastify saw it (trustProxy applies). */
  readonly remoteAddress: string
  /** Epoch milliseconds when the upgrade completed. */
  readonly connectedAt: number
  /** Epoch milliseconds of the last data message in either direction. */
  lastActivityAt: number
  /** Data messages received. */
  messagesIn = 0
  /** Data messages sent. */
  messagesOut = 0
  /** Payload bytes received (after decompression). */
  bytesIn = 0
  /** Payload bytes sent (before compression). */
  bytesOut = 0
  /** Messages dropped by the backpressure policy. */
  messagesDropped = 0
  /** Where the connection is in its life. */
  state: ConnectionState = 'open'
  /** The close code, once closed. */
  closeCode: number | null = null
  /** The underlying socket. */
  readonly socket: ManagedWebSocket
  /** A child of the request's logger bound to `{ connectionId, userId, route }`. */
  readonly log: FastifyBaseLogger
  /** The route's shared settings. */
  readonly settings: RouteSettings
  /** Whether permessage-deflate was negotiated and compression is on for this connection. */
  readonly compressing: boolean
  /** Epoch ms at which the token expires (plus grace) and the connection closes with 1008; Infinity without one. */
  readonly closeAt: number
  /** @internal The user's message-rate bucket, shared with the user's other connections. */
  readonly rateBucket: Bucket | null
  /** @internal Consecutive message-router errors. */
  routerErrors = 0
  readonly #compressThreshold: number
  readonly #host: ConnectionHost
  #overHighWater = false
  #waiting: Waiting[] | null = null
  #drainWaiters: Array<() => void> | null = null
  #drainTimer: NodeJS.Timeout | null = null
  #expiryTimer: NodeJS.Timeout | null = null

  constructor (host: ConnectionHost, init: ConnectionInit) {
    this.#host = host
    this.id = init.id
    this.socket = init.socket
    this.route = init.route
    this.remoteAddress = init.remoteAddress
    this.userId = init.userId
    this.user = init.user
    this.log = init.log
    this.settings = init.settings
    this.closeAt = init.closeAt
    this.rateBucket = init.rateBucket
    this.compressing = init.settings.compressThreshold >= 0 && init.socket.extensions.includes('permessage-deflate')
    this.#compressThreshold = this.compressing ? init.settings.compressThreshold : -1
    this.connectedAt = this.lastActivityAt = Date.now()
  }

  /**
   * This connection's compression figures, measured on its TCP socket; undefined when
   * permessage-deflate was not negotiated.
   */
  compressionStats (): CompressionConnectionStats | undefined {
    return this.compressing ? this.#host.compression.getConnectionStats(this.socket) : undefined
  }

  /** Bytes queued for this connection and not yet handed to the kernel. */
  get bufferedAmount (): number {
    return this.socket.bufferedAmount
  }

  /** False while the buffered bytes are over the high-water mark. */
  get writable (): boolean {
    return this.state === 'open' && this.socket.bufferedAmount <= this.settings.backpressure.highWaterMark
  }

  /**
   * Sends through the connection's accounting and backpressure policy. Raw data goes as it
   * is; any other value is sent as JSON text. Returns what happened; under the 'wait' policy
   * a send over the high-water mark returns a promise that settles once it went out.
   */
  send (data: Sendable, options?: SendOptions): SendResult | Promise<SendResult> {
    let payload: WebSocket.Data
    let opts = options
    if (typeof data === 'string' || Buffer.isBuffer(data)) payload = data
    else {
      const prepared = prepare(data)
      payload = prepared.data as WebSocket.Data
      if (opts === undefined) opts = prepared.options
    }
    return this.deliver(payload, opts)
  }

  /** @internal Sends an already prepared payload; shared by send(), sendToUser() and broadcast(). */
  deliver (data: WebSocket.Data, options: SendOptions | undefined): SendResult | Promise<SendResult> {
    if (this.settings.backpressure.policy === 'wait' && this.state === 'open' &&
      (this.#waiting !== null || this.socket.bufferedAmount > this.settings.backpressure.highWaterMark)) {
      return new Promise((resolve) => {
        if (this.#waiting === null) this.#waiting = []
        this.#waiting.push({ data, options, resolve })
        this.#watchDrain()
      })
    }
    return this.transmit(data, options, undefined)
  }

  /**
   * Resolves once the buffered bytes are at or below the low-water mark (at once when they
   * are), or when the connection closes: the cue for a streaming source to resume.
   */
  waitForDrain (): Promise<void> {
    if (this.state === 'closed' || this.socket.bufferedAmount <= this.settings.backpressure.lowWaterMark) {
      return Promise.resolve()
    }
    return new Promise((resolve) => {
      if (this.#drainWaiters === null) this.#drainWaiters = []
      this.#drainWaiters.push(resolve)
      this.#watchDrain()
    })
  }

  /** @internal Runs `onExpired` at `closeAt`; the timer goes with the connection. */
  expireAt (onExpired: (connection: Connection) => void): void {
    // setTimeout takes at most 2^31-1 ms; a later expiry is re-armed when that fires.
    const delay = Math.min(Math.max(0, this.closeAt - Date.now()), 2_147_483_647)
    this.#expiryTimer = setTimeout(() => {
      if (Date.now() < this.closeAt) this.expireAt(onExpired)
      else onExpired(this)
    }, delay)
    this.#expiryTimer.unref()
  }

  /**
   * Closes the connection gracefully through the close manager.
   * @throws FST_WSM_CLOSE_CODE_INVALID (as a rejection) for a code RFC 6455 forbids.
   */
  close (code: number = CloseCode.NORMAL, reason = '', timeout?: number): Promise<CloseResult> {
    const request: CloseRequest = { code, reason }
    if (timeout !== undefined) request.timeout = timeout
    if (this.state === 'open') this.state = 'closing'
    return this.#host.closer.close(this.socket, request)
  }

  /**
   * Logs an error of the application's code (handler or listener) and closes with 1011.
   * The reason says nothing of the error: it goes to the client.
   */
  fail (err: unknown, source: string): void {
    this.log.error({ err, source }, 'connection handler failed')
    if (this.state === 'open') {
      this.close(CloseCode.INTERNAL_ERROR, 'Internal error').catch(noop)
    }
  }

  /**
   * @internal The one path every outgoing data message takes, raw socket.send() included:
   * backpressure policy, counters, compression threshold.
   */
  transmit (data: WebSocket.Data, options: SendOptions | SendCallback | undefined, cb: SendCallback | undefined): SendResult {
    if (typeof options === 'function') {
      cb = options
      options = undefined
    }
    const socket = this.socket
    if (socket.readyState !== 1) {
      // ws reports a send after close through the callback; keep that behaviour.
      socket[kRawSend](data, options, cb)
      return 'closed'
    }
    const backpressure = this.settings.backpressure
    const buffered = socket.bufferedAmount
    if (buffered > backpressure.highWaterMark && backpressure.policy !== 'wait') {
      if (cb !== undefined) process.nextTick(cb, new Error('message not sent: slow consumer'))
      if (backpressure.policy === 'drop') {
        this.messagesDropped++
        this.#host.delivery.dropped(this.userId, this.log, !this.#overHighWater, buffered)
        this.#overHighWater = true
        return 'dropped'
      }
      this.#host.delivery.slowConsumerClosed(this.userId, this.log, buffered)
      this.close(CloseCode.TRY_AGAIN_LATER, 'Slow consumer').catch(noop)
      return 'closed'
    }
    if (this.#overHighWater && buffered <= backpressure.lowWaterMark) this.#overHighWater = false
    const size = payloadSize(data)
    this.messagesOut++
    this.bytesOut += size
    this.lastActivityAt = Date.now()
    const threshold = this.#compressThreshold
    if (threshold < 0) {
      socket[kRawSend](data, options, cb)
    } else {
      const compress = size >= threshold
      const opts = withCompress(options, compress)
      socket[kRawSend](data, opts, cb)
      this.#host.compression.recordSent(socket, size, opts.compress === true)
    }
    return 'sent'
  }

  /** @internal Counts one incoming data message and runs the route's message hook. */
  received (data: WebSocket.RawData, isBinary: boolean): boolean {
    const size = payloadSize(data)
    this.messagesIn++
    this.bytesIn += size
    this.lastActivityAt = Date.now()
    const hook = this.settings.messageHook
    return hook === null || hook.onMessage(this, data, isBinary, size)
  }

  /** @internal A listener the application attached to the socket threw. */
  onListenerError (err: unknown, event: string | symbol): void {
    this.fail(err, `listener:${String(event)}`)
  }

  /** @internal The socket closed: leave the registry and log the end, exactly once. */
  onSocketClose (code: number, reason: Buffer, initiator: CloseInitiator): void {
    if (this.state === 'closed') return
    this.state = 'closed'
    this.closeCode = code
    if (this.#expiryTimer !== null) clearTimeout(this.#expiryTimer)
    this.#flushWaiting()
    this.#host.connectionClosed(this)
    this.log.info({
      code,
      reason: reason.length > 0 ? reason.toString() : '',
      initiatedBy: initiator,
      durationMs: Date.now() - this.connectedAt,
      messagesIn: this.messagesIn,
      messagesOut: this.messagesOut,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      messagesDropped: this.messagesDropped
    }, 'connection closed')
  }

  #watchDrain (): void {
    if (this.#drainTimer !== null) return
    this.#drainTimer = setInterval(() => this.#flushWaiting(), DRAIN_POLL_MS)
    // The TCP socket's 'drain' is the prompt signal; the timer covers the compression queue.
    const raw = (this.socket as unknown as { _socket?: NodeJS.EventEmitter })._socket
    raw?.on('drain', this.#onDrain)
  }

  readonly #onDrain = (): void => this.#flushWaiting()

  // Sends waiting messages in order while the buffer allows, and wakes drain waiters.
  #flushWaiting (): void {
    const closed = this.state !== 'open' || this.socket.readyState !== 1
    const waiting = this.#waiting
    if (waiting !== null) {
      while (waiting.length > 0) {
        if (closed) {
          (waiting.shift() as Waiting).resolve('closed')
          continue
        }
        if (this.socket.bufferedAmount > this.settings.backpressure.lowWaterMark) break
        const next = waiting.shift() as Waiting
        next.resolve(this.transmit(next.data, next.options, undefined))
      }
      if (waiting.length === 0) this.#waiting = null
    }
    const drain = this.#drainWaiters
    if (drain !== null && (closed || this.socket.bufferedAmount <= this.settings.backpressure.lowWaterMark)) {
      this.#drainWaiters = null
      for (const resolve of drain) resolve()
    }
    if (this.#waiting === null && this.#drainWaiters === null && this.#drainTimer !== null) {
      clearInterval(this.#drainTimer)
      this.#drainTimer = null
      const raw = (this.socket as unknown as { _socket?: NodeJS.EventEmitter })._socket
      raw?.removeListener('drain', this.#onDrain)
    }
  }
}

function noop (): void {}
