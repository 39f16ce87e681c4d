// OpenTelemetry traces through @opentelemetry/api only (issue 13): the application brings the
// SDK, and without one every call here is the API's no-op. Spans: ws.connect (admission),
// ws.message <type> (each routed message), ws.close, and PRODUCER spans for sendToUser,
// broadcast and publish whose context crosses Redis to the delivering node's CONSUMER span.
import type { IncomingMessage } from 'node:http'
import {
  context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace,
  type Attributes, type Context, type Link, type Span, type SpanContext, type Tracer
} from '@opentelemetry/api'
import type { FastifyRequest } from 'fastify'
import type { CloseInfo, Connection } from './connection'
import type { RouterErrorCode, RouterObserver } from './router'
import { kConnectSpan } from './symbols'

// The package's version names the tracer; a copy of lib/ compiled elsewhere (the benchmark's
// cache) has no package.json beside it, and the version is optional.
function packageVersion (): string | undefined {
  try {
    return (require('../package.json') as { version?: string }).version
  } catch {
    return undefined
  }
}

interface ConnectionTrace {
  /** The context the connection's spans are children of: ws.connect's. */
  context: Context
  /** The parent ws.connect had (the upgrade's traceparent, or none): ws.close's parent too. */
  parent: Context
  connect: SpanContext
}

interface ConnectSpan { span: Span, context: Context, parent: Context, ended: boolean }
type RequestWithSpan = FastifyRequest & { [kConnectSpan]?: ConnectSpan }

// A carrier getter over a plain object of strings.
const getter = {
  keys: (carrier: Record<string, unknown>) => Object.keys(carrier),
  get: (carrier: Record<string, unknown>, key: string) => {
    const value = carrier[key]
    return typeof value === 'string' ? value : undefined
  }
}

/** The traceparent (and tracestate) of a query string, for browsers, which cannot set headers. */
function queryCarrier (url: string | undefined): Record<string, string> | null {
  if (url === undefined) return null
  const at = url.indexOf('?')
  if (at < 0 || !url.includes('traceparent=', at)) return null
  const params = new URLSearchParams(url.slice(at + 1))
  const traceparent = params.get('traceparent')
  if (traceparent === null) return null
  const carrier: Record<string, string> = { traceparent }
  const tracestate = params.get('tracestate')
  if (tracestate !== null) carrier.tracestate = tracestate
  return carrier
}

function hostOf (request: FastifyRequest): string | undefined {
  const host = request.headers.host
  if (typeof host !== 'string') return undefined
  // [v6]:port or name:port
  return host.startsWith('[') ? host.slice(1, host.indexOf(']')) : host.split(':')[0]
}

/** The plugin's tracing; `fastify.wsManager` uses it when the `tracing` option is on (the default). */
export class WsTracing implements RouterObserver {
  readonly tracer: Tracer
  readonly #connections = new WeakMap<Connection, ConnectionTrace>()

  constructor () {
    this.tracer = trace.getTracer('fastify-ws-manager', packageVersion())
  }

  /** An upgrade reached admission: ws.connect starts, its parent from the traceparent header or query. */
  connectStarted (request: FastifyRequest, route: string): void {
    let parent = propagation.extract(ROOT_CONTEXT, request.headers, getter)
    if (trace.getSpanContext(parent) === undefined) {
      const fromQuery = queryCarrier((request.raw as IncomingMessage & { originalUrl?: string }).url)
      if (fromQuery !== null) parent = propagation.extract(ROOT_CONTEXT, fromQuery, getter)
    }
    const attributes: Attributes = {
      'network.peer.address': request.ip,
      'websocket.route': route,
      'http.route': route
    }
    const host = hostOf(request)
    if (host !== undefined) attributes['server.address'] = host
    const span = this.tracer.startSpan('ws.connect', { kind: SpanKind.SERVER, attributes }, parent)
    const started: ConnectSpan = { span, context: trace.setSpan(parent, span), parent, ended: false }
    ;(request as RequestWithSpan)[kConnectSpan] = started
    // An upgrade that never becomes a connection nor a refusal (ws refused the handshake, the
    // client left) ends its span when its socket closes; the listener holds the span and the
    // logger, never the request (the socket lives as long as the connection).
    const log = request.log
    request.raw.socket?.once('close', () => {
      if (started.ended) return
      started.ended = true
      // A socket listener: nothing may throw out of it, not even the application's SDK.
      try {
        span.setAttribute('websocket.outcome', 'abandoned')
        span.setStatus({ code: SpanStatusCode.ERROR, message: 'the upgrade did not complete' })
        span.end()
      } catch (err) {
        log.error({ err }, 'tracing failed')
      }
    })
  }

