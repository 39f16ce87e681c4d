// Protocol conformance on raw sockets, by the categories of the Autobahn TestSuite: framing,
// pings and pongs, reserved bits, reserved opcodes, fragmentation, UTF-8, close codes and
// reasons, limits, compression, and the permessage-deflate handshake.
//
// Each case says what the client sends and what RFC 6455 (and RFC 7692 for compression)
// requires of the server. Every case runs against the plugin (its defaults, authenticated with
// a real token: a fresh user per connection) and against bare @fastify/websocket; both must
// meet the requirement and give the same observation, byte for byte. Where the plugin differs
// on purpose, the case carries the plugin's expectation and the reason.
//
// Case table (cases per category; each runs against both systems):
//   framing 13, pings 13, rsv 10, opcodes 11, masking 4, fragmentation 15, utf8 22,
//   close 38, limits 7 (4 documented plugin choices), compression 17 (1 documented plugin
//   choice, 1 case where bare falls short); handshake: 8 window offers and 13 other offers
//   against bare and the three profiles, 8 malformed and 3 unparseable offers, 3 version
//   refusals, 2 refusals the plugin adds on purpose.
// The table also checks the reference receiver the fuzz suite relies on (fixtures/rfc6455.ts).
import { test, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { constants as zlibConstants, inflateRawSync } from 'node:zlib'
import { RawWebSocket, closePayload, encodeFrame, type FrameSpec, type RawFrame } from './fixtures/raw-ws'
import {
  MessageInflater, bareEcho, deflateMessage, deflateParams, pluginEcho, type DeflateParams, type EchoSystem
} from './fixtures/echo-apps'
import { describe, expectedOutcome, frameViolations } from './fixtures/rfc6455'

// --- the case table --------------------------------------------------------------------------

type ReplyOp = 'text' | 'binary' | 'pong'
interface Reply { op: ReplyOp, data: Buffer }

/** What must happen after the case's frames were sent. */
type Then =
  /** The connection stays open; the runner then closes it with 1000 and expects that echoed. */
  | 'open'
  /** The server fails the connection with this close code. */
  | { fail: number }
  /** The client's close (this payload) is answered: its code echoed, or an empty close for an empty one. */
  | { answer: Buffer }

interface Expectation {
  replies: Reply[]
  then: Then
  /** Replies may stop early: a prefix of `replies` of at least this many is enough. */
  minReplies?: number
}

interface Case {
  category: string
  name: string
  send: FrameSpec[]
  /** What RFC 6455 requires; bare @fastify/websocket must do exactly this. */
  rfc: Expectation
  /** A documented choice where the plugin differs from bare, with the reason. */
  plugin?: Expectation & { why: string }
  /** Where bare @fastify/websocket falls short of the RFC and is not held to it: why. */
  bareFallsShort?: string
  /** Run on a connection that negotiated permessage-deflate. */
  deflate?: true
  /** Write the bytes in pieces of this size, a turn of the event loop apart. */
  chunk?: number
}

const b = (data: string | Buffer): Buffer => Buffer.isBuffer(data) ? data : Buffer.from(data)
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s/g, ''), 'hex')
/** Deterministic bytes of every value. */
function bytes (n: number, seed = 7): Buffer {
  const out = Buffer.allocUnsafe(n)
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed) & 0xff
  return out
}

const text = (data: string | Buffer, spec: Partial<FrameSpec> = {}): FrameSpec => ({ opcode: 1, payload: b(data), ...spec })
const binary = (data: Buffer, spec: Partial<FrameSpec> = {}): FrameSpec => ({ opcode: 2, payload: data, ...spec })
const cont = (data: string | Buffer, fin = true, spec: Partial<FrameSpec> = {}): FrameSpec => ({ opcode: 0, payload: b(data), fin, ...spec })
const ping = (data: string | Buffer = '', spec: Partial<FrameSpec> = {}): FrameSpec => ({ opcode: 9, payload: b(data), ...spec })
const pong = (data: string | Buffer = '', spec: Partial<FrameSpec> = {}): FrameSpec => ({ opcode: 10, payload: b(data), ...spec })
const close = (payload: Buffer, spec: Partial<FrameSpec> = {}): FrameSpec => ({ opcode: 8, payload, ...spec })

const echoText = (data: string | Buffer): Reply => ({ op: 'text', data: b(data) })
const echoBinary = (data: Buffer): Reply => ({ op: 'binary', data })
const pongOf = (data: string | Buffer = ''): Reply => ({ op: 'pong', data: b(data) })

const open = (...replies: Reply[]): Expectation => ({ replies, then: 'open' })
const fail = (code: number, ...replies: Reply[]): Expectation => ({ replies, then: { fail: code } })
const answers = (payload: Buffer, ...replies: Reply[]): Expectation => ({ replies, then: { answer: payload } })

const KOSME = 'κόσμε'
const MiB = 1024 * 1024

/** A message split into fragments at the given byte offsets. */
function fragments (opcode: 1 | 2, data: Buffer, cuts: number[], spec: Partial<FrameSpec> = {}): FrameSpec[] {
  const points = [0, ...cuts, data.length]
  return points.slice(1).map((end, i) => ({
    opcode: i === 0 ? opcode : 0,
    payload: data.subarray(points[i], end),
    fin: i === points.length - 2,
    ...(i === 0 ? spec : {})
  }))
}

const cases: Case[] = []
function add (category: string, name: string, send: FrameSpec[], rfc: Expectation, extra: Partial<Case> = {}): void {
  cases.push({ category, name, send, rfc, ...extra })
}

// Framing (Autobahn 1.x): sizes at each length-encoding boundary, 7-bit, 16-bit and 64-bit.
for (const size of [0, 125, 126, 65535, 65536]) {
  const t = 'x'.repeat(size)
  add('framing', `text of ${size} bytes is echoed`, [text(t)], open(echoText(t)))
  add('framing', `binary of ${size} bytes is echoed`, [binary(bytes(size))], open(echoBinary(bytes(size))))
}
add('framing', 'three messages in one write are echoed in order', [text('one'), binary(b('two')), text('three')],
  open(echoText('one'), echoBinary(b('two')), echoText('three')))
