// The client side of the forwarding benchmark (bench/forward.ts): one bulk transfer or one
// session opening over a plain TCP connection, a WebSocket through the plugin's handlers, or
// `ssh -W`. Each resolves with what it measured or rejects, with a deadline, saying what did
// not arrive; none leaves a socket or a process behind.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { connect as tcpConnect, type Socket } from 'node:net'
import WebSocket from 'ws'

/** One bulk transfer: the bytes that arrived (download) or that the sink counted (upload). */
export interface Transfer {
  bytes: number
  ms: number
}

/** Frames and writes of an upload: 64 KiB, as a client streaming a file would send them. */
export const UPLOAD_CHUNK = 64 * 1024
const BLOCK = randomBytes(UPLOAD_CHUNK)
// Upload frames a WebSocket client keeps in flight (written, not yet handed to the kernel).
const IN_FLIGHT = 16

function deadline (ms: number, what: string, onExpire: () => void, reject: (err: Error) => void): NodeJS.Timeout {
  return setTimeout(() => {
    onExpire()
    reject(new Error(`${what}: nothing more within ${ms} ms`))
  }, ms)
}

/** Reads a TCP connection to its end. */
export function downloadTcp (port: number, timeoutMs: number): Promise<Transfer> {
  return new Promise((resolve, reject) => {
    const started = performance.now()
    let bytes = 0
    const socket = tcpConnect({ port, host: '127.0.0.1', noDelay: true })
    const timer = deadline(timeoutMs, `TCP download from port ${port} (${bytes} bytes so far)`, () => socket.destroy(), reject)
    socket.on('data', (chunk: Buffer) => { bytes += chunk.length })
    socket.once('end', () => {
      clearTimeout(timer)
      socket.destroy()
      resolve({ bytes, ms: performance.now() - started })
    })
    socket.once('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
  })
}

/** Reads a WebSocket's binary frames until the server closes it; the close must be 1000. */
export function downloadWs (url: string, timeoutMs: number): Promise<Transfer> {
  return new Promise((resolve, reject) => {
    const started = performance.now()
    let bytes = 0
    const ws = new WebSocket(url)
    const timer = deadline(timeoutMs, `WebSocket download from ${url} (${bytes} bytes so far)`, () => ws.terminate(), reject)
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) bytes += data.length
    })
    ws.once('close', (code: number, reason: Buffer) => {
      clearTimeout(timer)
      if (code !== 1000) reject(new Error(`${url}: closed with ${code} ${reason.toString()} after ${bytes} bytes`))
      else resolve({ bytes, ms: performance.now() - started })
    })
    ws.once('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
  })
}

// The sink's answer: the byte count it read, as decimal text ending in a newline.
function sinkCount (text: string): number | null {
  const end = text.indexOf('\n')
  return end === -1 ? null : Number(text.slice(0, end))
}

