// Staged drain for a rolling deploy: the node stops taking upgrades and closes its connections
// in batches spread over a duration with random jitter, so that clients reconnect to the other
// nodes at a steady pace instead of all at once.
import { checkCloseRequest, type CloseResult } from './close'
import { CloseCode, errors } from './errors'

/** What `wsManager.drain()` does. */
export interface DrainOptions {
  /** Milliseconds (0 to 3600000) over which the connections are closed; 0 closes them all at once. @default 30000 */
  duration?: number
  /** Close code sent to each connection; 1012 Service Restart tells clients to reconnect. @default 1012 */
  code?: number
  /** Close reason (cut to 123 bytes). @default 'Service restart' */
  reason?: string
  /**
   * Number of batches (1 to 100000). The default gives a batch every 250 ms or so, each at a
   * random moment of the middle half of its slot, which keeps any second's closes under about
   * 1.4 times the average pace (two closes when the pace is under one a second); fewer batches
   * make bigger bursts.
   * @default min(connections, max(1, floor(duration / 250)))
   */
  batches?: number
}

/** How a drain ended. */
export interface DrainResult {
  /** Connections open when the drain began. */
  connections: number
  /** Batches it was split into. */
  batches: number
  /** Connections the drain closed with a finished close handshake. */
  clean: number
  /** Connections the drain had to terminate (no close frame back within `close.timeout`). */
  forced: number
  /** Connections that closed otherwise meanwhile (the peer, a shutdown, the application). */
  closedOtherwise: number
  /** Milliseconds from the call until the last connection closed. */
  durationMs: number
}

/** The drain's defaults. */
export const DRAIN_DEFAULTS = Object.freeze({ duration: 30_000, code: CloseCode.SERVICE_RESTART, reason: 'Service restart' })

/** The longest drain: an hour. */
export const MAX_DRAIN_DURATION = 3_600_000
const MAX_BATCHES = 100_000
// A batch every 250 ms: any one-second window then holds at most five batches of a quarter
// second's share each, 1.25 times the average pace.
const BATCH_SPACING_MS = 250

/** A drain request after validation. */
export interface CheckedDrain {
  duration: number
  code: number
  reason: string
  batches: number | null
}

function isInt (value: unknown, min: number, max: number): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= min && value <= max
}

/** Validates a drain request; returns the error rather than throwing (the API rejects with it). */
export function checkDrainRequest (input: unknown): CheckedDrain | Error {
  if (input === undefined) input = {}
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    return new errors.FST_WSM_ARGUMENT_INVALID('options', 'expected an object of duration, code, reason and batches')
  }
  const given = input as Record<string, unknown>
  for (const key of Object.keys(given)) {
    if (!['duration', 'code', 'reason', 'batches'].includes(key)) return new errors.FST_WSM_ARGUMENT_INVALID(key, 'unknown drain option; expected duration, code, reason or batches')
  }
  const duration = given.duration === undefined ? DRAIN_DEFAULTS.duration : given.duration
  if (!isInt(duration, 0, MAX_DRAIN_DURATION)) return new errors.FST_WSM_ARGUMENT_INVALID('duration', `expected an integer from 0 to ${MAX_DRAIN_DURATION} ms, got ${String(duration)}`)
  if (given.batches !== undefined && !isInt(given.batches, 1, MAX_BATCHES)) {
    return new errors.FST_WSM_ARGUMENT_INVALID('batches', `expected an integer from 1 to ${MAX_BATCHES}, got ${String(given.batches)}`)
  }
  const close = checkCloseRequest(given.code === undefined ? DRAIN_DEFAULTS.code : given.code,
    given.reason === undefined ? DRAIN_DEFAULTS.reason : given.reason, undefined, 1)
  if (close instanceof Error) return close
  return { duration, code: close.code, reason: close.reason, batches: (given.batches as number | undefined) ?? null }
}

/**
 * When each batch fires, in ms from the start: batch i at a random moment of the middle half
 * of its own slot [i, i + 1) × duration / batches, so two batches are always at least half a
 * slot apart and no two drains are alike.
 */
export function planBatches (duration: number, batches: number, random: () => number = Math.random): number[] {
  const slot = duration / batches
  const times: number[] = []
  for (let i = 0; i < batches; i++) times.push(Math.floor(i * slot + slot / 4 + random() * slot / 2))
  return times
}

/** The default number of batches for `connections` over `duration`. */
export function defaultBatches (connections: number, duration: number): number {
  return Math.max(1, Math.min(connections, Math.floor(duration / BATCH_SPACING_MS)))
}

/** What a drain needs of a connection. */
export interface Drainable {
  readonly state: string
  close (code: number, reason: string): Promise<CloseResult>
}

/**
 * One drain. Each batch takes its share of the connections still open at that moment
 * (those open / batches left), picked at random, so connections that leave by themselves are
 * neither waited for nor held, and the pace follows what is left. Resolves once the registry
 * is empty. `stop()` cancels the batches not yet fired (a shutdown closes the rest).
 */
export class Drain {
  readonly promise: Promise<DrainResult>
  readonly batches: number
  #timers: NodeJS.Timeout[] = []
  #clean = 0
  #forced = 0
  #pending = 0
  #started = Date.now()

  constructor (count: number, live: () => Iterable<Drainable>, request: CheckedDrain, registryEmpty: Promise<void>) {
    const batches = count === 0 ? 0 : request.duration === 0 ? 1 : Math.min(count, request.batches ?? defaultBatches(count, request.duration))
    this.batches = batches
    const times = planBatches(request.duration, batches)
    for (let i = 0; i < batches; i++) {
      const left = batches - i
      const fire = (): void => {
        const open: Drainable[] = []
        for (const connection of live()) if (connection.state === 'open') open.push(connection)
        // A partial Fisher-Yates: the first `take` places get a random pick of the rest.
        const take = left === 1 ? open.length : Math.ceil(open.length / left)
        for (let k = 0; k < take; k++) {
          const j = k + Math.floor(Math.random() * (open.length - k))
          const picked = open[j] as Drainable
          open[j] = open[k] as Drainable
          this.#close(picked, request)
        }
      }
      const delay = times[i] as number
      if (delay === 0) fire()
      else this.#timers.push(setTimeout(fire, delay))
    }
    this.promise = registryEmpty.then(async () => {
      this.stop()
      // The registry empties as each socket closes; the close promises settle in the same tick.
      while (this.#pending > 0) await new Promise((resolve) => setImmediate(resolve))
      return {
        connections: count,
        batches,
        clean: this.#clean,
        forced: this.#forced,
        closedOtherwise: count - this.#clean - this.#forced,
        durationMs: Date.now() - this.#started
      }
    })
  }

  #close (connection: Drainable, request: CheckedDrain): void {
    this.#pending++
    connection.close(request.code, request.reason).then((result) => {
      if (result.clean) this.#clean++
      else this.#forced++
    }, () => { this.#forced++ }).finally(() => { this.#pending-- })
  }

  /** Cancels the batches not yet fired. */
  stop (): void {
    for (const timer of this.#timers) clearTimeout(timer)
    this.#timers = []
  }
}
