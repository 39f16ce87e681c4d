import { resolveCompressionProfile, type CompressionOption, type CompressionSettings } from './compression'
import type { BackpressureOptions, BackpressurePolicy } from './delivery'
import { isSendableCloseCode } from './errors'
import { resolveFrameSizeProfile, type FrameSizeLimits, type FrameSizeOption } from './frame-size'
import { HEARTBEAT_DEFAULTS, resolveHeartbeatOptions, type HeartbeatOptions, type HeartbeatSettings, type ResolvedHeartbeatOptions } from './heartbeat'
import type { MessageRoutes } from './router'
import { checkInt, checkOneOf, checkString, fail, section } from './validate'

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
   * JWT authentication on upgrade. Only `false` is accepted until authentication lands.
   * @default false
   */
  auth?: false
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
  auth: false
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
  auth: false,
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

const TOP_LEVEL_KEYS = ['auth', 'close', 'heartbeat', 'idleTimeout', 'frameSize', 'compression', 'backpressure', 'messageErrorLimit'] as const
const CLOSE_KEYS = ['timeout', 'shutdownCode', 'shutdownReason'] as const
const BACKPRESSURE_KEYS = ['highWaterMark', 'lowWaterMark', 'policy'] as const
const ROUTE_KEYS = ['heartbeat', 'idleTimeout', 'backpressure', 'messages', 'messageErrorLimit'] as const
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

  if (opts.auth !== undefined && opts.auth !== false) {
    fail('auth', 'only false is supported: JWT authentication is not available in this version')
  }

  const close = section('close', opts.close, CLOSE_KEYS)
  const shutdownCode = close.shutdownCode ?? DEFAULTS.close.shutdownCode
  if (!isSendableCloseCode(shutdownCode)) {
    fail('close.shutdownCode', `expected a close code from 1000-1003, 1007-1014 or 3000-4999, got ${JSON.stringify(shutdownCode)}`)
  }

  return {
    auth: false,
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
  return {
    heartbeat,
    idleTimeout: checkInt(`${name}.idleTimeout`, cfg.idleTimeout ?? base.idleTimeout, 0, 2_147_483_647),
    backpressure: resolveBackpressure(cfg.backpressure, base.backpressure, `${name}.backpressure`),
    messages,
    messageErrorLimit: checkInt(`${name}.messageErrorLimit`, cfg.messageErrorLimit ?? base.messageErrorLimit, 1, 1_000_000)
  }
}
