// The load test runner: opens connections at the ramp rate, holds them for the duration while
// one scheduler tick walks the open connections round-robin to send at the message rate, then
// closes every connection with 1000 and terminates the stragglers. One interval timer drives
// it all (ramp, sends, reply timeouts, progress): no timer, closure or promise per message.
//
// Only `options.url` is ever connected to; source addresses are bound, never contacted.

import { performance } from 'node:perf_hooks'
import { build, type Histogram } from 'hdr-histogram-js'
import WebSocket from 'ws'
import { normalizeOptions, type LoadTestOptions, type NormalizedOptions } from './options'
import { percentiles, redactUrl, type CloseTally, type LoadTestResult, type SourceTally } from './report'
import { runTokenCommand } from './token'

/** What the runner reports about once a second, for a live progress line. */
export interface Progress {
  phase: 'ramp' | 'hold' | 'closing'
  elapsedMs: number
  open: number
  /** Attempts whose handshake is still in progress. */
  connecting: number
  attempted: number
  sent: number
  received: number
  /** Over the last report's interval. */
  sentPerSecond: number
  receivedPerSecond: number
  errors: number
}

/** Milliseconds between scheduler ticks. */
export const TICK_MS = 10
/** Milliseconds between progress reports. */
export const PROGRESS_MS = 1000
/** Connection attempts one tick may start (a ceiling of 100,000 a second). */
export const MAX_ATTEMPTS_PER_TICK = 1000
/** A connection whose send buffer holds more than this skips its scheduled sends. */
export const SEND_BUFFER_LIMIT = 1024 * 1024
const CLOSE_REASON = 'load test done'
const TEXT = Object.freeze({ binary: false })
const ID_KEY = Buffer.from('"id"')
const TOPIC_MESSAGE = Buffer.from('"topic.message"')

const enum State { Connecting, Open, Closing, Closed }

function histogram (): Histogram {
  // Microseconds, 3 significant digits, growing as needed.
  return build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 })
}

function errorKind (err: Error & { code?: unknown }): string {
  if (typeof err.code === 'string') return err.code
  if (err.message === 'Opening handshake has timed out') return 'connect timeout'
  return err.message.slice(0, 80)
}

/** One connection of the run. */
class Peer {
  ws: WebSocket | null = null
  state = State.Connecting
  /** Index in the runner's open list while open, else -1. */
  slot = -1
  seq = 0
  startedAt = 0
  /** The tool began this connection's end (close at the end, abort, terminate). */
  byTool = false
  /** An error was already counted for it: the close that follows is not a second one. */
  errored = false
  readonly onOpen = (): void => this.run.opened(this)
  // ws hands text and binary messages over as Buffers (binaryType 'nodebuffer', the default).
  readonly onMessage = (data: WebSocket.RawData, isBinary: boolean): void => this.run.message(data as Buffer, isBinary)
  readonly onClose = (code: number, reason: Buffer): void => this.run.closed(this, code, reason)
  readonly onError = (err: Error): void => this.run.errored(this, err)
  readonly onRefused = (_request: unknown, response: { statusCode?: number, resume: () => void }): void => {
    response.resume()
    this.run.refused(this, response.statusCode ?? 0)
  }

  constructor (readonly run: Runner, readonly index: number, readonly source: string | undefined) {}
}

class Runner {
  readonly #o: NormalizedOptions
  readonly #onProgress: (progress: Progress) => void
  readonly #peers: Peer[] = []
  readonly #open: Peer[] = []
  /** Request id to the performance.now() of its send; ids are unique over the run. */
  readonly #pending = new Map<number, number>()
  readonly #subscribing = new Set<number>()
  readonly #errors = new Map<string, number>()
  readonly #closes = new Map<string, CloseTally>()
  readonly #sources = new Map<string, SourceTally>()
  readonly #connect = histogram()
  readonly #latency = histogram()
  #token: string | null
  #nextId = 1
  #phase: Progress['phase'] = 'ramp'
  #startedAt = 0
  #rampEndedAt = 0
  #holdEndsAt = Infinity
  #holdEndedAt = 0
  #stoppedEarly = false
  #timer: NodeJS.Timeout | null = null
  #lastTick = 0
  #due = 0
  #cursor = 0
  #lastSweep = 0
  #lastProgress = { at: 0, sent: 0, received: 0 }
  #endPhase: (() => void) | null = null
  /** Sockets created and not closed yet. */
  #live = 0
  readonly #count = { attempted: 0, opened: 0, failed: 0, cancelled: 0, connecting: 0, peakOpen: 0, openAtEnd: 0, terminated: 0, sent: 0, received: 0, requests: 0, replies: 0, skipped: 0, subscriptions: 0, subscribed: 0, topicMessages: 0, errors: 0 }

