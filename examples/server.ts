// The reference server `npm start` runs: configured from the environment (see the README's
// table), safe to expose, and closing every connection with a proper code on SIGTERM/SIGINT.
// A small chat with a ticker: JSON message routing, sendToUser and broadcast.
import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import Fastify, { type FastifyInstance } from 'fastify'
import jwt from '@fastify/jwt'
import wsManager, { loadConfig, type Connection, type ServerConfig } from '../lib/index'
import { bundleBrowserClient } from '../scripts/client-bundle'
import { registerTerminal, TERMINAL_PATH } from './terminal'

const page = readFileSync(join(__dirname, 'public', 'index.html'), 'utf8')

/** Extra settings of the demo, not of the plugin. */
export interface DemoOptions {
  /** Milliseconds between ticker broadcasts; 0 turns the ticker off. Env TICK_INTERVAL. */
  tickInterval?: number
  /**
   * Users who may open the live dashboard; empty turns it off. Env DASHBOARD_USERS
   * (comma-separated). Default: the dev token's user when JWT_SECRET is unset, else none.
   */
  dashboardUsers?: string[]
  /** Where the terminal's SSH settings (SSH_HOST, ...) are read from. Default process.env. */
  terminalEnv?: Record<string, string | undefined>
}

/** Where the reference server serves its dashboard. */
export const DASHBOARD_PATH = '/ws/dashboard'

/** Builds the reference app without listening, so tests can run it in-process too. */
export async function buildServer (config: ServerConfig, demo: DemoOptions = {}): Promise<{ app: FastifyInstance, devToken: string | null }> {
  const app = Fastify({
    logger: { level: config.logLevel },
    // A client that trickles its upgrade request one header line at a time would hold a
    // socket for Node's defaults (60 s headers, 300 s request, checked every 30 s).
    requestTimeout: config.requestTimeout,
    http: {
      headersTimeout: config.headersTimeout,
      connectionsCheckingInterval: Math.min(1000, config.headersTimeout)
    }
  })

  // Without JWT_SECRET a random secret is made, so only tokens printed by this process work.
  const secret = config.jwtSecret ?? randomBytes(32).toString('base64url')
  await app.register(jwt, { secret, verify: { algorithms: ['HS256'] } })
  const dashboardUsers = new Set(demo.dashboardUsers ?? (config.jwtSecret === null ? ['dev-user'] : []))
  await app.register(wsManager, {
    ...config.options,
    // Behind a valid token (any auth source), for the listed users only.
    dashboard: dashboardUsers.size === 0
      ? false
      : { path: DASHBOARD_PATH, authorize: (request) => dashboardUsers.has(String((request.user as { sub?: unknown } | undefined)?.sub)) }
  })
  // A browser terminal at /terminal on the SSH server the SSH_* variables name (see the README).
  await registerTerminal(app, demo.terminalEnv ?? process.env)

  interface Chat { type: 'chat', text: string }
  interface Whisper { type: 'whisper', to: string, text: string }
  const text = { type: 'string', minLength: 1, maxLength: 2000 }

  // WsData types connection.data and makes request.wsConnection non-null in the handler.
  app.get<{ WsData: Record<string, never> }>(config.path, {
    websocket: true,
    config: {
      wsManager: {
        messages: {
          chat: {
            schema: { type: 'object', required: ['type', 'text'], properties: { type: { const: 'chat' }, text } },
            handler: async (message: Chat, connection: Connection) => {
              const delivered = await app.wsManager.broadcast(
                { type: 'chat', from: connection.userId, text: message.text },
                { route: config.path }
              )
              return { type: 'sent', delivered }
            }
          },
          whisper: {
            schema: { type: 'object', required: ['type', 'to', 'text'], properties: { type: { const: 'whisper' }, to: { type: 'string' }, text } },
            handler: async (message: Whisper, connection: Connection) => {
              const delivered = await app.wsManager.sendToUser(message.to, { type: 'whisper', from: connection.userId, text: message.text })
              return { type: 'sent', delivered }
            }
          },
          who: {
            handler: () => ({ type: 'who', connections: app.wsManager.connections.size })
          }
        }
      }
    }
  }, (socket, request) => {
    const connection = request.wsConnection
    connection.send({ type: 'welcome', connectionId: connection.id, userId: connection.userId })
    // Binary messages pass the router untouched: echo them.
    socket.on('message', (data, isBinary) => {
      if (isBinary) socket.send(data, { binary: true })
    })
  })

  app.get('/', (_request, reply) => { reply.type('text/html; charset=utf-8').send(page) })
  // The page's client: fastify-ws-manager/client bundled for browsers from the sources, once.
  let clientBundle: Promise<string> | null = null
  app.get('/client.js', async (_request, reply) => {
    clientBundle ??= bundleBrowserClient()
    return reply.type('text/javascript; charset=utf-8').header('cache-control', 'no-cache').send(await clientBundle)
  })
  // The plugin serves the probes (/health liveness, /ready readiness); this is the heartbeat's view.
  app.get('/health/connections', async () => app.wsManager.checkConnectionHealth())
  // Statistics name users: only for a holder of a valid token.
  app.get('/stats', { onRequest: async (request) => { await request.jwtVerify() } }, async () => app.wsManager.stats())

  const tickInterval = demo.tickInterval ?? 5000
  if (tickInterval > 0) {
    const ticker = setInterval(() => {
      // Each node ticks its own connections; in cluster mode a cluster-wide tick would reach
      // every client once per node.
      app.wsManager.broadcast({ type: 'tick', at: Date.now(), connections: app.wsManager.connections.size }, { route: config.path, local: true })
        .catch((err: unknown) => app.log.error({ err }, 'ticker failed'))
    }, tickInterval)
    ticker.unref()
    app.addHook('preClose', async () => clearInterval(ticker))
  }

  const devToken = config.jwtSecret === null ? app.jwt.sign({ sub: 'dev-user' }, { expiresIn: '12h' }) : null
  return { app, devToken }
}

