// Redis as the cross-node benchmark (bench/cluster.ts) sees it: a check that it answers, its
// CPU time, and the commands a fixed number of calls cost, read with MONITOR.
//
// MONITOR rather than INFO commandstats alone: the Redis may be shared (a test suite, another
// run), and INFO counts every client. MONITOR names the client of each command, so the count
// keeps only the clients that touched this run's prefix during the window (the nodes' own
// connections) and counts every command they sent, prefixed or not. The INFO delta is kept
// beside it as a cross-check. The nodes also refresh their presence in Redis every few
// seconds; a refresh that falls in the window is no cost of the calls, so the window is
// measured a few times and the one with the fewest commands counts (all are recorded).

import { connect as tcpConnect, type Socket } from 'node:net'
import { Redis } from 'ioredis'

export interface CommandCount {
  calls: number
  /** Commands the run's clients sent, per call. */
  perCall: number
  /** Commands by name, over all the calls (not per call). */
  byCommand: Record<string, number>
  /** INFO commandstats delta over the window, every client, by name (info and monitor left out). */
  infoDelta: Record<string, number>
  /** Commands per call of every try; the fewest is the figure above. */
  tries: number[]
}

interface MonitorLine {
  line: string
  source: string
  command: string
}

/** `+1700000000.123456 [0 127.0.0.1:5000] "PUBLISH" "channel" "payload"`: who sent which command. */
function parseMonitorLine (line: string): MonitorLine | null {
  const m = /^\+\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"/.exec(line)
  return m === null ? null : { line, source: m[1], command: m[2].toLowerCase() }
}

// MONITOR over a plain socket: its output is one simple string per command, and a client
// library's command queue has no place for a stream of replies nobody asked for.
class Monitor {
  readonly lines: string[] = []
  readonly #socket: Socket
  #rest = ''

  private constructor (socket: Socket) {
    this.#socket = socket
  }

  static async open (url: string): Promise<Monitor> {
    const { hostname, port, password, username } = new URL(url)
    const socket = tcpConnect({ host: hostname.replace(/^\[|\]$/g, ''), port: Number(port === '' ? 6379 : port) })
    const monitor = new Monitor(socket)
    socket.setEncoding('utf8')
    await within(new Promise<void>((resolve, reject) => {
      socket.once('error', reject)
      socket.on('data', (chunk: string) => {
        const text = monitor.#rest + chunk
        const parts = text.split('\r\n')
        monitor.#rest = parts.pop() ?? ''
        for (const part of parts) {
          if (part === '+OK') resolve()
          else if (part.startsWith('-')) reject(new Error(`Redis refused MONITOR: ${part.slice(1)}`))
          else monitor.lines.push(part)
        }
      })
      const auth = password === '' ? '' : `AUTH ${username === '' ? '' : `${decodeURIComponent(username)} `}${decodeURIComponent(password)}\r\n`
      socket.write(`${auth}MONITOR\r\n`)
    }), 3000, 'Redis MONITOR').catch((err: unknown) => {
      socket.destroy()
      throw err
    })
    socket.on('error', () => {})
    return monitor
  }

  close (): void {
    this.#socket.destroy()
  }
}

function connect (url: string): Redis {
  // No retries: a Redis that is not there fails the run at once, with its address.
  return new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => null, connectTimeout: 3000 })
}

async function within<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([promise, new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)
    })])
  } finally {
    clearTimeout(timer)
  }
}

/** The Redis the run uses, with a deadline on every call. */
export class BenchRedis {
  readonly url: string
  readonly #client: Redis

  private constructor (url: string, client: Redis) {
    this.url = url
    this.#client = client
  }

  /** Connects and checks the server answers; rejects naming the URL when it does not. */
  static async open (url: string): Promise<BenchRedis> {
    const client = connect(url)
    client.on('error', () => {})
    try {
      await within(client.connect(), 5000, `Redis at ${url}`)
      await within(client.ping(), 2000, `Redis at ${url}`)
    } catch (err) {
      client.disconnect()
      throw new Error(`Redis at ${url} is needed for the cluster benchmark: ${err instanceof Error ? err.message : String(err)}`)
    }
    return new BenchRedis(url, client)
  }

  async version (): Promise<string> {
    const info = await within(this.#client.info('server'), 2000, 'Redis INFO server')
    return /redis_version:(\S+)/.exec(info)?.[1] ?? 'unknown'
  }

  /** Redis's CPU time so far (user + system, all its threads), µs. */
  async cpuUs (): Promise<number> {
    const info = await within(this.#client.info('cpu'), 2000, 'Redis INFO cpu')
    const read = (name: string): number => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1] ?? 0)
    return (read('used_cpu_user') + read('used_cpu_sys')) * 1e6
  }

  async #commandstats (): Promise<Record<string, number>> {
    const info = await within(this.#client.info('commandstats'), 2000, 'Redis INFO commandstats')
    const out: Record<string, number> = {}
    for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) out[m[1]] = Number(m[2])
    return out
  }

  /**
   * Runs `body` (which makes `calls` calls) under MONITOR and counts the commands sent by
   * the clients that named `prefix` in the window.
   */
  async countCommands (prefix: string, calls: number, body: () => Promise<unknown>, tries = 3): Promise<CommandCount> {
    let best: Omit<CommandCount, 'tries'> | null = null
    const all: number[] = []
    for (let i = 0; i < tries; i++) {
      const count = await this.#countOnce(prefix, calls, body)
      all.push(count.perCall)
      if (best === null || count.perCall < best.perCall) best = count
    }
    if (best === null) throw new Error('countCommands needs one try at least')
    return { ...best, tries: all }
  }

  async #countOnce (prefix: string, calls: number, body: () => Promise<unknown>): Promise<Omit<CommandCount, 'tries'>> {
    const monitor = await Monitor.open(this.url)
    const before = await this.#commandstats()
    try {
      await body()
      // MONITOR's stream trails the replies to the commands by a moment.
      await new Promise((resolve) => setTimeout(resolve, 50))
    } finally {
      monitor.close()
    }
    const after = await this.#commandstats()
    const seen = monitor.lines.map(parseMonitorLine).filter((l): l is MonitorLine => l !== null)
    // Commands a script runs show up as the client "lua"; the EVALSHA that ran it is counted already.
    const sources = new Set(seen.filter((l) => l.source !== 'lua' && l.line.includes(prefix)).map((l) => l.source))
    const byCommand: Record<string, number> = {}
    let total = 0
    for (const l of seen) {
      if (!sources.has(l.source)) continue
      byCommand[l.command] = (byCommand[l.command] ?? 0) + 1
      total++
    }
    const infoDelta: Record<string, number> = {}
    for (const [name, count] of Object.entries(after)) {
      const d = count - (before[name] ?? 0)
      if (d > 0 && name !== 'info' && name !== 'monitor') infoDelta[name] = d
    }
    return { calls, perCall: total / calls, byCommand, infoDelta }
  }

  /** Deletes whatever keys the run left under its prefix (a plugin node registry, if any). */
  async cleanup (prefix: string): Promise<number> {
    let removed = 0
    let cursor = '0'
    // Bounded: a run leaves a handful of keys; 100 pages is far more than enough.
    for (let page = 0; page < 100; page++) {
      const [next, keys] = await within(this.#client.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500), 2000, 'Redis SCAN')
      if (keys.length > 0) removed += await within(this.#client.del(...keys), 2000, 'Redis DEL')
      cursor = next
      if (cursor === '0') break
    }
    return removed
  }

  close (): void {
    this.#client.disconnect()
  }
}
