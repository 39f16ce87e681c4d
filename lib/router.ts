import Ajv, { type ValidateFunction } from 'ajv'
import type WebSocket from 'ws'
import type { Connection } from './connection'
import { TEXT } from './delivery'
import { CloseCode } from './errors'
import { fail } from './validate'

/** One message type: its JSON Schema and its handler, whose return value is sent back as JSON. */
export interface MessageRoute<T = Record<string, unknown>> {
  /** JSON Schema the whole message (with its `type`) must satisfy; compiled once. */
  schema?: Record<string, unknown>
  /** Runs with the parsed message; a value (or a promise of one) other than undefined is sent back as JSON. */
  handler: (message: T, connection: Connection, id?: string | number) => unknown
}

/** The `messages` route option: message type to route. */
// Handlers type their own message shapes; the schema, not the type, is what is checked.
export type MessageRoutes = Record<string, MessageRoute<any>>

/** Codes of the `{ type: 'error', code, message }` replies. */
export type RouterErrorCode = 'INVALID_JSON' | 'MISSING_TYPE' | 'UNKNOWN_TYPE' | 'INVALID_MESSAGE' | 'INVALID_TOKEN' | 'AUTH_RATE_LIMITED' | 'TOPIC_FORBIDDEN'

/**
 * What a built-in handler returns when it has answered by itself (a reply followed by
 * replayed messages, in one tick so nothing can come between them).
 */
export const ANSWERED = Symbol('fastify-ws-manager.answered')

/** Message types the plugin routes itself; an application's route may not take these names. */
export const RESERVED_TYPES: readonly string[] = ['auth.refresh', 'topic.subscribe', 'topic.unsubscribe']

/**
 * What a built-in handler returns (or resolves with) to answer with an error reply instead of
 * a value; the connection stays open.
 */
export class RouterReplyError {
  readonly code: RouterErrorCode
  readonly message: string

  constructor (code: RouterErrorCode, message: string) {
    this.code = code
    this.message = message
  }
}

/** A request id: a string of at most 64 characters or a safe integer. */
type RequestId = string | number

function requestIdOf (value: unknown): RequestId | undefined | null {
  if (value === undefined) return undefined
  if (typeof value === 'string' && value.length <= 64) return value
  if (typeof value === 'number' && Number.isSafeInteger(value)) return value
  return null
}

/**
 * Watches routed messages (metrics, tracing). `handle` runs the handler through `run` and
 * returns what it returned (a promise it may chain, passing the value or the rejection on).
 */
export interface RouterObserver {
  handle (connection: Connection, type: string, message: Record<string, unknown>, size: number, run: () => unknown): unknown
  /** A message answered with an error reply. */
  rejected (connection: Connection, code: RouterErrorCode): void
}

interface CompiledRoute {
  validate: ValidateFunction | null
  handler: MessageRoute['handler']
}

/** One ajv for the plugin, set up as Fastify's own (no coercion, no removal). */
export function createAjv (): Ajv {
  return new Ajv({ allErrors: false, coerceTypes: false, removeAdditional: false, useDefaults: true, strict: false })
}

function noop (): void {}

function rawSize (data: WebSocket.RawData): number {
  if (Array.isArray(data)) return data.reduce((n, b) => n + b.length, 0)
  return data.byteLength
}

/**
 * The seed's message routing: text messages are JSON with a `type`; each type's schema is
 * checked before its handler runs. Errors answer with an error message and do not close,
 * until `errorLimit` of them come in a row. Binary messages pass through to the socket's
 * listeners; text messages are consumed here.
 */
export class MessageRouter {
  readonly #routes = new Map<string, CompiledRoute>()
  readonly #errorLimit: number
  /** Set by the plugin when metrics or tracing are on. */
  observer: RouterObserver | null = null

  /**
   * @param builtins the plugin's own message types (auth.refresh), routed like the application's.
   * @throws FST_WSM_OPTION_INVALID for a route without a handler, with a schema ajv cannot
   * compile, or with a name the plugin reserves.
   */
  constructor (routes: MessageRoutes, errorLimit: number, ajv: Ajv, name = 'messages', builtins: MessageRoutes = {}) {
    this.#errorLimit = errorLimit
    for (const type of Object.keys(routes)) {
      if (RESERVED_TYPES.includes(type)) fail(`${name}.${type}`, `"${type}" is a message type the plugin routes itself; choose another name`)
    }
    for (const [type, route] of Object.entries({ ...routes, ...builtins })) {
      if (typeof route !== 'object' || route === null || typeof route.handler !== 'function') {
        fail(`${name}.${type}`, 'expected { schema?, handler(message, connection) }')
      }
      let validate: ValidateFunction | null = null
      if (route.schema !== undefined) {
        try {
          validate = ajv.compile(route.schema)
        } catch (err) {
          fail(`${name}.${type}.schema`, `a JSON Schema ajv can compile (${(err as Error).message})`)
        }
      }
      this.#routes.set(type, { validate, handler: route.handler })
    }
  }

