// The soak's server child (bench/soak.ts forks it, compiled, with --expose-gc): a Fastify
// app with @fastify/jwt and the plugin (bench/soak-config.ts has the options), one route that
// echoes and, on request, streams to a reader that may have stalled; and the instruments the
// orchestrator samples over IPC. Its log goes to a counter, not to a terminal: closes by code
// and reason, refusals by status, and anything at error level, are what the verdict checks.

import { createHook } from 'node:async_hooks'
import { randomBytes } from 'node:crypto'
import { openSync, readdirSync, readFileSync } from 'node:fs'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { getHeapSpaceStatistics } from 'node:v8'
import { Writable } from 'node:stream'
import jwt from '@fastify/jwt'
import Fastify, { type FastifyInstance } from 'fastify'
import type WebSocket from 'ws'
import wsManager from '../lib/index'
import { serve } from './ipc'
import {
  SOAK_PATH, SOAK_PLUGIN_OPTIONS, STREAM_CHUNK_BYTES, STREAM_COMMAND, STREAM_MAX_BYTES,
  type LogCensus, type SoakSample, type SoakServerSpec
} from './soak-config'

export interface SoakReady {
  port: number
  pid: number
}

const spec = JSON.parse(process.argv[2] ?? '{}') as SoakServerSpec
const gc = (globalThis as { gc?: () => void }).gc
if (gc === undefined) throw new Error('the soak server must run with --expose-gc')
const started = performance.now()

// ---- live async resources by type -------------------------------------------------------
// getActiveResourcesInfo() leaves out unref'd timers, and the plugin's shared timers are
// unref'd; async_hooks sees every timer from creation to clear (or firing). Promises are
// skipped: they are not resources that can leak a handle, and there are many.
const liveTypes = new Map<number, string>()
createHook({
  init (asyncId, type) {
    if (type !== 'PROMISE') liveTypes.set(asyncId, type)
  },
  destroy (asyncId) {
    liveTypes.delete(asyncId)
  }
}).enable()

function countBy (types: Iterable<string>): Record<string, number> {
  const out: Record<string, number> = {}
  for (const t of types) out[t] = (out[t] ?? 0) + 1
  return out
}

// ---- log census ---------------------------------------------------------------------------
const census = new Map<string, number>()
const CENSUS_KEYS = 200

function count (key: string): void {
  const n = census.get(key)
  if (n !== undefined) census.set(key, n + 1)
  else if (census.size < CENSUS_KEYS) census.set(key, 1)
  else census.set('(other)', (census.get('(other)') ?? 0) + 1)
}

interface LogLine {
  level: number
  msg?: string
  code?: number
  reason?: string
  initiatedBy?: string
  statusCode?: number
}

function tally (line: LogLine): void {
  if (line.msg === 'connection closed') count(`close ${String(line.code)} "${line.reason ?? ''}" by ${String(line.initiatedBy)}`)
  else if (line.msg === 'upgrade rejected') count(`refused ${String(line.statusCode)} "${line.reason ?? ''}"`)
  else if (line.level >= 50) count(`error "${line.msg ?? ''}"`)
  else if (line.level >= 40) count(`warn "${line.msg ?? ''}"`)
}

const logSink = new Writable({
  write (chunk: Buffer, _encoding, callback) {
    for (const text of chunk.toString('utf8').split('\n')) {
      if (text === '') continue
      try {
        tally(JSON.parse(text) as LogLine)
      } catch {
        count('unparsable log line')
      }
    }
    callback()
  }
})

// ---- the route ------------------------------------------------------------------------------
const STREAM = Buffer.from(STREAM_COMMAND)
const CHUNK = Buffer.alloc(STREAM_CHUNK_BYTES, 0x61)
const leaked: unknown[] = []

function noop (): void {}

// Sends until the socket stops being open (the backpressure policy closed it) or the cap.
function stream (socket: WebSocket): void {
  let sent = 0
  const pump = (): void => {
    for (let i = 0; i < 16 && socket.readyState === 1 && sent < STREAM_MAX_BYTES; i++) {
      socket.send(CHUNK)
      sent += CHUNK.length
    }
    if (socket.readyState === 1 && sent < STREAM_MAX_BYTES) setImmediate(pump)
  }
  pump()
}

