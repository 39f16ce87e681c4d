// Memory and ratio of the permessage-deflate profiles, against ws's own default
// (`perMessageDeflate: true`) and no compression.
//
//   node --import tsx bench/compression-profiles.ts [--n1 500] [--n2 1500] [--messages 50] [--explore] [--only name,name]
//
// Memory: for each profile a fresh server process (run with --expose-gc) and a separate client
// process, so neither the clients nor an earlier profile's freed-but-kept heap pollute the
// server's RSS. The client opens n1 connections (ws client defaults: it offers
// permessage-deflate with client_max_window_bits), each sends one ~10 KiB feed page and
// receives one, so both zlib contexts of every connection exist; then it stays idle. The
// server collects garbage twice and reads process.memoryUsage(); the same again at n2. The
// per-connection cost is the slope (m2 - m1) / (n2 - n1), which cancels fixed costs; the
// "over plain" column subtracts the slope of the run without compression.
//
// Ratio: in this process, one connection per profile receives `messages` distinct feed pages
// (test/fixtures/feed.ts); ratio = bytes the client's TCP socket read / payload bytes. The
// first page alone shows the ratio without context takeover helping. "factor vs ws" is
// (payload / wire) relative to ws's default: 1.0 = as good, 0.9 = 10% less compression.
// ms/msg is wall time for the whole run of pages through loopback (both ends in this
// process): a rough hint of CPU cost, not a measurement of it.
//
// 'shared' runs as the plugin runs that profile: no context takeover either way, and each
// connection frees its zlib contexts once a message is done (freeDeflateContexts from
// lib/internals.ts, applied to every server socket). Its one deflate per broadcast is not
// measured here (bench/scenarios.ts, compression scenario, does that); its ratio is the
// same as a per-connection deflate without context takeover.
//
// --explore adds variants that show the trade-offs; a name ending in * is a what-if the
// library does not implement (see Candidate.releaseIdle).

import { fork } from 'node:child_process'
import { once } from 'node:events'
import { createRequire } from 'node:module'
import type { AddressInfo } from 'node:net'
import { parseArgs } from 'node:util'
import WebSocket, { WebSocketServer } from 'ws'
import { COMPRESSION_PROFILES, perMessageDeflateOptions, type CompressionSettings } from '../lib/compression-profiles'
import { freeDeflateContexts } from '../lib/internals'
import { feedPage } from '../test/fixtures/feed'

type PmdOption = WebSocket.PerMessageDeflateOptions | boolean

interface Candidate {
  name: string
  perMessageDeflate: PmdOption
  /**
   * What-if, not something the library does: free both zlib contexts of a connection once its
   * reply is sent (ws's PerMessageDeflate#cleanup(), reached through ws internals; ws recreates
   * them on the next message). Only valid with no_context_takeover both ways.
   */
  releaseIdle?: boolean
  /** Free each zlib context after its message, as the plugin does under the shared profile (lib/internals.ts freeDeflateContexts). */
  freeContexts?: boolean
}

interface MemoryResult {
  rss: number
  heapUsed: number
  external: number
  negotiated: boolean
}

interface Row extends MemoryResult {
  name: string
  ratio: number
  firstRatio: number
  msPerMessage: number
}

const { values: args } = parseArgs({
  options: {
    role: { type: 'string', default: 'main' },
    candidate: { type: 'string' },
    port: { type: 'string' },
    n1: { type: 'string', default: '500' },
    n2: { type: 'string', default: '1500' },
    messages: { type: 'string', default: '50' },
    explore: { type: 'boolean', default: false },
    only: { type: 'string' }
  }
})

const N1 = Number(args.n1)
const N2 = Number(args.n2)
const MESSAGES = Number(args.messages)

function profile (name: string, overrides: Partial<CompressionSettings> = {}): PmdOption {
  return perMessageDeflateOptions({ ...COMPRESSION_PROFILES[name as 'default'], ...overrides })
}

