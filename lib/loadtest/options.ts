// The load tester's options: one frozen DEFAULTS, and normalizeOptions() that checks every
// option once and compiles what the runner needs (templates, source addresses, URL). The
// command line (args.ts) and in-process callers go through the same checks.

import { isIP } from 'node:net'
import { errors } from '../errors'
import { expandSourceAddresses } from './addresses'
import { compileRequestTemplate, compileTemplate, type RequestTemplate, type Template } from './template'

/** Thrown (or the promise rejected) for an option the load tester cannot run with; names the option. */
export const LoadTestOptionError = errors.FST_WSM_LOADTEST_OPTION_INVALID

/** Where the token goes on the upgrade request. */
export type TokenPlacement = 'header' | 'subprotocol'

/** Options of {@link runLoadTest}; each mirrors a command-line flag (`--help`). */
export interface LoadTestOptions {
  /** The ws:// or wss:// URL to connect to; the only host the load tester talks to. */
  url: string
  /**
   * Connections to open.
   * @default 100
   */
  connections?: number
  /**
   * Connections opened per second during the ramp.
   * @default 100
   */
  rampRate?: number
  /**
   * Seconds to hold the connections once the ramp is over; the run lasts about
   * `connections / rampRate + duration` seconds, plus at most twice `closeTimeout` to finish.
   * @default 30
   */
  duration?: number
  /**
   * Local addresses to bind, round-robin over the connections: IPv4 or IPv6 addresses, or
   * IPv4 ranges like `127.0.0.1-127.0.0.20`. Each must be an address of this machine (on
   * Linux, all of 127.0.0.0/8 is). Empty: the system picks.
   * @default []
   */
  sourceAddresses?: string[]
  /**
   * Messages per second per open connection; 0 sends none (idle connections). Needs one of
   * `message`, `json` or `request`, which in turn need a rate above 0.
   * @default 0
   */
  messageRate?: number
  /** Fixed text to send. */
  message?: string | null
  /** A JSON template to send, with `{{seq}}`, `{{conn}}` and `{{ts}}` placeholders. */
  json?: string | null
  /**
   * A JSON object template sent as a request: the load tester adds a unique `id` and times
   * the reply that carries the same `id` (fastify-ws-manager's message router answers so).
   */
  request?: string | null
  /**
   * Topics each connection subscribes to once open (`{ type: 'topic.subscribe', topic, id }`);
   * `topic.message`s received are counted.
   * @default []
   */
  subscribe?: string[]
  /** A JWT to send; not with `tokenCommand`. */
  token?: string | null
  /** A shell command printing a JWT, run once at the start (or per connection); not with `token`. */
  tokenCommand?: string | null
  /**
   * Run `tokenCommand` for every connection instead of once.
   * @default false
   */
  tokenPerConnection?: boolean
  /**
   * `'header'`: `Authorization: Bearer <jwt>`; `'subprotocol'`: the `bearer.<jwt>` entry,
   * offered after `protocols` (at least one is then required: the server selects an
   * application protocol, and ws fails a handshake in which none is selected).
   * @default 'header'
   */
  tokenIn?: TokenPlacement
  /**
   * Application subprotocols to offer.
   * @default []
   */
  protocols?: string[]
  /**
   * Seconds an opening handshake may take before it counts as a `connect timeout`.
   * @default 10
   */
  connectTimeout?: number
  /**
   * Seconds a request may wait for its reply before it counts as a `reply timeout`.
   * @default 10
   */
  requestTimeout?: number
  /**
   * Seconds to wait at the end for outstanding replies, and again for the closing
   * handshakes (1000) before the remaining sockets are terminated.
   * @default 3
   */
  closeTimeout?: number
  /**
   * Accept any TLS certificate on wss:// (a self-signed test server).
   * @default false
   */
  insecure?: boolean
  /** Ends the run early (the summary is still made), as SIGINT does for the command. */
  signal?: AbortSignal
}

/** The defaults of {@link LoadTestOptions}. */
export const DEFAULTS = Object.freeze({
  connections: 100,
  rampRate: 100,
  duration: 30,
  messageRate: 0,
  tokenIn: 'header' as TokenPlacement,
  connectTimeout: 10,
  requestTimeout: 10,
  closeTimeout: 3,
  insecure: false,
  tokenPerConnection: false
})

