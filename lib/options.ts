import type { UpgradeRateLimitOptions } from './admission'
import type { AuthInput, AuthOptions } from './auth'
import { resolveCompressionProfile, type CompressionOption, type CompressionSettings } from './compression'
import type { BackpressureOptions, BackpressurePolicy } from './delivery'
import { isSendableCloseCode } from './errors'
import { resolveFrameSizeProfile, type FrameSizeLimits, type FrameSizeOption } from './frame-size'
import { HEARTBEAT_DEFAULTS, resolveHeartbeatOptions, type HeartbeatOptions, type HeartbeatSettings, type ResolvedHeartbeatOptions } from './heartbeat'
import type { MessageRateLimitOptions, OriginPolicy } from './limits'
import type { MessageRoutes } from './router'
import { checkInt, checkOneOf, checkString, fail, isPlainObject, section } from './validate'

export { checkInt } from './validate'

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

/** Options of the plugin, as passed to `app.register(wsManager, options)`. */
export interface WsManagerOptions {
  /**
   * JWT authentication on upgrade, verified with the application's @fastify/jwt. On unless
   * `false`; `true` or an object of {@link AuthOptions} to tune it.
   * @default true
   */
  auth?: boolean | AuthInput
  /**
   * Origins allowed to open a WebSocket from a browser: 'same-origin' (the Origin's host must
   * equal the request's host), '*', a list of strings and RegExps, or a function.
   * Env ALLOWED_ORIGINS.
   * @default 'same-origin'
   */
  allowedOrigins?: OriginPolicy
  /**
   * Refuse upgrades without an Origin header (non-browser clients) with 403.
   * @default false
   */
  requireOrigin?: boolean
  /**
   * Upgrades per user (per IP without auth) per time window, through @fastify/rate-limit;
   * `false` turns it off. Env UPGRADE_RATE_LIMIT.
   * @default { max: 30, timeWindow: 60000 }
   */
  upgradeRateLimit?: false | Partial<UpgradeRateLimitOptions>
  /**
   * Incoming messages per user, a token bucket shared by the user's connections on this
   * server; `false` turns it off. Env MESSAGE_RATE_LIMIT.
   * @default { max: 100, timeWindow: 1000, burst: 200, policy: 'close' }
   */
  messageRateLimit?: false | Partial<MessageRateLimitOptions>
  /**
   * Open connections on this server; over it upgrades get 503. 0 means no limit.
   * Env MAX_CONNECTIONS.
   * @default 0
   */
  maxConnections?: number
  /**
   * Open connections per authenticated user; over it upgrades get 429, or with
   * `onUserLimit: 'closeOldest'` the user's oldest connection is closed with 1008.
   * 0 means no limit. Env MAX_CONNECTIONS_PER_USER.
   * @default 0
   */
  maxConnectionsPerUser?: number
  /** @default 'reject' */
  onUserLimit?: 'reject' | 'closeOldest'
  /** Graceful close settings. */
  close?: Partial<CloseOptions>
  /**
   * Ping/pong heartbeat of every connection; `false` turns it off. Env PING_INTERVAL,
   * PONG_TIMEOUT, MAX_MISSED_PONGS.
   * @default { pingInterval: 30000, pongTimeout: 5000, maxMissedPongs: 3 }
   */
  heartbeat?: false | HeartbeatOptions
  /**
   * Milliseconds without a data message in either direction after which a connection is
   * closed with 1001 "Idle timeout"; 0 turns it off. Pings and pongs are not activity.
   * Env IDLE_TIMEOUT.
   * @default 300000
   */
  idleTimeout?: number
  /**
   * Message size limit: 'default' (1 MiB, warn at 512 KiB), 'strict' (256 KiB / 128 KiB),
   * 'lenient' (10 MiB / 5 MiB) or `{ maxFrameSize, warnThreshold }`. Enforced by ws's
   * maxPayload on the decompressed size; over it the peer gets 1009.
   * Env MAX_FRAME_SIZE, FRAME_WARN_THRESHOLD.
   * @default 'default'
   */
  frameSize?: FrameSizeOption
  /**
   * permessage-deflate: 'default', 'high', 'fast', 'disabled', a boolean, or settings.
   * Env COMPRESSION_ENABLED, COMPRESSION_LEVEL, COMPRESSION_THRESHOLD.
   * @default 'disabled'
   */
  compression?: CompressionOption
  /**
   * What happens to a connection whose peer reads slower than the server sends.
   * Env BACKPRESSURE_HIGH_WATER_MARK, BACKPRESSURE_POLICY.
   * @default { highWaterMark: 1048576, lowWaterMark: 262144, policy: 'close' }
   */
  backpressure?: Partial<BackpressureOptions>
  /**
   * Consecutive message-router errors after which a connection is closed (1007 or 1008).
   * @default 10
   */
  messageErrorLimit?: number
}