function candidates (): Candidate[] {
  const list: Candidate[] = [
    { name: 'ws default (true)', perMessageDeflate: true },
    { name: 'no compression', perMessageDeflate: false },
    { name: 'default', perMessageDeflate: profile('default') },
    { name: 'high', perMessageDeflate: profile('high') },
    { name: 'fast', perMessageDeflate: profile('fast') },
    { name: 'shared', perMessageDeflate: profile('shared'), freeContexts: true }
  ]
  if (args.explore) {
    list.push(
      { name: 'w15 m8 chunk 4K', perMessageDeflate: profile('default', { serverMaxWindowBits: 15, memLevel: 8 }) },
      { name: 'w14 m6', perMessageDeflate: profile('default', { serverMaxWindowBits: 14, memLevel: 6 }) },
      { name: 'w13 m8', perMessageDeflate: profile('default', { memLevel: 8 }) },
      { name: 'w12 m4', perMessageDeflate: profile('default', { serverMaxWindowBits: 12, memLevel: 4 }) },
      { name: 'w11 m4', perMessageDeflate: profile('default', { serverMaxWindowBits: 11, memLevel: 4 }) },
      { name: 'w13 m5 chunk 16K', perMessageDeflate: profile('default', { chunkSize: 16_384 }) },
      { name: 'w13 m5 chunk 1K', perMessageDeflate: profile('default', { chunkSize: 1024 }) },
      { name: 'w13 m5 no takeover', perMessageDeflate: profile('default', { serverNoContextTakeover: true, clientNoContextTakeover: true }) },
      { name: 'w15 no takeover', perMessageDeflate: profile('default', { serverMaxWindowBits: 15, memLevel: 8, serverNoContextTakeover: true, clientNoContextTakeover: true }) },
      {
        name: 'w13 nct release*',
        perMessageDeflate: profile('default', { serverNoContextTakeover: true, clientNoContextTakeover: true }),
        releaseIdle: true
      }
    )
  }
  // The first two rows are the references every other row is compared with.
  const only = args.only?.split(',')
  return only === undefined ? list : list.filter((c, i) => i < 2 || only.includes(c.name))
}

// The first-message page is not among the stream's pages, so no page is sent twice on a connection.
const FIRST_PAGE = feedPage(0)
const PAGES = Array.from({ length: Math.max(MESSAGES, 1) }, (_, i) => feedPage(i + 1))

async function settle (): Promise<NodeJS.MemoryUsage> {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc === undefined) throw new Error('run the server role with --expose-gc')
  for (let i = 0; i < 3; i++) {
    gc()
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return process.memoryUsage()
}

function release (ws: WebSocket): void {
  const extensions = (ws as unknown as { _extensions: Record<string, { cleanup (): void } | undefined> })._extensions
  extensions['permessage-deflate']?.cleanup()
}

// The plugin's own call; refuses to measure anything else when it could not take effect.
function freeAfterEachMessage (ws: WebSocket): void {
  const sides = freeDeflateContexts(ws)
  if (sides === null || !sides.deflate || !sides.inflate) throw new Error(`freeDeflateContexts did not apply to both sides: ${JSON.stringify(sides)}`)
}

// ---- server role: one profile, memory measured at n1 and n2 connections -----------------

async function serverRole (): Promise<void> {
  const candidate = JSON.parse(String(args.candidate)) as Candidate
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: candidate.perMessageDeflate })
  await once(wss, 'listening')
  let negotiated = false
  wss.on('connection', (ws) => {
    negotiated = ws.extensions.includes('permessage-deflate')
    if (candidate.freeContexts === true) freeAfterEachMessage(ws)
    ws.once('message', () => ws.send(FIRST_PAGE, () => {
      if (candidate.releaseIdle === true) release(ws)
    }))
  })
  const port = (wss.address() as AddressInfo).port
  const client = fork(process.argv[1], ['--role', 'client', '--port', String(port)], { execArgv: ['--import', 'tsx'] })
  const open = async (count: number): Promise<void> => {
    client.send({ open: count })
    await once(client, 'message')
  }

  await open(N1) // the first n1 also warm up code paths and lazily created shared state
  const m1 = await settle()
  await open(N2 - N1)
  const m2 = await settle()
  const per = (a: number, b: number): number => (b - a) / (N2 - N1)
  const result: MemoryResult = {
    rss: per(m1.rss, m2.rss),
    heapUsed: per(m1.heapUsed, m2.heapUsed),
    external: per(m1.external, m2.external),
    negotiated
  }
  client.send({ exit: true })
  await once(client, 'exit')
  process.send?.(result)
  for (const ws of wss.clients) ws.terminate()
  wss.close()
}

// ---- client role: opens connections on request, keeps them idle -------------------------

function clientRole (): void {
  const url = `ws://127.0.0.1:${String(args.port)}`
  const sockets: WebSocket[] = []
  const openOne = (): Promise<void> => new Promise((resolve, reject) => {
    const ws = new WebSocket(url)
    sockets.push(ws)
    ws.once('open', () => ws.send(FIRST_PAGE))
    ws.once('message', () => resolve())
    ws.once('error', reject)
  })
  process.on('message', async (msg: { open?: number, exit?: boolean }) => {
    if (msg.exit === true) {
      for (const ws of sockets) ws.terminate()
      process.exit(0)
    }
    for (let left = msg.open ?? 0; left > 0; left -= 50) {
      const batch: Promise<void>[] = []
      for (let i = 0; i < Math.min(50, left); i++) batch.push(openOne())
      await Promise.all(batch)
    }
    process.send?.('done')
  })
}

