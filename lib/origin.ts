import type { FastifyRequest } from 'fastify'
import { fail } from './validate'

/** Which origins may open a WebSocket from a browser. */
export type OriginPolicy =
  | 'same-origin'
  | '*'
  | Array<string | RegExp>
  | ((origin: string, request: FastifyRequest) => boolean)

const DEFAULT_PORTS: Record<string, string> = { 'http:': '80', 'https:': '443' }

/**
 * Whether a string is a serialized origin as browsers send it: `scheme://host[:port]`, no
 * path, no trailing slash, lowercase scheme and host, no default port.
 */
export function isSerializedOrigin (value: string): boolean {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    return false
  }
  if (url.protocol === 'http:' || url.protocol === 'https:') return url.origin === value
  // Other schemes (browser extensions, apps) have an opaque URL origin; accept scheme://host.
  return /^[a-z][a-z0-9+.-]*:\/\/[^/?#\s]+$/.test(value)
}

/**
 * Validates the `allowedOrigins` option.
 * @throws FST_WSM_OPTION_INVALID naming the option and the offending entry.
 */
export function resolveOrigins (input: unknown, fallback: OriginPolicy): OriginPolicy {
  if (input === undefined) return fallback
  if (input === 'same-origin' || input === '*' || typeof input === 'function') return input as OriginPolicy
  if (!Array.isArray(input)) {
    fail('allowedOrigins', "expected 'same-origin', '*', a list of origins (such as 'https://app.example.com') and RegExps, or a function (origin, request) => boolean")
  }
  if (input.length === 0) {
    fail('allowedOrigins', 'expected at least one origin; to refuse every browser, use a function that returns false and requireOrigin: true')
  }
  for (const entry of input) {
    if (entry instanceof RegExp) continue
    if (typeof entry !== 'string' || !isSerializedOrigin(entry)) {
      fail('allowedOrigins', `expected origins as browsers send them, scheme://host[:port] without a path or trailing slash (such as 'https://app.example.com'); got ${JSON.stringify(entry)}`)
    }
  }
  return input as OriginPolicy
}

/**
 * Builds the origin check. 'same-origin' allows an Origin whose scheme, host and effective
 * port equal the request's own: `https:` for a TLS request (or `X-Forwarded-Proto: https`
 * under trustProxy), `http:` otherwise, and the request's Host (X-Forwarded-Host under
 * trustProxy) with its default port filled in. '*' allows any; a list allows exact origins and
 * matching RegExps; a function decides. Requests without an Origin (non-browser clients) pass
 * unless `requireOrigin` is set.
 */
export function createOriginCheck (policy: OriginPolicy, requireOrigin: boolean): (request: FastifyRequest) => boolean {
  const decide = originDecider(policy)
  return function checkOrigin (request: FastifyRequest): boolean {
    const origin = request.headers.origin
    if (origin === undefined || origin === '') return !requireOrigin
    return decide(origin, request)
  }
}

/** scheme://host:port with the port always present, or null when the Host is not a plain host[:port]. */
function normalized (protocol: string, host: string): string | null {
  if (host === '' || /[/?#@\s\\]/.test(host)) return null
  let url: URL
  try {
    url = new URL(`${protocol}//${host}`)
  } catch {
    return null
  }
  return `${protocol}//${url.hostname}:${url.port === '' ? DEFAULT_PORTS[protocol] : url.port}`
}

function sameOrigin (origin: string, request: FastifyRequest): boolean {
  let url: URL
  try {
    url = new URL(origin)
  } catch {
    return false
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return false
  const expected = normalized(request.protocol === 'https' ? 'https:' : 'http:', request.host)
  return expected !== null && expected === `${url.protocol}//${url.hostname}:${url.port === '' ? DEFAULT_PORTS[url.protocol] : url.port}`
}

function originDecider (policy: OriginPolicy): (origin: string, request: FastifyRequest) => boolean {
  if (policy === '*') return () => true
  if (typeof policy === 'function') return policy
  if (policy === 'same-origin') return sameOrigin
  const exact = new Set(policy.filter((p): p is string => typeof p === 'string'))
  const patterns = policy.filter((p): p is RegExp => p instanceof RegExp)
  return (origin) => {
    if (exact.has(origin)) return true
    for (const re of patterns) {
      re.lastIndex = 0 // a /g or /y pattern keeps state between test() calls
      if (re.test(origin)) return true
    }
    return false
  }
}
