// The idle timeout: closes a connection that sent and received no data message for its
// route's idleTimeout.
//
// A pass over every connection every second costs O(connections) a second whatever the
// timeout (1.7 ms a pass at 19,500 connections, BENCHMARKS.md), though a connection with a
// 300 s timeout can only become due once in 300 s. Here each connection is filed under the
// tick (a multiple of the check interval) at which it would be due if nothing happened; the
// timer looks only at the tick that came due. A connection found active since it was filed
// (its lastActivityAt moved) is filed again under its new due tick. So an active connection
// costs one look per idleTimeout, an idle one is closed within one interval of its due time,
// and the per-message path keeps writing one number (lastActivityAt) and nothing else.

/** What the sweeper needs of a connection. */
export interface IdleTracked {
  readonly state: string
  readonly lastActivityAt: number
  readonly settings: { readonly idleTimeout: number }
}

export class IdleSweeper<C extends IdleTracked> {
  readonly #intervalMs: number
  readonly #onIdle: (connection: C, idleMs: number) => void
  /** Connections by the tick at which they become due. */
  readonly #due = new Map<number, Set<C>>()
  /** Each tracked connection's set, for removal in O(1). */
  readonly #filed = new Map<C, Set<C>>()
  /** The last tick the timer has handled. */
  #handled: number
  #timer: NodeJS.Timeout | null = null

  constructor (intervalMs: number, onIdle: (connection: C, idleMs: number) => void) {
    this.#intervalMs = intervalMs
    this.#onIdle = onIdle
    this.#handled = Math.floor(Date.now() / intervalMs)
  }

  get size (): number {
    return this.#filed.size
  }

  /** Starts watching a connection whose route has an idle timeout. */
  add (connection: C): void {
    if (connection.settings.idleTimeout <= 0 || this.#filed.has(connection)) return
    this.#file(connection)
    if (this.#timer === null) {
      this.#timer = setInterval(this.#run, this.#intervalMs)
      this.#timer.unref()
    }
  }

  /** Stops watching a connection (it closed). */
  delete (connection: C): void {
    const set = this.#filed.get(connection)
    if (set === undefined) return
    this.#filed.delete(connection)
    set.delete(connection)
  }

  stop (): void {
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
    this.#due.clear()
    this.#filed.clear()
  }

  #file (connection: C): void {
    // The first tick at or after the due time, and never one already handled.
    const tick = Math.max(this.#handled + 1, Math.ceil((connection.lastActivityAt + connection.settings.idleTimeout) / this.#intervalMs))
    let set = this.#due.get(tick)
    if (set === undefined) {
      set = new Set()
      this.#due.set(tick, set)
    }
    set.add(connection)
    this.#filed.set(connection, set)
  }

  readonly #run = (): void => {
    const now = Date.now()
    const current = Math.floor(now / this.#intervalMs)
    if (current <= this.#handled) return
    // Every tick up to now, late timers included: a tick skipped would keep its connections
    // forever. After a long stall (or the clock jumping ahead), the filed ticks, not every one.
    const ticks = current - this.#handled > this.#due.size
      ? [...this.#due.keys()].filter((t) => t <= current).sort((a, b) => a - b)
      : null
    const from = this.#handled + 1
    this.#handled = current
    if (ticks === null) {
      for (let tick = from; tick <= current; tick++) this.#handle(tick, now)
    } else {
      for (const tick of ticks) this.#handle(tick, now)
    }
  }

  #handle (tick: number, now: number): void {
    const set = this.#due.get(tick)
    if (set === undefined) return
    this.#due.delete(tick)
    for (const connection of set) {
      this.#filed.delete(connection)
      if (connection.state !== 'open') continue
      const idleMs = now - connection.lastActivityAt
      if (idleMs >= connection.settings.idleTimeout) this.#onIdle(connection, idleMs)
      else this.#file(connection)
    }
  }
}
