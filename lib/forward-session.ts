// One forwarding session: a managed WebSocket bridged to an upstream byte stream (a TCP
// socket, or an SSH channel), with backpressure both ways, limits, counters and one audit
// line at the end. The handlers that open sessions are in lib/forward.ts.
import type { Duplex } from 'node:stream'
import type WebSocket from 'ws'
import { CloseCode } from './errors'
import { HOLD_UPSTREAM, type Connection } from './connection'
import { checkInt, fail, section } from './validate'

/** The three kinds of session, as counted and logged. */
export type ForwardKind = 'terminal' | 'tcp' | 'ssh-tunnel'

/** Limits every forwarding handler takes. */
export interface SessionLimits {
  /**
   * Sessions one user (one IP without auth) may have open through this handler on this
   * process; over it the new one is closed with 1008 "Too many sessions". 0 means no limit.
   * @default 5
   */
  maxSessionsPerUser?: number
  /** Milliseconds a session may last; then 1000 "Session time limit". 0 means no limit. @default 28800000 (8 h) */
  maxSessionDuration?: number
  /**
   * Milliseconds without a byte either way after which the session is closed with 1001
   * "Idle timeout". 0 turns it off. (The route's own `idleTimeout` applies too: set it to 0 on
   * forwarding routes to leave this one in charge.)
   * @default 1800000 (30 min)
   */
  idleTimeout?: number
}

/** Limits after validation. */
export interface ResolvedLimits {
  maxSessionsPerUser: number
  maxSessionDuration: number
  idleTimeout: number
}

/** The defaults of {@link SessionLimits}. */
export const SESSION_DEFAULTS: Readonly<ResolvedLimits> = Object.freeze({ maxSessionsPerUser: 5, maxSessionDuration: 28_800_000, idleTimeout: 1_800_000 })

const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$/

/** `host:port` (IPv6 in brackets), lower-cased, as allowlists hold it. */
export function targetKey (host: string, port: number): string {
  const h = host.toLowerCase()
  return `${h.includes(':') && !h.startsWith('[') ? `[${h}]` : h}:${port}`
}

/** Validates an allowlist of `host:port` strings; an empty or missing one is refused. */
export function resolveAllowlist (name: string, input: unknown): ReadonlySet<string> {
  if (!Array.isArray(input) || input.length === 0) fail(name, 'expected a non-empty array of "host:port" strings: the handler never connects where the list does not say')
  const out = new Set<string>()
  for (const entry of input) {
    const match = typeof entry === 'string' ? HOST_PORT.exec(entry) : null
    const port = match === null ? NaN : Number(match[2])
    if (match === null || port < 1 || port > 65535) fail(name, `expected "host:port" strings (IPv6 as [::1]:22), got ${JSON.stringify(entry)}`)
    out.add(entry.toLowerCase())
  }
  return out
}

/** Validates the limits of a handler's options. */
export function resolveLimits (name: string, given: Record<string, unknown>): ResolvedLimits {
  return {
    maxSessionsPerUser: checkInt(`${name}.maxSessionsPerUser`, given.maxSessionsPerUser ?? SESSION_DEFAULTS.maxSessionsPerUser, 0, 1_000_000),
    maxSessionDuration: checkInt(`${name}.maxSessionDuration`, given.maxSessionDuration ?? SESSION_DEFAULTS.maxSessionDuration, 0, 2_147_483_647),
    idleTimeout: checkInt(`${name}.idleTimeout`, given.idleTimeout ?? SESSION_DEFAULTS.idleTimeout, 0, 2_147_483_647)
  }
}

/** The option keys every handler takes. */
export const LIMIT_KEYS = ['maxSessionsPerUser', 'maxSessionDuration', 'idleTimeout'] as const

/** An options object of a handler: known keys only. */
export function handlerOptions (name: string, input: unknown, keys: readonly string[]): Record<string, unknown> {
  if (input === undefined || input === null) fail(name, 'expected an options object')
  return section(name, input, keys)
}

