import { expect, test } from 'tstyche'
import Fastify from 'fastify'
import '@fastify/jwt'
import { type CloseInfo, type Connection, type RefusalInfo } from '..'

declare module '@fastify/jwt' {
  interface FastifyJWT {
    user: { sub: string, roles: string[] }
  }
}

const app = Fastify()

test('a route that declares WsData gets a non-null, typed connection', () => {
  app.get<{ WsData: { room: string } }>('/ws', { websocket: true }, (_socket, request) => {
    expect(request.wsConnection).type.toBe<Connection<{ room: string }>>()
    expect(request.wsConnection.data.room).type.toBe<string>()
    expect(request.wsConnection.data).type.not.toHaveProperty('other')
  })
})

test('without WsData the connection may be null (plain HTTP shares the request type)', () => {
  app.get('/plain', { websocket: true }, (_socket, request) => {
    expect(request.wsConnection).type.toBe<Connection | null>()
  })
})

test("connection.user is @fastify/jwt's user type", () => {
  app.get<{ WsData: { room: string } }>('/u', { websocket: true }, (_socket, request) => {
    expect(request.wsConnection.user).type.toBe<{ sub: string, roles: string[] } | null>()
  })
})

test('hooks are typed', () => {
  expect(app.wsManager.addHook('onClose', (connection, info) => {
    expect(connection).type.toBe<Connection>()
    expect(info).type.toBe<CloseInfo>()
  })).type.not.toRaiseError()
  expect(app.wsManager.addHook('onRefused', (_request, info) => { expect(info).type.toBe<RefusalInfo>() })).type.not.toRaiseError()
  expect(app.wsManager.addHook('onConnection', (_connection, _request, done) => { done() })).type.not.toRaiseError()
  expect(app.wsManager.addHook('onOpen', () => {})).type.toRaiseError()
  expect(app.get('/h', { websocket: true, config: { wsManager: { hooks: { onMessage: (_c, data) => { expect(data).type.not.toBe<never>() } } } } }, () => {})).type.not.toRaiseError()
})

test('a connection iterates its messages', () => {
  app.get<{ WsData: object }>('/it', { websocket: true }, async (_socket, request) => {
    for await (const message of request.wsConnection) {
      expect(message.isBinary).type.toBe<boolean>()
    }
  })
})
