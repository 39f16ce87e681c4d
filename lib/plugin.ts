import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import websocket, { type WebsocketHandler } from '@fastify/websocket'
import rateLimit from '@fastify/rate-limit'
import FindMyWay from 'find-my-way'
import type WebSocket from 'ws'
import {
  capsExceeded, createAdmissionHook, createCapsHook, createClusterAdmitHook, evictOldest, refuse, releaseReservation, reservationOf, upgradeRateKey,
  type AdmissionSettings, type CreateRateLimit, type RateLimiter
} from './admission'
import { Authenticator } from './auth'
import { registerDashboard, type DashboardGate } from './dashboard'
import { isCompressionError, perMessageDeflateOptions } from './compression-profiles'
import { HOLD_HOOKS, type Connection, type RouteSettings } from './connection'
import { channels, handlerTraced, handlerTracing } from './diagnostics'
import { RouteHooks } from './hooks'
import { errors } from './errors'
import { isFrameSizeError } from './frame-size'
import { createProtocolSelector, onClientError } from './handshake'
import { detachHttpResponse } from './internals'
import { WsManager } from './manager'
import { WsMetrics } from './metrics'
import type { ConnectionObserver } from './manager'
import type { RouterObserver } from './router'
import { WsTracing } from './tracing'
import { registerHealth } from './health'
import { normalizeOptions, resolveRouteConfig, type WsManagerOptions } from './options'
import { createOriginCheck } from './origin'
import { createUrlRedactor } from './redact'
import { refusalBody, refuseRawSocket, UpgradeRefusal } from './refusal'
import { ANSWERED, createAjv, MessageRouter, RouterReplyError, type MessageRoutes } from './router'
import { topicProblem } from './topics'
import { ManagedWebSocket } from './socket'

// During shutdown the upgrade never reaches Fastify's router: its own 503 path writes to
// the socket but leaves the detached upgrade socket open, one file descriptor per request.
function refuseUpgrade (_request: IncomingMessage, socket: Duplex): void {
  refuseRawSocket(socket, 503, 'Server is shutting down', { 'Retry-After': '1' })
}

function isWebSocketRoute (routeOptions: RouteOptions): boolean {
  const methods = Array.isArray(routeOptions.method) ? routeOptions.method : [routeOptions.method]
  // Fastify adds a HEAD route for each GET route; a HEAD request cannot be upgraded.
  return !methods.every((method) => method === 'HEAD')
}

function appendHook<T> (existing: T | T[] | undefined, hook: T): T[] {
  if (existing === undefined) return [hook]
  return Array.isArray(existing) ? [...existing, hook] : [existing, hook]
}

function noop (): void {}

function isThenable (value: unknown): value is PromiseLike<unknown> {
  return value !== null && typeof value === 'object' && typeof (value as PromiseLike<unknown>).then === 'function'
}

// @fastify/websocket adds one 'error' listener to each socket right before it calls the route
// handler; it closes over the request and reply, which would then live as long as the
// connection. It is the last one added when the handler starts; listeners the application
// added before (in a 'connection' listener of the WebSocketServer) stay.
function dropFastifyWebsocketErrorListener (socket: WebSocket): void {
  const listeners = socket.listeners('error')
  const theirs = listeners[listeners.length - 1]
  if (theirs !== undefined) socket.removeListener('error', theirs as (...args: unknown[]) => void)
}

