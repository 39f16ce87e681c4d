// Heartbeat: ping every socket on a schedule, detect peers that stopped answering.
//
// Cost model (what the 10,000-connection benchmark measures):
// - One shared, unref'd timer per manager, armed for the earliest due time in a binary
//   min-heap of per-socket deadlines. It exists only while at least one socket is tracked.
// - Start, stop, close and every pong: O(log n) (one heap sift), no allocation.
// - One timer tick: O(k log n) for the k sockets due by then (one ping or one miss each),
//   plus one setTimeout to re-arm. A tick in which nothing is due (the earliest socket
//   answered after the timer was armed) costs O(1) and a re-arm.
// - Per socket: one state object of 14 fields, one Map entry and one heap slot; about 350 bytes
//   in all at 10,000 sockets, counting the growth of the socket's own listener arrays.
//   Listeners are one pair per manager, shared by all of its sockets: EventEmitter calls them
//   with `this` set to the socket, so nothing is allocated per socket beyond the state.
// - getStats() is one O(n) pass allocating only its result (about 5 ms at 10,000 sockets).

import type WebSocket from 'ws'
import { OVERRIDE_KEYS, detectionBound, resolveHeartbeatOptions, resolveSettings, type HeartbeatOptions, type HeartbeatOverrides, type HeartbeatSettings } from './heartbeat-settings'
import { section } from './validate'

export { HEARTBEAT_DEFAULTS, detectionBound, resolveHeartbeatOptions } from './heartbeat-settings'
export type { HeartbeatOptions, HeartbeatOverrides, HeartbeatSettings, ResolvedHeartbeatOptions } from './heartbeat-settings'

/**
 * Called once when a socket missed `maxMissedPongs` pongs in a row, from the manager's timer.
 * The socket is already untracked (no state, no listener left), so the callback may close it
 * or start its heartbeat again; that is also why its final figures come as `stats`, since
 * `getHeartbeatStats(ws)` no longer has them. An error it throws is rethrown on the next tick,
 * after the manager has dealt with every other socket due.
 */
export type HeartbeatTimeoutCallback<T extends WebSocket = WebSocket> = (ws: T, stats: HeartbeatStats) => void

/** Heartbeat figures of one socket. */
export interface HeartbeatStats {
  /** Round trip of the last answered ping in milliseconds, or null before the first one. */
  latency: number | null
  /** Epoch milliseconds of the last ping sent, or null. Read from the monotonic clock. */
  lastPingAt: number | null
  /** Epoch milliseconds of the last pong received, or null. Read from the monotonic clock. */
  lastPongAt: number | null
  /** Pongs missed in a row now; 0 when the peer is healthy. */
  missedPongs: number
  /** Pings sent to this socket. */
  pingsSent: number
  /** Pongs received from this socket, answers and unsolicited ones. */
  pongsReceived: number
}

/** Aggregate figures of a {@link HeartbeatManager}. */
export interface HeartbeatManagerStats {
  /** Sockets tracked now. */
  tracked: number
  /** Tracked sockets with no miss outstanding. */
  healthy: number
  /** Tracked sockets with at least one miss outstanding. */
  unhealthy: number
  /** Mean of the tracked sockets' latest latencies in milliseconds, or null when none has one. */
  averageLatency: number | null
  /** Pings sent since the manager was created, including to sockets no longer tracked. */
  pingsSent: number
  /** Pongs received since the manager was created. */
  pongsReceived: number
  /** Misses counted since the manager was created. */
  missedPongs: number
  /** Sockets declared dead (timeout callback run) since the manager was created. */
  timeouts: number
}

// The timer rounds delays up to whole milliseconds and libuv's clock is cached per loop turn,
// so a tick can run a fraction of a millisecond before a deadline; treating what is due within
// this slack as due avoids an extra tick for it. Events can only be early by this, never late.
const TICK_SLACK_MS = 1
// A ping may go out this share of its interval early, so pings due close together share one
// timer wakeup: at 30 s, 10,000 sockets cost a few dozen wakeups per interval instead of
// 10,000. Early pings only shorten the time to detection, never lengthen it.
const PING_EARLY_SHARE = 0.02
// Pings sent per tick (a few milliseconds of work) before the rest is left to the next turn of the event loop, so a burst
// of sockets that fell due together never blocks the loop for long.
const MAX_PINGS_PER_TICK = 100
// ws's readyState for OPEN, as a constant rather than a lookup on the socket's prototype.
const OPEN = 1

