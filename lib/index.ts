import './augment'
import { wsManager } from './plugin'

export { wsManager } from './plugin'
export { WsManager } from './manager'
export type { AdmissionStats, BroadcastOptions, ConnectionStats, DisconnectOptions, HealthReport, WsManagerStats } from './manager'
export { Connection, payloadSize } from './connection'
export type { ConnectionState, RouteSettings } from './connection'
export { LocalConnectionRegistry } from './registry'
export type { ConnectionRegistry, MutableConnectionRegistry } from './registry'
export { GracefulCloseManager, truncateReason } from './close'
export type { CloseRequest, CloseResult, CloseStats, GracefulCloseManagerOptions } from './close'
export { HeartbeatManager, HEARTBEAT_DEFAULTS, detectionBound, resolveHeartbeatOptions } from './heartbeat'
export type {
  HeartbeatManagerStats, HeartbeatOptions, HeartbeatOverrides, HeartbeatSettings, HeartbeatStats,
  HeartbeatTimeoutCallback, ResolvedHeartbeatOptions
} from './heartbeat'
export { FrameSizeValidator, FRAME_SIZE_PROFILES, isFrameSizeError, resolveFrameSizeProfile } from './frame-size'
export type { FrameSizeLimits, FrameSizeOption, FrameSizeResult, FrameSizeStats, FrameSizeValidatorOptions } from './frame-size'
export { CompressionManager, COMPRESSION_PROFILES, resolveCompressionProfile } from './compression'
export type {
  CompressionConnectionStats, CompressionFigures, CompressionManagerOptions, CompressionOption, CompressionProfileName,
  CompressionSettings, CompressionStats
} from './compression'
export type { BackpressureOptions, BackpressurePolicy, DeliveryStats, Sendable, SendOptions, SendResult } from './delivery'
export { MessageRouter } from './router'
export type { MessageRoute, MessageRoutes, RouterErrorCode } from './router'
export type { AuthInput, AuthOptions, AuthResult, TokenSource } from './auth'
export type { UpgradeRateLimitOptions } from './admission'
export type { MessageLimitStats, MessageRateLimitOptions, OriginPolicy } from './limits'
export { ManagedWebSocket } from './socket'
export type { CloseInitiator } from './socket'
export { CloseCode, errors, isSendableCloseCode } from './errors'
export type { CloseCodeValue, ErrorCode } from './errors'
export { DEFAULTS, normalizeOptions } from './options'
export type { CloseOptions, ResolvedOptions, RouteWsManagerConfig, WsManagerOptions } from './options'
export { loadConfig } from './config'
export type { ServerConfig } from './config'

export default wsManager

// CommonJS callers expect require('fastify-ws-manager') to give the plugin itself, as other
// Fastify plugins do; the named exports stay reachable on it and ESM imports keep working.
module.exports = Object.assign(wsManager, module.exports)
