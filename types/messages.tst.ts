import { expect, test } from 'tstyche'
import { Type } from '@sinclair/typebox'
import { defineMessage, defineMessages, type MessageClient } from '..'

const messages = defineMessages({
  add: defineMessage({
    schema: Type.Object({ type: Type.Literal('add'), a: Type.Number(), b: Type.Number() }),
    reply: Type.Object({ type: Type.Literal('sum'), value: Type.Number() }),
    handler: (message) => {
      expect(message.a).type.toBe<number>()
      return { type: 'sum' as const, value: message.a + message.b }
    }
  }),
  echo: defineMessage({
    schema: { type: 'object', properties: { type: { const: 'echo' }, text: { type: 'string' } }, required: ['type', 'text'], additionalProperties: false } as const,
    handler: (message) => {
      expect(message.text).type.toBe<string>()
      return { type: 'echo', text: message.text }
    }
  }),
  ping: defineMessage({
    handler: (message) => {
      expect(message).type.toBe<unknown>()
    }
  })
})

test('a handler whose reply does not match its reply schema is an error', () => {
  expect(defineMessage({
    schema: Type.Object({ type: Type.Literal('add'), a: Type.Number() }),
    reply: Type.Object({ value: Type.Number() }),
    handler: () => ({ value: 'not a number' })
  })).type.toRaiseError()
  expect(defineMessage({
    schema: Type.Object({ type: Type.Literal('add'), a: Type.Number() }),
    reply: Type.Object({ value: Type.Number() }),
    handler: (message) => ({ value: message.a })
  })).type.not.toRaiseError()
})

test('the same definitions type a client', () => {
  const client = {} as MessageClient<typeof messages>
  expect(client.request('add', { a: 1, b: 2 })).type.toBe<Promise<{ type: 'sum', value: number }>>()
  expect(client.request('add', { a: 'one', b: 2 })).type.toRaiseError()
  expect(client.request('nope', {})).type.toRaiseError()
})

test('definitions go into a route config', async () => {
  const { default: Fastify } = await import('fastify')
  const app = Fastify()
  expect(app.get('/rpc', { websocket: true, config: { wsManager: { messages } } }, () => {})).type.not.toRaiseError()
})
