// The load generator: a child process that drives the server under test from raw TCP
// sockets. It performs the upgrade by hand and then only writes frames built once in
// advance (masked, optionally deflated) and counts what comes back, so its cost per message
// is a header parse and an occasional write of a pre-built slice. It answers pings and
// closes as a well-behaved client would.
//
// Commands come from bench/run.ts over IPC (see GeneratorApi).

import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { connect as tcpConnect, type Socket } from 'node:net'
import { cpus } from 'node:os'
import {
  buildUpgradeRequest, CLOSE_REPLY, deflateMessage, EMPTY_PONG, frameBatch, FrameReader, maskedFrame, Opcode,
  UpgradeHead, type UpgradeRequest
} from './frames'
import { serve, sleep } from './ipc'
import { exactJson, feedPage } from './payloads'

/** Usage figures of one process over a window. */
export interface CpuWindow {
  /** user + system CPU microseconds. */
  cpuUs: number
  wallMs: number
}

export interface ConnectArgs extends UpgradeRequest {
  count: number
  /** Handshakes in progress at once. */
  concurrency: number
  timeoutMs: number
}

export interface ConnectResult extends CpuWindow {
  opened: number
  failed: number
  firstError: string | null
  /** Connections for which permessage-deflate was negotiated. */
  deflate: number
  /** Connections now held. */
  total: number
}

export interface EchoArgs {
  bytes: number
  /** Messages each connection sends at once, in one write, when the previous batch came back. */
  inFlight: number
  /** Safety stop, in case the orchestrator never says stop. */
  maxMs: number
  /** Only the connections to this server port; all when unset. */
  port?: number
}

export interface Counts extends CpuWindow {
  messages: number
  bytes: number
  pings: number
  closes: number
  /** Busy cores of the whole machine over the window (from /proc/stat), to spot other load. */
  machineBusy: number
}

export interface RatioResult {
  negotiated: boolean
  payload: number
  wire: number
  firstPayload: number
  firstWire: number
}

// Deflated messages are only sent from this size on, like a client with a threshold.
const COMPRESS_FROM = 1024
// Source addresses rotate through 127.0.0.2-127.0.0.251: each has its own ephemeral port
// range, so 10,000 connections per run and many runs never exhaust ports.
const SOURCE_ADDRESSES = 250
let nextSource = 0

function sourceAddress (): string {
  const address = `127.0.0.${2 + (nextSource % SOURCE_ADDRESSES)}`
  nextSource++
  return address
}

const totals = { messages: 0, bytes: 0, pings: 0, closes: 0 }
const PROBE = Buffer.alloc(64, 'a')

interface Echo {
  running: boolean
  inFlight: number
}
let echo: Echo | null = null

class Client {
  readonly socket: Socket
  readonly reader: FrameReader
  readonly port: number
  deflate = false
  windowBits = 15
  upgraded = false
  closed = false
  outstanding = 0
  batch: Buffer | null = null
  frameLength = 0
  /** Called once when the next data message completes (ratio measurement). */
  onMessage: (() => void) | null = null
  readonly #head = new UpgradeHead()
  readonly #upgrade: (ok: boolean, error: string | null) => void

