// Message definitions with types inferred from their schemas: one source of truth for the
// server's router (`config.wsManager.messages`) and for a client's typed requests.
//
// A schema is TypeBox's (its `static` type is read structurally, so TypeBox itself need not be
// installed) or plain JSON Schema written `as const` (json-schema-to-ts's FromSchema, as
// Fastify's type provider does); without one the message is `unknown`.
import type { FromSchema, JSONSchema } from 'json-schema-to-ts'
import type { Connection } from './connection'

/** The type a schema describes: TypeBox's static type, json-schema-to-ts's, or unknown. */
export type SchemaType<S> = 0 extends 1 & S
  ? any // an `any` schema must not reach FromSchema, which would recurse without end
  : [S] extends [undefined]
      ? unknown
      : S extends { static: infer T } ? T
        : S extends JSONSchema ? FromSchema<S> : unknown

type Awaitable<T> = T | Promise<T>

/** What one message type is: its schema, its reply's schema, and the handler. */
export interface MessageDefinition<Schema = unknown, Reply = undefined> {
  /** JSON Schema (or TypeBox schema) the whole message, `type` included, must satisfy. */
  schema?: Schema
  /** Schema of what the handler returns; types the handler's return and the client's reply. */
  reply?: Reply
  /** Runs with the checked message; its value (unless undefined) is sent back as JSON. */
  handler: (message: SchemaType<Schema>, connection: Connection) => Awaitable<[Reply] extends [undefined] ? unknown : SchemaType<Reply> | undefined>
}

/**
 * Declares one message type with its message and reply types inferred from its schemas: the
 * handler's `message` is the schema's type, and its return must match the reply schema.
 */
export function defineMessage<Schema = undefined, Reply = undefined> (definition: MessageDefinition<Schema, Reply>): MessageDefinition<Schema, Reply> {
  return definition
}

/**
 * Groups message types (each from {@link defineMessage}) for `config.wsManager.messages`.
 * Returns them unchanged; export them (or their type) to type a client:
 * `MessageClient<typeof messages>`.
 */
export function defineMessages<const D extends Record<string, { handler: (...args: any[]) => unknown }>> (definitions: D): D {
  return definitions
}

/** The message a client sends for one type of a definitions object. */
export type MessageOf<D, K extends keyof D> = D[K] extends { schema?: infer Schema } ? SchemaType<Exclude<Schema, undefined>> : unknown

/** The reply a client receives for one type of a definitions object. */
export type ReplyOf<D, K extends keyof D> = D[K] extends { reply?: infer Reply } ? SchemaType<Exclude<Reply, undefined>> : unknown

/**
 * The typed surface a client offers for a definitions object (the client of issue 14
 * implements it): `request(type, message)` resolves with the handler's reply.
 */
export interface MessageClient<D> {
  request<K extends keyof D & string> (type: K, message: Omit<MessageOf<D, K>, 'type'>): Promise<ReplyOf<D, K>>
}
