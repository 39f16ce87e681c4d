// Private fields of ws and Node the plugin reads. Each access goes through one helper here,
// and test/internals.test.ts fails loudly when a field changes shape in a new version.
import { EventEmitter } from 'node:events'
import WebSocket from 'ws'
import { copyIfSparse } from './shared-deflate'

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

// ---- The `shared` compression profile ---------------------------------------------------
//
// ws's Sender frames and queues every outgoing message of a socket; while it deflates one
// (state DEFLATING) later sends wait in its queue, so messages keep their order. A frame the
// plugin built itself (deflated once for every recipient of a broadcast) takes the same queue:
// sendFrame() writes it as it is, and while the sender is busy it waits in the queue, counted
// in bufferedAmount like ws's own queued sends.

interface SenderPrivate {
  _firstFragment?: boolean
  _state?: number
  _generateMask?: unknown
  _maskBuffer?: unknown
  _socket?: { destroyed?: boolean } | null
  dispatch?: (data: Buffer, compress: boolean, options: object, cb: ((err?: Error) => void) | undefined) => void
  enqueue?: (params: unknown[]) => void
  sendFrame?: (list: Buffer[], cb: ((err?: Error) => void) | undefined) => void
}

const SenderClass = (WebSocket as unknown as { Sender: { prototype: SenderPrivate & { send: (...args: unknown[]) => void } } }).Sender
// ws: the sender's idle state (DEFAULT in sender.js). Stable across ws 8.x.
const SENDER_IDLE = 0

// ws keys a frame's byte length under a Symbol private to sender.js; what its send() hands to
// enqueue() shows it.
function findByteLengthSymbol (): symbol | undefined {
  let captured: object | undefined
  const probe = {
    _extensions: {},
    _firstFragment: true,
    _state: SENDER_IDLE + 1,
    enqueue (params: unknown[]) { captured = params[3] as object },
    dispatch () {}
  }
  try {
    SenderClass.prototype.send.call(probe, Buffer.alloc(1), { binary: true, fin: true, mask: false, compress: false }, undefined)
  } catch {
    return undefined
  }
  return captured === undefined ? undefined : Object.getOwnPropertySymbols(captured).find((s) => s.description === 'kByteLength')
}

const kByteLength = findByteLengthSymbol()

/** Whether this ws can take a message deflated by the plugin ({@link sendDeflated}). */
export const canSendDeflated: boolean = kByteLength !== undefined &&
  typeof SenderClass.prototype.sendFrame === 'function' && typeof SenderClass.prototype.enqueue === 'function'

/**
 * Sends one whole frame the plugin built itself (a server's frame, unmasked: for the shared
 * profile, a message deflated once with RSV1 set), in order with the socket's other sends.
 * @returns false when it could not (ws changed, or an application's fragmented send is open);
 * the caller then sends the message the usual way.
 */
export function sendFrame (ws: WebSocket, frame: Buffer, cb: ((err?: Error) => void) | undefined): boolean {
  const sender = (ws as unknown as { _sender?: SenderPrivate })._sender
  if (!canSendDeflated || sender === undefined || sender._firstFragment !== true || typeof sender._state !== 'number') return false
  const s = sender as Required<SenderPrivate>
  // dequeue() reads the byte count of an entry from its fourth element.
  if (s._state !== SENDER_IDLE) s.enqueue([s.sendFrame, [frame], cb, { [kByteLength as symbol]: frame.length }])
  else s.sendFrame([frame], cb)
  return true
}

type Inflight = (err: Error | null, result?: Buffer) => void
interface DeflatePrivate {
  params?: Record<string, unknown>
  _isServer?: boolean
  _deflate?: { close: () => void } | null
  _inflate?: { close: () => void } | null
  _compress?: (data: unknown, fin: boolean, callback: Inflight) => void
  _decompress?: (data: Buffer, fin: boolean, callback: Inflight) => void
}

/** ws's permessage-deflate extension of a socket, when it was negotiated. */
function deflateOf (ws: WebSocket): DeflatePrivate | undefined {
  const extensions = (ws as unknown as { _extensions?: Record<string, DeflatePrivate> })._extensions
  return extensions?.['permessage-deflate']
}

/**
 * The negotiated server window of a socket whose server side resets its context after every
 * message (server_no_context_takeover): a message deflated alone with this window (or a
 * smaller one) is valid for its peer. -1 when there is no such extension.
 */
export function independentDeflateBits (ws: WebSocket): number {
  const params = deflateOf(ws)?.params
  if (params === undefined || params.server_no_context_takeover !== true) return -1
  const bits = params.server_max_window_bits
  return typeof bits === 'number' ? bits : 15
}

function closeDeflate (extension: DeflatePrivate): void {
  if (extension._deflate == null) return
  extension._deflate.close()
  extension._deflate = null
}

function closeInflate (extension: DeflatePrivate): void {
  if (extension._inflate == null) return
  extension._inflate.close()
  extension._inflate = null
}

let originalCompress: DeflatePrivate['_compress']
let originalDecompress: DeflatePrivate['_decompress']

// With no context takeover a zlib context carries nothing from one message to the next, yet
// ws only resets it and keeps it (~100-300 KiB each) for the connection's life. These free a
// context once its message is done; ws creates a new one when the next message comes.
// A fresh context also means a fresh 16 KiB output chunk per message: a short frame is copied
// out of it, or a peer that stops reading would hold a chunk per queued frame while the
// backpressure policy sees only the frame.
function compressThenFree (this: DeflatePrivate, data: unknown, fin: boolean, callback: Inflight): void {
  const self = this
  ;(originalCompress as NonNullable<DeflatePrivate['_compress']>).call(this, data, fin, fin
    ? (err, result) => { closeDeflate(self); callback(err, result === undefined ? result : copyIfSparse(result)) }
    : callback)
}

function decompressThenFree (this: DeflatePrivate, data: Buffer, fin: boolean, callback: Inflight): void {
  const self = this
  ;(originalDecompress as NonNullable<DeflatePrivate['_decompress']>).call(this, data, fin, fin
    ? (err, result) => { closeInflate(self); callback(err, result) }
    : callback)
}

/**
 * Makes a socket's permessage-deflate free its zlib contexts after each message, for the sides
 * that negotiated no context takeover (the server's deflate, the client's inflate).
 * @returns which sides now free their context; null when the extension or ws's methods were not found.
 */
export function freeDeflateContexts (ws: WebSocket): { deflate: boolean, inflate: boolean } | null {
  const extension = deflateOf(ws)
  if (extension === undefined || extension._isServer !== true || extension.params === undefined) return null
  const proto = Object.getPrototypeOf(extension) as DeflatePrivate
  if (typeof proto._compress !== 'function' || typeof proto._decompress !== 'function') return null
  originalCompress ??= proto._compress
  originalDecompress ??= proto._decompress
  const deflate = extension.params.server_no_context_takeover === true
  const inflate = extension.params.client_no_context_takeover === true
  if (deflate) extension._compress = compressThenFree
  if (inflate) extension._decompress = decompressThenFree
  return { deflate, inflate }
}

/** Whether the socket holds a zlib context now (for tests and the bench). */
export function deflateContexts (ws: WebSocket): { deflate: boolean, inflate: boolean } {
  const extension = deflateOf(ws)
  return { deflate: extension?._deflate != null, inflate: extension?._inflate != null }
}
