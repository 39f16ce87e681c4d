import WebSocket from 'ws'
import type { Connection } from './connection'

/** Who started a close: the server, the client, or neither (the TCP connection was lost). */
export type CloseInitiator = 'server' | 'client' | 'network'

type SendCallback = (err?: Error) => void
interface SendOptions {
  mask?: boolean
  binary?: boolean
  compress?: boolean
  fin?: boolean
}

/** Attaches a socket to its connection; a Symbol so it stays off the socket's public surface. */
export const kAttach = Symbol('fastify-ws-manager.attach')
/** ws's own send, past the connection's accounting; for the connection only. */
export const kRawSend = Symbol('fastify-ws-manager.rawSend')

interface WsInternals {
  // ws sets this when the peer's close frame arrives; it tells a client-initiated close
  // from one we start. Stable across ws 8.x.
  _closeFrameReceived: boolean
}

/**
 * The socket class the plugin's WebSocketServer builds (ws's `WebSocket` server option).
 * Subclassing rather than wrapping keeps the application's own `socket.send()` and
 * `socket.on('message')` counted, with no extra object or closure per message.
 */
export class ManagedWebSocket extends WebSocket {
  #connection: Connection | null = null
  #initiator: CloseInitiator | null = null

  /** The managed connection this socket belongs to, once the route handler runs. */
  get connection (): Connection | null {
    return this.#connection
  }

  /** Who started the close, or null while the socket is open. */
  get closeInitiator (): CloseInitiator | null {
    return this.#initiator
  }

  [kAttach] (connection: Connection): void {
    this.#connection = connection
  }

  // The application's own socket.send() takes the connection's path too: counted, under
  // the backpressure policy and the compression threshold.
  override send (data: WebSocket.Data, options?: SendOptions | SendCallback, cb?: SendCallback): void {
    const conn = this.#connection
    if (conn === null) super.send(data, options as SendOptions, cb)
    else conn.transmit(data, options, cb)
  }

  [kRawSend] (data: WebSocket.Data, options: SendOptions | undefined, cb: SendCallback | undefined): void {
    super.send(data, options as SendOptions, cb)
  }

  override close (code?: number, data?: string | Buffer): void {
    if (this.#initiator === null && this.readyState < 2) {
      this.#initiator = (this as unknown as WsInternals)._closeFrameReceived ? 'client' : 'server'
    }
    super.close(code, data)
  }

  override terminate (): void {
    if (this.#initiator === null && this.readyState < 2) this.#initiator = 'server'
    super.terminate()
  }

  // ws emits 'message', 'ping', 'pong' and 'close' from inside its receiver and socket
  // callbacks and lets a listener's throw escape to the process, so one bad message would
  // crash the server. Catching here costs one try/catch per event and no closure, and it
  // covers listeners however they were added (on, once, addEventListener, onmessage).
  // Fixed arguments keep the hot path free of a rest array; ws never emits more than two.
  override emit (event: string | symbol, a?: unknown, b?: unknown): boolean {
    const conn = this.#connection
    if (conn === null) return super.emit.apply(this, arguments as unknown as [string, ...unknown[]])
    if (event === 'message') {
      if (!conn.received(a as WebSocket.RawData, b as boolean)) return true
    } else if (event === 'close') {
      if (this.#initiator === null) this.#initiator = 'network'
      conn.onSocketClose(a as number, b as Buffer, this.#initiator)
    }
    try {
      switch (arguments.length) {
        case 1: return super.emit(event)
        case 2: return super.emit(event, a)
        case 3: return super.emit(event, a, b)
        default: return super.emit.apply(this, arguments as unknown as [string, ...unknown[]])
      }
    } catch (err) {
      conn.onListenerError(err, event)
      return true
    }
  }
}
