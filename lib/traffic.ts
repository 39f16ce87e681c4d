// Per-route totals of connections, closes, messages and wire bytes, kept at connection events
// only: a message costs nothing here. Messages and bytes of open connections are read from
// the connections themselves when a snapshot is taken (stats(), a metrics scrape).
import type { CloseInfo, Connection } from './connection'
import { transportOf } from './internals'

/** Close codes with a name in RFC 6455 and the IANA registry; others are counted as 'other'. */
const NAMED_CODES = new Set([1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015])

/** A close code as a bounded label: the registered codes as they are, every other 'other'. */
export function closeCodeLabel (code: number): string {
  return NAMED_CODES.has(code) ? String(code) : 'other'
}

/** One route's totals. */
export interface RouteTraffic {
  /** Open now. */
  active: number
  opened: number
  /** Closed connections by `code|initiator` (code as {@link closeCodeLabel}). */
  closed: Record<string, number>
  messagesReceived: number
  messagesSent: number
  /** Bytes on the TCP socket, frames and handshake included. */
  wireBytesReceived: number
  wireBytesSent: number
}

interface Totals {
  active: number
  opened: number
  closed: Map<string, number>
  // Of connections that have closed; open ones are added at snapshot time.
  messagesReceived: number
  messagesSent: number
  wireBytesReceived: number
  wireBytesSent: number
}

function zero (): Totals {
  return { active: 0, opened: 0, closed: new Map(), messagesReceived: 0, messagesSent: 0, wireBytesReceived: 0, wireBytesSent: 0 }
}

/** The TCP socket's byte counts, or zeros for a socket without one (injected in tests). */
function wireBytes (connection: Connection): { read: number, written: number } {
  const transport = transportOf(connection.socket) as { bytesRead?: number, bytesWritten?: number } | null
  return { read: transport?.bytesRead ?? 0, written: transport?.bytesWritten ?? 0 }
}

/** Totals by route, for stats(), metrics and the dashboard. Routes are the app's URL patterns: bounded. */
export class TrafficTotals {
  readonly #routes = new Map<string, Totals>()

  #of (route: string): Totals {
    let totals = this.#routes.get(route)
    if (totals === undefined) {
      totals = zero()
      this.#routes.set(route, totals)
    }
    return totals
  }

  /** A WebSocket route exists: its totals show (at zero) before its first connection. */
  declare (route: string): void {
    this.#of(route)
  }

  opened (connection: Connection): void {
    const totals = this.#of(connection.route)
    totals.opened++
    totals.active++
  }

  leftOpen (connection: Connection): void {
    this.#of(connection.route).active--
  }

  closed (connection: Connection, info: CloseInfo): void {
    const totals = this.#of(connection.route)
    // The code the server sent when it began the close (a 1009 stays a 1009 even when the
    // peer never answered it); the peer's otherwise, 1006 when none came.
    const code = info.initiatedBy === 'server' && info.sentCode !== null ? info.sentCode : info.code
    const key = `${closeCodeLabel(code)}|${info.initiatedBy}`
    totals.closed.set(key, (totals.closed.get(key) ?? 0) + 1)
    totals.messagesReceived += info.messagesIn
    totals.messagesSent += info.messagesOut
    const wire = wireBytes(connection)
    totals.wireBytesReceived += wire.read
    totals.wireBytesSent += wire.written
  }

  /** Totals by route, the open connections' messages and bytes included. */
  snapshot (open: Iterable<Connection>): Record<string, RouteTraffic> {
    const result: Record<string, RouteTraffic> = {}
    for (const [route, t] of this.#routes) {
      result[route] = {
        active: t.active,
        opened: t.opened,
        closed: Object.fromEntries(t.closed),
        messagesReceived: t.messagesReceived,
        messagesSent: t.messagesSent,
        wireBytesReceived: t.wireBytesReceived,
        wireBytesSent: t.wireBytesSent
      }
    }
    for (const connection of open) {
      // A connection is counted by closed() once its socket closed; until then it is open here.
      const r = result[connection.route]
      if (r === undefined) continue
      r.messagesReceived += connection.messagesIn
      r.messagesSent += connection.messagesOut
      const wire = wireBytes(connection)
      r.wireBytesReceived += wire.read
      r.wireBytesSent += wire.written
    }
    return result
  }
}
