import type WebSocket from 'ws'
import { CloseCode, errors, isSendableCloseCode } from './errors'
import { DEFAULTS } from './options'

/** What one close asks for. */
export interface CloseRequest {
  /** Close code to send. @default 1000 */
  code?: number
  /** Close reason; longer than 123 UTF-8 bytes is cut at a character boundary. @default '' */
  reason?: string
  /** Milliseconds to wait for the peer's close frame before terminating. @default the manager's timeout */
  timeout?: number
}

/** How one close ended. */
export interface CloseResult {
  /** The code that was sent (or the code the peer closed with, where it closed first). */
  code: number
  /** The reason that was sent, after cutting. */
  reason: string
  /** True when the close handshake finished; false when the socket had to be terminated or was lost. */
  clean: boolean
  /** Milliseconds from the call to the socket being closed. */
  durationMs: number
}

/** Counters of a {@link GracefulCloseManager}. */
export interface CloseStats {
  /** Closes under way now. */
  closing: number
  /** Closes finished with a close handshake. */
  clean: number
  /** Closes that ended in terminate() (peer silent past the timeout) or a lost socket. */
  forced: number
}

/** Options of a {@link GracefulCloseManager}. */
export interface GracefulCloseManagerOptions {
  /** Milliseconds to wait for the peer's close frame. @default 5000 */
  timeout?: number
}

const MAX_REASON_BYTES = 123
// After terminate(), ws emits 'close' once the TCP socket is destroyed; this bounds the wait
// for streams that never report it (injected sockets), so a close can never hang.
const TERMINATE_GRACE_MS = 500

/**
 * Cuts a close reason to the 123 bytes RFC 6455 allows, never in the middle of a UTF-8
 * sequence: a cut character would make the peer fail the close with 1007.
 */
export function truncateReason (reason: string): string {
  if (reason.length * 3 <= MAX_REASON_BYTES) return reason
  const bytes = Buffer.from(reason, 'utf8')
  if (bytes.length <= MAX_REASON_BYTES) return reason
  let end = MAX_REASON_BYTES
  // Step back over continuation bytes (10xxxxxx) to the start of the cut character.
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--
  return bytes.subarray(0, end).toString('utf8')
}

interface PendingClose {
  promise: Promise<CloseResult>
}

/**
 * Closes WebSockets with a proper close handshake: it sends a close frame with the code,
 * waits for the peer's close frame up to a timeout, then terminates. Works on any `ws`
 * socket, managed by the plugin or not.
 */
export class GracefulCloseManager {
  readonly #timeout: number
  readonly #pending = new Map<WebSocket, PendingClose>()
  #clean = 0
  #forced = 0

  /** @throws FST_WSM_OPTION_INVALID when the timeout is not a positive integer. */
  constructor (options: GracefulCloseManagerOptions = {}) {
    const timeout = options.timeout ?? DEFAULTS.close.timeout
    if (!Number.isInteger(timeout) || timeout < 1) {
      throw new errors.FST_WSM_OPTION_INVALID('timeout', `expected a positive integer, got ${JSON.stringify(timeout)}`)
    }
    this.#timeout = timeout
  }

  /** The default close timeout in milliseconds. */
  get timeout (): number {
    return this.#timeout
  }

  /** Closes with 1000 (normal closure). */
  closeNormal (ws: WebSocket, reason = 'Normal closure'): Promise<CloseResult> {
    return this.close(ws, { code: CloseCode.NORMAL, reason })
  }

  /** Closes with 1001 (going away), as on shutdown. */
  closeGoingAway (ws: WebSocket, reason = 'Going away'): Promise<CloseResult> {
    return this.close(ws, { code: CloseCode.GOING_AWAY, reason })
  }

  /** Closes with 1011 (internal error). */
  closeInternalError (ws: WebSocket, reason = 'Internal error'): Promise<CloseResult> {
    return this.close(ws, { code: CloseCode.INTERNAL_ERROR, reason })
  }

  /**
   * Closes one socket. A second call for a socket already closing returns the first call's
   * promise. Never rejects for a socket that is already closed; it resolves at once.
   * @throws FST_WSM_CLOSE_CODE_INVALID (as a rejection) for a code RFC 6455 forbids.
   */
  close (ws: WebSocket, request: CloseRequest = {}): Promise<CloseResult> {
    const code = request.code ?? CloseCode.NORMAL
    if (!isSendableCloseCode(code)) {
      return Promise.reject(new errors.FST_WSM_CLOSE_CODE_INVALID(String(code)))
    }
    const pending = this.#pending.get(ws)
    if (pending !== undefined) return pending.promise

    const reason = truncateReason(request.reason ?? '')
    const timeout = request.timeout ?? this.#timeout
    const started = performance.now()

    if (ws.readyState === ws.CLOSED) {
      return Promise.resolve({ code, reason, clean: false, durationMs: 0 })
    }

    const promise = new Promise<CloseResult>((resolve) => {
      let terminated = false
      let timer: NodeJS.Timeout | undefined
      const finish = (peerCode: number | null): void => {
        clearTimeout(timer)
        ws.removeListener('close', onClose)
        this.#pending.delete(ws)
        const clean = !terminated && peerCode !== 1006
        if (clean) this.#clean++
        else this.#forced++
        resolve({ code, reason, clean, durationMs: Math.round(performance.now() - started) })
      }
      const onClose = (peerCode: number): void => finish(peerCode)
      ws.on('close', onClose)
      timer = setTimeout(() => {
        terminated = true
        ws.terminate()
        timer = setTimeout(finish, TERMINATE_GRACE_MS, null)
      }, timeout)

      if (ws.readyState === ws.CONNECTING) {
        // A close frame cannot be sent before the handshake; ws would abort the upgrade.
        terminated = true
        ws.terminate()
      } else if (ws.readyState === ws.OPEN) {
        ws.close(code, reason)
      }
      // CLOSING: our close frame (or the peer's) is already out; wait for the end as usual.
    })
    this.#pending.set(ws, { promise })
    return promise
  }

  /**
   * Closes every socket in parallel; resolves when all are closed, within the timeout plus
   * a fraction of a second even when every peer is silent.
   */
  closeAll (sockets: Iterable<WebSocket>, request: CloseRequest = {}): Promise<CloseResult[]> {
    const all: Promise<CloseResult>[] = []
    for (const ws of sockets) all.push(this.close(ws, request))
    return Promise.all(all)
  }

  /** Whether a close of this socket is under way (by this manager or by ws itself). */
  isClosing (ws: WebSocket): boolean {
    return this.#pending.has(ws) || ws.readyState === ws.CLOSING
  }

  /** How many closes this manager has under way. */
  getClosingCount (): number {
    return this.#pending.size
  }

  /** A snapshot of the counters. */
  getStats (): CloseStats {
    return { closing: this.#pending.size, clean: this.#clean, forced: this.#forced }
  }
}
