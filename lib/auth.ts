import type { IncomingMessage } from 'node:http'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { errors } from './errors'

/** JWT authentication on upgrade, on top of the application's @fastify/jwt. */
export interface AuthOptions {
  /**
   * Claim that holds the user id (a string or a number).
   * @default 'sub'
   */
  userIdClaim: string
  /**
   * Query parameter a token may come in (redacted from the URL before anything logs it);
   * false turns the query source off.
   * @default 'access_token'
   */
  queryParam: string | false
  /**
   * Prefix of the `Sec-WebSocket-Protocol` entry that carries a token (`bearer.<jwt>`).
   * The entry is never selected as the protocol.
   * @default 'bearer.'
   */
  subprotocolPrefix: string
  /**
   * Accepted `alg` values; a token whose header names another is refused before any
   * signature check, whatever the token's header says. Null: @fastify/jwt's
   * `verify.algorithms` if set, else its `sign.algorithm`, else ['HS256'].
   * With asymmetric keys, set it (e.g. ['RS256']).
   * @default null
   */
  algorithms: string[] | null
  /**
   * Close an open connection with 1008 "Token expired" when its token's `exp` passes.
   * @default true
   */
  closeOnExpiry: boolean
  /**
   * Milliseconds past `exp` before that close.
   * @default 0
   */
  expiryGraceMs: number
  /**
   * Failed authentications allowed per IP in `timeWindow` ms; over it, 429 before the
   * signature is checked. False turns it off.
   * @default { max: 10, timeWindow: 60000 }
   */
  failureLimit: { max: number, timeWindow: number } | false
}

/** The `auth` option as given: every field optional, the failure limit partial too. */
export type AuthInput = Partial<Omit<AuthOptions, 'failureLimit'>> & {
  failureLimit?: false | Partial<{ max: number, timeWindow: number }>
}

/** What a successful authentication gives the connection. */
export interface AuthResult {
  userId: string
  user: Record<string, unknown>
  /** Epoch ms when the connection must close (exp plus grace), or Infinity. */
  closeAt: number
}

/** A refused upgrade: the HTTP status, body message and headers to answer with. */
export class UpgradeRefusal {
  readonly statusCode: number
  readonly message: string
  readonly headers: Record<string, string>
  /** Why, for the log; never the token. */
  readonly reason: string

  constructor (statusCode: number, message: string, reason: string, headers: Record<string, string> = {}) {
    this.statusCode = statusCode
    this.message = message
    this.reason = reason
    this.headers = headers
  }
}

/** Holds a token taken out of the URL, on the raw request we do not own. */
export const kQueryToken = Symbol('fastify-ws-manager.queryToken')

type RawWithToken = IncomingMessage & { [kQueryToken]?: string }

/**
 * A 'request' and 'upgrade' listener that runs before Fastify's: it removes the token
 * parameter from the URL (matched by its decoded name, so `access%5Ftoken` is caught too),
 * so Fastify's "incoming request" line and every later log line see the URL without it, and
 * keeps the token on the raw request. Plain requests get it too: a proxy that drops the
 * Upgrade header still sends the URL.
 */
export function createUrlRedactor (param: string): (request: IncomingMessage) => void {
  return function redactTokenFromUrl (request: IncomingMessage): void {
    const url = request.url
    if (url === undefined) return
    const q = url.indexOf('?')
    if (q === -1) return
    // Cheap test first: most URLs carry neither the name nor an escape.
    if (!url.includes(param, q) && !url.includes('%', q)) return
    const params = new URLSearchParams(url.slice(q + 1))
    const token = params.get(param)
    if (token === null) return
    params.delete(param)
    const rest = params.toString()
    ;(request as RawWithToken)[kQueryToken] = token
    request.url = url.slice(0, q) + (rest === '' ? '' : `?${rest}`)
  }
}

