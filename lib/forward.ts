// Forwarding handlers for `{ websocket: true }` routes: a browser terminal on an SSH shell
// (sshTerminal), a TCP tunnel (tcpTunnel, websockify's job) and the same through an SSH
// connection's direct-tcpip channel (sshTunnel). The target always comes from the server's
// own code and an allowlist, never from the client.
import { connect as tcpConnect, type Socket } from 'node:net'
import type { FastifyRequest } from 'fastify'
import type { ClientChannel } from 'ssh2'
import type WebSocket from 'ws'
import { HOLD_UPSTREAM, type Connection } from './connection'
import { CloseCode } from './errors'
import {
  forwardingHost, handlerOptions, LIMIT_KEYS, resolveAllowlist, resolveLimits, Session, targetKey,
  type ForwardKind, type ResolvedLimits, type SessionHost, type SessionLimits
} from './forward-session'
import type { SshConnectionPool } from './ssh-pool'
import { isSshPoolError, type SshTarget } from './ssh-pool-options'
import { checkInt, fail } from './validate'

export { ForwardingCounters, SESSION_DEFAULTS } from './forward-session'
export type { ForwardingStats, ForwardKind, SessionLimits } from './forward-session'

/** A host and port to reach. */
export interface ForwardDestination {
  host: string
  port: number
}

type Awaitable<T> = T | Promise<T>

/** The handler @fastify/websocket calls for each connection of the route. */
export type ForwardHandler = (socket: WebSocket, request: FastifyRequest) => void

/** Options of {@link sshTerminal}. */
export interface SshTerminalOptions extends SessionLimits {
  /** The pool the shells are opened through. */
  pool: SshConnectionPool
  /** Where the verified user's shell runs and as whom: from `request.user`, never from the client. */
  target: (request: FastifyRequest) => Awaitable<SshTarget>
  /** SSH servers (`host:port`) a target may name; anything else is closed with 1008. Required. */
  allowedTargets: string[]
  /** TERM of the pty. @default 'xterm-256color' */
  term?: string
}

/** Options of {@link tcpTunnel}. */
export interface TcpTunnelOptions extends SessionLimits {
  /** The TCP service for this request: from the verified user, never from the client. */
  target: (request: FastifyRequest) => Awaitable<ForwardDestination>
  /** Services (`host:port`) a target may name; anything else is closed with 1008. Required. */
  allowedTargets: string[]
  /** Milliseconds to wait for the TCP connection. @default 10000 */
  connectTimeout?: number
}

/** Options of {@link sshTunnel}. */
export interface SshTunnelOptions extends SessionLimits {
  pool: SshConnectionPool
  /** The SSH server and login the tunnel goes through. */
  target: (request: FastifyRequest) => Awaitable<SshTarget>
  /** SSH servers (`host:port`) a target may name. Required. */
  allowedTargets: string[]
  /** Where the SSH server connects to (direct-tcpip), as seen from the SSH server. */
  to: (request: FastifyRequest) => Awaitable<ForwardDestination>
  /** Destinations (`host:port`) `to` may name. Required. */
  allowedDestinations: string[]
}

// Why a session could not start: the close code and reason the client gets.
const REFUSALS = {
  notManaged: [CloseCode.INTERNAL_ERROR, 'Internal error'],
  targetFailed: [CloseCode.INTERNAL_ERROR, 'Internal error'],
  notAllowed: [CloseCode.POLICY_VIOLATION, 'Target not allowed'],
  tooMany: [CloseCode.POLICY_VIOLATION, 'Too many sessions'],
  unreachable: [CloseCode.INTERNAL_ERROR, 'Upstream unavailable'],
  refused: [CloseCode.INTERNAL_ERROR, 'Upstream unavailable'],
  saturated: [CloseCode.TRY_AGAIN_LATER, 'Try again later'],
  auth: [CloseCode.POLICY_VIOLATION, 'Upstream authentication failed'],
  hostkey: [CloseCode.POLICY_VIOLATION, 'Upstream host key not verified'],
  closed: [CloseCode.GOING_AWAY, 'Server shutting down']
} as const satisfies Record<string, readonly [number, string]>

type Refusal = keyof typeof REFUSALS

// How long a shell that reported its exit and sent its last byte may take to close its channel.
const EXIT_GRACE_MS = 1000

// A pool error, as a refusal; a target the pool refused as malformed is the application's bug.
function refusalOf (err: unknown): Refusal {
  if (isSshPoolError(err)) return err.kind
  if ((err as { code?: unknown } | null)?.code === 'FST_WSM_ARGUMENT_INVALID') return 'targetFailed'
  return 'unreachable'
}

/** A target as `target()` returns it: an SSH target's port defaults to 22. */
interface Place { host: string, port?: number }