add('framing', 'a 65536-byte binary written in 997-byte pieces is echoed', [binary(bytes(65536, 3))],
  open(echoBinary(bytes(65536, 3))), { chunk: 997 })
add('framing', 'a zero masking key is valid', [text('zero mask', { maskKey: Buffer.alloc(4) })], open(echoText('zero mask')))

// Pings and pongs (Autobahn 2.x).
add('pings', 'ping without payload gets an empty pong', [ping()], open(pongOf()))
add('pings', 'ping with a text payload gets a pong with the same payload', [ping('Hello, world!')], open(pongOf('Hello, world!')))
add('pings', 'ping with a binary payload gets the same payload back', [ping(hex('00 ff fe fd fc fb 00 ff'))], open(pongOf(hex('00 ff fe fd fc fb 00 ff'))))
add('pings', 'ping with a 125-byte payload gets it back', [ping(bytes(125))], open(pongOf(bytes(125))))
add('pings', 'ping with a 126-byte payload is a protocol error', [ping(bytes(126))], fail(1002))
add('pings', 'ping of 125 bytes written one byte at a time', [ping(bytes(125, 9))], open(pongOf(bytes(125, 9))), { chunk: 1 })
add('pings', 'unsolicited pong without payload is ignored', [pong(), text('after')], open(echoText('after')))
add('pings', 'unsolicited pong with payload is ignored', [pong('unsolicited'), text('after')], open(echoText('after')))
add('pings', 'unsolicited pong, then a ping: only the ping is answered', [pong('unsolicited'), ping('solicited')], open(pongOf('solicited')))
add('pings', 'ten pings get ten pongs in order', Array.from({ length: 10 }, (_, i) => ping(`ping ${i}`)),
  open(...Array.from({ length: 10 }, (_, i) => pongOf(`ping ${i}`))))
add('pings', 'a ping between two fragments is answered at once, the message after', [text('frag1', { fin: false }), ping('between'), cont('frag2')],
  open(pongOf('between'), echoText('frag1frag2')))
add('pings', 'a ping with invalid UTF-8 is answered: control payloads are not text', [ping(hex('ce ba e1 bd f9 80 80'))], open(pongOf(hex('ce ba e1 bd f9 80 80'))))
add('pings', 'ping with a 16-bit length header is a protocol error (control length over 125)', [ping('short', { lengthBytes: 2 })], fail(1002))

// Reserved bits (Autobahn 3.x): no extension negotiated, so any RSV bit fails the connection.
add('rsv', 'RSV1 on a text frame', [text('rsv1', { rsv1: true })], fail(1002))
add('rsv', 'RSV2 on a text frame', [text('rsv2', { rsv2: true })], fail(1002))
add('rsv', 'RSV3 on a text frame', [text('rsv3', { rsv3: true })], fail(1002))
add('rsv', 'RSV1+RSV2 on a binary frame', [binary(bytes(10), { rsv1: true, rsv2: true })], fail(1002))
add('rsv', 'RSV1+RSV2+RSV3 on a ping', [ping('p', { rsv1: true, rsv2: true, rsv3: true })], fail(1002))
add('rsv', 'RSV2 on a close', [close(closePayload(1000), { rsv2: true })], fail(1002))
add('rsv', 'RSV3 on a pong', [pong('', { rsv3: true })], fail(1002))
add('rsv', 'RSV1 on a continuation', [text('a', { fin: false }), cont('b', true, { rsv1: true })], fail(1002))
add('rsv', 'a valid message, then RSV2: the first is echoed', [text('before'), text('bad', { rsv2: true }), ping('never')],
  fail(1002, echoText('before')))
add('rsv', 'a valid message, then RSV3 on a ping: no pong', [text('before'), ping('bad', { rsv3: true })],
  fail(1002, echoText('before')))

// Reserved opcodes (Autobahn 4.x).
for (const opcode of [3, 4, 5, 6, 7, 11, 12, 13, 14, 15]) {
  add('opcodes', `reserved opcode ${opcode}`, [{ opcode, payload: b('reserved') }], fail(1002))
}
add('opcodes', 'a valid message, then opcode 5, then a ping: echo only', [text('before'), { opcode: 5 }, ping('never')],
  fail(1002, echoText('before')))

// Masking (RFC 6455 5.1): a server must fail a connection whose client frames are unmasked.
add('masking', 'unmasked text', [text('plain', { mask: false })], fail(1002))
add('masking', 'unmasked ping', [ping('plain', { mask: false })], fail(1002))
add('masking', 'unmasked close', [close(closePayload(1000), { mask: false })], fail(1002))
add('masking', 'masked, then unmasked continuation', [text('a', { fin: false }), cont('b', true, { mask: false })], fail(1002))

// Fragmentation (Autobahn 5.x).
add('fragmentation', 'text in two fragments is reassembled', fragments(1, b('fragmented'), [4]), open(echoText('fragmented')))
add('fragmentation', 'binary in three fragments is reassembled', fragments(2, bytes(300), [1, 200]), open(echoBinary(bytes(300))))
add('fragmentation', 'text in ten one-byte fragments', fragments(1, b('0123456789'), [1, 2, 3, 4, 5, 6, 7, 8, 9]), open(echoText('0123456789')))
add('fragmentation', 'empty fragments around a payload', [text('', { fin: false }), cont('', false), cont('x', false), cont('')], open(echoText('x')))
add('fragmentation', 'an unsolicited pong between fragments is ignored', [text('a', { fin: false }), pong('between'), cont('b')], open(echoText('ab')))
add('fragmentation', 'fragmented ping', [ping('a', { fin: false }), cont('b')], fail(1002))
add('fragmentation', 'fragmented pong', [pong('a', { fin: false }), cont('b')], fail(1002))
add('fragmentation', 'fragmented close', [close(closePayload(1000), { fin: false }), cont('')], fail(1002))
add('fragmentation', 'continuation (final) without a start', [cont('orphan')], fail(1002))
add('fragmentation', 'continuation (not final) without a start', [cont('orphan', false)], fail(1002))
add('fragmentation', 'a new text frame in the middle of a fragmented text', [text('a', { fin: false }), text('b')], fail(1002))
add('fragmentation', 'a binary frame in the middle of a fragmented text', [text('a', { fin: false }), binary(b('b'), { fin: false }), cont('c')], fail(1002))
add('fragmentation', 'a complete message, then a stray continuation', [text('whole'), cont('stray')], fail(1002, echoText('whole')))
add('fragmentation', 'a close in the middle of a fragmented message ends it', [text('a', { fin: false }), close(closePayload(1000))],
  answers(closePayload(1000)))
