// An SSH connection pool on ssh2's Client: shells, commands and TCP forwards share SSH
// connections up to a per-connection and a per-target cap; beyond them callers wait in a FIFO
// queue with a deadline. Connections that fail are dropped, idle ones are ended. Options,
// known_hosts, argument checks and the coded errors: lib/ssh-pool-options.ts.

import { randomBytes } from 'node:crypto'
import { connect as tcpConnect, type Socket } from 'node:net'
import { errors } from './errors'
import { Client, type ClientCallback, type ClientChannel, type ConnectConfig, type HostVerifier } from 'ssh2'
import {
  checkDestination, checkExec, checkPty, resolveSshPoolOptions, resolveTarget, sshError,
  type ResolvedSshPoolOptions, type ResolvedSshTarget, type SshErrorKind, type SshExecOptions,
  type SshForwardDestination, type SshPoolError, type SshPoolOptions, type SshPtyOptions, type SshTarget
} from './ssh-pool-options'

export { SSH_CLOSE_CODES, SSH_POOL_DEFAULTS, isSshPoolError, sshPoolErrors } from './ssh-pool-options'
export type {
  SshErrorKind, SshExecOptions, SshForwardDestination, SshHostInfo, SshHostKeyCheck, SshHostVerifier,
  SshPoolError, SshPoolOptions, SshPtyOptions, SshTarget
} from './ssh-pool-options'

/** Counts of {@link SshConnectionPool.stats}; never a credential. */
export interface SshPoolStats {
  /** Connections connecting or ready. */
  connections: number
  /** Channels open or opening (sessions and forwards), counting callers waiting for a connection's handshake. */
  sessions: number
  /** Callers waiting in queues. */
  queued: number
  /** Targets with a connection or a waiting caller. */
  targets: number
  /** Connections that ever became ready. */
  opened: number
  /** Ready connections lost: ended by the server, a socket error, a failed keepalive. */
  dropped: number
  /** Connections ended after idleTimeout without sessions. */
  evicted: number
  /** Calls refused, by kind. */
  failures: Record<SshErrorKind, number>
}

type Opener = (client: Client, cb: ClientCallback) => void

// A channel nobody will use: closed, and read to its end so that ssh2 frees it.
function discard (channel: ClientChannel): void {
  channel.on('error', () => {})
  channel.close()
  channel.resume()
  channel.stderr?.resume()
}

/** What went wrong, made into a new error for each caller it fails. */
interface Failure {
  kind: SshErrorKind
  detail: string
}

interface Request {
  readonly open: Opener
  /** A session channel, which OpenSSH counts against MaxSessions (a direct-tcpip one is not). */
  readonly session: boolean
  readonly resolve: (channel: ClientChannel) => void
  readonly reject: (err: Error) => void
  attempts: number
  timer: NodeJS.Timeout | null
  /** The caller gave up (its signal aborted): a channel that still arrives is closed. */
  aborted: boolean
}

/** How a caller may give up a session it asked for. */
export interface SshRequestControl {
  /**
   * Aborting takes a waiting request out of the queue at once, or closes the channel that
   * arrives for one under way; the promise rejects with the signal's reason.
   */
  signal?: AbortSignal
}

class Target {
  readonly connections = new Set<Connection>()
  readonly queue: Request[] = []
  constructor (readonly info: ResolvedSshTarget) {}
}

class Connection {
  readonly client = new Client()
  /** Made by the pool and handed to ssh2, so that the pool can always destroy it. */
  socket: Socket | null = null
  state: 'connecting' | 'ready' | 'ending' | 'closed' = 'connecting'
  /** Whether it ever became ready: a loss, not a failed connect. */
  wasReady = false
  /** Channels open or opening, and callers assigned while it connects. */
  channels = 0
  /** maxSessionsPerConnection, lowered when the server refuses a session below it. */
  cap: number
  /** The most channels it had open at once: what the server has shown it accepts. */
  peak = 0
  readonly pending: Request[] = []
  readonly open = new Set<ClientChannel>()
  /** Why it failed or was lost: the first error it emitted, classified. */
  failure: Failure | null = null
  hostKeyDenied = false
  idleTimer: NodeJS.Timeout | null = null
  endTimer: NodeJS.Timeout | null = null
  readonly closed: Promise<void>
  markClosed!: () => void

