// The reference server `npm start` runs: configured from the environment (see the README's
// table), safe to expose, and closing every connection with a proper code on SIGTERM/SIGINT.
import Fastify, { type FastifyInstance } from 'fastify'
import wsManager, { loadConfig, type ServerConfig } from '../lib/index'

/** Builds the reference app without listening, so tests can run it in-process too. */
export async function buildServer (config: ServerConfig): Promise<FastifyInstance> {
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
  await app.register(wsManager, config.options)

  app.get(config.path, { websocket: true }, (socket, request) => {
    const connection = request.wsConnection
    socket.send(JSON.stringify({ type: 'welcome', connectionId: connection?.id }))
    socket.on('message', (data, isBinary) => {
      const text = isBinary ? null : data.toString()
      if (text !== null && text.startsWith('broadcast:')) {
        const payload = text.slice('broadcast:'.length)
        for (const other of app.wsManager.connections) other.socket.send(payload)
        return
      }
      socket.send(data, { binary: isBinary })
    })
  })

  app.get('/health', async () => app.wsManager.checkConnectionHealth())
  app.get('/stats', async () => app.wsManager.stats())
  return app
}

async function main (): Promise<void> {
  const config = loadConfig()
  const app = await buildServer(config)
  let closing = false
  const stop = (signal: string): void => {
    if (closing) return
    closing = true
    app.log.info({ signal }, 'shutting down')
    app.close().then(() => process.exit(0), (err: unknown) => {
      app.log.error({ err }, 'shutdown failed')
      process.exit(1)
    })
  }
  process.once('SIGTERM', () => stop('SIGTERM'))
  process.once('SIGINT', () => stop('SIGINT'))
  await app.listen({ port: config.port, host: config.host })
}

if (require.main === module) {
  main().catch((err: unknown) => {
    console.error(err)
    process.exit(1)
  })
}
