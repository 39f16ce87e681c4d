// One managed connection. It owns its state and its close: whoever wants it closed (the
// application, the heartbeat, the idle sweep, token expiry, shutdown) asks it, and learns the
// outcome from the promise it returns.
//
// Sending has one name per layer:
// - send(): the public call; serializes a value to JSON, then deliver().
// - deliver(): the backpressure policy, 'wait' included (sendToUser and broadcast call it).
// - write(): every data message that reaches the wire goes through here, the application's
//   raw socket.send() included: the 'close' and 'drop' policies, counters, the compression
//   threshold; then ws's own send (kSocketSend).
import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type WebSocket from 'ws'
import { checkCloseRequest, TERMINATE_GRACE_MS, type CloseResult, type GracefulCloseManager } from './close'
import type { CompressionConnectionStats, CompressionManager } from './compression'
import { payloadSize, prepare, withCompress, type BackpressureOptions, type DeliveryCounters, type Prepared, type Sendable, type SendOptions, type SendResult } from './delivery'
import { CloseCode } from './errors'
import type { HeartbeatSettings } from './heartbeat-settings'
import { canSendDeflated, independentDeflateBits, sendFrame, transportOf } from './internals'
import type { Bucket } from './message-limits'
import { MessageIterator } from './iteration'
import type { SharedDeflate } from './shared-deflate'
import { checkTopic, type TopicRegistry } from './topics'
import { kSocketClose, kSocketSend, kSocketTerminate } from './symbols'

// Internal signatures take a connection whatever its application data.
type AnyConnection = Connection<any, any>

/**
 * The type of `request.user` where @fastify/jwt declares one (its `FastifyJWT` user type), else
 * an object of claims; read without importing @fastify/jwt, which applications without auth
 * need not install.
 */
export type JwtUser = FastifyRequest extends { user: infer U } ? U : Record<string, unknown>

/** Where a connection is in its life. */
export type ConnectionState = 'open' | 'closing' | 'closed'

/** Who started a close: the server, the client, or neither (the TCP connection was lost). */
export type CloseInitiator = 'server' | 'client' | 'network'

type SendCallback = (err?: Error) => void

/** What a connection needs of its socket beyond ws's API: ws's own send, close and terminate (lib/socket.ts). */
export interface ManagedSocket extends WebSocket {
  /** The connection this socket belongs to. */
  readonly connection: AnyConnection | null
  /** Who started the close, or null while the socket is open. */
  readonly closeInitiator: CloseInitiator | null
  /** The code of the close frame this side sent, or null before any. */
  readonly sentCloseCode: number | null
  [kSocketSend] (data: WebSocket.Data, options: SendOptions | undefined, cb: SendCallback | undefined): void
  [kSocketClose] (code?: number, data?: string | Buffer): void
  [kSocketTerminate] (): void
}

/** What runs for every data message and ping a connection receives; see lib/pipeline.ts. */
export interface MessageHook {
  /** Returns false to stop the message here (dropped or consumed). */
  onMessage (connection: AnyConnection, data: WebSocket.RawData, isBinary: boolean, size: number): boolean
  /** Returns false when the ping must not be answered. */
  onPing (connection: AnyConnection): boolean
}

/** Settings shared by every connection of one route; one object per route, not per connection. */
export interface RouteSettings {
  backpressure: BackpressureOptions
  /** Payload bytes from which messages are compressed; -1 when compression is off. */
  compressThreshold: number
  /** The shared deflate of the `shared` compression profile, else null. */
  sharedDeflate: SharedDeflate | null
  /** Heartbeat: false when the route has none, undefined for the manager's settings, or this route's own. */
  heartbeat: HeartbeatSettings | undefined | false
  /** Idle timeout in milliseconds; 0 when off. */
  idleTimeout: number
  /** Run for every received data message and ping. */
  messageHook: MessageHook
  /** The lifecycle hooks of the route (the plugin's, then its own); see lib/hooks.ts. */
  hooks: HookRunner
}

