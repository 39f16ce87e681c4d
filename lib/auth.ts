// JWT authentication of upgrades, on top of the application's @fastify/jwt: which token is
// chosen (lib/token.ts), the failure budget (lib/auth-failures.ts), and verification here.
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { FailureBudget, type FailureLimitOptions } from './auth-failures'
import { errors } from './errors'
import { ipKey } from './ip'
import { UpgradeRefusal } from './refusal'
import { kChosenToken } from './symbols'
import { claimedSubject, extractToken, headerAlgorithm, verifiedExpiry, TOKEN_SOURCES, type CookieSettings, type TokenLookup, type TokenSource } from './token'
import { checkBool, checkInt, checkString, fail, section } from './validate'

/** JWT authentication on upgrade, on top of the application's @fastify/jwt. */
export interface AuthOptions {
  /**
   * Claim of the verified token that holds the user id (a string or a number). Read from what
   * @fastify/jwt's verification returned, after its `formatUser` if the application set one.
   * @default 'sub'
   */
  userIdClaim: string
  /**
   * Where a token is looked for, in order: the `Authorization: Bearer` header, a
   * `Sec-WebSocket-Protocol` entry, the query parameter, @fastify/jwt's cookie. The first
   * source that has a token decides; that token alone is verified and read.
   * @default ['header', 'subprotocol', 'query', 'cookie']
   */
  sources: TokenSource[]
  /**
   * Query parameter a token may come in (redacted from the URL of WebSocket routes before
   * anything logs it); false turns the query source off.
   * @default 'access_token'
   */
  queryParam: string | false
  /**
   * Prefix of the `Sec-WebSocket-Protocol` entry that carries a token (`bearer.<jwt>`): token
   * characters ending in `.`, `-` or `_`, so no application protocol name equals it. The entry
   * is never selected as the protocol.
   * @default 'bearer.'
   */
  subprotocolPrefix: string
  /**
   * Accepted `alg` values; a token whose header names another is refused before any
   * signature check. Null: @fastify/jwt's `verify.algorithms` if set, else its
   * `sign.algorithm`, else ['HS256']. With asymmetric keys, set it (e.g. ['RS256']).
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
   * Failed authentications allowed per (IP, claimed subject) and per IP; over either, 429
   * before the signature is checked. False turns it off.
   * @default { max: 10, ipMax: 100, timeWindow: 60000 }
   */
  failureLimit: FailureLimitOptions | false
}

/** The `auth` option as given: every field optional, the failure limit partial too. */
export type AuthInput = Partial<Omit<AuthOptions, 'failureLimit'>> & {
  failureLimit?: false | Partial<FailureLimitOptions>
}

/** What a successful authentication gives the connection. */
export interface AuthResult {
  userId: string
  /** What @fastify/jwt's verification returned (the claims, or `formatUser`'s value). */
  user: Record<string, unknown>
  /** Epoch ms when the connection must close (exp plus grace), or Infinity. */
  closeAt: number
  /** The token's `exp` in seconds, or null without one. */
  exp: number | null
}

/** The defaults of {@link AuthOptions}. */
export const AUTH_DEFAULTS: Readonly<AuthOptions> = Object.freeze({
  userIdClaim: 'sub',
  sources: TOKEN_SOURCES as TokenSource[],
  queryParam: 'access_token',
  subprotocolPrefix: 'bearer.',
  algorithms: null,
  closeOnExpiry: true,
  expiryGraceMs: 0,
  failureLimit: Object.freeze({ max: 10, ipMax: 100, timeWindow: 60_000 })
})

const AUTH_KEYS = ['userIdClaim', 'sources', 'queryParam', 'subprotocolPrefix', 'algorithms', 'closeOnExpiry', 'expiryGraceMs', 'failureLimit'] as const
// RFC 6455 subprotocol names are RFC 7230 tokens.
const TOKEN_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/
const ALGORITHM = /^(HS|RS|PS|ES)(256|384|512)$|^EdDSA$/

function resolveFailureLimit (input: unknown): FailureLimitOptions | false {
  const base = AUTH_DEFAULTS.failureLimit as FailureLimitOptions
  if (input === false) return false
  if (input === undefined) return { ...base }
  const f = section('auth.failureLimit', input, ['max', 'ipMax', 'timeWindow'])
  const max = checkInt('auth.failureLimit.max', f.max ?? base.max, 1, 1_000_000)
  const ipMax = checkInt('auth.failureLimit.ipMax', f.ipMax ?? Math.max(base.ipMax, max * 10), 1, 100_000_000)
  if (ipMax < max) fail('auth.failureLimit.ipMax', `expected at least auth.failureLimit.max (${max}), got ${ipMax}`)
  return { max, ipMax, timeWindow: checkInt('auth.failureLimit.timeWindow', f.timeWindow ?? base.timeWindow, 1, 86_400_000) }
}