  constructor (options: NormalizedOptions, onProgress: (progress: Progress) => void) {
    this.#o = options
    this.#onProgress = onProgress
    this.#token = options.token
    for (const address of options.sourceAddresses.length === 0 ? ['default'] : options.sourceAddresses) {
      this.#sources.set(address, { attempted: 0, opened: 0 })
    }
  }

  async run (): Promise<LoadTestResult> {
    const o = this.#o
    if (o.tokenCommand !== null && !o.tokenPerConnection) this.#token = await runTokenCommand(o.tokenCommand)
    const startedAtIso = new Date().toISOString()
    this.#startedAt = this.#lastTick = this.#lastSweep = performance.now()
    this.#lastProgress.at = this.#startedAt
    const stopped = new Promise<void>((resolve) => { this.#endPhase = resolve })
    const onAbort = (): void => this.#stop(true)
    o.signal?.addEventListener('abort', onAbort, { once: true })
    if (o.signal?.aborted === true) this.#stop(true)
    else {
      this.#timer = setInterval(() => this.#tick(), TICK_MS)
      this.#tick()
    }
    await stopped
    o.signal?.removeEventListener('abort', onAbort)
    await this.#finish()
    return this.#result(startedAtIso)
  }

  // The scheduler: opens what the ramp says is due, sends what the message rate says is due,
  // times out old requests, reports progress, and ends the hold.
  #tick (): void {
    const now = performance.now()
    const dt = (now - this.#lastTick) / 1000
    this.#lastTick = now
    if (this.#phase === 'closing') return
    if (this.#phase === 'ramp') {
      // At most MAX_ATTEMPTS_PER_TICK per tick, so that a huge ramp rate cannot stall the loop.
      const due = Math.min(this.#o.connections, this.#count.attempted + MAX_ATTEMPTS_PER_TICK,
        Math.floor(((now - this.#startedAt) / 1000) * this.#o.rampRate) + 1)
      while (this.#count.attempted < due) this.#attempt(this.#count.attempted)
      if (this.#count.attempted === this.#o.connections) {
        this.#phase = 'hold'
        this.#rampEndedAt = now
        this.#holdEndsAt = now + this.#o.duration * 1000
      }
    }
    if (this.#o.payload.kind !== 'idle' && this.#open.length > 0) this.#send(dt)
    if (now - this.#lastSweep >= 250) this.#sweep(now)
    if (now - this.#lastProgress.at >= PROGRESS_MS) this.#progress(now)
    if (now >= this.#holdEndsAt) this.#stop(false)
  }

  #attempt (index: number): void {
    const sources = this.#o.sourceAddresses
    const source = sources.length === 0 ? undefined : sources[index % sources.length]
    const peer = new Peer(this, index, source)
    this.#peers.push(peer)
    this.#count.attempted++
    this.#count.connecting++
    const tally = this.#sources.get(source ?? 'default') as SourceTally
    tally.attempted++
    if (this.#o.tokenPerConnection) {
      runTokenCommand(this.#o.tokenCommand as string).then((token) => {
        if (this.#phase === 'closing') this.#cancel(peer)
        else this.#connectPeer(peer, token)
      }, () => {
        if (this.#phase === 'closing') return this.#cancel(peer)
        peer.state = State.Closed
        this.#count.connecting--
        this.#count.failed++
        this.#error('token command failed')
      })
    } else {
      this.#connectPeer(peer, this.#token)
    }
  }

  #connectPeer (peer: Peer, token: string | null): void {
    const o = this.#o
    const headers: Record<string, string> = {}
    const protocols = [...o.protocols]
    if (token !== null) {
      if (o.tokenIn === 'header') headers.authorization = `Bearer ${token}`
      else protocols.push(`bearer.${token}`)
    }
    peer.startedAt = performance.now()
    const ws = new WebSocket(o.url, protocols, {
      headers,
      localAddress: peer.source,
      // Resolve the target's name to the family of the bound address.
      family: peer.source === undefined ? undefined : peer.source.includes(':') ? 6 : 4,
      handshakeTimeout: o.connectTimeout * 1000,
      perMessageDeflate: false,
      // The run counts messages; it does not need ws to check the UTF-8 of each.
      skipUTF8Validation: true,
      rejectUnauthorized: !o.insecure,
      followRedirects: false
    })
    peer.ws = ws
    this.#live++
    ws.on('open', peer.onOpen)
    ws.on('message', peer.onMessage)
    ws.on('close', peer.onClose)
    ws.on('error', peer.onError)
    ws.on('unexpected-response', peer.onRefused)
  }

  #cancel (peer: Peer): void {
    peer.state = State.Closed
    this.#count.connecting--
    this.#count.cancelled++
  }

  opened (peer: Peer): void {
    this.#count.connecting--
    if (this.#phase === 'closing') {
      // The run ended during its handshake: leave at once.
      this.#count.cancelled++
      peer.byTool = true
      peer.state = State.Closing
      peer.ws?.close(1000, CLOSE_REASON)
      return
    }
    this.#connect.recordValue(Math.max(1, Math.round((performance.now() - peer.startedAt) * 1000)))
    peer.state = State.Open
    peer.slot = this.#open.length
    this.#open.push(peer)
    this.#count.opened++
    if (this.#open.length > this.#count.peakOpen) this.#count.peakOpen = this.#open.length
    ;(this.#sources.get(peer.source ?? 'default') as SourceTally).opened++
    for (const topic of this.#o.subscribe) {
      const id = this.#nextId++
      this.#subscribing.add(id)
      this.#count.subscriptions++
      this.#count.sent++
      ;(peer.ws as WebSocket).send(JSON.stringify({ type: 'topic.subscribe', topic, id }))
    }
  }

  // Round-robin over the open connections: the due count grows with the rate times the number
  // open, so each gets `messageRate` per second on average without a timer of its own. A
  // process that fell behind (a long pause of its event loop) does not burst: the backlog is
  // capped at one message per open connection, and what is dropped counts as skipped.
  #send (dt: number): void {
    const open = this.#open
    this.#due += dt * this.#o.messageRate * open.length
    if (this.#due > open.length) {
      this.#count.skipped += Math.floor(this.#due - open.length)
      this.#due = open.length
    }
    const payload = this.#o.payload
    const ts = Date.now()
    while (this.#due >= 1) {
      this.#due--
      if (this.#cursor >= open.length) this.#cursor = 0
      const peer = open[this.#cursor++] as Peer
      const ws = peer.ws as WebSocket
      if (ws.bufferedAmount > SEND_BUFFER_LIMIT) {
        this.#count.skipped++
        continue
      }
      const seq = peer.seq++
      if (payload.kind === 'text') ws.send(payload.data, TEXT)
      else if (payload.kind === 'json') ws.send(payload.template.render(seq, peer.index, ts))
      else if (payload.kind === 'request') {
        const id = this.#nextId++
        this.#pending.set(id, performance.now())
        this.#count.requests++
        ws.send(payload.template.render(seq, peer.index, ts, id))
      }
      this.#count.sent++
    }
  }

  message (data: Buffer, isBinary: boolean): void {
    this.#count.received++
    if (isBinary) return
    if (this.#o.subscribe.length > 0 && data.indexOf(TOPIC_MESSAGE) !== -1) {
      this.#count.topicMessages++
      return
    }
    // Only what may be a reply is parsed.
    if ((this.#pending.size === 0 && this.#subscribing.size === 0) || data.indexOf(ID_KEY) === -1) return
    let reply: { id?: unknown, type?: unknown, code?: unknown }
    try {
      reply = JSON.parse(data.toString())
    } catch {
      return
    }
    if (typeof reply !== 'object' || reply === null || typeof reply.id !== 'number') return
    const id = reply.id
    const sentAt = this.#pending.get(id)
    if (sentAt !== undefined) {
      this.#pending.delete(id)
      this.#count.replies++
      this.#latency.recordValue(Math.max(1, Math.round((performance.now() - sentAt) * 1000)))
      if (reply.type === 'error') this.#error(`reply error ${String(reply.code)}`)
    } else if (this.#subscribing.delete(id)) {
      if (reply.type === 'topic.subscribed') this.#count.subscribed++
      else this.#error(`subscribe error ${String(reply.code ?? reply.type)}`)
    }
  }

  refused (peer: Peer, status: number): void {
    this.#error(`HTTP ${status}`)
    peer.errored = true
    // With an 'unexpected-response' listener ws leaves the request to us; terminate() aborts
    // it and reports an abort error, which the errored flag keeps from counting twice.
    peer.ws?.terminate()
  }

  errored (peer: Peer, err: Error): void {
    if (peer.errored || peer.byTool) return
    peer.errored = true
    this.#error(errorKind(err))
  }

  closed (peer: Peer, code: number, reason: Buffer): void {
    const was = peer.state
    peer.state = State.Closed
    this.#live--
    if (was === State.Connecting) {
      this.#count.connecting--
      if (peer.byTool) this.#count.cancelled++
      else {
        this.#count.failed++
        // ws reports every failed handshake with an error first; this is a fallback.
        if (!peer.errored) this.#error(`closed before open ${code}`)
      }
      return
    }
    if (peer.slot !== -1) {
      // Swap-remove from the open list: O(1), and the round-robin cursor barely notices.
      const last = this.#open.pop() as Peer
      if (last !== peer) {
        this.#open[peer.slot] = last
        last.slot = peer.slot
      }
      peer.slot = -1
    }
    const text = reason.toString()
    const by = peer.byTool ? 'tool' : 'server'
    const key = `${by} ${code} ${text}`
    const entry = this.#closes.get(key)
    if (entry === undefined) this.#closes.set(key, { code, reason: text, initiatedBy: by, count: 1 })
    else entry.count++
    if (!peer.byTool && !peer.errored) this.#error(`closed by server ${code}`)
  }

  #error (kind: string): void {
    this.#count.errors++
    this.#errors.set(kind, (this.#errors.get(kind) ?? 0) + 1)
  }

  // Requests are in the map in the order they were sent: the expired ones are at its start.
  #sweep (now: number): void {
    this.#lastSweep = now
    const limit = now - this.#o.requestTimeout * 1000
    for (const [id, sentAt] of this.#pending) {
      if (sentAt > limit) break
      this.#pending.delete(id)
      this.#error('reply timeout')
    }
  }

  #progress (now: number): void {
    const seconds = (now - this.#lastProgress.at) / 1000
    const c = this.#count
    this.#onProgress({
      phase: this.#phase,
      elapsedMs: now - this.#startedAt,
      open: this.#open.length,
      connecting: c.connecting,
      attempted: c.attempted,
      sent: c.sent,
      received: c.received,
      sentPerSecond: (c.sent - this.#lastProgress.sent) / seconds,
      receivedPerSecond: (c.received - this.#lastProgress.received) / seconds,
      errors: c.errors
    })
    this.#lastProgress = { at: now, sent: c.sent, received: c.received }
  }

  #stop (early: boolean): void {
    if (this.#phase === 'closing') return
    const now = performance.now()
    if (this.#phase === 'ramp') this.#rampEndedAt = now
    this.#stoppedEarly = early
    this.#phase = 'closing'
    this.#holdEndedAt = now
    this.#count.openAtEnd = this.#open.length
    this.#endPhase?.()
  }

  async #waitUntil (done: () => boolean, ms: number): Promise<void> {
    const deadline = performance.now() + ms
    while (!done() && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  }

  // Outstanding replies get `closeTimeout` to arrive; then every connection is closed with
  // 1000 and gets `closeTimeout` for the closing handshake; the rest are terminated.
  async #finish (): Promise<void> {
    const grace = this.#o.closeTimeout * 1000
    for (const peer of this.#peers) {
      if (peer.state === State.Connecting && peer.ws !== null) {
        peer.byTool = true
        peer.ws.terminate()
      }
    }
    await this.#waitUntil(() => this.#pending.size === 0 && this.#subscribing.size === 0, grace)
    this.#progress(performance.now())
    if (this.#timer !== null) clearInterval(this.#timer)
    for (const peer of this.#open) {
      peer.byTool = true
      peer.state = State.Closing
      ;(peer.ws as WebSocket).close(1000, CLOSE_REASON)
    }
    await this.#waitUntil(() => this.#live === 0, grace)
    for (const peer of this.#peers) {
      if (peer.state !== State.Closed && peer.ws !== null) {
        peer.byTool = true
        this.#count.terminated++
        peer.ws.terminate()
      }
    }
    // terminate() destroys the socket; its close event follows within a tick or two.
    await this.#waitUntil(() => this.#live === 0 && this.#count.connecting === 0, 1000)
    if (this.#pending.size > 0) {
      this.#count.errors += this.#pending.size
      this.#errors.set('no reply', this.#pending.size)
    }
  }

  #result (startedAt: string): LoadTestResult {
    const o = this.#o
    const c = this.#count
    const end = performance.now()
    const activeSeconds = Math.max(0.001, (this.#holdEndedAt - this.#startedAt) / 1000)
    return {
      url: redactUrl(o.url),
      startedAt,
      elapsedMs: Math.round(end - this.#startedAt),
      rampMs: Math.round(this.#rampEndedAt - this.#startedAt),
      holdMs: Math.round(this.#holdEndedAt - this.#rampEndedAt),
      stoppedEarly: this.#stoppedEarly,
      settings: {
        connections: o.connections,
        rampRate: o.rampRate,
        duration: o.duration,
        messageRate: o.messageRate,
        mode: o.payload.kind,
        subscribe: o.subscribe,
        tokenIn: o.token === null && o.tokenCommand === null ? 'none' : o.tokenIn,
        sourceAddresses: o.sourceAddresses
      },
      connections: {
        target: o.connections,
        attempted: c.attempted,
        opened: c.opened,
        failed: c.failed,
        cancelled: c.cancelled,
        openAtEnd: c.openAtEnd,
        peakOpen: c.peakOpen,
        terminated: c.terminated
      },
      connectMs: percentiles(this.#connect),
      latencyMs: percentiles(this.#latency),
      messages: {
        sent: c.sent,
        received: c.received,
        requests: c.requests,
        replies: c.replies,
        skipped: c.skipped,
        subscriptions: c.subscriptions,
        subscribed: c.subscribed,
        topicMessages: c.topicMessages
      },
      rates: { sentPerSecond: c.sent / activeSeconds, receivedPerSecond: c.received / activeSeconds },
      errors: Object.fromEntries([...this.#errors].sort((a, b) => b[1] - a[1])),
      errorCount: c.errors,
      closes: [...this.#closes.values()].sort((a, b) => b.count - a.count),
      sources: Object.fromEntries(this.#sources)
    }
  }
}

/**
 * Runs a load test against `options.url` and resolves with what it measured once every
 * connection is closed. `onProgress` is called about once a second while it runs.
 * @throws FST_WSM_LOADTEST_OPTION_INVALID (rejects) for a bad option, before connecting.
 * @throws Error (rejects) when the token command fails at the start, before connecting.
 */
export async function runLoadTest (options: LoadTestOptions, onProgress: (progress: Progress) => void = () => {}): Promise<LoadTestResult> {
  const normalized = normalizeOptions(options)
  return await new Runner(normalized, onProgress).run()
}
