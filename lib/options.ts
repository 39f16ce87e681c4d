// The plugin's options: each component declares its own options, defaults and validation
// beside its code (auth.ts, close.ts, delivery.ts, heartbeat-settings.ts, ...); this module
// composes them into one object, validated once at registration.
import type WebSocket from 'ws'
import { AUTH_DEFAULTS, resolveAuth, type AuthInput, type AuthOptions } from './auth'
import { CLOSE_DEFAULTS, resolveClose, type CloseOptions } from './close'
import { resolveCompressionProfile, type CompressionOption, type CompressionSettings } from './compression-profiles'
import { BACKPRESSURE_DEFAULTS, resolveBackpressure, type BackpressureOptions } from './delivery'
import { resolveFrameSizeProfile, type FrameSizeLimits, type FrameSizeOption } from './frame-size'
import { HEARTBEAT_DEFAULTS, resolveHeartbeatOptions, type HeartbeatOptions, type HeartbeatSettings, type ResolvedHeartbeatOptions } from './heartbeat-settings'
import { MESSAGE_RATE_DEFAULTS, resolveMessageRateLimit, type MessageRateLimitOptions } from './message-limits'
import { resolveOrigins, type OriginPolicy } from './origin'
import type { RouteHookOptions } from './hooks'
import type { MessageRoutes } from './router'
import type { FastifyRequest } from 'fastify'
import { checkBool, checkInt, checkOneOf, fail, isPlainObject, section } from './validate'
import { resolveCluster, type ClusterOptions, type ResolvedClusterOptions } from './cluster-options'
import { resolveMetrics, type MetricsOptions, type ResolvedMetricsOptions } from './metrics-options'
import { resolveTopics, type ResolvedTopicsOptions, type TopicsOptions } from './topic-log'
import { HEALTH_DEFAULTS, resolveHealth, type HealthOptions, type ResolvedHealthOptions } from './health'

export { checkInt } from './validate'
export type { CloseOptions } from './close'

/**
 * ws server options the plugin passes through untouched (`verifyClient`,
 * `maxPendingAutoPongs`, `skipUTF8Validation`, ...). The ones it derives from its own options
 * cannot be set here.
 */
export type WsServerOptions = Omit<WebSocket.ServerOptions, typeof WS_RESERVED[number]> & Record<string, unknown>

/** Upgrade rate limit: upgrades per user (per IP without auth) per time window. */
export interface UpgradeRateLimitOptions {
  /** @default 30 */
  max: number
  /** Milliseconds. @default 60000 */
  timeWindow: number
}

/** ws server options the plugin sets itself, and what to use instead. */
export const WS_RESERVED = ['WebSocket', 'maxPayload', 'perMessageDeflate', 'handleProtocols', 'closeTimeout', 'autoPong',
  'noServer', 'server', 'port', 'host', 'path', 'backlog', 'clientTracking'] as const

