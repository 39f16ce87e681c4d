import './augment'
import { wsManager } from './plugin'

export { wsManager } from './plugin'
export { WsManager } from './manager'
export type { HealthReport, ConnectionStats, WsManagerStats } from './manager'
export { Connection, payloadSize } from './connection'
export type { ConnectionState } from './connection'
export { LocalConnectionRegistry } from './registry'
export type { ConnectionRegistry, MutableConnectionRegistry } from './registry'
export { GracefulCloseManager, truncateReason } from './close'
export type { CloseRequest, CloseResult, CloseStats, GracefulCloseManagerOptions } from './close'
export { ManagedWebSocket } from './socket'
export type { CloseInitiator } from './socket'
export { CloseCode, errors, isSendableCloseCode } from './errors'
export type { CloseCodeValue, ErrorCode } from './errors'
export { DEFAULTS, normalizeOptions } from './options'
export { loadConfig } from './config'
export type { ServerConfig } from './config'
export type { WsManagerOptions, ResolvedOptions, CloseOptions } from './options'

export default wsManager

// CommonJS callers expect require('fastify-ws-manager') to give the plugin itself, as other
// Fastify plugins do; the named exports stay reachable on it and ESM imports keep working.
module.exports = Object.assign(wsManager, module.exports)
