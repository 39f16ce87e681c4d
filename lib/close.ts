// Graceful close: the close handshake with RFC 6455 codes, bounded by a timeout after which
// the peer is terminated. A managed connection owns its own close state (lib/connection.ts);
// GracefulCloseManager asks it to close and keeps the counters. Sockets the plugin does not
// manage (the seed's standalone use) are closed here directly.
import type WebSocket from 'ws'
import { CloseCode, errors, isSendableCloseCode } from './errors'
import { kCloseOwner } from './symbols'
import { checkInt, checkString, fail, section } from './validate'

/** How connections are closed, on demand and on shutdown. */
export interface CloseOptions {
  /**
   * Milliseconds to wait for the peer's close frame before the socket is terminated.
   * Also ws's own closeTimeout, so closes that ws starts (protocol errors) are bounded too.
   * Env CLOSE_TIMEOUT.
   * @default 5000
   */
  timeout: number
  /**
   * Close code every open connection gets when the application closes.
   * Use 1012 (service restart) for deploys, so clients reconnect at once.
   * Env SHUTDOWN_CLOSE_CODE.
   * @default 1001
   */
  shutdownCode: number
  /**
   * Close reason sent with `shutdownCode` (cut to 123 bytes).
   * @default 'Server shutting down'
   */
  shutdownReason: string
}

/** The defaults of {@link CloseOptions}. */
export const CLOSE_DEFAULTS: Readonly<CloseOptions> = Object.freeze({
  timeout: 5000,
  shutdownCode: 1001,
  shutdownReason: 'Server shutting down'
})

/** The longest close timeout, option or per call: ten minutes. */
export const MAX_CLOSE_TIMEOUT = 600_000

/**
 * Validates the `close` option over {@link CLOSE_DEFAULTS}.
 * @throws FST_WSM_OPTION_INVALID naming `close.<option>`.
 */
export function resolveClose (input: unknown): CloseOptions {
  const close = section('close', input, ['timeout', 'shutdownCode', 'shutdownReason'])
  const shutdownCode = close.shutdownCode ?? CLOSE_DEFAULTS.shutdownCode
  if (!isSendableCloseCode(shutdownCode)) {
    fail('close.shutdownCode', `expected a close code from 1000-1003, 1007-1014 or 3000-4999, got ${JSON.stringify(shutdownCode)}`)
  }
  return {
    timeout: checkInt('close.timeout', close.timeout ?? CLOSE_DEFAULTS.timeout, 1, MAX_CLOSE_TIMEOUT),
    shutdownCode,
    shutdownReason: checkString('close.shutdownReason', close.shutdownReason ?? CLOSE_DEFAULTS.shutdownReason)
  }
}

/** What one close asks for. */
export interface CloseRequest {
  /** Close code to send. @default 1000 */
  code?: number
  /** Close reason; longer than 123 UTF-8 bytes is cut at a character boundary. @default '' */
  reason?: string
  /** Milliseconds (1 to 600000) to wait for the peer's close frame before terminating. @default the manager's timeout */
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

/** A close request after validation. */
export interface CheckedClose {
  code: number
  reason: string
  timeout: number
}

/**
 * Validates a close request; returns the error rather than throwing, so that every API that
 * closes can reject its promise with it before touching any state.
 */
export function checkCloseRequest (code: unknown, reason: unknown, timeout: unknown, defaultTimeout: number): CheckedClose | Error {
  if (!isSendableCloseCode(code)) return new errors.FST_WSM_CLOSE_CODE_INVALID(String(code))
  if (reason !== undefined && typeof reason !== 'string') {
    return new errors.FST_WSM_ARGUMENT_INVALID('reason', `expected a string, got ${typeof reason}`)
  }
  if (timeout !== undefined && (typeof timeout !== 'number' || !Number.isInteger(timeout) || timeout < 1 || timeout > MAX_CLOSE_TIMEOUT)) {
    return new errors.FST_WSM_ARGUMENT_INVALID('timeout', `expected an integer from 1 to ${MAX_CLOSE_TIMEOUT} ms, got ${String(timeout)}`)
  }
  return { code, reason: truncateReason(reason ?? ''), timeout: timeout ?? defaultTimeout }
}

/** Counters of a {@link GracefulCloseManager}. */
export interface CloseStats {
  /** Closes under way now. */
  closing: number
  /** Closes finished with a close handshake. */
  clean: number
  /** Closes that ended in terminate() (peer silent past the timeout, or known dead) or a lost socket. */
  forced: number
}

/** Options of a {@link GracefulCloseManager}. */
export interface GracefulCloseManagerOptions {
  /** Milliseconds (1 to 600000) to wait for the peer's close frame. @default 5000 */
  timeout?: number
}

/** What owns the close of a socket it manages; the plugin's connections do. */
export interface CloseOwner {
  close (code?: number, reason?: string, timeout?: number): Promise<CloseResult>
}

const MAX_REASON_BYTES = 123
/**
 * After terminate(), ws emits 'close' once the TCP socket is destroyed; this bounds the wait
 * for streams that never report it (injected sockets), so a close can never hang.
 */
export const TERMINATE_GRACE_MS = 500

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

function ownerOf (ws: WebSocket): CloseOwner | null {
  return (ws as unknown as { [kCloseOwner]?: () => CloseOwner | null })[kCloseOwner]?.() ?? null
}

/**
 * Closes WebSockets with a proper close handshake: it sends a close frame with the code,
 * waits for the peer's close frame up to a timeout, then terminates. A socket of a managed
 * connection is closed by its connection, which reports back here; any other `ws` socket is
 * closed here.
 */
export class GracefulCloseManager {
  readonly #timeout: number
  readonly #pending = new Map<WebSocket, Promise<CloseResult>>()
  #owned = 0
  #clean = 0
  #forced = 0

