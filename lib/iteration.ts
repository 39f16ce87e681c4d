// `for await (const message of connection)`: messages with inbound backpressure. While the
// consumer is busy with one message, the next ones wait here and the socket is not read (ws's
// pause()), so a slow consumer slows its client instead of queuing without limit. What ws had
// already read when the pause began (at most one socket read) still arrives and waits here.
import type WebSocket from 'ws'

/** What the iterator needs of a connection (lib/connection.ts). */
export interface IterableConnection {
  readonly socket: WebSocket
  readonly state: 'open' | 'closing' | 'closed'
  holdInput (reason: number): void
  releaseInput (reason: number): void
  /** Closes with 1013 "Slow consumer": the queue passed its bound. */
  overflowed (queuedBytes: number): void
}

/** One message as the iterator yields it. */
export interface InboundMessage {
  data: WebSocket.RawData
  isBinary: boolean
}

type Result = IteratorResult<InboundMessage, undefined>

/** The reason the iterator gives Connection's holdInput. */
export const HOLD_ITERATOR = 2

function sizeOf (data: WebSocket.RawData): number {
  if (Array.isArray(data)) {
    let n = 0
    for (const chunk of data) n += chunk.length
    return n
  }
  return data.byteLength
}

/** The async iterator of one connection's messages: `connection[Symbol.asyncIterator]()`. */
export class MessageIterator implements AsyncIterableIterator<InboundMessage> {
  readonly #connection: IterableConnection
  readonly #maxBytes: number
  readonly #queue: InboundMessage[] = []
  readonly #waiting: Array<(result: Result) => void> = []
  #queuedBytes = 0
  #done = false
  #held = false

  /**
   * @param maxBytes bytes that may wait (the route's `backpressure.maxQueued`); past it, with
   * more than one message waiting, the connection is closed with 1013. What ws had read before
   * the pause still arrives, and inflated it can be far larger than what it cost on the wire.
   */
  constructor (connection: IterableConnection, maxBytes: number) {
    this.#connection = connection
    this.#maxBytes = maxBytes
    const socket = connection.socket
    socket.on('message', this.#onMessage)
    socket.on('close', this.#onClose)
    if (connection.state !== 'open') this.#finish()
  }

  /** The largest number of messages that waited at once; for tests and diagnostics. */
  maxQueued = 0

  readonly #onMessage = (data: WebSocket.RawData, isBinary: boolean): void => {
    if (this.#done) return
    const waiting = this.#waiting.shift()
    if (waiting !== undefined) {
      waiting({ value: { data, isBinary }, done: false })
      return
    }
    this.#queue.push({ data, isBinary })
    this.#queuedBytes += sizeOf(data)
    if (this.#queue.length > this.maxQueued) this.maxQueued = this.#queue.length
    if (this.#queuedBytes > this.#maxBytes && this.#queue.length > 1) {
      this.#connection.overflowed(this.#queuedBytes)
      this.#finish()
      return
    }
    if (!this.#held) {
      this.#held = true
      this.#connection.holdInput(HOLD_ITERATOR)
    }
  }

  readonly #onClose = (): void => {
    this.#finish()
  }

  next (): Promise<Result> {
    // Once a close began, what still waits is not handed over (an expired or revoked user).
    if (this.#connection.state !== 'open') this.#finish()
    const message = this.#queue.shift()
    if (message !== undefined) {
      this.#queuedBytes -= sizeOf(message.data)
      if (this.#queue.length === 0) this.#release()
      return Promise.resolve({ value: message, done: false })
    }
    if (this.#done) return Promise.resolve({ value: undefined, done: true })
    this.#release()
    return new Promise((resolve) => { this.#waiting.push(resolve) })
  }

  /** Ends the loop early (a `break`): stops listening and lets the socket be read again. */
  return (): Promise<Result> {
    this.#finish()
    return Promise.resolve({ value: undefined, done: true })
  }

  [Symbol.asyncIterator] (): this {
    return this
  }

  #release (): void {
    if (!this.#held) return
    this.#held = false
    this.#connection.releaseInput(HOLD_ITERATOR)
  }

  #finish (): void {
    this.#queue.length = 0
    this.#queuedBytes = 0
    if (this.#done) return
    this.#done = true
    const socket = this.#connection.socket
    socket.removeListener('message', this.#onMessage)
    socket.removeListener('close', this.#onClose)
    this.#release()
    for (const waiting of this.#waiting.splice(0)) waiting({ value: undefined, done: true })
  }
}