/**
 * ws's `handleProtocols`: selects the first offered protocol that is not a token entry, or
 * none. Echoing the token entry would put it in the response and in every proxy's logs.
 */
export function createProtocolSelector (prefix: string): (protocols: Set<string>) => string | false {
  return function selectProtocol (protocols: Set<string>): string | false {
    for (const protocol of protocols) if (!protocol.startsWith(prefix)) return protocol
    return false
  }
}

interface CookieSettings { cookieName: string, signed?: boolean }

type RequestWithCookies = FastifyRequest & {
  cookies?: Record<string, string | undefined>
  unsignCookie?: (value: string) => { valid: boolean, value: string | null }
}

/** Where a token was found. */
export type TokenSource = 'header' | 'subprotocol' | 'query' | 'cookie'

/** Takes the token from the header, the subprotocol, the query or the cookie, in that order. */
export function extractToken (request: FastifyRequest, options: AuthOptions, cookie: CookieSettings | null): { token: string, source: TokenSource } | null {
  const authorization = request.headers.authorization
  if (typeof authorization === 'string' && authorization.length > 7 && authorization.slice(0, 7).toLowerCase() === 'bearer ') {
    return { token: authorization.slice(7).trim(), source: 'header' }
  }
  const protocols = request.headers['sec-websocket-protocol']
  if (typeof protocols === 'string' && protocols.includes(options.subprotocolPrefix)) {
    for (const entry of protocols.split(',')) {
      const protocol = entry.trim()
      if (protocol.startsWith(options.subprotocolPrefix)) {
        return { token: protocol.slice(options.subprotocolPrefix.length), source: 'subprotocol' }
      }
    }
  }
  const fromQuery = (request.raw as RawWithToken)[kQueryToken]
  if (options.queryParam !== false && typeof fromQuery === 'string' && fromQuery !== '') {
    return { token: fromQuery, source: 'query' }
  }
  if (cookie !== null) {
    const req = request as RequestWithCookies
    let value = req.cookies?.[cookie.cookieName]
    if (typeof value === 'string' && value !== '' && cookie.signed === true && req.unsignCookie !== undefined) {
      const unsigned = req.unsignCookie(value)
      value = unsigned.valid && unsigned.value !== null ? unsigned.value : undefined
    }
    if (typeof value === 'string' && value !== '') return { token: value, source: 'cookie' }
  }
  return null
}

// Only called on a token the verifier accepted, so its payload segment is well-formed JSON.
function decodePayload (token: string): Record<string, unknown> {
  const start = token.indexOf('.') + 1
  return JSON.parse(Buffer.from(token.slice(start, token.indexOf('.', start)), 'base64url').toString('utf8')) as Record<string, unknown>
}

/**
 * The key an IP is counted under: IPv4 as it is, IPv6 by its /64 prefix, since a single
 * client usually holds a whole /64 and could rotate through it.
 */
export function ipKey (ip: string | undefined): string {
  // Injected requests (app.injectWS) come without a socket address.
  if (typeof ip !== 'string') return 'unknown'
  if (!ip.includes(':') || ip.startsWith('::ffff:')) return ip
  const [head, tail] = ip.split('::')
  const left = head === '' ? [] : head.split(':')
  const right = tail === undefined || tail === '' ? [] : tail.split(':')
  const groups = tail === undefined ? left : [...left, ...Array(8 - left.length - right.length).fill('0'), ...right]
  return `${groups.slice(0, 4).map((g) => g.toLowerCase().replace(/^0+(?=.)/, '')).join(':')}::/64`
}

// An issuer's tokens share a handful of header segments; decoding each once is enough.
const headerCache = new Map<string, string | null>()
const HEADER_CACHE_MAX = 64

