// Compression statistics measured on the TCP socket: payload bytes the plugin counts and the
// wire bytes the kernel was handed, per connection and summed. The profiles, ws's options
// and the handshake negotiation are in lib/compression-profiles.ts.

import type { IncomingMessage } from 'node:http'
import type WebSocket from 'ws'
// Named, not `WebSocket.Server`: a bundler-resolution consumer reads ws's ESM declarations,
// whose default export (the WebSocket class) does not carry Server or WebSocket as members.
import type { Server as WebSocketServer } from 'ws'
import { COMPRESSION_PROFILES, checkSettings, perMessageDeflateOptions, resolveCompressionProfile, type CompressionSettings } from './compression-profiles'
import type { WarnLogger } from './frame-size'
import { formatBytes } from './frame-size'
import { transportOf } from './internals'

export interface CompressionManagerOptions extends Partial<CompressionSettings> {
  /** Where compression errors are logged (at warn). @default no logging */
  log?: WarnLogger
}

/**
 * Figures measured for one connection or summed over many. Wire figures come from the TCP
 * sockets' own counters since tracking started (frames, headers and control frames included)
 * and cover only measured connections (see `wireMeasured`).
 */
export interface CompressionFigures {
  /** Data messages sent (recordSent calls). */
  messagesSent: number
  /** Of those, messages sent with compression. */
  messagesCompressed: number
  /** Data messages received (recordReceived calls). */
  messagesReceived: number
  /** Application payload bytes sent, before compression. */
  payloadBytesOut: number
  /** Application payload bytes received, after decompression. */
  payloadBytesIn: number
  /** Bytes the TCP socket(s) wrote; 0 where not measured. */
  wireBytesOut: number
  /** Bytes the TCP socket(s) read; 0 where not measured. */
  wireBytesIn: number
  /** `payloadBytesOut - wireBytesOut`; negative when framing cost more than compression saved. */
  bytesSaved: number
  /** `wireBytesOut / payloadBytesOut` (0.25 = a quarter of the payload went on the wire); null before any payload or when not measured. */
  ratio: number | null
  /** Errors passed to recordError(). */
  compressionErrors: number
  /** False when a socket had no byte counters (e.g. a stream from injectWS()); wire figures then cover the others only. */
  wireMeasured: boolean
}

/** Compression figures of one tracked connection. */
export interface CompressionConnectionStats extends CompressionFigures {
  /** Whether permessage-deflate was negotiated on this connection. */
  negotiated: boolean
}

/** Compression figures of a {@link CompressionManager}: tracked connections, open and closed. */
export interface CompressionStats extends CompressionFigures {
  /** Whether the profile offers permessage-deflate. */
  enabled: boolean
  /** Connections tracked now. */
  connections: number
  /** Of those, connections that negotiated permessage-deflate. */
  compressedConnections: number
  /** `wireBytesIn / payloadBytesIn` over measured connections, or null before any payload. */
  ratioIn: number | null
}

// Node's net.Socket counters; absent on the streams injectWS() uses.
interface WireCounters {
  readonly bytesWritten: number
  readonly bytesRead: number
}

interface Tracked {
  readonly wire: WireCounters | null
  readonly wireOutBase: number
  readonly wireInBase: number
  readonly negotiated: boolean
  messagesSent: number
  messagesCompressed: number
  messagesReceived: number
  payloadBytesOut: number
  payloadBytesIn: number
  errors: number
}

// Figures of connections that are no longer tracked, and sums while computing stats.
interface Totals {
  messagesSent: number
  messagesCompressed: number
  messagesReceived: number
  payloadBytesOut: number
  payloadBytesIn: number
  // Figures of measured connections only: the denominators of the ratios and averages.
  measuredMessagesSent: number
  measuredPayloadOut: number
  measuredPayloadIn: number
  wireBytesOut: number
  wireBytesIn: number
  unmeasured: number
}

function zeroTotals (): Totals {
  return {
    messagesSent: 0,
    messagesCompressed: 0,
    messagesReceived: 0,
    payloadBytesOut: 0,
    payloadBytesIn: 0,
    measuredMessagesSent: 0,
    measuredPayloadOut: 0,
    measuredPayloadIn: 0,
    wireBytesOut: 0,
    wireBytesIn: 0,
    unmeasured: 0
  }
}