function onMessage (this: WebSocket, data: WebSocket.RawData, isBinary: boolean): void {
  if (!isBinary && Buffer.isBuffer(data) && data.equals(STREAM)) stream(this)
  else this.send(data as Buffer, { binary: isBinary })
}

function onSocket (socket: WebSocket): void {
  socket.on('message', onMessage)
  if (spec.leak.includes('memory')) leaked.push(randomBytes(1024).toString('hex'), Buffer.alloc(2048, 1))
  if (spec.leak.includes('timer')) setInterval(noop, 60_000).unref()
  if (spec.leak.includes('fd')) leaked.push(openSync('/dev/null', 'r'))
}

// ---- sampling -------------------------------------------------------------------------------
const loop = monitorEventLoopDelay({ resolution: 10 })
loop.enable()
let last = { cpu: process.cpuUsage(), at: performance.now() }
let app: FastifyInstance

// kB figures of /proc/self/status, in bytes.
function procStatus (field: string, status: string): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)
  return match === null ? 0 : Number(match[1]) * 1024
}

function sample (): SoakSample {
  const t0 = performance.now()
  // Twice: the first pass can leave work (weak callbacks, finalizers) for the second.
  ;(gc as () => void)()
  ;(gc as () => void)()
  const m = process.memoryUsage()
  const status = readFileSync('/proc/self/status', 'utf8')
  const stats = app.wsManager.stats()
  const cpu = process.cpuUsage(last.cpu)
  const now = performance.now()
  const s: SoakSample = {
    at: Math.round(now - started),
    rss: m.rss,
    rssAnon: procStatus('RssAnon', status),
    rssFile: procStatus('RssFile', status),
    heapUsed: m.heapUsed,
    heapTotal: m.heapTotal,
    external: m.external,
    arrayBuffers: m.arrayBuffers,
    spaces: Object.fromEntries(getHeapSpaceStatistics().map((space) => [space.space_name, space.space_used_size])),
    fds: readdirSync('/proc/self/fd').length,
    active: countBy(process.getActiveResourcesInfo()),
    live: countBy(liveTypes.values()),
    registry: app.wsManager.connections.size,
    wsClients: app.websocketServer.clients.size,
    closing: stats.close.closing,
    heartbeatTracked: stats.heartbeat.tracked,
    buckets: stats.admission.messages?.buckets ?? 0,
    deliveryUsers: Object.keys(stats.delivery.byUser).length,
    refusedUsers: Object.keys(stats.admission.messages?.refusedByUser ?? {}).length,
    frameUsers: Object.keys(stats.frames.violationsByUser).length,
    frameConnections: Object.keys(stats.frames.violationsByConnection).length,
    opened: stats.connections.opened,
    closed: stats.connections.closed,
    idleClosed: stats.connections.idleClosed,
    heartbeatClosed: stats.connections.heartbeatClosed,
    expiredClosed: stats.connections.expiredClosed,
    slowConsumerCloses: stats.delivery.slowConsumerCloses,
    refused: stats.admission.refused,
    cpuMs: (cpu.user + cpu.system) / 1000,
    wallMs: now - last.at,
    loopMaxMs: loop.max / 1e6,
    sampleMs: performance.now() - t0
  }
  loop.reset()
  last = { cpu: process.cpuUsage(), at: performance.now() }
  return s
}

const api = {
  sample,

  census (): LogCensus {
    return Object.fromEntries(census)
  },

  /** Closes the app (every connection gets the shutdown code) and exits. */
  async shutdown (): Promise<true> {
    await app.close()
    setImmediate(() => process.exit(0))
    return true
  },

  exit (): true {
    setImmediate(() => process.exit(0))
    return true
  }
}

/** The commands bench/soak.ts sends to the server child. */
export type SoakServerApi = typeof api

async function main (): Promise<void> {
  // Request logging stays on, as in production: two more lines per upgrade.
  app = Fastify({ logger: { level: 'info', stream: logSink } })
  await app.register(jwt, { secret: spec.secret, verify: { algorithms: ['HS256'] } })
  await app.register(wsManager, SOAK_PLUGIN_OPTIONS)
  app.get(SOAK_PATH, { websocket: true }, onSocket)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  // The orchestrator's watchdog is the real bound; this only catches an orphan.
  serve(api, 3 * 60 * 60_000)
  const ready: SoakReady = { port: address.port, pid: process.pid }
  process.send?.({ ready })
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