/** Per-route settings, as `config: { wsManager: { ... } }` on a `{ websocket: true }` route. */
export interface RouteWsManagerConfig {
  /** `false` lets this route's upgrades in without a token. */
  auth?: false
  /** This route's upgrade rate limit, or `false` for none. */
  upgradeRateLimit?: false | Partial<UpgradeRateLimitOptions>
  /** Heartbeat settings for this route's connections, or `false` to turn it off here. */
  heartbeat?: false | Partial<HeartbeatSettings>
  /** Idle timeout for this route's connections; 0 turns it off here. */
  idleTimeout?: number
  /** Backpressure for this route's connections. */
  backpressure?: Partial<BackpressureOptions>
  /** JSON message routing: each `type` with its JSON Schema and handler. */
  messages?: MessageRoutes
  /** Consecutive router errors before the close. */
  messageErrorLimit?: number
}

/** The options after defaults were applied and every value was validated. */
export interface ResolvedOptions {
  auth: AuthOptions | false
  allowedOrigins: OriginPolicy
  requireOrigin: boolean
  upgradeRateLimit: UpgradeRateLimitOptions | false
  messageRateLimit: MessageRateLimitOptions | false
  maxConnections: number
  maxConnectionsPerUser: number
  onUserLimit: 'reject' | 'closeOldest'
  close: CloseOptions
  heartbeat: ResolvedHeartbeatOptions | false
  idleTimeout: number
  frameSize: FrameSizeLimits
  compression: CompressionSettings
  backpressure: BackpressureOptions
  messageErrorLimit: number
}

const MiB = 1024 * 1024

/** The defaults every option starts from. */
export const DEFAULTS: Readonly<ResolvedOptions> = Object.freeze({
  auth: Object.freeze({
    userIdClaim: 'sub',
    queryParam: 'access_token',
    subprotocolPrefix: 'bearer.',
    algorithms: null,
    closeOnExpiry: true,
    expiryGraceMs: 0,
    failureLimit: Object.freeze({ max: 10, timeWindow: 60_000 })
  }) as AuthOptions,
  allowedOrigins: 'same-origin' as OriginPolicy,
  requireOrigin: false,
  upgradeRateLimit: Object.freeze({ max: 30, timeWindow: 60_000 }),
  messageRateLimit: Object.freeze({ max: 100, timeWindow: 1000, burst: 200, policy: 'close' as const }),
  maxConnections: 0,
  maxConnectionsPerUser: 0,
  onUserLimit: 'reject' as const,
  close: Object.freeze({
    timeout: 5000,
    shutdownCode: 1001,
    shutdownReason: 'Server shutting down'
  }),
  heartbeat: Object.freeze({ ...HEARTBEAT_DEFAULTS, maxDetectionTime: null }),
  idleTimeout: 300_000,
  frameSize: Object.freeze(resolveFrameSizeProfile('default')),
  compression: Object.freeze(resolveCompressionProfile('disabled')),
  backpressure: Object.freeze({ highWaterMark: MiB, lowWaterMark: MiB / 4, policy: 'close' as BackpressurePolicy }),
  messageErrorLimit: 10
})

