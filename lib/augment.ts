import '@fastify/websocket'
import type { Connection } from './connection'
import type { WsManager } from './manager'

declare module 'fastify' {
  interface FastifyInstance {
    /** The connection manager: registry, components, and operations over all connections. */
    wsManager: WsManager
  }

  interface FastifyRequest {
    /** The managed connection of a WebSocket request, set before the route handler runs; null for plain HTTP. */
    wsConnection: Connection | null
  }
}