// The target's port, or null when the value is no target; `fallback` for an SSH target's.
function portOf (value: unknown, fallback: number | null): number | null {
  const v = value as Place | null
  if (typeof v !== 'object' || v === null || typeof v.host !== 'string' || v.host === '') return null
  const port = v.port ?? fallback
  return typeof port === 'number' && Number.isInteger(port) && port >= 1 && port <= 65535 ? port : null
}

/** What every handler shares: the session cap per user, the start, the refusals. */
class Sessions {
  readonly #kind: ForwardKind
  readonly #limits: ResolvedLimits
  readonly #perUser = new Map<string, number>()

  constructor (kind: ForwardKind, limits: ResolvedLimits) {
    this.#kind = kind
    this.#limits = limits
  }

  /**
   * A session for the connection, or null (the connection was closed with the refusal).
   * Counted against the user's cap until it ends.
   */
  begin (socket: WebSocket, request: FastifyRequest, target: string): Session | null {
    const connection = request.wsConnection as Connection | null
    const host = forwardingHost(request.server.wsManager)
    if (connection === null) {
      host.counters.failed('not_managed')
      socket.close(CloseCode.INTERNAL_ERROR, 'Internal error')
      return null
    }
    const key = connection.userId !== null ? `u:${connection.userId}` : `ip:${connection.ipKey}`
    const count = this.#perUser.get(key) ?? 0
    if (this.#limits.maxSessionsPerUser > 0 && count >= this.#limits.maxSessionsPerUser) {
      this.refuse(connection, host, 'tooMany')
      return null
    }
    this.#perUser.set(key, count + 1)
    return new Session(this.#kind, connection, socket, target, this.#limits, host, () => {
      const n = (this.#perUser.get(key) ?? 1) - 1
      if (n <= 0) this.#perUser.delete(key)
      else this.#perUser.set(key, n)
    })
  }

