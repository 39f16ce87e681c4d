// The WebSocket wire format, as much of it as the load generator needs: a hand-built upgrade
// request, pre-built masked client frames, and a reader that parses server frames only far
// enough to count messages and bytes and to answer pings and closes. Nothing here allocates
// per data frame, so a single generator core can outrun the server under test.

import type { Socket } from 'node:net'
import { deflateRawSync, constants as zlib } from 'node:zlib'

/** RFC 6455 opcodes. */
export const Opcode = Object.freeze({
  CONTINUATION: 0x0,
  TEXT: 0x1,
  BINARY: 0x2,
  CLOSE: 0x8,
  PING: 0x9,
  PONG: 0xa
})

// A fixed key: the server only has to hash it, and it need not be unpredictable on loopback.
const HANDSHAKE_KEY = 'dGhlIHNhbXBsZSBub25jZQ=='
// RFC 6455 requires masking of client frames, not a fresh key per frame; the server unmasks
// whatever key it gets, so one key lets every frame be built once and written many times.
const MASK = Buffer.from([0x37, 0xfa, 0x21, 0x3d])

/** What the generator says in the upgrade request. */
export interface UpgradeRequest {
  port: number
  path: string
  /** Offer permessage-deflate as browsers and ws clients do: `permessage-deflate; client_max_window_bits`. */
  deflate: boolean
  /** Extra request headers, e.g. `Authorization: Bearer ...` once the plugin authenticates. */
  headers: Record<string, string>
}

/** The upgrade request as bytes, built once per target server. */
export function buildUpgradeRequest (req: UpgradeRequest): Buffer {
  let text = `GET ${req.path} HTTP/1.1\r\n` +
    `Host: 127.0.0.1:${req.port}\r\n` +
    'Upgrade: websocket\r\n' +
    'Connection: Upgrade\r\n' +
    `Sec-WebSocket-Key: ${HANDSHAKE_KEY}\r\n` +
    'Sec-WebSocket-Version: 13\r\n'
  if (req.deflate) text += 'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n'
  for (const [name, value] of Object.entries(req.headers)) text += `${name}: ${value}\r\n`
  return Buffer.from(text + '\r\n', 'latin1')
}

/** The parsed head of the server's answer to the upgrade. */
export interface UpgradeResponse {
  /** HTTP status; 101 when the upgrade succeeded. */
  status: number
  /** Bytes the head took; what follows in the same chunk already belongs to the frame stream. */
  headLength: number
  /** Whether permessage-deflate was negotiated. */
  deflate: boolean
  /** client_max_window_bits the server imposed, or 15 (the client's own choice) when none. */
  clientWindowBits: number
}

const HEAD_END = Buffer.from('\r\n\r\n')

/** Parses the response head once it is complete in `buf`; null while it is not. */
export function parseUpgradeResponse (buf: Buffer): UpgradeResponse | null {
  const end = buf.indexOf(HEAD_END)
  if (end === -1) return null
  const head = buf.toString('latin1', 0, end)
  const status = Number(head.slice(9, 12))
  const ext = /^sec-websocket-extensions:\s*(.*)$/im.exec(head)
  const deflate = ext !== null && ext[1].includes('permessage-deflate')
  const bits = ext === null ? null : /client_max_window_bits=(\d+)/.exec(ext[1])
  return { status, headLength: end + 4, deflate, clientWindowBits: bits === null ? 15 : Number(bits[1]) }
}

/** The server's answer to the upgrade, complete: refused with a reason, or upgraded. */
export type UpgradeOutcome =
  | { error: string }
  | {
    error: null
    response: UpgradeResponse
    /** Every byte read so far: those after `response.headLength` already belong to the frame stream. */
    bytes: Buffer
  }

/** A client connection's reading of the server's answer to the upgrade, which may come in pieces. */
export class UpgradeHead {
  #bytes: Buffer | null = null