  constructor (request: Buffer, target: UpgradeRequest, upgrade: (client: Client, ok: boolean, error: string | null) => void) {
    this.#upgrade = (ok, error) => upgrade(this, ok, error)
    this.port = target.port
    this.reader = new FrameReader({
      ping: (payload) => {
        totals.pings++
        if (!this.closed) this.socket.write(payload.length === 0 ? EMPTY_PONG : maskedFrame(Opcode.PONG, payload))
      },
      close: () => {
        totals.closes++
        if (!this.closed) this.socket.end(CLOSE_REPLY)
        this.closed = true
      }
    })
    this.socket = tcpConnect({ host: '127.0.0.1', port: target.port, localAddress: sourceAddress(), noDelay: true })
    this.socket.on('connect', () => this.socket.write(request))
    this.socket.on('data', (chunk: Buffer) => this.#onData(chunk))
    this.socket.on('error', (err) => {
      if (!this.upgraded) this.#upgrade(false, err.message)
    })
    this.socket.on('close', () => {
      this.closed = true
      if (!this.upgraded) this.#upgrade(false, 'closed during the handshake')
    })
  }

  #onData (chunk: Buffer): void {
    if (!this.upgraded) {
      const upgrade = this.#head.add(chunk, this.socket)
      if (upgrade === null) return
      if (upgrade.error !== null) {
        this.#upgrade(false, upgrade.error)
        return
      }
      const { response, bytes } = upgrade
      this.upgraded = true
      this.deflate = response.deflate
      this.windowBits = response.clientWindowBits
      this.#upgrade(true, null)
      if (bytes.length > response.headLength) this.#frames(bytes, response.headLength)
      return
    }
    this.#frames(chunk, 0)
  }

  #frames (chunk: Buffer, from: number): void {
    const done = this.reader.feed(chunk, from)
    totals.bytes += chunk.length - from
    if (done === 0) return
    totals.messages += done
    if (this.onMessage !== null) {
      const cb = this.onMessage
      this.onMessage = null
      cb()
    }
    if (messageWaiter !== null && totals.messages >= messageWaiter.target) messageWaiter.done()
    this.outstanding -= done
    if (echo !== null && echo.running && this.batch !== null && !this.closed && this.outstanding <= 0) {
      // Lock-step batches: the next inFlight messages go in one write once all came back, so
      // the server always reads the same batches and runs settle to the same pattern.
      this.socket.write(this.batch)
      this.outstanding += echo.inFlight
    }
  }

  send (frame: Buffer): void {
    if (!this.closed) this.socket.write(frame)
  }
}

let clients: Client[] = []
let messageWaiter: { target: number, done: () => void } | null = null
let mark = { cpu: process.cpuUsage(), at: performance.now(), machine: machineTicks(), ...totals }

// Busy and total jiffies of all CPUs, from the first line of /proc/stat.
function machineTicks (): { busy: number, total: number } {
  try {
    const fields = readFileSync('/proc/stat', 'latin1').slice(0, 200).split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
    const total = fields.reduce((a, b) => a + b, 0)
    return { busy: total - fields[3] - (fields[4] ?? 0), total }
  } catch {
    return { busy: 0, total: 0 }
  }
}

function cpuSince (cpu: NodeJS.CpuUsage, at: number): CpuWindow {
  const d = process.cpuUsage(cpu)
  return { cpuUs: d.user + d.system, wallMs: performance.now() - at }
}

// Frames for one payload, deflated for connections that negotiated it; cached per window size.
function framesFor (payload: Buffer): (client: Client) => Buffer {
  const plain = maskedFrame(Opcode.TEXT, payload)
  const deflated = new Map<number, Buffer>()
  return (client) => {
    if (!client.deflate || payload.length < COMPRESS_FROM) return plain
    let frame = deflated.get(client.windowBits)
    if (frame === undefined) {
      frame = maskedFrame(Opcode.TEXT, deflateMessage(payload, client.windowBits), true)
      deflated.set(client.windowBits, frame)
    }
    return frame
  }
}

function connect (args: ConnectArgs): Promise<ConnectResult> {
  const request = buildUpgradeRequest(args)
  const cpu = process.cpuUsage()
  const at = performance.now()
  let started = 0
  let pending = 0
  let opened = 0
  let failed = 0
  let deflate = 0
  let firstError: string | null = null
  return new Promise((resolve) => {
    let finished = false
    const finish = (): void => {
      if (finished) return
      finished = true
      clearTimeout(deadline)
      resolve({ opened, failed, firstError, deflate, total: clients.length, ...cpuSince(cpu, at) })
    }
    const deadline = setTimeout(finish, args.timeoutMs)
    const settled = (client: Client, ok: boolean, error: string | null): void => {
      if (finished) return
      pending--
      if (ok) {
        opened++
        if (client.deflate) deflate++
      } else {
        failed++
        firstError ??= error
      }
      if (opened + failed === args.count) finish()
      else pump()
    }
    const pump = (): void => {
      while (pending < args.concurrency && started < args.count) {
        started++
        pending++
        clients.push(new Client(request, args, settled))
      }
    }
    if (args.count === 0) finish()
    else pump()
  })
}