  refuse (connection: Connection, host: SessionHost, why: Refusal): void {
    host.counters.failed(`${this.#kind}:${why}`)
    const [code, reason] = REFUSALS[why]
    connection.log.info({ forward: this.#kind, refused: why }, 'forwarding session refused')
    connection.close(code, reason).catch(() => {})
  }
}

// target(request) checked against the allowlist; a refusal closes the connection.
async function resolveTarget<T extends Place> (request: FastifyRequest, pick: (request: FastifyRequest) => Awaitable<T>,
  allowed: ReadonlySet<string>, fallbackPort: number | null): Promise<T | Refusal> {
  let target: T
  try {
    target = await pick(request)
  } catch (err) {
    request.log.error({ err }, 'forwarding target failed')
    return 'targetFailed'
  }
  const port = portOf(target, fallbackPort)
  if (port === null) {
    request.log.error('forwarding target returned no { host, port }')
    return 'targetFailed'
  }
  return allowed.has(targetKey(target.host, port)) ? target : 'notAllowed'
}

function checkFunction (name: string, value: unknown): void {
  if (typeof value !== 'function') fail(name, 'expected a function of the request')
}

function checkPool (name: string, value: unknown): void {
  if (typeof value !== 'object' || value === null || typeof (value as SshConnectionPool).shell !== 'function') fail(name, 'expected an SshConnectionPool')
}

// Opens the upstream once the connection is managed and the target allowed.
async function start<T extends Place> (socket: WebSocket, request: FastifyRequest, sessions: Sessions, kind: ForwardKind,
  pick: (request: FastifyRequest) => Awaitable<T>, allowed: ReadonlySet<string>, fallbackPort: number | null,
  open: (target: T, session: Session) => Promise<void>): Promise<void> {
  const connection = request.wsConnection as Connection | null
  const host = forwardingHost(request.server.wsManager)
  if (connection === null) {
    sessions.begin(socket, request, '')
    return
  }
  // Held from the first moment: bytes the client sends before the upstream is there wait.
  connection.holdInput(HOLD_UPSTREAM)
  let target: T | Refusal
  try {
    target = await resolveTarget(request, pick, allowed, fallbackPort)
  } finally {
    connection.releaseInput(HOLD_UPSTREAM)
  }
  if (typeof target === 'string') {
    sessions.refuse(connection, host, target)
    return
  }
  const place = targetKey(target.host, portOf(target, fallbackPort) as number)
  const username = (target as { username?: unknown }).username
  const label = typeof username === 'string' ? `${username}@${place}` : place
  if (connection.state !== 'open') return
  const session = sessions.begin(socket, request, label)
  if (session === null) return
  try {
    await open(target, session)
  } catch (err) {
    if (session.ended) return
    const why = refusalOf(err)
    host.counters.failed(`${kind}:${why}`)
    if (why === 'targetFailed') connection.log.error({ forward: kind, err: { code: (err as { code?: unknown }).code, message: (err as Error).message } }, 'forwarding target refused by the pool')
    else connection.log.info({ forward: kind, refused: why, err: isSshPoolError(err) ? { code: err.code, kind: err.kind } : { message: (err as Error).message } }, 'forwarding upstream failed')
    const [code, reason] = REFUSALS[why]
    session.close(code, reason)
  }
}

/** The pty size a resize message asks for, or null. */
function resizeOf (text: string): { cols: number, rows: number } | null {
  let message: unknown
  try {
    message = JSON.parse(text)
  } catch {
    return null
  }
  const m = message as { type?: unknown, cols?: unknown, rows?: unknown } | null
  if (typeof m !== 'object' || m === null || m.type !== 'resize') return null
  const ok = (n: unknown): n is number => typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= 1000
  return ok(m.cols) && ok(m.rows) ? { cols: m.cols, rows: m.rows } : null
}

// An SSH channel ends when the session does: close it, and read what is left so that ssh2
// sees its end and frees the slot.
function channelTeardown (channel: ClientChannel): () => void {
  return () => {
    channel.close()
    channel.resume()
    channel.stderr.resume()
  }
}

// An upstream that ended without an exit status: lost (1011), or the pool was closed (1001).
function upstreamLost (session: Session, pool?: SshConnectionPool, channel?: ClientChannel): void {
  const kind = pool !== undefined && channel !== undefined ? pool.channelError(channel)?.kind : undefined
  const [code, reason] = REFUSALS[kind === 'closed' ? 'closed' : 'unreachable']
  session.close(code, reason)
}

/**
 * A browser terminal: the verified user's shell on an SSH server, through the pool. Binary
 * frames carry terminal bytes both ways; text frames are JSON control messages (client:
 * `{ type: 'resize', cols, rows }`; server: `{ type: 'exit', code, signal }` before it closes).
 * Close codes: the shell's exit 1000 `exit <code>`; 1011 `Upstream unavailable`; 1013 `Try
 * again later` (pool saturated); 1008 `Upstream authentication failed`, `Upstream host key not
 * verified`, `Target not allowed`, `Too many sessions`; 1000 `Session time limit`; 1001 `Idle timeout`.
 * @throws FST_WSM_OPTION_INVALID on a bad option.
 */
export function sshTerminal (options: SshTerminalOptions): ForwardHandler {
  const given = handlerOptions('sshTerminal', options, ['pool', 'target', 'allowedTargets', 'term', ...LIMIT_KEYS])
  checkPool('sshTerminal.pool', given.pool)
  checkFunction('sshTerminal.target', given.target)
  const allowed = resolveAllowlist('sshTerminal.allowedTargets', given.allowedTargets)
  const term = given.term ?? 'xterm-256color'
  if (typeof term !== 'string' || !/^[A-Za-z0-9._+-]{1,64}$/.test(term)) fail('sshTerminal.term', 'expected a terminal type such as xterm-256color')
  const sessions = new Sessions('terminal', resolveLimits('sshTerminal', given))
  const pool = options.pool
  return function terminal (socket, request) {
    start(socket, request, sessions, 'terminal', options.target, allowed, 22, async (target, session) => {
      const channel = await pool.shell(target, { cols: 80, rows: 24, term }, { signal: session.signal })
      let exit: { code: number | null, signal: string | null } | null = null
      let ended = false
      let grace: NodeJS.Timeout | null = null
      const finish = (): void => {
        if (grace !== null) clearTimeout(grace)
        if (session.ended || exit === null) return
        session.connection.send({ type: 'exit', code: exit.code, signal: exit.signal })
        session.close(CloseCode.NORMAL, exit.code !== null ? `exit ${exit.code}` : `signal ${String(exit.signal)}`)
      }
      // Exit status and every byte read: a server that then never closes the channel does
      // not keep the session open until the idle timeout.
      const settleSoon = (): void => {
        if (exit === null || !ended || grace !== null) return
        grace = setTimeout(finish, EXIT_GRACE_MS)
        grace.unref()
      }
      channel.on('exit', (code: number | null, signal?: string) => {
        exit = { code: typeof code === 'number' ? code : null, signal: typeof signal === 'string' ? signal : null }
        session.exited(exit.code, exit.signal)
        settleSoon()
      })
      channel.on('end', () => {
        ended = true
        settleSoon()
      })
      channel.on('close', () => {
        if (session.ended) return
        if (exit === null) {
          if (grace !== null) clearTimeout(grace)
          upstreamLost(session, pool, channel)
          return
        }
        finish()
      })
      // A pty merges stderr into stdout; anything on stderr still reaches the terminal.
      channel.stderr.on('data', (chunk: Buffer) => { if (!session.ended) session.connection.send(chunk) })
      channel.on('error', () => upstreamLost(session, pool, channel))
      session.onText = (text) => {
        const size = resizeOf(text)
        if (size === null) {
          session.connection.send({ type: 'error', message: 'expected { type: "resize", cols, rows } with integers from 1 to 1000' })
          return
        }
        channel.setWindow(size.rows, size.cols, 0, 0)
      }
      session.attach(channel, channelTeardown(channel))
    }).catch((err: unknown) => request.log.error({ err }, 'terminal session failed'))
  }
}

/**
 * A TCP tunnel: binary frames to and from a TCP service the server picks (websockify's job).
 * Close codes: 1000 `Upstream closed` when the service ends the connection; 1011 `Upstream
 * unavailable`; 1008 `Target not allowed`, `Too many sessions`; 1003 `Binary frames only`.
 * @throws FST_WSM_OPTION_INVALID on a bad option.
 */
export function tcpTunnel (options: TcpTunnelOptions): ForwardHandler {
  const given = handlerOptions('tcpTunnel', options, ['target', 'allowedTargets', 'connectTimeout', ...LIMIT_KEYS])
  checkFunction('tcpTunnel.target', given.target)
  const allowed = resolveAllowlist('tcpTunnel.allowedTargets', given.allowedTargets)
  const connectTimeout = checkInt('tcpTunnel.connectTimeout', given.connectTimeout ?? 10_000, 1, 600_000)
  const sessions = new Sessions('tcp', resolveLimits('tcpTunnel', given))
  return function tunnel (socket, request) {
    start(socket, request, sessions, 'tcp', options.target, allowed, null, async (target, session) => {
      const upstream = await new Promise<Socket>((resolve, reject) => {
        const s = tcpConnect({ host: target.host, port: target.port, noDelay: true })
        const timer = setTimeout(() => {
          s.destroy()
          reject(new Error(`no TCP connection within ${connectTimeout} ms`))
        }, connectTimeout)
        s.once('connect', () => {
          clearTimeout(timer)
          s.removeAllListeners('error')
          resolve(s)
        })
        s.once('error', (err) => {
          clearTimeout(timer)
          reject(err)
        })
      })
      upstream.on('error', () => upstreamLost(session))
      upstream.on('end', () => session.close(CloseCode.NORMAL, 'Upstream closed'))
      upstream.on('close', () => { if (!session.ended) upstreamLost(session) })
      session.attach(upstream)
    }).catch((err: unknown) => request.log.error({ err }, 'tunnel session failed'))
  }
}

/**
 * A TCP tunnel through an SSH server (its direct-tcpip channel, as `ssh -L` does). The same
 * close codes as {@link tcpTunnel}, plus those of the pool (see {@link sshTerminal}).
 * @throws FST_WSM_OPTION_INVALID on a bad option.
 */
export function sshTunnel (options: SshTunnelOptions): ForwardHandler {
  const given = handlerOptions('sshTunnel', options, ['pool', 'target', 'allowedTargets', 'to', 'allowedDestinations', ...LIMIT_KEYS])
  checkPool('sshTunnel.pool', given.pool)
  checkFunction('sshTunnel.target', given.target)
  checkFunction('sshTunnel.to', given.to)
  const allowed = resolveAllowlist('sshTunnel.allowedTargets', given.allowedTargets)
  const destinations = resolveAllowlist('sshTunnel.allowedDestinations', given.allowedDestinations)
  const sessions = new Sessions('ssh-tunnel', resolveLimits('sshTunnel', given))
  const pool = options.pool
  return function tunnel (socket, request) {
    start(socket, request, sessions, 'ssh-tunnel', options.target, allowed, 22, async (target, session) => {
      const to = await resolveTarget(request, options.to, destinations, null)
      if (typeof to === 'string') {
        const [code, reason] = REFUSALS[to]
        forwardingHost(request.server.wsManager).counters.failed(`ssh-tunnel:${to}`)
        session.close(code, reason)
        return
      }
      const channel = await pool.forwardOut(target, { host: to.host, port: to.port }, { signal: session.signal })
      channel.on('end', () => { if (pool.channelError(channel) === undefined) session.close(CloseCode.NORMAL, 'Upstream closed') })
      channel.on('close', () => { if (!session.ended) upstreamLost(session, pool, channel) })
      channel.on('error', () => upstreamLost(session, pool, channel))
      session.attach(channel, channelTeardown(channel))
    }).catch((err: unknown) => request.log.error({ err }, 'tunnel session failed'))
  }
}
