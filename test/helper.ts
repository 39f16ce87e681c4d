import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import type { TestContext } from 'node:test'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { IncomingHttpHeaders } from 'node:http'
import WebSocket, { type ClientOptions } from 'ws'
import wsManager, { type WsManagerOptions } from '../lib/index'

/** Every log line the app wrote, parsed. */
export type LogLine = Record<string, unknown> & { msg?: string, level: number }

/** A log sink to hand to Fastify's logger, with the lines it saw. */
export function logCapture (): { stream: Writable, lines: LogLine[], text: () => string } {
  const lines: LogLine[] = []
  let raw = ''
  const stream = new Writable({
    write (chunk: Buffer, _enc, cb) {
      const s = chunk.toString()
      raw += s
      for (const line of s.split('\n')) if (line !== '') lines.push(JSON.parse(line) as LogLine)
      cb()
    }
  })
  return { stream, lines, text: () => raw }
}

export interface BuildOptions {
  fastify?: FastifyServerOptions
  /** Registered before the routes; may register @fastify/jwt and others. */
  before?: (app: FastifyInstance) => Promise<void> | void
}

/** An app with the plugin registered, closed in t.after. */
export async function build (t: TestContext, options: WsManagerOptions = {}, extra: BuildOptions = {}): Promise<FastifyInstance> {
  const app = Fastify(extra.fastify ?? { logger: false })
  t.after(() => app.close())
  if (extra.before !== undefined) await extra.before(app)
  await app.register(wsManager, options)
  return app
}

/** Starts the app on an ephemeral loopback port and returns its ws:// base URL. */
export async function listen (app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return `ws://127.0.0.1:${address.port}`
}

/** Opens a real client; it is terminated when the test ends. */
export async function connect (t: TestContext, url: string, options: ClientOptions & { protocols?: string[] } = {}): Promise<WebSocket> {
  const { protocols, ...rest } = options
  const ws = new WebSocket(url, protocols, rest)
  t.after(() => ws.terminate())
  await new Promise<void>((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
    ws.once('unexpected-response', (_req, res) => reject(new Error(`unexpected response ${res.statusCode}`)))
  })
  return ws
}

/** Resolves with the close code and reason a client sees, or rejects after `ms`. */
export function closed (ws: WebSocket, ms = 5000): Promise<{ code: number, reason: string }> {
  return new Promise((resolve, reject) => {
    if (ws.readyState === WebSocket.CLOSED) {
      reject(new Error('already closed'))
      return
    }
    const timer = setTimeout(() => reject(new Error(`no close within ${ms} ms`)), ms)
    ws.once('close', (code, reason) => {
      clearTimeout(timer)
      resolve({ code, reason: reason.toString() })
    })
  })
}

/** Waits until `predicate` holds, polling every 5 ms, or rejects after `ms`. */
export async function waitFor (predicate: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 5))
  }
}

/** The next message a client receives, as a string, or a rejection after `ms`. */
export function nextMessage (ws: WebSocket, ms = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no message within ${ms} ms`)), ms)
    ws.once('message', (data) => {
      clearTimeout(timer)
      resolve(data.toString())
    })
  })
}

/**
 * Completes a WebSocket upgrade over a raw TCP socket and then never reads or answers again:
 * the unresponsive peer (a frozen tab, a dead NAT mapping) that close timeouts exist for.
 */
export async function rawPeer (t: TestContext, url: string, path = '/ws'): Promise<import('node:net').Socket> {
  const { connect: netConnect } = await import('node:net')
  const { port, hostname } = new URL(url)
  const socket = netConnect({ port: Number(port), host: hostname })
  t.after(() => socket.destroy())
  socket.on('error', () => {})
  await new Promise<void>((resolve, reject) => {
    let head = ''
    const onData = (chunk: Buffer): void => {
      head += chunk.toString('latin1')
      if (head.includes('\r\n\r\n')) {
        socket.removeListener('data', onData)
        if (!head.startsWith('HTTP/1.1 101')) reject(new Error(head.split('\r\n')[0]))
        else {
          socket.pause()
          resolve()
        }
      }
    }
    socket.on('data', onData)
    socket.once('connect', () => {
      socket.write(`GET ${path} HTTP/1.1\r\nHost: ${hostname}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')
    })
    socket.once('close', () => reject(new Error('closed before upgrade')))
  })
  return socket
}

/** Resolves once a raw socket is closed by the other side, or rejects after `ms`. */
export function socketClosed (socket: import('node:net').Socket, ms = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    if (socket.destroyed) return resolve()
    const timer = setTimeout(() => reject(new Error(`socket still open after ${ms} ms`)), ms)
    socket.once('close', () => {
      clearTimeout(timer)
      resolve()
    })
    socket.resume()
  })
}

