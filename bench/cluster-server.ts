// One node of the cross-node fan-out benchmark (bench/cluster.ts): a child process running
// either this plugin in cluster mode or Socket.IO 4 with @socket.io/redis-adapter, both on
// the same Redis, with every connection in one topic (the plugin's connection.subscribe(),
// Socket.IO's room). The orchestrator tells it over IPC when and how often to publish; every
// published value carries the publish time, so the clients measure publish to receipt.

import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createRequire } from 'node:module'
import type { FastifyInstance } from 'fastify'
import type { Sendable, WsManagerOptions } from '../lib/index'
import { serve, sleep } from './ipc'
import { pluginOptions } from './servers'
import { clockOffsetMs, EVENT, PATH, stamped, TOPIC, type CountedCall, type NodeReady, type NodeSpec, type PublishArgs, type PublishKind, type PublishResult, type Window } from './cluster-common'

const load = createRequire(__filename)
const JWT_SECRET = 'fastify-ws-manager-cluster-bench-secret'

/** One running node, whichever the system. */
interface Node {
  port: number
  connections (): number
  /** Connections whose subscription to TOPIC is active on this node. */
  subscribed (): number
  failures (): string[]
  publish (kind: PublishKind, value: unknown): Promise<number> | number
  call (kind: CountedCall, value: unknown): Promise<unknown>
  tokens (count: number): string[]
  /** The system's own counters (the plugin's stats(); null for Socket.IO). */
  stats (): unknown
  close (): Promise<void>
}