/** Options of the plugin, as passed to `app.register(wsManager, options)`. */
export interface WsManagerOptions {
  /**
   * JWT authentication on upgrade, verified with the application's @fastify/jwt. On unless
   * `false`; `true` or an object of {@link AuthOptions} to tune it.
   * @default true
   */
  auth?: boolean | AuthInput
  /**
   * Origins allowed to open a WebSocket from a browser: 'same-origin' (the Origin's scheme,
   * host and port must equal the request's), '*', a list of origins (`https://host[:port]`)
   * and RegExps, or a function. Env ALLOWED_ORIGINS.
   * @default 'same-origin'
   */
  allowedOrigins?: OriginPolicy
  /**
   * Refuse upgrades without an Origin header (non-browser clients) with 403.
   * @default false
   */
  requireOrigin?: boolean
  /**
   * Upgrades per user (per IP without auth) per time window, counted across every route,
   * through @fastify/rate-limit; `false` turns it off. Env UPGRADE_RATE_LIMIT.
   * @default { max: 30, timeWindow: 60000 }
   */
  upgradeRateLimit?: false | Partial<UpgradeRateLimitOptions>
  /**
   * Incoming messages and pings per user, a token bucket shared by the user's connections on
   * this server (per IP without auth); `false` turns it off. Env MESSAGE_RATE_LIMIT.
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
   * Connections from one IP address (IPv6: one /64); over it upgrades get 429. 0 means no
   * limit. Behind a proxy, set Fastify's trustProxy so the client's address counts, not the
   * proxy's. Env MAX_CONNECTIONS_PER_IP.
   * @default 100
   */
  maxConnectionsPerIp?: number
  /**
   * Open connections per authenticated user; over it upgrades get 429, or with
   * `onUserLimit: 'closeOldest'` the user's oldest connection is closed with 1008.
   * 0 means no limit. Env MAX_CONNECTIONS_PER_USER.
   * @default 0
   */
  maxConnectionsPerUser?: number
  /** What happens at `maxConnectionsPerUser` (which must be set for 'closeOldest'). @default 'reject' */
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
   * 'lenient' (10 MiB / 5 MiB) or `{ maxMessageSize, warnThreshold }`. Enforced by ws's
   * maxPayload on the decompressed size; over it the peer gets 1009.
   * Env MAX_MESSAGE_SIZE, MESSAGE_WARN_THRESHOLD.
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
   * @default { highWaterMark: 1048576, lowWaterMark: 262144, policy: 'close', maxQueued: 1048576 }
   */
  backpressure?: Partial<BackpressureOptions>
  /**
   * Consecutive message-router errors after which a connection is closed (1007 or 1008).
   * @default 10
   */
  messageErrorLimit?: number
  /** ws server options passed through as they are; see {@link WsServerOptions}. @default {} */
  ws?: WsServerOptions
  /**
   * Makes each connection's `data` when it is accepted, before onConnection hooks and the
   * handler run: `(request) => ({ roomId: request.params.room })`. Without it `data` starts
   * as an empty object on first use.
   * @default null
   */
  connectionData?: ((request: FastifyRequest) => object & { then?: never }) | null
  /**
   * Topics one connection may subscribe to (`connection.subscribe()`); past it subscribe()
   * rejects with FST_WSM_TOPIC_INVALID. 0 means no limit.
   * @default 100
   */
  maxTopicsPerConnection?: number
  /**
   * Cluster mode over Redis: sendToUser, broadcast, disconnectUser and publish reach every
   * node; presence, nodes() and the per-user cap are cluster-wide. Off unless set.
   * Env REDIS_URL, CLUSTER_PREFIX, NODE_ID.
   * @default false
   */
  cluster?: false | ClusterOptions
  /**
   * A live dashboard served by the plugin: `{ path, authorize(request) }`. Off unless set;
   * `authorize` is required (a request refused by it gets 403; with auth on, a valid token is
   * needed first, from any of the auth sources).
   * @default false
   */
  dashboard?: false | DashboardOptions
  /**
   * Prometheus metrics on prom-client: `true` for the defaults, or `{ endpoint, registry,
   * prefix, defaultMetrics, onRequest }`. Env METRICS_ENABLED, METRICS_PATH.
   * @default false
   */
  metrics?: boolean | MetricsOptions
  /**
   * OpenTelemetry spans through @opentelemetry/api (ws.connect, ws.message, ws.close, and
   * PRODUCER/CONSUMER spans of sendToUser, broadcast and publish). They are the API's no-ops
   * until the application registers an SDK; `false` makes no calls at all.
   * @default true
   */
  tracing?: boolean
  /**
   * Topic offsets, history and the built-in `topic.subscribe` / `topic.unsubscribe` messages on
   * routed routes: `{ authorize(connection, topic), history: { size, ttl } }`. Off unless set;
   * in cluster mode offsets and history live in Redis.
   * @default false
   */
  topics?: false | TopicsOptions
  /**
   * Probe endpoints: liveness (200 while the event loop turns) and readiness (503 while
   * draining, shutting down, or with `cluster.required` while Redis is unreachable); either
   * path `false`, or `false` for neither.
   * @default { liveness: '/health', readiness: '/ready' }
   */
  health?: boolean | HealthOptions
}

/** The live dashboard's options. */
export interface DashboardOptions {
  /** @default '/ws/dashboard' */
  path?: string
  /** Decides who may see the dashboard; runs after token verification when auth is on (request.user is set). */
  authorize: (request: FastifyRequest) => boolean | Promise<boolean>
}

/** Per-route settings, as `config: { wsManager: { ... } }` on a `{ websocket: true }` route. */
export interface RouteWsManagerConfig {
  /** `false` lets this route's upgrades in without a token. */
  auth?: false
  /** This route's own upgrade rate limit (counted apart from the plugin-wide one), or `false` for none. */
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
  /** Lifecycle hooks of this route, after the plugin's (`fastify.wsManager.addHook()`). */
  hooks?: RouteHookOptions
}

/** The options after defaults were applied and every value was validated. */
export interface ResolvedOptions {
  auth: AuthOptions | false
  allowedOrigins: OriginPolicy
  requireOrigin: boolean
  upgradeRateLimit: UpgradeRateLimitOptions | false
  messageRateLimit: MessageRateLimitOptions | false
  maxConnections: number
  maxConnectionsPerIp: number
  maxConnectionsPerUser: number
  onUserLimit: 'reject' | 'closeOldest'
  close: CloseOptions
  heartbeat: ResolvedHeartbeatOptions | false
  idleTimeout: number
  frameSize: FrameSizeLimits
  compression: CompressionSettings
  backpressure: BackpressureOptions
  messageErrorLimit: number
  ws: Record<string, unknown>
  connectionData: ((request: FastifyRequest) => object) | null
  maxTopicsPerConnection: number
  cluster: ResolvedClusterOptions | false
  dashboard: { path: string, authorize: (request: FastifyRequest) => boolean | Promise<boolean> } | false
  metrics: ResolvedMetricsOptions | false
  tracing: boolean
  topics: ResolvedTopicsOptions | false
  health: ResolvedHealthOptions | false
}

