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
   * The deflated bytes of a prepared message for peers with a window of 2^bits, made on first
   * use and kept on the prepared message for the rest of its fan-out; null when the message
   * cannot be deflated here (a Blob) or is below the threshold.
   */
  deflatedFor (prepared: Prepared, size: number, bits: number): Buffer | null {
    if (size < this.threshold) return null
    let byBits = (prepared as Prepared & { [kDeflated]?: ByBits })[kDeflated]
    if (byBits === undefined) {
      byBits = []
      ;(prepared as Prepared & { [kDeflated]?: ByBits })[kDeflated] = byBits
    }
    let out = byBits[bits]
    if (out === undefined) {
      out = this.#deflate(prepared.data, bits)
      byBits[bits] = out
    }
    if (out !== null) this.#deliveries++
    return out
  }

  #deflate (data: unknown, bits: number): Buffer | null {
    let input: Buffer
    if (Buffer.isBuffer(data)) input = data
    else if (data instanceof ArrayBuffer) input = Buffer.from(data)
    else if (ArrayBuffer.isView(data)) input = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
    else return null
    const raw = deflateRawSync(input, { level: this.#level, memLevel: this.#memLevel, windowBits: bits, finishFlush: constants.Z_SYNC_FLUSH })
    const out = raw.subarray(0, raw.length - TAIL)
    this.#deflated++
    this.#bytesIn += input.length
    this.#bytesOut += out.length
    return out
  }

  stats (): SharedDeflateStats {
    return { deflated: this.#deflated, deliveries: this.#deliveries, bytesIn: this.#bytesIn, bytesOut: this.#bytesOut }
  }
}