add('fragmentation', 'fragments written one byte at a time', fragments(1, b('slowly'), [2, 4]), open(echoText('slowly')), { chunk: 1 })

// UTF-8 (Autobahn 6.x). Text must be valid UTF-8 (1007 otherwise); binary and control payloads are not checked.
for (const [name, data] of [
  ['ASCII and Latin-1 supplement', b('Hello-µ@ßöäüàá-UTF-8!!')],
  ['κόσμε', b(KOSME)],
  ['a BOM', hex('ef bb bf 68 69')],
  ['U+FFFF and U+10FFFF', hex('ef bf bf f4 8f bf bf')],
  ['four-byte emoji', b('😀👍')]
] as const) {
  add('utf8', `valid text: ${name}`, [text(data)], open(echoText(data)))
}
add('utf8', 'κόσμε split at every byte', fragments(1, b(KOSME), Array.from({ length: b(KOSME).length - 1 }, (_, i) => i + 1)), open(echoText(KOSME)))
add('utf8', 'a four-byte character split across two fragments', fragments(1, b('a😀b'), [3]), open(echoText('a😀b')))
add('utf8', 'a three-byte character split across three fragments', fragments(1, b('€'), [1, 2]), open(echoText('€')))
for (const [name, data] of [
  ['0xff', hex('ff')],
  ['overlong two-byte slash', hex('c0 af')],
  ['overlong three-byte', hex('e0 80 af')],
  ['UTF-16 surrogate', hex('ed a0 80')],
  ['above U+10FFFF', hex('f4 90 80 80')],
  ['five-byte sequence', hex('f8 88 80 80 80')],
  ['truncated at the end', hex('ce ba e1 bd')],
  ['lone continuation byte', hex('80')],
  ['valid, then invalid', Buffer.concat([b(KOSME), hex('ed a0 80'), b('edited')])]
] as const) {
  add('utf8', `invalid text: ${name}`, [text(data)], fail(1007))
}
add('utf8', 'invalid UTF-8 split across fragments', [text(KOSME, { fin: false }), cont(hex('ed a0 80'), false), cont('edited')], fail(1007))
add('utf8', 'a sequence cut by the end of the last fragment', [text('κ', { fin: false }), cont(hex('ce'))], fail(1007))
add('utf8', 'a valid message, then invalid UTF-8: the first is echoed', [text('ok'), text(hex('ff fe'))], fail(1007, echoText('ok')))
add('utf8', 'binary with invalid UTF-8 is echoed', [binary(hex('ff fe c0 af ed a0 80'))], open(echoBinary(hex('ff fe c0 af ed a0 80'))))
add('utf8', 'invalid UTF-8 in a pong is ignored', [pong(hex('ff')), text('after')], open(echoText('after')))

// Close codes and reasons (Autobahn 7.x).
add('close', 'close 1000 is answered with 1000', [close(closePayload(1000))], answers(closePayload(1000)))
add('close', 'close 1000 with a reason', [close(closePayload(1000, 'Normal closure'))], answers(closePayload(1000, 'Normal closure')))
add('close', 'close without payload is answered', [close(Buffer.alloc(0))], answers(Buffer.alloc(0)))
add('close', 'close with a 1-byte payload', [close(hex('03'))], fail(1002))
for (const code of [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]) {
  add('close', `close code ${code} is not allowed on the wire`, [close(closePayload(code))], fail(1002))
}
// 1012-1014 are IANA-registered after RFC 6455 (service restart, try again later, bad
// gateway); ws accepts them and so does the table.
for (const code of [1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]) {
  add('close', `close code ${code} is echoed`, [close(closePayload(code))], answers(closePayload(code)))
}
add('close', 'close reason of invalid UTF-8', [close(closePayload(1000, hex('ce ba e1 bd f9 80 80')))], fail(1007))
add('close', 'close reason of 123 bytes (a 125-byte payload)', [close(closePayload(1000, 'r'.repeat(123)))], answers(closePayload(1000, 'r'.repeat(123))))
add('close', 'close payload of 126 bytes', [close(closePayload(1000, 'r'.repeat(124)))], fail(1002))
add('close', 'a message, then close: the message is echoed first', [text('last'), close(closePayload(1000))], answers(closePayload(1000), echoText('last')))
add('close', 'frames after the close are ignored', [close(closePayload(1000)), text('late'), ping('late')], answers(closePayload(1000)))
add('close', 'a second close is ignored', [close(closePayload(3000)), close(closePayload(1000))], answers(closePayload(3000)))
add('close', 'close written one byte at a time', [close(closePayload(1001, 'bye'))], answers(closePayload(1001, 'bye')), { chunk: 1 })