/** What onClose hooks and the close channel learn of a closed connection. */
export interface CloseInfo {
  /** The close code as ws reports it (1006 when no close frame came back). */
  code: number
  reason: string
  /** The code of the close frame the server sent, or null. */
  sentCode: number | null
  initiatedBy: CloseInitiator
  durationMs: number
  messagesIn: number
  messagesOut: number
  bytesIn: number
  bytesOut: number
  messagesDropped: number
}

/** Runs a route's lifecycle hooks (lib/hooks.ts). */
export interface HookRunner {
  has (name: 'onConnection' | 'onMessage' | 'onClose' | 'onRefused'): boolean
  run (name: 'onConnection' | 'onMessage' | 'onClose' | 'onRefused', args: unknown[]): Promise<void> | null
}

/** What the plugin gives a connection so it can report its own end. */
export interface ConnectionHost {
  /** Counts closes; its timeout is the default of close(). */
  readonly closer: GracefulCloseManager
  /** Backpressure counters. */
  readonly delivery: DeliveryCounters
  /** Compression statistics. */
  readonly compression: CompressionManager
  /** Topic subscriptions of this node. */
  readonly topics: TopicRegistry<AnyConnection>
  /** The application holds the connection's input (true) or let go of it (false): suspend or resume its heartbeat. */
  heartbeatSuspended (connection: AnyConnection, suspended: boolean): void
  /** Called once, when the connection stops being open (closing or closed). */
  connectionLeftOpen (connection: AnyConnection): void
  /** Called once, when the socket has closed, to drop the connection from the registry. */
  connectionClosed (connection: AnyConnection, info: CloseInfo): void
}

/** What a connection is created from; nothing here keeps the request alive. */
export interface ConnectionInit {
  id: string
  socket: ManagedSocket
  route: string
  remoteAddress: string
  /** The key the peer's IP is counted under (IPv6 by /64). */
  ipKey: string
  userId: string | null
  user: Record<string, unknown> | null
  log: FastifyBaseLogger
  settings: RouteSettings
  /** Epoch ms at which the token expires (plus grace), or Infinity. */
  closeAt: number
  /** The user's message-rate bucket, or null when messages are not limited. */
  rateBucket: Bucket | null
}

interface Waiting {
  data: WebSocket.Data
  options: SendOptions | undefined
  size: number
  /** The prepared message of a fan-out, for the shared deflate; null for anything else. */
  prepared: Prepared | null
  resolve: ((result: SendResult) => void) | null
}

interface PendingClose {
  readonly promise: Promise<CloseResult>
  readonly resolve: (result: CloseResult) => void
  readonly code: number
  readonly reason: string
  readonly started: number
  timer: NodeJS.Timeout | null
  terminated: boolean
}

// How often a waiting connection re-checks its buffer when no 'drain' event comes (bytes
// queued for compression drain without one).
const DRAIN_POLL_MS = 50
const EMPTY = Buffer.alloc(0)
// Reasons for holding a connection's input (holdInput); HOLD_ITERATOR is iteration.ts's.
const HOLD_RATE = 1
/** @internal While onConnection hooks run. */
export const HOLD_HOOKS = 4
/** @internal While a forwarding session's upstream cannot take more bytes (lib/forward.ts). */
export const HOLD_UPSTREAM = 8

/**
 * One accepted WebSocket under management: identity, counters, sending and its way out.
 * Created by the plugin for every socket of a `{ websocket: true }` route and given to the
 * handler as `request.wsConnection`.
 */
export class Connection<Data extends object = Record<string, unknown>, User = JwtUser> {
  /** Unique id (a UUID, so ids from several servers never clash). */
  readonly id: string
  /** The authenticated user's id, or null when the route is not authenticated. */
  readonly userId: string | null
  /**
   * What @fastify/jwt's verification returned (the claims, or formatUser's value), or null when
   * the route is not authenticated. Typed as @fastify/jwt's `request.user` (its `FastifyJWT`
   * user type, where the application declares one). An in-band refresh (`auth.refresh`)
   * replaces it.
   */
  get user (): User | null {
    return this.#user
  }

