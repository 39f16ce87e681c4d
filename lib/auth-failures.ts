/** The failed-authentication budget. */
export interface FailureLimitOptions {
  /**
   * Failed authentications allowed per (IP, claimed subject) in `timeWindow`: one client
   * retrying a bad token for one user is stopped here, without locking out the other users
   * behind the same address (a NAT, a corporate proxy).
   * @default 10
   */
  max: number
  /**
   * Failed authentications allowed per IP (IPv6 per /64) in `timeWindow`, whatever the
   * subject: the bound on a client that rotates subjects. Ten times `max` by default, so a
   * shared address is refused only well above what one client may fail.
   * @default 100
   */
  ipMax: number
  /** Milliseconds the counts are kept. @default 60000 */
  timeWindow: number
}

interface Window { count: number, resetAt: number }

// A spray of addresses or subjects could otherwise grow the maps without bound; past this
// many keys, expired ones are swept and then the oldest are evicted (a Map iterates in
// insertion order).
const MAX_ENTRIES = 100_000

class FixedWindows {
  readonly #max: number
  readonly #window: number
  readonly #entries = new Map<string, Window>()

  constructor (max: number, timeWindow: number) {
    this.#max = max
    this.#window = timeWindow
  }

  /** Milliseconds until the key may try again, or 0 when it is under its budget. */
  blockedFor (key: string, now: number): number {
    const entry = this.#entries.get(key)
    if (entry === undefined) return 0
    if (entry.resetAt <= now) {
      this.#entries.delete(key)
      return 0
    }
    return entry.count >= this.#max ? entry.resetAt - now : 0
  }

  fail (key: string, now: number): void {
    const entry = this.#entries.get(key)
    if (entry !== undefined && entry.resetAt > now) {
      entry.count++
      return
    }
    if (entry !== undefined) this.#entries.delete(key)
    else if (this.#entries.size >= MAX_ENTRIES) this.#evict(now)
    this.#entries.set(key, { count: 1, resetAt: now + this.#window })
  }

  refund (key: string, now: number): void {
    const entry = this.#entries.get(key)
    if (entry === undefined || entry.resetAt <= now) return
    if (--entry.count <= 0) this.#entries.delete(key)
  }

  get size (): number {
    return this.#entries.size
  }

  #evict (now: number): void {
    for (const [key, entry] of this.#entries) if (entry.resetAt <= now) this.#entries.delete(key)
    let excess = this.#entries.size - Math.floor(MAX_ENTRIES * 0.9)
    for (const key of this.#entries.keys()) {
      if (excess-- <= 0) break
      this.#entries.delete(key)
    }
  }
}

/**
 * Counts failed authentications per (IP, claimed subject) and per IP, in fixed windows; O(1)
 * per check. The subject is whatever the refused token claimed (unverified, so an attacker
 * can name anyone): keying by IP *and* subject means naming a victim locks out only that
 * victim's attempts from the attacker's own address.
 */
export class FailureBudget {
  readonly #pairs: FixedWindows
  readonly #ips: FixedWindows

  constructor (options: FailureLimitOptions) {
    this.#pairs = new FixedWindows(options.max, options.timeWindow)
    this.#ips = new FixedWindows(options.ipMax, options.timeWindow)
  }

  /** Seconds until this (IP, subject) may try again, or 0 when both budgets have room. */
  blockedFor (ip: string, subject: string, now: number): number {
    const pair = subject === '' ? 0 : this.#pairs.blockedFor(pairKey(ip, subject), now)
    const wait = Math.max(this.#ips.blockedFor(ip, now), pair)
    return wait === 0 ? 0 : Math.ceil(wait / 1000)
  }

  /**
   * Counts one attempt as failed. Called before verifying, so attempts in flight at once
   * cannot pass the budget together; {@link refund} takes it back when it succeeds. An attempt
   * without a subject (no token, an unreadable one) counts against the IP only.
   */
  fail (ip: string, subject: string, now: number): void {
    this.#ips.fail(ip, now)
    if (subject !== '') this.#pairs.fail(pairKey(ip, subject), now)
  }

  /** Takes back a {@link fail} whose attempt succeeded. */
  refund (ip: string, subject: string, now: number): void {
    this.#ips.refund(ip, now)
    if (subject !== '') this.#pairs.refund(pairKey(ip, subject), now)
  }

  /** Keys counted now: (IP, subject) pairs and IPs. */
  get size (): { pairs: number, ips: number } {
    return { pairs: this.#pairs.size, ips: this.#ips.size }
  }
}

// A NUL cannot occur in an IP key, so no subject can make two pairs collide.
function pairKey (ip: string, subject: string): string {
  return `${ip}\u0000${subject}`
}
