import { expect, test } from 'tstyche'
import Fastify from 'fastify'
import wsManager, {
  CloseCode, Connection, GracefulCloseManager, loadConfig,
  type CloseResult, type ConnectionRegistry, type HealthReport, type ServerConfig, type WsManagerOptions, type WsManagerStats
} from '..'

const app = Fastify()

test('the plugin takes its options', () => {
  expect(app.register(wsManager, { auth: false })).type.not.toRaiseError()
  expect(app.register(wsManager, { close: { timeout: 1000, shutdownCode: 1012 } })).type.not.toRaiseError()
  expect(app.register(wsManager, { auth: true })).type.toRaiseError()
  expect(app.register(wsManager, { close: { timeout: '1s' } })).type.toRaiseError()
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

test('close codes are literal numbers', () => {
  expect(CloseCode.GOING_AWAY).type.toBe<1001>()
  expect(CloseCode.TRY_AGAIN_LATER).type.toBe<1013>()
})

test('loadConfig returns options the plugin accepts', () => {
  expect(loadConfig()).type.toBe<ServerConfig>()
  expect(loadConfig({ PING_INTERVAL: '1000' }).options).type.toBeAssignableTo<WsManagerOptions>()
})