  /**
   * Adds a chunk of the answer. Null while the head is incomplete; once it is complete, a
   * refusal (any status but 101) destroys `socket` and says `HTTP <status>`.
   */
  add (chunk: Buffer, socket: Socket): UpgradeOutcome | null {
    this.#bytes = this.#bytes === null ? chunk : Buffer.concat([this.#bytes, chunk])
    const response = parseUpgradeResponse(this.#bytes)
    if (response === null) return null
    const bytes = this.#bytes
    this.#bytes = null
    if (response.status !== 101) {
      socket.destroy()
      return { error: `HTTP ${response.status}` }
    }
    return { error: null, response, bytes }
  }
}

/** One masked client frame, ready to be written as it is, any number of times. */
export function maskedFrame (opcode: number, payload: Buffer, compressed = false): Buffer {
  const len = payload.length
  const lenBytes = len < 126 ? 0 : len < 65536 ? 2 : 8
  const frame = Buffer.allocUnsafe(2 + lenBytes + 4 + len)
  frame[0] = 0x80 | (compressed ? 0x40 : 0) | opcode
  if (lenBytes === 0) {
    frame[1] = 0x80 | len
  } else if (lenBytes === 2) {
    frame[1] = 0x80 | 126
    frame.writeUInt16BE(len, 2)
  } else {
    frame[1] = 0x80 | 127
    frame.writeUInt32BE(Math.floor(len / 2 ** 32), 2)
    frame.writeUInt32BE(len >>> 0, 6)
  }
  const at = 2 + lenBytes
  MASK.copy(frame, at)
  for (let i = 0; i < len; i++) frame[at + 4 + i] = payload[i] ^ MASK[i & 3]
  return frame
}

/** `count` copies of a frame back to back, so that writing n of them is one write of a slice. */
export function frameBatch (frame: Buffer, count: number): Buffer {
  const batch = Buffer.allocUnsafe(frame.length * count)
  for (let i = 0; i < count; i++) frame.copy(batch, i * frame.length)
  return batch
}

/**
 * A text message compressed as permessage-deflate wants it (raw deflate, sync flush, the
 * trailing 00 00 ff ff removed). Each message is compressed on its own, with no reference to
 * earlier ones, so the same frame stays valid however often it is sent, with or without
 * context takeover. The window is bounded by what the server allowed.
 */
export function deflateMessage (payload: Buffer, windowBits: number): Buffer {
  const out = deflateRawSync(payload, { finishFlush: zlib.Z_SYNC_FLUSH, windowBits: Math.max(9, windowBits) })
  return out.subarray(0, out.length - 4)
}

/** A masked pong for a ping with no payload, the only kind ws and the plugin send. */
export const EMPTY_PONG = maskedFrame(Opcode.PONG, Buffer.alloc(0))

/** A masked close frame answering the server's close with code 1000. */
export const CLOSE_REPLY = maskedFrame(Opcode.CLOSE, Buffer.from([0x03, 0xe8]))

/** What the reader reports besides counts. */
export interface FrameEvents {
  /** The server pinged; answer with a pong carrying the same payload. */
  ping (payload: Buffer): void
  /** The server sent a close frame. */
  close (payload: Buffer): void
}

const NO_PAYLOAD = Buffer.alloc(0)

/**
 * The first bytes of one payload, gathered across the chunks it arrives in; what does not fit
 * in `size` is skipped. A control frame's payload is gathered whole (`size` is its length).
 */
export class Gathered {
  readonly bytes: Buffer
  length = 0

  constructor (size: number) {
    this.bytes = Buffer.allocUnsafe(size)
  }

  /** Adds bytes `from` to `to` of `chunk`, as far as there is room. */
  add (chunk: Buffer, from: number, to: number): void {
    if (this.length < this.bytes.length) this.length += chunk.copy(this.bytes, this.length, from, to)
  }
}

/**
 * Parses server frames incrementally. Data payloads are skipped, never copied; control
 * payloads (at most 125 bytes) are collected so a ping can be answered.
 */
export class FrameReader {
  /** Complete data messages read. */
  messages = 0
  /** Bytes read from the socket (frames, headers and control frames included). */
  bytes = 0
  /** Pings received. */
  pings = 0
  readonly #events: FrameEvents
  readonly #head = Buffer.alloc(14)
  #headLength = 0
  #remaining = 0
  #fin = false
  #opcode = 0
  #control: Gathered | null = null

  constructor (events: FrameEvents) {
    this.#events = events
  }

  /** Consumes a chunk; returns the number of data messages it completed. */
  feed (chunk: Buffer, from = 0): number {
    let completed = 0
    let i = from
    const n = chunk.length
    this.bytes += n - from
    while (i < n) {
      if (this.#remaining > 0) {
        const take = Math.min(this.#remaining, n - i)
        this.#control?.add(chunk, i, i + take)
        i += take
        this.#remaining -= take
        if (this.#remaining === 0) completed += this.#endFrame()
        continue
      }
      this.#head[this.#headLength++] = chunk[i++]
      if (this.#headLength < 2) continue
      const b1 = this.#head[1]
      const short = b1 & 0x7f
      const need = 2 + (short === 126 ? 2 : short === 127 ? 8 : 0) + ((b1 & 0x80) !== 0 ? 4 : 0)
      if (this.#headLength < need) continue
      const b0 = this.#head[0]
      this.#fin = (b0 & 0x80) !== 0
      this.#opcode = b0 & 0x0f
      let length = short
      if (short === 126) length = this.#head.readUInt16BE(2)
      else if (short === 127) length = this.#head.readUInt32BE(2) * 2 ** 32 + this.#head.readUInt32BE(6)
      this.#headLength = 0
      this.#remaining = length
      if (this.#opcode >= 0x8) this.#control = new Gathered(length)
      if (length === 0) completed += this.#endFrame()
    }
    this.messages += completed
    return completed
  }

  #endFrame (): number {
    const opcode = this.#opcode
    if (opcode < 0x8) return this.#fin ? 1 : 0
    const payload = this.#control?.bytes ?? NO_PAYLOAD
    this.#control = null
    if (opcode === Opcode.PING) {
      this.pings++
      this.#events.ping(payload)
    } else if (opcode === Opcode.CLOSE) {
      this.#events.close(payload)
    }
    return 0
  }
}