/** The `alg` of a token's header, without verifying anything; null when unreadable. */
export function headerAlgorithm (token: string): string | null {
  const dot = token.indexOf('.')
  if (dot <= 0) return null
  const segment = token.slice(0, dot)
  const cached = headerCache.get(segment)
  if (cached !== undefined) return cached
  let alg: string | null = null
  try {
    const header = JSON.parse(Buffer.from(segment, 'base64url').toString('utf8')) as { alg?: unknown }
    if (typeof header.alg === 'string') alg = header.alg
  } catch {}
  // Bounded: a client sending random headers must not grow it.
  if (headerCache.size < HEADER_CACHE_MAX && segment.length <= 256) headerCache.set(segment, alg)
  return alg
}

interface JwtDecorator {
  options?: { verify?: { algorithms?: string[] }, sign?: { algorithm?: string } }
  cookie?: CookieSettings
}

type VerifiableRequest = FastifyRequest & { jwtVerify: () => Promise<unknown> }

const UNAUTHORIZED = 'Bearer realm="websocket"'

function invalidToken (message: string, reason: string): UpgradeRefusal {
  return new UpgradeRefusal(401, message, reason, {
    'www-authenticate': `${UNAUTHORIZED}, error="invalid_token", error_description="${message}"`
  })
}

const FAST_JWT_MESSAGES: Record<string, string> = {
  FST_JWT_AUTHORIZATION_TOKEN_EXPIRED: 'token expired',
  FST_JWT_AUTHORIZATION_TOKEN_INVALID: 'token is invalid',
  FST_JWT_AUTHORIZATION_TOKEN_UNTRUSTED: 'token is not trusted',
  FST_JWT_AUTHORIZATION_TOKEN_UNSIGNED: 'token has no signature',
  FAST_JWT_EXPIRED: 'token expired',
  FAST_JWT_INACTIVE: 'token not yet valid',
  FAST_JWT_INVALID_SIGNATURE: 'token signature is invalid',
  FAST_JWT_INVALID_ALGORITHM: 'token algorithm is not allowed',
  FAST_JWT_MALFORMED: 'token is malformed',
  FAST_JWT_INVALID_TYPE: 'token is malformed',
  FAST_JWT_MISSING_SIGNATURE: 'token has no signature'
}

/** Counts failed authentications per IP in fixed windows; O(1) per check. */
export class FailureLimiter {
  readonly #max: number
  readonly #window: number
  readonly #entries = new Map<string, { count: number, resetAt: number }>()

  constructor (max: number, timeWindow: number) {
    this.#max = max
    this.#window = timeWindow
  }

  /** Seconds until the IP may try again, or 0 when it is under its budget. */
  blockedFor (ip: string, now: number): number {
    const entry = this.#entries.get(ip)
    if (entry === undefined) return 0
    if (entry.resetAt <= now) {
      this.#entries.delete(ip)
      return 0
    }
    return entry.count >= this.#max ? Math.ceil((entry.resetAt - now) / 1000) : 0
  }

