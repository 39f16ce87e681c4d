// A typed emitter small enough to ship to a browser: the client may not import Node's
// 'events'. A listener that throws is reported through `onListenerError` and never stops the
// other listeners nor the client's own bookkeeping, which runs after an emit.

/** Listener signatures by event name. */
export type EventMap = object

/** Subscribes and unsubscribes listeners of the events in `Events`. */
export class Emitter<Events extends EventMap> {
  readonly #listeners = new Map<keyof Events, Set<(payload: never) => void>>()
  readonly #onListenerError: (err: unknown) => void

  constructor (onListenerError: (err: unknown) => void) {
    this.#onListenerError = onListenerError
  }

  /** Adds `listener` for `event`; returns a function that removes it. */
  on<K extends keyof Events> (event: K, listener: (payload: Events[K]) => void): () => void {
    let set = this.#listeners.get(event)
    if (set === undefined) {
      set = new Set()
      this.#listeners.set(event, set)
    }
    set.add(listener)
    return () => { this.off(event, listener) }
  }

  /** Adds `listener` for the next `event` only. */
  once<K extends keyof Events> (event: K, listener: (payload: Events[K]) => void): () => void {
    const off = this.on(event, (payload) => {
      off()
      listener(payload)
    })
    return off
  }

  /** Removes `listener` from `event`. */
  off<K extends keyof Events> (event: K, listener: (payload: Events[K]) => void): void {
    this.#listeners.get(event)?.delete(listener)
  }

  /** Calls every listener of `event` with `payload`; whether there was one. */
  emit<K extends keyof Events> (event: K, payload: Events[K]): boolean {
    const set = this.#listeners.get(event)
    if (set === undefined || set.size === 0) return false
    // A copy: a listener may remove itself (once) or add others while this runs.
    for (const listener of [...set]) {
      try {
        (listener as (payload: Events[K]) => void)(payload)
      } catch (err) {
        if (event === 'error') throw err
        this.#onListenerError(err)
      }
    }
    return true
  }
}