  constructor (readonly target: Target, readonly id: number, cap: number) {
    this.cap = cap
    this.closed = new Promise((resolve) => { this.markClosed = resolve })
  }

  hasRoom (): boolean {
    return (this.state === 'connecting' || this.state === 'ready') && this.channels < this.cap
  }
}

/**
 * SSH connections shared by sessions. Each call resolves with an ssh2 ClientChannel whose slot
 * is given back when the channel emits 'close'; ssh2 emits it only after the channel's data was
 * read to the end, so read (or `resume()`) every channel, also one you `destroy()`.
 */
export class SshConnectionPool {
  readonly #options: ResolvedSshPoolOptions
  /** Key of the credential HMACs: a fingerprint means nothing outside this process. */
  readonly #secret = randomBytes(32)
  readonly #targets = new Map<string, Target>()
  readonly #lost = new WeakMap<ClientChannel, SshPoolError>()
  readonly #failures: Record<SshErrorKind, number> = { saturated: 0, unreachable: 0, auth: 0, hostkey: 0, refused: 0, closed: 0 }
  #nextId = 1
  #opened = 0
  #dropped = 0
  #evicted = 0
  #shut = false
  #closing: Promise<void> | null = null

  /** @throws FST_WSM_OPTION_INVALID naming the option */
  constructor (options: SshPoolOptions) {
    this.#options = resolveSshPoolOptions(options)
  }

