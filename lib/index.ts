import './augment'
import { wsManager } from './plugin'

export { wsManager } from './plugin'
export { WsManager } from './manager'
export type { AdmissionStats, BroadcastOptions, ClusterApi, ConnectionStats, DisconnectOptions, DisconnectResults, HealthReport, WsManagerStats } from './manager'
export type { ClusterAnswer, ClusterNode, ClusterStats, PresenceEntry } from './cluster'
export type { ClusterOptions } from './cluster-options'
export { MAX_TOPIC_LENGTH, topicProblem } from './topics'
export { Connection } from './connection'
export type { CloseInfo, CloseInitiator, ConnectionState, RouteSettings } from './connection'
export type { Done, HookName, HookTypes, OnCloseHook, OnConnectionHook, OnMessageHook, OnRefusedHook, RefusalInfo, RouteHookOptions } from './hooks'
export type { InboundMessage, MessageIterator } from './iteration'
export { channels } from './diagnostics'
export { LocalConnectionRegistry } from './registry'
export type { ConnectionRegistry, MutableConnectionRegistry } from './registry'
export { GracefulCloseManager, truncateReason } from './close'
export type { CloseOptions, CloseRequest, CloseResult, CloseStats, GracefulCloseManagerOptions } from './close'
export { HeartbeatManager, HEARTBEAT_DEFAULTS, detectionBound, resolveHeartbeatOptions } from './heartbeat'
export type {
  HeartbeatManagerStats, HeartbeatOptions, HeartbeatOverrides, HeartbeatSettings, HeartbeatStats,
  HeartbeatTimeoutCallback, ResolvedHeartbeatOptions
} from './heartbeat'
export { FrameSizeValidator, FRAME_SIZE_PROFILES, isFrameSizeError, resolveFrameSizeProfile } from './frame-size'
export type { FrameSizeLimits, FrameSizeOption, FrameSizeResult, FrameSizeStats, FrameSizeValidatorOptions } from './frame-size'
export { CompressionManager } from './compression'
export type { CompressionConnectionStats, CompressionFigures, CompressionManagerOptions, CompressionStats } from './compression'
export { COMPRESSION_PROFILES, resolveCompressionProfile } from './compression-profiles'
export type { CompressionOption, CompressionProfileName, CompressionSettings } from './compression-profiles'
export { payloadSize } from './delivery'
export type { BackpressureOptions, BackpressurePolicy, DeliveryStats, Sendable, SendOptions, SendResult } from './delivery'
export { MessageRouter } from './router'
export { defineMessage, defineMessages } from './messages'
export type { MessageClient, MessageDefinition, MessageOf, ReplyOf, SchemaType } from './messages'
export type { MessageRoute, MessageRoutes, RouterErrorCode } from './router'
export type { AuthInput, AuthOptions, AuthResult } from './auth'
export type { FailureLimitOptions } from './auth-failures'
export type { TokenSource } from './token'
export type { MessageLimitStats, MessageRateLimitOptions } from './message-limits'
export type { OriginPolicy } from './origin'
export { ManagedWebSocket } from './socket'
export { CloseCode, errors, isSendableCloseCode } from './errors'
export type { CloseCodeValue, ErrorCode } from './errors'
export { DEFAULTS, normalizeOptions } from './options'
export type { ResolvedOptions, RouteWsManagerConfig, UpgradeRateLimitOptions, WsManagerOptions, WsServerOptions } from './options'
export { DRAIN_DEFAULTS } from './drain'
export type { DrainOptions, DrainResult } from './drain'
export { HEALTH_DEFAULTS } from './health'
export type { HealthOptions } from './health'
export { SshConnectionPool, SSH_CLOSE_CODES, SSH_POOL_DEFAULTS, isSshPoolError } from './ssh-pool'
export type {
  SshErrorKind, SshExecOptions, SshForwardDestination, SshHostInfo, SshHostKeyCheck, SshHostVerifier,
  SshPoolError, SshPoolOptions, SshPoolStats, SshPtyOptions, SshTarget
} from './ssh-pool'
export { sshTerminal, tcpTunnel, sshTunnel, SESSION_DEFAULTS } from './forward'
export type { ForwardDestination, ForwardHandler, ForwardingStats, ForwardKind, SessionLimits, SshTerminalOptions, SshTunnelOptions, TcpTunnelOptions } from './forward'
export { loadConfig } from './config'
export type { ServerConfig } from './config'

export default wsManager

// CommonJS callers expect require('fastify-ws-manager') to give the plugin itself, as other
// Fastify plugins do; the named exports stay reachable on it and ESM imports keep working.
module.exports = Object.assign(wsManager, module.exports)
