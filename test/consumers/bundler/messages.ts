// The README's typed message routing example, as it is there.
import Fastify from 'fastify'
import wsManager from 'fastify-ws-manager'

const app = Fastify()
await app.register(wsManager, { auth: false })

import { Type } from '@sinclair/typebox'
import { defineMessage, defineMessages, type MessageClient } from 'fastify-ws-manager'

export const messages = defineMessages({
  add: defineMessage({
    schema: Type.Object({ type: Type.Literal('add'), a: Type.Number(), b: Type.Number() }),
    reply: Type.Object({ type: Type.Literal('sum'), value: Type.Number() }),
    handler: (message) => ({ type: 'sum' as const, value: message.a + message.b })   // message.a: number
  })
})
app.get('/rpc', { websocket: true, config: { wsManager: { messages } } }, () => {})
// For the client: AppClient['request']('add', { a: 1, b: 2 }) resolves { type: 'sum', value: number }
export type AppClient = MessageClient<typeof messages>
