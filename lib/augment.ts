import '@fastify/websocket'
import type {
  ContextConfigDefault, FastifyBaseLogger, FastifySchema, FastifyTypeProvider, FastifyTypeProviderDefault,
  RawRequestDefaultExpression, RawServerBase, RawServerDefault, RouteGenericInterface
} from 'fastify'
import type { FastifyRequestType, ResolveFastifyRequestType } from 'fastify/types/type-provider'
import type { Connection } from './connection'
import type { WsManager } from './manager'
import type { RouteWsManagerConfig } from './options'

/**
 * What `request.wsConnection` is for a route's generics: a `Connection<WsData>` when the route
 * declares `WsData` (`app.get<{ WsData: { room: string } }>('/ws', { websocket: true }, ...)`),
 * else `Connection | null` (null on plain HTTP routes).
 */
export type WsConnectionOf<RouteGeneric> = RouteGeneric extends { WsData: infer Data extends object } ? Connection<Data> : Connection | null

declare module 'fastify' {
  interface FastifyInstance {
    /** The connection manager: registry, components, and operations over all connections. */
    wsManager: WsManager
  }

  // @fastify/websocket's handler takes a RequestGenericInterface: WsData goes on both.
  interface RequestGenericInterface {
    /** The type of `connection.data` on a `{ websocket: true }` route; declaring it also makes `request.wsConnection` non-null there. */
    WsData?: object
  }

  // Merging needs Fastify's type parameter list exactly, used or not.
  /* eslint-disable @typescript-eslint/no-unused-vars */
  interface FastifyRequest<RouteGeneric extends RouteGenericInterface = RouteGenericInterface,
    RawServer extends RawServerBase = RawServerDefault,
    RawRequest extends RawRequestDefaultExpression<RawServer> = RawRequestDefaultExpression<RawServer>,
    SchemaCompiler extends FastifySchema = FastifySchema,
    TypeProvider extends FastifyTypeProvider = FastifyTypeProviderDefault,
    ContextConfig = ContextConfigDefault,
    Logger extends FastifyBaseLogger = FastifyBaseLogger,
    RequestType extends FastifyRequestType = ResolveFastifyRequestType<TypeProvider, SchemaCompiler, RouteGeneric>
  > {
    /**
     * The managed connection of a WebSocket request, set before the route handler runs; null
     * for plain HTTP. Typed `Connection<WsData>` (not null) on routes that declare `WsData`.
     */
    wsConnection: WsConnectionOf<RouteGeneric>
  }
  /* eslint-enable @typescript-eslint/no-unused-vars */

  interface FastifyContextConfig {
    /** fastify-ws-manager settings of a `{ websocket: true }` route. */
    wsManager?: RouteWsManagerConfig
  }
}