/** Counters of forwarding sessions, by kind: `stats().forwarding`. */
export interface ForwardingStats {
  /** Sessions open now. */
  active: Record<ForwardKind, number>
  /** Sessions whose upstream opened. */
  opened: Record<ForwardKind, number>
  /** Sessions refused or failed before their upstream opened, by reason. */
  failed: Record<string, number>
  /** Bytes from clients to upstreams. */
  bytesUp: Record<ForwardKind, number>
  /** Bytes from upstreams to clients. */
  bytesDown: Record<ForwardKind, number>
}

const kinds = (): Record<ForwardKind, number> => ({ terminal: 0, tcp: 0, 'ssh-tunnel': 0 })

/** The counters behind {@link ForwardingStats}; one per plugin instance. */
export class ForwardingCounters {
  readonly #active = kinds()
  readonly #opened = kinds()
  readonly #failed: Record<string, number> = {}
  readonly #up = kinds()
  readonly #down = kinds()

  /** @internal */
  failed (reason: string): void {
    this.#failed[reason] = (this.#failed[reason] ?? 0) + 1
  }

  /** @internal */
  opened (kind: ForwardKind): void {
    this.#opened[kind]++
    this.#active[kind]++
  }

  /** @internal */
  ended (kind: ForwardKind, up: number, down: number): void {
    this.#active[kind]--
    this.#up[kind] += up
    this.#down[kind] += down
  }

