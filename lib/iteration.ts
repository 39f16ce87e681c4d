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
}

/** One message as the iterator yields it. */
export interface InboundMessage {
  data: WebSocket.RawData
  isBinary: boolean
}

type Result = IteratorResult<InboundMessage, undefined>

/** The bit of Connection's input holds that the iterator uses. */
export const HOLD_ITERATOR = 2

/** The async iterator of one connection's messages: `connection[Symbol.asyncIterator]()`. */
export class MessageIterator implements AsyncIterableIterator<InboundMessage> {
  readonly #connection: IterableConnection
  readonly #queue: InboundMessage[] = []
  #waiting: ((result: Result) => void) | null = null
  #done = false
  #held = false

  constructor (connection: IterableConnection) {
    this.#connection = connection
    const socket = connection.socket
    socket.on('message', this.#onMessage)
    socket.on('close', this.#onClose)
    if (connection.state !== 'open') this.#finish()
  }

  /** The largest number of messages that waited at once; for tests and diagnostics. */
  maxQueued = 0

  readonly #onMessage = (data: WebSocket.RawData, isBinary: boolean): void => {
    if (this.#done) return
    const waiting = this.#waiting
    if (waiting !== null) {
      this.#waiting = null
      waiting({ value: { data, isBinary }, done: false })
      return
    }
    this.#queue.push({ data, isBinary })
    if (this.#queue.length > this.maxQueued) this.maxQueued = this.#queue.length
    if (!this.#held) {
      this.#held = true
      this.#connection.holdInput(HOLD_ITERATOR)
    }
  }

  readonly #onClose = (): void => {
    this.#finish()
  }

  next (): Promise<Result> {
    const message = this.#queue.shift()
    if (message !== undefined) {
      if (this.#queue.length === 0) this.#release()
      return Promise.resolve({ value: message, done: false })
    }
    if (this.#done) return Promise.resolve({ value: undefined, done: true })
    this.#release()
    return new Promise((resolve) => { this.#waiting = resolve })
  }

  /** Ends the loop early (a `break`): stops listening and lets the socket be read again. */
  return (): Promise<Result> {
    this.#queue.length = 0
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

  // Messages still queued are yielded before the loop ends.
  #finish (): void {
    if (this.#done) return
    this.#done = true
    const socket = this.#connection.socket
    socket.removeListener('message', this.#onMessage)
    socket.removeListener('close', this.#onClose)
    this.#release()
    const waiting = this.#waiting
    this.#waiting = null
    waiting?.({ value: undefined, done: true })
  }
}
