// The forwarding benchmark's server (bench/forward.ts): Fastify with the plugin and its
// tcpTunnel and sshTunnel handlers, in a child process of its own so that its CPU is its own.
// `?to=download|sink|greet` picks the source service; the target still comes from this
// code and the allowlists, as the handlers require. Routes:
//   /tcp        tcpTunnel to the service;
//   /ssh        sshTunnel through one pool shared by every session (warm once it has a connection);
//   /ssh-fresh  sshTunnel through a new pool per session, closed with it (every session pays
//               for the TCP connect, the SSH handshake and the authentication).
import Fastify, { type FastifyRequest } from 'fastify'
import { sshTunnel, tcpTunnel, type ForwardHandler } from '../lib/forward'
import wsManager from '../lib/index'
import { SshConnectionPool } from '../lib/ssh-pool'
import { serve } from './ipc'
import type { SourcePorts } from './forward-source'

/** What the child is told, as its one argument (JSON). */
export interface ServerSpec {
  source: SourcePorts
  sshd: { target: { host: string, port: number, username: string, privateKey: string }, knownHosts: string }
}

/** The shared pool's counts and the forwarding counters, for the orchestrator's checks. */
export interface ServerStats {
  poolConnections: number
  poolOpened: number
  bytesDown: Record<string, number>
  bytesUp: Record<string, number>
  failed: Record<string, number>
}

async function main (): Promise<void> {
  const spec = JSON.parse(process.argv[2] ?? '{}') as ServerSpec
  const source = spec.source
  const services = Object.keys(source) as Array<keyof SourcePorts>
  const pick = (request: FastifyRequest): { host: string, port: number } => {
    const to = (request.query as { to?: string }).to as keyof SourcePorts
    if (!services.includes(to)) throw new Error(`no service ${String(to)}`)
    return { host: '127.0.0.1', port: source[to] }
  }
  const sourceList = services.map((s) => `127.0.0.1:${source[s]}`)
  const sshd = spec.sshd
  const limits = { maxSessionsPerUser: 0, idleTimeout: 0 }
  const poolOptions = { hostVerifier: { knownHosts: sshd.knownHosts } }
  const tunnelOptions = {
    target: () => sshd.target,
    allowedTargets: [`127.0.0.1:${sshd.target.port}`],
    to: pick,
    allowedDestinations: sourceList,
    ...limits
  }
  const pool = new SshConnectionPool(poolOptions)

  const app = Fastify({ logger: false })
  await app.register(wsManager, { auth: false, upgradeRateLimit: false, messageRateLimit: false })
  const route = { websocket: true, config: { wsManager: { idleTimeout: 0 } } } as const
  app.get('/tcp', route, tcpTunnel({ target: pick, allowedTargets: sourceList, ...limits }))
  app.get('/ssh', route, sshTunnel({ pool, ...tunnelOptions }))
  app.get('/ssh-fresh', route, (socket, request) => {
    const own = new SshConnectionPool(poolOptions)
    socket.once('close', () => { own.close().catch(() => {}) })
    const handler: ForwardHandler = sshTunnel({ pool: own, ...tunnelOptions })
    handler(socket, request)
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')

  serve({
    cpu: () => process.cpuUsage(),
    stats: (): ServerStats => {
      const f = app.wsManager.stats().forwarding
      const p = pool.stats()
      return { poolConnections: p.connections, poolOpened: p.opened, bytesDown: f.bytesDown, bytesUp: f.bytesUp, failed: f.failed }
    },
    exit: async () => {
      await Promise.race([Promise.all([app.close(), pool.close()]), new Promise((resolve) => setTimeout(resolve, 2000))])
      setImmediate(() => process.exit(0))
      return true
    }
  }, 10 * 60_000)
  process.send?.({ ready: { port: address.port } })
}

main().catch((err: unknown) => {
  process.stderr.write(`forward server: ${String((err as Error).stack ?? err)}\n`)
  process.exit(1)
})
