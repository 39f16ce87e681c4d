// Compress once for every recipient (the `shared` compression profile). With no context
// takeover on the server's side, each message is deflated on its own, so the same bytes are
// valid for every peer whose negotiated window is at least the one used: a broadcast to
// 10,000 compressed connections deflates once per window size among them (usually one), not
// 10,000 times. The deflate is synchronous, on the broadcasting tick: ws would otherwise
// queue each socket's later sends behind an asynchronous deflate of its own, and a shared
// asynchronous one would let a later, smaller message overtake it.
import { constants, deflateRawSync } from 'node:zlib'
import type { Prepared } from './delivery'

// RFC 7692 7.2.1: a message ends with an empty stored block (Z_SYNC_FLUSH), whose 4 bytes
// 00 00 ff ff are left off the wire.
const TAIL = 4

/** The windows 9..15: index by bits. */
type ByBits = Array<Buffer | null | undefined>

const kDeflated = Symbol('fastify-ws-manager.deflated')

/**
 * The bytes in a buffer of their own when they fill less than half of the memory they keep
 * alive; as they are otherwise.
 */
export function copyIfSparse (bytes: Buffer): Buffer {
  if (bytes.buffer.byteLength <= 2 * bytes.length + 64) return bytes
  // Not from Buffer's shared 8 KiB pool: a queued frame would pin a whole slab of it.
  const copy = Buffer.allocUnsafeSlow(bytes.length)
  bytes.copy(copy)
  return copy
}

/** What one shared deflate costs and saves, for stats(). */
export interface SharedDeflateStats {
  /** Messages deflated once for several recipients. */
  deflated: number
  /** Compressed frames sent from those deflates. */
  deliveries: number
  /** Bytes in and out of those deflates. */
  bytesIn: number
  bytesOut: number
}

export class SharedDeflate {
  readonly threshold: number
  readonly #level: number
  readonly #memLevel: number
  #deflated = 0
  #deliveries = 0
  #bytesIn = 0
  #bytesOut = 0

  constructor (level: number, memLevel: number, threshold: number) {
    this.#level = level
    this.#memLevel = memLevel
    this.threshold = threshold
  }

  /**
   * The whole compressed frame (header and deflated payload, RSV1 set) of a prepared message
   * for peers with a window of 2^bits, made on first use and kept on the prepared message for
   * the rest of its fan-out: every recipient's socket writes the same buffer. Null when the
   * message cannot be deflated here (a Blob) or is below the threshold.
   */
  frameFor (prepared: Prepared, size: number, bits: number, binary: boolean): Buffer | null {
    if (size < this.threshold) return null
    let byBits = (prepared as Prepared & { [kDeflated]?: ByBits })[kDeflated]
    if (byBits === undefined) {
      byBits = []
      ;(prepared as Prepared & { [kDeflated]?: ByBits })[kDeflated] = byBits
    }
    let out = byBits[bits]
    if (out === undefined) {
      out = this.#deflate(prepared.data, bits, binary)
      byBits[bits] = out
    }
    return out
  }

  /** One compressed frame went out from a shared deflate. */
  delivered (): void {
    this.#deliveries++
  }

  #deflate (data: unknown, bits: number, binary: boolean): Buffer | null {
    let input: Buffer
    if (Buffer.isBuffer(data)) input = data
    else if (data instanceof ArrayBuffer) input = Buffer.from(data)
    else if (ArrayBuffer.isView(data)) input = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
    else return null
    const raw = deflateRawSync(input, { level: this.#level, memLevel: this.#memLevel, windowBits: bits, finishFlush: constants.Z_SYNC_FLUSH })
    const length = raw.length - TAIL
    this.#deflated++
    this.#bytesIn += input.length
    this.#bytesOut += length
    // One buffer of its own for the frame: zlib's output sits in a 16 KiB chunk, and a pooled
    // header would pin an 8 KiB slab; either would stay alive while the frame waits in a slow
    // peer's queue, unseen by the backpressure accounting.
    const header = length < 126 ? 2 : length < 65536 ? 4 : 10
    const frame = Buffer.allocUnsafeSlow(header + length)
    frame[0] = 0x80 | 0x40 | (binary ? 0x02 : 0x01) // FIN, RSV1 (compressed), opcode
    if (header === 2) {
      frame[1] = length
    } else if (header === 4) {
      frame[1] = 126
      frame.writeUInt16BE(length, 2)
    } else {
      frame[1] = 127
      frame.writeUIntBE(0, 2, 2)
      frame.writeUIntBE(length, 4, 6)
    }
    raw.copy(frame, header, 0, length)
    return frame
  }

  stats (): SharedDeflateStats {
    return { deflated: this.#deflated, deliveries: this.#deliveries, bytesIn: this.#bytesIn, bytesOut: this.#bytesOut }
  }
}