const TOP_LEVEL_KEYS = ['auth', 'allowedOrigins', 'requireOrigin', 'upgradeRateLimit', 'messageRateLimit', 'maxConnections',
  'maxConnectionsPerUser', 'onUserLimit', 'close', 'heartbeat', 'idleTimeout', 'frameSize', 'compression', 'backpressure', 'messageErrorLimit'] as const
const CLOSE_KEYS = ['timeout', 'shutdownCode', 'shutdownReason'] as const
const BACKPRESSURE_KEYS = ['highWaterMark', 'lowWaterMark', 'policy'] as const
const AUTH_KEYS = ['userIdClaim', 'queryParam', 'subprotocolPrefix', 'algorithms', 'closeOnExpiry', 'expiryGraceMs', 'failureLimit'] as const
const ROUTE_KEYS = ['auth', 'upgradeRateLimit', 'heartbeat', 'idleTimeout', 'backpressure', 'messages', 'messageErrorLimit'] as const
const POLICIES: readonly BackpressurePolicy[] = ['close', 'drop', 'wait']

/** Validates backpressure settings over a base; the low-water mark defaults to a quarter of the high. */
export function resolveBackpressure (input: unknown, base: BackpressureOptions, name: string): BackpressureOptions {
  const bp = section(name, input, BACKPRESSURE_KEYS)
  const highWaterMark = checkInt(`${name}.highWaterMark`, bp.highWaterMark ?? base.highWaterMark, 1024, 1024 * MiB)
  const lowDefault = bp.highWaterMark === undefined ? base.lowWaterMark : Math.floor(highWaterMark / 4)
  const lowWaterMark = checkInt(`${name}.lowWaterMark`, bp.lowWaterMark ?? lowDefault, 0, highWaterMark)
  const policy = checkOneOf(`${name}.policy`, bp.policy ?? base.policy, POLICIES)
  return { highWaterMark, lowWaterMark, policy }
}

function checkBool (name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') fail(name, `expected true or false, got ${JSON.stringify(value)}`)
  return value
}

function resolveAuth (input: unknown): AuthOptions | false {
  if (input === false) return false
  const base = DEFAULTS.auth as AuthOptions
  if (input === undefined || input === true) return { ...base }
  const a = section('auth', input, AUTH_KEYS)
  const queryParam = a.queryParam ?? base.queryParam
  if (queryParam !== false && (typeof queryParam !== 'string' || !/^[\w.-]+$/.test(queryParam))) {
    fail('auth.queryParam', `expected a parameter name or false, got ${JSON.stringify(queryParam)}`)
  }
  const algorithms = a.algorithms ?? null
  if (algorithms !== null && (!Array.isArray(algorithms) || algorithms.length === 0 ||
    !algorithms.every((x) => typeof x === 'string' && /^(HS|RS|PS|ES)(256|384|512)$|^EdDSA$/.test(x)))) {
    fail('auth.algorithms', 'expected a non-empty list of JWS algorithms such as [\'HS256\'] or [\'RS256\'] ("none" is never accepted)')
  }
  let failureLimit = base.failureLimit
  if (a.failureLimit === false) failureLimit = false
  else if (a.failureLimit !== undefined) failureLimit = resolveWindow(a.failureLimit, { max: 10, timeWindow: 60_000 }, 'auth.failureLimit')
  const prefix = checkString('auth.subprotocolPrefix', a.subprotocolPrefix ?? base.subprotocolPrefix)
  if (prefix === '') fail('auth.subprotocolPrefix', 'a non-empty prefix')
  return {
    userIdClaim: checkString('auth.userIdClaim', a.userIdClaim ?? base.userIdClaim),
    queryParam: queryParam as string | false,
    subprotocolPrefix: prefix,
    algorithms: algorithms as string[] | null,
    closeOnExpiry: checkBool('auth.closeOnExpiry', a.closeOnExpiry ?? base.closeOnExpiry),
    expiryGraceMs: checkInt('auth.expiryGraceMs', a.expiryGraceMs ?? base.expiryGraceMs, 0, 86_400_000),
    failureLimit
  }
}

