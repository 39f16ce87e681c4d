// The soak's clients: every kind of peer a production WebSocket server meets, each with the
// outcome it must come to. `ws` clients where a well-behaved client is meant, raw TCP sockets
// (bench/frames.ts) where the peer must misbehave in ways `ws` will not: stop reading, never
// answer a ping, vanish half-way through a frame. Every client has a hard deadline; every
// connection goes to 127.0.0.1 from a rotating loopback source address, so the per-IP
// failed-auth budget sees many addresses, as it would in production.

import { connect as tcpConnect, type Socket } from 'node:net'
import WebSocket from 'ws'
import { buildUpgradeRequest, FrameReader, maskedFrame, Opcode, parseUpgradeResponse } from './frames'
import { SOAK_PATH, SOAK_PLUGIN_OPTIONS, STREAM_COMMAND } from './soak-config'

/** The kinds of client, with what each does. */
export const KINDS = {
  echo: 'sends a message every 200 ms for 2-10 s, checks every echo, closes with 1000',
  'echo-die': 'as echo, then destroys its TCP socket without a close frame',
  long: 'sends a message a second for 15-30 s, then closes with 1000',
  'raw-die': 'raw socket: one message, then half a frame and a TCP destroy',
  silent: 'raw socket: reads but never answers a ping; the heartbeat must terminate it',
  idle: 'sends nothing, answers pings; the idle timeout must close it (1001)',
  stall: 'raw socket: asks for a stream and stops reading; backpressure must close it (1013)',
  flood: 'sends 120 messages at once; the message rate limit must close it (1008)',
  expire: 'token valid for 1-2 s, keeps sending; must be closed with 1008 "Token expired"',
  oversize: 'sends one message over the 1 MiB frame limit; must be closed with 1009',
  'bad-token': 'no, malformed, badly signed, expired or alg "none" tokens; must get 401',
  'bad-origin': 'valid token, foreign Origin; must get 403',
  brute: 'badly signed tokens for one subject from one address; 401 until the failed-auth budget, then 429',
  greedy: 'four connections as one user; the fourth must get 429 (maxConnectionsPerUser)',
  surge: 'enough idle connections at once to pass maxConnections; the excess must get 503'
} as const

export type Kind = keyof typeof KINDS

/** Launches per second of each kind (surges run on their own schedule). */
export const RATES: Readonly<Record<Exclude<Kind, 'surge'>, number>> = {
  echo: 10,
  'echo-die': 4,
  long: 2,
  'raw-die': 2,
  silent: 3,
  idle: 3,
  stall: 1,
  flood: 1,
  expire: 1,
  oversize: 0.5,
  'bad-token': 3,
  'bad-origin': 1,
  brute: 0.5,
  greedy: 0.5
}

// Outcomes each kind may come to; anything else is an anomaly. A 503 is always acceptable:
// surges hold the server at its cap for a moment, and whoever arrives then is refused.
const ACCEPT: Readonly<Record<Kind, readonly string[]>> = {
  echo: ['close 1000'],
  'echo-die': ['terminated'],
  long: ['close 1000'],
  'raw-die': ['terminated'],
  // A peer known dead is terminated: a close frame would only wait out close.timeout.
  silent: ['ended'],
  idle: ['close 1001 Idle timeout'],
  // The close frame sits behind the data the peer never read, and is usually cut off by the
  // terminate that follows close.timeout: "ended" is the server closing the TCP connection.
  stall: ['ended', 'close 1013 Slow consumer'],
  flood: ['close 1008 Rate limit exceeded'],
  expire: ['close 1008 Token expired'],
  oversize: ['close 1009'],
  'bad-token': ['http 401'],
  'bad-origin': ['http 403'],
  brute: ['http 401', 'http 429'],
  greedy: ['close 1000', 'http 429'],
  surge: ['close 1000']
}

// Users: each kind cycles through its own pool. A pool is large enough that a user has at
// most two connections of its kind open at once (maxConnectionsPerUser is 3) and opens fewer
// than 30 a minute (the upgrade rate limit), and small enough to be cycled through within
// seconds: per-user state (rate-limit store entries, counters) then stops growing early in the
// run instead of filling up over minutes and passing for a leak. Stalled readers get a new
// user each: every user can become a slow consumer once, and state kept per such user grows.
const POOLS: Readonly<Partial<Record<Kind, number>>> = {
  echo: 60, 'echo-die': 30, long: 60, 'raw-die': 10, silent: 15, idle: 15, flood: 10, expire: 10, oversize: 5, 'bad-origin': 10, greedy: 10
}

