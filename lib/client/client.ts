// The client: one WebSocket at a time, reconnected by the close-code table of policy.ts, with
// requests correlated by id, the token refreshed before it expires, and topic subscriptions
// carried across reconnects (topics.ts). Everything async checks that the socket it started
// with is still the current one: close() and reconnects can overtake getToken() or a timer.

import { Emitter } from './emitter'
import { ClientError } from './errors'
import { backoffDelay, decide, parseRetryAfter, RECONNECT_DEFAULTS, type Ending, type ReconnectOptions } from './policy'
import { isWsPackage, resolveWebSocket, watchRefusal, type WebSocketConstructor, type WebSocketLike } from './socket'
import { refreshDelay, tokenExpiry } from './token'
import { Subscriptions, type SubscribedEvent, type TopicListener } from './topics'

/** How the client keeps a token alive. */
export type TokenRefresh = 'in-band' | 'reconnect' | false

/** Options of {@link createClient}. */
export interface ClientOptions {
  /** The route's ws:// or wss:// URL. */
  url: string
  /**
   * Called before every connect and before the token expires; its value is sent as the
   * `bearer.<token>` subprotocol. Null or '' connects without a token (a route with auth off).
   */
  getToken: () => string | null | Promise<string | null>
  /**
   * Application subprotocols, offered before the token entry; the server selects the first.
   * @default []
   */
  protocols?: string[]
  /**
   * Backoff of the reconnects, or false to never reconnect.
   * @default { base: 500, max: 30000, resetAfter: 5000 }
   */
  reconnect?: Partial<ReconnectOptions> | false
  /**
   * Milliseconds before request() rejects with FST_WSM_CLIENT_TIMEOUT.
   * @default 10000
   */
  requestTimeout?: number
  /**
   * 'in-band': before `exp`, send `auth.refresh` with a new token on the open connection,
   * falling back to 'reconnect' when the server does not know it; 'reconnect': close and
   * connect again with a new token before `exp`; false: do nothing (the server's 1008
   * "Token expired" then reconnects at once).
   * @default 'in-band'
   */
  tokenRefresh?: TokenRefresh
  /** The WebSocket constructor; default the global one, else the `ws` package. */
  WebSocket?: WebSocketConstructor
  /**
   * Source of randomness in [0, 1) for the backoff jitter (tests seed it).
   * @default Math.random
   */
  random?: () => number
}

/** The client's state. */
export type ClientState = 'connecting' | 'open' | 'reconnecting' | 'closed'

/** Payload of the 'close' event. */
export interface CloseEvent {
  /** Close code (1006 when the connection dropped or the upgrade was refused). */
  code: number
  reason: string
  /** HTTP status of a refused upgrade where the runtime shows it (ws), else null. */
  status: number | null
  willReconnect: boolean
  /** Milliseconds until the next attempt, or null when the client stops. */
  delay: number | null
}

/** Payload of the 'message' event: what the server sent that was not a reply nor a topic message. */
export interface MessageEvent {
  /** The text or the bytes as received. */
  data: string | ArrayBuffer
  /** `data` parsed as JSON, or undefined for binary data or text that is not JSON. */
  json: unknown
}

/** The client's events and their payloads. */
export interface ClientEvents {
  open: { protocol: string }
  close: CloseEvent
  message: MessageEvent
  error: Error
  state: { state: ClientState, previous: ClientState }
  /** A topic subscription (or resubscription) was confirmed; `recovered: false` means messages were lost. */
  subscribed: SubscribedEvent
  /** The token was replaced in band; `exp` in seconds or null. */
  refreshed: { exp: number | null }
}

/** Options of one request. */
export interface RequestOptions {
  /** Milliseconds before it rejects; default the client's `requestTimeout`. */
  timeout?: number
}

interface Pending {
  resolve: (reply: Record<string, unknown>) => void
  reject: (err: Error) => void
  timer: ReturnType<typeof setTimeout>
}

