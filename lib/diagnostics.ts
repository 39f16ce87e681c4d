// diagnostics_channel: what an APM or a test can observe without patching anything. A
// channel without subscribers costs one property read per event.
import diagnostics from 'node:diagnostics_channel'

/**
 * The channels the plugin publishes on:
 * - `fastify-ws-manager:connection` `{ connection, request }` once a connection is accepted;
 * - `fastify-ws-manager:message` `{ connection, data, isBinary }` for each data message handed to the application;
 * - `fastify-ws-manager:close` `{ connection, code, reason, sentCode, initiatedBy }` once its socket closed;
 * - `fastify-ws-manager:refused` `{ request, statusCode, reason }` for each upgrade refused.
 */
export const channels = Object.freeze({
  connection: diagnostics.channel('fastify-ws-manager:connection'),
  message: diagnostics.channel('fastify-ws-manager:message'),
  close: diagnostics.channel('fastify-ws-manager:close'),
  refused: diagnostics.channel('fastify-ws-manager:refused')
})

/**
 * `tracing:fastify-ws-manager:handler:{start,end,asyncStart,asyncEnd,error}` around each
 * route handler, with `{ connection, request }`: the span an APM opens for the connection's
 * setup. An async handler's promise is traced to its settlement.
 */
export const handlerTracing = diagnostics.tracingChannel('fastify-ws-manager:handler')

/** Whether anyone listens on the handler's tracing channels (Node 20 has no hasSubscribers on the TracingChannel itself). */
export function handlerTraced (): boolean {
  return handlerTracing.start.hasSubscribers || handlerTracing.end.hasSubscribers || handlerTracing.asyncEnd.hasSubscribers ||
    handlerTracing.error.hasSubscribers
}
