// The clients of the cross-node fan-out benchmark (bench/cluster.ts): a child process holding
// its share of the connections (two such children share them all), `ws` clients for the plugin and socket.io-client (websocket
// transport only) for Socket.IO, so that each side is driven by its usual client over the
// same transport. Each connection keeps one flag per expected message: a message seen twice
// counts as a duplicate, one never seen as missing. Latency, publish stamp to receipt, goes
// into an HDR histogram in microseconds, and into one of two more: deliveries on the node that
// published (local) and those that crossed Redis (remote).

import { build, encodeIntoCompressedBase64, type Histogram } from 'hdr-histogram-js'
import { createRequire } from 'node:module'
import type WebSocket from 'ws'
import { serve } from './ipc'
import { clockOffsetMs, nowUs, type ClusterSystem } from './cluster-common'

const load = createRequire(__filename)

/** One connection to open: the node's port, and who it is (a bearer token for the plugin, a user id for Socket.IO). */
export interface Target {
  /** Index of the node, for telling local deliveries from remote ones. */
  node: number
  port: number
  token: string
  user: string
}

export interface ConnectArgs {
  system: ClusterSystem
  targets: Target[]
  /** Handshakes in progress at once. */
  concurrency: number
  timeoutMs: number
}

export interface ConnectResult {
  opened: number
  failed: number
  firstError: string | null
  wallMs: number
}

export interface Received {
  /** Distinct expected messages received, over all connections. */
  received: number
  duplicates: number
  /** Expected messages a connection never received. */
  missing: number
  /** Messages that were no part of the run (counted calls, strays). */
  other: number
  /** Latencies below zero (clock trouble); recorded as 0. */
  negative: number
  /** First and last receipt, and the earliest publish stamp received, µs of the monotonic clock. */
  firstUs: number
  lastUs: number
  firstStampUs: number
  /** The latency histograms (µs), hdr-histogram-js's compressed base64, for merging: all, local, remote. */
  histogram: string
  local: string
  remote: string
  cpuUs: number
}

// Sources rotate through 127.0.0.2-127.0.0.251 as bench/generator.ts does: each has its own
// ephemeral port range, so repeated runs never run out of ports while old ones sit in TIME_WAIT.
const SOURCE_ADDRESSES = 250
let nextSource = 0
function sourceAddress (): string {
  return `127.0.0.${2 + (nextSource++ % SOURCE_ADDRESSES)}`
}

interface Peer {
  close (): void
  node: number
  seen: Uint8Array
}

const histogramOptions = { lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 } as const
const histogram: Histogram = build(histogramOptions)
const local: Histogram = build(histogramOptions)
const remote: Histogram = build(histogramOptions)
const run = { expected: 0, perPublisher: 1, received: 0, duplicates: 0, other: 0, negative: 0, firstUs: 0, lastUs: 0, firstStampUs: Infinity, cpu: process.cpuUsage() }
const peers: Peer[] = []

// One function for every message of every connection: no closure per message.
function onValue (peer: Peer, value: { t: number, s: number }): void {
  const at = nowUs()
  const seq = value.s
  if (!(seq >= 0 && seq < run.expected)) {
    run.other++
    return
  }
  if (peer.seen[seq] === 1) {
    run.duplicates++
    return
  }
  peer.seen[seq] = 1
  run.received++
  if (run.firstUs === 0) run.firstUs = at
  run.lastUs = at
  if (value.t < run.firstStampUs) run.firstStampUs = value.t
  let latency = Math.round(at - value.t)
  if (latency < 0) {
    run.negative++
    latency = 0
  }
  histogram.recordValue(latency)
  // Node k published sequence numbers k × perPublisher onwards.
  if (Math.floor(seq / run.perPublisher) === peer.node) local.recordValue(latency)
  else remote.recordValue(latency)
}

const kPeer = Symbol('peer')
type Tagged = WebSocket & { [kPeer]?: Peer }

function onWsMessage (this: WebSocket, data: Buffer): void {
  onValue((this as Tagged)[kPeer] as Peer, JSON.parse(data.toString()) as { t: number, s: number })
}

