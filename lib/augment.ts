import '@fastify/websocket'
import type { Connection } from './connection'
import type { WsManager } from './manager'
import type { RouteWsManagerConfig } from './options'

declare module 'fastify' {
  interface FastifyInstance {
    /** The connection manager: registry, components, and operations over all connections. */
    wsManager: WsManager
  }

  interface FastifyRequest {
    /** The managed connection of a WebSocket request, set before the route handler runs; null for plain HTTP. */
    wsConnection: Connection | null
  }

  interface FastifyContextConfig {
    /** fastify-ws-manager settings of a `{ websocket: true }` route. */
    wsManager?: RouteWsManagerConfig
  }
}