async function wsManagerPlugin (fastify: FastifyInstance, input: WsManagerOptions): Promise<void> {
  const options = normalizeOptions(input)
  if (fastify.hasDecorator('websocketServer') || fastify.hasPlugin('@fastify/websocket')) {
    throw new errors.FST_WSM_WEBSOCKET_REGISTERED()
  }

  const manager = new WsManager(options, fastify.log)
  // Created now (its Redis connections open when it starts, at the end of registration) so
  // that @fastify/rate-limit below can share its command connection.
  const cluster = options.cluster === false ? null : manager.createCluster(options.cluster)
  fastify.decorate('wsManager', manager)
  let metrics: WsMetrics | null = null
  if (options.metrics !== false) {
    metrics = new WsMetrics(options.metrics, {
      stats: () => manager.stats(),
      clusterNodes: () => cluster === null ? null : cluster.nodes().then((nodes) => nodes.length)
    })
    manager.metrics = metrics
    manager.heartbeat.onLatency = metrics.observeLatency
    const registered = metrics
    // The application's registry outlives the app: take the plugin's metrics out of it, at
    // close or when registration fails right here.
    fastify.addHook('onClose', (_instance, done) => {
      registered.remove()
      done()
    })
    if (options.metrics.endpoint !== false) {
      try {
        metrics.route(fastify, options.metrics.endpoint, options.metrics.onRequest)
      } catch (err) {
        metrics.remove()
        throw err
      }
    }
  }
  fastify.decorateRequest('wsConnection', null)
  const ajv = createAjv()
  const listenServer = fastify.server

  // Authentication needs the application's @fastify/jwt, registered before or after this
  // plugin: it is looked up now if present, else when the app is ready (failing ready()).
  let authenticator: Authenticator | null = null
  const auth = options.auth
  // Every GET route, matched as Fastify's own router matches (a static route wins over a
  // parametric one), each marked with whether it is an authenticated WebSocket route: the
  // query token is taken out of those URLs only.
  const getRoutes = FindMyWay<FindMyWay.HTTPVersion.V1>({ ignoreTrailingSlash: true, ignoreDuplicateSlashes: true, caseSensitive: false })
  const redactsPath = (path: string): boolean => (getRoutes.find('GET', path)?.store as { redact?: boolean } | undefined)?.redact === true
  let redactor: ((request: IncomingMessage) => void) | null = null
  if (auth !== false) {
    if (fastify.hasDecorator('jwt')) authenticator = new Authenticator(fastify, auth)
    fastify.addHook('onReady', async () => {
      authenticator ??= new Authenticator(fastify, auth)
    })
    if (auth.queryParam !== false && auth.sources.includes('query')) {
      redactor = createUrlRedactor(auth.queryParam, redactsPath)
      listenServer.prependListener('upgrade', redactor)
      listenServer.prependListener('request', redactor)
    }
  }

  // The upgrade rate limit runs through @fastify/rate-limit so that the application's store
  // (Redis included) is shared; without one registered, the plugin brings its own, even when
  // the plugin-wide limit is off, since a route may still set one.
  // In cluster mode it counts in Redis, so the limit holds across nodes; while Redis cannot be
  // reached, upgrades are let through (skipOnError) rather than refused or held.
  if (!fastify.hasDecorator('createRateLimit')) {
    await fastify.register(rateLimit, cluster === null
      ? { global: false }
      : { global: false, redis: cluster.commands, nameSpace: `${cluster.options.prefix}:rate-limit:`, skipOnError: true })
  }
  const createRateLimit = (): CreateRateLimit => (fastify as unknown as { createRateLimit: CreateRateLimit }).createRateLimit
  // Built on first use: @fastify/rate-limit may be registered after the routes. The
  // plugin-wide limiter is one for every route, so its budget does not grow with their number.
  let sharedLimiter: RateLimiter | null = null
  const pluginLimit = options.upgradeRateLimit
  function sharedUpgradeLimiter (): RateLimiter | null {
    if (pluginLimit === false) return null
    sharedLimiter ??= createRateLimit()({ max: pluginLimit.max, timeWindow: pluginLimit.timeWindow, keyGenerator: upgradeRateKey('*') })
    return sharedLimiter
  }
  const tracing = options.tracing ? new WsTracing() : null
  manager.tracing = tracing
  manager.observer = combineObservers(metrics, tracing)
  const routerObserver = combineRouterObservers(metrics, tracing)
  const originAllowed = createOriginCheck(options.allowedOrigins, options.requireOrigin)

  // One listener function for every managed socket. Errors of the application's handler
  // never come here (the wrapper contains them): these are 'error' events of the socket,
  // after which ws closes it with the right code.
  function onSocketError (this: ManagedWebSocket, error: Error): void {
    const connection = this.connection
    if (connection === null) return
    if (isFrameSizeError(error)) {
      // The frame-size validator logs the violation itself, with user and connection.
      manager.frames.recordViolation(connection.userId, connection.id)
    } else if (connection.compressing && isCompressionError(error)) {
      manager.compression.recordError(this, error)
    } else {
      connection.log.warn({ err: error }, 'connection error')
    }
  }

  function wrap (handler: WebsocketHandler, route: string, settings: RouteSettings, admission: AdmissionSettings, requestPrototype: { value: object | null }): WebsocketHandler {
    return function managedHandler (this: FastifyInstance, socket: WebSocket, request: FastifyRequest) {
      requestPrototype.value ??= Object.getPrototypeOf(request) as object
      dropFastifyWebsocketErrorListener(socket)
      socket.on('error', onSocketError as (this: WebSocket, error: Error) => void)
      detachHttpResponse(socket)
      // The caps were checked before the upgrade; an asynchronous ws `verifyClient` can let
      // others in between, so they are checked again now that the socket exists.
      const over = capsExceeded(manager, admission, request)
      const reservation = reservationOf(request)
      if (over !== null) {
        releaseReservation(manager, request)
        request.log.info({ reason: over.reason }, 'connection refused after upgrade')
        manager.refused(request, over.statusCode, over.reason, settings.hooks)
        socket.close(1013, 'Try again later')
        return
      }
      let connection
      try {
        connection = manager.accept(socket as ManagedWebSocket, request, route, settings, reservation?.id)
        if (reservation !== undefined) {
          reservation.accepted = true
          manager.clusterNode?.settled(reservation.id)
        }
        if (tracing !== null) tracing.connectAccepted(request, connection)
      } catch (err) {
        // Nothing may leave an upgraded socket unmanaged and open.
        request.log.error({ err }, 'connection setup failed')
        const managed = (socket as ManagedWebSocket).connection
        if (managed !== null) managed.fail(err, 'setup')
        else socket.close(1011, 'Internal error')
        return
      }
      if (manager.shuttingDown) {
        // The upgrade passed routing just before shutdown began; it gets the shutdown code too.
        connection.close(options.close.shutdownCode, options.close.shutdownReason).catch(noop)
        return
      }
      const drain = manager.drainClose
      if (drain !== null) {
        // Admitted just before the drain began: it goes the way of the others, now.
        connection.close(drain.code, drain.reason).catch(noop)
        return
      }
      // 'closeOldest' makes room only once the new connection exists, so a request that ws
      // then refused (a bad handshake) cannot cost the user a connection.
      if (admission.onUserLimit === 'closeOldest') evictOldest(manager, connection, admission.maxConnectionsPerUser, reservation)
      if (channels.connection.hasSubscribers) channels.connection.publish({ connection, request })
      const app = this
      const run = (): void => runHandler(handler, app, socket, request, connection)
      if (!settings.hooks.has('onConnection')) return run()
      let pending
      try {
        pending = settings.hooks.run('onConnection', [connection, request])
      } catch (err) {
        connection.fail(err, 'hook:onConnection')
        return
      }
      // A hook may have closed the connection (or had it closed); the handler then does not run.
      if (pending === null) {
        if (connection.state === 'open') run()
        return
      }
      // Nothing is read from the peer until the hooks are done and the handler has attached
      // its listeners, so no message goes by unseen.
      connection.holdInput(HOLD_HOOKS)
      pending.then(() => {
        if (connection.state !== 'open') return
        run()
        connection.releaseInput(HOLD_HOOKS)
      }, (err: unknown) => connection.fail(err, 'hook:onConnection'))
    }
  }

  function runHandler (handler: WebsocketHandler, app: FastifyInstance, socket: WebSocket, request: FastifyRequest, connection: Connection): void {
    let result: unknown
    try {
      if (handlerTraced()) {
        const context = { connection, request }
        const sync = handlerTracing.traceSync(() => handler.call(app, socket, request), context) as unknown
        result = isThenable(sync) ? handlerTracing.tracePromise(() => Promise.resolve(sync), context) : sync
      } else {
        result = handler.call(app, socket, request)
      }
    } catch (err) {
      connection.fail(err, 'handler')
      return
    }
    if (isThenable(result)) result.then(undefined, (err: unknown) => connection.fail(err, 'handler'))
  }

  // Added before @fastify/websocket registers, so this hook runs first and wraps the
  // application's handler before @fastify/websocket moves it aside.
  fastify.addHook('onRoute', (routeOptions) => {
    const isWs = routeOptions.websocket === true || typeof routeOptions.wsHandler === 'function'
    const methods = Array.isArray(routeOptions.method) ? routeOptions.method : [routeOptions.method]
    if (!isWs || !isWebSocketRoute(routeOptions)) {
      // @fastify/websocket upgrades on every route and only then closes sockets of routes
      // without a WebSocket handler: a 101 that no admission check has seen. Refused here.
      routeOptions.onRequest = appendHook(routeOptions.onRequest, refuseUnmanagedUpgrade)
      // The dashboard's page takes a token in its query like the WebSocket routes: redacted.
      if (methods.includes('GET')) remember(routeOptions.url, isDashboardPath(routeOptions.url) && auth !== false)
      return
    }
    const route = routeOptions.url
    const config = resolveRouteConfig((routeOptions.config as { wsManager?: unknown } | undefined)?.wsManager, options, route)
    // The route's request prototype, taken from its first upgrade: auth.refresh verifies on a
    // stand-in made from it, so that @fastify/jwt's request methods are there.
    const requestPrototype: { value: object | null } = { value: null }
    const router = config.messages === null
      ? null
      : new MessageRouter(config.messages, config.messageErrorLimit, ajv, `config.wsManager.messages (route ${route})`,
        { ...(config.auth ? refreshRoute(requestPrototype) : {}), ...(options.topics === false ? {} : topicRoutes()) })
    if (router !== null) router.observer = routerObserver
    const settings = manager.routeSettings(config, router, new RouteHooks(manager.hooks, config.hooks, `config.wsManager.hooks (route ${route})`))
    // A gauge at 0 rather than no series: an autoscaler on ws_connections_active sees a new
    // node's zero (see deploy/kubernetes).
    manager.traffic.declare(route)
    const admission: AdmissionSettings = {
      route,
      get authenticator () { return config.auth ? authenticator : null },
      originAllowed,
      maxConnections: options.maxConnections,
      maxConnectionsPerIp: options.maxConnectionsPerIp,
      maxConnectionsPerUser: options.maxConnectionsPerUser,
      onUserLimit: options.onUserLimit,
      deflateWindowBits: options.compression.enabled ? options.compression.serverMaxWindowBits : null,
      hooks: settings.hooks
    }
    if (routeOptions.websocket === true) {
      routeOptions.handler = wrap(routeOptions.handler as unknown as WebsocketHandler, route, settings, admission, requestPrototype) as unknown as RouteOptions['handler']
    } else {
      routeOptions.wsHandler = wrap(routeOptions.wsHandler as WebsocketHandler, route, settings, admission, requestPrototype) as typeof routeOptions.wsHandler
    }
    remember(route, config.auth)

    const own = config.upgradeRateLimit
    let routeLimiter: RateLimiter | null = null
    const getLimiter = own === undefined
      ? sharedUpgradeLimiter
      : own === false
        ? () => null
        : () => {
            routeLimiter ??= createRateLimit()({ max: own.max, timeWindow: own.timeWindow, keyGenerator: upgradeRateKey(route) })
            return routeLimiter
          }
    routeOptions.onRequest = appendHook(routeOptions.onRequest, createAdmissionHook(manager, admission, getLimiter))
    if (cluster !== null) routeOptions.preHandler = appendHook(routeOptions.preHandler, createClusterAdmitHook(manager, admission, route))
    routeOptions.preHandler = appendHook(routeOptions.preHandler, createCapsHook(manager, admission))
  })

  // Route URLs carry the prefix the plugin was registered under; the option does not.
  function isDashboardPath (url: string): boolean {
    const dashboard = options.dashboard
    if (dashboard === false) return false
    const full = fastify.prefix + dashboard.path
    return url === full || url.startsWith(full + '/')
  }

  // The built-in auth.refresh: a new token of the same user, verified by @fastify/jwt as an
  // upgrade's would be, replaces the connection's claims and moves its expiry, without a
  // reconnect. Another user's token closes with 1008; a bad token is an error reply.
  function refreshRoute (requestPrototype: { value: object | null }): MessageRoutes {
    return {
      'auth.refresh': {
        schema: { type: 'object', required: ['type', 'token'], properties: { type: { const: 'auth.refresh' }, token: { type: 'string', minLength: 1, maxLength: 16_384 } } },
        handler: async (message: { token: string }, connection: Connection) => {
          if (authenticator === null || requestPrototype.value === null) return new RouterReplyError('INVALID_TOKEN', 'authentication is not ready')
          // Own properties over the prototype's getters (ip and others read the raw request).
          const standIn = Object.create(requestPrototype.value, {
            id: { value: `refresh-${connection.id}` },
            server: { value: fastify },
            url: { value: connection.route },
            headers: { value: {} },
            query: { value: {} },
            ip: { value: connection.remoteAddress },
            log: { value: connection.log },
            user: { value: undefined, writable: true }
          }) as FastifyRequest
          const result = await authenticator.verifyToken(message.token, standIn)
          if (result instanceof UpgradeRefusal) {
            return new RouterReplyError(result.statusCode === 429 ? 'AUTH_RATE_LIMITED' : 'INVALID_TOKEN', result.message)
          }
          if (connection.state !== 'open') return undefined
          if (result.userId !== connection.userId) {
            connection.log.warn({ tokenUser: result.userId }, 'refresh with another user\'s token')
            connection.close(1008, 'Token user mismatch').catch(noop)
            return undefined
          }
          manager.refreshAuth(connection, result)
          return { type: 'auth.refreshed', exp: result.exp }
        }
      }
    }
  }

  // The built-in topic messages (the `topics` option): subscribe with recovery, unsubscribe.
  // The subscription, its answer and the replay of what was missed happen in one tick, so no
  // live message can come between them: no gap, no duplicate.
  function topicRoutes (): MessageRoutes {
    const topics = options.topics
    if (topics === false) return {}
    const since = { type: 'object', required: ['offset', 'epoch'], properties: { offset: { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER }, epoch: { type: 'string', maxLength: 64 } } }
    return {
      'topic.subscribe': {
        schema: { type: 'object', required: ['type', 'topic'], properties: { type: { const: 'topic.subscribe' }, topic: { type: 'string' }, since } },
        handler: async (message: { topic: string, since?: { offset: number, epoch: string } }, connection: Connection, id?: string | number) => {
          const problem = topicProblem(message.topic)
          if (problem !== null) return new RouterReplyError('INVALID_MESSAGE', `topic ${problem}`)
          let allowed = false
          try {
            allowed = await topics.authorize(connection, message.topic) === true
          } catch (err) {
            connection.log.error({ err }, 'topics.authorize failed')
          }
          if (!allowed) return new RouterReplyError('TOPIC_FORBIDDEN', 'not allowed to subscribe to this topic')
          if (connection.state !== 'open') return ANSWERED
          // Subscribed already: nothing was missed on this connection, and a replay on every
          // repeat would let a client make the server send whole histories at will.
          const already = connection.topics.includes(message.topic)
          try {
            connection.subscribe(message.topic).catch(noop)
          } catch (err) {
            return new RouterReplyError('INVALID_MESSAGE', (err as Error).message)
          }
          if (!connection.topics.includes(message.topic)) return new RouterReplyError('INVALID_MESSAGE', 'the connection has too many topics')
          const log = manager.topicLog as NonNullable<typeof manager.topicLog>
          if (cluster !== null) {
            if (!already) return recoverFromRedis(connection, message.topic, message.since, id)
            const repeat: Record<string, unknown> = { type: 'topic.subscribed', topic: message.topic, epoch: null, offset: null, recovered: true }
            if (id !== undefined) repeat.id = id
            connection.send(repeat)
            return ANSWERED
          }
          const recovery = already ? { ...log.recover(message.topic, undefined), recovered: true } : log.recover(message.topic, message.since)
          const answer: Record<string, unknown> = { type: 'topic.subscribed', topic: message.topic, epoch: recovery.epoch, offset: recovery.offset, recovered: recovery.recovered }
          if (id !== undefined) answer.id = id
          connection.send(answer)
          for (const frame of recovery.frames) connection.send(frame, { binary: false })
          return ANSWERED
        }
      },
      'topic.unsubscribe': {
        schema: { type: 'object', required: ['type', 'topic'], properties: { type: { const: 'topic.unsubscribe' }, topic: { type: 'string', maxLength: 256 } } },
        handler: (message: { topic: string }, connection: Connection) => {
          connection.unsubscribe(message.topic)
          return { type: 'topic.unsubscribed', topic: message.topic }
        }
      }
    }
  }

  // In cluster mode the history is a Redis stream: live messages for this subscription wait
  // while the channel is subscribed and the stream read, then go out after the replay, those
  // the replay already held skipped.
  async function recoverFromRedis (connection: Connection, topic: string, since: { offset: number, epoch: string } | undefined, id: string | number | undefined): Promise<symbol> {
    manager.beginRecovery(connection, topic)
    try {
      await manager.topics.whenReady(topic)
      const ttl = (manager.topicLog as NonNullable<typeof manager.topicLog>).ttl
      const state = await (cluster as NonNullable<typeof cluster>).topicSince(topic, since === undefined ? -1 : since.offset, ttl, since?.epoch ?? '')
      if (connection.state !== 'open') return ANSWERED
      const answer: Record<string, unknown> = { type: 'topic.subscribed', topic, epoch: null, offset: null, recovered: false }
      if (id !== undefined) answer.id = id
      if (state === null) {
        connection.send(answer)
        manager.endRecovery(connection, topic, 0)
        return ANSWERED
      }
      const held = since === undefined || (state.epoch === since.epoch && since.offset <= state.offset &&
        (since.offset === state.offset || (state.first > 0 && state.first <= since.offset + 1)))
      answer.epoch = state.epoch
      answer.offset = state.offset
      answer.recovered = held
      connection.send(answer)
      if (held && since !== undefined) for (const frame of state.frames) connection.send(frame)
      manager.endRecovery(connection, topic, state.offset, state.epoch)
      return ANSWERED
    } catch (err) {
      manager.endRecovery(connection, topic, 0)
      throw err
    }
  }

  function remember (url: string, redact: boolean): void {
    try {
      getRoutes.on('GET', url, noop, { redact })
    } catch {
      // The same path registered twice (constraints, or a HEAD twin): the first one counts.
    }
  }

  const pluginHooks = new RouteHooks(manager.hooks, undefined, 'hooks')
  async function refuseUnmanagedUpgrade (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    if (request.ws) refuse(manager, request, reply, new UpgradeRefusal(404, 'Not a WebSocket route', 'not a websocket route'), pluginHooks)
  }

  const upgradeListenersBefore = new Set(listenServer.listeners('upgrade'))
  await fastify.register(websocket, {
    options: {
      ...options.ws,
      WebSocket: ManagedWebSocket as unknown as typeof WebSocket.WebSocket,
      ...manager.frames.getServerOptions(),
      perMessageDeflate: perMessageDeflateOptions(options.compression, true),
      handleProtocols: createProtocolSelector(auth === false ? 'bearer.' : auth.subprotocolPrefix),
      // Pings are answered by the connection, within the sender's message budget.
      autoPong: false,
      // ws 8.18+ bounds its own close handshakes (protocol errors, 1009) with this.
      ...({ closeTimeout: options.close.timeout })
    },
    // Managed sockets get onSocketError instead; this one serves sockets of routes that are
    // not WebSocket routes, which @fastify/websocket closes at once.
    errorHandler (error, _socket, request) {
      request.log.warn({ err: error }, 'connection error')
    },
    async preClose () {
      for (const listener of ownUpgradeListeners) listenServer.removeListener('upgrade', listener as (...args: unknown[]) => void)
      listenServer.on('upgrade', refuseUpgrade)
      await manager.shutdown()
      await new Promise<void>((resolve) => fastify.websocketServer.close(() => resolve()))
    }
  })
  // Exactly what registering @fastify/websocket added: removed at shutdown, and nothing else.
  const ownUpgradeListeners = listenServer.listeners('upgrade').filter((l) => !upgradeListenersBefore.has(l))
  fastify.websocketServer.on('wsClientError', (error: Error, socket: Duplex, request: IncomingMessage) => {
    manager.countRefusal(onClientError(error, socket, request), 'handshake')
  })

  fastify.addHook('onClose', (_instance, done) => {
    listenServer.removeListener('upgrade', refuseUpgrade)
    if (redactor !== null) {
      listenServer.removeListener('upgrade', redactor)
      listenServer.removeListener('request', redactor)
    }
    done()
  })

  const dashboard = options.dashboard
  if (dashboard !== false) {
    // A valid token first when auth is on (from any auth source), then the application's say.
    const gate: DashboardGate = async (request, reply) => {
      if (auth !== false) {
        authenticator ??= new Authenticator(fastify, auth)
        const result = await authenticator.authenticate(request)
        if (result instanceof UpgradeRefusal) {
          reply.code(result.statusCode).headers(result.headers).type('application/json; charset=utf-8').send(refusalBody(result.statusCode, result.message))
          return false
        }
      }
      let allowed = false
      try {
        allowed = await dashboard.authorize(request) === true
      } catch (err) {
        request.log.error({ err }, 'dashboard authorize failed')
      }
      if (!allowed) {
        reply.code(403).type('application/json; charset=utf-8').send(refusalBody(403, 'Not allowed to see the dashboard'))
        return false
      }
      return true
    }
    registerDashboard(fastify, manager, { path: dashboard.path }, gate)
  }

  if (options.health !== false) {
    registerHealth(fastify, options.health, manager, cluster, options.cluster !== false && options.cluster.required)
  }

  if (cluster !== null) {
    // Last, so that nothing after it can fail registration with the node registered in Redis.
    // A duplicate node id fails registration (and ready()) with FST_WSM_CLUSTER_NODE_ID_TAKEN.
    await cluster.start()
    // After preClose has closed every connection, so their presence goes before the node's.
    fastify.addHook('onClose', async () => cluster.stop())
  }
}

/** Metrics and tracing both hear of closes and refusals; null when neither is on. */
function combineObservers (a: ConnectionObserver | null, b: ConnectionObserver | null): ConnectionObserver | null {
  if (a === null || b === null) return a ?? b
  return {
    closed (connection, info) {
      a.closed(connection, info)
      b.closed(connection, info)
    },
    refused (statusCode, reason, request) {
      a.refused(statusCode, reason, request)
      b.refused(statusCode, reason, request)
    }
  }
}

/** Metrics time the handler inside the tracing span, so the span covers the same work. */
function combineRouterObservers (a: RouterObserver | null, b: RouterObserver | null): RouterObserver | null {
  if (a === null || b === null) return a ?? b
  return {
    handle: (connection, type, message, size, run) => a.handle(connection, type, message, size, () => b.handle(connection, type, message, size, run)),
    rejected (connection, code) {
      a.rejected(connection, code)
      b.rejected(connection, code)
    }
  }
}

/**
 * The plugin: registers @fastify/websocket with derived ws options and makes every socket of
 * a `{ websocket: true }` route a managed connection.
 */
export const wsManager = fp(wsManagerPlugin, {
  fastify: '5.x',
  name: 'fastify-ws-manager'
})