/** Validates `{ max, timeWindow }` over a base. */
export function resolveWindow (input: unknown, base: { max: number, timeWindow: number }, name: string): { max: number, timeWindow: number } {
  const w = section(name, input, ['max', 'timeWindow'])
  return {
    max: checkInt(`${name}.max`, w.max ?? base.max, 1, 1_000_000_000),
    timeWindow: checkInt(`${name}.timeWindow`, w.timeWindow ?? base.timeWindow, 1, 86_400_000)
  }
}

function resolveUpgradeRateLimit (input: unknown, base: UpgradeRateLimitOptions | false, name: string): UpgradeRateLimitOptions | false {
  if (input === false) return false
  if (input === undefined) return base
  return resolveWindow(input, base === false ? DEFAULTS.upgradeRateLimit as UpgradeRateLimitOptions : base, name)
}

function resolveMessageRateLimit (input: unknown): MessageRateLimitOptions | false {
  if (input === false) return false
  const base = DEFAULTS.messageRateLimit as MessageRateLimitOptions
  if (input === undefined) return { ...base }
  const m = section('messageRateLimit', input, ['max', 'timeWindow', 'burst', 'policy'])
  const { max, timeWindow } = resolveWindow({ max: m.max, timeWindow: m.timeWindow }, base, 'messageRateLimit')
  return {
    max,
    timeWindow,
    burst: checkInt('messageRateLimit.burst', m.burst ?? (m.max === undefined ? base.burst : max * 2), 1, 1_000_000_000),
    policy: checkOneOf('messageRateLimit.policy', m.policy ?? base.policy, ['close', 'drop'] as const)
  }
}

function resolveOrigins (input: unknown): OriginPolicy {
  if (input === undefined) return DEFAULTS.allowedOrigins
  if (input === 'same-origin' || input === '*' || typeof input === 'function') return input as OriginPolicy
  if (Array.isArray(input) && input.every((o) => (typeof o === 'string' && o !== '') || o instanceof RegExp)) return input
  return fail('allowedOrigins', "expected 'same-origin', '*', a list of origin strings and RegExps, or a function (origin, request) => boolean")
}

function resolveHeartbeat (input: unknown, name: string): ResolvedHeartbeatOptions | false {
  if (input === false) return false
  if (input === true) return DEFAULTS.heartbeat
  return resolveHeartbeatOptions(input, `${name}.`)
}

/**
 * Applies the defaults and validates every option once, at registration.
 * @throws FST_WSM_OPTION_INVALID naming the option and what it allows.
 */
export function normalizeOptions (input: unknown = {}): ResolvedOptions {
  const opts = section('', input, TOP_LEVEL_KEYS)
  if (opts.auth !== undefined && typeof opts.auth !== 'boolean' && !isPlainObject(opts.auth)) {
    fail('auth', 'expected true, false or an object of auth options')
  }

  const close = section('close', opts.close, CLOSE_KEYS)
  const shutdownCode = close.shutdownCode ?? DEFAULTS.close.shutdownCode
  if (!isSendableCloseCode(shutdownCode)) {
    fail('close.shutdownCode', `expected a close code from 1000-1003, 1007-1014 or 3000-4999, got ${JSON.stringify(shutdownCode)}`)
  }

  return {
    auth: resolveAuth(opts.auth),
    allowedOrigins: resolveOrigins(opts.allowedOrigins),
    requireOrigin: checkBool('requireOrigin', opts.requireOrigin ?? DEFAULTS.requireOrigin),
    upgradeRateLimit: resolveUpgradeRateLimit(opts.upgradeRateLimit, DEFAULTS.upgradeRateLimit, 'upgradeRateLimit'),
    messageRateLimit: resolveMessageRateLimit(opts.messageRateLimit),
    maxConnections: checkInt('maxConnections', opts.maxConnections ?? DEFAULTS.maxConnections, 0, 100_000_000),
    maxConnectionsPerUser: checkInt('maxConnectionsPerUser', opts.maxConnectionsPerUser ?? DEFAULTS.maxConnectionsPerUser, 0, 100_000_000),
    onUserLimit: checkOneOf('onUserLimit', opts.onUserLimit ?? DEFAULTS.onUserLimit, ['reject', 'closeOldest'] as const),
    close: {
      timeout: checkInt('close.timeout', close.timeout ?? DEFAULTS.close.timeout, 1, 600_000),
      shutdownCode,
      shutdownReason: checkString('close.shutdownReason', close.shutdownReason ?? DEFAULTS.close.shutdownReason)
    },
    heartbeat: opts.heartbeat === undefined ? DEFAULTS.heartbeat : resolveHeartbeat(opts.heartbeat, 'heartbeat'),
    idleTimeout: checkInt('idleTimeout', opts.idleTimeout ?? DEFAULTS.idleTimeout, 0, 2_147_483_647),
    frameSize: opts.frameSize === undefined ? { ...DEFAULTS.frameSize } : resolveFrameSizeProfile(opts.frameSize, 'frameSize'),
    compression: opts.compression === undefined ? { ...DEFAULTS.compression } : resolveCompressionProfile(opts.compression, 'compression'),
    backpressure: resolveBackpressure(opts.backpressure, DEFAULTS.backpressure, 'backpressure'),
    messageErrorLimit: checkInt('messageErrorLimit', opts.messageErrorLimit ?? DEFAULTS.messageErrorLimit, 1, 1_000_000)
  }
}

