// fastify-ws-manager/client: the public surface of the client, re-exported by name.
export { createClient, Client } from './client'
export type { ClientOptions, ClientState, ClientEvents, CloseEvent, MessageEvent, RequestOptions, TokenRefresh } from './client'
export { ClientError } from './errors'
export type { ClientErrorCode } from './errors'
export { RECONNECT_DEFAULTS, backoffDelay, decide } from './policy'
export type { ReconnectOptions, Decision, Ending } from './policy'
export type { TopicListener, TopicMeta, SubscribedEvent } from './topics'
export type { WebSocketConstructor, WebSocketLike } from './socket'
