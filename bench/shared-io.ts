// What the server children of the benchmarks (bench/server-process.ts for bench/run.ts,
// bench/scale-server.ts for bench/scale.ts) measure alike: CPU and wall time over a window
// from mark() to measure() with how far the child's counters moved in it, and each window
// CPU-profiled into <prefix>-<label>.cpuprofile when a prefix is given (the same V8 profiler as
// --cpu-prof, without start-up and setup). Both children are entry points that start on
// import, so what they share lives here.

import { writeFileSync } from 'node:fs'
import { Session } from 'node:inspector'

/** CPU and wall time of this process over a window. */
export interface CpuSpan {
  /** user + system CPU microseconds, all threads. */
  cpuUs: number
  /** Of which in the kernel (system time): syscalls, and on loopback the peer's TCP receive path too. */
  systemUs: number
  wallMs: number
}

/** Where a child's window profiles go. */
export interface ProfileOptions {
  /** Path prefix of the .cpuprofile files; no profiling when undefined. */
  prefix: string | undefined
  /** Sampling interval in microseconds. */
  intervalUs: number
}

function post (session: Session, method: string, params: object = {}): Promise<unknown> {
  return new Promise((resolve, reject) => session.post(method, params, (err, result) => err === null ? resolve(result) : reject(err)))
}

/**
 * Measurement windows of one child: mark() starts one, measure() ends it with the CPU and
 * wall time in between and how far each of `counters` moved. The child keeps counting in
 * its own `counters` object; this only reads it.
 */
export class CpuWindows<C extends Record<string, number>> {
  readonly #counters: C
  readonly #profile: ProfileOptions
  #profiler: { session: Session, label: string } | null = null
  #mark: { cpu: NodeJS.CpuUsage, at: number, counts: C }

  constructor (counters: C, profile: ProfileOptions) {
    this.#counters = counters
    this.#profile = profile
    this.#mark = { cpu: process.cpuUsage(), at: performance.now(), counts: { ...counters } }
  }

  // The names startProfile/stopProfile are what bench/profile.ts leaves out of a summary.
  /** Starts the profiler for a window named `label`, when there is a prefix. */
  async startProfile (label: string): Promise<void> {
    if (this.#profile.prefix === undefined) return
    const session = new Session()
    session.connect()
    await post(session, 'Profiler.enable')
    await post(session, 'Profiler.setSamplingInterval', { interval: this.#profile.intervalUs })
    await post(session, 'Profiler.start')
    this.#profiler = { session, label }
  }

  /** Stops the profiler, if it runs, and writes its profile. */
  async stopProfile (): Promise<void> {
    if (this.#profiler === null) return
    const { session, label } = this.#profiler
    this.#profiler = null
    const { profile } = await post(session, 'Profiler.stop') as { profile: unknown }
    session.disconnect()
    writeFileSync(`${String(this.#profile.prefix)}-${label}.cpuprofile`, JSON.stringify(profile))
  }

  /** Starts a window: CPU and counters from now (and the profiler, when there is a prefix). */
  async mark (label = 'window'): Promise<void> {
    await this.stopProfile()
    await this.startProfile(label)
    this.#mark = { cpu: process.cpuUsage(), at: performance.now(), counts: { ...this.#counters } }
  }

  /** Ends the window: CPU and wall time since mark(), and how far each counter moved. */
  async measure (): Promise<CpuSpan & Record<keyof C, number>> {
    // Time is read before the profiler stops: writing the profile is not the server's work.
    const d = process.cpuUsage(this.#mark.cpu)
    const wallMs = performance.now() - this.#mark.at
    await this.stopProfile()
    const window: Record<string, number> = { cpuUs: d.user + d.system, systemUs: d.system, wallMs }
    for (const key of Object.keys(this.#counters)) window[key] = this.#counters[key] - this.#mark.counts[key]
    return window as CpuSpan & Record<keyof C, number>
  }
}
