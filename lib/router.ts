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
  handler: (message: T, connection: Connection) => unknown
}

/** The `messages` route option: message type to route. */
// Handlers type their own message shapes; the schema, not the type, is what is checked.
export type MessageRoutes = Record<string, MessageRoute<any>>

/** Codes of the `{ type: 'error', code, message }` replies. */
export type RouterErrorCode = 'INVALID_JSON' | 'MISSING_TYPE' | 'UNKNOWN_TYPE' | 'INVALID_MESSAGE'

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

  /** @throws FST_WSM_OPTION_INVALID for a route without a handler or with a schema ajv cannot compile. */
  constructor (routes: MessageRoutes, errorLimit: number, ajv: Ajv, name = 'messages') {
    this.#errorLimit = errorLimit
    for (const [type, route] of Object.entries(routes)) {
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
    const type = typeof message === 'object' && message !== null ? (message as { type?: unknown }).type : undefined
    if (typeof type !== 'string') {
      this.#reject(connection, 'MISSING_TYPE', 'message has no string "type"', CloseCode.INVALID_PAYLOAD)
      return false
    }
    const route = this.#routes.get(type)
    if (route === undefined) {
      this.#reject(connection, 'UNKNOWN_TYPE', `unknown message type "${type.slice(0, 64)}"`, CloseCode.POLICY_VIOLATION)
      return false
    }
    if (route.validate !== null && !route.validate(message)) {
      const first = route.validate.errors?.[0]
      const where = first === undefined ? '' : `${first.instancePath === '' ? '(message)' : first.instancePath} ${first.message ?? ''}`
      this.#reject(connection, 'INVALID_MESSAGE', `message does not match the schema of "${type}": ${where}`.trim(), CloseCode.INVALID_PAYLOAD)
      return false
    }
    connection.routerErrors = 0
    let result: unknown
    try {
      const observer = this.observer
      result = observer === null
        ? route.handler(message as Record<string, unknown>, connection)
        : observer.handle(connection, type, message as Record<string, unknown>, rawSize(data), () => route.handler(message as Record<string, unknown>, connection))
    } catch (err) {
      connection.fail(err, `router:${type}`)
      return false
    }
    if (result !== null && typeof result === 'object' && typeof (result as Promise<unknown>).then === 'function') {
      (result as Promise<unknown>).then(
        (value) => reply(connection, value, type),
        (err: unknown) => connection.fail(err, `router:${type}`)
      )
    } else {
      reply(connection, result, type)
    }
    return false
  }

  #reject (connection: Connection, code: RouterErrorCode, message: string, closeCode: number): void {
    connection.routerErrors++
    if (this.observer !== null) this.observer.rejected(connection, code)
    connection.log.debug({ code }, 'message rejected')
    const sent = connection.deliver(Buffer.from(JSON.stringify({ type: 'error', code, message })), TEXT, false)
    if (sent instanceof Promise) sent.catch(noop)
    if (connection.routerErrors >= this.#errorLimit && connection.state === 'open') {
      connection.log.warn({ code, errors: connection.routerErrors }, 'too many invalid messages')
      connection.close(closeCode, 'Too many invalid messages').catch(noop)
    }
  }
}

// A handler's value that JSON cannot hold (a cycle, a BigInt) is the handler's failure: 1011,
// never an exception out of the receiver or an unhandled rejection.
function reply (connection: Connection, value: unknown, type: string): void {
  if (value === undefined || connection.state !== 'open') return
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