// Limits. RFC 6455 leaves the limit to the server (1009 when exceeded); these are where the
// plugin's limits differ from ws's defaults on purpose.
add('limits', 'a message of exactly 1 MiB is echoed', [binary(bytes(MiB))], open(echoBinary(bytes(MiB))))
add('limits', 'a message of 1 MiB + 1 byte', [binary(bytes(MiB + 1))], open(echoBinary(bytes(MiB + 1))), {
  plugin: { ...fail(1009), why: 'frameSize defaults to 1 MiB (ws maxPayload), bare keeps ws\'s 100 MiB' }
})
add('limits', 'two fragments of 600 KiB', fragments(2, bytes(1200 * 1024), [600 * 1024]), open(echoBinary(bytes(1200 * 1024))), {
  plugin: { ...fail(1009), why: 'the limit counts the whole message, fragments together' }
})
add('limits', 'a header claiming 100 MiB + 1 is refused before any payload', [binary(Buffer.alloc(0), { declaredLength: 100 * MiB + 1 })], fail(1009))
add('limits', 'a header claiming 2^53 bytes', [binary(Buffer.alloc(0), { declaredLength: 2 ** 53 })], fail(1009))
add('limits', '1025 one-byte fragments', fragments(2, bytes(1025), Array.from({ length: 1024 }, (_, i) => i + 1)), open(echoBinary(bytes(1025))), {
  plugin: { ...fail(1008), why: 'maxFragments is derived from frameSize (1 MiB / 1 KiB = 1024); ws\'s default is 16384' }
})
add('limits', '260 messages in one burst', Array.from({ length: 260 }, (_, i) => text(`m${i}`)),
  open(...Array.from({ length: 260 }, (_, i) => echoText(`m${i}`))), {
    plugin: {
      replies: Array.from({ length: 260 }, (_, i) => echoText(`m${i}`)),
      minReplies: 200,
      then: { fail: 1008 },
      why: 'messageRateLimit defaults to 100/s with a burst of 200 and policy close'
    }
  })

// Compression (Autobahn 12.x/13.x, and RFC 7692 framing rules), on a connection that
// negotiated permessage-deflate. The server's answers are compared after inflating: the plugin
// sends messages below its threshold (1 KiB) uncompressed, bare ws compresses every one.
const DEFLATE = { deflate: true } as const
const page = 'abcdefgh'.repeat(512)
add('compression', 'a compressed text is echoed', [text(deflateMessage('Hello, compressed world'), { rsv1: true })],
  open(echoText('Hello, compressed world')), DEFLATE)
add('compression', 'a compressed 4 KiB text is echoed', [text(deflateMessage(page), { rsv1: true })], open(echoText(page)), DEFLATE)
add('compression', 'a compressed binary is echoed', [binary(deflateMessage(bytes(2048)), { rsv1: true })], open(echoBinary(bytes(2048))), DEFLATE)
add('compression', 'a compressed message in three fragments, RSV1 on the first only',
  fragments(1, deflateMessage(page), [5, 20], { rsv1: true }), open(echoText(page)), DEFLATE)
add('compression', 'an uncompressed message on a compressing connection is echoed', [text('plain')], open(echoText('plain')), DEFLATE)
add('compression', 'compressed, uncompressed, compressed in a row', [text(deflateMessage('one'), { rsv1: true }), text('two'), text(deflateMessage(page), { rsv1: true })],
  open(echoText('one'), echoText('two'), echoText(page)), DEFLATE)
add('compression', 'an empty compressed message (a single 0x00 byte)', [text(hex('00'), { rsv1: true })], open(echoText('')), DEFLATE)
add('compression', 'RSV1 on a continuation', [text(deflateMessage(page).subarray(0, 10), { rsv1: true, fin: false }), cont(deflateMessage(page).subarray(10), true, { rsv1: true })],
  fail(1002), DEFLATE)
add('compression', 'RSV1 on a ping', [ping('p', { rsv1: true })], fail(1002), DEFLATE)
add('compression', 'RSV1 on a pong', [pong('p', { rsv1: true })], fail(1002), DEFLATE)
add('compression', 'RSV1 on a close', [close(closePayload(1000), { rsv1: true })], fail(1002), DEFLATE)
add('compression', 'RSV2 on a compressed message', [text(deflateMessage('x'), { rsv1: true, rsv2: true })], fail(1002), DEFLATE)
add('compression', 'corrupted deflate data (reserved block type)', [text(hex('ff ff ff ff'), { rsv1: true })], fail(1007), DEFLATE)
add('compression', 'a compressed 4 KiB echo, then corrupted data: the echo still goes out before the 1007',
  [text(deflateMessage(page), { rsv1: true }), text(hex('ff ff ff ff'), { rsv1: true })], fail(1007, echoText(page)), {
    ...DEFLATE,
    // RFC 6455 7.1.7: SHOULD send a close frame when failing. @fastify/websocket's default
    // errorHandler terminates the socket on 'error', dropping what ws still has queued behind
    // a compression (here the echo and the 1007); how much is lost depends on zlib timing.
    bareFallsShort: 'bare terminates on error and loses frames queued behind a compression'
  })
add('compression', 'compressed text that inflates to invalid UTF-8', [text(deflateMessage(hex('ce ba ff')), { rsv1: true })], fail(1007), DEFLATE)
add('compression', 'a ping between compressed fragments', [fragments(1, deflateMessage(page), [5], { rsv1: true })[0], ping('mid'), fragments(1, deflateMessage(page), [5])[1]],
  open(pongOf('mid'), echoText(page)), DEFLATE)
add('compression', '3 KiB that inflates to 2 MiB', [binary(deflateMessage(Buffer.alloc(2 * MiB)), { rsv1: true })], open(echoBinary(Buffer.alloc(2 * MiB))), {
  ...DEFLATE,
  plugin: { ...fail(1009), why: 'frameSize bounds the inflated size too; bare allows 100 MiB' }
})

// --- running a case ------------------------------------------------------------------------

const OFFER = 'permessage-deflate; client_max_window_bits'
const DEADLINE_MS = 4000

/** What a client saw, in a form two servers can be compared by. */
interface Observation {
  status: number
  /** Data messages (inflated) and pongs before the server's close frame, described. */
  replies: string[]
  /** The server's close frame: 'code N "reason"', 'empty', or 'none'. */
  close: string
  closeCode: number | 'empty' | 'none'
  /** Whether the runner had to send the first close (the case left the connection open). */
  runnerClosed: boolean
  /** Whether the server ended the TCP connection after its close frame. */
  tcpEnded: boolean
  /** RFC 6455 rules the server's frames broke. */
  violations: string[]
}