async function pluginNode (spec: NodeSpec): Promise<Node> {
  const fastify = load('fastify') as typeof import('fastify')
  const plugin = load('../lib/index') as typeof import('../lib/index')
  const jwt = load('@fastify/jwt') as Parameters<FastifyInstance['register']>[0]
  const app = fastify.default({ logger: false })
  await app.register(jwt, { secret: JWT_SECRET, sign: { algorithm: 'HS256' } } as never)
  // The bench's usual limits (never reached), then what this bench is about, type-checked.
  const options: WsManagerOptions = { auth: { algorithms: ['HS256'] }, cluster: { redis: spec.redis, prefix: spec.prefix, nodeId: spec.nodeId } }
  await app.register(plugin.default, { ...pluginOptions({ system: 'plugin' }), ...options } as never)
  let subscribed = 0
  const failures: string[] = []
  app.get(PATH, { websocket: true }, (_socket, request) => {
    request.wsConnection?.subscribe(TOPIC).then(() => { subscribed++ }, (err: unknown) => { failures.push(String(err)) })
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  if (app.wsManager.cluster === null) throw new Error('the plugin did not start in cluster mode')
  const manager = app.wsManager
  const signer = (app as unknown as { jwt: { sign (payload: object): string } }).jwt
  return {
    port: (app.server.address() as AddressInfo).port,
    connections: () => app.wsManager.connections.size,
    subscribed: () => subscribed,
    failures: () => failures,
    publish: (kind, value) => kind === 'broadcast' ? manager.broadcast(value as Sendable, { route: PATH }) : manager.publish(TOPIC, value as Sendable),
    call: (kind, value) => {
      switch (kind) {
        case 'sendToUser': return manager.sendToUser('u0', value as Sendable)
        case 'broadcast': return manager.broadcast(value as Sendable, { route: PATH })
        case 'publish': return manager.publish(TOPIC, value as Sendable)
      }
    },
    tokens: (count) => Array.from({ length: count }, (_, i) => signer.sign({ sub: `u${i}` })),
    stats: () => app.wsManager.stats(),
    close: async () => {
      for (const ws of app.websocketServer.clients) ws.terminate()
      await app.close()
    }
  }
}

async function socketIoNode (spec: NodeSpec): Promise<Node> {
  const { Server } = load('socket.io') as typeof import('socket.io')
  const { createAdapter } = load('@socket.io/redis-adapter') as typeof import('@socket.io/redis-adapter')
  const { Redis } = load('ioredis') as typeof import('ioredis')
  const pub = new Redis(spec.redis, { lazyConnect: true })
  const sub = pub.duplicate()
  await Promise.all([pub.connect(), sub.connect()])
  const server = createServer()
  // The websocket transport only, as the clients use; no compression, like the plugin's default.
  const io = new Server(server, { path: PATH, transports: ['websocket'], serveClient: false, perMessageDeflate: false })
  io.adapter(createAdapter(pub, sub, { key: spec.prefix }))
  let subscribed = 0
  const failures: string[] = []
  io.on('connection', (socket) => {
    const user = (socket.handshake.auth as { user?: unknown }).user
    // Rooms live on the node; the adapter forwards every emit to the others through Redis.
    const rooms = typeof user === 'string' ? [TOPIC, `user:${user}`] : [TOPIC]
    Promise.resolve(socket.join(rooms)).then(() => {
      subscribed++
      socket.once('disconnect', () => { subscribed-- })
    }, (err: unknown) => { failures.push(String(err)) })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as AddressInfo).port,
    connections: () => io.engine.clientsCount,
    subscribed: () => subscribed,
    failures: () => failures,
    publish: (kind, value) => {
      if (kind === 'broadcast') io.emit(EVENT, value)
      else io.to(TOPIC).emit(EVENT, value)
      return 0
    },
    call: async (kind, value) => {
      // Socket.IO's sendToUser is an emit to the user's room.
      if (kind === 'sendToUser') io.to('user:u0').emit(EVENT, value)
      else if (kind === 'broadcast') io.emit(EVENT, value)
      else io.to(TOPIC).emit(EVENT, value)
      return 0
    },
    tokens: () => [],
    stats: () => null,
    close: async () => {
      io.disconnectSockets(true)
      await new Promise<void>((resolve) => io.close(() => resolve()))
      await Promise.allSettled([pub.quit(), sub.quit()])
    }
  }
}

const spec = JSON.parse(process.argv[2] ?? '{}') as NodeSpec
let node: Node
let mark = { cpu: process.cpuUsage(), at: performance.now() }

const api = {
  counts (): { connections: number, subscribed: number, failures: string[] } {
    return { connections: node.connections(), subscribed: node.subscribed(), failures: node.failures().slice(0, 3) }
  },

  tokens (args: { count: number }): string[] {
    return node.tokens(args.count)
  },

  stats (): unknown {
    return node.stats()
  },

  mark (): true {
    mark = { cpu: process.cpuUsage(), at: performance.now() }
    return true
  },

  measure (): Window {
    const d = process.cpuUsage(mark.cpu)
    return { cpuUs: d.user + d.system, wallMs: performance.now() - mark.at }
  },

  /**
   * `count` publishes of stamped values, one every `intervalMs` from `offsetMs` on, on a fixed
   * schedule (a late one does not push back the next), or back to back with a turn of the
   * event loop between.
   */
  async publish (args: PublishArgs): Promise<PublishResult> {
    const started = performance.now()
    const pending: Array<Promise<number> | number> = []
    for (let i = 0; i < args.count; i++) {
      if (args.intervalMs > 0) {
        const wait = started + args.offsetMs + i * args.intervalMs - performance.now()
        if (wait > 0) await sleep(wait)
      } else {
        await new Promise((resolve) => setImmediate(resolve))
      }
      try {
        pending.push(node.publish(args.kind, stamped(args.seqBase + i, args.bytes)))
      } catch (err) {
        pending.push(Promise.reject(err))
      }
    }
    const settled = await Promise.allSettled(pending)
    const failed = settled.filter((s) => s.status === 'rejected')
    return {
      published: args.count - failed.length,
      failed: failed.length,
      firstError: failed.length === 0 ? null : String((failed[0] as PromiseRejectedResult).reason),
      reported: settled.reduce((n, s) => n + (s.status === 'fulfilled' ? s.value : 0), 0),
      wallMs: performance.now() - started
    }
  },

  /** `count` calls one after the other, each awaited, with a small value the clients ignore (seq -1). */
  async calls (args: { kind: CountedCall, count: number }): Promise<number> {
    const value = { t: 0, s: -1, p: 'counted' }
    for (let i = 0; i < args.count; i++) await node.call(args.kind, value)
    return args.count
  },

  async exit (): Promise<true> {
    // Close first so the Redis connections quit cleanly, but never hang the harness on it.
    await Promise.race([node.close().catch(() => {}), sleep(3000)])
    setImmediate(() => process.exit(0))
    return true
  }
}

/** The commands bench/cluster.ts can send to a node. */
export type NodeApi = typeof api

async function main (): Promise<void> {
  node = spec.system === 'plugin' ? await pluginNode(spec) : await socketIoNode(spec)
  serve(api, 10 * 60_000)
  const ready: NodeReady = { port: node.port, pid: process.pid, clockOffsetMs: clockOffsetMs() }
  process.send?.({ ready })
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
