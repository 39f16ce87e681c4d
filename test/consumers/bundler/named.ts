// Named imports, the options type, and the plugin under each of its names.
import Fastify from 'fastify'
import wsManagerDefault, { CloseCode, GracefulCloseManager, wsManager, type CloseResult, type WsManagerOptions } from 'fastify-ws-manager'

const options: WsManagerOptions = { auth: false, close: { timeout: 1000, shutdownCode: CloseCode.SERVICE_RESTART } }
const app = Fastify()
await app.register(wsManagerDefault, options)
await app.register(wsManager, options)
// @ts-expect-error an option of the wrong type is refused, so the plugin is not typed `any`
await app.register(wsManagerDefault, { maxConnectionsPerUser: 'five' })

app.get('/ws', { websocket: true }, (socket, request) => {
  const id: string | undefined = request.wsConnection?.id
  socket.send(JSON.stringify({ id }))
})

export const closer = new GracefulCloseManager({ timeout: 5000 })
export const results: CloseResult[] = await app.wsManager.closeAll({ code: CloseCode.GOING_AWAY })