function toBytes (c: Case): Buffer {
  return Buffer.concat(c.send.map((spec) => encodeFrame(spec)))
}

async function write (raw: RawWebSocket, data: Buffer, chunk: number | undefined): Promise<void> {
  if (chunk === undefined) {
    raw.write(data)
    return
  }
  for (let i = 0; i < data.length; i += chunk) {
    raw.write(data.subarray(i, i + chunk))
    await new Promise((resolve) => setImmediate(resolve))
  }
}

/** The next frame before `deadline`, or null when the time is up or the connection ended. */
async function frameBefore (raw: RawWebSocket, deadline: number): Promise<RawFrame | null> {
  const left = deadline - Date.now()
  if (left <= 0 && raw.pending === 0) return null
  try {
    return await raw.nextFrame(Math.max(1, left))
  } catch {
    return null
  }
}

/** Opens a connection to `system`, sends the case, and records what came back. */
async function observe (t: TestContext, system: EchoSystem, c: Case, expected: Expectation): Promise<Observation> {
  const raw = await RawWebSocket.open(system.port, { headers: system.headers(), extensions: c.deflate === true ? OFFER : undefined })
  t.after(() => raw.destroy())
  const obs: Observation = { status: raw.statusCode, replies: [], close: 'none', closeCode: 'none', runnerClosed: false, tcpEnded: false, violations: [] }
  if (raw.statusCode !== 101) return obs
  const deflate = deflateParams(raw.headers['sec-websocket-extensions'])
  if (c.deflate === true && deflate === null) obs.violations.push('permessage-deflate was not negotiated')
  const inflater = new MessageInflater(deflate?.serverMaxWindowBits ?? 15, deflate?.serverNoContextTakeover ?? false)
  t.after(() => inflater.close())
  const clientClosed = c.send.some((spec) => spec.opcode === 8)

  await write(raw, toBytes(c), c.chunk)
  const deadline = Date.now() + DEADLINE_MS
  let message: RawFrame[] = []
  let closeFrame: RawFrame | null = null
  const read = async (stopAtReplies: number): Promise<void> => {
    while (closeFrame === null && obs.replies.length < stopAtReplies) {
      const frame = await frameBefore(raw, deadline)
      if (frame === null) return
      obs.violations.push(...frameViolations(frame, deflate !== null, message.length > 0))
      if (frame.opcode === 8) closeFrame = frame
      else if (frame.opcode === 9 || frame.opcode === 10) obs.replies.push(describe(frame.opcode === 9 ? 'ping' : 'pong', frame.payload))
      else {
        message.push(frame)
        if (!frame.fin) continue
        const first = message[0]
        let data: Buffer = Buffer.concat(message.map((f) => f.payload))
        message = []
        if (first.rsv1) {
          try {
            data = await inflater.inflate(data)
          } catch (err) {
            obs.violations.push(`a compressed message does not inflate: ${(err as Error).message}`)
          }
        }
        obs.replies.push(describe(first.opcode === 1 ? 'text' : first.opcode === 2 ? 'binary' : `opcode ${first.opcode}`, data))
      }
    }
  }
  // Where the connection should stay open, stop once the replies are in and close it ourselves:
  // anything the server sends meanwhile still shows up before the answer to that close.
  await read(expected.then === 'open' ? expected.replies.length : Number.POSITIVE_INFINITY)
  if (closeFrame === null && !raw.ended) {
    obs.runnerClosed = true
    raw.send({ opcode: 8, payload: closePayload(1000, 'done') })
    await read(Number.POSITIVE_INFINITY)
  }
  const last = closeFrame as RawFrame | null
  if (last !== null) {
    obs.closeCode = last.payload.length >= 2 ? last.payload.readUInt16BE(0) : 'empty'
    obs.close = last.payload.length >= 2 ? `code ${obs.closeCode} ${JSON.stringify(last.payload.subarray(2).toString())}` : 'empty'
    // The client answers a close it did not start (RFC 6455 5.5.1) and then waits for the
    // server, which should end the TCP connection first (7.1.1).
    if (!obs.runnerClosed && !clientClosed) raw.send({ opcode: 8, payload: last.payload.subarray(0, 2) })
  }
  try {
    await raw.waitEnded(Math.max(1, deadline - Date.now()))
    obs.tcpEnded = true
  } catch {}
  // RFC 6455 5.5.1: after its close frame an endpoint sends no more data.
  if (last !== null && raw.pending > 0) obs.violations.push(`${raw.pending} frame(s) after the close frame`)
  return obs
}

/** Asserts that an observation meets an expectation. */
function assertMeets (obs: Observation, expected: Expectation, who: string): void {
  assert.equal(obs.status, 101, `${who}: handshake`)
  assert.deepEqual(obs.violations, [], `${who}: the server's frames follow RFC 6455`)
  const want = expected.replies.map((r) => describe(r.op, r.data))
  if (expected.minReplies === undefined) {
    assert.deepEqual(obs.replies, want, `${who}: replies`)
  } else {
    assert.ok(obs.replies.length >= expected.minReplies, `${who}: at least ${expected.minReplies} replies, got ${obs.replies.length}`)
    assert.deepEqual(obs.replies, want.slice(0, obs.replies.length), `${who}: replies are a prefix of the expected ones`)
  }
  const then = expected.then
  if (then === 'open') {
    assert.equal(obs.runnerClosed, true, `${who}: the connection stayed open (got ${obs.close})`)
    assert.equal(obs.closeCode, 1000, `${who}: our close 1000 is answered with 1000`)
  } else if ('fail' in then) {
    assert.equal(obs.runnerClosed, false, `${who}: the server failed the connection by itself`)
    assert.equal(obs.closeCode, then.fail, `${who}: close code`)
  } else {
    assert.equal(obs.runnerClosed, false, `${who}: the client's close is answered`)
    // RFC 6455 5.5.1: the answer typically echoes the code; an empty close cannot be answered with 1005.
    const code = then.answer.length >= 2 ? then.answer.readUInt16BE(0) : 'empty'
    assert.equal(obs.closeCode, code, `${who}: close code`)
  }
  assert.equal(obs.tcpEnded, true, `${who}: the server ended the TCP connection after the close`)
}