/** One socket and what the client learnt about it. */
interface Attempt {
  socket: WebSocketLike | null
  token: string | null
  openedAt: number | null
  /** Who is closing it: the application (close()), the token refresh, or nobody yet. */
  closing: 'user' | 'refresh' | null
  status: number | null
  retryAfter: string | null
  refreshTimer: ReturnType<typeof setTimeout> | null
  /** Resolves the promise close() returned, once the socket reports its close. */
  onClosed: (() => void) | null
}

const OPEN = 1

function positive (name: string, value: unknown, allowZero = false): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (!allowZero && value === 0)) {
    throw new ClientError('FST_WSM_CLIENT_OPTION_INVALID', `Invalid client option "${name}": expected a ${allowZero ? 'non-negative' : 'positive'} number, got ${String(value)}`)
  }
  return value
}

function normalize (options: ClientOptions): { reconnect: ReconnectOptions | false, requestTimeout: number, tokenRefresh: TokenRefresh, protocols: string[], random: () => number } {
  if (typeof options !== 'object' || options === null) throw new ClientError('FST_WSM_CLIENT_OPTION_INVALID', 'createClient() takes an options object')
  if (typeof options.url !== 'string' || !/^wss?:\/\//i.test(options.url)) {
    throw new ClientError('FST_WSM_CLIENT_OPTION_INVALID', `Invalid client option "url": expected a ws:// or wss:// URL, got ${String(options.url)}`)
  }
  if (typeof options.getToken !== 'function') throw new ClientError('FST_WSM_CLIENT_OPTION_INVALID', 'Invalid client option "getToken": expected a function')
  const protocols = options.protocols ?? []
  if (!Array.isArray(protocols) || protocols.some((p) => typeof p !== 'string' || p === '' || p.startsWith('bearer.'))) {
    throw new ClientError('FST_WSM_CLIENT_OPTION_INVALID', 'Invalid client option "protocols": expected protocol names, none starting with "bearer."')
  }
  let reconnect: ReconnectOptions | false = false
  if (options.reconnect !== false) {
    const given = options.reconnect ?? {}
    reconnect = {
      base: positive('reconnect.base', given.base ?? RECONNECT_DEFAULTS.base),
      max: positive('reconnect.max', given.max ?? RECONNECT_DEFAULTS.max),
      resetAfter: positive('reconnect.resetAfter', given.resetAfter ?? RECONNECT_DEFAULTS.resetAfter, true)
    }
  }
  const tokenRefresh = options.tokenRefresh ?? 'in-band'
  if (tokenRefresh !== 'in-band' && tokenRefresh !== 'reconnect' && tokenRefresh !== false) {
    throw new ClientError('FST_WSM_CLIENT_OPTION_INVALID', `Invalid client option "tokenRefresh": expected 'in-band', 'reconnect' or false, got ${String(tokenRefresh)}`)
  }
  if (options.WebSocket !== undefined && typeof options.WebSocket !== 'function') {
    throw new ClientError('FST_WSM_CLIENT_OPTION_INVALID', 'Invalid client option "WebSocket": expected a constructor')
  }
  const random = options.random ?? Math.random
  if (typeof random !== 'function') throw new ClientError('FST_WSM_CLIENT_OPTION_INVALID', 'Invalid client option "random": expected a function')
  return { reconnect, requestTimeout: positive('requestTimeout', options.requestTimeout ?? 10_000), tokenRefresh, protocols: [...protocols], random }
}

/** A managed WebSocket client; see {@link createClient}. */
export class Client extends Emitter<ClientEvents> {
  readonly #options: ClientOptions
  readonly #reconnect: ReconnectOptions | false
  readonly #requestTimeout: number
  readonly #tokenRefresh: TokenRefresh
  readonly #protocols: string[]
  readonly #random: () => number
  readonly #pending = new Map<string, Pending>()
  readonly #topics: Subscriptions
  #state: ClientState = 'closed'
  #current: Attempt | null = null
  #attempt = 0
  #immediateUsed = false
  #reconnectTimer: ReturnType<typeof setTimeout> | null = null
  #nextId = 0
  // A prefix of its own per client: a server message that happens to carry an id like 'r1'
  // (an application push) is not taken for the reply to a request.
  readonly #idPrefix = Math.random().toString(36).slice(2, 10)
  /** False once the server answered auth.refresh with UNKNOWN_TYPE or not at all. */
  #inBand = true
  #waiters: Array<{ resolve: () => void, reject: (err: Error) => void }> = []