function resolveSources (input: unknown): TokenSource[] {
  if (input === undefined) return [...AUTH_DEFAULTS.sources]
  if (!Array.isArray(input) || input.length === 0 || new Set(input).size !== input.length ||
    !input.every((s) => (TOKEN_SOURCES as readonly unknown[]).includes(s))) {
    fail('auth.sources', `expected a non-empty list without repeats of ${TOKEN_SOURCES.map((s) => `'${s}'`).join(', ')}`)
  }
  return [...input] as TokenSource[]
}

/**
 * Validates the `auth` option over {@link AUTH_DEFAULTS}; false turns authentication off.
 * @throws FST_WSM_OPTION_INVALID naming `auth.<option>`.
 */
export function resolveAuth (input: unknown): AuthOptions | false {
  if (input === false) return false
  if (input === undefined || input === true) return { ...AUTH_DEFAULTS, sources: [...AUTH_DEFAULTS.sources] }
  const a = section('auth', input, AUTH_KEYS)
  const queryParam = a.queryParam ?? AUTH_DEFAULTS.queryParam
  if (queryParam !== false && (typeof queryParam !== 'string' || !/^[\w.-]+$/.test(queryParam))) {
    fail('auth.queryParam', `expected a parameter name or false, got ${JSON.stringify(queryParam)}`)
  }
  const algorithms = a.algorithms ?? null
  if (algorithms !== null && (!Array.isArray(algorithms) || algorithms.length === 0 ||
    !algorithms.every((x) => typeof x === 'string' && ALGORITHM.test(x)))) {
    fail('auth.algorithms', 'expected a non-empty list of JWS algorithms such as [\'HS256\'] or [\'RS256\'] ("none" is never accepted)')
  }
  const prefix = checkString('auth.subprotocolPrefix', a.subprotocolPrefix ?? AUTH_DEFAULTS.subprotocolPrefix)
  if (!TOKEN_CHARS.test(prefix) || prefix.length < 2 || !/[._-]$/.test(prefix)) {
    fail('auth.subprotocolPrefix', `expected protocol-name characters ending in '.', '-' or '_' (such as 'bearer.'), so that no application protocol equals it; got ${JSON.stringify(prefix)}`)
  }
  const userIdClaim = checkString('auth.userIdClaim', a.userIdClaim ?? AUTH_DEFAULTS.userIdClaim)
  if (userIdClaim === '') fail('auth.userIdClaim', 'expected a claim name, got an empty string')
  const sources = resolveSources(a.sources)
  return {
    userIdClaim,
    sources: queryParam === false ? sources.filter((s) => s !== 'query') : sources,
    queryParam: queryParam as string | false,
    subprotocolPrefix: prefix,
    algorithms: algorithms as string[] | null,
    closeOnExpiry: checkBool('auth.closeOnExpiry', a.closeOnExpiry ?? AUTH_DEFAULTS.closeOnExpiry),
    expiryGraceMs: checkInt('auth.expiryGraceMs', a.expiryGraceMs ?? AUTH_DEFAULTS.expiryGraceMs, 0, 86_400_000),
    failureLimit: resolveFailureLimit(a.failureLimit)
  }
}

interface JwtDecorator {
  options?: { verify?: { algorithms?: string[], extractToken?: unknown, onlyCookie?: unknown }, sign?: { algorithm?: string } }
  cookie?: CookieSettings
}

type RequestWithToken = FastifyRequest & { [kChosenToken]?: string }
type VerifiableRequest = RequestWithToken & { jwtVerify: (options?: object) => Promise<unknown> }

// Per-call options for request.jwtVerify(): @fastify/jwt verifies exactly the token the plugin
// chose, whatever its own `verify.extractToken` or `verify.onlyCookie` would pick. One frozen
// object for every upgrade; the token travels on the request under a Symbol.
const VERIFY_CHOSEN = Object.freeze({
  extractToken (request: RequestWithToken): string | undefined {
    return request[kChosenToken]
  }
})

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

/** Verifies upgrade tokens with the application's @fastify/jwt, with pinned algorithms. */
export class Authenticator {
  readonly #options: AuthOptions
  readonly #algorithms: ReadonlySet<string>
  readonly #lookup: TokenLookup
  readonly #failures: FailureBudget | null
  // @fastify/jwt reads `Authorization: Bearer <token>` itself when the application set no
  // extractToken or onlyCookie.
  readonly #jwtReadsHeader: boolean
  #failed = 0