/** Lifetimes (ms, drawn evenly between the two) of the kinds that chat for a while. */
export const LIFETIMES: Readonly<Partial<Record<Kind, readonly [number, number]>>> = {
  echo: [2000, 10_000],
  'echo-die': [2000, 10_000],
  long: [15_000, 30_000]
}

// Hard deadlines (ms from launch); past it the client is killed and counted "stuck".
const DEADLINE_MS = 20_000
const LONG_DEADLINE_MS = 60_000
const STALL_MS = 3000
const SOURCE_ADDRESSES = 250
const BRUTE_ADDRESS = '127.0.0.254'
const OVERSIZE = Buffer.alloc(1024 * 1024 + 1, 0x62)
// Every stalled reader is a user never seen before, across loads (priming included).
let stallUsers = 0

/** Signs a token with the app's secret (HS256) for `sub`, optionally expiring at an epoch second. */
export type Signer = (claims: { sub: string, exp?: number }) => string

/** Tallies of one run, by kind and outcome. */
export class Tally {
  readonly outcomes = new Map<Kind, Map<string, number>>()
  readonly anomalies = new Map<string, number>()
  launched = 0
  skipped = 0

  record (kind: Kind, outcome: string): void {
    let byOutcome = this.outcomes.get(kind)
    if (byOutcome === undefined) this.outcomes.set(kind, (byOutcome = new Map()))
    byOutcome.set(outcome, (byOutcome.get(outcome) ?? 0) + 1)
    if (outcome !== 'drained' && outcome !== 'http 503' && !ACCEPT[kind].includes(outcome)) this.anomaly(`${kind}: ${outcome}`)
  }

  anomaly (what: string): void {
    this.anomalies.set(what, (this.anomalies.get(what) ?? 0) + 1)
  }

  count (kind: Kind, outcome: string): number {
    return this.outcomes.get(kind)?.get(outcome) ?? 0
  }
}

/** One client's connection, as the load sees it: closable at the drain, killable at the deadline. */
class Client {
  readonly kind: Kind
  #outcome: string | null = null
  #ws: WebSocket | null = null
  #raw: Socket | null = null
  #drained = false
  readonly #tally: Tally

  constructor (kind: Kind, tally: Tally) {
    this.kind = kind
    this.#tally = tally
  }

  get settled (): boolean {
    return this.#outcome !== null
  }

  attach (conn: WebSocket | Socket): void {
    if (conn instanceof WebSocket) this.#ws = conn
    else this.#raw = conn
  }