  /** The route's URL pattern, e.g. `/rooms/:id`. */
  readonly route: string
  /** The peer's IP address as Fastify saw it (trustProxy applies). */
  readonly remoteAddress: string
  /** @internal The key the peer's IP is counted under for `maxConnectionsPerIp`. */
  readonly ipKey: string
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
  /** The close code, once closed. */
  closeCode: number | null = null
  /** The underlying socket. */
  readonly socket: ManagedSocket
  /** A child of the request's logger bound to `{ connectionId, userId, route }`. */
  readonly log: FastifyBaseLogger
  /** The route's shared settings. */
  readonly settings: RouteSettings
  /** Whether permessage-deflate was negotiated and compression is on for this connection. */
  readonly compressing: boolean
  /**
   * @internal The peer's deflate window (2^bits) when a message deflated once for many
   * connections fits this one (the `shared` profile, negotiated without server context
   * takeover); -1 otherwise.
   */
  readonly sharedBits: number
  /** Epoch ms at which the token expires (plus grace) and the connection closes with 1008; Infinity without one. */
  get closeAt (): number {
    return this.#closeAt
  }

  /** @internal The user's message-rate bucket, shared with the user's other connections. */
  readonly rateBucket: Bucket | null
  /** @internal Consecutive message-router errors. */
  routerErrors = 0
  readonly #compressThreshold: number
  readonly #host: ConnectionHost
  #state: ConnectionState = 'open'
  #close: PendingClose | null = null
  #overHighWater = false
  #waiting: Waiting[] | null = null
  #queuedBytes = 0
  #drainWaiters: Array<() => void> | null = null
  #drainTimer: NodeJS.Timeout | null = null
  #expiryTimer: NodeJS.Timeout | null = null
  #user: User | null
  #closeAt: number
  #pauseTimer: NodeJS.Timeout | null = null
  #holds = 0
  #appHolds = 0
  #data: Data | undefined = undefined

  constructor (host: ConnectionHost, init: ConnectionInit) {
    this.#host = host
    this.id = init.id
    this.socket = init.socket
    this.route = init.route
    this.remoteAddress = init.remoteAddress
    this.ipKey = init.ipKey
    this.userId = init.userId
    this.#user = init.user as User | null
    this.log = init.log
    this.settings = init.settings
    this.#closeAt = init.closeAt
    this.rateBucket = init.rateBucket
    this.compressing = init.settings.compressThreshold >= 0 && init.socket.extensions.includes('permessage-deflate')
    this.#compressThreshold = this.compressing ? init.settings.compressThreshold : -1
    this.sharedBits = this.compressing && init.settings.sharedDeflate !== null && canSendDeflated ? independentDeflateBits(init.socket) : -1
    this.connectedAt = this.lastActivityAt = Date.now()
  }

  /** Where the connection is in its life: 'open', 'closing' once a close began, 'closed'. */
  get state (): ConnectionState {
    return this.#state
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
    return this.#state === 'open' && this.socket.bufferedAmount <= this.settings.backpressure.highWaterMark
  }

  /**
   * Sends through the connection's accounting and backpressure policy. Raw data goes as it
   * is; any other value is sent as JSON text. Returns what happened; under the 'wait' policy
   * a send over the high-water mark returns a promise that settles once it went out (or the
   * connection closed).
   */
  send (data: Sendable, options?: SendOptions): SendResult | Promise<SendResult> {
    let payload: WebSocket.Data
    let opts = options
    if (typeof data === 'string' || Buffer.isBuffer(data) || data instanceof Blob) payload = data as WebSocket.Data
    else {
      const prepared = prepare(data)
      payload = prepared.data as WebSocket.Data
      if (opts === undefined) opts = prepared.options
    }
    return this.deliver(payload, opts, true) as SendResult | Promise<SendResult>
  }

