// The README's hooks and iteration example, as it is there, with what it leaves to the reader declared.
import Fastify from 'fastify'
import wsManager, { type OnMessageHook } from 'fastify-ws-manager'

declare const rooms: { lookup (query: unknown): Promise<string> }
declare function handle (data: unknown, isBinary: boolean): Promise<void>
declare const audit: OnMessageHook

const app = Fastify()
await app.register(wsManager, { auth: false })

app.wsManager.addHook('onConnection', async (connection, request) => {
  connection.data.room = await rooms.lookup(request.query)   // the socket is not read until this resolves
})
app.wsManager.addHook('onClose', (connection, { code, reason, initiatedBy, durationMs }) => { /* ... */ })

app.get<{ WsData: { room: string } }>('/feed', { websocket: true, config: { wsManager: { hooks: { onMessage: audit } } } }, async (socket, request) => {
  const connection = request.wsConnection   // Connection<{ room: string }>, not null: the route declares WsData
  for await (const { data, isBinary } of connection) {
    await handle(data, isBinary)   // while this runs, the socket is not read: a slow handler slows its client
  }                                // the loop ends when the connection closes
})