  /** The first outcome wins; a drained client's end is "drained" whatever it looked like. */
  settle (outcome: string): void {
    if (this.#outcome !== null) return
    this.#outcome = this.#drained ? 'drained' : outcome
    this.#tally.record(this.kind, this.#outcome)
  }

  /** The load is over: close as a polite client would (a raw socket can only be dropped). */
  drain (): void {
    if (this.#outcome !== null) return
    this.#drained = true
    const ws = this.#ws
    if (ws !== null && ws.readyState === WebSocket.OPEN) ws.close(1000, 'soak over')
    else ws?.terminate()
    this.#raw?.destroy()
  }

  /** Past its deadline (or the drain's): counted as stuck, drained or not. */
  kill (): void {
    if (this.#outcome === null) {
      this.#outcome = 'stuck'
      this.#tally.record(this.kind, 'stuck')
    }
    this.#ws?.terminate()
    this.#raw?.destroy()
  }
}

/** Where the clients connect, and with what. */
export interface LoadTarget {
  port: number
  sign: Signer
  /** Deterministic randomness (seeded) in [0, 1). */
  random: () => number
}

type Opened = { ws: WebSocket, status: null } | { ws: null, status: string }

interface ClosedEvent { code: number, reason: string }

function closeOutcome (e: ClosedEvent): string {
  if (e.code === 1006) return 'terminated'
  return e.reason === '' ? `close ${e.code}` : `close ${e.code} ${e.reason}`
}

function errorCode (err: unknown): string {
  return `error ${(err as { code?: string }).code ?? (err as Error).message}`
}

// A frame reader that never answers anything and remembers the close frame it saw.
function closeFrameCatcher (): { reader: FrameReader, outcome: string | null } {
  const seen: { reader: FrameReader | null, outcome: string | null } = { reader: null, outcome: null }
  seen.reader = new FrameReader({
    ping: () => {},
    close: (payload) => {
      seen.outcome = payload.length < 2 ? 'close 1005' : closeOutcome({ code: payload.readUInt16BE(0), reason: payload.toString('utf8', 2) })
    }
  })
  return seen as { reader: FrameReader, outcome: string | null }
}

function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** The load: launches clients at steady rates, tracks them, drains them. */
export class Load {
  readonly tally = new Tally()
  readonly #target: LoadTarget
  readonly #url: string
  readonly #live = new Set<Client>()
  readonly #running = new Set<Promise<void>>()
  readonly #tokens = new Map<string, string>()
  readonly #launches = new Map<Kind, number>()
  #nextSource = 0
  #stopped = false

  constructor (target: LoadTarget) {
    this.#target = target
    this.#url = `ws://127.0.0.1:${target.port}${SOAK_PATH}`
  }

  /** True once drain() began: nothing more is launched. */
  get stopped (): boolean {
    return this.#stopped
  }

  /** Clients whose outcome is not known yet. */
  get live (): number {
    return this.#live.size
  }

  /**
   * Starts one client of a kind; returns at once. Ignored once stopped or over `maxLive`.
   * `lifeMs` replaces a chatty kind's drawn lifetime (for the population a run starts with).
   */
  launch (kind: Kind, maxLive: number, lifeMs?: number): void {
    if (this.#stopped) return
    if (this.#live.size >= maxLive) {
      this.tally.skipped++
      return
    }
    this.tally.launched++
    // Per kind, so that each kind cycles through its whole user pool.
    const serial = this.#launches.get(kind) ?? 0
    this.#launches.set(kind, serial + 1)
    const run = this.#run(kind, serial, lifeMs)
    this.#running.add(run)
    run.finally(() => this.#running.delete(run)).catch(() => {})
  }

  /** Stops launching, closes every client still open, waits for their ends (bounded). */
  async drain (ms: number): Promise<number> {
    this.#stopped = true
    for (const client of this.#live) client.drain()
    const deadline = Date.now() + ms
    while (this.#running.size > 0 && Date.now() < deadline) await sleep(50)
    for (const client of this.#live) client.kill()
    return this.#running.size
  }

  async #run (kind: Kind, serial: number, lifeMs: number | undefined): Promise<void> {
    const clients: Client[] = []
    const make = (): Client => {
      const c = new Client(kind, this.tally)
      clients.push(c)
      this.#live.add(c)
      return c
    }
    const deadline = setTimeout(() => { for (const c of clients) c.kill() }, kind === 'long' ? LONG_DEADLINE_MS : DEADLINE_MS)
    try {
      await this.#body(kind, serial, make, lifeMs)
    } catch (err) {
      this.tally.anomaly(`${kind}: threw ${err instanceof Error ? err.message : String(err)}`)
    } finally {
      clearTimeout(deadline)
      for (const c of clients) {
        c.settle('no outcome')
        this.#live.delete(c)
      }
    }
  }

  #body (kind: Kind, serial: number, make: () => Client, lifeMs: number | undefined): Promise<void> {
    const [min, max] = LIFETIMES[kind] ?? [0, 0]
    const life = lifeMs ?? min + this.#target.random() * (max - min)
    switch (kind) {
      case 'echo': return this.#chat(make(), this.#user(kind, serial), 200, life, false)
      case 'echo-die': return this.#chat(make(), this.#user(kind, serial), 200, life, true)
      case 'long': return this.#chat(make(), this.#user(kind, serial), 1000, life, false)
      case 'idle': return this.#idle(make(), this.#user(kind, serial))
      case 'flood': return this.#flood(make(), this.#user(kind, serial))
      case 'expire': return this.#expire(make(), this.#user(kind, serial))
      case 'oversize': return this.#oversize(make(), this.#user(kind, serial))
      case 'raw-die': return this.#rawDie(make(), this.#user(kind, serial))
      case 'silent': return this.#silent(make(), this.#user(kind, serial))
      case 'stall': return this.#stall(make(), `stall-${stallUsers++}`)
      case 'bad-token': return this.#badToken(make(), serial)
      case 'bad-origin': return this.#refusedOnly(make(), { authorization: `Bearer ${this.#token(this.#user(kind, serial))}` }, 'http://evil.example', this.#source())
      case 'brute': return this.#refusedOnly(make(), { authorization: `Bearer ${this.#forged('brute')}` }, undefined, BRUTE_ADDRESS)
      case 'greedy': return this.#greedy(make, this.#user(kind, serial))
      case 'surge': throw new Error('surges are started with surge()')
    }
  }

  /** `size` idle connections at once, held for `holdMs`, then closed with 1000. */
  async surge (size: number, holdMs: number): Promise<void> {
    if (this.#stopped) return
    const run = (async () => {
      const clients: Client[] = []
      const opened = await Promise.all(Array.from({ length: size }, async (_, i) => {
        const client = new Client('surge', this.tally)
        clients.push(client)
        this.#live.add(client)
        this.tally.launched++
        const result = await this.#open(client, { authorization: `Bearer ${this.#token(`surge-${i}`)}` })
        return { client, result }
      }))
      const deadline = setTimeout(() => { for (const c of clients) c.kill() }, DEADLINE_MS)
      try {
        if (!this.#stopped) await sleep(holdMs)
        await Promise.all(opened.map(async ({ client, result }) => {
          if (result.ws === null) return client.settle(result.status)
          await this.#closeWith(client, result.ws)
        }))
      } finally {
        clearTimeout(deadline)
        for (const c of clients) {
          c.settle('no outcome')
          this.#live.delete(c)
        }
      }
    })()
    this.#running.add(run)
    await run.finally(() => this.#running.delete(run))
  }

  #user (kind: Kind, serial: number): string {
    return `${kind}-${serial % (POOLS[kind] ?? 100)}`
  }

  #token (sub: string): string {
    let token = this.#tokens.get(sub)
    if (token === undefined) this.#tokens.set(sub, (token = this.#target.sign({ sub })))
    return token
  }

  // A token for `sub` whose signature is not the app's.
  #forged (sub: string): string {
    const token = this.#token(sub)
    return `${token.slice(0, token.lastIndexOf('.') + 1)}${Buffer.alloc(32, 7).toString('base64url')}`
  }

  #source (): string {
    return `127.0.0.${2 + (this.#nextSource++ % SOURCE_ADDRESSES)}`
  }

  // Opens a ws client; resolves with it once open, or with the HTTP status or error it got.
  #open (client: Client, headers: Record<string, string>, origin?: string, localAddress = this.#source()): Promise<Opened> {
    return new Promise((resolve) => {
      const ws = new WebSocket(this.#url, { headers, origin, localAddress, perMessageDeflate: false, handshakeTimeout: 10_000 })
      client.attach(ws)
      let done = false
      const finish = (value: Opened): void => {
        if (done) return
        done = true
        resolve(value)
      }
      // A refused handshake is aborted by terminate(), which reports an error: nothing to learn.
      ws.on('error', (err) => finish({ ws: null, status: errorCode(err) }))
      ws.once('open', () => finish({ ws, status: null }))
      ws.once('unexpected-response', (_req, res) => {
        finish({ ws: null, status: `http ${String(res.statusCode)}` })
        res.resume()
        ws.terminate()
      })
    })
  }

  #closed (ws: WebSocket): Promise<ClosedEvent> {
    return new Promise((resolve) => {
      if (ws.readyState === WebSocket.CLOSED) resolve({ code: 1006, reason: '' })
      else ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }))
    })
  }

