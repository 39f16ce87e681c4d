import createError from '@fastify/error'

/**
 * Close codes this plugin sends, from RFC 6455 section 7.4.1 and the IANA registry.
 * Clients can switch on these to decide whether to reconnect.
 */
export const CloseCode = Object.freeze({
  /** The purpose of the connection was fulfilled. */
  NORMAL: 1000,
  /** The server is going away (shutdown) or the peer timed out or idled. */
  GOING_AWAY: 1001,
  /** The peer broke the WebSocket protocol. */
  PROTOCOL_ERROR: 1002,
  /** The peer sent a kind of data the endpoint does not take (text to a binary tunnel). */
  UNSUPPORTED_DATA: 1003,
  /** A message was not valid for its type (bad UTF-8, malformed JSON, repeated schema failures). */
  INVALID_PAYLOAD: 1007,
  /** The peer broke a policy: expired token, rate limit, user connection limit. */
  POLICY_VIOLATION: 1008,
  /** A message was larger than the frame size limit. */
  MESSAGE_TOO_BIG: 1009,
  /** The server failed while handling the connection (a handler or listener threw). */
  INTERNAL_ERROR: 1011,
  /** The server is restarting; reconnect after a short delay. */
  SERVICE_RESTART: 1012,
  /** The server is overloaded or the peer reads too slowly; reconnect later. */
  TRY_AGAIN_LATER: 1013
} as const)

/** One of the named close codes. */
export type CloseCodeValue = typeof CloseCode[keyof typeof CloseCode]

/**
 * Whether a code may be sent in a close frame: RFC 6455 forbids 1004, 1005, 1006 and 1015,
 * and codes below 1000 or from 1016 to 2999 are unassigned.
 */
export function isSendableCloseCode (code: unknown): code is number {
  return typeof code === 'number' && Number.isInteger(code) &&
    ((code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) ||
      (code >= 3000 && code <= 4999))
}

/**
 * Every coded error the plugin throws. The keys equal the codes; test/errors.test.ts checks
 * that each one is documented in the README.
 */
export const errors = {
  /** An option has the wrong type or is out of range. */
  FST_WSM_OPTION_INVALID: createError<[string, string]>(
    'FST_WSM_OPTION_INVALID', 'Invalid fastify-ws-manager option "%s": %s', 500, TypeError),
  /** An environment variable read by loadConfig() has a value that is not allowed. */
  FST_WSM_ENV_INVALID: createError<[string, string, string]>(
    'FST_WSM_ENV_INVALID', 'Invalid environment variable %s=%s: %s', 500, TypeError),
  /** @fastify/websocket was registered by the application as well as by this plugin. */
  FST_WSM_WEBSOCKET_REGISTERED: createError(
    'FST_WSM_WEBSOCKET_REGISTERED',
    '@fastify/websocket is already registered: fastify-ws-manager registers it itself with the options it derives, so remove your own app.register(@fastify/websocket)',
    500),
  /** Authentication is on but @fastify/jwt is not registered. */
  FST_WSM_JWT_MISSING: createError(
    'FST_WSM_JWT_MISSING',
    'fastify-ws-manager authenticates upgrades with @fastify/jwt: register @fastify/jwt with your secret or keys before it, or pass auth: false',
    500),
  /** A call got an argument out of range (a close reason that is not a string, a timeout that is not a positive integer). */
  FST_WSM_ARGUMENT_INVALID: createError<[string, string]>(
    'FST_WSM_ARGUMENT_INVALID', 'Invalid argument "%s": %s', 500, TypeError),
  /** A lifecycle hook was added with an unknown name or without a function. */
  FST_WSM_HOOK_INVALID: createError<[string, string]>(
    'FST_WSM_HOOK_INVALID', 'Invalid fastify-ws-manager hook "%s": %s', 500, TypeError),
  /** A topic name is empty, too long, holds control characters or lone surrogates, or the connection has too many topics. */
  FST_WSM_TOPIC_INVALID: createError<[string, string]>(
    'FST_WSM_TOPIC_INVALID', 'Invalid topic "%s": %s', 500, TypeError),
  /** Another live node of the cluster already runs under this nodeId. */
  FST_WSM_CLUSTER_NODE_ID_TAKEN: createError<[string]>(
    'FST_WSM_CLUSTER_NODE_ID_TAKEN',
    'Cluster node id "%s" is held by another live node: give each process its own nodeId (env NODE_ID), or leave it unset', 500),
  /** A close was asked for with a code that RFC 6455 does not allow in a close frame. */
  FST_WSM_CLOSE_CODE_INVALID: createError<[string]>(
    'FST_WSM_CLOSE_CODE_INVALID',
    'Close code %s cannot be sent: use 1000-1003, 1007-1014 or 3000-4999', 500, RangeError),
  /** SshConnectionPool: caps reached and the queue full, or a caller waited queueTimeout. */
  FST_WSM_SSH_SATURATED: createError<[string, string]>('FST_WSM_SSH_SATURATED', 'SSH target %s is saturated: %s', 503),
  /** SshConnectionPool: connect refused, DNS failure, readyTimeout, or the connection was lost. */
  FST_WSM_SSH_UNREACHABLE: createError<[string, string]>('FST_WSM_SSH_UNREACHABLE', 'SSH target %s is unreachable: %s', 502),
  /** SshConnectionPool: every authentication method failed, or the private key could not be read. */
  FST_WSM_SSH_AUTH: createError<[string, string]>('FST_WSM_SSH_AUTH', 'SSH authentication to %s failed: %s', 502),
  /** SshConnectionPool: the server's host key was not verified. */
  FST_WSM_SSH_HOSTKEY: createError<[string, string]>('FST_WSM_SSH_HOSTKEY', 'SSH host key of %s was not verified: %s', 502),
  /** SshConnectionPool: the server refused a channel or a request on it. */
  FST_WSM_SSH_REFUSED: createError<[string, string]>('FST_WSM_SSH_REFUSED', 'SSH server %s refused: %s', 502),
  /** SshConnectionPool: the pool was closed. */
  FST_WSM_SSH_CLOSED: createError<[string, string]>('FST_WSM_SSH_CLOSED', 'SSH connection pool closed, no session to %s: %s', 503),
  /** The load tester (fastify-ws-manager-loadtest, lib/loadtest) got an option it cannot run with. */
  FST_WSM_LOADTEST_OPTION_INVALID: createError<[string, string]>('FST_WSM_LOADTEST_OPTION_INVALID', 'Invalid load test option "%s": %s', 500, TypeError)
} as const

/** The codes of every error in {@link errors}. */
export type ErrorCode = keyof typeof errors
