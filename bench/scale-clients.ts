// A client child of the scale benchmark (bench/scale.ts): holds its share of the connections
// on raw TCP sockets, so that the clients cost the machine as little as possible while the
// server is measured. Each connection binds its own source address of 127.0.0.0/8 (see
// scale-common.ts), writes the upgrade request by hand with its own bearer token, answers
// every ping with a pong and a close with a close (as a ws client does), and reads data
// messages only far enough to take the stamp and sequence number at their start
// (`{"t":…,"s":…,…}`, bench/cluster-common.ts stamped()). Each connection flags each expected
// sequence number once, so a lost or doubled delivery shows; latency, stamp to receipt, goes
// into an HDR histogram in microseconds.

import { build, encodeIntoCompressedBase64 } from 'hdr-histogram-js'
import { connect as tcpConnect, type Socket } from 'node:net'
import { nowUs } from './cluster-common'
import { buildUpgradeRequest, CLOSE_REPLY, EMPTY_PONG, Gathered, maskedFrame, Opcode, UpgradeHead } from './frames'
import { serve, sleep } from './ipc'
import { sourceAddress, tokenFor, type ClientConnectArgs, type ClientConnectResult, type ClientCounts, type ClientReceived } from './scale-common'

// Enough of a data message to hold `{"t":<16 digits>,"s":<6 digits>`.
const PREFIX = 48
const STAMP = /^\{"t":(\d+),"s":(\d+)/

const totals = { pings: 0, closes: 0, lost: 0, messages: 0 }
const run = { expected: 0, from: 0, received: 0, duplicates: 0, other: 0, lastUs: [] as number[] }
const histogram = build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 })
let conns: Conn[] = []

class Conn {
  readonly socket: Socket
  upgraded = false
  closed = false
  seen: Uint8Array | null = null
  readonly #head = new UpgradeHead()
  #settle: ((ok: boolean, error: string | null) => void) | null
  // Frame reader state: the header being assembled, the bytes of the frame still to come.
  readonly #hdr = Buffer.allocUnsafe(14)
  #hdrLength = 0
  #remaining = 0
  #opcode = 0
  #fin = false
  #control: Gathered | null = null
  #prefix: Gathered | null = null

  constructor (port: number, localAddress: string, request: Buffer, settle: (ok: boolean, error: string | null) => void) {
    this.#settle = settle
    this.socket = tcpConnect({ host: '127.0.0.1', port, localAddress, noDelay: true })
    this.socket.on('connect', () => this.socket.write(request))
    this.socket.on('data', (chunk: Buffer) => this.#onData(chunk))
    this.socket.on('error', (err) => this.#done(false, err.message))
    this.socket.on('close', () => {
      if (this.upgraded && !this.closed) totals.lost++
      this.closed = true
      this.#done(false, 'closed during the handshake')
    })
  }

  #done (ok: boolean, error: string | null): void {
    const settle = this.#settle
    this.#settle = null
    settle?.(ok, error)
  }

  #onData (chunk: Buffer): void {
    if (this.upgraded) {
      this.#frames(chunk, 0)
      return
    }
    const upgrade = this.#head.add(chunk, this.socket)
    if (upgrade === null) return
    if (upgrade.error !== null) {
      this.#done(false, upgrade.error)
      return
    }
    this.upgraded = true
    this.#done(true, null)
    if (upgrade.bytes.length > upgrade.response.headLength) this.#frames(upgrade.bytes, upgrade.response.headLength)
  }

