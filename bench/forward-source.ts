// The TCP services the forwarding benchmark (bench/forward.ts) reaches, in a child process of
// their own so that neither the client's nor the forwarder's CPU pays for them:
//   download  writes exactly `bytes` bytes (one random 1 MiB block over and over), then ends;
//   sink      counts what it reads and answers `<count>\n` once it has `bytes` (or at the end);
//   greet     writes `hello\n` the moment it accepts, then waits for the client to leave.
import { randomBytes } from 'node:crypto'
import { createServer, type Server, type Socket } from 'node:net'
import { serve } from './ipc'

/** What the child is told, as its one argument (JSON). */
export interface SourceSpec {
  /** Bytes each download connection writes, and each sink connection expects. */
  bytes: number
}

/** The ports it listens on, sent as `{ ready }` once all listen. */
export interface SourcePorts {
  download: number
  sink: number
  greet: number
}

const BLOCK = randomBytes(1024 * 1024)

function download (socket: Socket, total: number): void {
  let left = total
  const pump = (): void => {
    while (left > 0) {
      const n = Math.min(left, BLOCK.length)
      left -= n
      if (!socket.write(n === BLOCK.length ? BLOCK : BLOCK.subarray(0, n))) {
        socket.once('drain', pump)
        return
      }
    }
    socket.end()
  }
  pump()
}

function sink (socket: Socket, expected: number): void {
  let count = 0
  let answered = false
  const answer = (): void => {
    if (answered) return
    answered = true
    socket.write(`${count}\n`)
  }
  socket.on('data', (chunk: Buffer) => {
    count += chunk.length
    if (count >= expected) answer()
  })
  socket.on('end', () => {
    answer()
    socket.end()
  })
}

function greet (socket: Socket): void {
  socket.write('hello\n')
  socket.on('end', () => socket.end())
  socket.resume()
}

async function listen (onSocket: (socket: Socket) => void): Promise<{ server: Server, port: number }> {
  const server = createServer({ noDelay: true }, (socket) => {
    // A client that leaves early (a failed run) is no error of the source's.
    socket.on('error', () => {})
    onSocket(socket)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return { server, port: address.port }
}

async function main (): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '{}') as SourceSpec
  if (!Number.isInteger(spec.bytes) || spec.bytes <= 0) throw new Error('expected { bytes } as the first argument')
  const d = await listen((s) => download(s, spec.bytes))
  const s = await listen((socket) => sink(socket, spec.bytes))
  const g = await listen(greet)
  serve({
    cpu: () => process.cpuUsage(),
    exit: () => {
      setImmediate(() => process.exit(0))
      return true
    }
  }, 10 * 60_000)
  const ready: SourcePorts = { download: d.port, sink: s.port, greet: g.port }
  process.send?.({ ready })
}

main().catch((err: unknown) => {
  process.stderr.write(`forward source: ${String((err as Error).stack ?? err)}\n`)
  process.exit(1)
})
