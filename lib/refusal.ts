import { STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'

/** A refused upgrade: the HTTP status, body message and headers to answer with. */
export class UpgradeRefusal {
  readonly statusCode: number
  readonly message: string
  readonly headers: Record<string, string>
  /** Why, for the log; never the token. */
  readonly reason: string

  constructor (statusCode: number, message: string, reason: string, headers: Record<string, string> = {}) {
    this.statusCode = statusCode
    this.message = message
    this.reason = reason
    this.headers = headers
  }
}

/** The JSON body every refusal carries: `{ statusCode, error, message }`. */
export function refusalBody (statusCode: number, message: string): string {
  return JSON.stringify({ statusCode, error: STATUS_CODES[statusCode] ?? 'Error', message })
}

function destroySelf (this: Duplex): void {
  this.destroy()
}

/**
 * Answers on a raw upgrade socket that never reaches Fastify's reply (shutdown, ws's own
 * handshake checks) with the same JSON body, then closes it. The socket is destroyed once the
 * answer is written, or at once on an error: a detached upgrade socket has no other owner.
 */
export function refuseRawSocket (socket: Duplex, statusCode: number, message: string, headers: Record<string, string> = {}): void {
  const body = refusalBody(statusCode, message)
  let head = `HTTP/1.1 ${statusCode} ${STATUS_CODES[statusCode] ?? 'Error'}\r\n` +
    'Connection: close\r\n' +
    'Content-Type: application/json; charset=utf-8\r\n' +
    `Content-Length: ${Buffer.byteLength(body)}\r\n`
  for (const [name, value] of Object.entries(headers)) head += `${name}: ${value}\r\n`
  socket.on('error', destroySelf)
  if (!socket.writable) {
    socket.destroy()
    return
  }
  socket.end(head + '\r\n' + body, () => socket.destroy())
}