  #take (request: FastifyRequest): ConnectSpan | undefined {
    const started = (request as RequestWithSpan)[kConnectSpan]
    if (started === undefined || started.ended) return undefined
    started.ended = true
    return started
  }

  /** The upgrade was refused: ws.connect ends with the status and a bounded reason. */
  refused (statusCode: number, reason: string, request: FastifyRequest | null): void {
    // ws's own handshake refusals come without a Fastify request: their span, if any, ends
    // as abandoned when the socket closes.
    if (request === null) return
    const started = this.#take(request)
    if (started === undefined) return
    started.span.setAttributes({ 'websocket.outcome': 'refused', 'http.response.status_code': statusCode, 'websocket.refusal.reason': reason })
    started.span.setStatus({ code: SpanStatusCode.ERROR, message: reason })
    started.span.end()
  }

  /** The connection exists: ws.connect ends; the connection's spans follow from it. */
  connectAccepted (request: FastifyRequest, connection: Connection): void {
    const started = this.#take(request)
    if (started === undefined) return
    const attributes: Attributes = { 'websocket.outcome': 'accepted', 'websocket.connection.id': connection.id }
    if (connection.userId !== null) attributes['enduser.id'] = connection.userId
    const protocol = connection.socket.protocol
    if (protocol !== '') attributes['websocket.protocol'] = protocol
    started.span.setAttributes(attributes)
    started.span.end()
    this.#connections.set(connection, { context: started.context, parent: started.parent, connect: started.span.spanContext() })
  }

  /** ws.close: code, reason, initiator and the connection's duration, linked to ws.connect. */
  closed (connection: Connection, info: CloseInfo): void {
    const trace_ = this.#connections.get(connection)
    const links: Link[] = trace_ === undefined ? [] : [{ context: trace_.connect }]
    const span = this.tracer.startSpan('ws.close', {
      kind: SpanKind.SERVER,
      links,
      attributes: {
        'websocket.route': connection.route,
        'websocket.connection.id': connection.id,
        'websocket.close.code': info.initiatedBy === 'server' && info.sentCode !== null ? info.sentCode : info.code,
        'websocket.close.reason': info.reason.slice(0, 123),
        'websocket.close.initiator': info.initiatedBy,
        'websocket.connection.duration_ms': info.durationMs,
        'websocket.messages.received': info.messagesIn,
        'websocket.messages.sent': info.messagesOut
      }
    }, trace_?.parent ?? ROOT_CONTEXT)
    span.end()
  }

  handle (connection: Connection, type: string, message: Record<string, unknown>, size: number, run: () => unknown): unknown {
    const own = this.#connections.get(connection)
    let parent = own?.context ?? ROOT_CONTEXT
    const links: Link[] = []
    // A message carrying its own traceparent continues that trace, linked to the connection.
    if (typeof message.traceparent === 'string') {
      const carried = propagation.extract(ROOT_CONTEXT, message, getter)
      if (trace.getSpanContext(carried) !== undefined) {
        parent = carried
        if (own !== undefined) links.push({ context: own.connect })
      }
    }
    const span = this.tracer.startSpan(`ws.message ${type}`, {
      kind: SpanKind.CONSUMER,
      links,
      attributes: {
        'messaging.system': 'websocket',
        'messaging.operation.type': 'process',
        'messaging.destination.name': connection.route,
        'messaging.message.body.size': size,
        'websocket.route': connection.route,
        'websocket.message.type': type,
        'websocket.connection.id': connection.id
      }
    }, parent)
    const fail = (err: unknown): void => {
      span.setAttribute('websocket.outcome', 'error')
      if (err instanceof Error) span.recordException(err)
      span.setStatus({ code: SpanStatusCode.ERROR })
      span.end()
    }
    let result: unknown
    try {
      result = context.with(trace.setSpan(parent, span), run)
    } catch (err) {
      fail(err)
      throw err
    }
    if (result !== null && typeof result === 'object' && typeof (result as Promise<unknown>).then === 'function') {
      return (result as Promise<unknown>).then((value) => {
        span.setAttribute('websocket.outcome', 'ok')
        span.end()
        return value
      }, (err: unknown) => {
        fail(err)
        throw err
      })
    }
    span.setAttribute('websocket.outcome', 'ok')
    span.end()
    return result
  }

  rejected (_connection: Connection, _code: RouterErrorCode): void {}

  /**
   * A PRODUCER span around sendToUser, broadcast or publish, child of the caller's active
   * context; `send` gets the traceparent to carry to other nodes.
   */
  produce<T> (name: string, attributes: Attributes, send: (carrier: Record<string, string>) => T): T {
    const span = this.tracer.startSpan(name, { kind: SpanKind.PRODUCER, attributes: { 'messaging.system': 'websocket', 'messaging.operation.type': 'send', ...attributes } })
    const carrier: Record<string, string> = {}
    propagation.inject(trace.setSpan(context.active(), span), carrier)
    try {
      const result = send(carrier)
      if (result instanceof Promise) {
        return result.then((value: unknown) => {
          if (typeof value === 'number') span.setAttribute('websocket.delivered', value)
          span.end()
          return value
        }, (err: unknown) => {
          if (err instanceof Error) span.recordException(err)
          span.setStatus({ code: SpanStatusCode.ERROR })
          span.end()
          throw err
        }) as T
      }
      span.end()
      return result
    } catch (err) {
      span.setStatus({ code: SpanStatusCode.ERROR })
      span.end()
      throw err
    }
  }

  /** The delivering node's CONSUMER span for a publication from another node. */
  deliver (name: string, traceparent: string | undefined, attributes: Attributes, deliverLocal: () => number): void {
    const parent = traceparent === undefined ? ROOT_CONTEXT : propagation.extract(ROOT_CONTEXT, { traceparent }, getter)
    const span = this.tracer.startSpan(name, {
      kind: SpanKind.CONSUMER,
      attributes: { 'messaging.system': 'websocket', 'messaging.operation.type': 'process', ...attributes }
    }, parent)
    try {
      span.setAttribute('websocket.delivered', context.with(trace.setSpan(parent, span), deliverLocal))
    } finally {
      span.end()
    }
  }
}