  #frames (chunk: Buffer, from: number): void {
    let i = from
    const n = chunk.length
    let at = 0
    while (i < n) {
      if (this.#remaining > 0) {
        const take = Math.min(this.#remaining, n - i)
        if (this.#control !== null) this.#control.add(chunk, i, i + take)
        else this.#prefix?.add(chunk, i, i + take)
        i += take
        this.#remaining -= take
        if (this.#remaining === 0) {
          if (at === 0) at = nowUs()
          this.#endFrame(at)
        }
        continue
      }
      this.#hdr[this.#hdrLength++] = chunk[i++]
      if (this.#hdrLength < 2) continue
      const short = this.#hdr[1] & 0x7f
      const need = 2 + (short === 126 ? 2 : short === 127 ? 8 : 0)
      if (this.#hdrLength < need) continue
      this.#fin = (this.#hdr[0] & 0x80) !== 0
      const opcode = this.#hdr[0] & 0x0f
      let length = short
      if (short === 126) length = this.#hdr.readUInt16BE(2)
      else if (short === 127) length = this.#hdr.readUInt32BE(2) * 2 ** 32 + this.#hdr.readUInt32BE(6)
      this.#hdrLength = 0
      this.#remaining = length
      if (opcode >= 0x8) {
        this.#opcode = opcode
        this.#control = new Gathered(length)
      } else {
        // A continuation frame keeps the message's opcode and prefix.
        if (opcode !== Opcode.CONTINUATION) {
          this.#opcode = opcode
          this.#prefix ??= new Gathered(PREFIX)
          this.#prefix.length = 0
        }
        this.#control = null
      }
      if (length === 0) {
        if (at === 0) at = nowUs()
        this.#endFrame(at)
      }
    }
  }

  #endFrame (at: number): void {
    const control = this.#control?.bytes ?? null
    if (control !== null) {
      this.#control = null
      if (this.#opcode === Opcode.PING) {
        totals.pings++
        if (!this.closed) this.socket.write(control.length === 0 ? EMPTY_PONG : maskedFrame(Opcode.PONG, control))
      } else if (this.#opcode === Opcode.CLOSE) {
        totals.closes++
        if (!this.closed) this.socket.end(CLOSE_REPLY)
        this.closed = true
      }
      return
    }
    if (!this.#fin) return
    totals.messages++
    const prefix = this.#prefix as Gathered
    const match = STAMP.exec(prefix.bytes.toString('latin1', 0, prefix.length))
    const seq = match === null ? -1 : Number(match[2])
    if (match === null || this.seen === null || !(seq >= 0 && seq < run.expected)) {
      run.other++
      return
    }
    if (this.seen[seq] === 1) {
      run.duplicates++
      return
    }
    this.seen[seq] = 1
    run.received++
    if (at > run.lastUs[seq]) run.lastUs[seq] = at
    if (seq >= run.from) histogram.recordValue(Math.max(0, Math.round(at - Number(match[1]))))
  }
}

let mark = { cpu: process.cpuUsage(), at: performance.now(), ...totals }

function cpuSince (cpu: NodeJS.CpuUsage, at: number): { cpuUs: number, systemUs: number, wallMs: number } {
  const d = process.cpuUsage(cpu)
  return { cpuUs: d.user + d.system, systemUs: d.system, wallMs: performance.now() - at }
}

function openCount (): number {
  let n = 0
  for (const c of conns) if (c.upgraded && !c.closed) n++
  return n
}

const api = {
  /** Opens `count` connections, `concurrency` handshakes at a time. */
  connect (args: ClientConnectArgs): Promise<ClientConnectResult> {
    const cpu = process.cpuUsage()
    const at = performance.now()
    const iat = Math.floor(Date.now() / 1000)
    let started = 0
    let pending = 0
    let opened = 0
    let failed = 0
    let firstError: string | null = null
    return new Promise((resolve) => {
      let finished = false
      const finish = (): void => {
        if (finished) return
        finished = true
        clearTimeout(deadline)
        resolve({ opened, failed, firstError, open: openCount(), ...cpuSince(cpu, at) })
      }
      const deadline = setTimeout(() => {
        failed += args.count - opened - failed
        firstError ??= `handshakes still pending after ${args.timeoutMs} ms`
        finish()
      }, args.timeoutMs)
      const settled = (ok: boolean, error: string | null): void => {
        pending--
        if (ok) opened++
        else {
          failed++
          firstError ??= error
        }
        if (opened + failed >= args.count) finish()
        else pump()
      }
      const pump = (): void => {
        if (finished) return
        while (pending < args.concurrency && started < args.count) {
          const k = started++
          pending++
          const request = buildUpgradeRequest({
            port: args.port,
            path: '/ws',
            deflate: false,
            headers: { authorization: `Bearer ${tokenFor(args.firstUser + k, args.secret, iat)}` }
          })
          conns.push(new Conn(args.port, sourceAddress(args.firstAddress + Math.floor(k / args.perAddress)), request, settled))
        }
      }
      if (args.count === 0) finish()
      else pump()
    })
  },

  mark (): true {
    mark = { cpu: process.cpuUsage(), at: performance.now(), ...totals }
    return true
  },

  measure (): ClientCounts {
    return {
      pings: totals.pings - mark.pings,
      closes: totals.closes - mark.closes,
      lost: totals.lost - mark.lost,
      messages: totals.messages - mark.messages,
      open: openCount(),
      ...cpuSince(mark.cpu, mark.at)
    }
  },

  /** Starts a run of `expected` messages (sequence numbers 0 to expected − 1); latency is recorded from `from` on. */
  expect (args: { expected: number, from: number }): true {
    run.expected = args.expected
    run.from = args.from
    run.received = 0
    run.duplicates = 0
    run.other = 0
    run.lastUs = new Array<number>(args.expected).fill(0)
    histogram.reset()
    for (const c of conns) c.seen = new Uint8Array(args.expected)
    mark = { cpu: process.cpuUsage(), at: performance.now(), ...totals }
    return true
  },

  progress (): number {
    return run.received
  },

  result (): ClientReceived {
    let missing = 0
    for (const c of conns) {
      if (c.seen === null) continue
      for (let s = 0; s < run.expected; s++) if (c.seen[s] === 0) missing++
    }
    return {
      received: run.received,
      duplicates: run.duplicates,
      missing,
      other: run.other,
      histogram: encodeIntoCompressedBase64(histogram),
      lastUs: run.lastUs,
      cpuUs: cpuSince(mark.cpu, mark.at).cpuUs
    }
  },

  /**
   * Resets every connection (RST): neither side keeps the port in TIME_WAIT, so the next
   * phase finds the machine as the last one found it. Resolves when the sockets closed (bounded).
   */
  async closeAll (): Promise<number> {
    const all = conns
    conns = []
    for (const c of all) {
      c.closed = true
      if (!c.socket.destroyed) c.socket.resetAndDestroy()
    }
    const deadline = performance.now() + 5000
    while (all.some((c) => !c.socket.destroyed) && performance.now() < deadline) await sleep(10)
    return all.length
  },

  exit (): true {
    for (const c of conns) if (!c.socket.destroyed) c.socket.resetAndDestroy()
    setImmediate(() => process.exit(0))
    return true
  }
}

/** The commands bench/scale.ts can send to a client child. */
export type ScaleClientsApi = typeof api

serve(api, 20 * 60_000)
