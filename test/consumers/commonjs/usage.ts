// The README's Usage example in a CommonJS module, where there is no top-level await.
import Fastify = require('fastify')
import jwt = require('@fastify/jwt')
import wsManager = require('fastify-ws-manager')

export async function start (): Promise<void> {
  const app = Fastify({ logger: true })
  await app.register(jwt, { secret: process.env.JWT_SECRET!, verify: { algorithms: ['HS256'] } }) // @fastify/jwt refuses a missing secret
  await app.register(wsManager, { maxConnectionsPerUser: 5 })

  app.get('/ws', { websocket: true }, (socket, request) => {
    // request.wsConnection: id, userId, user (claims), route, counters, send(), close()
    socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }))
  })

  await app.listen({ port: 3001 })
}