  fail (ip: string, now: number): void {
    const entry = this.#entries.get(ip)
    if (entry === undefined || entry.resetAt <= now) {
      // Expired entries are swept when the map grows, so a spray of addresses cannot grow it for ever.
      if (this.#entries.size >= 100_000) this.#sweep(now)
      this.#entries.set(ip, { count: 1, resetAt: now + this.#window })
    } else {
      entry.count++
    }
  }

  /** IPs currently counted. */
  get size (): number {
    return this.#entries.size
  }

  #sweep (now: number): void {
    for (const [ip, entry] of this.#entries) if (entry.resetAt <= now) this.#entries.delete(ip)
    if (this.#entries.size >= 100_000) this.#entries.clear()
  }
}

/** Verifies upgrade tokens with the application's @fastify/jwt, with pinned algorithms. */
export class Authenticator {
  readonly #options: AuthOptions
  readonly #jwt: JwtDecorator
  readonly #algorithms: ReadonlySet<string>
  readonly #cookie: CookieSettings | null
  readonly #failures: FailureLimiter | null
  #failed = 0

  /** @throws FST_WSM_JWT_MISSING without @fastify/jwt; FST_WSM_OPTION_INVALID when no algorithm can be pinned. */
  constructor (fastify: FastifyInstance, options: AuthOptions) {
    if (!fastify.hasDecorator('jwt')) throw new errors.FST_WSM_JWT_MISSING()
    this.#options = options
    this.#jwt = (fastify as unknown as { jwt: JwtDecorator }).jwt
    const signing = this.#jwt.options?.sign?.algorithm
    const algorithms = options.algorithms ?? this.#jwt.options?.verify?.algorithms ?? (signing === undefined ? ['HS256'] : [signing])
    if (algorithms.length === 0) throw new errors.FST_WSM_OPTION_INVALID('auth.algorithms', 'at least one algorithm')
    if (algorithms.includes('none')) throw new errors.FST_WSM_OPTION_INVALID('auth.algorithms', 'algorithms other than "none"')
    this.#algorithms = new Set(algorithms)
    this.#cookie = this.#jwt.cookie ?? null
    this.#failures = options.failureLimit === false ? null : new FailureLimiter(options.failureLimit.max, options.failureLimit.timeWindow)
  }

  /** The algorithms in force. */
  get algorithms (): string[] {
    return [...this.#algorithms]
  }

  /** Failed authentications since start. */
  get failed (): number {
    return this.#failed
  }

  /** Verifies the request's token; a refusal says the status and message to answer with. */
  async authenticate (request: FastifyRequest): Promise<AuthResult | UpgradeRefusal> {
    const now = Date.now()
    const ip = ipKey(request.ip)
    if (this.#failures !== null) {
      const wait = this.#failures.blockedFor(ip, now)
      if (wait > 0) {
        return new UpgradeRefusal(429, 'Too many failed authentications', 'auth failures over budget', { 'retry-after': String(wait) })
      }
    }
    const result = await this.#verify(request)
    if (result instanceof UpgradeRefusal) {
      this.#failed++
      this.#failures?.fail(ip, now)
    }
    return result
  }

  async #verify (request: FastifyRequest): Promise<AuthResult | UpgradeRefusal> {
    const found = extractToken(request, this.#options, this.#cookie)
    if (found === null) {
      return new UpgradeRefusal(401, 'Missing bearer token', 'no token', { 'www-authenticate': UNAUTHORIZED })
    }
    const alg = headerAlgorithm(found.token)
    if (alg === null) return invalidToken('token is malformed', `malformed token (${found.source})`)
    if (!this.#algorithms.has(alg)) return invalidToken('token algorithm is not allowed', `algorithm ${alg.slice(0, 16)} refused (${found.source})`)
    // request.jwtVerify() is what runs the application's @fastify/jwt settings in full: its
    // cached verifier, key callbacks, `trusted` (revocation) and `formatUser`. It reads the
    // Authorization header, so a token from another source is put there for the call only.
    const headers = request.headers
    const original = headers.authorization
    headers.authorization = `Bearer ${found.token}`
    try {
      await (request as VerifiableRequest).jwtVerify()
    } catch (err) {
      const code = (err as { code?: string }).code ?? ''
      const message = FAST_JWT_MESSAGES[code] ?? 'token is invalid'
      return invalidToken(message, `${code || 'verify failed'} (${found.source})`)
    } finally {
      if (original === undefined) delete headers.authorization
      else headers.authorization = original
    }
    const payload = decodePayload(found.token)
    const id = payload[this.#options.userIdClaim]
    if ((typeof id !== 'string' || id === '') && typeof id !== 'number') {
      return invalidToken(`token has no "${this.#options.userIdClaim}" claim`, 'no user id claim')
    }
    const exp = payload.exp
    const closeAt = this.#options.closeOnExpiry && typeof exp === 'number'
      ? exp * 1000 + this.#options.expiryGraceMs
      : Infinity
    return { userId: String(id), user: payload, closeAt }
  }
}
