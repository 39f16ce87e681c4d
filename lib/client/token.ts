// Reads `exp` from a JWT to know when to refresh it. Nothing here verifies anything: the
// server does; a wrong `exp` only moves the client's refresh, never what it is allowed.

/** The `exp` claim (seconds) of a JWT, or null when there is none or the token is not a JWT. */
export function tokenExpiry (token: string): number | null {
  const parts = token.split('.')
  if (parts.length !== 3) return null
  try {
    const base64 = parts[1].replace(/-/g, '+').replace(/_/g, '/')
    const padded = base64 + '='.repeat((4 - base64.length % 4) % 4)
    const claims: unknown = JSON.parse(decodeUtf8(atob(padded)))
    const exp = typeof claims === 'object' && claims !== null ? (claims as { exp?: unknown }).exp : undefined
    return typeof exp === 'number' && Number.isFinite(exp) ? exp : null
  } catch {
    return null
  }
}

function decodeUtf8 (binary: string): string {
  const bytes = new Uint8Array(binary.length)
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i)
  return new TextDecoder().decode(bytes)
}

/** Upper bound of how long before `exp` the client refreshes: 30 s. */
export const REFRESH_LEAD_MS = 30_000

/**
 * Milliseconds from `now` until the token should be refreshed: 30 s before `exp`, or a
 * quarter of the remaining life before it when that is shorter. 0 when already due.
 */
export function refreshDelay (exp: number, now: number): number {
  const remaining = exp * 1000 - now
  if (remaining <= 0) return 0
  return Math.max(0, remaining - Math.min(REFRESH_LEAD_MS, remaining / 4))
}
