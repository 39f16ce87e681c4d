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
// Negotiation. ws refuses the whole handshake (HTTP 400) when a client offers a
// server_max_window_bits below the server's configured number, which every client may do
// (RFC 7692 7.1.2.1). negotiateDeflateOffer() accepts such a client instead: the offer keeps
// its own smaller window (less memory, still compressed), and offers without the parameter get
// the profile's window written into them, so ws (configured without a number) uses exactly
// min(client, profile). An offer of 8 is declined: zlib raises a raw window of 2^8 to 2^9.
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

import WebSocket from 'ws'
import { errors } from './errors'
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
   * data. A client that offers a smaller server_max_window_bits gets that window (see
   * negotiateDeflateOffer); ws alone would refuse it with HTTP 400.
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
  /**
   * Compress once for every recipient: a broadcast, sendToUser or publish is deflated once
   * (per negotiated window size) and the same frame goes to each compressed connection, and
   * each connection frees its zlib contexts after every message instead of keeping them for
   * its life. Needs serverNoContextTakeover and clientNoContextTakeover. See the `shared`
   * profile.
   * @default false
   */
  shared: boolean
}

/** The named profiles. */
export type CompressionProfileName = 'default' | 'high' | 'fast' | 'shared' | 'disabled'

/** The plugin's `compression` option: a profile name, true (default), false (disabled), or settings over the default profile. */
export type CompressionOption = CompressionProfileName | boolean | Partial<CompressionSettings>

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
    chunkSize: 4096,
    shared: false
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
    chunkSize: 8192,
    shared: false
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
    chunkSize: 4096,
    shared: false
  }),
  // No context takeover either way, contexts freed after each message, and one deflate per
  // broadcast for all its recipients: an idle connection holds no zlib memory at all, and a
  // message costs one deflate whatever the number of recipients. The full window and memLevel
  // cost nothing at rest: the contexts live only while a message is compressed.
  shared: Object.freeze({
    enabled: true,
    level: 6,
    threshold: 1024,
    memLevel: 8,
    serverMaxWindowBits: 15,
    serverNoContextTakeover: true,
    clientNoContextTakeover: true,
    concurrencyLimit: 10,
    chunkSize: 16384,
    shared: true
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
    chunkSize: 4096,
    shared: false
  })
})

const SETTING_KEYS = Object.keys(COMPRESSION_PROFILES.default) as readonly (keyof CompressionSettings)[]
const PROFILE_NAMES = "'default', 'high', 'fast', 'shared', 'disabled', true, false or an object of settings"

function checkBool (name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw new errors.FST_WSM_OPTION_INVALID(name, `expected a boolean, got ${JSON.stringify(value)}`)
  return value
}

/** Validates compression settings over a base; `log` is let through for the manager's options. */
export function checkSettings (input: Record<string, unknown>, base: Readonly<CompressionSettings>, prefix: string): CompressionSettings {
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
    chunkSize: checkInt(`${prefix}chunkSize`, input.chunkSize ?? base.chunkSize, 64, 65_536),
    shared: checkShared(input, base, prefix)
  }
}

function checkShared (input: Record<string, unknown>, base: Readonly<CompressionSettings>, prefix: string): boolean {
  const shared = checkBool(`${prefix}shared`, input.shared ?? base.shared)
  if (!shared) return false
  // One set of bytes fits every peer only when no peer's deflate state depends on history.
  for (const key of ['serverNoContextTakeover', 'clientNoContextTakeover'] as const) {
    if ((input[key] ?? base[key]) !== true) throw new errors.FST_WSM_OPTION_INVALID(`${prefix}shared`, `needs ${key}: true`)
  }
  return true
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

/**
 * ws's `perMessageDeflate` server option for settings; `false` when disabled. With
 * `clampsOffers` (the plugin, which runs {@link negotiateDeflateOffer} on every upgrade) the
 * window is left out of ws's options, since the offers carry it; without it ws bounds the
 * window itself and refuses clients that offer a smaller one.
 */
export function perMessageDeflateOptions (settings: Readonly<CompressionSettings>, clampsOffers = false): WebSocket.PerMessageDeflateOptions | false {
  if (!settings.enabled) return false
  const options: WebSocket.PerMessageDeflateOptions = {
    // ws applies its own threshold when server_no_context_takeover is negotiated; the same
    // number keeps both paths in agreement.
    threshold: settings.threshold,
    concurrencyLimit: settings.concurrencyLimit,
    serverMaxWindowBits: clampsOffers ? undefined : settings.serverMaxWindowBits,
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

type Params = Record<string, Array<string | true>>
interface ExtensionCodec {
  parse (header: string): Record<string, Params[]>
  format (extensions: Record<string, Params[]>): string
}
// ws's own parser and formatter of Sec-WebSocket-Extensions, public on its default export.
const extension = (WebSocket as unknown as { extension: ExtensionCodec }).extension

function windowValue (values: Array<string | true>, min: number): boolean {
  const value = values[0]
  return value === true || (typeof value === 'string' && /^\d{1,2}$/.test(value) && Number(value) >= min && Number(value) <= 15)
}

// RFC 7692 7.1: known parameters, each once, with a valid value. ws would refuse the whole
// handshake for anything else; the RFC asks the server to decline that offer only.
function validOffer (params: Params): boolean {
  for (const [name, values] of Object.entries(params)) {
    if (values.length !== 1) return false
    if (name === 'server_no_context_takeover' || name === 'client_no_context_takeover') {
      if (values[0] !== true) return false
    } else if (name === 'client_max_window_bits') {
      if (!windowValue(values, 8)) return false
    } else if (name === 'server_max_window_bits') {
      // zlib has no raw deflate window of 2^8 (it uses 2^9); declining is always allowed and
      // does not rely on how far back zlib then reaches.
      if (values[0] === true || !windowValue(values, 9)) return false
    } else {
      return false
    }
  }
  return true
}

/**
 * Rewrites a client's Sec-WebSocket-Extensions so that every permessage-deflate offer names a
 * server window of at most `windowBits`: an offer with a smaller window keeps it, an offer
 * without one gets `windowBits`, and an offer of 8 (which zlib cannot honour for raw deflate)
 * or a value outside 8-15 is declined, as RFC 7692 asks. Returns the header to use; undefined
 * when no offer is left (the connection opens uncompressed); the header unchanged when it does
 * not parse (ws then refuses it, and the plugin answers with its JSON 400).
 */
export function negotiateDeflateOffer (header: string, windowBits: number): string | undefined {
  let offers: Record<string, Params[]>
  try {
    offers = extension.parse(header)
  } catch {
    return header
  }
  const deflate = offers['permessage-deflate']
  if (deflate === undefined) return header
  const kept: Params[] = []
  for (const params of deflate) {
    if (!validOffer(params)) continue
    const asked = params.server_max_window_bits
    if (asked === undefined) {
      kept.push({ ...params, server_max_window_bits: [String(windowBits)] })
      continue
    }
    kept.push({ ...params, server_max_window_bits: [String(Math.min(Number(asked[0]), windowBits))] })
  }
  if (kept.length === 0) delete offers['permessage-deflate']
  else offers['permessage-deflate'] = kept
  const formatted = extension.format(offers)
  return formatted === '' ? undefined : formatted
}