interface Pair { plugin: EchoSystem, bare: EchoSystem }

async function runCategory (t: TestContext, category: string, pair: Pair): Promise<void> {
  for (const c of cases.filter((x) => x.category === category)) {
    await t.test(c.name, async (t) => {
      const bareObs = await observe(t, pair.bare, c, c.rfc)
      const pluginExpected = c.plugin ?? c.rfc
      const pluginObs = await observe(t, pair.plugin, c, pluginExpected)
      if (c.bareFallsShort === undefined) assertMeets(bareObs, c.rfc, 'bare')
      assertMeets(pluginObs, pluginExpected, c.plugin === undefined ? 'plugin' : `plugin (documented: ${c.plugin.why})`)
      if (c.plugin === undefined && c.bareFallsShort === undefined) assert.deepEqual(pluginObs, bareObs, 'the plugin behaves as bare @fastify/websocket')
    })
  }
}

async function plainPair (t: TestContext): Promise<Pair> {
  return { plugin: await pluginEcho(t), bare: await bareEcho(t) }
}

for (const category of ['framing', 'pings', 'rsv', 'opcodes', 'masking', 'fragmentation', 'utf8', 'close', 'limits']) {
  test(`conformance: ${category}`, async (t) => {
    await runCategory(t, category, await plainPair(t))
  })
}

test('conformance: compression', async (t) => {
  await runCategory(t, 'compression', { plugin: await pluginEcho(t, { compression: 'default' }), bare: await bareEcho(t, true) })
})

test('the case table covers every category with both outcomes', () => {
  const count = (category: string): number => cases.filter((c) => c.category === category).length
  for (const category of ['framing', 'pings', 'rsv', 'opcodes', 'masking', 'fragmentation', 'utf8', 'close', 'limits', 'compression']) {
    assert.ok(count(category) > 0, category)
  }
  for (const c of cases) assert.ok(c.plugin === undefined || c.plugin.why.length > 10, `${c.name}: a documented difference says why`)
  assert.ok(new Set(cases.map((c) => `${c.category}/${c.name}`)).size === cases.length, 'case names are unique')
})

test('the fuzz suite\'s reference receiver gives every case the answer the table requires of bare', () => {
  for (const c of cases) {
    // Compressed messages of the table, as the receiver needs them: payload -> inflated bytes.
    const compressed = new Map<string, Buffer>()
    let message: Buffer[] | null = null
    for (const spec of c.send) {
      if ((spec.opcode === 1 || spec.opcode === 2) && spec.rsv1 === true) message = []
      if (message !== null && spec.opcode <= 2) message.push(spec.payload ?? Buffer.alloc(0))
      if (message !== null && spec.opcode <= 2 && spec.fin !== false) {
        const payload = Buffer.concat(message)
        message = null
        try {
          compressed.set(payload.toString('hex'), inflateRawSync(Buffer.concat([payload, Buffer.from([0, 0, 0xff, 0xff])]), { finishFlush: zlibConstants.Z_SYNC_FLUSH }))
        } catch {}
      }
    }
    const model = expectedOutcome(toBytes(c), { deflate: c.deflate === true, maxPayload: 100 * MiB, maxFragments: 16384, compressed })
    const then = c.rfc.then
    const want = then === 'open' ? { kind: 'open' } : 'fail' in then ? { kind: 'fail', code: then.fail } : { kind: 'answer', payload: then.answer }
    assert.deepEqual(model.end, want, c.name)
    assert.deepEqual(model.replies.map((r) => describe(r.op, r.data)), c.rfc.replies.map((r) => describe(r.op, r.data)), c.name)
  }
})

// --- the permessage-deflate handshake ------------------------------------------------------

const PROFILE_WINDOW = { default: 13, high: 15, fast: 12 } as const

async function deflateSystems (t: TestContext): Promise<EchoSystem[]> {
  return [
    await bareEcho(t, true, 'bare'),
    await pluginEcho(t, { compression: 'default' }, 'plugin-default'),
    await pluginEcho(t, { compression: 'high' }, 'plugin-high'),
    await pluginEcho(t, { compression: 'fast' }, 'plugin-fast')
  ]
}

interface Offer {
  serverMaxWindowBits?: number
  clientMaxWindowBits?: number | true
  serverNoContextTakeover?: boolean
  clientNoContextTakeover?: boolean
}

/** Parses the first permessage-deflate offer of a header, for the checks of its response. */
function firstOffer (header: string): Offer {
  const first = header.split(',').map((s) => s.trim()).find((s) => s.startsWith('permessage-deflate')) ?? ''
  const offer: Offer = {}
  for (const param of first.split(';').slice(1).map((s) => s.trim())) {
    const [key, quoted] = param.split('=')
    // RFC 7692 7.1: a value may come as a quoted string.
    const value = quoted?.replace(/^"(.*)"$/, '$1')
    if (key === 'server_max_window_bits') offer.serverMaxWindowBits = Number(value)
    if (key === 'client_max_window_bits') offer.clientMaxWindowBits = value === undefined ? true : Number(value)
    if (key === 'server_no_context_takeover') offer.serverNoContextTakeover = true
    if (key === 'client_no_context_takeover') offer.clientNoContextTakeover = true
  }
  return offer
}

/**
 * A message whose repeats lie 1.25 × 2^bits apart: a server deflating with a larger window than
 * it agreed to finds them and refers back farther than the client's window allows.
 */
function windowProbe (bits: number): Buffer {
  const block = randomBytes(Math.round(1.25 * 2 ** bits))
  return Buffer.concat([block, block, block])
}

interface HandshakeResult { status: number, contentType: string | undefined, body: string, params: DeflateParams | null }

/**
 * Offers `extensions`, and when the server upgrades checks its answer against RFC 7692 and
 * round-trips two messages that probe the agreed windows. Returns what happened.
 */