  /** @throws FST_WSM_JWT_MISSING without @fastify/jwt; FST_WSM_OPTION_INVALID when no algorithm can be pinned. */
  constructor (fastify: FastifyInstance, options: AuthOptions) {
    if (!fastify.hasDecorator('jwt')) throw new errors.FST_WSM_JWT_MISSING()
    this.#options = options
    const jwt = (fastify as unknown as { jwt: JwtDecorator }).jwt
    const signing = jwt.options?.sign?.algorithm
    const algorithms = options.algorithms ?? jwt.options?.verify?.algorithms ?? (signing === undefined ? ['HS256'] : [signing])
    if (algorithms.length === 0) throw new errors.FST_WSM_OPTION_INVALID('auth.algorithms', 'at least one algorithm')
    if (algorithms.includes('none')) throw new errors.FST_WSM_OPTION_INVALID('auth.algorithms', 'algorithms other than "none"')
    this.#algorithms = new Set(algorithms)
    this.#lookup = { sources: options.sources, subprotocolPrefix: options.subprotocolPrefix, cookie: jwt.cookie ?? null }
    this.#failures = options.failureLimit === false ? null : new FailureBudget(options.failureLimit)
    this.#jwtReadsHeader = jwt.options?.verify?.extractToken === undefined && (jwt.options?.verify?.onlyCookie ?? false) === false
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
    const found = extractToken(request, this.#lookup)
    const failures = this.#failures
    const now = Date.now()
    const ip = ipKey(request.ip)
    const subject = failures === null ? '' : claimedSubject(found === null ? null : found.token, this.#options.userIdClaim)
    if (failures !== null) {
      const wait = failures.blockedFor(ip, subject, now)
      if (wait > 0) {
        return new UpgradeRefusal(429, 'Too many failed authentications', 'auth failures over budget', { 'retry-after': String(wait) })
      }
    }
    // Counted before verifying and refunded on success: concurrent attempts (a slow key
    // callback) cannot all pass the budget at once.
    failures?.fail(ip, subject, now)
    const result = found === null
      ? new UpgradeRefusal(401, 'Missing bearer token', 'no token', { 'www-authenticate': UNAUTHORIZED })
      : await this.#verify(request as RequestWithToken, found.token, found.source)
    if (result instanceof UpgradeRefusal) this.#failed++
    else failures?.refund(ip, subject, now)
    return result
  }

  async #verify (request: RequestWithToken, token: string, source: TokenSource): Promise<AuthResult | UpgradeRefusal> {
    const alg = headerAlgorithm(token)
    if (alg === null) return invalidToken('token is malformed', `malformed token (${source})`)
    if (!this.#algorithms.has(alg)) return invalidToken('token algorithm is not allowed', `algorithm ${alg.slice(0, 16)} refused (${source})`)
    // request.jwtVerify() runs the application's @fastify/jwt settings in full: key callbacks,
    // `trusted` (revocation) and `formatUser`. VERIFY_CHOSEN makes it verify this token.
    let verified: unknown
    request[kChosenToken] = token
    // Per-call options make @fastify/jwt build a verifier for the call. Where it would read
    // this very token by itself (a header of exactly `Bearer <token>`, which it splits on the
    // space), its cached verifier serves: the common case costs no more than plain jwtVerify().
    const own = source === 'header' && this.#jwtReadsHeader && request.headers.authorization === `Bearer ${token}`
    try {
      verified = await (own ? (request as VerifiableRequest).jwtVerify() : (request as VerifiableRequest).jwtVerify(VERIFY_CHOSEN))
    } catch (err) {
      const code = (err as { code?: string }).code ?? ''
      const message = FAST_JWT_MESSAGES[code] ?? 'token is invalid'
      return invalidToken(message, `${code || 'verify failed'} (${source})`)
    } finally {
      request[kChosenToken] = undefined
    }
    // Identity and expiry come from the value the verifier returned, and from nothing else.
    if (typeof verified !== 'object' || verified === null) {
      return invalidToken(`token has no "${this.#options.userIdClaim}" claim`, 'verified value is not an object')
    }
    const claims = verified as Record<string, unknown>
    const id = claims[this.#options.userIdClaim]
    if ((typeof id !== 'string' || id === '') && (typeof id !== 'number' || !Number.isFinite(id))) {
      return invalidToken(`token has no "${this.#options.userIdClaim}" claim`, 'no user id claim')
    }
    // formatUser may leave exp out of the user; the verified token still carries it.
    const exp = typeof claims.exp === 'number' && Number.isFinite(claims.exp) ? claims.exp : verifiedExpiry(token)
    const closeAt = this.#options.closeOnExpiry && exp !== null
      ? exp * 1000 + this.#options.expiryGraceMs
      : Infinity
    return { userId: String(id), user: claims, closeAt, exp }
  }

  /**
   * Verifies a token sent in band (`auth.refresh`) through the same @fastify/jwt settings
   * (key callbacks, `trusted`, `formatUser`), on a stand-in request without headers.
   */
  async verifyToken (token: string, standIn: FastifyRequest): Promise<AuthResult | UpgradeRefusal> {
    // The upgrades' failure budget, by the connection's IP and the subject the token claims:
    // an open connection cannot have the server check bad tokens any faster than a new one.
    const failures = this.#failures
    const now = Date.now()
    const ip = ipKey(standIn.ip)
    const subject = failures === null ? '' : claimedSubject(token, this.#options.userIdClaim)
    if (failures !== null) {
      const wait = failures.blockedFor(ip, subject, now)
      if (wait > 0) return new UpgradeRefusal(429, 'Too many failed authentications', 'auth failures over budget', { 'retry-after': String(wait) })
    }
    failures?.fail(ip, subject, now)
    const result = await this.#verify(standIn as RequestWithToken, token, 'message' as TokenSource)
    if (result instanceof UpgradeRefusal) this.#failed++
    else failures?.refund(ip, subject, now)
    return result
  }
}
