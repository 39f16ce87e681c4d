import { errors, isSendableCloseCode } from './errors'
import { isSerializedOrigin, type OriginPolicy } from './origin'
import type { WsManagerOptions } from './options'

/** What `loadConfig()` reads from the environment: the reference server's settings and the plugin's options. */
export interface ServerConfig {
  /** Env WEBSOCKET_PORT. @default 3001 */
  port: number
  /** Env HOST. @default '127.0.0.1' */
  host: string
  /** Env WEBSOCKET_PATH. @default '/ws' */
  path: string
  /** Milliseconds a client may take to send its request headers (slow-headers defence). Env HEADERS_TIMEOUT. @default 10000 */
  headersTimeout: number
  /** Milliseconds a client may take to send a whole HTTP request. Env REQUEST_TIMEOUT. @default 30000 */
  requestTimeout: number
  /** Env LOG_LEVEL. @default 'info' */
  logLevel: string
  /**
   * HS256 secret for @fastify/jwt (at least 32 characters). Env JWT_SECRET. Null when unset:
   * the reference server then makes a random one and prints a dev token.
   * @default null
   */
  jwtSecret: string | null
  /**
   * Milliseconds over which the reference server drains its connections on SIGTERM (0 closes
   * them all at once). Env DRAIN_DURATION.
   * @default 25000
   */
  drainDuration: number
  /** The plugin's options. */
  options: WsManagerOptions
}

type Env = Record<string, string | undefined>

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

/** Reads typed values from the environment; every bad value names its variable. */
class EnvReader {
  readonly #env: Env

  constructor (env: Env) {
    this.#env = env
  }

  has (name: string): boolean {
    const value = this.#env[name]
    return value !== undefined && value !== ''
  }

  int (name: string, fallback: number, min: number, max: number): number {
    if (!this.has(name)) return fallback
    const raw = this.#env[name] as string
    const value = /^\d+$/.test(raw.trim()) ? Number(raw.trim()) : NaN
    if (!Number.isSafeInteger(value) || value < min || value > max) {
      throw new errors.FST_WSM_ENV_INVALID(name, JSON.stringify(raw), `expected an integer from ${min} to ${max}`)
    }
    return value
  }