async function main (): Promise<void> {
  const config = loadConfig()
  const tick = process.env.TICK_INTERVAL
  const tickInterval = tick === undefined || tick === '' ? 5000 : Number(tick)
  if (!Number.isInteger(tickInterval) || tickInterval < 0) throw new Error(`TICK_INTERVAL must be a whole number of ms, got ${JSON.stringify(tick)}`)
  const users = process.env.DASHBOARD_USERS
  const dashboardUsers = users === undefined || users === '' ? undefined : users.split(',').map((u) => u.trim()).filter((u) => u !== '')
  const { app, devToken } = await buildServer(config, { tickInterval, dashboardUsers })
  // SIGTERM (a deploy): drain over DRAIN_DURATION (readiness false, upgrades 503, connections
  // closed with 1012 in batches), then close and exit 0. A second SIGTERM, or SIGINT, closes
  // what remains at once with the shutdown code.
  let closing = false
  const close = (signal: string): void => {
    if (closing) return
    closing = true
    app.log.info({ signal }, 'shutting down')
    app.close().then(() => process.exit(0), (err: unknown) => {
      app.log.error({ err }, 'shutdown failed')
      process.exit(1)
    })
  }
  let draining = false
  const drain = (): void => {
    if (draining) {
      close('SIGTERM')
      return
    }
    draining = true
    app.wsManager.drain({ duration: config.drainDuration })
      .then(() => close('SIGTERM'), (err: unknown) => {
        app.log.error({ err }, 'drain failed')
        close('SIGTERM')
      })
  }
  process.on('SIGTERM', drain)
  process.on('SIGINT', () => close('SIGINT'))
  const address = await app.listen({ port: config.port, host: config.host })
  if (devToken !== null) {
    // Printed to the console on purpose, never through the logger: JWT_SECRET is unset, so
    // this token is the only way in, and it dies with the process's random secret.
    process.stdout.write(`\nJWT_SECRET is not set: a random secret is in use. Dev token (user "dev-user", 12 h):\n${devToken}\n` +
      `Open ${address}/#token=${devToken}\n`)
  }
  process.stdout.write(`Browser terminal: ${address}${TERMINAL_PATH}#token=${devToken ?? '<a token>'}\n`)
  if (app.wsManager.options.dashboard !== false) {
    const tokenHint = devToken === null ? '<a token of a DASHBOARD_USERS user>' : devToken
    process.stdout.write(`Live dashboard: ${address}${DASHBOARD_PATH}?access_token=${tokenHint}\n\n`)
  }
}

if (require.main === module) {
  main().catch((err: unknown) => {
    console.error(err)
    process.exit(1)
  })
}