function open (): Client[] {
  return clients.filter((c) => c.upgraded && !c.closed)
}

const api = {
  connect,

  mark (): true {
    mark = { cpu: process.cpuUsage(), at: performance.now(), machine: machineTicks(), ...totals }
    return true
  },

  measure (): Counts {
    const machine = machineTicks()
    const total = machine.total - mark.machine.total
    return {
      machineBusy: total > 0 ? cpus().length * (machine.busy - mark.machine.busy) / total : 0,
      messages: totals.messages - mark.messages,
      bytes: totals.bytes - mark.bytes,
      pings: totals.pings - mark.pings,
      closes: totals.closes - mark.closes,
      ...cpuSince(mark.cpu, mark.at)
    }
  },

  /** mark, then measure `ms` later, after waiting `delayMs` (see the server's timedWindow). */
  async timedWindow (args: { delayMs: number, ms: number }): Promise<Counts> {
    await sleep(args.delayMs)
    api.mark()
    await sleep(args.ms)
    return api.measure()
  },

  echoStart (args: EchoArgs): number {
    const frameFor = framesFor(exactJson(args.bytes, args.bytes))
    echo = { running: true, inFlight: args.inFlight }
    const batches = new Map<Buffer, Buffer>()
    const targets = open().filter((c) => args.port === undefined || c.port === args.port)
    for (const client of targets) {
      const frame = frameFor(client)
      let batch = batches.get(frame)
      if (batch === undefined) {
        batch = frameBatch(frame, args.inFlight)
        batches.set(frame, batch)
      }
      client.batch = batch
      client.frameLength = frame.length
      client.outstanding += args.inFlight
      client.socket.write(batch)
    }
    const current = echo
    setTimeout(() => { current.running = false }, args.maxMs).unref()
    return targets.length
  },

  /** Stops replacing replies and waits (bounded) until every message in flight came back. */
  async echoStop (): Promise<number> {
    if (echo !== null) echo.running = false
    const deadline = performance.now() + 5000
    let outstanding = 0
    do {
      outstanding = 0
      for (const c of clients) if (!c.closed) outstanding += Math.max(0, c.outstanding)
      if (outstanding === 0) break
      await sleep(10)
    } while (performance.now() < deadline)
    echo = null
    for (const c of clients) {
      c.batch = null
      c.outstanding = 0
    }
    return outstanding
  },

  /** One message from each connection from index `from` on; resolves when each got one back. */
  async sendEach (args: { from: number, seed: number, bytes: number, timeoutMs: number }): Promise<{ sent: number, received: number }> {
    const frameFor = framesFor(Buffer.from(feedPage(args.seed, args.bytes)))
    const targets = open().slice(args.from)
    let received = 0
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, args.timeoutMs)
      if (targets.length === 0) {
        clearTimeout(timer)
        resolve()
      }
      for (const client of targets) {
        client.onMessage = () => {
          if (++received === targets.length) {
            clearTimeout(timer)
            resolve()
          }
        }
        client.send(frameFor(client))
      }
    })
    return { sent: targets.length, received }
  },

  /** Distinct feed pages one at a time over the first connection; wire bytes of the echoes. */
  async ratio (args: { pages: number, bytes: number, timeoutMs: number }): Promise<RatioResult> {
    const client = open()[0]
    if (client === undefined) throw new Error('no open connection')
    const result: RatioResult = { negotiated: client.deflate, payload: 0, wire: 0, firstPayload: 0, firstWire: 0 }
    for (let i = 0; i < args.pages; i++) {
      // Seeds far from sendEach's, so no page repeats one the connection already carried.
      const payload = Buffer.from(feedPage(1000 + i, args.bytes))
      const before = client.reader.bytes
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('ratio: no echo in time')), args.timeoutMs)
        client.onMessage = () => {
          clearTimeout(timer)
          resolve()
        }
        client.send(framesFor(payload)(client))
      })
      const wire = client.reader.bytes - before
      if (i === 0) {
        result.firstPayload = payload.length
        result.firstWire = wire
      }
      result.payload += payload.length
      result.wire += wire
    }
    return result
  },

  /** Resolves when `count` messages arrived since the last mark, or at the deadline. */
  waitMessages (args: { count: number, timeoutMs: number }): Promise<{ received: number, ms: number }> {
    const at = performance.now()
    const target = mark.messages + args.count
    return new Promise((resolve) => {
      const finish = (): void => {
        clearTimeout(timer)
        messageWaiter = null
        resolve({ received: totals.messages - mark.messages, ms: performance.now() - at })
      }
      const timer = setTimeout(finish, args.timeoutMs)
      messageWaiter = { target, done: finish }
      if (totals.messages >= target) finish()
    })
  },

  /** Stops reading on every connection: the kernel buffers fill and the server must queue. */
  pause (): number {
    for (const c of clients) c.socket.pause()
    return clients.length
  },

  /** Drops every connection (to one server port, or all); resolves when the sockets closed (bounded). */
  async closeAll (args: { port?: number } = {}): Promise<number> {
    const all = clients.filter((c) => args.port === undefined || c.port === args.port)
    clients = clients.filter((c) => !all.includes(c))
    echo = null
    await Promise.race([
      Promise.all(all.map((c) => new Promise<void>((resolve) => {
        if (c.socket.destroyed) resolve()
        else {
          c.socket.once('close', () => resolve())
          c.socket.destroy()
        }
      }))),
      sleep(5000)
    ])
    return all.length
  },

  /**
   * What the machine is like right now: the CPU one empty timer wakeup costs this process
   * (rate 333/s, as sparse pings), and how busy the machine is with other work.
   */
  async calibrate (args: { ms: number }): Promise<{ wakeupUs: number, machineBusy: number, cpuSpeedSpread: number }> {
    // How steady the CPU is: the same hashing in 20 windows of 25 ms (after 4 to warm up),
    // CPU time per hash; (90th - 10th percentile) / median. On a shared virtual machine it
    // can be tens of percent.
    const perHash: number[] = []
    for (let w = 0; w < 24; w++) {
      const c0 = process.cpuUsage()
      const t0 = performance.now()
      let n = 0
      while (performance.now() - t0 < 25) {
        createHash('sha1').update(PROBE).digest()
        n++
      }
      const d = process.cpuUsage(c0)
      if (w >= 4) perHash.push((d.user + d.system) / n)
    }
    perHash.sort((a, b) => a - b)
    const cpuSpeedSpread = (perHash[17] - perHash[2]) / perHash[10]
    const cpu = process.cpuUsage()
    const at = performance.now()
    const ticks0 = machineTicks()
    let wakeups = 0
    const timer = setInterval(() => { wakeups++ }, 3)
    await sleep(args.ms)
    clearInterval(timer)
    const { cpuUs } = cpuSince(cpu, at)
    const ticks = machineTicks()
    const total = ticks.total - ticks0.total
    return {
      cpuSpeedSpread,
      wakeupUs: cpuUs / Math.max(1, wakeups),
      machineBusy: total > 0 ? cpus().length * (ticks.busy - ticks0.busy) / total : 0
    }
  },

  exit (): true {
    setImmediate(() => process.exit(0))
    return true
  }
}

/** The commands bench/run.ts can send to the generator. */
export type GeneratorApi = typeof api

serve(api, 15 * 60_000)