/** A route's `config.wsManager` after validation, over the plugin's options. */
export interface ResolvedRouteConfig {
  /** False when the route opted out of authentication (or auth is off). */
  auth: boolean
  upgradeRateLimit: UpgradeRateLimitOptions | false
  heartbeat: ResolvedHeartbeatOptions | false
  idleTimeout: number
  backpressure: BackpressureOptions
  messages: MessageRoutes | null
  messageErrorLimit: number
}

/**
 * Validates a route's `config.wsManager` and fills it from the plugin's options.
 * @throws FST_WSM_OPTION_INVALID naming `config.wsManager.<option>` of the route.
 */
export function resolveRouteConfig (input: unknown, base: ResolvedOptions, url: string): ResolvedRouteConfig {
  const name = `config.wsManager (route ${url})`
  const cfg = section(name, input, ROUTE_KEYS)
  let heartbeat = base.heartbeat
  if (cfg.heartbeat === false) heartbeat = false
  else if (cfg.heartbeat !== undefined) {
    const over = section(`${name}.heartbeat`, cfg.heartbeat, ['pingInterval', 'pongTimeout', 'maxMissedPongs'])
    const start: ResolvedHeartbeatOptions = base.heartbeat === false ? DEFAULTS.heartbeat as ResolvedHeartbeatOptions : base.heartbeat
    heartbeat = resolveHeartbeatOptions({ ...start, ...over, maxDetectionTime: start.maxDetectionTime ?? undefined }, `${name}.heartbeat.`)
  }
  let messages: MessageRoutes | null = null
  if (cfg.messages !== undefined) {
    if (typeof cfg.messages !== 'object' || cfg.messages === null || Array.isArray(cfg.messages)) {
      fail(`${name}.messages`, 'expected an object of { [type]: { schema, handler } }')
    }
    messages = cfg.messages as MessageRoutes
  }
  if (cfg.auth !== undefined && cfg.auth !== false) fail(`${name}.auth`, 'only false, to let this route in without a token')
  return {
    auth: base.auth !== false && cfg.auth !== false,
    upgradeRateLimit: resolveUpgradeRateLimit(cfg.upgradeRateLimit, base.upgradeRateLimit, `${name}.upgradeRateLimit`),
    heartbeat,
    idleTimeout: checkInt(`${name}.idleTimeout`, cfg.idleTimeout ?? base.idleTimeout, 0, 2_147_483_647),
    backpressure: resolveBackpressure(cfg.backpressure, base.backpressure, `${name}.backpressure`),
    messages,
    messageErrorLimit: checkInt(`${name}.messageErrorLimit`, cfg.messageErrorLimit ?? base.messageErrorLimit, 1, 1_000_000)
  }
}