  /**
   * A login shell on a pty (80×24 'xterm-256color' unless given). Rejects with
   * FST_WSM_ARGUMENT_INVALID on a bad argument, else with an {@link SshPoolError}.
   */
  shell (target: SshTarget, pty?: SshPtyOptions, control: SshRequestControl = {}): Promise<ClientChannel> {
    return this.#request(target, true, control, () => {
      const window = checkPty('pty', pty)
      return (client, cb) => client.shell(window, cb)
    })
  }

  /** A command, without a pty unless asked; its exit code comes with the channel's 'exit' and 'close' events. */
  exec (target: SshTarget, command: string, options: SshExecOptions = {}, control: SshRequestControl = {}): Promise<ClientChannel> {
    return this.#request(target, true, control, () => {
      const checked = checkExec(command, options)
      return (client, cb) => client.exec(checked.command, checked.pty === undefined ? {} : { pty: checked.pty }, cb)
    })
  }

  /** A TCP connection the SSH server makes to `destination` (a direct-tcpip channel; OpenSSH does not count it in MaxSessions). */
  forwardOut (target: SshTarget, destination: SshForwardDestination, control: SshRequestControl = {}): Promise<ClientChannel> {
    return this.#request(target, false, control, () => {
      const { host, port } = checkDestination(destination)
      return (client, cb) => client.forwardOut('127.0.0.1', 0, host, port, cb)
    })
  }

  /**
   * Why a channel of this pool ended without an exit: the error of its lost connection (kind
   * `'unreachable'`) or of the pool's close (`'closed'`); undefined when it closed normally.
   */
  channelError (channel: ClientChannel): SshPoolError | undefined {
    return this.#lost.get(channel)
  }

  /** Counts of connections, sessions, waiters and failures. */
  stats (): SshPoolStats {
    let connections = 0
    let sessions = 0
    let queued = 0
    for (const target of this.#targets.values()) {
      connections += target.connections.size
      queued += target.queue.length
      for (const conn of target.connections) sessions += conn.channels
    }
    return {
      connections,
      sessions,
      queued,
      targets: this.#targets.size,
      opened: this.#opened,
      dropped: this.#dropped,
      evicted: this.#evicted,
      failures: { ...this.#failures }
    }
  }

  /** Whether {@link close} was called. */
  get closed (): boolean {
    return this.#shut
  }

  /**
   * Refuses every waiter and every later call (kind `'closed'`) and ends every connection,
   * which closes their channels. Resolves once every connection is closed.
   */
  close (): Promise<void> {
    if (this.#closing !== null) return this.#closing
    this.#shut = true
    const waits: Array<Promise<void>> = []
    for (const target of [...this.#targets.values()]) {
      for (const waiter of target.queue.splice(0)) {
        if (waiter.timer !== null) clearTimeout(waiter.timer)
        this.#reject(waiter, target.info.label, { kind: 'closed', detail: 'the pool was closed' })
      }
      for (const conn of target.connections) {
        waits.push(conn.closed)
        this.#end(conn)
      }
      this.#forget(target)
    }
    this.#closing = Promise.all(waits).then(() => {})
    return this.#closing
  }

  #request (input: unknown, session: boolean, control: SshRequestControl, prepare: () => Opener): Promise<ClientChannel> {
    let info: ResolvedSshTarget
    let open: Opener
    const signal = control.signal
    try {
      info = resolveTarget(input, this.#secret)
      open = prepare()
      if (signal !== undefined && !(signal instanceof AbortSignal)) throw new errors.FST_WSM_ARGUMENT_INVALID('signal', 'expected an AbortSignal')
    } catch (err) {
      return Promise.reject(err)
    }
    if (signal?.aborted === true) return Promise.reject(signal.reason)
    if (this.#shut) {
      this.#failures.closed++
      return Promise.reject(sshError('closed', info.label, 'the pool was closed'))
    }
    return new Promise((resolve, reject) => {
      let target = this.#targets.get(info.key)
      if (target === undefined) {
        target = new Target(info)
        this.#targets.set(info.key, target)
      }
      let settle = (): void => {}
      const request: Request = {
        open,
        session,
        resolve: (channel: ClientChannel) => { settle(); resolve(channel) },
        reject: (err: Error) => { settle(); reject(err) },
        attempts: 0,
        timer: null,
        aborted: false
      }
      if (signal !== undefined) {
        const onAbort = (): void => this.#abort(target as Target, request, signal.reason as Error)
        signal.addEventListener('abort', onAbort, { once: true })
        settle = () => signal.removeEventListener('abort', onAbort)
      }
      this.#dispatch(target, request, false)
    })
  }

  // The caller gave up: out of the queue, or out of a connecting connection's list; a request
  // already sent to the server is marked, and its channel closed when it arrives.
  #abort (target: Target, request: Request, reason: Error): void {
    if (request.aborted) return
    request.aborted = true
    const queued = target.queue.indexOf(request)
    if (queued !== -1) {
      target.queue.splice(queued, 1)
      if (request.timer !== null) clearTimeout(request.timer)
      request.timer = null
      request.reject(reason)
      this.#forget(target)
      return
    }
    for (const conn of target.connections) {
      const at = conn.pending.indexOf(request)
      if (at === -1) continue
      conn.pending.splice(at, 1)
      conn.channels--
      request.reject(reason)
      this.#released(conn)
      return
    }
    request.reject(reason)
  }

  /** A connection with room, a new one while under the cap, or null. */
  #roomOn (target: Target): Connection | null {
    for (const conn of target.connections) if (conn.hasRoom()) return conn
    return target.connections.size < this.#options.maxConnectionsPerTarget ? this.#connect(target) : null
  }

  #dispatch (target: Target, request: Request, retried: boolean): void {
    const conn = this.#roomOn(target)
    if (conn !== null) return this.#assign(conn, request)
    const { maxQueue, queueTimeout } = this.#options
    const label = target.info.label
    // A retried caller was admitted before: it goes back to the head, past maxQueue.
    if (!retried && target.queue.length >= maxQueue) {
      this.#reject(request, label, { kind: 'saturated', detail: `every connection is full and ${target.queue.length} callers wait (maxQueue ${maxQueue})` })
      this.#forget(target)
      return
    }
    request.timer = setTimeout(() => {
      request.timer = null
      const at = target.queue.indexOf(request)
      if (at !== -1) target.queue.splice(at, 1)
      this.#reject(request, label, { kind: 'saturated', detail: `no session free within queueTimeout (${queueTimeout} ms)` })
      this.#forget(target)
    }, queueTimeout)
    request.timer.unref()
    if (retried) target.queue.unshift(request)
    else target.queue.push(request)
  }

  #assign (conn: Connection, request: Request): void {
    conn.channels++
    if (conn.idleTimer !== null) {
      clearTimeout(conn.idleTimer)
      conn.idleTimer = null
    }
    if (conn.state === 'connecting') conn.pending.push(request)
    else this.#openOn(conn, request)
  }

  /** Gives waiters the room there is: free slots, or new connections under the cap. */
  #pump (target: Target): void {
    while (target.queue.length > 0) {
      const conn = this.#roomOn(target)
      if (conn === null) return
      const waiter = target.queue.shift() as Request
      if (waiter.timer !== null) clearTimeout(waiter.timer)
      waiter.timer = null
      this.#assign(conn, waiter)
    }
  }

  #openOn (conn: Connection, request: Request): void {
    let settled = false
    // A server that accepts the channel and never answers its pty, shell or exec request (or
    // never answers the open) holds a slot forever without this deadline.
    const deadline = setTimeout(() => {
      if (settled) return
      settled = true
      conn.channels--
      this.#reject(request, conn.target.info.label, { kind: 'unreachable', detail: `no answer to the channel request within readyTimeout (${this.#options.readyTimeout} ms)` })
      this.#released(conn)
    }, this.#options.readyTimeout)
    deadline.unref()
    const done: ClientCallback = (err, channel) => {
      if (settled) {
        // Too late (deadline) or not wanted: close it and read it to its end so ssh2 lets go.
        if (err === undefined && channel !== undefined) discard(channel)
        return
      }
      settled = true
      clearTimeout(deadline)
      if (err === undefined) {
        if (request.aborted) {
          conn.channels--
          discard(channel)
          this.#released(conn)
          return
        }
        return this.#track(conn, request, channel)
      }
      conn.channels--
      const label = conn.target.info.label
      if (request.aborted) {
        // The caller is gone: no retry, nobody to tell.
      } else if (this.#shut) {
        this.#reject(request, label, { kind: 'closed', detail: 'the pool was closed' })
      } else if (conn.state !== 'ready') {
        this.#reject(request, label, conn.failure ?? { kind: 'unreachable', detail: 'the connection was lost' })
      } else if (request.session && typeof (err as { reason?: unknown }).reason === 'number' && conn.channels > 0) {
        // OpenSSH refuses a session beyond its MaxSessions ("open failed"). Below the peak the
        // server has already accepted, the refusal is a race: sshd frees a closed session only
        // after it has read the packets that came with the close, so a session opened the
        // moment another closed can find it still counted; that one is simply tried again.
        // Otherwise the count open now becomes this connection's cap and the caller goes
        // elsewhere or waits. A caller is refused after a few refusals, so this cannot loop.
        if (conn.channels >= conn.peak) conn.cap = Math.min(conn.cap, conn.channels)
        this.#options.logger?.debug({ target: label, connection: conn.id, cap: conn.cap }, 'ssh session refused by the server')
        if (++request.attempts > this.#options.maxConnectionsPerTarget + 2) {
          this.#reject(request, label, { kind: 'saturated', detail: `the server refused sessions beyond ${conn.cap} per connection (MaxSessions)` })
        } else {
          this.#dispatch(conn.target, request, true)
        }
      } else {
        // ssh2 closes a channel whose pty request failed, but not one whose exec or shell
        // request failed, and does not hand it over; the server's count corrects itself
        // through the refusal handling above.
        this.#reject(request, label, { kind: 'refused', detail: err.message })
      }
      this.#released(conn)
    }
    try {
      request.open(conn.client, done)
    } catch (err) {
      done(err as Error, undefined as unknown as ClientChannel)
    }
  }

  #track (conn: Connection, request: Request, channel: ClientChannel): void {
    conn.open.add(channel)
    if (conn.open.size > conn.peak) conn.peak = conn.open.size
    channel.once('close', () => {
      conn.open.delete(channel)
      if (conn.state === 'closed') return
      conn.channels--
      this.#released(conn)
    })
    request.resolve(channel)
  }

  /** A slot of the connection came free: the longest waiter takes it, or the idle clock starts. */
  #released (conn: Connection): void {
    if (conn.state !== 'ready') return
    const queue = conn.target.queue
    while (queue.length > 0 && conn.channels < conn.cap) {
      const waiter = queue.shift() as Request
      if (waiter.timer !== null) clearTimeout(waiter.timer)
      waiter.timer = null
      this.#assign(conn, waiter)
    }
    if (conn.channels === 0 && this.#options.idleTimeout > 0) {
      if (conn.idleTimer !== null) clearTimeout(conn.idleTimer)
      conn.idleTimer = setTimeout(() => {
        conn.idleTimer = null
        if (conn.state !== 'ready' || conn.channels !== 0) return
        this.#evicted++
        this.#options.logger?.debug({ target: conn.target.info.label, connection: conn.id }, 'ssh connection idle, ended')
        this.#end(conn)
      }, this.#options.idleTimeout)
      conn.idleTimer.unref()
    }
  }

  #connect (target: Target): Connection {
    const options = this.#options
    const info = target.info
    const conn = new Connection(target, this.#nextId++, options.maxSessionsPerConnection)
    target.connections.add(conn)
    const client = conn.client
    client.on('ready', () => this.#ready(conn))
    client.on('error', (err: Error & { level?: string, code?: unknown }) => {
      conn.failure ??= this.#classify(conn, err)
    })
    client.on('close', () => this.#onClose(conn))
    const host = { host: info.host, port: info.port, username: info.username }
    const hostVerifier = (key: Buffer, verify: (ok: boolean) => void): boolean | undefined => {
      const deny = (): false => {
        conn.hostKeyDenied = true
        return false
      }
      let result: boolean | Promise<boolean>
      try {
        result = options.verifyHostKey(key, { ...host })
      } catch {
        return deny()
      }
      if (typeof result === 'boolean') return result || deny()
      Promise.resolve(result).then((ok) => verify(ok === true || deny()), () => verify(deny()))
      return undefined
    }
    const config: ConnectConfig = {
      ...host,
      readyTimeout: options.readyTimeout,
      keepaliveInterval: options.keepaliveInterval,
      keepaliveCountMax: options.keepaliveCountMax,
      hostVerifier: hostVerifier as HostVerifier,
      // Only the method the target has; ssh2's default would try 'none' first.
      authHandler: info.password === undefined ? ['publickey'] : ['password']
    }
    if (info.password !== undefined) config.password = info.password
    else {
      config.privateKey = info.privateKey
      if (info.passphrase !== undefined) config.passphrase = info.passphrase
    }
    // Without noDelay keystrokes and small outputs wait for Nagle and delayed ACKs (~40 ms).
    const socket = conn.socket = tcpConnect({ host: info.host, port: info.port, noDelay: true })
    config.sock = socket
    try {
      client.connect(config)
    } catch (err) {
      // ssh2 parses the key before it listens to the socket: no 'close' follows this throw.
      socket.on('error', () => {})
      socket.destroy()
      conn.failure = /privateKey/.test((err as Error).message)
        ? { kind: 'auth', detail: 'the private key cannot be read (unsupported format or wrong passphrase)' }
        : { kind: 'unreachable', detail: (err as Error).message }
      process.nextTick(() => this.#onClose(conn))
    }
    return conn
  }

  #classify (conn: Connection, err: Error & { level?: string, code?: unknown }): Failure {
    if (conn.hostKeyDenied) return { kind: 'hostkey', detail: 'the server\'s host key is not in knownHosts or was refused by hostVerifier' }
    // 14: SSH_DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE
    if (err.level === 'client-authentication' || err.code === 14) {
      return { kind: 'auth', detail: `${conn.target.info.password === undefined ? 'publickey' : 'password'} authentication was refused` }
    }
    if (err.level === 'client-timeout') {
      return conn.state === 'connecting'
        ? { kind: 'unreachable', detail: `no SSH handshake and authentication within readyTimeout (${this.#options.readyTimeout} ms)` }
        : { kind: 'unreachable', detail: `no answer to ${this.#options.keepaliveCountMax} keepalives` }
    }
    return { kind: 'unreachable', detail: err.message }
  }

  #ready (conn: Connection): void {
    if (conn.state !== 'connecting') return
    conn.state = 'ready'
    conn.wasReady = true
    this.#opened++
    this.#options.logger?.debug({ target: conn.target.info.label, connection: conn.id }, 'ssh connection ready')
    for (const request of conn.pending.splice(0)) this.#openOn(conn, request)
    this.#released(conn)
  }

  #onClose (conn: Connection): void {
    if (conn.state === 'closed') return
    // 'ready' here means lost: a connection the pool ends is 'ending' first.
    const lost = conn.state === 'ready'
    conn.state = 'closed'
    if (conn.idleTimer !== null) clearTimeout(conn.idleTimer)
    if (conn.endTimer !== null) clearTimeout(conn.endTimer)
    const target = conn.target
    const label = target.info.label
    target.connections.delete(conn)
    const failure: Failure = this.#shut
      ? { kind: 'closed', detail: 'the pool was closed' }
      : conn.failure ?? { kind: 'unreachable', detail: conn.wasReady ? 'the connection was closed by the server' : 'the connection closed before SSH was ready' }
    for (const request of conn.pending.splice(0)) this.#reject(request, label, failure)
    if (!conn.wasReady && !this.#shut) {
      this.#options.logger?.warn({ target: label, connection: conn.id, kind: failure.kind }, 'ssh connection failed')
      // Callers waiting behind a target that cannot be reached now would only fail the same way.
      if (![...target.connections].some((c) => c.state === 'ready')) {
        for (const waiter of target.queue.splice(0)) {
          if (waiter.timer !== null) clearTimeout(waiter.timer)
          this.#reject(waiter, label, failure)
        }
      }
    } else if (lost) {
      this.#dropped++
      this.#options.logger?.warn({ target: label, connection: conn.id, sessions: conn.open.size, detail: failure.detail }, 'ssh connection lost')
    }
    for (const channel of conn.open) this.#lost.set(channel, sshError(failure.kind, label, failure.detail))
    conn.open.clear()
    conn.markClosed()
    if (!this.#shut) this.#pump(target)
    this.#forget(target)
  }

  #end (conn: Connection): void {
    if (conn.state === 'closed' || conn.state === 'ending') return
    const connecting = conn.state === 'connecting'
    conn.state = 'ending'
    if (connecting) conn.socket?.destroy()
    else conn.client.end()
    // A server that does not answer the disconnect must not hold the socket (ssh2's destroy()
    // does nothing once the socket is no longer writable, so the pool destroys its own).
    conn.endTimer = setTimeout(() => conn.socket?.destroy(), 1000)
    conn.endTimer.unref()
  }

  #reject (request: Request, label: string, failure: Failure): void {
    if (request.aborted) return
    this.#failures[failure.kind]++
    request.reject(sshError(failure.kind, label, failure.detail))
  }

  /** Drops a target, and its credential, once nothing uses it. */
  #forget (target: Target): void {
    if (target.connections.size === 0 && target.queue.length === 0 && this.#targets.get(target.info.key) === target) {
      this.#targets.delete(target.info.key)
    }
  }
}
