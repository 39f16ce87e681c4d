// Every Symbol the plugin attaches to objects it does not own (the raw request, Fastify's
// request, ws sockets) or uses to keep a method off a public surface, in one place.

/** Attaches a socket to its connection (ManagedWebSocket). */
export const kAttach = Symbol('fastify-ws-manager.attach')
/** ws's own send, past the connection's accounting; for the connection only. */
export const kSocketSend = Symbol('fastify-ws-manager.socketSend')
/** The authenticated identity of an upgrade, on Fastify's request until the connection exists. */
export const kAuth = Symbol('fastify-ws-manager.auth')
/** A token taken out of the URL, on the raw request. */
export const kQueryToken = Symbol('fastify-ws-manager.queryToken')
/** The token the plugin chose for an upgrade, read back by the extractToken it hands @fastify/jwt. */
export const kChosenToken = Symbol('fastify-ws-manager.chosenToken')
/** A managed socket's close owner (its connection), for GracefulCloseManager. */
export const kCloseOwner = Symbol('fastify-ws-manager.closeOwner')
/** ws's own close and terminate, past the connection's state; for the connection only. */
export const kSocketClose = Symbol('fastify-ws-manager.socketClose')
export const kSocketTerminate = Symbol('fastify-ws-manager.socketTerminate')
/** A connection admitted in Redis before its upgrade (cluster mode), on Fastify's request. */
export const kReservation = Symbol('fastify-ws-manager.reservation')
/** The ws.connect span of an upgrade (tracing), on Fastify's request until it ends. */
export const kConnectSpan = Symbol('fastify-ws-manager.connectSpan')
