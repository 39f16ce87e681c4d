import type { FastifyBaseLogger } from 'fastify'
import type WebSocket from 'ws'
import type { CloseRequest, CloseResult, GracefulCloseManager } from './close'
import { CloseCode } from './errors'
import type { CloseInitiator, ManagedWebSocket } from './socket'

/** Where a connection is in its life. */
export type ConnectionState = 'open' | 'closing' | 'closed'

/** What the plugin gives a connection so it can report its own end. */
export interface ConnectionHost {
  /** The close manager every close goes through. */
  readonly closer: GracefulCloseManager
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

/**
 * One accepted WebSocket under management: identity, counters and its way out.
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
  /** Where the connection is in its life. */
  state: ConnectionState = 'open'
  /** The close code, once closed. */
  closeCode: number | null = null
  /** The underlying socket. */
  readonly socket: ManagedWebSocket
  /** A child of the request's logger bound to `{ connectionId, userId, route }`. */
  readonly log: FastifyBaseLogger
  readonly #host: ConnectionHost

  constructor (host: ConnectionHost, init: ConnectionInit) {
    this.#host = host
    this.id = init.id
    this.socket = init.socket
    this.route = init.route
    this.remoteAddress = init.remoteAddress
    this.userId = init.userId
    this.user = init.user
    this.log = init.log
    this.connectedAt = this.lastActivityAt = Date.now()
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

  /** @internal Counts one outgoing data message. */
  countSent (data: WebSocket.Data): void {
    this.messagesOut++
    this.bytesOut += payloadSize(data)
    this.lastActivityAt = Date.now()
  }

  /** @internal Counts one incoming data message. */
  countReceived (data: WebSocket.RawData): void {
    this.messagesIn++
    this.bytesIn += payloadSize(data)
    this.lastActivityAt = Date.now()
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
    this.#host.connectionClosed(this)
    this.log.info({
      code,
      reason: reason.length > 0 ? reason.toString() : '',
      initiatedBy: initiator,
      durationMs: Date.now() - this.connectedAt,
      messagesIn: this.messagesIn,
      messagesOut: this.messagesOut,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut
    }, 'connection closed')
  }
}

function noop (): void {}