/** What is sent on each scheduled message. */
export type Payload =
  | { kind: 'idle' }
  | { kind: 'text', data: Buffer }
  | { kind: 'json', template: Template }
  | { kind: 'request', template: RequestTemplate }

/** Checked options, with their defaults and compiled payload. */
export interface NormalizedOptions {
  url: string
  connections: number
  rampRate: number
  duration: number
  sourceAddresses: string[]
  messageRate: number
  payload: Payload
  subscribe: string[]
  token: string | null
  tokenCommand: string | null
  tokenPerConnection: boolean
  tokenIn: TokenPlacement
  protocols: string[]
  connectTimeout: number
  requestTimeout: number
  closeTimeout: number
  insecure: boolean
  signal: AbortSignal | null
}

/** The most connections one run may open (a bound, not a promise that it can). */
export const MAX_CONNECTIONS = 1_000_000

function invalid (name: string, why: string): Error {
  return new LoadTestOptionError(name, why)
}

function number (name: string, value: unknown, fallback: number, { min, integer = false, above = false, max = Infinity }: { min: number, integer?: boolean, above?: boolean, max?: number }): number {
  if (value === undefined) return fallback
  const kind = integer ? 'a whole number' : 'a number'
  const bound = above ? `above ${min}` : `${min} or more`
  if (typeof value !== 'number' || !Number.isFinite(value) || (integer && !Number.isInteger(value)) ||
    (above ? value <= min : value < min) || value > max) {
    throw invalid(name, `expected ${kind} ${bound}${max === Infinity ? '' : ` and at most ${max}`}, got ${String(value)}`)
  }
  return value
}

function stringList (name: string, value: unknown): string[] {
  if (value === undefined) return []
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string' || v === '')) throw invalid(name, 'expected a list of non-empty strings')
  return [...value] as string[]
}

function optionalString (name: string, value: unknown): string | null {
  if (value === undefined || value === null) return null
  if (typeof value !== 'string') throw invalid(name, 'expected a string')
  return value
}

function checkUrl (value: unknown): string {
  if (typeof value !== 'string' || value === '') throw invalid('url', 'a ws:// or wss:// URL is required')
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw invalid('url', 'expected a ws:// or wss:// URL, got something that is not a URL')
  }
  // The scheme only: the rest may hold a token (access_token).
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:') throw invalid('url', `expected a ws:// or wss:// URL, got ${url.protocol}//`)
  return url.href
}

// A token travels in a header or a subprotocol: visible ASCII without spaces or separators
// that either would refuse.
function checkToken (value: string | null): string | null {
  if (value !== null && !/^[A-Za-z0-9\-._~+/=]+$/.test(value)) throw invalid('token', 'expected a JWT (letters, digits and -._~+/=)')
  return value
}

function payloadOf (options: LoadTestOptions): Payload {
  const message = optionalString('message', options.message)
  const json = optionalString('json', options.json)
  const request = optionalString('request', options.request)
  const given = [['message', message], ['json', json], ['request', request]].filter(([, v]) => v !== null)
  if (given.length > 1) throw invalid(given[1]?.[0] as string, `only one of message, json and request may be given, got ${given.map(([n]) => n as string).join(' and ')}`)
  if (message !== null) return { kind: 'text', data: Buffer.from(message) }
  try {
    if (json !== null) return { kind: 'json', template: compileTemplate(json) }
    if (request !== null) return { kind: 'request', template: compileRequestTemplate(request) }
  } catch (err) {
    throw invalid(json !== null ? 'json' : 'request', `the template ${(err as Error).message}`)
  }
  return { kind: 'idle' }
}

/**
 * Checks every option and fills in the defaults.
 * @throws FST_WSM_LOADTEST_OPTION_INVALID naming the option and what it allows.
 */