interface State {
  readonly socket: WebSocket
  readonly onTimeout: HeartbeatTimeoutCallback
  readonly interval: number
  readonly timeout: number
  readonly maxMissed: number
  /** performance.now() of the next event: the next ping, or the pong deadline while awaiting. */
  due: number
  /** Position in the heap; -1 once untracked. */
  index: number
  /** Whether a ping is outstanding (then `due` is its pong deadline). */
  awaiting: boolean
  missed: number
  /** performance.now() of the last ping sent, -1 for none; the same for pongs and latency. */
  pingAt: number
  pongAt: number
  latency: number
  pingsSent: number
  pongsReceived: number
}

function epoch (t: number): number | null {
  return t < 0 ? null : Math.round(performance.timeOrigin + t)
}

function statsOf (s: State): HeartbeatStats {
  return {
    latency: s.latency < 0 ? null : s.latency,
    lastPingAt: epoch(s.pingAt),
    lastPongAt: epoch(s.pongAt),
    missedPongs: s.missed,
    pingsSent: s.pingsSent,
    pongsReceived: s.pongsReceived
  }
}

function rethrow (err: unknown): never {
  throw err
}

/**
 * Keeps WebSockets alive and finds dead peers: pings every tracked socket every
 * `pingInterval`, counts a pong that does not come within `pongTimeout` as a miss and pings
 * again at once, and after `maxMissedPongs` misses in a row untracks the socket and runs its
 * timeout callback once. A peer that dies is thus found within
 * `pingInterval + maxMissedPongs × pongTimeout`, plus the timer's lateness at each of those
 * `maxMissedPongs + 1` steps (about a millisecond each on an idle loop). Every deadline is
 * counted from the moment its ping actually went out, so a peer gets its full `pongTimeout`
 * to answer even when the loop was busy (less at most 1 ms: what is due within 1 ms is handled
 * in the same tick). The single timer is armed for the exact earliest deadline, never a coarse
 * sweep.
 *
 * Works on any `ws` socket, server or client side. Several managers may track one socket
 * independently; each then also sees the pongs answering the other's pings.
 *
 * Costs: one shared timer per manager over a min-heap of deadlines (O(log n) per start, stop,
 * close and pong; O(k log n) per tick for k due sockets), one small state object per socket,
 * and one pair of listeners per manager shared by all sockets. The manager never closes a
 * socket itself: the timeout callback decides (usually `ws.terminate()`).
 */
export class HeartbeatManager {
  readonly #settings: HeartbeatSettings
  readonly #maxDetectionTime: number | null
  readonly #states = new Map<WebSocket, State>()
  readonly #heap: State[] = []
  readonly #onPong: (this: WebSocket) => void
  readonly #onClose: (this: WebSocket) => void
  readonly #onTimer: () => void
  #timer: NodeJS.Timeout | undefined = undefined
  #resume: NodeJS.Immediate | undefined = undefined
  #timerDue = 0
  #ticking = false
  #pingsSent = 0
  #pongsReceived = 0
  #missedPongs = 0
  #timeouts = 0
  /** Called with each latency sample in milliseconds (metrics); null when nobody listens. */
  onLatency: ((ms: number) => void) | null = null

