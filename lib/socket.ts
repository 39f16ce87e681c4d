import type { Duplex } from 'node:stream'
import WebSocket from 'ws'
import type { CloseInitiator, Connection, ManagedSocket } from './connection'
import { captureRejections, closeFrameReceived, guardReceiver } from './internals'
import { kAttach, kCloseOwner, kSocketClose, kSocketSend, kSocketTerminate } from './symbols'

type SendCallback = (err?: Error) => void
interface SendOptions {
  mask?: boolean
  binary?: boolean
  compress?: boolean
  fin?: boolean
}

function noop (): void {}

/**
 * The socket class the plugin's WebSocketServer builds (ws's `WebSocket` server option).
 * Subclassing rather than wrapping keeps the application's own `socket.send()`,
 * `socket.close()` and `socket.on('message')` under the connection's accounting, with no
 * extra object or closure per message.
 */
export class ManagedWebSocket extends WebSocket implements ManagedSocket {
  #connection: Connection | null
  #initiator: CloseInitiator | null
  #sentCode: number | null

  /** The managed connection this socket belongs to, once the route handler runs. */
  get connection (): Connection | null {
    return this.#connection
  }

  /** Who started the close, or null while the socket is open. */
  get closeInitiator (): CloseInitiator | null {
    return this.#initiator
  }

  /** The code of the close frame this side sent (1005 for one without a code), or null before any. */
  get sentCloseCode (): number | null {
    return this.#sentCode
  }

  // ws's server calls this once per socket when the upgrade completes; not in ws's typings.
  setSocket (socket: Duplex, head: Buffer, options: object): void {
    (WebSocket.prototype as unknown as { setSocket: (s: Duplex, h: Buffer, o: object) => void }).setSocket.call(this, socket, head, options)
    guardReceiver(this)
  }

  [kAttach] (connection: Connection): void {
    this.#connection = connection
  }

  [kCloseOwner] (): Connection | null {
    return this.#connection
  }

  // An async listener (`socket.on('message', async (data) => ...)`) rejects where emit()
  // cannot catch it, and an unhandled rejection ends the process. Node's EventEmitter watches
  // the promises listeners return when captureRejections is on, and hands a rejection to
  // Symbol.for('nodejs.rejection'): no wrapper per listener, one null check per emit.
  constructor (...args: ConstructorParameters<typeof WebSocket>) {
    super(...args)
    captureRejections(this)
    this.#connection = null
    this.#initiator = null
    this.#sentCode = null
  }

  [Symbol.for('nodejs.rejection')] (err: unknown, event: string | symbol): void {
    const conn = this.#connection
    if (conn !== null) conn.onListenerError(err, event)
    else this.terminate()
  }

  // The application's own socket.send() takes the connection's path too: counted, under
  // the backpressure policy and the compression threshold.
  override send (data: WebSocket.Data, options?: SendOptions | SendCallback, cb?: SendCallback): void {
    const conn = this.#connection
    if (conn === null) super.send(data, options as SendOptions, cb)
    else conn.write(data, options, cb)
  }

  [kSocketSend] (data: WebSocket.Data, options: SendOptions | undefined, cb: SendCallback | undefined): void {
    super.send(data, options as SendOptions, cb)
  }

  // The application's socket.close() and terminate() tell the connection, which owns the
  // close state; ws validates the code first, and throws before anything changed.
  override close (code?: number, data?: string | Buffer): void {
    this[kSocketClose](code, data)
    this.#connection?.closedBySocket()
  }

  [kSocketClose] (code?: number, data?: string | Buffer): void {
    const open = this.readyState < 2
    super.close(code, data)
    if (open && this.#initiator === null) this.#initiator = closeFrameReceived(this) ? 'client' : 'server'
    if (open && this.#sentCode === null) this.#sentCode = code ?? 1005
  }

  override terminate (): void {
    this[kSocketTerminate]()
    this.#connection?.closedBySocket()
  }

  [kSocketTerminate] (): void {
    if (this.#initiator === null && this.readyState < 2) this.#initiator = 'server'
    super.terminate()
  }

  // ws emits 'message', 'ping', 'pong' and 'close' from inside its receiver and socket
  // callbacks and lets a listener's throw escape to the process, so one bad message would
  // crash the server. Catching here costs one try/catch per event and no closure, and it
  // covers listeners however they were added (on, once, addEventListener, onmessage).
  // The connection hears of a message, a ping and the close before any listener, so no
  // listener can keep it from counting, limiting or finishing the close.
  // Fixed arguments keep the hot path free of a rest array; ws never emits more than two.
  override emit (event: string | symbol, a?: unknown, b?: unknown): boolean {
    const conn = this.#connection
    if (conn === null) {
      // The server's autoPong is off, so pings before the handler runs are answered here.
      if (event === 'ping') this.pong(a as Buffer, false, noop)
      return super.emit.apply(this, arguments as unknown as [string, ...unknown[]])
    }
    try {
      if (event === 'message') {
        if (!conn.received(a as WebSocket.RawData, b as boolean)) return true
      } else if (event === 'ping') {
        if (conn.pinged()) this.pong(a as Buffer, false, noop)
      } else if (event === 'close') {
        if (this.#initiator === null) this.#initiator = 'network'
        // The close reaches the listeners (ws's server tracking among them) whatever happens
        // in the connection's own bookkeeping: a missed 'close' would hang app.close().
        try {
          conn.onSocketClose(a as number, b as Buffer, this.#initiator)
        } catch (err) {
          conn.onListenerError(err, event)
        }
      }
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
