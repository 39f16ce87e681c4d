// permessage-deflate: the profile ws negotiates with, the size threshold the plugin applies
// itself, and compression statistics measured on the TCP socket.
//
// Memory. ws keeps one zlib deflate and one inflate context per connection for its whole
// life (with or without context takeover: no_context_takeover resets a context, it does not
// free it). A deflate context costs 4 × 2^windowBits (window and chains) + 2^(memLevel + 8)
// (pending symbols) + a 64 KiB hash table that does not shrink with memLevel in the zlib Node
// bundles (measured on Node 20: no deflate context below ~80 KiB RSS); an inflate context
// ~2^windowBits + 7 KiB; each stream also holds a chunkSize output buffer (16 KiB by default).
// The profiles shrink the server's window (negotiated as server_max_window_bits), memLevel and
// the chunk size. Measured by bench/compression-profiles.ts (Node 20.20, ws 8.23, server RSS
// per idle connection after one ~10 KiB message each way; ratio = wire / payload over 50
// distinct ~10 KiB feed pages on one connection):
//   ws default (true)  275 KiB  ratio 0.2015
//   high               268 KiB  ratio 0.1968   (0.97x the memory, 1.02x the compression)
//   default            157 KiB  ratio 0.2209   (0.57x the memory, 0.91x the compression)
//   fast               132 KiB  ratio 0.2904   (0.48x the memory, 0.69x the compression)
//   no compression       7 KiB  ratio 1.0004
// No choice of options gets a compressing connection to a quarter of ws's default: the two
// contexts alone cost ~115 KiB at the smallest window that still compresses (2^11).
//
// What is deliberately not bounded: the client's window (client_max_window_bits). ws refuses
// the whole handshake with HTTP 400 when the server sets a number there and a client's offer
// lacks the parameter, which RFC 7692 makes optional. The inflate context thus keeps the
// window the client chose (32 KiB for browsers and ws).
//
// Threshold. ws skips compression of small messages only when server_no_context_takeover was
// negotiated (sender.js); otherwise it compresses everything, a loss for messages of a few
// bytes. The plugin therefore decides per message with shouldCompress() and passes
// UNCOMPRESSED to ws's send() below the threshold. Leaving small messages out is safe with
// context takeover: they never enter either side's deflate window.

import type { IncomingMessage } from 'node:http'
import type WebSocket from 'ws'
import { errors } from './errors'
import type { WarnLogger } from './frame-size'
import { formatBytes } from './frame-size'
import { checkInt } from './validate'

/** The settings of a compression profile. */
export interface CompressionSettings {
  /** Whether permessage-deflate is offered at all. @default true */
  enabled: boolean
  /** zlib compression level, 0 (store) to 9 (smallest, slowest). @default 6 */
  level: number
  /**
   * Messages smaller than this many bytes are sent uncompressed (by the plugin, see
   * {@link CompressionManager.shouldCompress}). Integer, 0 compresses everything.
   * @default 1024
   */
  threshold: number
  /** zlib memLevel, 1 to 9: the size of the deflate pending buffer. @default 5 */
  memLevel: number
  /**
   * The server's deflate window as 2^n bytes, 9 to 15, negotiated as server_max_window_bits.
   * Each step down halves the window memory (4 × 2^n bytes) and loses matches against older
   * data. A client that offers a smaller server_max_window_bits is refused with HTTP 400 by ws.
   * @default 13
   */
  serverMaxWindowBits: number
  /**
   * Reset the server's deflate context after every message (server_no_context_takeover).
   * Saves no memory in ws (the context is reset, not freed) and costs ratio on streams of
   * similar messages. When false the server still accepts a client that asks for it.
   * @default false
   */
  serverNoContextTakeover: boolean
  /** Ask clients to reset their deflate context after every message (client_no_context_takeover). @default false */
  clientNoContextTakeover: boolean
  /**
   * Concurrent zlib operations, process-wide: ws keeps one limiter for the whole process and
   * sizes it from the first permessage-deflate instance created, so only the first profile
   * used in a process counts. Bounds memory fragmentation from parallel zlib work.
   * @default 10
   */
  concurrencyLimit: number
  /**
   * Size in bytes of the output buffer each zlib stream holds, 64 to 65536. Inflated data is
   * also checked against maxPayload per chunk of this size.
   * @default 4096
   */
  chunkSize: number
}

