// A load balancer on loopback that behaves like a Kubernetes Service in front of pods with a
// readiness probe: it polls each backend's readiness endpoint and hands every new TCP
// connection to the next ready backend, round robin. A backend that stops being ready keeps
// its open connections (as endpoints removal does) but gets no new ones.
import { connect, createServer, type Server, type Socket } from 'node:net'

/** Options of {@link startBalancer}. */
export interface BalancerOptions {
  /** Milliseconds between readiness polls of each backend. @default 100 */
  probeInterval?: number
  /** The readiness path. @default '/ready' */
  readiness?: string
}

/** A running balancer. */
export interface Balancer {
  readonly port: number
  /** Backends (loopback ports) now in the pool; `ready` is the probe's last answer. */
  backends: () => Array<{ port: number, ready: boolean }>
  add: (port: number) => void
  remove: (port: number) => void
  /** Connections refused because no backend was ready. */
  readonly refused: number
  close: () => Promise<void>
}

async function probe (port: number, path: string, timeoutMs: number): Promise<boolean> {
  try {
    const response = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(timeoutMs) })
    await response.arrayBuffer()
    return response.status === 200
  } catch {
    return false
  }
}

/** Starts a balancer on a free loopback port. */
export async function startBalancer (options: BalancerOptions = {}): Promise<Balancer> {
  const interval = options.probeInterval ?? 100
  const path = options.readiness ?? '/ready'
  const pool = new Map<number, boolean>()
  const sockets = new Set<Socket>()
  let next = 0
  let refused = 0
  const timer = setInterval(() => {
    for (const port of pool.keys()) {
      probe(port, path, interval * 5).then((ready) => { if (pool.has(port)) pool.set(port, ready) }, () => {})
    }
  }, interval)
  const server: Server = createServer((client) => {
    sockets.add(client)
    client.on('close', () => sockets.delete(client))
    client.on('error', () => {})
    const ready = [...pool].filter(([, ok]) => ok).map(([port]) => port)
    if (ready.length === 0) {
      refused++
      client.destroy()
      return
    }
    const port = ready[next++ % ready.length] as number
    const upstream = connect(port, '127.0.0.1')
    sockets.add(upstream)
    upstream.on('close', () => {
      sockets.delete(upstream)
      client.destroy()
    })
    upstream.on('error', () => client.destroy())
    client.on('close', () => upstream.destroy())
    client.pipe(upstream).pipe(client)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  return {
    port,
    backends: () => [...pool].map(([p, ready]) => ({ port: p, ready })),
    add: (backend) => {
      pool.set(backend, false)
      probe(backend, path, 1000).then((ready) => { if (pool.has(backend)) pool.set(backend, ready) }, () => {})
    },
    remove: (backend) => { pool.delete(backend) },
    get refused () { return refused },
    close: async () => {
      clearInterval(timer)
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