function addTo (totals: Totals, t: Tracked): void {
  totals.messagesSent += t.messagesSent
  totals.messagesCompressed += t.messagesCompressed
  totals.messagesReceived += t.messagesReceived
  totals.payloadBytesOut += t.payloadBytesOut
  totals.payloadBytesIn += t.payloadBytesIn
  if (t.wire === null) {
    totals.unmeasured++
    return
  }
  totals.measuredMessagesSent += t.messagesSent
  totals.measuredPayloadOut += t.payloadBytesOut
  totals.measuredPayloadIn += t.payloadBytesIn
  totals.wireBytesOut += t.wire.bytesWritten - t.wireOutBase
  totals.wireBytesIn += t.wire.bytesRead - t.wireInBase
}

function wireOf (ws: WebSocket): WireCounters | null {
  const socket = transportOf(ws)
  if (socket === null) return null
  return typeof socket.bytesWritten === 'number' && typeof socket.bytesRead === 'number' ? socket as WireCounters : null
}

function ratioOf (wire: number, payload: number): number | null {
  return payload === 0 ? null : wire / payload
}

/**
 * Owns one compression profile: gives ws its permessage-deflate options, tells the plugin which
 * messages to compress, and keeps compression statistics measured on the TCP socket.
 *
 * Accounting costs one Map entry and one small record per tracked connection, and one Map
 * lookup plus a few additions per message; 'close' listeners are one function per manager,
 * shared by all sockets.
 */
export class CompressionManager {
  readonly #settings: Readonly<CompressionSettings>
  readonly #log: WarnLogger | null
  readonly #tracked = new Map<WebSocket, Tracked>()
  readonly #closed: Totals = zeroTotals()
  readonly #servers = new WeakSet<object>()
  readonly #onClose: (this: WebSocket) => void
  readonly #onConnection: (ws: WebSocket) => void
  #errors = 0

  /** @throws FST_WSM_OPTION_INVALID for a setting out of range; see {@link resolveCompressionProfile}. */
  constructor (options: CompressionManagerOptions = {}) {
    this.#settings = Object.freeze(checkSettings(options as Record<string, unknown>, COMPRESSION_PROFILES.default, 'compression.'))
    this.#log = options.log ?? null
    // One listener per manager for every socket: `this` is the socket, no closure per socket.
    const manager = this
    this.#onClose = function (this: WebSocket): void { manager.untrack(this) }
    this.#onConnection = (ws: WebSocket): void => { this.track(ws) }
  }

  /** Level 6, threshold 1 KiB, 8 KiB server window, memLevel 5: most of the ratio for a fraction of ws's default memory. */
  static createDefault (log?: WarnLogger): CompressionManager {
    return new CompressionManager({ ...COMPRESSION_PROFILES.default, log })
  }

  /** Level 9, threshold 512 B, zlib's full window and memLevel: the best ratio, memory like ws's default. */
  static createHigh (log?: WarnLogger): CompressionManager {
    return new CompressionManager({ ...COMPRESSION_PROFILES.high, log })
  }

  /** Level 1, threshold 2 KiB, 4 KiB server window: least CPU and memory, lower ratio. */
  static createFast (log?: WarnLogger): CompressionManager {
    return new CompressionManager({ ...COMPRESSION_PROFILES.fast, log })
  }

  /** No permessage-deflate; statistics still count payload and wire bytes. */
  static createDisabled (log?: WarnLogger): CompressionManager {
    return new CompressionManager({ ...COMPRESSION_PROFILES.disabled, log })
  }

  /** Builds a manager from the plugin's `compression` option. @throws FST_WSM_OPTION_INVALID as {@link resolveCompressionProfile}. */
  static fromOption (value: unknown, log?: WarnLogger): CompressionManager {
    return new CompressionManager({ ...resolveCompressionProfile(value), log })
  }

  /** The profile's settings. */
  get settings (): Readonly<CompressionSettings> {
    return this.#settings
  }

