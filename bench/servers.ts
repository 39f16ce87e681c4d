// The systems under test, each built the way an application would build it, all running the
// same route handler (bench/server-process.ts passes it in as `onSocket`):
//
//   raw-ws          ws's WebSocketServer in noServer mode on a node http server, upgrading in
//                   the 'upgrade' event, as @fastify/websocket does underneath
//   bare            Fastify + @fastify/websocket, no plugin
//   plugin          Fastify + this plugin with its defaults (heartbeat on, idle timeout on,
//                   compression off), `auth: false` until authentication is wired (HOOK(auth))
//   plugin+deflate  the same with `compression: 'default'`
//   plugin+shared   the same with `compression: 'shared'` (no context takeover either way, one
//                   deflate per broadcast for all recipients, zlib contexts freed after each message)
//   plugin+drop     the same with `backpressure: { policy: 'drop' }` (slow-consumer scenario)
//   plugin-untraced the defaults with `tracing: false` (no @opentelemetry/api call at all)
//   plugin+metrics  the defaults with `metrics: { endpoint: false }` (prom-client, issue 13)
//   plugin+otel     the defaults with a real OpenTelemetry SDK registered (NodeTracerProvider,
//                   an in-memory exporter behind a simple span processor)
//
// The plain `plugin` system traces too (the default), with no SDK: the API's no-ops.
// Where a scenario needs a feature the baselines lack, they get the hand-written equivalent
// an application would write (the ping loop from ws's README, for the heartbeat scenario).

import { createRequire } from 'node:module'
import { createServer, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Duplex } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import type WebSocket from 'ws'
import { WebSocketServer } from 'ws'

// Fastify, @fastify/websocket and the plugin are loaded only by the systems that use them:
// loading them is most of a server child's start-up, and raw-ws needs none of them.
const load = createRequire(__filename)
const fastify = (): typeof import('fastify') => load('fastify') as typeof import('fastify')
const fastifyWebsocket = (): typeof import('@fastify/websocket') => load('@fastify/websocket') as typeof import('@fastify/websocket')
const plugin = (): typeof import('../lib/index') => load('../lib/index') as typeof import('../lib/index')

export const SYSTEMS = ['raw-ws', 'bare', 'plugin', 'plugin+deflate', 'plugin+shared', 'plugin+drop', 'plugin-untraced', 'plugin+metrics', 'plugin+otel'] as const
export type SystemName = typeof SYSTEMS[number]

/** What a server child is asked to build. */
export interface ServerSpec {
  system: SystemName
  /** Heartbeat interval for the heartbeat scenario; unset means each system's default. */
  heartbeatMs?: number
  /** permessage-deflate on the baselines (`perMessageDeflate: true`), for the compression scenario. */
  deflate?: boolean
}

/** A running system, as the server child drives it. */
export interface SystemServer {
  port: number
  /** Request headers every upgrade must carry (the bearer token once auth is on). */
  headers: Record<string, string>
  /** The ws server's live sockets. */
  clients (): Set<WebSocket>
  /** Sends one JSON value to every connection the way this system would; resolves with how many got it. */
  broadcast (value: unknown): number | Promise<number>
  /** The plugin's own counters, or null for the baselines. */
  stats (): unknown
  close (): Promise<void>
}

export type OnSocket = (socket: WebSocket) => void

const PATH = '/ws'

// ---- auth and rate limits ----------------------------------------------------------------
//
// The plugin systems run with the plugin's defaults, authentication included: they register
// @fastify/jwt with HS256 and a fixed secret, and hand the generator an
// `Authorization: Bearer <token>` header that it sends with every upgrade (see frames.ts
// buildUpgradeRequest). Set AUTH_WIRED to false to measure the plugin without it.
const AUTH_WIRED = true
const JWT_SECRET = 'fastify-ws-manager-bench-secret-not-for-production'

// Rate limits, once the plugin has them (detected from its DEFAULTS), stay on as in
// production, with limits the load never reaches: the bench measures what checking them
// costs, not what refusing does.
const UNREACHED_LIMIT = { max: 100_000_000, timeWindow: 1000 }

interface AuthSetup {
  options: Record<string, unknown>
  headers: Record<string, string>
}

async function pluginAuth (app: FastifyInstance): Promise<AuthSetup> {
  if (!AUTH_WIRED) return { options: { auth: false }, headers: {} }
  // Loaded at run time so that the bench type-checks whether or not the package is installed.
  const jwt = load('@fastify/jwt') as Parameters<FastifyInstance['register']>[0]
  await app.register(jwt, { secret: JWT_SECRET, sign: { algorithm: 'HS256' } } as never)
  const signer = (app as unknown as { jwt: { sign (payload: object): string } }).jwt
  const token = signer.sign({ sub: 'bench-user' })
  return { options: { auth: { algorithms: ['HS256'] } }, headers: { authorization: `Bearer ${token}` } }
}

function pluginLimits (): Record<string, unknown> {
  const defaults = plugin().DEFAULTS as unknown as Record<string, unknown>
  const limits: Record<string, unknown> = {}
  if ('messageRateLimit' in defaults) limits.messageRateLimit = UNREACHED_LIMIT
  if ('upgradeRateLimit' in defaults) limits.upgradeRateLimit = { max: 1_000_000_000, timeWindow: 60_000 }
  return limits
}
// ---------------------------------------------------------------------------------------------