/** The named profiles. */
export type CompressionProfileName = 'default' | 'high' | 'fast' | 'disabled'

/** The plugin's `compression` option: a profile name, true (default), false (disabled), or settings over the default profile. */
export type CompressionOption = CompressionProfileName | boolean | Partial<CompressionSettings>

/** Options of a {@link CompressionManager}: settings over the default profile, and a logger. */
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

/**
 * Whether an 'error' a ws socket emitted is a zlib failure (code `Z_DATA_ERROR` and the like):
 * compressed data from the peer that does not inflate. The plugin passes those to
 * {@link CompressionManager.recordError}.
 */
export function isCompressionError (err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false
  const code = (err as { code?: unknown }).code
  return typeof code === 'string' && code.startsWith('Z_')
}

/** Send options that keep a message uncompressed; frozen, so one object serves every send. */
export const UNCOMPRESSED: Readonly<{ compress: false }> = Object.freeze({ compress: false })

/** Send options that ask for compression (ws's own default); frozen, for the other branch of the same choice. */
export const COMPRESSED: Readonly<{ compress: true }> = Object.freeze({ compress: true })

/** The built-in profiles; their measured memory and ratio are in the comment at the top of this module (bench/compression-profiles.ts). */
export const COMPRESSION_PROFILES: Readonly<Record<CompressionProfileName, Readonly<CompressionSettings>>> = Object.freeze({
  default: Object.freeze({
    enabled: true,
    level: 6,
    threshold: 1024,
    memLevel: 5,
    serverMaxWindowBits: 13,
    serverNoContextTakeover: false,
    clientNoContextTakeover: false,
    concurrencyLimit: 10,
    chunkSize: 4096
  }),
  high: Object.freeze({
    enabled: true,
    level: 9,
    threshold: 512,
    memLevel: 8,
    serverMaxWindowBits: 15,
    serverNoContextTakeover: false,
    clientNoContextTakeover: false,
    concurrencyLimit: 10,
    chunkSize: 8192
  }),
  fast: Object.freeze({
    enabled: true,
    level: 1,
    threshold: 2048,
    memLevel: 4,
    serverMaxWindowBits: 12,
    serverNoContextTakeover: false,
    clientNoContextTakeover: false,
    concurrencyLimit: 10,
    chunkSize: 4096
  }),
  disabled: Object.freeze({
    enabled: false,
    level: 6,
    threshold: 1024,
    memLevel: 5,
    serverMaxWindowBits: 13,
    serverNoContextTakeover: false,
    clientNoContextTakeover: false,
    concurrencyLimit: 10,
    chunkSize: 4096
  })
})

const SETTING_KEYS = Object.keys(COMPRESSION_PROFILES.default) as readonly (keyof CompressionSettings)[]
const PROFILE_NAMES = "'default', 'high', 'fast', 'disabled', true, false or an object of settings"

function checkBool (name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw new errors.FST_WSM_OPTION_INVALID(name, `expected a boolean, got ${JSON.stringify(value)}`)
  return value
}