async function offer (t: TestContext, system: EchoSystem, extensions: string): Promise<HandshakeResult> {
  const raw = await RawWebSocket.open(system.port, { headers: system.headers(), extensions })
  t.after(() => raw.destroy())
  if (raw.statusCode !== 101) {
    const body = (await raw.waitBody(2000)).toString()
    return { status: raw.statusCode, contentType: raw.headers['content-type'], body, params: null }
  }
  const params = deflateParams(raw.headers['sec-websocket-extensions'])
  // With several permessage-deflate offers the response may answer either; only one is checked.
  const several = extensions.split(',').filter((s) => s.trim().startsWith('permessage-deflate')).length > 1
  const asked = several ? {} : firstOffer(extensions)
  if (params !== null) {
    assert.deepEqual(params.unknown, [], `${system.name}: only parameters RFC 7692 defines for a response`)
    if (asked.serverMaxWindowBits !== undefined) {
      // RFC 7692 7.1.2.1: an accepted offer of server_max_window_bits is answered with a value <= it.
      assert.ok(params.serverMaxWindowBits !== null && params.serverMaxWindowBits <= asked.serverMaxWindowBits,
        `${system.name}: server_max_window_bits=${params.serverMaxWindowBits} answers an offer of ${asked.serverMaxWindowBits}`)
    }
    if (params.serverMaxWindowBits !== null) assert.ok(params.serverMaxWindowBits >= 8 && params.serverMaxWindowBits <= 15)
    if (params.clientMaxWindowBits !== null) {
      // 7.1.2.2: only when offered, and no larger than a value offered.
      assert.ok(several || asked.clientMaxWindowBits !== undefined, `${system.name}: client_max_window_bits was not offered`)
      if (typeof asked.clientMaxWindowBits === 'number') assert.ok(params.clientMaxWindowBits <= asked.clientMaxWindowBits, `${system.name}: client window`)
    }
    // 7.1.1.1: an accepted server_no_context_takeover offer is confirmed in the response.
    if (asked.serverNoContextTakeover === true) assert.equal(params.serverNoContextTakeover, true, `${system.name}: server_no_context_takeover confirmed`)
  }

  const inflater = new MessageInflater(params?.serverMaxWindowBits ?? 15, params?.serverNoContextTakeover ?? false)
  t.after(() => inflater.close())
  const probe = windowProbe(Math.max(8, Math.min(params?.serverMaxWindowBits ?? 15, 15)))
  for (const message of [probe, Buffer.concat([probe.subarray(0, 600), probe])]) {
    const data = params === null ? message : deflateMessage(message, params.clientMaxWindowBits ?? 15)
    raw.send({ opcode: 2, payload: data, rsv1: params !== null })
    const frame = await raw.nextFrame(3000)
    assert.equal(frame.opcode, 2, `${system.name}: echo (opcode ${frame.opcode}, close ${frame.opcode === 8 ? frame.payload.readUInt16BE(0) : '-'})`)
    assert.ok(frame.fin)
    if (params === null) assert.equal(frame.rsv1, false, `${system.name}: no compression when declined`)
    const got = frame.rsv1 ? await inflater.inflate(frame.payload) : frame.payload
    assert.ok(got.equals(message), `${system.name}: the message round-trips within the agreed windows`)
  }
  raw.send({ opcode: 8, payload: closePayload(1000) })
  await raw.waitEnded(3000)
  return { status: 101, contentType: undefined, body: '', params }
}

test('handshake: an offer of server_max_window_bits=8..15 always connects, and the agreed window is honoured', async (t) => {
  const systems = await deflateSystems(t)
  for (const system of systems) {
    for (let bits = 8; bits <= 15; bits++) {
      // Bare ws accepts 8 and answers 8 (zlib deflates raw with 9, whose matches still reach
      // at most 250 bytes back, inside a 256-byte window), so the plugin must connect too.
      // Documented difference: the plugin declines 8 (lib/compression-profiles.ts) and connects
      // uncompressed; offer() accepts either answer, as RFC 7692 does.
      await t.test(`${system.name}: server_max_window_bits=${bits}`, async (t) => {
        const result = await offer(t, system, `permessage-deflate; server_max_window_bits=${bits}; client_max_window_bits`)
        const profile = system.name.replace('plugin-', '') as keyof typeof PROFILE_WINDOW
        assert.equal(result.status, 101,
          `${system.name} refused an offer of ${bits} with ${result.status} (${result.contentType}: ${result.body.slice(0, 80)})` +
          (profile in PROFILE_WINDOW ? `; the profile's window is ${PROFILE_WINDOW[profile]}` : ''))
        if (system.name === 'bare') assert.equal(result.params?.serverMaxWindowBits, bits, 'bare accepts the offered window')
      })
    }
  }
})

test('handshake: other permessage-deflate offers and combinations connect with a valid answer', async (t) => {
  const systems = await deflateSystems(t)
  const offers = [
    'permessage-deflate',
    'permessage-deflate; client_max_window_bits',
    'permessage-deflate; client_max_window_bits=8',
    'permessage-deflate; client_max_window_bits=10',
    'permessage-deflate; server_no_context_takeover',
    'permessage-deflate; client_no_context_takeover',
    'permessage-deflate; server_no_context_takeover; client_no_context_takeover',
    'permessage-deflate; server_max_window_bits=15; client_max_window_bits=15',
    'permessage-deflate; server_max_window_bits=10; client_max_window_bits=10',
    'permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9; client_max_window_bits=9',
    'permessage-deflate; server_max_window_bits=9, permessage-deflate',
    'permessage-deflate; server_max_window_bits="10"',
    'x-unknown-extension; foo=1, permessage-deflate; client_max_window_bits'
  ]
  for (const system of systems) {
    for (const extensions of offers) {
      await t.test(`${system.name}: ${extensions}`, async (t) => {
        const result = await offer(t, system, extensions)
        assert.equal(result.status, 101, `${system.name}: ${result.status} ${result.contentType ?? ''} ${result.body.slice(0, 80)}`)
        // Declining is allowed only where the offer asks for a server window below 15, which a
        // profile with a larger window may turn down; otherwise every server here accepts.
        const smallWindow = /server_max_window_bits=(9|1[0-4])\b/.test(extensions)
        if (system.name === 'bare' || !smallWindow) assert.ok(result.params !== null, `${system.name}: permessage-deflate accepted`)
      })
    }
  }
})