/** The options each plugin system registers with, before the auth hook adds its own. */
export function pluginOptions (spec: ServerSpec): Record<string, unknown> {
  const options: Record<string, unknown> = { ...pluginLimits() }
  if (spec.system === 'plugin+deflate') options.compression = 'default'
  if (spec.system === 'plugin+shared') options.compression = 'shared'
  if (spec.system === 'plugin+drop') options.backpressure = { policy: 'drop' }
  if (spec.system === 'plugin-untraced') options.tracing = false
  if (spec.system === 'plugin+metrics') options.metrics = { endpoint: false }
  if (spec.heartbeatMs !== undefined) {
    options.heartbeat = { pingInterval: spec.heartbeatMs, pongTimeout: Math.floor(spec.heartbeatMs / 2), maxMissedPongs: 3 }
  }
  return options
}

// The ping loop from ws's README, the usual hand-written heartbeat.
const kAlive = Symbol('alive')
type Tracked = WebSocket & { [kAlive]?: boolean }

function markAlive (this: Tracked): void {
  this[kAlive] = true
}

function handRolledHeartbeat (wss: WebSocketServer, intervalMs: number, onSocket: OnSocket): { onSocket: OnSocket, stop (): void } {
  const timer = setInterval(() => {
    for (const ws of wss.clients as Set<Tracked>) {
      if (ws[kAlive] === false) {
        ws.terminate()
        continue
      }
      ws[kAlive] = false
      ws.ping()
    }
  }, intervalMs)
  return {
    onSocket (socket) {
      (socket as Tracked)[kAlive] = true
      socket.on('pong', markAlive)
      onSocket(socket)
    },
    stop: () => clearInterval(timer)
  }
}

// The loop an application writes without the plugin: a string per client.
function naiveBroadcast (wss: WebSocketServer, value: unknown): number {
  let n = 0
  for (const c of wss.clients) {
    c.send(JSON.stringify(value))
    n++
  }
  return n
}

function closeSockets (wss: WebSocketServer): void {
  for (const ws of wss.clients) ws.terminate()
}

async function rawWs (spec: ServerSpec, onSocket: OnSocket): Promise<SystemServer> {
  const server = createServer()
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: spec.deflate === true })
  const heartbeat = spec.heartbeatMs === undefined ? null : handRolledHeartbeat(wss, spec.heartbeatMs, onSocket)
  const handle = heartbeat === null ? onSocket : heartbeat.onSocket
  wss.on('connection', handle)
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as AddressInfo).port,
    headers: {},
    clients: () => wss.clients,
    broadcast: (value) => naiveBroadcast(wss, value),
    stats: () => null,
    async close () {
      heartbeat?.stop()
      closeSockets(wss)
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    }
  }
}

async function bare (spec: ServerSpec, onSocket: OnSocket): Promise<SystemServer> {
  const app = fastify().default({ logger: false })
  await app.register(fastifyWebsocket().default, { options: { perMessageDeflate: spec.deflate === true } })
  const heartbeat = spec.heartbeatMs === undefined ? null : handRolledHeartbeat(app.websocketServer, spec.heartbeatMs, onSocket)
  const handle = heartbeat === null ? onSocket : heartbeat.onSocket
  app.get(PATH, { websocket: true }, (socket) => handle(socket))
  await app.listen({ port: 0, host: '127.0.0.1' })
  return {
    port: (app.server.address() as AddressInfo).port,
    headers: {},
    clients: () => app.websocketServer.clients,
    broadcast: (value) => naiveBroadcast(app.websocketServer, value),
    stats: () => null,
    async close () {
      heartbeat?.stop()
      closeSockets(app.websocketServer)
      await app.close()
    }
  }
}

// A real SDK, as an application registers it; spans go to memory and are dropped every second.
function registerOtelSdk (): () => void {
  const sdk = load('@opentelemetry/sdk-trace-node') as typeof import('@opentelemetry/sdk-trace-node')
  const exporter = new sdk.InMemorySpanExporter()
  const provider = new sdk.NodeTracerProvider({ spanProcessors: [new sdk.SimpleSpanProcessor(exporter)] })
  provider.register()
  const timer = setInterval(() => exporter.reset(), 1000)
  timer.unref()
  return () => {
    clearInterval(timer)
    provider.shutdown().catch(() => {})
  }
}

async function managed (spec: ServerSpec, onSocket: OnSocket): Promise<SystemServer> {
  const stopSdk = spec.system === 'plugin+otel' ? registerOtelSdk() : null
  const app = fastify().default({ logger: false })
  const auth = await pluginAuth(app)
  await app.register(plugin().default, { ...pluginOptions(spec), ...auth.options } as never)
  app.get(PATH, { websocket: true }, (socket) => onSocket(socket))
  await app.listen({ port: 0, host: '127.0.0.1' })
  return {
    port: (app.server.address() as AddressInfo).port,
    headers: auth.headers,
    clients: () => app.websocketServer.clients,
    broadcast: (value) => app.wsManager.broadcast(value as Record<string, unknown>),
    stats: () => app.wsManager.stats(),
    async close () {
      closeSockets(app.websocketServer)
      await app.close()
      stopSdk?.()
    }
  }
}

/** Builds and starts one system on 127.0.0.1 and a free port. */
export function startSystem (spec: ServerSpec, onSocket: OnSocket): Promise<SystemServer> {
  switch (spec.system) {
    case 'raw-ws': return rawWs(spec, onSocket)
    case 'bare': return bare(spec, onSocket)
    default: return managed(spec, onSocket)
  }
}