  bool (name: string, fallback: boolean): boolean {
    if (!this.has(name)) return fallback
    const raw = (this.#env[name] as string).trim().toLowerCase()
    if (raw === 'true' || raw === '1' || raw === 'yes') return true
    if (raw === 'false' || raw === '0' || raw === 'no') return false
    throw new errors.FST_WSM_ENV_INVALID(name, JSON.stringify(this.#env[name]), 'expected true or false')
  }

  secret (name: string, minLength: number): string {
    const value = this.#env[name] as string
    if (value.length < minLength) {
      throw new errors.FST_WSM_ENV_INVALID(name, `(${value.length} characters)`, `expected at least ${minLength} characters`)
    }
    return value
  }

  string (name: string, fallback: string, check?: (value: string) => string | null): string {
    if (!this.has(name)) return fallback
    const value = (this.#env[name] as string).trim()
    const problem = check === undefined ? null : check(value)
    if (problem !== null) throw new errors.FST_WSM_ENV_INVALID(name, JSON.stringify(value), problem)
    return value
  }
}

/** `max/windowMs` (e.g. `30/60000`), or `false`/`0`/`off` to turn the limit off. */
function readRate (read: EnvReader, name: string, fallback: { max: number, timeWindow: number }): { max: number, timeWindow: number } | false {
  const raw = read.string(name, `${fallback.max}/${fallback.timeWindow}`)
  if (raw === 'false' || raw === '0' || raw === 'off') return false
  const match = /^(\d+)\/(\d+)$/.exec(raw)
  const max = match === null ? NaN : Number(match[1])
  const timeWindow = match === null ? NaN : Number(match[2])
  if (!(max >= 1 && max <= 1_000_000_000 && timeWindow >= 1 && timeWindow <= 86_400_000)) {
    throw new errors.FST_WSM_ENV_INVALID(name, JSON.stringify(raw), 'expected max/windowMs such as 30/60000, or false')
  }
  return { max, timeWindow }
}

/** `same-origin`, `*`, or a comma-separated list of origins such as `https://app.example.com`. */
function readOrigins (read: EnvReader): OriginPolicy {
  const raw = read.string('ALLOWED_ORIGINS', 'same-origin')
  if (raw === 'same-origin' || raw === '*') return raw
  const list = raw.split(',').map((o) => o.trim()).filter((o) => o !== '')
  if (list.length === 0) throw new errors.FST_WSM_ENV_INVALID('ALLOWED_ORIGINS', JSON.stringify(raw), 'expected same-origin, * or at least one origin such as https://app.example.com')
  for (const origin of list) {
    // The option's own check; the environment takes web origins only.
    if (!isSerializedOrigin(origin) || !/^https?:\/\//.test(origin)) throw new errors.FST_WSM_ENV_INVALID('ALLOWED_ORIGINS', JSON.stringify(origin), 'expected same-origin, * or a comma-separated list of origins such as https://app.example.com')
  }
  return list
}

/**
 * Maps environment variables to the reference server's settings and the plugin's options.
 * Variables that are unset or empty take the defaults.
 * @throws FST_WSM_ENV_INVALID naming the variable and what it allows.
 */
export function loadConfig (env: Env = process.env): ServerConfig {
  const read = new EnvReader(env)
  // Every variable that is set is read and validated first, whether a switch elsewhere makes
  // it unused: a typo must not wait until the day the feature is turned on.
  const heartbeatOn = read.bool('HEARTBEAT_ENABLED', true)
  const heartbeat = {
    pingInterval: read.int('PING_INTERVAL', 30_000, 10, 86_400_000),
    pongTimeout: read.int('PONG_TIMEOUT', 5000, 5, 86_400_000),
    maxMissedPongs: read.int('MAX_MISSED_PONGS', 3, 1, 100)
  }
  const compressionOn = read.bool('COMPRESSION_ENABLED', false)
  const compression = {
    level: read.int('COMPRESSION_LEVEL', 6, 0, 9),
    threshold: read.int('COMPRESSION_THRESHOLD', 1024, 0, 2_147_483_647)
  }
  const messageRate = readRate(read, 'MESSAGE_RATE_LIMIT', { max: 100, timeWindow: 1000 })
  const messagePolicy = read.string('MESSAGE_RATE_POLICY', 'close', (v) => v === 'close' || v === 'drop' ? null : 'expected close or drop') as 'close' | 'drop'
  const options: WsManagerOptions = {
    close: {
      timeout: read.int('CLOSE_TIMEOUT', 5000, 1, 600_000),
      shutdownCode: read.int('SHUTDOWN_CLOSE_CODE', 1001, 1000, 4999)
    },
    heartbeat: heartbeatOn ? heartbeat : false,
    idleTimeout: read.int('IDLE_TIMEOUT', 300_000, 0, 2_147_483_647),
    frameSize: {
      maxMessageSize: read.int('MAX_MESSAGE_SIZE', 1_048_576, 1, 1_073_741_824),
      warnThreshold: read.int('MESSAGE_WARN_THRESHOLD', 524_288, 1, 1_073_741_824)
    },
    compression: compressionOn ? compression : 'disabled',
    allowedOrigins: readOrigins(read),
    upgradeRateLimit: readRate(read, 'UPGRADE_RATE_LIMIT', { max: 30, timeWindow: 60_000 }),
    messageRateLimit: messageRate === false ? false : { ...messageRate, burst: messageRate.max * 2, policy: messagePolicy },
    maxConnections: read.int('MAX_CONNECTIONS', 0, 0, 100_000_000),
    maxConnectionsPerIp: read.int('MAX_CONNECTIONS_PER_IP', 100, 0, 100_000_000),
    maxConnectionsPerUser: read.int('MAX_CONNECTIONS_PER_USER', 0, 0, 100_000_000),
    backpressure: {
      highWaterMark: read.int('BACKPRESSURE_HIGH_WATER_MARK', 1_048_576, 1024, 1_073_741_824),
      policy: read.string('BACKPRESSURE_POLICY', 'close', (v) => ['close', 'drop', 'wait'].includes(v) ? null : 'expected close, drop or wait') as 'close' | 'drop' | 'wait'
    }
  }
  // Cross-field rules are checked here so the error names a variable, not an option.
  if (heartbeat.pongTimeout >= heartbeat.pingInterval) {
    throw new errors.FST_WSM_ENV_INVALID('PONG_TIMEOUT', String(heartbeat.pongTimeout), `expected less than PING_INTERVAL (${heartbeat.pingInterval})`)
  }
  const fs = options.frameSize as { maxMessageSize: number, warnThreshold: number }
  if (!read.has('MESSAGE_WARN_THRESHOLD')) fs.warnThreshold = Math.max(1, Math.floor(fs.maxMessageSize / 2))
  else if (fs.warnThreshold > fs.maxMessageSize) {
    throw new errors.FST_WSM_ENV_INVALID('MESSAGE_WARN_THRESHOLD', String(fs.warnThreshold), `expected at most MAX_MESSAGE_SIZE (${fs.maxMessageSize})`)
  }
  if (!isSendableCloseCode(options.close?.shutdownCode)) {
    throw new errors.FST_WSM_ENV_INVALID('SHUTDOWN_CLOSE_CODE', String(options.close?.shutdownCode), 'expected a close code from 1000-1003, 1007-1014 or 3000-4999')
  }
  // Cluster mode when REDIS_URL is set; the prefix and node id are checked even without it.
  const name = (v: string): string | null => /^[A-Za-z0-9._:-]{1,64}$/.test(v) ? null : 'expected 1 to 64 characters from A-Z a-z 0-9 . _ : -'
  const prefix = read.string('CLUSTER_PREFIX', 'wsm', (v) => /^[A-Za-z0-9._-]{1,64}$/.test(v) ? null : 'expected 1 to 64 characters from A-Z a-z 0-9 . _ -')
  const nodeId = read.has('NODE_ID') ? read.string('NODE_ID', '', name) : undefined
  const required = read.bool('CLUSTER_REQUIRED', false)
  if (read.has('REDIS_URL')) {
    const redis = (env.REDIS_URL as string).trim()
    // The URL may hold a password: the error says what is wrong, never the value.
    if (!/^rediss?:\/\/\S+$/.test(redis)) throw new errors.FST_WSM_ENV_INVALID('REDIS_URL', `(${redis.length} characters)`, 'expected a redis:// or rediss:// URL')
    options.cluster = nodeId === undefined ? { redis, prefix, required } : { redis, prefix, nodeId, required }
    if (!read.has('JWT_SECRET')) {
      throw new errors.FST_WSM_ENV_INVALID('JWT_SECRET', '(unset)', 'required with REDIS_URL: every node must accept the same tokens')
    }
  }
  const metricsOn = read.bool('METRICS_ENABLED', false)
  const metricsPath = read.string('METRICS_PATH', '/metrics', (v) => /^\/[A-Za-z0-9._~\-/]*$/.test(v) ? null : 'expected an absolute path such as /metrics')
  if (metricsOn) options.metrics = { endpoint: metricsPath }
  const headersTimeout = read.int('HEADERS_TIMEOUT', 10_000, 100, 600_000)
  const requestTimeout = read.int('REQUEST_TIMEOUT', 30_000, 0, 3_600_000)
  if (requestTimeout !== 0 && requestTimeout < headersTimeout) {
    throw new errors.FST_WSM_ENV_INVALID('REQUEST_TIMEOUT', String(requestTimeout), `expected 0 or at least HEADERS_TIMEOUT (${headersTimeout})`)
  }
  return {
    port: read.int('WEBSOCKET_PORT', 3001, 0, 65535),
    host: read.string('HOST', '127.0.0.1'),
    path: read.string('WEBSOCKET_PATH', '/ws', (v) => v.startsWith('/') ? null : 'expected a path starting with /'),
    headersTimeout,
    requestTimeout,
    logLevel: read.string('LOG_LEVEL', 'info', (v) => LOG_LEVELS.includes(v) ? null : `expected one of ${LOG_LEVELS.join(', ')}`),
    // The value itself never goes into an error message: only its length.
    jwtSecret: read.has('JWT_SECRET') ? read.secret('JWT_SECRET', 32) : null,
    drainDuration: read.int('DRAIN_DURATION', 25_000, 0, 3_600_000),
    options
  }
}