test('handshake: malformed permessage-deflate offers are declined, unparseable headers refused with a JSON 400', async (t) => {
  const bare = await bareEcho(t, true)
  const plugin = await pluginEcho(t, { compression: 'default' })
  // RFC 7692 5: a server MUST decline an offer with an unknown parameter, an invalid value or a
  // repeated parameter: answer 101 without the extension. Documented difference: ws (bare)
  // refuses the whole handshake with a text/html 400 instead.
  for (const extensions of [
    'permessage-deflate; server_max_window_bits=7',
    'permessage-deflate; server_max_window_bits=16',
    'permessage-deflate; server_max_window_bits=abc',
    'permessage-deflate; server_max_window_bits',
    'permessage-deflate; client_max_window_bits=7',
    'permessage-deflate; unknown_param',
    'permessage-deflate; server_no_context_takeover=1',
    'permessage-deflate; server_no_context_takeover; server_no_context_takeover'
  ]) {
    await t.test(extensions, async (t) => {
      const b1 = await attemptRaw(t, bare, { extensions })
      const p1 = await attemptRaw(t, plugin, { extensions })
      assert.equal(b1.status, 400, 'bare (ws) refuses the handshake')
      assert.equal(p1.status, 101, `the plugin declines the offer and connects: ${p1.status} ${p1.body.slice(0, 80)}`)
      assert.equal(p1.extensions, undefined, 'without the extension')
    })
  }
  // A header that does not parse (RFC 6455 9.1 grammar) is a bad request for both.
  for (const extensions of ['permessage-deflate; @', 'permessage-deflate;;', 'permessage-deflate; a="b']) {
    await t.test(`unparseable: ${extensions}`, async (t) => {
      const b1 = await attemptRaw(t, bare, { extensions })
      const p1 = await attemptRaw(t, plugin, { extensions })
      assert.equal(b1.status, 400)
      assert.equal(p1.status, 400, 'the plugin refuses as bare does')
      assertJsonRefusal(p1, 'plugin')
    })
  }
})

interface RawAttempt { status: number, headers: Readonly<Record<string, string>>, body: string, extensions: string | undefined }

async function attemptRaw (t: TestContext, system: EchoSystem, options: { extensions?: string, version?: string | null, headers?: Record<string, string> }): Promise<RawAttempt> {
  const raw = await RawWebSocket.open(system.port, { headers: { ...system.headers(), ...options.headers }, extensions: options.extensions, version: options.version })
  t.after(() => raw.destroy())
  const body = raw.statusCode === 101 ? '' : (await raw.waitBody(2000)).toString()
  if (raw.statusCode === 101) raw.destroy()
  return { status: raw.statusCode, headers: raw.headers, body, extensions: raw.headers['sec-websocket-extensions'] }
}

function assertJsonRefusal (attempt: RawAttempt, who: string): void {
  assert.match(attempt.headers['content-type'] ?? '', /^application\/json/, `${who}: a ${attempt.status} refusal is JSON, got ${attempt.headers['content-type']}: ${attempt.body.slice(0, 80)}`)
  const body = JSON.parse(attempt.body) as { statusCode?: unknown, error?: unknown, message?: unknown }
  assert.equal(body.statusCode, attempt.status, `${who}: body.statusCode`)
  assert.equal(typeof body.error, 'string')
  assert.equal(typeof body.message, 'string')
}

test('handshake refusals: a bad or unsupported Sec-WebSocket-Version is refused like bare does, with a JSON body', async (t) => {
  const bare = await bareEcho(t)
  const plugin = await pluginEcho(t)
  for (const [name, version] of [['missing', null], ['not a number', 'abc'], ['unsupported (12)', '12']] as const) {
    await t.test(`Sec-WebSocket-Version ${name}`, async (t) => {
      const b1 = await attemptRaw(t, bare, { version })
      const p1 = await attemptRaw(t, plugin, { version })
      // RFC 6455 4.2.2 / 4.4: refuse (400 or 426) and name the supported versions.
      assert.ok(b1.status === 400 || b1.status === 426, `bare: ${b1.status}`)
      assert.match(b1.headers['sec-websocket-version'] ?? '', /\b13\b/, 'bare names version 13')
      assert.equal(p1.status, b1.status, 'the plugin refuses with the same status')
      assert.match(p1.headers['sec-websocket-version'] ?? '', /\b13\b/, 'the plugin names version 13')
      assertJsonRefusal(p1, 'plugin')
    })
  }
})

test('handshake refusals the plugin adds on purpose are JSON: no token (401), the upgrade rate limit (429)', async (t) => {
  const bare = await bareEcho(t)
  const plugin = await pluginEcho(t)
  const anonymous: EchoSystem = { ...plugin, headers: () => ({}) }
  // Documented: auth is on by default (bare has none).
  const p401 = await attemptRaw(t, anonymous, {})
  assert.equal(p401.status, 401)
  assertJsonRefusal(p401, 'plugin')
  assert.equal((await attemptRaw(t, bare, {})).status, 101)

  // Documented: upgradeRateLimit defaults to 30 per user per minute; the 31st is refused.
  const token = plugin.headers()
  const sameUser: EchoSystem = { ...plugin, headers: () => token }
  const statuses: number[] = []
  for (let i = 0; i < 31; i++) statuses.push((await attemptRaw(t, sameUser, {})).status)
  assert.deepEqual(statuses.slice(0, 30), Array(30).fill(101))
  assert.equal(statuses[30], 429)
  const p429 = await attemptRaw(t, sameUser, {})
  assert.equal(p429.status, 429)
  assert.ok(Number(p429.headers['retry-after']) > 0, 'Retry-After')
  assertJsonRefusal(p429, 'plugin')
})