  snapshot (open: Iterable<Session>): ForwardingStats {
    const up = { ...this.#up }
    const down = { ...this.#down }
    // Bytes of sessions still open count as they go.
    for (const session of open) {
      up[session.kind] += session.bytesUp
      down[session.kind] += session.bytesDown
    }
    return { active: { ...this.#active }, opened: { ...this.#opened }, failed: { ...this.#failed }, bytesUp: up, bytesDown: down }
  }
}

/** What a session reports at its end, in the audit line. */
export interface SessionEnd {
  code: number
  reason: string
  exitCode?: number | null
  signal?: string | null
}

/** What a session needs of the plugin. */
export interface SessionHost {
  readonly counters: ForwardingCounters
  readonly open: Set<Session>
}

// Counters and open sessions of one plugin instance (its WsManager), found through the request.
const hosts = new WeakMap<object, SessionHost>()

/** @internal The forwarding counters and open sessions of a plugin instance. */
export function forwardingHost (owner: object): SessionHost {
  let host = hosts.get(owner)
  if (host === undefined) {
    host = { counters: new ForwardingCounters(), open: new Set() }
    hosts.set(owner, host)
  }
  return host
}

/**
 * One session. Created once the connection is accepted (input held until the upstream is
 * there); `attach()` bridges an upstream; `close()` ends both sides once.
 */
export class Session {
  readonly kind: ForwardKind
  readonly connection: Connection
  readonly socket: WebSocket
  /** `user@host:port` or `host:port`: never a credential. */
  readonly target: string
  bytesUp = 0
  bytesDown = 0
  #upstream: Duplex | null = null
  #teardown: (() => void) | null = null
  #started = Date.now()
  #lastByte = Date.now()
  #timer: NodeJS.Timeout | null = null
  #ended = false
  #held = true
  #paused = false
  #exit: { exitCode?: number | null, signal?: string | null } = {}
  readonly #limits: ResolvedLimits
  readonly #host: SessionHost
  readonly #onEnd: () => void
  /** Called for each text frame (terminal control); unset: a text frame closes with 1003. */
  onText: ((text: string) => void) | null = null
  readonly #abort = new AbortController()

  constructor (kind: ForwardKind, connection: Connection, socket: WebSocket, target: string, limits: ResolvedLimits, host: SessionHost, onEnd: () => void) {
    this.kind = kind
    this.connection = connection
    this.socket = socket
    this.target = target
    this.#limits = limits
    this.#host = host
    this.#onEnd = onEnd
    // Nothing the client sends is read until the upstream can take it.
    connection.holdInput(HOLD_UPSTREAM)
    socket.on('close', (code: number, reason: Buffer) => this.#finish({ code, reason: reason.toString() }))
    // From the start, not from the upstream's: a session waiting on a stalled server ends too.
    if (limits.idleTimeout > 0 || limits.maxSessionDuration > 0) {
      const tick = Math.min(1000, ...[limits.idleTimeout, limits.maxSessionDuration].filter((n) => n > 0).map((n) => Math.max(10, Math.floor(n / 4))))
      this.#timer = setInterval(() => this.#checkLimits(), tick)
      this.#timer.unref()
    }
  }

  /** Aborted when the session ends: what the session still waits for (a pool request) is given up. */
  get signal (): AbortSignal {
    return this.#abort.signal
  }

  /** Whether the session ended (the client left, or close() ran). */
  get ended (): boolean {
    return this.#ended
  }

  /**
   * Bridges the upstream: bytes both ways with backpressure, limits armed. `teardown` ends it
   * when the session ends (default: destroy()).
   */
  attach (upstream: Duplex, teardown: () => void = () => upstream.destroy()): void {
    if (this.#ended) {
      teardown()
      return
    }
    this.#upstream = upstream
    this.#teardown = teardown
    this.#host.counters.opened(this.kind)
    this.#host.open.add(this)
    const connection = this.connection
    const highWaterMark = connection.settings.backpressure.highWaterMark
    // Paused well before the high-water mark, so that no send meets the backpressure policy.
    const pauseAt = Math.max(1024, Math.floor(highWaterMark / 2))
    upstream.on('data', (chunk: Buffer) => {
      // Read to its end after the teardown (an SSH channel frees its slot so): not forwarded.
      if (this.#ended) return
      this.bytesDown += chunk.length
      this.#lastByte = Date.now()
      connection.send(chunk)
      if (!this.#paused && connection.bufferedAmount >= pauseAt) {
        this.#paused = true
        upstream.pause()
        connection.waitForDrain().then(() => {
          this.#paused = false
          if (!this.#ended) upstream.resume()
        }, () => {})
      }
    })
    upstream.on('drain', () => {
      if (!this.#held || this.#ended) return
      this.#held = false
      connection.releaseInput(HOLD_UPSTREAM)
    })
    this.socket.on('message', (data: Buffer, isBinary: boolean) => {
      if (this.#ended) return
      if (!isBinary) {
        if (this.onText === null) this.close(CloseCode.UNSUPPORTED_DATA, 'Binary frames only')
        else this.onText(data.toString())
        return
      }
      this.bytesUp += data.length
      this.#lastByte = Date.now()
      if (!upstream.write(data) && !this.#held) {
        // The upstream is slow: stop reading the client (ws's pause) until it drains.
        this.#held = true
        connection.holdInput(HOLD_UPSTREAM)
      }
    })
    this.#held = false
    connection.releaseInput(HOLD_UPSTREAM)
  }

  /** Records the shell's exit status for the audit line and the close reason. */
  exited (exitCode: number | null, signal: string | null): void {
    this.#exit = { exitCode, signal }
  }

  /** Ends the session: closes the WebSocket with `code` (the upstream goes with it). */
  close (code: number, reason: string): void {
    if (this.#ended) return
    this.connection.close(code, reason).catch(() => {})
    this.#finish({ code, reason })
  }

  #checkLimits (): void {
    const now = Date.now()
    const { idleTimeout, maxSessionDuration } = this.#limits
    if (maxSessionDuration > 0 && now - this.#started >= maxSessionDuration) this.close(CloseCode.NORMAL, 'Session time limit')
    else if (idleTimeout > 0 && now - this.#lastByte >= idleTimeout) this.close(CloseCode.GOING_AWAY, 'Idle timeout')
  }

  // Once, whoever ends first: the audit line, the counters, the upstream torn down.
  #finish (end: SessionEnd): void {
    if (this.#ended) return
    this.#ended = true
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#abort.abort()
    if (this.#held) {
      this.#held = false
      this.connection.releaseInput(HOLD_UPSTREAM)
    }
    const upstream = this.#upstream
    if (upstream !== null) {
      this.#host.open.delete(this)
      this.#host.counters.ended(this.kind, this.bytesUp, this.bytesDown)
      this.#teardown?.()
    }
    this.#onEnd()
    this.connection.log.info({
      forward: this.kind,
      userId: this.connection.userId,
      target: this.target,
      durationMs: Date.now() - this.#started,
      bytesUp: this.bytesUp,
      bytesDown: this.bytesDown,
      ...this.#exit,
      closeCode: end.code,
      closeReason: end.reason,
      upstream: upstream !== null
    }, 'forwarding session ended')
  }
}
