// OpenTelemetry traces, recorded by the real SDK's in-memory exporter (registered once for
// the file, as an application would), over real sockets and real JWTs.
import { test, beforeEach, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { SpanKind, trace } from '@opentelemetry/api'
import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-node'
import FastifyOtelInstrumentation from '@fastify/otel'
import Fastify, { type FastifyInstance } from 'fastify'
import jwt from '@fastify/jwt'
import WebSocket from 'ws'
import wsManager, { type WsManagerOptions } from '../lib/index'
import { closed, connect, connectQueued, listen, nextMessage, waitFor } from './helper'
import { uniquePrefix } from './fixtures/cluster'

const exporter = new InMemorySpanExporter()
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
provider.register()
const appTracer = trace.getTracer('the-application')

const SECRET = 'tracing-test-secret-0123456789-abcdefghijkl'
const TRACE_ID = '0af7651916cd43dd8448eb211c80319c'
const PARENT_ID = 'b7ad6b7169203331'
const TRACEPARENT = `00-${TRACE_ID}-${PARENT_ID}-01`

beforeEach(() => exporter.reset())

function spans (name?: string): ReadableSpan[] {
  return exporter.getFinishedSpans().filter((s) => name === undefined || s.name === name)
}

function parentOf (span: ReadableSpan): string | undefined {
  return span.parentSpanContext?.spanId
}

async function build (t: TestContext, options: WsManagerOptions = {}, before?: (app: FastifyInstance) => Promise<void>): Promise<{ app: FastifyInstance, url: string }> {
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  if (before !== undefined) await before(app)
  await app.register(jwt, { secret: SECRET })
  await app.register(wsManager, options)
  app.get('/ws', {
    websocket: true,
    config: {
      wsManager: {
        messages: {
          work: {
            handler: async () => appTracer.startActiveSpan('inside the handler', async (span) => {
              await new Promise((resolve) => setTimeout(resolve, 5))
              span.end()
              return { type: 'done' }
            })
          },
          fail: { handler: async () => { throw new Error('handler failed') } },
          notify: {
            handler: async (_message: unknown, connection: { userId: string | null }) => {
              await app.wsManager.sendToUser(connection.userId ?? '', 'note')
              return { type: 'notified' }
            }
          }
        }
      }
    }
  }, (socket, request) => {
    socket.on('message', (data, isBinary) => {
      if (isBinary && String(data) === 'bye') request.wsConnection?.close(4000, 'Bye now').catch(() => {})
    })
  })
  return { app, url: await listen(app) + '/ws' }
}

function every (span: ReadableSpan): string {
  return JSON.stringify({ name: span.name, attributes: span.attributes, events: span.events, links: span.links })
}

test('ws.connect takes its parent from the traceparent header, and never records the token', async (t) => {
  const { app, url } = await build(t)
  const token = app.jwt.sign({ sub: 'ann' })
  const ws = await connect(t, url, { headers: { authorization: `Bearer ${token}`, traceparent: TRACEPARENT } })
  await waitFor(() => spans('ws.connect').length === 1, 2000, 'ws.connect')
  const [span] = spans('ws.connect')
  assert.equal(span.kind, SpanKind.SERVER)
  assert.equal(span.spanContext().traceId, TRACE_ID)
  assert.equal(parentOf(span), PARENT_ID)
  assert.equal(span.attributes['websocket.outcome'], 'accepted')
  assert.equal(span.attributes['websocket.route'], '/ws')
  assert.equal(span.attributes['network.peer.address'], '127.0.0.1')
  assert.equal(span.attributes['server.address'], '127.0.0.1')
  assert.equal(span.attributes['enduser.id'], 'ann')
  ws.close()
  await waitFor(() => spans('ws.close').length === 1, 2000, 'ws.close')
  for (const s of spans()) assert.equal(every(s).includes(token), false, `${s.name} holds the token`)
})

test('browsers: the traceparent query parameter is the parent; the query token is in no attribute', async (t) => {
  const { app, url } = await build(t)
  const token = app.jwt.sign({ sub: 'ben' })
  const ws = await connect(t, `${url}?traceparent=${TRACEPARENT}&access_token=${token}`)
  await waitFor(() => spans('ws.connect').length === 1, 2000, 'ws.connect')
  const [span] = spans('ws.connect')
  assert.equal(span.spanContext().traceId, TRACE_ID)
  assert.equal(parentOf(span), PARENT_ID)
  ws.close()
  await waitFor(() => spans('ws.close').length === 1, 2000, 'ws.close')
  for (const s of spans()) assert.equal(every(s).includes(token), false, `${s.name} holds the token`)
})

test('a refused upgrade ends ws.connect with its status and reason', async (t) => {
  const { url } = await build(t)
  const ws = new WebSocket(url, { headers: { authorization: 'Bearer not.a.token', traceparent: TRACEPARENT } })
  await new Promise((resolve) => ws.once('unexpected-response', resolve))
  await waitFor(() => spans('ws.connect').length === 1, 2000, 'ws.connect')
  const [span] = spans('ws.connect')
  assert.equal(span.attributes['websocket.outcome'], 'refused')
  assert.equal(span.attributes['http.response.status_code'], 401)
  assert.equal(span.status.code, 2)
  assert.equal(every(span).includes('not.a.token'), false)
})

test('a routed message is a CONSUMER span under ws.connect, and the handler runs inside it', async (t) => {
  const { app, url } = await build(t)
  const ws = await connect(t, url, { headers: { authorization: `Bearer ${app.jwt.sign({ sub: 'cy' })}` } })
  ws.send(JSON.stringify({ type: 'work', pad: 'x'.repeat(10) }))
  assert.equal(JSON.parse(await nextMessage(ws)).type, 'done')
  await waitFor(() => spans('ws.message work').length === 1, 2000, 'ws.message')
  const [connectSpan] = spans('ws.connect')
  const [message] = spans('ws.message work')
  const [inner] = spans('inside the handler')
  assert.equal(message.kind, SpanKind.CONSUMER)
  assert.equal(message.spanContext().traceId, connectSpan.spanContext().traceId)
  assert.equal(parentOf(message), connectSpan.spanContext().spanId)
  assert.equal(parentOf(inner), message.spanContext().spanId, "the handler's own span is a child")
  assert.equal(message.attributes['websocket.message.type'], 'work')
  assert.equal(message.attributes['messaging.message.body.size'], JSON.stringify({ type: 'work', pad: 'x'.repeat(10) }).length)
  assert.equal(message.attributes['websocket.outcome'], 'ok')

  // A message that carries a traceparent continues that trace, linked to the connection.
  ws.send(JSON.stringify({ type: 'work', traceparent: TRACEPARENT }))
  await nextMessage(ws)
  await waitFor(() => spans('ws.message work').length === 2, 2000, 'second ws.message')
  const carried = spans('ws.message work')[1]
  assert.equal(carried.spanContext().traceId, TRACE_ID)
  assert.equal(parentOf(carried), PARENT_ID)
  assert.equal(carried.links[0]?.context.spanId, connectSpan.spanContext().spanId)

  // A handler that fails: outcome error and the exception recorded.
  ws.send(JSON.stringify({ type: 'fail' }))
  await closed(ws)
  const failed = spans('ws.message fail')[0]
  assert.equal(failed.attributes['websocket.outcome'], 'error')
  assert.equal(failed.events[0]?.name, 'exception')
})

test('ws.close carries code, reason, initiator and duration, linked to ws.connect', async (t) => {
  const { app, url } = await build(t)
  const ws = await connect(t, url, { headers: { authorization: `Bearer ${app.jwt.sign({ sub: 'dee' })}`, traceparent: TRACEPARENT } })
  ws.send(Buffer.from('bye'))
  assert.deepEqual(await closed(ws), { code: 4000, reason: 'Bye now' })
  await waitFor(() => spans('ws.close').length === 1, 2000, 'ws.close')
  const [connectSpan] = spans('ws.connect')
  const [span] = spans('ws.close')
  assert.equal(span.attributes['websocket.close.code'], 4000)
  assert.equal(span.attributes['websocket.close.reason'], 'Bye now')
  assert.equal(span.attributes['websocket.close.initiator'], 'server')
  assert.ok(typeof span.attributes['websocket.connection.duration_ms'] === 'number')
  assert.equal(span.links[0]?.context.spanId, connectSpan.spanContext().spanId)
  assert.equal(span.spanContext().traceId, TRACE_ID, 'in the trace the upgrade came with')
})

test('sendToUser, broadcast and publish are PRODUCER spans under the caller\'s active span', async (t) => {
  const { app } = await build(t, { auth: false })
  await appTracer.startActiveSpan('job', async (job) => {
    await app.wsManager.sendToUser('nobody', 'x')
    await app.wsManager.broadcast('x', { route: '/ws' })
    await app.wsManager.publish('news', 'x')
    job.end()
  })
  const [job] = spans('job')
  for (const name of ['ws.send_to_user', 'ws.broadcast', 'ws.publish']) {
    const [span] = spans(name)
    assert.equal(span?.kind, SpanKind.PRODUCER, name)
    assert.equal(parentOf(span), job.spanContext().spanId, name)
    assert.equal(span.attributes['websocket.delivered'], 0)
  }
  assert.equal(spans('ws.publish')[0].attributes['messaging.destination.name'], 'news')
})

test('in cluster mode a sendToUser on one node and the delivery on another are one trace', async (t) => {
  const prefix = uniquePrefix()
  const a = await build(t, { cluster: { redis: 'redis://127.0.0.1:6379', prefix, nodeId: 'trace-a' } })
  const b = await build(t, { cluster: { redis: 'redis://127.0.0.1:6379', prefix, nodeId: 'trace-b' } })
  const onB = await connect(t, b.url, { headers: { authorization: `Bearer ${b.app.jwt.sign({ sub: 'eve' })}` } })
  const got = nextMessage(onB)
  await appTracer.startActiveSpan('request on node a', async (span) => {
    await a.app.wsManager.sendToUser('eve', 'across')
    span.end()
  })
  assert.equal(await got, 'across')
  await waitFor(() => spans('ws.deliver').length === 1, 2000, 'ws.deliver on node b')
  const [producer] = spans('ws.send_to_user')
  const [consumer] = spans('ws.deliver')
  assert.equal(consumer.kind, SpanKind.CONSUMER)
  assert.equal(consumer.spanContext().traceId, producer.spanContext().traceId)
  assert.equal(parentOf(consumer), producer.spanContext().spanId)
  assert.equal(consumer.attributes['websocket.node.id'], 'trace-b')
  assert.equal(consumer.attributes['websocket.delivered'], 1)
})

test('tracing: false makes no spans', async (t) => {
  const { app, url } = await build(t, { tracing: false })
  const ws = await connect(t, url, { headers: { authorization: `Bearer ${app.jwt.sign({ sub: 'fay' })}` } })
  ws.send(JSON.stringify({ type: 'work' }))
  await nextMessage(ws)
  await app.wsManager.broadcast('x')
  ws.close()
  await closed(ws)
  await new Promise((resolve) => setTimeout(resolve, 50))
  assert.deepEqual(spans().filter((s) => s.name.startsWith('ws.')).map((s) => s.name), [])
})

test('@fastify/otel registered beside the plugin: sockets work and both trace', async (t) => {
  const instrumentation = new FastifyOtelInstrumentation()
  instrumentation.setTracerProvider(provider)
  const { app, url } = await build(t, {}, async (instance) => {
    await instance.register(instrumentation.plugin())
    instance.get('/plain', async () => ({ ok: true }))
  })
  const { ws, next } = await connectQueued(t, url, { headers: { authorization: `Bearer ${app.jwt.sign({ sub: 'gus' })}` } })
  ws.send(JSON.stringify({ type: 'notify' }))
  const replies = [await next(), await next()].sort()
  assert.deepEqual(replies, ['note', JSON.stringify({ type: 'notified' })])
  ws.send(Buffer.from('bye'))
  assert.equal((await closed(ws)).code, 4000)
  await waitFor(() => spans('ws.close').length === 1, 2000, 'ws.close')
  assert.equal(spans('ws.message notify').length, 1)
  assert.equal(spans('ws.send_to_user').length, 1)
  assert.equal(parentOf(spans('ws.send_to_user')[0]), spans('ws.message notify')[0].spanContext().spanId)
  const response = await app.inject('/plain')
  assert.equal(response.statusCode, 200)
  assert.ok(spans().some((s) => s.instrumentationScope.name === '@fastify/otel'), '@fastify/otel traced too')
})