/** Writes `total` bytes to a TCP connection and waits for the sink's count. */
export function uploadTcp (port: number, total: number, timeoutMs: number): Promise<Transfer> {
  return new Promise((resolve, reject) => {
    const started = performance.now()
    let left = total
    let answer = ''
    const socket = tcpConnect({ port, host: '127.0.0.1', noDelay: true })
    const timer = deadline(timeoutMs, `TCP upload to port ${port} (${total - left} bytes written)`, () => socket.destroy(), reject)
    const pump = (): void => {
      while (left > 0) {
        const n = Math.min(left, UPLOAD_CHUNK)
        left -= n
        if (!socket.write(n === UPLOAD_CHUNK ? BLOCK : BLOCK.subarray(0, n))) {
          socket.once('drain', pump)
          return
        }
      }
    }
    socket.once('connect', pump)
    socket.setEncoding('latin1').on('data', (chunk: string) => {
      answer += chunk
      const count = sinkCount(answer)
      if (count === null) return
      clearTimeout(timer)
      socket.destroy()
      resolve({ bytes: count, ms: performance.now() - started })
    })
    socket.once('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
  })
}

/** Sends `total` bytes as binary frames and waits for the sink's count (a binary frame back). */
export function uploadWs (url: string, total: number, timeoutMs: number): Promise<Transfer> {
  return new Promise((resolve, reject) => {
    const started = performance.now()
    let left = total
    let inFlight = 0
    let answer = ''
    const ws = new WebSocket(url)
    const timer = deadline(timeoutMs, `WebSocket upload to ${url} (${total - left} bytes sent)`, () => ws.terminate(), reject)
    const fail = (err: Error): void => {
      clearTimeout(timer)
      ws.terminate()
      reject(err)
    }
    // Each send's callback runs once its frame is handed to the kernel: a bounded pipeline.
    const sent = (err?: Error): void => {
      inFlight--
      if (err !== undefined && err !== null) fail(err)
      else pump()
    }
    const pump = (): void => {
      while (left > 0 && inFlight < IN_FLIGHT && ws.readyState === WebSocket.OPEN) {
        const n = Math.min(left, UPLOAD_CHUNK)
        left -= n
        inFlight++
        ws.send(n === UPLOAD_CHUNK ? BLOCK : BLOCK.subarray(0, n), { binary: true }, sent)
      }
    }
    ws.once('open', pump)
    ws.on('message', (data: Buffer) => {
      answer += data.toString('latin1')
      const count = sinkCount(answer)
      if (count === null) return
      clearTimeout(timer)
      const ms = performance.now() - started
      ws.once('close', () => resolve({ bytes: count, ms }))
      ws.close()
    })
    ws.once('close', (code: number, reason: Buffer) => {
      if (sinkCount(answer) === null) fail(new Error(`${url}: closed with ${code} ${reason.toString()} before the sink answered (${total - left} bytes sent)`))
    })
    ws.once('error', fail)
  })
}

/** Milliseconds from connecting to the first byte of the greeting service. */
export function openTcp (port: number, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now()
    const socket = tcpConnect({ port, host: '127.0.0.1', noDelay: true })
    const timer = deadline(timeoutMs, `first byte from port ${port}`, () => socket.destroy(), reject)
    socket.once('data', () => {
      const ms = performance.now() - started
      clearTimeout(timer)
      socket.end()
      socket.once('close', () => resolve(ms))
      socket.resume()
    })
    socket.once('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
  })
}

/** Milliseconds from `new WebSocket()` to the first frame; the client then closes and waits for the close. */
export function openWs (url: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now()
    const ws = new WebSocket(url)
    let ms: number | null = null
    const timer = deadline(timeoutMs, `first frame from ${url}`, () => ws.terminate(), reject)
    ws.once('message', () => {
      ms = performance.now() - started
      ws.close()
    })
    ws.once('close', (code: number, reason: Buffer) => {
      clearTimeout(timer)
      if (ms === null) reject(new Error(`${url}: closed with ${code} ${reason.toString()} before the first frame`))
      else resolve(ms)
    })
    ws.once('error', (err) => {
      clearTimeout(timer)
      ws.terminate()
      reject(err)
    })
  })
}

/**
 * Milliseconds from starting `ssh -W host:port` (a new process and a new SSH connection: the
 * handshake, the authentication, a direct-tcpip channel) to the first byte on its stdout.
 */
export function openSshW (options: string[], destination: string, login: string, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now()
    const child = spawn('/usr/bin/ssh', [...options, '-W', destination, login], { stdio: ['pipe', 'pipe', 'pipe'] })
    let stderr = ''
    let ms: number | null = null
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
    const timer = deadline(timeoutMs, `first byte through ssh -W ${destination}`, () => child.kill('SIGKILL'), reject)
    child.stdout.once('data', () => {
      ms = performance.now() - started
      child.stdout.resume()
      // Closing stdin ends the forward; ssh then exits by itself.
      child.stdin.end()
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      if (ms === null) reject(new Error(`ssh -W exited (${String(code ?? signal)}) before the first byte: ${stderr.trim()}`))
      else resolve(ms)
    })
  })
}

/** Resolves once `port` accepts a connection (`ssh -L` listens once it is logged in). */
export async function waitForListener (port: number, timeoutMs: number): Promise<void> {
  const until = performance.now() + timeoutMs
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket: Socket = tcpConnect({ port, host: '127.0.0.1' })
      socket.once('connect', () => { socket.destroy(); resolve(true) })
      socket.once('error', () => resolve(false))
    })
    if (ok) return
    if (performance.now() > until) throw new Error(`nothing listens on port ${port} after ${timeoutMs} ms`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