/**
 * A client whose messages are queued from the moment it exists, for servers that send on
 * open: a message can arrive in the same read as the 101 response, before a listener
 * attached after `open` would see it.
 */
export async function connectQueued (t: TestContext, url: string, options: ClientOptions = {}): Promise<{ ws: WebSocket, next: (ms?: number) => Promise<string> }> {
  const ws = new WebSocket(url, options)
  t.after(() => ws.terminate())
  const queue: string[] = []
  let wake: (() => void) | null = null
  ws.on('message', (data) => {
    queue.push(data.toString())
    wake?.()
  })
  await new Promise<void>((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
    ws.once('unexpected-response', (_req, res) => reject(new Error(`unexpected response ${res.statusCode}`)))
  })
  async function next (ms = 5000): Promise<string> {
    const deadline = Date.now() + ms
    while (queue.length === 0) {
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`no message within ${ms} ms`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        wake = () => {
          clearTimeout(timer)
          wake = null
          resolve()
        }
      })
    }
    return queue.shift() as string
  }
  return { ws, next }
}

/** What an upgrade attempt came to: the open socket, or the HTTP refusal with its JSON body. */
export interface Attempt {
  ws: WebSocket | null
  status: number | null
  headers: IncomingHttpHeaders
  body: { statusCode: number, error: string, message: string } | null
}

/** Opens a client and resolves with the open socket or the HTTP refusal; terminated when the test ends. */
export function attempt (t: TestContext, url: string, options: ClientOptions & { protocols?: string[] } = {}): Promise<Attempt> {
  const { protocols, ...rest } = options
  const ws = new WebSocket(url, protocols, rest)
  t.after(() => ws.terminate())
  // terminate() on a refused handshake reports an abort; nothing to learn from it.
  ws.on('error', () => {})
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no answer within 5000 ms')), 5000)
    ws.once('open', () => {
      clearTimeout(timer)
      resolve({ ws, status: null, headers: {}, body: null })
    })
    ws.once('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    ws.once('unexpected-response', (_req, res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { text += chunk })
      res.on('end', () => {
        clearTimeout(timer)
        try {
          resolve({ ws: null, status: res.statusCode ?? 0, headers: res.headers, body: JSON.parse(text) })
        } catch (err) {
          reject(err)
        }
      })
    })
  })
}

/** Asserts that `fn` throws FST_WSM_OPTION_INVALID naming the option `name`. */
export function assertOptionInvalid (fn: () => unknown, name: string): void {
  assert.throws(fn, (err: Error & { code?: string }) => {
    assert.equal(err.code, 'FST_WSM_OPTION_INVALID')
    // The requirement is that the error names the option, so that is what is checked.
    assert.ok(err.message.includes(`"${name}"`), `names ${name}: ${err.message}`)
    return true
  })
}

/** Rejects when `promise` does not settle within `ms`; the deadline timer is always cleared. */
export async function within<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms)
  })
  try {
    return await Promise.race([promise, expired])
  } finally {
    clearTimeout(timer)
  }
}

/**
 * Runs one of the repository's TypeScript scripts in its own process (its children exit with
 * it, watching the IPC channel); resolves with its exit code and everything it printed.
 */
export async function runScript (t: TestContext, script: string, args: string[]): Promise<{ code: number | null, output: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], {
    cwd: join(__dirname, '..'),
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.after(() => child.kill())
  let output = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  return { code, output }
}

/** An upgrade the server answers with an HTTP status instead of 101: the status and Retry-After. */
export function refusedUpgrade (url: string, headers: Record<string, string> = {}): Promise<{ status: number, retryAfter: string | undefined }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers })
    ws.on('unexpected-response', (_request, response) => {
      resolve({ status: response.statusCode ?? 0, retryAfter: response.headers['retry-after'] as string | undefined })
      ws.terminate()
    })
    ws.on('open', () => {
      ws.terminate()
      reject(new Error('the upgrade was accepted'))
    })
    ws.on('error', () => {})
  })
}

/** The most events in any window of `windowMs` (a pace check of drains and reconnects). */
export function busiestWindow (times: number[], windowMs: number): number {
  const sorted = [...times].sort((a, b) => a - b)
  let most = 0
  let start = 0
  for (let end = 0; end < sorted.length; end++) {
    while ((sorted[end] as number) - (sorted[start] as number) >= windowMs) start++
    most = Math.max(most, end - start + 1)
  }
  return most
}