  /** @throws FST_WSM_CLIENT_OPTION_INVALID naming the option. */
  constructor (options: ClientOptions) {
    // A throwing listener must not break the client; it is reported like any other error.
    super((err) => { queueMicrotask(() => { throw err }) })
    const normalized = normalize(options)
    this.#options = options
    this.#reconnect = normalized.reconnect
    this.#requestTimeout = normalized.requestTimeout
    this.#tokenRefresh = normalized.tokenRefresh
    this.#protocols = normalized.protocols
    this.#random = normalized.random
    this.#topics = new Subscriptions({
      request: (type, payload) => this.request(type, payload),
      isOpen: () => this.#state === 'open',
      onSubscribed: (event) => this.emit('subscribed', event),
      onError: (err) => this.emit('error', err)
    })
  }

  /** 'connecting' (first attempt), 'open', 'reconnecting' (waiting or trying again), 'closed'. */
  get state (): ClientState {
    return this.#state
  }

  /** Topics subscribed to, whether or not the server has confirmed them yet. */
  get topics (): string[] {
    return this.#topics.names()
  }

  /**
   * Starts connecting (a no-op when already connecting or open). Resolves on the next open;
   * rejects with FST_WSM_CLIENT_CLOSED when the client stops first (a stop code, a refusal,
   * close()).
   */
  connect (): Promise<void> {
    if (this.#state === 'open') return Promise.resolve()
    const opened = new Promise<void>((resolve, reject) => { this.#waiters.push({ resolve, reject }) })
    if (this.#state === 'closed') {
      this.#attempt = 0
      this.#setState('connecting')
      this.#open()
    }
    return opened
  }

  /**
   * Closes for good (no reconnect): pending requests reject with FST_WSM_CLIENT_CLOSED.
   * Resolves once the socket has closed. `code` is 1000 or 3000-4999, as browsers allow.
   */
  close (code = 1000, reason = ''): Promise<void> {
    if (code !== 1000 && !(Number.isInteger(code) && code >= 3000 && code <= 4999)) {
      return Promise.reject(new ClientError('FST_WSM_CLIENT_OPTION_INVALID', `close(): code must be 1000 or 3000-4999, got ${String(code)}`))
    }
    if (typeof reason !== 'string' || new TextEncoder().encode(reason).length > 123) {
      return Promise.reject(new ClientError('FST_WSM_CLIENT_OPTION_INVALID', 'close(): reason must be a string of at most 123 bytes'))
    }
    const attempt = this.#current
    this.#current = null
    this.#clearReconnect()
    const closed = new ClientError('FST_WSM_CLIENT_CLOSED', 'The client was closed', { closeCode: code })
    this.#rejectPending(closed)
    this.#stop(closed)
    if (attempt === null || attempt.socket === null) return Promise.resolve()
    this.#clearRefresh(attempt)
    attempt.closing = 'user'
    const socket = attempt.socket
    return new Promise((resolve) => {
      attempt.onClosed = resolve
      socket.close(code, reason)
    })
  }

  /**
   * Sends `data` as is (a string or bytes) or as JSON (anything else). False when the client
   * is not open: nothing is queued across reconnects.
   */
  send (data: unknown): boolean {
    const socket = this.#current?.socket
    if (this.#state !== 'open' || socket == null || socket.readyState !== OPEN) return false
    if (typeof data === 'string' || data instanceof ArrayBuffer || ArrayBuffer.isView(data)) socket.send(data)
    else socket.send(JSON.stringify(data))
    return true
  }

  /**
   * Sends `{ ...payload, type, id }` and resolves with the server's reply of the same id.
   * Rejects with FST_WSM_CLIENT_NOT_OPEN, FST_WSM_CLIENT_TIMEOUT, FST_WSM_CLIENT_ERROR_REPLY
   * (`serverCode` is the reply's code) or FST_WSM_CLIENT_CLOSED (the connection closed first).
   */
  request<T extends Record<string, unknown> = Record<string, unknown>> (type: string, payload: Record<string, unknown> = {}, options: RequestOptions = {}): Promise<T> {
    if (typeof type !== 'string' || type === '') return Promise.reject(new ClientError('FST_WSM_CLIENT_OPTION_INVALID', 'request(): type must be a non-empty string'))
    if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
      return Promise.reject(new ClientError('FST_WSM_CLIENT_OPTION_INVALID', 'request(): payload must be an object'))
    }
    let timeout: number
    try {
      timeout = positive('timeout', options.timeout ?? this.#requestTimeout)
    } catch (err) {
      return Promise.reject(err)
    }
    const socket = this.#current?.socket
    if (this.#state !== 'open' || socket == null || socket.readyState !== OPEN) {
      return Promise.reject(new ClientError('FST_WSM_CLIENT_NOT_OPEN', `request(${type}): the client is ${this.#state}`))
    }
    const id = `${this.#idPrefix}.${++this.#nextId}`
    let text: string
    try {
      text = JSON.stringify({ ...payload, type, id })
    } catch (err) {
      return Promise.reject(err)
    }
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id)
        reject(new ClientError('FST_WSM_CLIENT_TIMEOUT', `request(${type}) had no reply within ${timeout} ms`))
      }, timeout)
      this.#pending.set(id, { resolve: resolve as (reply: Record<string, unknown>) => void, reject, timer })
      socket.send(text)
    })
  }

  /**
   * Subscribes to `topic` now or on the next open, and again after every reconnect asking for
   * what was missed; `onMessage` gets each message's data once, in offset order. Returns the
   * function that unsubscribes this listener (the topic once its last listener is gone).
   */
  subscribe<T = unknown> (topic: string, onMessage: TopicListener<T>): () => void {
    return this.#topics.add(topic, onMessage as TopicListener)
  }

  #setState (state: ClientState): void {
    const previous = this.#state
    if (previous === state) return
    this.#state = state
    this.emit('state', { state, previous })
  }

  #stop (err: Error): void {
    this.#setState('closed')
    const waiters = this.#waiters
    this.#waiters = []
    for (const waiter of waiters) waiter.reject(err)
  }

  #clearReconnect (): void {
    if (this.#reconnectTimer !== null) clearTimeout(this.#reconnectTimer)
    this.#reconnectTimer = null
  }

  #clearRefresh (attempt: Attempt): void {
    if (attempt.refreshTimer !== null) clearTimeout(attempt.refreshTimer)
    attempt.refreshTimer = null
  }

  #rejectPending (err: ClientError): void {
    for (const [id, pending] of this.#pending) {
      clearTimeout(pending.timer)
      this.#pending.delete(id)
      pending.reject(err)
    }
  }

  /** Fetches a token and the constructor, then opens a socket, unless overtaken meanwhile. */
  #open (): void {
    const attempt: Attempt = { socket: null, token: null, openedAt: null, closing: null, status: null, retryAfter: null, refreshTimer: null, onClosed: null }
    this.#current = attempt
    let stage: 'token' | 'websocket' | 'socket' = 'token'
    Promise.resolve()
      .then(() => this.#options.getToken())
      .then(async (token) => {
        if (this.#current !== attempt) return
        if (token !== null && token !== undefined && typeof token !== 'string') throw new TypeError('getToken() must return a string or null')
        stage = 'websocket'
        const Ctor = await resolveWebSocket(this.#options.WebSocket)
        if (this.#current !== attempt) return
        stage = 'socket'
        attempt.token = token === '' ? null : token ?? null
        this.#attach(attempt, Ctor)
      })
      .catch((err: unknown) => {
        if (this.#current !== attempt) return
        const message = `could not connect: ${(err as Error)?.message ?? String(err)}`
        this.emit('error', stage === 'socket'
          ? err as Error
          : new ClientError(stage === 'token' ? 'FST_WSM_CLIENT_TOKEN' : 'FST_WSM_CLIENT_NO_WEBSOCKET', message, { cause: err }))
        this.#ended(attempt, { code: 1006, reason: '', byServer: false, status: null, retryAfter: null })
      })
  }

  #attach (attempt: Attempt, Ctor: WebSocketConstructor): void {
    const token = attempt.token
    let socket: WebSocketLike
    if (token !== null && this.#protocols.length === 0 && isWsPackage(Ctor)) {
      // ws with no application protocol: the Authorization header (see isWsPackage).
      socket = new Ctor(this.#options.url, [], { headers: { authorization: 'Bearer ' + token } })
    } else {
      socket = new Ctor(this.#options.url, token === null ? [...this.#protocols] : [...this.#protocols, 'bearer.' + token])
    }
    attempt.socket = socket
    socket.binaryType = 'arraybuffer'
    watchRefusal(socket, (refusal) => {
      attempt.status = refusal.status
      attempt.retryAfter = refusal.retryAfter
    })
    socket.addEventListener('open', () => this.#opened(attempt))
    socket.addEventListener('message', (event: { data: unknown }) => {
      if (this.#current === attempt) this.#received(event.data)
    })
    socket.addEventListener('error', (event: { error?: unknown, message?: string }) => {
      if (this.#current !== attempt) return
      const err = event.error instanceof Error
        ? event.error
        : new Error(event.message !== undefined && event.message !== '' ? event.message : 'WebSocket error')
      this.emit('error', err)
    })
    socket.addEventListener('close', (event: { code: number, reason: string }) => {
      this.#clearRefresh(attempt)
      if (attempt.closing === 'user') {
        attempt.onClosed?.()
        this.emit('close', { code: event.code, reason: event.reason, status: attempt.status, willReconnect: false, delay: null })
        return
      }
      if (this.#current !== attempt) return
      this.#ended(attempt, {
        code: event.code,
        reason: event.reason,
        byServer: attempt.closing === null,
        status: attempt.status,
        retryAfter: parseRetryAfter(attempt.retryAfter, Date.now())
      })
    })
  }

  #opened (attempt: Attempt): void {
    if (this.#current !== attempt || attempt.socket === null) return
    attempt.openedAt = Date.now()
    this.#topics.opened()
    this.#setState('open')
    this.#scheduleRefresh(attempt, attempt.token === null ? null : tokenExpiry(attempt.token))
    this.emit('open', { protocol: attempt.socket.protocol })
    const waiters = this.#waiters
    this.#waiters = []
    for (const waiter of waiters) waiter.resolve()
    // After 'open': an application listener may subscribe there, and each topic is asked once.
    this.#topics.resubscribe()
  }

  #received (data: unknown): void {
    if (typeof data !== 'string') {
      this.emit('message', { data: data as ArrayBuffer, json: undefined })
      return
    }
    let json: unknown
    try {
      json = JSON.parse(data)
    } catch {
      this.emit('message', { data, json: undefined })
      return
    }
    if (typeof json === 'object' && json !== null) {
      const message = json as Record<string, unknown>
      if (typeof message.id === 'string') {
        const pending = this.#pending.get(message.id)
        if (pending !== undefined) {
          this.#pending.delete(message.id)
          clearTimeout(pending.timer)
          if (message.type === 'error') {
            const serverCode = typeof message.code === 'string' ? message.code : 'UNKNOWN'
            pending.reject(new ClientError('FST_WSM_CLIENT_ERROR_REPLY', `${serverCode}: ${String(message.message ?? '')}`, { serverCode }))
          } else {
            pending.resolve(message)
          }
          return
        }
      }
      if (message.type === 'topic.message' && this.#topics.deliver(message)) return
    }
    this.emit('message', { data, json })
  }

  /** Acts on the close-code table for the current attempt. */
  #ended (attempt: Attempt, ending: Ending): void {
    this.#current = null
    const now = Date.now()
    const stayed = attempt.openedAt !== null && this.#reconnect !== false && now - attempt.openedAt >= this.#reconnect.resetAfter
    if (stayed) {
      this.#attempt = 0
      this.#immediateUsed = false
    }
    this.#rejectPending(new ClientError('FST_WSM_CLIENT_CLOSED', `the connection closed (${ending.code}${ending.reason === '' ? '' : ' ' + ending.reason})`, { closeCode: ending.code }))
    const reconnect = this.#reconnect
    let decision = attempt.closing === 'refresh'
      ? { action: 'now' as const }
      : reconnect === false ? { action: 'stop' as const } : decide(ending, reconnect.base)
    // One immediate reconnect (a refreshed token, the server's 'Token expired'); a second one
    // before a connection stayed open backs off: a token that expires at once must not loop.
    if (decision.action === 'now') {
      if (this.#immediateUsed && reconnect !== false) decision = { action: 'backoff', floor: 0 }
      this.#immediateUsed = true
    }
    let delay: number | null = null
    if (decision.action === 'now') delay = 0
    else if (decision.action === 'backoff' && reconnect !== false) {
      delay = backoffDelay(reconnect, this.#attempt, decision.floor, this.#random)
      this.#attempt++
    }
    if (delay === null) {
      const err = ending.status !== null
        ? new ClientError('FST_WSM_CLIENT_REFUSED', `the server refused the connection (${ending.status})`, { status: ending.status })
        : new ClientError('FST_WSM_CLIENT_CLOSED', `the server closed the connection (${ending.code}${ending.reason === '' ? '' : ' ' + ending.reason})`, { closeCode: ending.code })
      this.#stop(err)
    } else {
      this.#setState('reconnecting')
      this.#reconnectTimer = setTimeout(() => {
        this.#reconnectTimer = null
        this.#open()
      }, delay)
    }
    // Last, so that a listener calling close() or connect() sees the client's next step.
    this.emit('close', { code: ending.code, reason: ending.reason, status: ending.status, willReconnect: delay !== null, delay })
  }

  #scheduleRefresh (attempt: Attempt, exp: number | null): void {
    this.#clearRefresh(attempt)
    if (exp === null || this.#tokenRefresh === false) return
    attempt.refreshTimer = setTimeout(() => {
      attempt.refreshTimer = null
      this.#refresh(attempt, exp).catch((err: unknown) => this.emit('error', err as Error))
    }, refreshDelay(exp, Date.now()))
  }

  async #refresh (attempt: Attempt, exp: number): Promise<void> {
    if (this.#current !== attempt || attempt.socket === null) return
    if (this.#tokenRefresh === 'in-band' && this.#inBand) {
      // Half of the time left, so that a server that never answers still leaves time to reconnect.
      const timeout = Math.max(1, Math.min(this.#requestTimeout, (exp * 1000 - Date.now()) / 2))
      try {
        const token = await this.#options.getToken()
        if (this.#current !== attempt) return
        if (typeof token !== 'string' || token === '') throw new TypeError('getToken() gave no token to refresh with')
        const reply = await this.request('auth.refresh', { token }, { timeout })
        if (this.#current !== attempt) return
        attempt.token = token
        const next = typeof reply.exp === 'number' ? reply.exp : reply.exp === null ? null : tokenExpiry(token)
        this.emit('refreshed', { exp: next })
        this.#scheduleRefresh(attempt, next)
        return
      } catch (err) {
        if (this.#current !== attempt) return
        const code = (err as ClientError).code
        if (code === 'FST_WSM_CLIENT_CLOSED') return
        if (code === 'FST_WSM_CLIENT_TIMEOUT' || (err as ClientError).serverCode === 'UNKNOWN_TYPE') this.#inBand = false
        else this.emit('error', err as Error)
      }
    }
    // Reconnecting with a fresh token: the close handler connects again at once.
    attempt.closing = 'refresh'
    attempt.socket.close(1000, 'Token refresh')
  }
}

/** A client of a fastify-ws-manager route; call connect() to start. */
export function createClient (options: ClientOptions): Client {
  return new Client(options)
}