/** The defaults every option starts from. */
export const DEFAULTS: Readonly<ResolvedOptions> = Object.freeze({
  auth: AUTH_DEFAULTS as AuthOptions,
  allowedOrigins: 'same-origin' as OriginPolicy,
  requireOrigin: false,
  upgradeRateLimit: Object.freeze({ max: 30, timeWindow: 60_000 }),
  messageRateLimit: MESSAGE_RATE_DEFAULTS as MessageRateLimitOptions,
  maxConnections: 0,
  maxConnectionsPerIp: 100,
  maxConnectionsPerUser: 0,
  onUserLimit: 'reject' as const,
  close: CLOSE_DEFAULTS as CloseOptions,
  heartbeat: Object.freeze({ ...HEARTBEAT_DEFAULTS, maxDetectionTime: null }),
  idleTimeout: 300_000,
  frameSize: Object.freeze(resolveFrameSizeProfile('default')),
  compression: Object.freeze(resolveCompressionProfile('disabled')),
  backpressure: BACKPRESSURE_DEFAULTS as BackpressureOptions,
  messageErrorLimit: 10,
  ws: Object.freeze({}),
  connectionData: null,
  maxTopicsPerConnection: 100,
  cluster: false as const,
  dashboard: false as const,
  metrics: false as const,
  tracing: true,
  topics: false as const,
  health: HEALTH_DEFAULTS
})

const TOP_LEVEL_KEYS = ['auth', 'allowedOrigins', 'requireOrigin', 'upgradeRateLimit', 'messageRateLimit', 'maxConnections',
  'maxConnectionsPerIp', 'maxConnectionsPerUser', 'onUserLimit', 'close', 'heartbeat', 'idleTimeout', 'frameSize', 'compression',
  'backpressure', 'messageErrorLimit', 'ws', 'connectionData', 'maxTopicsPerConnection', 'cluster', 'dashboard', 'metrics', 'tracing', 'topics', 'health'] as const
const ROUTE_KEYS = ['auth', 'upgradeRateLimit', 'heartbeat', 'idleTimeout', 'backpressure', 'messages', 'messageErrorLimit', 'hooks'] as const

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

function resolveHeartbeat (input: unknown, name: string): ResolvedHeartbeatOptions | false {
  if (input === false) return false
  if (input === true) return DEFAULTS.heartbeat
  return resolveHeartbeatOptions(input, `${name}.`)
}

function resolveConnectionData (input: unknown): ((request: FastifyRequest) => object) | null {
  if (input === undefined || input === null) return null
  if (typeof input !== 'function') fail('connectionData', 'expected a function (request) => object, or null')
  return input as (request: FastifyRequest) => object
}

function resolveWs (input: unknown): Record<string, unknown> {
  if (input === undefined) return {}
  if (!isPlainObject(input)) return fail('ws', 'expected an object of ws server options')
  for (const key of Object.keys(input)) {
    if ((WS_RESERVED as readonly string[]).includes(key)) {
      fail(`ws.${key}`, 'set by the plugin from its own options (frameSize, compression, auth, close); the ws options it passes through are the others, such as verifyClient or maxPendingAutoPongs')
    }
  }
  return { ...input }
}

