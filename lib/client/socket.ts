// The WebSocket the client drives: the browser's, Node 22's global one, or the `ws` package,
// loaded only when neither of the others is there so that a browser bundle never needs it.

/** The part of the WHATWG WebSocket API the client uses (browsers, Node 22+, ws). */
export interface WebSocketLike {
  readonly readyState: number
  readonly protocol: string
  binaryType: string
  send (data: string | ArrayBuffer | ArrayBufferView): void
  close (code?: number, reason?: string): void
  addEventListener (type: string, listener: (event: any) => void): void
}

/**
 * A WebSocket constructor: `globalThis.WebSocket`, ws's default export, or a stand-in for
 * tests. The third argument is ws's options; other constructors ignore it.
 */
export type WebSocketConstructor = new (url: string, protocols?: string | string[], options?: { headers?: Record<string, string> }) => WebSocketLike

/**
 * Whether `Ctor` is the ws package's WebSocket. ws fails a handshake in which the server
 * selects no subprotocol although some were offered ("Server sent no subprotocol"), which is
 * what the plugin does when the token entry is the only one: browsers accept it.
 */
export function isWsPackage (Ctor: WebSocketConstructor): boolean {
  const proto = Ctor.prototype as Record<string, unknown> | undefined
  return typeof proto?.terminate === 'function' && typeof proto.pause === 'function'
}

/** ws's EventEmitter side, present only on ws sockets: it shows a refused upgrade's response. */
interface WsRefusalSource {
  on (event: 'unexpected-response', listener: (request: unknown, response: { statusCode?: number, headers: Record<string, string | string[] | undefined> }) => void): unknown
  terminate (): void
}

/** An HTTP refusal of the upgrade, as ws reports it. */
export interface Refusal {
  status: number
  retryAfter: string | null
}

/**
 * Calls `onRefusal` with the status and Retry-After of a refused upgrade, on runtimes that show
 * them (ws); browsers and Node's global WebSocket only report a 1006 close.
 */
export function watchRefusal (socket: WebSocketLike, onRefusal: (refusal: Refusal) => void): void {
  const source = socket as unknown as Partial<WsRefusalSource>
  if (typeof source.on !== 'function' || typeof source.terminate !== 'function') return
  source.on('unexpected-response', (_request, response) => {
    const header = response.headers['retry-after']
    onRefusal({ status: response.statusCode ?? 0, retryAfter: Array.isArray(header) ? header[0] : header ?? null })
    // With a listener ws leaves the handshake to us: terminate() aborts it and still emits
    // 'close' (1006), which is where the refusal is acted on.
    source.terminate?.()
  })
}

let loaded: Promise<WebSocketConstructor> | null = null

/** The WebSocket to use: the option, else the global one, else ws (loaded once). */
export function resolveWebSocket (option: WebSocketConstructor | undefined): WebSocketConstructor | Promise<WebSocketConstructor> {
  if (option !== undefined) return option
  const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
  if (typeof global === 'function') return global
  loaded ??= import('ws').then((mod) => {
    const ctor = (mod as { default?: unknown }).default ?? (mod as { WebSocket?: unknown }).WebSocket
    if (typeof ctor !== 'function') throw new Error('the ws package has no WebSocket export')
    return ctor as WebSocketConstructor
  }).catch((err: unknown) => {
    loaded = null
    throw err
  })
  return loaded
}