  onMessage (connection: Connection, data: WebSocket.RawData, isBinary: boolean): boolean {
    if (isBinary) return true
    let message: unknown
    try {
      message = JSON.parse(data.toString())
    } catch {
      this.#reject(connection, 'INVALID_JSON', 'message is not valid JSON', CloseCode.INVALID_PAYLOAD)
      return false
    }
    const isObject = typeof message === 'object' && message !== null && !Array.isArray(message)
    // A request id is the transport's, not the message's: taken out before the schema and the
    // handler see the message, and echoed in the reply.
    let id: RequestId | undefined
    if (isObject && 'id' in (message as object)) {
      const given = requestIdOf((message as { id?: unknown }).id)
      if (given === null) {
        this.#reject(connection, 'INVALID_MESSAGE', '"id" must be a string of at most 64 characters or an integer', CloseCode.INVALID_PAYLOAD)
        return false
      }
      id = given
      delete (message as { id?: unknown }).id
    }
    const type = isObject ? (message as { type?: unknown }).type : undefined
    if (typeof type !== 'string') {
      this.#reject(connection, 'MISSING_TYPE', 'message has no string "type"', CloseCode.INVALID_PAYLOAD, id)
      return false
    }
    const route = this.#routes.get(type)
    if (route === undefined) {
      this.#reject(connection, 'UNKNOWN_TYPE', `unknown message type "${type.slice(0, 64)}"`, CloseCode.POLICY_VIOLATION, id)
      return false
    }
    if (route.validate !== null && !route.validate(message)) {
      const first = route.validate.errors?.[0]
      const where = first === undefined ? '' : `${first.instancePath === '' ? '(message)' : first.instancePath} ${first.message ?? ''}`
      this.#reject(connection, 'INVALID_MESSAGE', `message does not match the schema of "${type}": ${where}`.trim(), CloseCode.INVALID_PAYLOAD, id)
      return false
    }
    connection.routerErrors = 0
    let result: unknown
    try {
      const observer = this.observer
      result = observer === null
        ? route.handler(message as Record<string, unknown>, connection, id)
        : observer.handle(connection, type, message as Record<string, unknown>, rawSize(data), () => route.handler(message as Record<string, unknown>, connection, id))
    } catch (err) {
      connection.fail(err, `router:${type}`)
      return false
    }
    if (result !== null && typeof result === 'object' && typeof (result as Promise<unknown>).then === 'function') {
      (result as Promise<unknown>).then(
        (value) => this.#answer(connection, value, type, id),
        (err: unknown) => connection.fail(err, `router:${type}`)
      )
    } else {
      this.#answer(connection, result, type, id)
    }
    return false
  }

  #answer (connection: Connection, value: unknown, type: string, id: RequestId | undefined): void {
    if (value === ANSWERED) return
    if (value instanceof RouterReplyError) {
      if (this.observer !== null) this.observer.rejected(connection, value.code)
      if (connection.state === 'open') send(connection, { type: 'error', code: value.code, message: value.message, id })
      return
    }
    reply(connection, value, type, id)
  }

  #reject (connection: Connection, code: RouterErrorCode, message: string, closeCode: number, id?: RequestId): void {
    connection.routerErrors++
    if (this.observer !== null) this.observer.rejected(connection, code)
    connection.log.debug({ code }, 'message rejected')
    const sent = connection.deliver(Buffer.from(JSON.stringify(id === undefined ? { type: 'error', code, message } : { type: 'error', code, message, id })), TEXT, false)
    if (sent instanceof Promise) sent.catch(noop)
    if (connection.routerErrors >= this.#errorLimit && connection.state === 'open') {
      connection.log.warn({ code, errors: connection.routerErrors }, 'too many invalid messages')
      connection.close(closeCode, 'Too many invalid messages').catch(noop)
    }
  }
}

// A handler's value that JSON cannot hold (a cycle, a BigInt) is the handler's failure: 1011,
// never an exception out of the receiver or an unhandled rejection.
// With a request id every request gets an answer: an object value carries the id, any other
// value comes as `data` of a `reply`, and no value as a bare `reply`.
function reply (connection: Connection, value: unknown, type: string, id: RequestId | undefined): void {
  if (connection.state !== 'open') return
  if (id !== undefined) {
    if (value === undefined) value = { type: 'reply', id }
    // A value with an id of its own keeps it: the request's id goes around it.
    else if (isPlainObject(value) && !('id' in value)) value = { ...value, id }
    else value = { type: 'reply', id, data: value }
  }
  if (value === undefined) return
  let text: string
  try {
    text = JSON.stringify(value)
  } catch (err) {
    connection.fail(err, `router:${type}`)
    return
  }
  if (text === undefined) return
  connection.deliver(Buffer.from(text), TEXT, false)
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object') return false
  const proto = Object.getPrototypeOf(value)
  return proto === Object.prototype || proto === null
}

function send (connection: Connection, value: Record<string, unknown>): void {
  connection.deliver(Buffer.from(JSON.stringify(value)), TEXT, false)
}