function checkSettings (input: Record<string, unknown>, base: Readonly<CompressionSettings>, prefix: string): CompressionSettings {
  for (const key of Object.keys(input)) {
    if (key !== 'log' && !(SETTING_KEYS as readonly string[]).includes(key)) {
      throw new errors.FST_WSM_OPTION_INVALID(`${prefix}${key}`, `unknown option; known: ${SETTING_KEYS.join(', ')}`)
    }
  }
  return {
    enabled: checkBool(`${prefix}enabled`, input.enabled ?? base.enabled),
    level: checkInt(`${prefix}level`, input.level ?? base.level, 0, 9),
    threshold: checkInt(`${prefix}threshold`, input.threshold ?? base.threshold, 0, 2 ** 31 - 1),
    memLevel: checkInt(`${prefix}memLevel`, input.memLevel ?? base.memLevel, 1, 9),
    // 8 is left out: zlib silently raises a raw deflate window of 2^8 to 2^9, so the peer,
    // told 8, could receive distances its window does not hold.
    serverMaxWindowBits: checkInt(`${prefix}serverMaxWindowBits`, input.serverMaxWindowBits ?? base.serverMaxWindowBits, 9, 15),
    serverNoContextTakeover: checkBool(`${prefix}serverNoContextTakeover`, input.serverNoContextTakeover ?? base.serverNoContextTakeover),
    clientNoContextTakeover: checkBool(`${prefix}clientNoContextTakeover`, input.clientNoContextTakeover ?? base.clientNoContextTakeover),
    concurrencyLimit: checkInt(`${prefix}concurrencyLimit`, input.concurrencyLimit ?? base.concurrencyLimit, 1, 1024),
    chunkSize: checkInt(`${prefix}chunkSize`, input.chunkSize ?? base.chunkSize, 64, 65_536)
  }
}

/**
 * Turns the plugin's `compression` option into settings: a profile name, `true` (default),
 * `false` (disabled), or an object whose keys override the default profile.
 * @throws FST_WSM_OPTION_INVALID for an unknown profile or key, or a value out of range
 * (level 0-9, threshold an integer >= 0, memLevel 1-9, serverMaxWindowBits 9-15,
 * concurrencyLimit 1-1024, chunkSize 64-65536).
 */
export function resolveCompressionProfile (value: unknown, name = 'compression'): CompressionSettings {
  if (value === true) return { ...COMPRESSION_PROFILES.default }
  if (value === false) return { ...COMPRESSION_PROFILES.disabled }
  if (typeof value === 'string') {
    if (Object.hasOwn(COMPRESSION_PROFILES, value)) return { ...COMPRESSION_PROFILES[value as CompressionProfileName] }
    throw new errors.FST_WSM_OPTION_INVALID(name, `expected ${PROFILE_NAMES}, got ${JSON.stringify(value)}`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new errors.FST_WSM_OPTION_INVALID(name, `expected ${PROFILE_NAMES}, got ${JSON.stringify(value)}`)
  }
  return checkSettings(value as Record<string, unknown>, COMPRESSION_PROFILES.default, `${name}.`)
}

/** ws's `perMessageDeflate` server option for settings; `false` when disabled. */
export function perMessageDeflateOptions (settings: Readonly<CompressionSettings>): WebSocket.PerMessageDeflateOptions | false {
  if (!settings.enabled) return false
  const options: WebSocket.PerMessageDeflateOptions = {
    // ws applies its own threshold when server_no_context_takeover is negotiated; the same
    // number keeps both paths in agreement.
    threshold: settings.threshold,
    concurrencyLimit: settings.concurrencyLimit,
    serverMaxWindowBits: settings.serverMaxWindowBits,
    // windowBits is left to ws, which sets it from the negotiated parameters.
    zlibDeflateOptions: { level: settings.level, memLevel: settings.memLevel, chunkSize: settings.chunkSize },
    zlibInflateOptions: { chunkSize: settings.chunkSize }
  }
  // Only `true` is passed: ws reads an explicit `serverNoContextTakeover: false` as a refusal
  // of clients that ask for it, and fails their handshake with HTTP 400.
  if (settings.serverNoContextTakeover) options.serverNoContextTakeover = true
  if (settings.clientNoContextTakeover) options.clientNoContextTakeover = true
  return options
}

// Node's net.Socket counters; absent on the streams injectWS() uses.
interface WireCounters {
  readonly bytesWritten: number
  readonly bytesRead: number
}

interface WsInternals {
  // ws's transport: a net.Socket (or tls.TLSSocket) for real connections. Stable across ws 8.x.
  _socket?: Partial<WireCounters> | null
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
  const socket = (ws as unknown as WsInternals)._socket
  if (socket === null || socket === undefined) return null
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
  configureServer<T extends typeof WebSocket.WebSocket, U extends typeof IncomingMessage> (
    wss: WebSocket.Server<T, U>, options: { track?: boolean } = {}): void {
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