// ---- main: memory per profile in child processes, ratio in this process -----------------

async function measureMemory (candidate: Candidate): Promise<MemoryResult> {
  const server = fork(process.argv[1], ['--role', 'server', '--candidate', JSON.stringify(candidate), '--n1', String(N1), '--n2', String(N2)],
    { execArgv: ['--expose-gc', '--import', 'tsx'] })
  const [result] = await once(server, 'message') as [MemoryResult]
  await once(server, 'exit')
  return result
}

async function measureRatio (candidate: Candidate): Promise<{ ratio: number, firstRatio: number, msPerMessage: number }> {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: candidate.perMessageDeflate })
  await once(wss, 'listening')
  const connection = once(wss, 'connection') as Promise<[WebSocket]>
  const c = new WebSocket(`ws://127.0.0.1:${(wss.address() as AddressInfo).port}`)
  await once(c, 'open')
  const [s] = await connection
  if (candidate.freeContexts === true) freeAfterEachMessage(s)
  const socket = (c as unknown as { _socket: { bytesRead: number } })._socket
  const receive = (count: number): Promise<void> => new Promise((resolve) => {
    let n = 0
    const onMessage = (): void => {
      if (++n === count) {
        c.removeListener('message', onMessage)
        resolve()
      }
    }
    c.on('message', onMessage)
  })

  let base = socket.bytesRead
  let done = receive(1)
  s.send(FIRST_PAGE)
  await done
  const firstRatio = (socket.bytesRead - base) / Buffer.byteLength(FIRST_PAGE)

  base = socket.bytesRead
  let payload = 0
  const started = performance.now()
  done = receive(PAGES.length)
  for (const page of PAGES) {
    payload += Buffer.byteLength(page)
    s.send(page)
  }
  await done
  const msPerMessage = (performance.now() - started) / PAGES.length
  const ratio = (socket.bytesRead - base) / payload
  c.terminate()
  s.terminate()
  wss.close()
  return { ratio, firstRatio, msPerMessage }
}

function kib (n: number): string {
  return (n / 1024).toFixed(1).padStart(7)
}

async function main (): Promise<void> {
  const rows: Row[] = []
  for (const candidate of candidates()) {
    const memory = await measureMemory(candidate)
    const ratio = await measureRatio(candidate)
    rows.push({ name: candidate.name, ...memory, ...ratio })
    process.stderr.write(`measured ${candidate.name}\n`)
  }
  const ws = rows[0]
  const plain = rows[1]
  console.log(`node ${process.version}, ws ${(createRequire(__filename)('ws/package.json') as { version: string }).version}; ` +
    `slope between ${N1} and ${N2} idle connections after one ~${(Buffer.byteLength(FIRST_PAGE) / 1024).toFixed(1)} KiB message each way; ` +
    `ratio over ${PAGES.length} distinct feed pages\n`)
  console.log('profile              | pmd | RSS/conn KiB | over plain KiB | vs ws (RSS) | vs ws (over plain) | heap KiB | ext KiB | wire/payload | first msg | factor vs ws | ms/msg')
  console.log('-'.repeat(170))
  for (const r of rows) {
    const over = r.rss - plain.rss
    const wsOver = ws.rss - plain.rss
    console.log(
      `${r.name.padEnd(20)} | ${r.negotiated ? 'yes' : 'no '} | ${kib(r.rss).padStart(12)} | ${kib(over).padStart(14)} | ` +
      `${(r.rss / ws.rss).toFixed(2).padStart(11)} | ${(over / wsOver).toFixed(2).padStart(18)} | ${kib(r.heapUsed).padStart(8)} | ${kib(r.external).padStart(7)} | ` +
      `${r.ratio.toFixed(4).padStart(12)} | ${r.firstRatio.toFixed(4).padStart(9)} | ${((1 / r.ratio) / (1 / ws.ratio)).toFixed(3).padStart(12)} | ${r.msPerMessage.toFixed(3).padStart(6)}`)
  }
}

if (args.role === 'server') {
  serverRole().catch((err: unknown) => { console.error(err); process.exit(1) })
} else if (args.role === 'client') {
  clientRole()
} else {
  main().catch((err: unknown) => { console.error(err); process.exit(1) })
}
