// Admission of upgrades: the route hooks that answer with a real HTTP status and a JSON body
// before anything is upgraded (shutdown, origin, token, upgrade rate, connection caps).
import type { FastifyReply, FastifyRequest, HookHandlerDoneFunction, onRequestAsyncHookHandler } from 'fastify'
import { connectionId } from './ids'
import type { Authenticator, AuthResult } from './auth'
import { negotiateDeflateOffer } from './compression-profiles'
import { ipKey } from './ip'
import type { WsManager } from './manager'
import type { Connection, HookRunner } from './connection'
import { refusalBody, UpgradeRefusal } from './refusal'
import { kAuth, kReservation } from './symbols'

/** The admission settings of one route. */
export interface AdmissionSettings {
  /** The route's URL pattern. */
  route: string
  authenticator: Authenticator | null
  originAllowed: (request: FastifyRequest) => boolean
  maxConnections: number
  maxConnectionsPerUser: number
  maxConnectionsPerIp: number
  onUserLimit: 'reject' | 'closeOldest'
  /** The profile's deflate window when compression is on, else null. */
  deflateWindowBits: number | null
  /** The route's hooks (onRefused). */
  hooks: HookRunner
}

/** A connection admitted in Redis before its upgrade: its id, and what to close to make room. */
export interface Reservation {
  id: string
  userId: string
  evict: Array<{ connectionId: string, nodeId: string }>
  /** Set once the connection exists; until then a closed socket gives the place back. */
  accepted: boolean
}

type RequestWithAuth = FastifyRequest & { [kAuth]?: AuthResult, [kReservation]?: Reservation }

// isAllowed means "on the allow list"; isExceeded is the verdict.
interface RateLimitResult { isAllowed: boolean, isExceeded?: boolean, isBanned?: boolean, ttlInSeconds?: number, max?: number }
/** One limiter built by @fastify/rate-limit's `createRateLimit`. */
export type RateLimiter = (request: FastifyRequest) => Promise<RateLimitResult>

/** @fastify/rate-limit's `createRateLimit` decorator. */
export type CreateRateLimit = (options: { max: number, timeWindow: number, keyGenerator: (request: FastifyRequest) => string }) => RateLimiter

/** Answers an upgrade with a real HTTP status and a JSON body, never by upgrading and closing. */
export function refuse (manager: WsManager, request: FastifyRequest, reply: FastifyReply, refusal: UpgradeRefusal, hooks: HookRunner): FastifyReply {
  request.log.info({ statusCode: refusal.statusCode, reason: refusal.reason }, 'upgrade rejected')
  manager.refused(request, refusal.statusCode, refusal.reason, hooks)
  return reply
    .code(refusal.statusCode)
    .headers(refusal.headers)
    .type('application/json; charset=utf-8')
    .send(refusalBody(refusal.statusCode, refusal.message))
}

/** The authenticated identity of an upgrade, if any. */
export function authOf (request: FastifyRequest): AuthResult | undefined {
  return (request as RequestWithAuth)[kAuth]
}

/**
 * The route's onRequest hook for upgrades: shutdown, origin, the deflate offer, failed-auth
 * budget, token, then the upgrade rate limit keyed by the authenticated user. Plain HTTP
 * requests to the route pass untouched.
 */
