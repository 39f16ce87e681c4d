import { errors, isSendableCloseCode } from './errors'

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
}

/** The options after defaults were applied and every value was validated. */
export interface ResolvedOptions {
  auth: false
  close: CloseOptions
}

/** The defaults every option starts from. */
export const DEFAULTS: Readonly<ResolvedOptions> = Object.freeze({
  auth: false,
  close: Object.freeze({
    timeout: 5000,
    shutdownCode: 1001,
    shutdownReason: 'Server shutting down'
  })
})

function fail (name: string, allowed: string): never {
  throw new errors.FST_WSM_OPTION_INVALID(name, allowed)
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** Validates a whole number in [min, max]; used for every millisecond and byte option. */
export function checkInt (name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    fail(name, `expected an integer from ${min} to ${max}, got ${JSON.stringify(value)}`)
  }
  return value
}

function checkString (name: string, value: unknown): string {
  if (typeof value !== 'string') fail(name, `expected a string, got ${JSON.stringify(value)}`)
  return value
}

function section (name: string, value: unknown): Record<string, unknown> {
  if (value === undefined) return {}
  if (!isPlainObject(value)) fail(name, 'expected an object')
  return value
}

function checkKeys (name: string, value: Record<string, unknown>, known: readonly string[]): void {
  for (const key of Object.keys(value)) {
    if (!known.includes(key)) fail(`${name}${name === '' ? '' : '.'}${key}`, `unknown option; known: ${known.join(', ')}`)
  }
}

const TOP_LEVEL_KEYS = ['auth', 'close'] as const
const CLOSE_KEYS = ['timeout', 'shutdownCode', 'shutdownReason'] as const

/**
 * Applies the defaults and validates every option once, at registration.
 * @throws FST_WSM_OPTION_INVALID naming the option and what it allows.
 */
export function normalizeOptions (input: unknown = {}): ResolvedOptions {
  const opts = section('options', input)
  checkKeys('', opts, TOP_LEVEL_KEYS)

  if (opts.auth !== undefined && opts.auth !== false) {
    fail('auth', 'only false is supported: JWT authentication is not available in this version')
  }

  const close = section('close', opts.close)
  checkKeys('close', close, CLOSE_KEYS)
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
    }
  }
}