  /** ws's `perMessageDeflate` server option for this profile (a new object each call); `false` when disabled. */
  getCompressionOptions (): WebSocket.PerMessageDeflateOptions | false {
    return perMessageDeflateOptions(this.#settings)
  }

  /**
   * Whether a message of this many bytes should be sent compressed: the profile is enabled and
   * the size is at least the threshold. The plugin sends the others with {@link UNCOMPRESSED}.
   * Whether the connection negotiated permessage-deflate is ws's business: it ignores the
   * request on connections that did not.
   */
  shouldCompress (byteLength: number): boolean {
    return this.#settings.enabled && byteLength >= this.#settings.threshold
  }

  /**
   * Applies the profile to a ws server: sets its `perMessageDeflate` option, which ws reads at
   * every upgrade, so it takes effect for the connections that follow, whether the server was
   * created with compression or without (a disabled profile turns it off; connections already
   * open keep what they negotiated). With `track` (the default) every new connection is also
   * tracked; a server is hooked once however often this is called.
   */
  configureServer<T extends typeof WebSocket, U extends typeof IncomingMessage> (
    wss: WebSocketServer<T, U>, options: { track?: boolean } = {}): void {
    wss.options.perMessageDeflate = this.getCompressionOptions()
    if (options.track !== false && !this.#servers.has(wss)) {
      this.#servers.add(wss)
      wss.on('connection', this.#onConnection)
    }
  }

  /**
   * Starts accounting for a connection: takes the TCP socket's byte counters as a baseline (so
   * the handshake is left out) and untracks the socket by itself on 'close', folding its
   * figures into the totals.
   * @returns false when the socket is already tracked by this manager or closed.
   */
  track (ws: WebSocket): boolean {
    if (this.#tracked.has(ws) || ws.readyState === 3) return false
    const wire = wireOf(ws)
    this.#tracked.set(ws, {
      wire,
      wireOutBase: wire === null ? 0 : wire.bytesWritten,
      wireInBase: wire === null ? 0 : wire.bytesRead,
      negotiated: ws.extensions.includes('permessage-deflate'),
      messagesSent: 0,
      messagesCompressed: 0,
      messagesReceived: 0,
      payloadBytesOut: 0,
      payloadBytesIn: 0,
      errors: 0
    })
    ws.on('close', this.#onClose)
    return true
  }

  /**
   * Stops accounting for a connection and folds its figures into the totals. Idempotent.
   * @returns whether it was tracked.
   */
  untrack (ws: WebSocket): boolean {
    const t = this.#tracked.get(ws)
    if (t === undefined) return false
    this.#tracked.delete(ws)
    ws.removeListener('close', this.#onClose)
    addTo(this.#closed, t)
    return true
  }

  /** Whether this manager tracks the socket. */
  isTracked (ws: WebSocket): boolean {
    return this.#tracked.has(ws)
  }

  /**
   * Counts one data message sent: its payload bytes before compression, and whether it went
   * out compressed (`shouldCompress()` was true on a connection that negotiated the
   * extension). Ignored for an untracked socket. O(1), no allocation.
   */
  recordSent (ws: WebSocket, payloadBytes: number, compressed: boolean): void {
    const t = this.#tracked.get(ws)
    if (t === undefined) return
    t.messagesSent++
    t.payloadBytesOut += payloadBytes
    if (compressed) t.messagesCompressed++
  }

  /** Counts one data message received, by its payload bytes after decompression. Ignored for an untracked socket. O(1), no allocation. */
  recordReceived (ws: WebSocket, payloadBytes: number): void {
    const t = this.#tracked.get(ws)
    if (t === undefined) return
    t.messagesReceived++
    t.payloadBytesIn += payloadBytes
  }

  /**
   * Counts a compression error and logs it at warn. ws emits 'error' for data that fails to
   * inflate (and closes with 1007 itself); a failed deflate reaches send()'s callback, and the
   * plugin closes that connection with 1011.
   */
  recordError (ws: WebSocket, err: unknown): void {
    this.#errors++
    const t = this.#tracked.get(ws)
    if (t !== undefined) t.errors++
    if (this.#log !== null) this.#log.warn({ err }, 'permessage-deflate error')
  }

  /** One tracked connection's figures, or undefined when it is not tracked. */
  getConnectionStats (ws: WebSocket): CompressionConnectionStats | undefined {
    const t = this.#tracked.get(ws)
    if (t === undefined) return undefined
    const measured = t.wire !== null
    const wireBytesOut = measured ? t.wire.bytesWritten - t.wireOutBase : 0
    const wireBytesIn = measured ? t.wire.bytesRead - t.wireInBase : 0
    return {
      negotiated: t.negotiated,
      messagesSent: t.messagesSent,
      messagesCompressed: t.messagesCompressed,
      messagesReceived: t.messagesReceived,
      payloadBytesOut: t.payloadBytesOut,
      payloadBytesIn: t.payloadBytesIn,
      wireBytesOut,
      wireBytesIn,
      bytesSaved: measured ? t.payloadBytesOut - wireBytesOut : 0,
      ratio: measured ? ratioOf(wireBytesOut, t.payloadBytesOut) : null,
      compressionErrors: t.errors,
      wireMeasured: measured
    }
  }

  /** Figures over every connection tracked so far, open and closed. One pass over the open ones. */
  getStats (): CompressionStats {
    const sum = this.#sum()
    let compressedConnections = 0
    for (const t of this.#tracked.values()) if (t.negotiated) compressedConnections++
    return {
      enabled: this.#settings.enabled,
      connections: this.#tracked.size,
      compressedConnections,
      messagesSent: sum.messagesSent,
      messagesCompressed: sum.messagesCompressed,
      messagesReceived: sum.messagesReceived,
      payloadBytesOut: sum.payloadBytesOut,
      payloadBytesIn: sum.payloadBytesIn,
      wireBytesOut: sum.wireBytesOut,
      wireBytesIn: sum.wireBytesIn,
      bytesSaved: sum.measuredPayloadOut - sum.wireBytesOut,
      ratio: ratioOf(sum.wireBytesOut, sum.measuredPayloadOut),
      ratioIn: ratioOf(sum.wireBytesIn, sum.measuredPayloadIn),
      compressionErrors: this.#errors,
      wireMeasured: sum.unmeasured === 0
    }
  }

  /** Outgoing wire bytes as a percentage of payload bytes (25 = a quarter), one decimal; null before any payload. */
  getCompressionRatioPercent (): number | null {
    const ratio = this.getStats().ratio
    return ratio === null ? null : Math.round(ratio * 1000) / 10
  }

  /** Bytes saved per message sent on measured connections (negative when framing outweighs savings); 0 before any. */
  getAverageBytesSaved (): number {
    const sum = this.#sum()
    return sum.measuredMessagesSent === 0 ? 0 : (sum.measuredPayloadOut - sum.wireBytesOut) / sum.measuredMessagesSent
  }

  #sum (): Totals {
    const sum: Totals = { ...this.#closed }
    for (const t of this.#tracked.values()) addTo(sum, t)
    return sum
  }

  /** The profile and figures as one readable line. */
  getSummary (): string {
    const p = this.#settings
    const s = this.getStats()
    const profile = p.enabled
      ? `level ${p.level}, threshold ${formatBytes(p.threshold)}, window 2^${p.serverMaxWindowBits}, memLevel ${p.memLevel}`
      : 'disabled'
    const ratio = s.ratio === null ? 'n/a' : `${(s.ratio * 100).toFixed(1)}% of payload`
    return `compression: ${profile}; ${s.connections} connections (${s.compressedConnections} compressed), ` +
      `${s.messagesSent} messages out (${s.messagesCompressed} compressed), ` +
      `${formatBytes(s.payloadBytesOut)} payload -> ${formatBytes(s.wireBytesOut)} on the wire (${ratio}, ` +
      `saved ${formatBytes(Math.max(0, s.bytesSaved))}), ${s.messagesReceived} messages in, ` +
      `${s.compressionErrors} errors${s.wireMeasured ? '' : ', some connections unmeasured'}`
  }
}