export function normalizeOptions (options: LoadTestOptions): NormalizedOptions {
  if (typeof options !== 'object' || options === null) throw invalid('options', 'expected an object')
  const url = checkUrl(options.url)
  const connections = number('connections', options.connections, DEFAULTS.connections, { min: 1, integer: true, max: MAX_CONNECTIONS })
  const rampRate = number('rampRate', options.rampRate, DEFAULTS.rampRate, { min: 0, above: true })
  const duration = number('duration', options.duration, DEFAULTS.duration, { min: 0 })
  const messageRate = number('messageRate', options.messageRate, DEFAULTS.messageRate, { min: 0, max: 10_000 })
  const connectTimeout = number('connectTimeout', options.connectTimeout, DEFAULTS.connectTimeout, { min: 0, above: true })
  const requestTimeout = number('requestTimeout', options.requestTimeout, DEFAULTS.requestTimeout, { min: 0, above: true })
  const closeTimeout = number('closeTimeout', options.closeTimeout, DEFAULTS.closeTimeout, { min: 0 })
  const payload = payloadOf(options)
  if (payload.kind === 'idle' && messageRate > 0) throw invalid('messageRate', 'a message rate needs something to send: message, json or request')
  if (payload.kind !== 'idle' && messageRate === 0) throw invalid('messageRate', `nothing is sent at message rate 0: give a rate for the ${payload.kind === 'text' ? 'message' : payload.kind}`)

  let sourceAddresses: string[]
  try {
    sourceAddresses = expandSourceAddresses(stringList('sourceAddresses', options.sourceAddresses))
  } catch (err) {
    if ((err as { code?: string }).code === 'FST_WSM_LOADTEST_OPTION_INVALID') throw err
    throw invalid('sourceAddresses', (err as Error).message)
  }
  // A target written as an address has one family, and a socket bound to the other cannot reach it.
  const family = isIP(new URL(url).hostname.replace(/^\[|\]$/g, ''))
  const mismatched = sourceAddresses.find((address) => family !== 0 && isIP(address) !== family)
  if (mismatched !== undefined) throw invalid('sourceAddresses', `${mismatched} cannot reach an IPv${family} target`)

  const subscribe = stringList('subscribe', options.subscribe)
  if (subscribe.some((topic) => topic.length > 256)) throw invalid('subscribe', 'a topic is at most 256 characters')
  const token = checkToken(optionalString('token', options.token))
  const tokenCommand = optionalString('tokenCommand', options.tokenCommand)
  if (token !== null && tokenCommand !== null) throw invalid('token', 'give token or tokenCommand, not both')
  if (tokenCommand === '') throw invalid('tokenCommand', 'expected a command')
  const tokenPerConnection = options.tokenPerConnection ?? DEFAULTS.tokenPerConnection
  if (typeof tokenPerConnection !== 'boolean') throw invalid('tokenPerConnection', 'expected a boolean')
  if (tokenPerConnection && tokenCommand === null) throw invalid('tokenPerConnection', 'needs tokenCommand')
  const tokenIn = options.tokenIn ?? DEFAULTS.tokenIn
  if (tokenIn !== 'header' && tokenIn !== 'subprotocol') throw invalid('tokenIn', `expected 'header' or 'subprotocol', got ${String(tokenIn)}`)
  const protocols = stringList('protocols', options.protocols)
  if (protocols.some((p) => !/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(p) || p.startsWith('bearer.'))) {
    throw invalid('protocols', 'expected protocol names (HTTP token characters), none starting with "bearer."')
  }
  if (tokenIn === 'subprotocol' && protocols.length === 0) {
    throw invalid('protocols', 'the token as a subprotocol needs an application protocol too: the server selects one, never the token entry')
  }
  const insecure = options.insecure ?? DEFAULTS.insecure
  if (typeof insecure !== 'boolean') throw invalid('insecure', 'expected a boolean')
  const signal = options.signal ?? null
  if (signal !== null && !(signal instanceof AbortSignal)) throw invalid('signal', 'expected an AbortSignal')

  return {
    url,
    connections,
    rampRate,
    duration,
    sourceAddresses,
    messageRate,
    payload,
    subscribe,
    token,
    tokenCommand,
    tokenPerConnection,
    tokenIn,
    protocols,
    connectTimeout,
    requestTimeout,
    closeTimeout,
    insecure,
    signal
  }
}