function resolveDashboard (input: unknown): ResolvedOptions['dashboard'] {
  if (input === undefined || input === false) return false
  const given = section('dashboard', input, ['path', 'authorize'])
  if (typeof given.authorize !== 'function') fail('dashboard.authorize', 'required: a function (request) => boolean deciding who may see the dashboard')
  const path = given.path ?? '/ws/dashboard'
  if (typeof path !== 'string' || !/^\/[A-Za-z0-9._~\-/]*$/.test(path) || path.endsWith('/') || path.includes('//')) {
    fail('dashboard.path', 'expected an absolute path such as /ws/dashboard, without a trailing slash')
  }
  return { path, authorize: given.authorize as (request: FastifyRequest) => boolean | Promise<boolean> }
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
  const maxConnectionsPerUser = checkInt('maxConnectionsPerUser', opts.maxConnectionsPerUser ?? DEFAULTS.maxConnectionsPerUser, 0, 100_000_000)
  const onUserLimit = checkOneOf('onUserLimit', opts.onUserLimit ?? DEFAULTS.onUserLimit, ['reject', 'closeOldest'] as const)
  if (opts.onUserLimit !== undefined && maxConnectionsPerUser === 0) {
    fail('onUserLimit', 'only applies with maxConnectionsPerUser above 0; set that cap too, or leave onUserLimit out')
  }
  const cluster = resolveCluster(opts.cluster)
  const health = resolveHealth(opts.health)
  if (cluster !== false && cluster.required && (health === false || health.readiness === false)) {
    fail('cluster.required', 'only acts through the readiness endpoint: leave health.readiness on, or cluster.required out')
  }
  return {
    auth: resolveAuth(opts.auth),
    allowedOrigins: resolveOrigins(opts.allowedOrigins, DEFAULTS.allowedOrigins),
    requireOrigin: checkBool('requireOrigin', opts.requireOrigin ?? DEFAULTS.requireOrigin),
    upgradeRateLimit: resolveUpgradeRateLimit(opts.upgradeRateLimit, DEFAULTS.upgradeRateLimit, 'upgradeRateLimit'),
    messageRateLimit: resolveMessageRateLimit(opts.messageRateLimit),
    maxConnections: checkInt('maxConnections', opts.maxConnections ?? DEFAULTS.maxConnections, 0, 100_000_000),
    maxConnectionsPerIp: checkInt('maxConnectionsPerIp', opts.maxConnectionsPerIp ?? DEFAULTS.maxConnectionsPerIp, 0, 100_000_000),
    maxConnectionsPerUser,
    onUserLimit,
    close: resolveClose(opts.close),
    heartbeat: opts.heartbeat === undefined ? DEFAULTS.heartbeat : resolveHeartbeat(opts.heartbeat, 'heartbeat'),
    idleTimeout: checkInt('idleTimeout', opts.idleTimeout ?? DEFAULTS.idleTimeout, 0, 2_147_483_647),
    frameSize: opts.frameSize === undefined ? { ...DEFAULTS.frameSize } : resolveFrameSizeProfile(opts.frameSize, 'frameSize'),
    compression: opts.compression === undefined ? { ...DEFAULTS.compression } : resolveCompressionProfile(opts.compression, 'compression'),
    backpressure: resolveBackpressure(opts.backpressure, DEFAULTS.backpressure, 'backpressure'),
    messageErrorLimit: checkInt('messageErrorLimit', opts.messageErrorLimit ?? DEFAULTS.messageErrorLimit, 1, 1_000_000),
    ws: resolveWs(opts.ws),
    connectionData: resolveConnectionData(opts.connectionData),
    maxTopicsPerConnection: checkInt('maxTopicsPerConnection', opts.maxTopicsPerConnection ?? DEFAULTS.maxTopicsPerConnection, 0, 1_000_000),
    cluster,
    dashboard: resolveDashboard(opts.dashboard),
    metrics: resolveMetrics(opts.metrics),
    tracing: checkBool('tracing', opts.tracing ?? DEFAULTS.tracing),
    topics: resolveTopics(opts.topics),
    health
  }
}

/** A route's `config.wsManager` after validation, over the plugin's options. */
export interface ResolvedRouteConfig {
  /** False when the route opted out of authentication (or auth is off). */
  auth: boolean
  /** The route's own upgrade limit; undefined when it uses the plugin-wide one. */
  upgradeRateLimit: UpgradeRateLimitOptions | false | undefined
  heartbeat: ResolvedHeartbeatOptions | false
  idleTimeout: number
  backpressure: BackpressureOptions
  messages: MessageRoutes | null
  messageErrorLimit: number
  /** The route's own hooks, checked when the route's hook set is built. */
  hooks: RouteHookOptions | undefined
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
    if (!isPlainObject(cfg.messages)) fail(`${name}.messages`, 'expected an object of { [type]: { schema, handler } }')
    messages = cfg.messages as MessageRoutes
  }
  if (cfg.auth !== undefined && cfg.auth !== false) fail(`${name}.auth`, 'only false, to let this route in without a token')
  return {
    auth: base.auth !== false && cfg.auth !== false,
    upgradeRateLimit: cfg.upgradeRateLimit === undefined
      ? undefined
      : resolveUpgradeRateLimit(cfg.upgradeRateLimit, base.upgradeRateLimit, `${name}.upgradeRateLimit`),
    heartbeat,
    idleTimeout: checkInt(`${name}.idleTimeout`, cfg.idleTimeout ?? base.idleTimeout, 0, 2_147_483_647),
    backpressure: resolveBackpressure(cfg.backpressure, base.backpressure, `${name}.backpressure`),
    messages,
    messageErrorLimit: checkInt(`${name}.messageErrorLimit`, cfg.messageErrorLimit ?? base.messageErrorLimit, 1, 1_000_000),
    hooks: cfg.hooks as RouteHookOptions | undefined
  }
}
