// The inbound pipeline: what runs for every data message and ping a connection receives,
// in order: message-size accounting, compression statistics, the sender's rate limit, then
// the route's JSON router. One object per route, built at route registration.
import type WebSocket from 'ws'
import type { CompressionManager } from './compression'
import type { Connection, HookRunner, MessageHook } from './connection'
import { channels } from './diagnostics'
import { CloseCode } from './errors'
import type { FrameSizeValidator } from './frame-size'
import type { Bucket, MessageRateLimiter } from './message-limits'
import type { MessageRouter } from './router'

function noop (): void {}

const PAUSE_MS = 1000
const MAX_POLICY_CLOSE_MS = 1000

/** The message hook of one route. */
export class InboundPipeline implements MessageHook {
  readonly #frames: FrameSizeValidator
  readonly #compression: CompressionManager | null
  readonly #limiter: MessageRateLimiter | null
  readonly #router: MessageRouter | null
  readonly #closeTimeout: number
  readonly #hooks: HookRunner

  constructor (frames: FrameSizeValidator, compression: CompressionManager | null, limiter: MessageRateLimiter | null,
    router: MessageRouter | null, closeTimeout: number, hooks: HookRunner) {
    this.#closeTimeout = closeTimeout
    this.#hooks = hooks
    this.#frames = frames
    this.#compression = compression
    this.#limiter = limiter
    this.#router = router
  }

  onMessage (connection: Connection, data: WebSocket.RawData, isBinary: boolean, size: number): boolean {
    if (this.#compression !== null && connection.compressing) this.#compression.recordReceived(connection.socket, size)
    if (!this.#allowed(connection, connection.lastActivityAt)) return false
    // After the rate check, so a flood cannot turn into a flood of size warnings.
    this.#frames.observe(size, connection.userId, connection.id)
    if (channels.message.hasSubscribers) channels.message.publish({ connection, data, isBinary })
    if (this.#hooks.has('onMessage')) {
      // A throw is the socket emit's to contain (1011); a rejection is handled here the same way.
      this.#hooks.run('onMessage', [connection, data, isBinary])?.then(undefined, (err: unknown) => connection.fail(err, 'hook:onMessage'))
      if (connection.state !== 'open') return false
    }
    return this.#router === null || this.#router.onMessage(connection, data, isBinary)
  }

  // A ping costs the server a pong: it comes out of the same budget as a message, or a client
  // could make the server answer thousands of pings a second.
  onPing (connection: Connection): boolean {
    return this.#allowed(connection, Date.now())
  }

  #allowed (connection: Connection, now: number): boolean {
    const bucket = connection.rateBucket
    if (this.#limiter === null || bucket === null || this.#limiter.take(bucket, now)) return true
    this.#overLimit(connection, bucket)
    return false
  }

  #overLimit (connection: Connection, bucket: Bucket): void {
    const limiter = this.#limiter as MessageRateLimiter
    const first = !bucket.limited
    bucket.limited = true
    if (limiter.options.policy === 'drop') {
      if (first) connection.log.warn({ policy: 'drop' }, 'message rate limit exceeded')
      // Stop reading for a second (well inside any heartbeat bound): what arrives meanwhile
      // would be dropped anyway, and a flood then costs the server one socket read of parsing
      // and inflating per second rather than all it can send.
      connection.pauseInput(PAUSE_MS)
      return
    }
    if (connection.state === 'open') {
      connection.log.warn({ policy: 'close' }, 'message rate limit exceeded')
      // A short wait for the close handshake: the peer is flooding, and whatever it sends
      // until the socket ends is read and thrown away.
      connection.close(CloseCode.POLICY_VIOLATION, 'Rate limit exceeded', Math.min(MAX_POLICY_CLOSE_MS, this.#closeTimeout)).catch(noop)
    }
  }
}
