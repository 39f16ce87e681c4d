// The README's Usage example, as it is there.
import Fastify from 'fastify'
import jwt from '@fastify/jwt'
import wsManager from 'fastify-ws-manager'

const app = Fastify({ logger: true })
await app.register(jwt, { secret: process.env.JWT_SECRET!, verify: { algorithms: ['HS256'] } }) // @fastify/jwt refuses a missing secret
await app.register(wsManager, { maxConnectionsPerUser: 5 })

app.get('/ws', { websocket: true }, (socket, request) => {
  // request.wsConnection: id, userId, user (claims), route, counters, send(), close()
  socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }))
})

await app.listen({ port: 3001 })