  /** @throws FST_WSM_OPTION_INVALID when an option is out of range or the detection bound exceeds `maxDetectionTime`. */
  constructor (options: HeartbeatOptions = {}) {
    const resolved = resolveHeartbeatOptions(options)
    this.#settings = Object.freeze({
      pingInterval: resolved.pingInterval,
      pongTimeout: resolved.pongTimeout,
      maxMissedPongs: resolved.maxMissedPongs
    })
    this.#maxDetectionTime = resolved.maxDetectionTime
    // One pair of listeners for every socket of this manager: `this` is the socket, so no
    // closure is made per socket, and managers sharing a socket remove only their own.
    const manager = this
    this.#onPong = function (this: WebSocket): void { manager.#pong(this) }
    this.#onClose = function (this: WebSocket): void { manager.stopHeartbeat(this) }
    this.#onTimer = () => this.#tick()
  }

  /** The manager's settings (per-socket overrides not included). */
  get settings (): Readonly<HeartbeatSettings> {
    return this.#settings
  }

  /** The worst-case detection time of the manager's settings, in milliseconds. */
  get detectionBound (): number {
    return detectionBound(this.#settings)
  }

  /**
   * Starts pinging a socket; the first ping goes out one `pingInterval` from now. The socket is
   * untracked by itself when it emits 'close'. `overrides` apply to this socket only, on top
   * of the manager's settings (keys left out keep the manager's value), and are validated the
   * same way, `maxDetectionTime` included. Pings are never sent on a socket that is not OPEN:
   * a client socket still CONNECTING is skipped, with no miss, until it is open.
   * @returns true when tracking started; false when the socket was already tracked by this
   * manager (nothing changes: the first callback and settings stay) or is closing or closed.
   * @throws FST_WSM_OPTION_INVALID for an invalid override (the socket is not tracked).
   */
  startHeartbeat<T extends WebSocket> (ws: T, onTimeout: HeartbeatTimeoutCallback<T>, overrides?: HeartbeatOverrides): boolean {
    const settings = overrides === undefined
      ? this.#settings
      : resolveSettings(section('overrides', overrides, OVERRIDE_KEYS), this.#settings, this.#maxDetectionTime, '')
    if (this.#states.has(ws) || ws.readyState > OPEN) return false

    const state: State = {
      socket: ws,
      onTimeout: onTimeout as HeartbeatTimeoutCallback,
      interval: settings.pingInterval,
      timeout: settings.pongTimeout,
      maxMissed: settings.maxMissedPongs,
      due: performance.now() + settings.pingInterval,
      index: -1,
      awaiting: false,
      missed: 0,
      pingAt: -1,
      pongAt: -1,
      latency: -1,
      pingsSent: 0,
      pongsReceived: 0
    }
    this.#states.set(ws, state)
    this.#push(state)
    ws.on('pong', this.#onPong)
    ws.on('close', this.#onClose)
    this.#arm()
    return true
  }

  /**
   * Stops tracking a socket: removes its state, its listeners and, with the last socket, the
   * timer. Idempotent. Does not run the timeout callback.
   * @returns whether the socket was tracked.
   */
  stopHeartbeat (ws: WebSocket): boolean {
    const state = this.#states.get(ws)
    if (state === undefined) return false
    this.#untrack(state)
    this.#arm()
    return true
  }

  /** Whether the socket is tracked and has no miss outstanding; false for an untracked socket. */
  isConnectionHealthy (ws: WebSocket): boolean {
    const state = this.#states.get(ws)
    return state !== undefined && state.missed === 0
  }

  /** Whether the socket is tracked by this manager. */
  isTracked (ws: WebSocket): boolean {
    return this.#states.has(ws)
  }

  /** A snapshot of one socket's figures, or undefined when it is not tracked. */
  getHeartbeatStats (ws: WebSocket): HeartbeatStats | undefined {
    const state = this.#states.get(ws)
    return state === undefined ? undefined : statsOf(state)
  }

  /** A snapshot of every tracked socket's figures, as a new Map keyed by socket. O(n). */
  getAllHeartbeatStats (): Map<WebSocket, HeartbeatStats> {
    const all = new Map<WebSocket, HeartbeatStats>()
    for (const [ws, state] of this.#states) all.set(ws, statsOf(state))
    return all
  }

  /** Aggregate figures; one pass over the tracked sockets, allocating only the result. O(n). */
  getStats (): HeartbeatManagerStats {
    const heap = this.#heap
    let healthy = 0
    let latencySum = 0
    let latencyCount = 0
    for (let i = 0; i < heap.length; i++) {
      const s = heap[i]
      if (s.missed === 0) healthy++
      if (s.latency >= 0) {
        latencySum += s.latency
        latencyCount++
      }
    }
    return {
      tracked: heap.length,
      healthy,
      unhealthy: heap.length - healthy,
      averageLatency: latencyCount === 0 ? null : latencySum / latencyCount,
      pingsSent: this.#pingsSent,
      pongsReceived: this.#pongsReceived,
      missedPongs: this.#missedPongs,
      timeouts: this.#timeouts
    }
  }

  /** The aggregate figures as one readable line. */
  getSummary (): string {
    const s = this.getStats()
    const latency = s.averageLatency === null ? 'n/a' : `${s.averageLatency.toFixed(1)} ms`
    return `heartbeat: ${s.tracked} tracked (${s.healthy} healthy, ${s.unhealthy} unhealthy), ` +
      `average latency ${latency}, ${s.pingsSent} pings, ${s.pongsReceived} pongs, ` +
      `${s.missedPongs} missed, ${s.timeouts} timeouts`
  }

  /** Stops tracking every socket and clears the timer. Runs no timeout callback. */
  stopAll (): void {
    const heap = this.#heap
    while (heap.length > 0) this.#untrack(heap[heap.length - 1])
    if (this.#resume !== undefined) {
      clearImmediate(this.#resume)
      this.#resume = undefined
    }
    this.#arm()
  }

  #untrack (state: State): void {
    this.#states.delete(state.socket)
    this.#remove(state)
    state.socket.removeListener('pong', this.#onPong)
    state.socket.removeListener('close', this.#onClose)
  }

  #pong (ws: WebSocket): void {
    const state = this.#states.get(ws)
    // EventEmitter calls the listeners it had when the pong arrived, so an earlier 'pong'
    // listener that stopped the heartbeat still leads here.
    if (state === undefined) return
    const now = performance.now()
    state.pongAt = now
    state.pongsReceived++
    this.#pongsReceived++
    if (!state.awaiting) return // unsolicited; `missed` is always 0 while nothing is outstanding
    // After a miss a late pong cannot be told from the answer to the retry, so only a pong
    // to the first ping of a round gives a latency sample.
    if (state.missed === 0) {
      state.latency = now - state.pingAt
      if (this.onLatency !== null) this.onLatency(state.latency)
    }
    state.missed = 0
    state.awaiting = false
    // Next ping one interval after the answered one went out (`due` is its deadline). As
    // pongTimeout < pingInterval that is later than now, so the socket only moves down.
    state.due = state.due - state.timeout + state.interval
    this.#siftDown(state.index)
  }

  #tick (): void {
    this.#timer = undefined
    this.#resume = undefined
    const heap = this.#heap
    const now = performance.now()
    const limit = now + TICK_SLACK_MS
    let error: unknown
    let pings = 0
    this.#ticking = true
    // Each step moves the root later than its limit or removes it, so the loop ends; callbacks
    // may start or stop sockets meanwhile, which is why the root is read again every time.
    // Pong deadlines are handled only once due; pings up to PING_EARLY_SHARE early.
    while (heap.length > 0) {
      const state = heap[0]
      if (state.due > (state.awaiting ? limit : limit + state.interval * PING_EARLY_SHARE)) break
      if (pings >= MAX_PINGS_PER_TICK) {
        this.#resume = setImmediate(this.#onTimer)
        this.#resume.unref()
        break
      }
      pings++
      if (state.awaiting) {
        state.missed++
        this.#missedPongs++
        if (state.missed >= state.maxMissed) {
          this.#untrack(state)
          this.#timeouts++
          try {
            state.onTimeout(state.socket, statsOf(state))
          } catch (err) {
            error ??= err
          }
          continue
        }
        // Retry at once. The deadline runs even when the socket is no longer OPEN and no ping
        // could go out, so a socket stuck in CLOSING with a silent peer is still found.
        state.due = this.#ping(state, now) + state.timeout
      } else if (state.socket.readyState === OPEN) {
        state.due = this.#ping(state, now) + state.timeout
        state.awaiting = true
      } else {
        // CONNECTING (client side) or CLOSING with nothing outstanding: no ping, no miss.
        state.due = now + state.interval
      }
      this.#siftDown(0)
    }
    this.#ticking = false
    this.#arm()
    // A throwing callback must not stop the heartbeat of every other socket; it surfaces
    // like a throwing event listener would, after the manager's state is consistent.
    if (error !== undefined) process.nextTick(rethrow, error)
  }

  /** Pings if the socket is OPEN; returns when the ping went out (or `now` when none could). */
  #ping (state: State, now: number): number {
    if (state.socket.readyState !== OPEN) return now
    const at = performance.now()
    state.socket.ping()
    state.pingAt = at
    state.pingsSent++
    this.#pingsSent++
    return at
  }

  #arm (): void {
    if (this.#ticking || this.#resume !== undefined) return
    const heap = this.#heap
    if (heap.length === 0) {
      if (this.#timer !== undefined) {
        clearTimeout(this.#timer)
        this.#timer = undefined
      }
      return
    }
    const due = heap[0].due
    if (this.#timer !== undefined) {
      // An earlier timer is kept: when it fires with nothing due it re-arms, which is cheaper
      // than clearing and re-creating it on every pong that moves the earliest socket later.
      if (this.#timerDue <= due) return
      clearTimeout(this.#timer)
    }
    this.#timerDue = due
    this.#timer = setTimeout(this.#onTimer, Math.max(0, Math.ceil(due - performance.now())))
    this.#timer.unref()
  }

  #push (state: State): void {
    state.index = this.#heap.length
    this.#heap.push(state)
    this.#siftUp(state.index)
  }

  #remove (state: State): void {
    const heap = this.#heap
    const i = state.index
    const last = heap.pop() as State
    state.index = -1
    if (last === state) return
    heap[i] = last
    last.index = i
    this.#siftDown(i)
    this.#siftUp(last.index)
  }

  #siftUp (i: number): void {
    const heap = this.#heap
    const state = heap[i]
    while (i > 0) {
      const p = (i - 1) >> 1
      const parent = heap[p]
      if (parent.due <= state.due) break
      heap[i] = parent
      parent.index = i
      i = p
    }
    heap[i] = state
    state.index = i
  }

  #siftDown (i: number): void {
    const heap = this.#heap
    const n = heap.length
    const state = heap[i]
    for (;;) {
      let c = 2 * i + 1
      if (c >= n) break
      if (c + 1 < n && heap[c + 1].due < heap[c].due) c++
      const child = heap[c]
      if (child.due >= state.due) break
      heap[i] = child
      child.index = i
      i = c
    }
    heap[i] = state
    state.index = i
  }
}