  /**
   * @internal Applies the backpressure policy to a prepared payload. Under 'wait' over the
   * high-water mark the message is queued (up to `maxQueued` bytes, then the connection is
   * closed with 1013): with `wantPromise` the caller gets a promise of the outcome, else
   * 'queued' at once, so a fan-out never waits on one slow reader.
   */
  deliver (data: WebSocket.Data, options: SendOptions | undefined, wantPromise: boolean, prepared: Prepared | null = null): SendResult | Promise<SendResult> {
    const backpressure = this.settings.backpressure
    if (backpressure.policy === 'wait' && this.#state === 'open' &&
      (this.#waiting !== null || this.socket.bufferedAmount > backpressure.highWaterMark)) {
      const size = payloadSize(data)
      if (this.#queuedBytes + size > backpressure.maxQueued) {
        this.#slowConsumer(this.socket.bufferedAmount + this.#queuedBytes)
        return 'closed'
      }
      this.#queuedBytes += size
      this.#waiting ??= []
      this.#watchDrain()
      if (!wantPromise) {
        this.#waiting.push({ data, options, size, prepared, resolve: null })
        return 'queued'
      }
      const waiting = this.#waiting
      return new Promise((resolve) => waiting.push({ data, options, size, prepared, resolve }))
    }
    return this.write(data, options, undefined, prepared)
  }

  /**
   * Resolves once the buffered bytes are at or below the low-water mark (at once when they
   * are), or when the connection closes: the cue for a streaming source to resume.
   */
  waitForDrain (): Promise<void> {
    if (this.#state === 'closed' || this.socket.bufferedAmount <= this.settings.backpressure.lowWaterMark) {
      return Promise.resolve()
    }
    return new Promise((resolve) => {
      if (this.#drainWaiters === null) this.#drainWaiters = []
      this.#drainWaiters.push(resolve)
      this.#watchDrain()
    })
  }

  /**
   * @internal A refreshed token of the same user: its claims replace the user, and the expiry
   * timer moves to the new `closeAt`.
   */
  refreshAuth (user: unknown, closeAt: number, onExpired: (connection: AnyConnection) => void): void {
    this.#user = user as User | null
    this.#closeAt = closeAt
    if (this.#expiryTimer !== null) {
      clearTimeout(this.#expiryTimer)
      this.#expiryTimer = null
    }
    if (closeAt !== Infinity) this.expireAt(onExpired)
  }

  /** @internal Runs `onExpired` at `closeAt`; the timer goes with the connection. */
  expireAt (onExpired: (connection: AnyConnection) => void): void {
    // setTimeout takes at most 2^31-1 ms; a later expiry is re-armed when that fires.
    const delay = Math.min(Math.max(0, this.closeAt - Date.now()), 2_147_483_647)
    this.#expiryTimer = setTimeout(() => {
      if (Date.now() < this.closeAt) this.expireAt(onExpired)
      else onExpired(this)
    }, delay)
    this.#expiryTimer.unref()
  }

  /**
   * Closes the connection gracefully: sends the close frame, waits up to `timeout` for the
   * peer's, then terminates. A second call while closing returns the first call's promise;
   * on a closed connection it resolves at once.
   * Rejects, and changes nothing, on a bad request: FST_WSM_CLOSE_CODE_INVALID for a code
   * RFC 6455 forbids, FST_WSM_ARGUMENT_INVALID for a reason that is not a string or a
   * timeout that is not an integer from 1 to 600000.
   */
  close (code: number = CloseCode.NORMAL, reason = '', timeout?: number): Promise<CloseResult> {
    const checked = checkCloseRequest(code, reason, timeout, this.#host.closer.timeout)
    if (checked instanceof Error) return Promise.reject(checked)
    if (this.#close !== null) return this.#close.promise
    if (this.#state === 'closed') return Promise.resolve(this.#closedResult(checked.code, checked.reason))
    const pending = this.#beginClose(checked.code, checked.reason, checked.timeout)
    const socket = this.socket
    // CONNECTING cannot carry a close frame; CLOSING already sent or received one.
    if (socket.readyState === 0) this.#terminateSocket(pending)
    else if (socket.readyState === 1) socket[kSocketClose](checked.code, checked.reason)
    return pending.promise
  }

  /**
   * Ends a connection whose peer is known dead (the heartbeat gave up on it): no close
   * frame, no wait. Resolves when the socket is closed; a close under way is cut short.
   */
  terminate (): Promise<CloseResult> {
    if (this.#state === 'closed') return Promise.resolve(this.#closedResult(1006, ''))
    const pending = this.#close ?? this.#beginClose(1006, '', TERMINATE_GRACE_MS)
    if (!pending.terminated) this.#terminateSocket(pending)
    return pending.promise
  }

  /**
   * Logs an error of the application's code (handler or listener) and closes with 1011.
   * The reason says nothing of the error: it goes to the client.
   */
  fail (err: unknown, source: string): void {
    this.log.error({ err, source }, 'connection handler failed')
    if (this.#state === 'open') this.close(CloseCode.INTERNAL_ERROR, 'Internal error').catch(noop)
  }

  /**
   * @internal The one path every outgoing data message takes, raw socket.send() included:
   * the 'close' and 'drop' policies, counters, compression threshold. `prepared` is the
   * message of a fan-out (data is its payload), which the shared profile deflates once for
   * every recipient, and only for one the policies let through.
   */
  write (data: WebSocket.Data, options: SendOptions | SendCallback | undefined, cb: SendCallback | undefined, prepared: Prepared | null = null): SendResult {
    if (typeof options === 'function') {
      cb = options
      options = undefined
    }
    const socket = this.socket
    if (socket.readyState !== 1) {
      // ws reports a send after close through the callback; keep that behaviour.
      socket[kSocketSend](data, options, cb)
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
      this.#slowConsumer(buffered)
      return 'closed'
    }
    if (this.#overHighWater && buffered <= backpressure.lowWaterMark) this.#overHighWater = false
    const size = payloadSize(data)
    this.messagesOut++
    this.bytesOut += size
    this.lastActivityAt = Date.now()
    const threshold = this.#compressThreshold
    if (threshold < 0) {
      socket[kSocketSend](data, options, cb)
    } else if (prepared !== null && this.sharedBits > 0 && this.#sendShared(prepared, size, options as SendOptions | undefined, cb)) {
      this.#host.compression.recordSent(socket, size, true)
    } else {
      const opts = withCompress(options, size >= threshold)
      socket[kSocketSend](data, opts, cb)
      this.#host.compression.recordSent(socket, size, opts.compress === true)
    }
    return 'sent'
  }

  // The shared profile's frame for this peer's window, deflated on the first recipient that
  // takes it; false when ws must send the message itself (below the threshold, a Blob, or
  // ws's internals not found).
  #sendShared (prepared: Prepared, size: number, options: SendOptions | undefined, cb: SendCallback | undefined): boolean {
    const shared = this.settings.sharedDeflate
    const frame = shared === null ? null : shared.frameFor(prepared, size, this.sharedBits, options?.binary ?? typeof prepared.data !== 'string')
    if (frame === null || !sendFrame(this.socket, frame, cb)) return false
    ;(shared as SharedDeflate).delivered()
    return true
  }

  /**
   * @internal Counts one incoming data message and runs the route's message hook. Once a
   * close has begun nothing more is handled: an expired or revoked user's messages stop at
   * once, not when the peer answers the close.
   */
  received (data: WebSocket.RawData, isBinary: boolean): boolean {
    if (this.#state !== 'open') return false
    const size = payloadSize(data)
    this.messagesIn++
    this.bytesIn += size
    this.lastActivityAt = Date.now()
    return this.settings.messageHook.onMessage(this, data, isBinary, size)
  }

  /** @internal A ping arrived; false when it must go unanswered (over the message budget). */
  pinged (): boolean {
    return this.#state === 'open' && this.settings.messageHook.onPing(this)
  }

  /**
   * @internal Stops reading from the peer for `ms` (ws's pause()), the inbound side of
   * backpressure: a client over its message budget is not read, so it cannot make the server
   * inflate and parse what it will drop anyway. One pause at a time.
   */
  pauseInput (ms: number): void {
    if (this.#pauseTimer !== null || this.#state !== 'open') return
    this.holdInput(HOLD_RATE)
    // One function for every connection: no closure per connection.
    this.#pauseTimer = setTimeout(Connection.#resumeInput, ms, this)
  }

  static #resumeInput (connection: AnyConnection): void {
    connection.#pauseTimer = null
    connection.releaseInput(HOLD_RATE)
  }

  /**
   * @internal Stops reading from the peer for one holder (the rate limit, an onConnection
   * hook, each message iterator); the socket is read again once no holder is left. While the
   * application holds it (not the rate limit), the heartbeat is suspended: the peer's pongs
   * wait unread behind its messages, and a busy consumer must not get a live client declared
   * dead. The idle timeout still applies.
   */
  holdInput (reason: number): void {
    if (this.#state !== 'open') return
    const before = this.#holds
    this.#holds++
    if (reason !== HOLD_RATE && this.#appHolds++ === 0) this.#host.heartbeatSuspended(this, true)
    if (before === 0 && this.socket.readyState === 1) this.socket.pause()
  }

  /** @internal Takes back one {@link holdInput}. */
  releaseInput (reason: number): void {
    if (this.#holds === 0) return
    this.#holds--
    if (reason !== HOLD_RATE && this.#appHolds > 0 && --this.#appHolds === 0 && this.#state === 'open') this.#host.heartbeatSuspended(this, false)
    if (this.#holds === 0 && this.socket.readyState <= 2) this.socket.resume()
  }

  // The peer's close frame must be read: every hold ends once the connection stops being open.
  #releaseAllInput (): void {
    if (this.#holds === 0) return
    this.#holds = 0
    this.#appHolds = 0
    if (this.socket.readyState <= 2) this.socket.resume()
  }

  /**
   * The application's own state for this connection, typed by `Connection<Data>`: set it in
   * the handler or an onConnection hook (`connection.data.roomId = ...`), or start it with the
   * `connectionData` option. Created on first use; it goes with the connection.
   */
  get data (): Data {
    return (this.#data ??= {} as Data)
  }

  set data (value: Data) {
    this.#data = value
  }

  /**
   * Subscribes to a topic: `fastify.wsManager.publish(topic, data)` on any node then reaches
   * this connection, until `unsubscribe(topic)` or the close. Resolves once the node receives
   * the topic's publications from other nodes (at once without a cluster, or while Redis
   * cannot be reached: the subscription is restored when it is back). A connection that is no
   * longer open subscribes to nothing.
   * Rejects with FST_WSM_TOPIC_INVALID for an empty name, one over 256 characters or with
   * control characters, or past `maxTopicsPerConnection`.
   */
  async subscribe (topic: string): Promise<void> {
    if (this.#state !== 'open') {
      checkTopic(topic)
      return
    }
    return this.#host.topics.subscribe(this as unknown as AnyConnection, topic)
  }

  /** Leaves a topic; false when the connection did not subscribe to it. */
  unsubscribe (topic: string): boolean {
    return this.#host.topics.unsubscribe(this as unknown as AnyConnection, topic)
  }

  /** The topics this connection subscribes to (a fresh array). */
  get topics (): string[] {
    return this.#host.topics.of(this as unknown as AnyConnection)
  }

  /**
   * The connection's messages, in order, for `for await (const { data, isBinary } of connection)`.
   * While the loop body runs, the socket is not read, so a slow consumer slows its client; the
   * loop ends when the connection closes (after the messages already read), or on `break`.
   */
  [Symbol.asyncIterator] (): MessageIterator {
    return new MessageIterator(this, this.settings.backpressure.maxQueued)
  }

  /** @internal A message iterator's queue passed its bound. */
  overflowed (queuedBytes: number): void {
    this.#slowConsumer(queuedBytes)
  }

  /** @internal A listener the application attached to the socket threw. */
  onListenerError (err: unknown, event: string | symbol): void {
    this.fail(err, `listener:${String(event)}`)
  }

  /** @internal The application called socket.close() or terminate() itself. */
  closedBySocket (): void {
    if (this.#state === 'open' && this.socket.readyState >= 2) this.#leaveOpen('closing')
  }

  /** @internal The socket closed: settle the close, leave the registry and log the end, exactly once. */
  onSocketClose (code: number, reason: Buffer, initiator: CloseInitiator): void {
    if (this.#state === 'closed') return
    this.#leaveOpen('closed')
    this.closeCode = code
    if (this.#expiryTimer !== null) clearTimeout(this.#expiryTimer)
    if (this.#pauseTimer !== null) clearTimeout(this.#pauseTimer)
    const pending = this.#close
    if (pending !== null) {
      if (pending.timer !== null) clearTimeout(pending.timer)
      const clean = !pending.terminated && code !== 1006
      this.#host.closer.finished(clean)
      pending.resolve({ code: pending.code, reason: pending.reason, clean, durationMs: Math.round(performance.now() - pending.started) })
    }
    this.#flushWaiting()
    const info: CloseInfo = {
      code,
      reason: reason.length > 0 ? reason.toString() : '',
      // What the server sent (1009, 1013, ...), also when the peer never answered and ws
      // reports 1006.
      sentCode: this.socket.sentCloseCode,
      initiatedBy: initiator,
      durationMs: Date.now() - this.connectedAt,
      messagesIn: this.messagesIn,
      messagesOut: this.messagesOut,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      messagesDropped: this.messagesDropped
    }
    this.log.info(info, 'connection closed')
    this.#host.connectionClosed(this, info)
  }

  #leaveOpen (next: 'closing' | 'closed'): void {
    const wasOpen = this.#state === 'open'
    this.#state = next
    if (!wasOpen) return
    // Nothing read from now on is handled, but the peer's close frame must be read.
    this.#releaseAllInput()
    this.#host.connectionLeftOpen(this)
  }

  #closedResult (code: number, reason: string): CloseResult {
    return { code: this.closeCode ?? code, reason, clean: false, durationMs: 0 }
  }

  #beginClose (code: number, reason: string, timeout: number): PendingClose {
    let resolve!: (result: CloseResult) => void
    const promise = new Promise<CloseResult>((_resolve) => { resolve = _resolve })
    const pending: PendingClose = { promise, resolve, code, reason, started: performance.now(), timer: null, terminated: false }
    pending.timer = setTimeout(() => this.#terminateSocket(pending), timeout)
    this.#close = pending
    this.#host.closer.began()
    this.#leaveOpen('closing')
    return pending
  }

  // Terminates the socket, then gives ws a short grace to report the close; a stream that
  // never reports it (an injected socket) is finished here, so no close can hang and no
  // connection can stay registered.
  #terminateSocket (pending: PendingClose): void {
    pending.terminated = true
    if (pending.timer !== null) clearTimeout(pending.timer)
    pending.timer = setTimeout(() => this.onSocketClose(1006, EMPTY, 'server'), TERMINATE_GRACE_MS)
    this.socket[kSocketTerminate]()
  }

  #slowConsumer (buffered: number): void {
    if (this.#state !== 'open') return
    this.#host.delivery.slowConsumerClosed(this.userId, this.log, buffered)
    this.close(CloseCode.TRY_AGAIN_LATER, 'Slow consumer').catch(noop)
  }

  #watchDrain (): void {
    if (this.#drainTimer !== null) return
    this.#drainTimer = setInterval(() => this.#flushWaiting(), DRAIN_POLL_MS)
    // The TCP socket's 'drain' is the prompt signal; the timer covers the compression queue.
    transportOf(this.socket)?.on('drain', this.#onDrain)
  }

  readonly #onDrain = (): void => this.#flushWaiting()

  // Sends waiting messages in order while the buffer allows, and wakes drain waiters.
  #flushWaiting (): void {
    const closed = this.#state !== 'open' || this.socket.readyState !== 1
    const waiting = this.#waiting
    if (waiting !== null) {
      while (waiting.length > 0) {
        if (!closed && this.socket.bufferedAmount > this.settings.backpressure.lowWaterMark) break
        const next = waiting.shift() as Waiting
        this.#queuedBytes -= next.size
        const result = closed ? 'closed' : this.write(next.data, next.options, undefined, next.prepared)
        next.resolve?.(result)
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
      transportOf(this.socket)?.removeListener('drain', this.#onDrain)
    }
  }
}

function noop (): void {}
