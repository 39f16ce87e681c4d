import { expect, test } from 'tstyche'
import Fastify from 'fastify'
import wsManager, {
  CloseCode, Connection, GracefulCloseManager, loadConfig,
  type ClusterApi, type ClusterNode, type DisconnectResults, type PresenceEntry,
  type CloseResult, type ConnectionRegistry, type SendResult, type HealthReport, type ServerConfig, type WsManagerOptions, type WsManagerStats
} from '..'

const app = Fastify()

test('the plugin takes its options', () => {
  expect(app.register(wsManager, { auth: false })).type.not.toRaiseError()
  expect(app.register(wsManager, { close: { timeout: 1000, shutdownCode: 1012 } })).type.not.toRaiseError()
  expect(app.register(wsManager, { auth: { userIdClaim: 'uid', algorithms: ['RS256'], expiryGraceMs: 1000 } })).type.not.toRaiseError()
  expect(app.register(wsManager, {
    allowedOrigins: ['https://app.example.com', /\.example\.com$/],
    upgradeRateLimit: { max: 10, timeWindow: 60_000 },
    messageRateLimit: { max: 50, policy: 'drop' },
    maxConnections: 10_000,
    maxConnectionsPerUser: 5,
    onUserLimit: 'closeOldest',
    heartbeat: { pingInterval: 15_000 },
    idleTimeout: 0,
    frameSize: 'strict',
    compression: 'default',
    backpressure: { highWaterMark: 512 * 1024, policy: 'wait' }
  })).type.not.toRaiseError()
  expect(app.register(wsManager, { auth: 'yes' })).type.toRaiseError()
  expect(app.register(wsManager, { close: { timeout: '1s' } })).type.toRaiseError()
  expect(app.register(wsManager, { backpressure: { policy: 'block' } })).type.toRaiseError()
  expect(app.register(wsManager, { onUserLimit: 'kick' })).type.toRaiseError()
})

test('fastify.wsManager is typed', () => {
  expect(app.wsManager.connections).type.toBe<ConnectionRegistry>()
  expect(app.wsManager.connections.size).type.toBe<number>()
  expect(app.wsManager.connections.get('id')).type.toBe<Connection | undefined>()
  expect(app.wsManager.connections.byUser('u')).type.toBe<Connection[]>()
  expect(app.wsManager.connections.byRoute('/ws')).type.toBe<Connection[]>()
  expect(app.wsManager.getConnectionsByUserId('u')).type.toBe<Connection[]>()
  expect(app.wsManager.checkConnectionHealth()).type.toBe<Promise<HealthReport>>()
  expect(app.wsManager.closeAll({ code: 1001, reason: 'bye', timeout: 100 })).type.toBe<Promise<CloseResult[]>>()
  expect(app.wsManager.stats()).type.toBe<WsManagerStats>()
  expect(app.wsManager.closer).type.toBe<GracefulCloseManager>()
})

test('the handler sees request.wsConnection', () => {
  app.get('/ws', { websocket: true }, (socket, request) => {
    expect(request.wsConnection).type.toBe<Connection | null>()
    expect(socket.send).type.not.toBe<never>()
  })
})

test('routes take config.wsManager', () => {
  expect(app.get('/r', { websocket: true, config: { wsManager: { auth: false, heartbeat: false, idleTimeout: 1000 } } }, () => {})).type.not.toRaiseError()
  expect(app.get('/r', { websocket: true, config: { wsManager: { messages: { ping: { handler: () => ({ type: 'pong' }) } } } } }, () => {})).type.not.toRaiseError()
  expect(app.get('/r', { websocket: true, config: { wsManager: { heartbeat: { pingInterval: 'often' } } } }, () => {})).type.toRaiseError()
})

test('delivery is typed', () => {
  app.get('/d', { websocket: true }, (_socket, request) => {
    const connection = request.wsConnection as Connection
    expect(connection.send({ type: 'x' })).type.toBe<SendResult | Promise<SendResult>>()
    expect(connection.waitForDrain()).type.toBe<Promise<void>>()
  })
  expect(app.wsManager.broadcast({ a: 1 }, { route: '/d', filter: (c) => c.userId !== null })).type.toBe<Promise<number>>()
  expect(app.wsManager.sendToUser('u', 'hi')).type.toBe<Promise<number>>()
  expect(app.wsManager.disconnectUser('u', { code: 4000 })).type.toBe<Promise<DisconnectResults>>()
  expect(app.wsManager.publish('room', { hi: 1 })).type.toBe<Promise<number>>()
  expect(app.wsManager.broadcast('x', { route: '/ws', local: true })).type.toBe<Promise<number>>()
})

test('close codes are literal numbers', () => {
  expect(CloseCode.GOING_AWAY).type.toBe<1001>()
  expect(CloseCode.TRY_AGAIN_LATER).type.toBe<1013>()
})

test('loadConfig returns options the plugin accepts', () => {
  expect(loadConfig()).type.toBe<ServerConfig>()
  expect(loadConfig({ PING_INTERVAL: '1000' }).options).type.toBeAssignableTo<WsManagerOptions>()
})

test('cluster mode: the option, fastify.wsManager.cluster and topics', () => {
  expect(app.register(wsManager, { cluster: { redis: 'redis://127.0.0.1:6379', prefix: 'chat', nodeId: 'a', requestTimeout: 500, presenceTtl: 3000, pubsub: 'sharded' } })).type.not.toRaiseError()
  expect(app.register(wsManager, { cluster: { prefix: 'chat' } })).type.toRaiseError()
  expect(app.register(wsManager, { cluster: { redis: 6379 } })).type.toRaiseError()
  expect(app.wsManager.cluster).type.toBe<ClusterApi | null>()
  const cluster = app.wsManager.cluster as ClusterApi
  expect(cluster.nodeId).type.toBe<string>()
  expect(cluster.healthy).type.toBe<boolean>()
  expect(cluster.nodes()).type.toBe<Promise<ClusterNode[] & { readonly complete: boolean, readonly unanswered: readonly string[] }>>()
  expect(cluster.presence('u')).type.toBe<Promise<PresenceEntry[] & { readonly complete: boolean, readonly unanswered: readonly string[] }>>()
  expect(cluster.countByUser('u')).type.toBe<Promise<number>>()
  const connection = {} as Connection
  expect(connection.subscribe('room')).type.toBe<Promise<void>>()
  expect(connection.unsubscribe('room')).type.toBe<boolean>()
  expect(connection.topics).type.toBe<string[]>()
})
