import type { IncomingMessage } from 'node:http'
import { kQueryToken } from './symbols'

type RawWithToken = IncomingMessage & { [kQueryToken]?: string }

/**
 * A 'request' and 'upgrade' listener that runs before Fastify's: for URLs of the plugin's
 * authenticated WebSocket routes (as `isWsPath` says) it removes the token parameter from the
 * URL, matched by its decoded name so `access%5Ftoken` is caught too, and keeps the token on
 * the raw request. Fastify's "incoming request" line and every later log line then see the
 * URL without it. Other routes of the application keep their query untouched. Plain requests
 * to a WebSocket route get it too: a proxy that drops the Upgrade header still sends the URL.
 */
export function createUrlRedactor (param: string, isWsPath: (path: string) => boolean): (request: IncomingMessage) => void {
  return function redactTokenFromUrl (request: IncomingMessage): void {
    const url = request.url
    if (url === undefined) return
    const q = url.indexOf('?')
    if (q === -1) return
    // Cheap test first: most URLs carry neither the name nor an escape.
    if (!url.includes(param, q) && !url.includes('%', q)) return
    if (!isWsPath(url.slice(0, q))) return
    const params = new URLSearchParams(url.slice(q + 1))
    const token = params.get(param)
    if (token === null) return
    params.delete(param)
    const rest = params.toString()
    ;(request as RawWithToken)[kQueryToken] = token
    request.url = url.slice(0, q) + (rest === '' ? '' : `?${rest}`)
  }
}