export function createAdmissionHook (manager: WsManager, settings: AdmissionSettings, limiter: () => RateLimiter | null): onRequestAsyncHookHandler {
  return async function admitUpgrade (request, reply) {
    if (!request.ws) return
    if (manager.tracing !== null) manager.tracing.connectStarted(request, settings.route)
    if (manager.shuttingDown) {
      return refuse(manager, request, reply, new UpgradeRefusal(503, 'Server is shutting down', 'shutting down', { 'retry-after': '1' }), settings.hooks)
    }
    if (manager.draining) {
      // The other nodes take the client; the client's own backoff spreads the retries.
      return refuse(manager, request, reply, new UpgradeRefusal(503, 'Server is draining', 'draining', { 'retry-after': '1' }), settings.hooks)
    }
    if (!settings.originAllowed(request)) {
      return refuse(manager, request, reply, new UpgradeRefusal(403, 'Origin not allowed', `origin ${String(request.headers.origin).slice(0, 200)}`), settings.hooks)
    }
    if (settings.deflateWindowBits !== null) {
      // See lib/compression-profiles.ts: a client asking for a smaller window is accepted with
      // it, not refused. ws reads the offer from the raw request when it upgrades.
      const offer = request.raw.headers['sec-websocket-extensions']
      if (typeof offer === 'string') {
        const negotiated = negotiateDeflateOffer(offer, settings.deflateWindowBits)
        if (negotiated === undefined) delete request.raw.headers['sec-websocket-extensions']
        else request.raw.headers['sec-websocket-extensions'] = negotiated
      }
    }
    if (settings.authenticator !== null) {
      const result = await settings.authenticator.authenticate(request)
      if (result instanceof UpgradeRefusal) return refuse(manager, request, reply, result, settings.hooks)
      // request.user was set by @fastify/jwt (formatUser applied); the claims go to the connection.
      ;(request as RequestWithAuth)[kAuth] = result
    }
    const rateLimit = limiter()
    if (rateLimit !== null) {
      const verdict = await rateLimit(request)
      if (!verdict.isAllowed && (verdict.isExceeded === true || verdict.isBanned === true)) {
        return refuse(manager, request, reply, new UpgradeRefusal(429, 'Too many connection attempts', 'upgrade rate limit', {
          'retry-after': String(verdict.ttlInSeconds ?? 1)
        }), settings.hooks)
      }
    }
  }
}

/** The upgrade's place in the cluster, if it was admitted there. */
export function reservationOf (request: FastifyRequest): Reservation | undefined {
  return (request as RequestWithAuth)[kReservation]
}

/** Gives back the place of an upgrade that was refused after it was admitted in the cluster. */
export function releaseReservation (manager: WsManager, request: FastifyRequest): void {
  const reservation = reservationOf(request)
  if (reservation !== undefined) release(manager, reservation)
}

function release (manager: WsManager, reservation: Reservation): void {
  if (reservation.accepted) return
  reservation.accepted = true
  manager.clusterNode?.leave(reservation.userId, reservation.id)
}

/**
 * In cluster mode, the route's preHandler before the caps: an authenticated upgrade takes its
 * place in Redis, where the per-user cap counts every node's connections atomically. When
 * Redis cannot be asked, the local caps decide (one warn log per outage).
 */
export function createClusterAdmitHook (manager: WsManager, settings: AdmissionSettings, route: string) {
  return async function admitInCluster (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const cluster = manager.clusterNode
    const auth = authOf(request)
    if (!request.ws || cluster === null || auth === undefined) return
    const id = connectionId()
    const admission = await cluster.admit(auth.userId, id, route, settings.maxConnectionsPerUser, settings.onUserLimit)
    if (admission.outcome === 'unavailable') {
      if (settings.maxConnectionsPerUser > 0) cluster.noteFallback('maxConnectionsPerUser')
      return
    }
    if (admission.outcome === 'refused') {
      refuse(manager, request, reply, new UpgradeRefusal(429, 'Too many connections for this user', 'maxConnectionsPerUser'), settings.hooks)
      return
    }
    const reservation: Reservation = { id, userId: auth.userId, evict: admission.evict, accepted: false }
    ;(request as RequestWithAuth)[kReservation] = reservation
    // An upgrade that never becomes a connection (ws refused the handshake, the client left)
    // gives its place back when its socket closes; the listener holds the reservation only,
    // not the request.
    const socket = request.raw.socket as typeof request.raw.socket | undefined
    if (socket === undefined || socket.destroyed) {
      release(manager, reservation)
      return
    }
    socket.once('close', () => release(manager, reservation))
  }
}

/**
 * Which cap an upgrade would pass, if any: the server's, the IP's, or (with
 * `onUserLimit: 'reject'`) the user's. Only connections still open count against the user's cap.
 */
