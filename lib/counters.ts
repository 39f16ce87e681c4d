/** How many distinct keys a per-user or per-IP counter map holds before it stops adding keys. */
export const MAX_COUNTER_KEYS = 10_000

/**
 * Counts per key (a user id, an IP) with a bound on the number of keys: past `maxKeys`, new
 * keys are summed in `untracked` instead, so a stream of new users or addresses cannot grow
 * memory without limit. The key space belongs to the caller: user ids and IPs go in separate
 * instances, never in one map with a prefix that a crafted id could imitate.
 */
export class BoundedCounts<V extends object> {
  readonly #entries = new Map<string, V>()
  readonly #create: () => V
  readonly #maxKeys: number
  /** The entry that collects every key past the bound. */
  readonly untracked: V

  constructor (create: () => V, maxKeys = MAX_COUNTER_KEYS) {
    this.#create = create
    this.#maxKeys = maxKeys
    this.untracked = create()
  }

  /** The entry of a key: its own while there is room, else the shared untracked entry. */
  entry (key: string): V {
    let value = this.#entries.get(key)
    if (value !== undefined) return value
    if (this.#entries.size >= this.#maxKeys) return this.untracked
    value = this.#create()
    this.#entries.set(key, value)
    return value
  }

  /** How many keys have an entry of their own. */
  get size (): number {
    return this.#entries.size
  }

  /** A copy of every entry, as a plain object. */
  snapshot (): Record<string, V> {
    const out: Record<string, V> = {}
    // defineProperty: a key such as `__proto__` (ids come from clients) stays a key.
    for (const [key, value] of this.#entries) own(out, key, { ...value })
    return out
  }
}

/** One number per key; see {@link BoundedCounts}. */
export interface Count { n: number }

/** A new zero count. */
export function zeroCount (): Count {
  return { n: 0 }
}

/** `{ key: n }` from a BoundedCounts of counts. */
export function countsOf (counts: BoundedCounts<Count>): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [key, value] of Object.entries(counts.snapshot())) own(out, key, value.n)
  return out
}

function own<T> (target: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true })
}