function openWs ({ node, port, token }: Target): Promise<Peer> {
  const WS = load('ws') as typeof import('ws')
  const ws = new WS(`ws://127.0.0.1:${port}/ws`, {
    headers: { authorization: `Bearer ${token}` },
    perMessageDeflate: false,
    localAddress: sourceAddress()
  }) as Tagged
  const peer: Peer = { close: () => ws.terminate(), node, seen: new Uint8Array(0) }
  ws[kPeer] = peer
  ws.on('message', onWsMessage)
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(peer))
    ws.once('error', reject)
    ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused with ${String(res.statusCode)}`)))
  })
}

function openSocketIo ({ node, port, user }: Target): Promise<Peer> {
  const { io } = load('socket.io-client') as typeof import('socket.io-client')
  const socket = io(`http://127.0.0.1:${port}`, {
    path: '/ws',
    transports: ['websocket'],
    forceNew: true,
    reconnection: false,
    timeout: 10_000,
    auth: { user },
    // Passed through to ws in Node; the server turned compression off, so none is negotiated.
    localAddress: sourceAddress()
  } as Parameters<typeof io>[1])
  const peer: Peer = { close: () => socket.disconnect(), node, seen: new Uint8Array(0) }
  socket.on('m', (value: { t: number, s: number }) => onValue(peer, value))
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(peer))
    socket.once('connect_error', reject)
  })
}

const api = {
  clockOffsetMs,

  /** Opens a connection to each target, `concurrency` handshakes at a time. */
  async connect (args: ConnectArgs): Promise<ConnectResult> {
    const started = performance.now()
    const deadline = started + args.timeoutMs
    let next = 0
    let failed = 0
    let firstError: string | null = null
    const worker = async (): Promise<void> => {
      while (next < args.targets.length && performance.now() < deadline) {
        const target = args.targets[next++]
        try {
          peers.push(await (args.system === 'plugin' ? openWs(target) : openSocketIo(target)))
        } catch (err) {
          failed++
          firstError ??= err instanceof Error ? err.message : String(err)
        }
      }
    }
    await Promise.all(Array.from({ length: args.concurrency }, worker))
    return { opened: peers.length, failed, firstError, wallMs: performance.now() - started }
  },

  /**
   * Starts a run of `expected` messages (sequence numbers 0 to expected − 1) to every
   * connection, `perPublisher` from each node in node order.
   */
  expect (args: { expected: number, perPublisher: number }): true {
    run.expected = args.expected
    run.perPublisher = args.perPublisher
    run.received = 0
    run.duplicates = 0
    run.other = 0
    run.negative = 0
    run.firstUs = 0
    run.lastUs = 0
    run.firstStampUs = Infinity
    run.cpu = process.cpuUsage()
    histogram.reset()
    local.reset()
    remote.reset()
    for (const peer of peers) peer.seen = new Uint8Array(args.expected)
    return true
  },

  /** Distinct messages received so far in this run. */
  progress (): number {
    return run.received
  },

  result (): Received {
    const cpu = process.cpuUsage(run.cpu)
    return {
      received: run.received,
      duplicates: run.duplicates,
      missing: run.expected * peers.length - run.received,
      other: run.other,
      negative: run.negative,
      firstUs: run.firstUs,
      lastUs: run.lastUs,
      firstStampUs: Number.isFinite(run.firstStampUs) ? run.firstStampUs : 0,
      histogram: encodeIntoCompressedBase64(histogram),
      local: encodeIntoCompressedBase64(local),
      remote: encodeIntoCompressedBase64(remote),
      cpuUs: cpu.user + cpu.system
    }
  },

  closeAll (): number {
    for (const peer of peers) peer.close()
    const n = peers.length
    peers.length = 0
    return n
  },

  exit (): true {
    api.closeAll()
    setImmediate(() => process.exit(0))
    return true
  }
}

/** The commands bench/cluster.ts can send to the clients. */
export type ClientsApi = typeof api

serve(api, 10 * 60_000)
