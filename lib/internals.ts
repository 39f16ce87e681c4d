// Private fields of ws and Node the plugin reads. Each access goes through one helper here,
// and test/internals.test.ts fails loudly when a field changes shape in a new version.
import { EventEmitter } from 'node:events'
import WebSocket from 'ws'

/** The transport under a ws socket: a net.Socket (or tls.TLSSocket), a Duplex for injectWS(). */
export interface Transport extends NodeJS.EventEmitter {
  readonly bytesWritten?: number
  readonly bytesRead?: number
  _httpMessage?: { detachSocket?: (socket: unknown) => void } | null
}

interface WsPrivate {
  // ws: the socket it reads and writes. Stable across ws 8.x.
  _socket?: Transport | null
  // ws: set when the peer's close frame arrives. Stable across ws 8.x.
  _closeFrameReceived?: boolean
}

/** ws's `_socket`: the TCP socket of a WebSocket, or null once ws let go of it. */
export function transportOf (ws: WebSocket): Transport | null {
  return (ws as unknown as WsPrivate)._socket ?? null
}

/** ws's `_closeFrameReceived`: whether the peer's close frame arrived (the peer started the close). */
export function closeFrameReceived (ws: WebSocket): boolean {
  return (ws as unknown as WsPrivate)._closeFrameReceived === true
}

/**
 * Node's `_httpMessage`: @fastify/websocket assigns a ServerResponse to the upgraded TCP
 * socket, and the socket would keep that response (and its request) alive as long as the
 * connection. Detaching it is what the response would do at its own end.
 * @returns whether a response was attached and detached.
 */
export function detachHttpResponse (ws: WebSocket): boolean {
  const transport = transportOf(ws)
  const response = transport?._httpMessage
  if (response === undefined || response === null || typeof response.detachSocket !== 'function') return false
  response.detachSocket(transport)
  return true
}

interface ReceiverPrivate {
  // ws: true once the receiver reported an error (it then closes the connection).
  _errored?: boolean
  _write?: (chunk: Buffer, encoding: BufferEncoding, cb: (err?: Error | null) => void) => void
}

const ReceiverClass = (WebSocket as unknown as { Receiver: { prototype: ReceiverPrivate } }).Receiver
const receiverWrite = ReceiverClass.prototype._write

// Found by fuzzing (test/fuzz.test.ts): while ws inflates a compressed message, later socket
// reads queue up in the receiver's stream. When the connection then fails (invalid UTF-8 in the
// next frame), the stream still hands the receiver what was queued, and ws 8.23's receiver,
// which has already released the frame's mask, throws out of a zlib callback: the process
// dies. A receiver that has failed reads nothing more. One shared function, no closure per
// socket.
function guardedWrite (this: ReceiverPrivate, chunk: Buffer, encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
  if (this._errored === true) {
    cb()
    return
  }
  ;(receiverWrite as NonNullable<ReceiverPrivate['_write']>).call(this, chunk, encoding, cb)
}

/**
 * ws's `_receiver`: makes the socket's receiver ignore data once it has failed.
 * @returns whether the receiver was found and guarded.
 */
export function guardReceiver (ws: WebSocket): boolean {
  const receiver = (ws as unknown as { _receiver?: ReceiverPrivate })._receiver
  if (receiver === undefined || typeof receiverWrite !== 'function' || typeof receiver._errored !== 'boolean') return false
  receiver._write = guardedWrite
  return true
}

// Node's EventEmitter keeps its captureRejections flag in an own property under a Symbol it
// does not export (`kCapture`); an emitter made with the option shows which one it is.
const kCapture: symbol | undefined = Object.getOwnPropertySymbols(new EventEmitter({ captureRejections: true }))
  .find((symbol) => symbol.description === 'kCapture')

/**
 * Turns on captureRejections for one emitter, as `new EventEmitter({ captureRejections: true })`
 * would: the promises its listeners return are watched, and a rejection goes to its
 * `Symbol.for('nodejs.rejection')` method. Nothing global changes.
 * @returns whether Node's flag was found and set.
 */
export function captureRejections (emitter: EventEmitter): boolean {
  if (kCapture === undefined) return false
  ;(emitter as unknown as Record<symbol, boolean>)[kCapture] = true
  return true
}
