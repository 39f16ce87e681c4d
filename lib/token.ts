// Where an upgrade's token comes from, and what can be read of it before it is verified: only
// the header's `alg` (to refuse an algorithm before any signature check) and the subject the
// failure budget counts under. Nothing read here is ever trusted as an identity.
import type { IncomingMessage } from 'node:http'
import type { FastifyRequest } from 'fastify'
import { kQueryToken } from './symbols'

/** Where a token may be found, in the order they are tried. */
export type TokenSource = 'header' | 'subprotocol' | 'query' | 'cookie'

/** Every source, in the default order. */
export const TOKEN_SOURCES: readonly TokenSource[] = Object.freeze(['header', 'subprotocol', 'query', 'cookie'])

/** @fastify/jwt's cookie settings, when it was registered with `cookie`. */
export interface CookieSettings { cookieName: string, signed?: boolean }

type RawWithToken = IncomingMessage & { [kQueryToken]?: string }

type RequestWithCookies = FastifyRequest & {
  cookies?: Record<string, string | undefined>
  unsignCookie?: (value: string) => { valid: boolean, value: string | null }
}

/** What {@link extractToken} looks in. */
export interface TokenLookup {
  sources: readonly TokenSource[]
  subprotocolPrefix: string
  /** @fastify/jwt's cookie settings, or null without a cookie source. */
  cookie: CookieSettings | null
}

/** A token and where it was found. */
export interface FoundToken { token: string, source: TokenSource }

/** Takes the token from the first of the sources that has one. */
export function extractToken (request: FastifyRequest, lookup: TokenLookup): FoundToken | null {
  for (const source of lookup.sources) {
    const token = fromSource(request, source, lookup)
    if (token !== null) return { token, source }
  }
  return null
}

function fromSource (request: FastifyRequest, source: TokenSource, lookup: TokenLookup): string | null {
  switch (source) {
    case 'header': {
      const authorization = request.headers.authorization
      if (typeof authorization === 'string' && authorization.length > 7 && authorization.slice(0, 7).toLowerCase() === 'bearer ') {
        return authorization.slice(7).trim()
      }
      return null
    }
    case 'subprotocol': {
      const protocols = request.headers['sec-websocket-protocol']
      const prefix = lookup.subprotocolPrefix
      if (typeof protocols !== 'string' || !protocols.includes(prefix)) return null
      for (const entry of protocols.split(',')) {
        const protocol = entry.trim()
        if (protocol.startsWith(prefix)) return protocol.slice(prefix.length)
      }
      return null
    }
    case 'query': {
      const token = (request.raw as RawWithToken)[kQueryToken]
      return typeof token === 'string' && token !== '' ? token : null
    }
    case 'cookie': {
      const cookie = lookup.cookie
      if (cookie === null) return null
      const req = request as RequestWithCookies
      let value = req.cookies?.[cookie.cookieName]
      if (typeof value === 'string' && value !== '' && cookie.signed === true) {
        if (req.unsignCookie === undefined) return null
        const unsigned = req.unsignCookie(value)
        value = unsigned.valid && unsigned.value !== null ? unsigned.value : undefined
      }
      return typeof value === 'string' && value !== '' ? value : null
    }
  }
}

// An issuer's tokens share a handful of header segments; decoding each once is enough.
const headerCache = new Map<string, string | null>()
const HEADER_CACHE_MAX = 64

function decodeSegment (segment: string): unknown {
  try {
    return JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'))
  } catch {
    return null
  }
}

/** The `alg` of a token's header, without verifying anything; null when unreadable. */
export function headerAlgorithm (token: string): string | null {
  const dot = token.indexOf('.')
  if (dot <= 0) return null
  const segment = token.slice(0, dot)
  const cached = headerCache.get(segment)
  if (cached !== undefined) return cached
  const header = decodeSegment(segment) as { alg?: unknown } | null
  const alg = header !== null && typeof header === 'object' && typeof header.alg === 'string' ? header.alg : null
  // Bounded: a client sending random headers must not grow it.
  if (headerCache.size < HEADER_CACHE_MAX && segment.length <= 256) headerCache.set(segment, alg)
  return alg
}

function payloadOf (token: string): Record<string, unknown> | null {
  const start = token.indexOf('.') + 1
  const end = token.indexOf('.', start)
  // A header line is at most Node's 16 KiB by default; this bounds the work all the same.
  if (start === 0 || end === -1 || end - start > 65_536) return null
  const payload = decodeSegment(token.slice(start, end))
  return payload !== null && typeof payload === 'object' && !Array.isArray(payload) ? payload as Record<string, unknown> : null
}

/**
 * The subject a token claims, read without verifying it: only to count a failed attempt
 * under (IP, subject), so one client's bad tokens do not use up the budget of everyone behind
 * the same address. The claim named, else `sub`, as it stands in the token (before any
 * formatUser). Empty when there is none; at most 128 characters.
 */
export function claimedSubject (token: string | null, claim: string): string {
  if (token === null) return ''
  const payload = payloadOf(token)
  if (payload === null) return ''
  const value = payload[claim] ?? payload.sub
  return typeof value === 'string' || typeof value === 'number' ? String(value).slice(0, 128) : ''
}

/**
 * The `exp` claim of a token that was just verified, in seconds; null without one. For an
 * application whose `formatUser` leaves `exp` out of the user it returns: the token is the one
 * the verifier accepted, so its payload is what was verified.
 */
export function verifiedExpiry (token: string): number | null {
  const exp = payloadOf(token)?.exp
  return typeof exp === 'number' && Number.isFinite(exp) ? exp : null
}