export function capsExceeded (manager: WsManager, settings: AdmissionSettings, request: FastifyRequest): UpgradeRefusal | null {
  const registry = manager.connections
  if (settings.maxConnections > 0 && registry.size >= settings.maxConnections) {
    return new UpgradeRefusal(503, 'Server is at its connection limit', 'maxConnections', { 'retry-after': '5' })
  }
  if (settings.maxConnectionsPerIp > 0 && registry.countByIp(ipKey(request.ip)) >= settings.maxConnectionsPerIp) {
    return new UpgradeRefusal(429, 'Too many connections from this address', 'maxConnectionsPerIp', { 'retry-after': '5' })
  }
  const auth = authOf(request)
  const max = settings.maxConnectionsPerUser
  // Admitted in the cluster: Redis counted every node's connections, this one's included.
  if (reservationOf(request) !== undefined) return null
  if (settings.onUserLimit === 'reject' && max > 0 && auth !== undefined && registry.countByUser(auth.userId) >= max) {
    let open = 0
    for (const c of registry.byUser(auth.userId)) if (c.state === 'open') open++
    if (open >= max) return new UpgradeRefusal(429, 'Too many connections for this user', 'maxConnectionsPerUser')
  }
  return null
}

/**
 * The route's last preHandler: the connection caps. It runs synchronously just before the
 * handler upgrades the socket, so no upgrade can slip between the count and the accept
 * (the handler checks again for an asynchronous ws `verifyClient`).
 */
export function createCapsHook (manager: WsManager, settings: AdmissionSettings) {
  return function checkCaps (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction): void {
    if (!request.ws) return done()
    // The application's own hooks ran since onRequest: a drain may have begun meanwhile.
    const refusal = manager.draining
      ? new UpgradeRefusal(503, 'Server is draining', 'draining', { 'retry-after': '1' })
      : capsExceeded(manager, settings, request)
    if (refusal !== null) {
      releaseReservation(manager, request)
      refuse(manager, request, reply, refusal, settings.hooks)
      return
    }
    done()
  }
}

/**
 * With `onUserLimit: 'closeOldest'`: once a user's new connection is accepted, closes that
 * user's oldest open connections over the cap with 1008.
 */
export function evictOldest (manager: WsManager, newest: Connection, max: number, reservation: Reservation | undefined): void {
  if (max <= 0 || newest.userId === null) return
  const cluster = manager.clusterNode
  if (reservation !== undefined && cluster !== null) {
    // Redis chose the oldest across the cluster; each node closes its own.
    const remote = new Map<string, string[]>()
    for (const { connectionId, nodeId } of reservation.evict) {
      if (nodeId === cluster.nodeId) {
        const connection = manager.connections.get(connectionId)
        if (connection === undefined || connection.state !== 'open' || connection === newest) continue
        connection.log.info('closing oldest connection of user over its limit')
        connection.close(1008, 'Connection limit exceeded').catch(() => {})
      } else {
        const ids = remote.get(nodeId)
        if (ids === undefined) remote.set(nodeId, [connectionId])
        else ids.push(connectionId)
      }
    }
    for (const [nodeId, ids] of remote) cluster.closeRemote(nodeId, ids, 1008, 'Connection limit exceeded')
    return
  }
  const open = manager.connections.byUser(newest.userId).filter((c) => c.state === 'open' && c !== newest)
  if (open.length < max) return
  open.sort((a, b) => a.connectedAt - b.connectedAt)
  for (let i = 0; i <= open.length - max; i++) {
    open[i].log.info('closing oldest connection of user over its limit')
    open[i].close(1008, 'Connection limit exceeded').catch(() => {})
  }
}

/**
 * The key of the upgrade rate limit: by user after auth, by IP (IPv6 per /64) without. The
 * plugin-wide limit uses one key space for every route, so a client gets the same budget
 * however many WebSocket routes the application has; a route with its own limit counts in
 * its own space.
 */
export function upgradeRateKey (scope: string) {
  return function keyOf (request: FastifyRequest): string {
    const auth = authOf(request)
    // A user id may hold any character; JSON keeps the parts from running into each other.
    return auth === undefined ? JSON.stringify(['ws', scope, 'ip', ipKey(request.ip)]) : JSON.stringify(['ws', scope, 'user', auth.userId])
  }
}