  // Closes with 1000 unless the server closed first; settles with what the client saw (the
  // server's answer to our close repeats our reason, so only the code is kept then).
  async #closeWith (client: Client, ws: WebSocket): Promise<void> {
    const closed = this.#closed(ws)
    const ours = ws.readyState === WebSocket.OPEN
    if (ours) ws.close(1000, 'done')
    const e = await closed
    client.settle(ours && e.code === 1000 ? 'close 1000' : closeOutcome(e))
  }

  async #chat (client: Client, user: string, everyMs: number, forMs: number, die: boolean): Promise<void> {
    const opened = await this.#open(client, { authorization: `Bearer ${this.#token(user)}` })
    if (opened.ws === null) return client.settle(opened.status)
    const ws = opened.ws
    const closed = this.#closed(ws)
    const state: { sent: number, received: number, closed: ClosedEvent | null } = { sent: 0, received: 0, closed: null }
    ws.on('message', (data) => {
      if (data.toString() !== `m${state.received}`) this.tally.anomaly(`${client.kind}: echo out of order`)
      state.received++
    })
    closed.then((e) => { state.closed = e }, () => {})
    const end = Date.now() + forMs
    while (Date.now() < end && state.closed === null) {
      if (ws.readyState === WebSocket.OPEN) ws.send(`m${state.sent++}`)
      await sleep(everyMs)
    }
    // Every echo must come back before the client leaves.
    const echoDeadline = Date.now() + 5000
    while (state.closed === null && state.received < state.sent && Date.now() < echoDeadline) await sleep(20)
    if (state.closed !== null) return client.settle(closeOutcome(state.closed))
    if (state.received < state.sent) this.tally.anomaly(`${client.kind}: echoes missing 5 s after the last message`)
    if (die) {
      ws.terminate()
      await closed
      return client.settle('terminated')
    }
    await this.#closeWith(client, ws)
  }

  async #idle (client: Client, user: string): Promise<void> {
    const opened = await this.#open(client, { authorization: `Bearer ${this.#token(user)}` })
    if (opened.ws === null) return client.settle(opened.status)
    client.settle(closeOutcome(await this.#closed(opened.ws)))
  }

  async #flood (client: Client, user: string): Promise<void> {
    const opened = await this.#open(client, { authorization: `Bearer ${this.#token(user)}` })
    if (opened.ws === null) return client.settle(opened.status)
    const closed = this.#closed(opened.ws)
    for (let i = 0; i < 120; i++) opened.ws.send(`f${i}`)
    client.settle(closeOutcome(await closed))
  }

  async #expire (client: Client, user: string): Promise<void> {
    // exp is in whole seconds: this token runs out 1-2 s from now.
    const token = this.#target.sign({ sub: user, exp: Math.floor(Date.now() / 1000) + 2 })
    const opened = await this.#open(client, { authorization: `Bearer ${token}` })
    if (opened.ws === null) return client.settle(opened.status)
    const ws = opened.ws
    const server: { closed: ClosedEvent | null } = { closed: null }
    this.#closed(ws).then((e) => { server.closed = e }, () => {})
    const giveUp = Date.now() + DEADLINE_MS
    while (server.closed === null && Date.now() < giveUp) {
      if (ws.readyState === WebSocket.OPEN) ws.send('tick')
      await sleep(500)
    }
    client.settle(server.closed === null ? 'stuck' : closeOutcome(server.closed))
  }

  async #oversize (client: Client, user: string): Promise<void> {
    const opened = await this.#open(client, { authorization: `Bearer ${this.#token(user)}` })
    if (opened.ws === null) return client.settle(opened.status)
    const closed = this.#closed(opened.ws)
    opened.ws.send(OVERSIZE)
    const e = await closed
    // ws gives no reason with 1009 from its own limit; the plugin's is not part of the contract.
    client.settle(e.code === 1009 ? 'close 1009' : closeOutcome(e))
  }

  async #refusedOnly (client: Client, headers: Record<string, string>, origin: string | undefined, localAddress: string): Promise<void> {
    const opened = await this.#open(client, headers, origin, localAddress)
    if (opened.ws === null) return client.settle(opened.status)
    // Let in: that is the anomaly; leave politely.
    await this.#closeWith(client, opened.ws)
  }

  #badToken (client: Client, serial: number): Promise<void> {
    const variant = serial % 5
    const now = Math.floor(Date.now() / 1000)
    const headers: Record<string, string> = {}
    if (variant === 1) headers.authorization = 'Bearer garbage'
    if (variant === 2) headers.authorization = `Bearer ${this.#forged('bad-token')}`
    if (variant === 3) headers.authorization = `Bearer ${this.#target.sign({ sub: 'bad-token', exp: now - 60 })}`
    if (variant === 4) {
      const part = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url')
      headers.authorization = `Bearer ${part({ alg: 'none', typ: 'JWT' })}.${part({ sub: 'bad-token' })}.`
    }
    return this.#refusedOnly(client, headers, undefined, this.#source())
  }

  async #greedy (make: () => Client, user: string): Promise<void> {
    const open: Array<{ client: Client, ws: WebSocket }> = []
    const limit = SOAK_PLUGIN_OPTIONS.maxConnectionsPerUser
    for (let i = 0; i <= limit; i++) {
      const client = make()
      const opened = await this.#open(client, { authorization: `Bearer ${this.#token(user)}` })
      if (opened.ws === null) client.settle(opened.status)
      else open.push({ client, ws: opened.ws })
    }
    await sleep(500)
    await Promise.all(open.map(({ client, ws }) => this.#closeWith(client, ws)))
  }

  // ---- raw sockets --------------------------------------------------------------------------

  // Upgrades over a raw socket; resolves once the 101 arrived (frames that came with it are fed
  // to the reader) or with the status or error. The socket is never answered automatically.
  #rawOpen (client: Client, user: string, reader: FrameReader): Promise<{ socket: Socket, status: null } | { socket: null, status: string }> {
    const request = buildUpgradeRequest({ port: this.#target.port, path: SOAK_PATH, deflate: false, headers: { authorization: `Bearer ${this.#token(user)}` } })
    return new Promise((resolve) => {
      const socket = tcpConnect({ port: this.#target.port, host: '127.0.0.1', localAddress: this.#source() })
      client.attach(socket)
      let head = Buffer.alloc(0)
      let done = false
      const finish = (status: string | null): void => {
        if (done) return
        done = true
        socket.removeListener('data', onHead)
        if (status === null) resolve({ socket, status: null })
        else {
          socket.destroy()
          resolve({ socket: null, status })
        }
      }
      const onHead = (chunk: Buffer): void => {
        head = Buffer.concat([head, chunk])
        const response = parseUpgradeResponse(head)
        if (response === null) return
        if (response.status !== 101) return finish(`http ${response.status}`)
        finish(null)
        if (head.length > response.headLength) reader.feed(head, response.headLength)
      }
      socket.on('data', onHead)
      socket.on('error', (err) => finish(errorCode(err)))
      socket.once('close', () => finish('error closed before the upgrade'))
      socket.once('connect', () => socket.write(request))
    })
  }

  #ended (socket: Socket): Promise<void> {
    return new Promise((resolve) => {
      if (socket.destroyed) resolve()
      else socket.once('close', () => resolve())
    })
  }

  async #rawDie (client: Client, user: string): Promise<void> {
    const reader = new FrameReader({ ping: () => {}, close: () => {} })
    const opened = await this.#rawOpen(client, user, reader)
    if (opened.socket === null) return client.settle(opened.status)
    const socket = opened.socket
    socket.on('data', (chunk: Buffer) => reader.feed(chunk))
    socket.write(maskedFrame(Opcode.TEXT, Buffer.from('bye')))
    await sleep(100)
    const frame = maskedFrame(Opcode.TEXT, Buffer.alloc(1000, 0x63))
    socket.write(frame.subarray(0, 500))
    socket.destroy()
    client.settle('terminated')
  }

  async #silent (client: Client, user: string): Promise<void> {
    const seen = closeFrameCatcher()
    const opened = await this.#rawOpen(client, user, seen.reader)
    if (opened.socket === null) return client.settle(opened.status)
    opened.socket.on('data', (chunk: Buffer) => seen.reader.feed(chunk))
    opened.socket.on('error', () => {})
    await this.#ended(opened.socket)
    client.settle(seen.outcome ?? 'ended')
  }

  async #stall (client: Client, user: string): Promise<void> {
    const seen = closeFrameCatcher()
    const opened = await this.#rawOpen(client, user, seen.reader)
    if (opened.socket === null) return client.settle(opened.status)
    const socket = opened.socket
    socket.on('error', () => {})
    const ended = this.#ended(socket)
    socket.write(maskedFrame(Opcode.TEXT, Buffer.from(STREAM_COMMAND)))
    // Stop reading: the kernel buffers fill, then ws's, then the policy must act.
    socket.pause()
    await sleep(STALL_MS)
    // Read what is left so that the end (FIN or reset) is seen at all.
    socket.on('data', (chunk: Buffer) => seen.reader.feed(chunk))
    socket.resume()
    await ended
    client.settle(seen.outcome ?? 'ended')
  }
}