  /** @throws FST_WSM_OPTION_INVALID when the timeout is not an integer from 1 to 600000. */
  constructor (options: GracefulCloseManagerOptions = {}) {
    this.#timeout = checkInt('timeout', options.timeout ?? CLOSE_DEFAULTS.timeout, 1, MAX_CLOSE_TIMEOUT)
  }

  /** The default close timeout in milliseconds. */
  get timeout (): number {
    return this.#timeout
  }

  /** Closes with 1000 (normal closure). Kept from the seed's API. */
  closeNormal (ws: WebSocket, reason = 'Normal closure'): Promise<CloseResult> {
    return this.close(ws, { code: CloseCode.NORMAL, reason })
  }

  /** Closes with 1001 (going away), as on shutdown. Kept from the seed's API. */
  closeGoingAway (ws: WebSocket, reason = 'Going away'): Promise<CloseResult> {
    return this.close(ws, { code: CloseCode.GOING_AWAY, reason })
  }

  /** Closes with 1011 (internal error). Kept from the seed's API. */
  closeInternalError (ws: WebSocket, reason = 'Internal error'): Promise<CloseResult> {
    return this.close(ws, { code: CloseCode.INTERNAL_ERROR, reason })
  }

  /**
   * Closes one socket. A second call for a socket already closing returns the first call's
   * promise. Resolves at once for a socket that is already closed.
   * Rejects, and changes nothing, on a bad request: FST_WSM_CLOSE_CODE_INVALID for a code
   * RFC 6455 forbids, FST_WSM_ARGUMENT_INVALID for a reason that is not a string or a timeout
   * out of range.
   */
  close (ws: WebSocket, request: CloseRequest = {}): Promise<CloseResult> {
    const owner = ownerOf(ws)
    if (owner !== null) return owner.close(request.code ?? CloseCode.NORMAL, request.reason, request.timeout)
    const checked = checkCloseRequest(request.code ?? CloseCode.NORMAL, request.reason, request.timeout, this.#timeout)
    if (checked instanceof Error) return Promise.reject(checked)
    const pending = this.#pending.get(ws)
    if (pending !== undefined) return pending
    if (ws.readyState === ws.CLOSED) {
      return Promise.resolve({ code: checked.code, reason: checked.reason, clean: false, durationMs: 0 })
    }
    const promise = this.#closeUnowned(ws, checked)
    this.#pending.set(ws, promise)
    return promise
  }

  #closeUnowned (ws: WebSocket, { code, reason, timeout }: CheckedClose): Promise<CloseResult> {
    const started = performance.now()
    return new Promise<CloseResult>((resolve) => {
      let terminated = false
      let timer: NodeJS.Timeout | undefined
      const finish = (peerCode: number | null): void => {
        clearTimeout(timer)
        ws.removeListener('close', onClose)
        this.#pending.delete(ws)
        const clean = !terminated && peerCode !== 1006
        this.#count(clean)
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
  }

  /**
   * Closes every socket in parallel; resolves when all are closed, within the timeout plus
   * a fraction of a second even when every peer is silent. Rejects on a bad request before
   * closing any.
   */
  closeAll (sockets: Iterable<WebSocket>, request: CloseRequest = {}): Promise<CloseResult[]> {
    const checked = checkCloseRequest(request.code ?? CloseCode.NORMAL, request.reason, request.timeout, this.#timeout)
    if (checked instanceof Error) return Promise.reject(checked)
    const all: Promise<CloseResult>[] = []
    for (const ws of sockets) all.push(this.close(ws, request))
    return Promise.all(all)
  }

  /** Whether a close of this socket is under way (by this manager, its connection or ws itself). */
  isClosing (ws: WebSocket): boolean {
    return this.#pending.has(ws) || ws.readyState === ws.CLOSING
  }

  /** How many closes this manager has under way. */
  getClosingCount (): number {
    return this.#pending.size + this.#owned
  }

  /** A snapshot of the counters. */
  getStats (): CloseStats {
    return { closing: this.#pending.size + this.#owned, clean: this.#clean, forced: this.#forced }
  }

  /** @internal A connection started closing its socket. */
  began (): void {
    this.#owned++
  }

  /** @internal A close begun with {@link began} finished. */
  finished (clean: boolean): void {
    this.#owned--
    this.#count(clean)
  }

  #count (clean: boolean): void {
    if (clean) this.#clean++
    else this.#forced++
  }
}
