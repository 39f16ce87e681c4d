// The parts of the WebSocket handshake the plugin decides on top of ws: which subprotocol is
// selected, and how ws's own handshake refusals are answered.
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import { refuseRawSocket } from './refusal'

/**
 * ws's `handleProtocols`: selects the first offered protocol that is not a token entry, or
 * none. Echoing the token entry would put it in the response and in every proxy's logs.
 */
export function createProtocolSelector (prefix: string): (protocols: Set<string>) => string | false {
  return function selectProtocol (protocols: Set<string>): string | false {
    for (const protocol of protocols) if (!protocol.startsWith(prefix)) return protocol
    return false
  }
}

/**
 * A 'wsClientError' listener for the WebSocketServer: ws refuses a malformed handshake (bad
 * Sec-WebSocket-Key, version, protocol or extension header) before any route code runs, and
 * with a listener present it hands the socket here instead of writing its own text/html
 * answer. Every refusal the plugin makes then has the same JSON body. ws reports no status,
 * only its message: 405 for the method, 400 otherwise; a bad version names the supported ones.
 * Returns the status sent.
 */
export function onClientError (error: Error, socket: Duplex, _request: IncomingMessage): number {
  const message = error.message
  if (message === 'Invalid HTTP method') {
    refuseRawSocket(socket, 405, message)
    return 405
  }
  if (message.includes('Sec-WebSocket-Version')) refuseRawSocket(socket, 400, message, { 'Sec-WebSocket-Version': '13, 8' })
  else refuseRawSocket(socket, 400, message)
  return 400
}
