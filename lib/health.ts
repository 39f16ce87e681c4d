// Liveness and readiness endpoints for probes (Kubernetes, load balancers): liveness says the
// event loop turns; readiness says whether this node should be given new clients.
import type { FastifyInstance } from 'fastify'
import type { Cluster } from './cluster'
import { fail, section } from './validate'

/** The `health` option: the probe endpoints' paths, each `false` to leave it out. */
export interface HealthOptions {
  /** Liveness: 200 `{ "status": "ok" }` while the event loop turns. @default '/health' */
  liveness?: string | false
  /**
   * Readiness: 200 `{ "status": "ready" }`; 503 while draining, while shutting down, and in
   * cluster mode with `cluster.required` while Redis is unreachable.
   * @default '/ready'
   */
  readiness?: string | false
}

/** The health options after validation. */
export interface ResolvedHealthOptions {
  liveness: string | false
  readiness: string | false
}

/** The health defaults. */
export const HEALTH_DEFAULTS: ResolvedHealthOptions = Object.freeze({ liveness: '/health', readiness: '/ready' })

const PATH = /^\/[A-Za-z0-9._~\-/]*$/

function checkPath (name: string, value: unknown, fallback: string): string | false {
  if (value === undefined) return fallback
  if (value === false) return false
  if (typeof value !== 'string' || !PATH.test(value) || value.split('/').slice(1).some((part, i, all) => part === '.' || part === '..' || (part === '' && i < all.length - 1))) {
    fail(name, 'expected an absolute path such as /ready, or false')
  }
  return value
}

/** Validates the `health` option; `false` leaves both endpoints out. */
export function resolveHealth (input: unknown): ResolvedHealthOptions | false {
  if (input === false) return false
  const given = input === true ? {} : section('health', input, ['liveness', 'readiness'])
  const liveness = checkPath('health.liveness', given.liveness, HEALTH_DEFAULTS.liveness as string)
  const readiness = checkPath('health.readiness', given.readiness, HEALTH_DEFAULTS.readiness as string)
  if (liveness !== false && readiness !== false && liveness.toLowerCase() === readiness.toLowerCase()) fail('health.readiness', 'expected a path other than health.liveness')
  return { liveness, readiness }
}

/** What readiness looks at. */
export interface ReadinessSource {
  readonly draining: boolean
  readonly shuttingDown: boolean
}

/** Why the node is not ready, or null when it is. */
export function notReady (manager: ReadinessSource, cluster: Cluster | null, clusterRequired: boolean): string | null {
  if (manager.shuttingDown) return 'shutting down'
  if (manager.draining) return 'draining'
  if (clusterRequired && cluster !== null && !cluster.healthy) return 'cluster unavailable'
  return null
}

const OK = '{"status":"ok"}'
const READY = '{"status":"ready"}'

/**
 * Adds the probe routes. They log at warn and above only: a probe every few seconds would
 * otherwise fill the logs with request lines.
 * @throws FST_WSM_OPTION_INVALID when the application already has a GET route at the path.
 */
export function registerHealth (fastify: FastifyInstance, options: ResolvedHealthOptions, manager: ReadinessSource,
  cluster: Cluster | null, clusterRequired: boolean): void {
  const paths = [['health.liveness', options.liveness], ['health.readiness', options.readiness]] as const
  const prefix = fastify.prefix
  for (const [name, url] of paths) {
    if (url !== false && fastify.hasRoute({ method: 'GET', url: prefix + url })) fail(name, `the application has a GET ${prefix}${url} route already: choose another path, or false`)
  }
  // A route the application adds later at a probe path gets the same coded error, not
  // Fastify's duplicate-route error.
  const taken = new Map(paths.filter(([, url]) => url !== false).map(([name, url]) => [(prefix + url).toLowerCase(), name]))
  let registering = true
  fastify.addHook('onRoute', (route) => {
    if (registering) return
    const methods = Array.isArray(route.method) ? route.method : [route.method]
    const name = taken.get(route.url.toLowerCase())
    if (name === undefined || !methods.includes('GET')) return
    fail(name, `the application adds a GET ${route.url} route: the plugin serves ${route.url}; choose another path for it, or false`)
  })
  const json = 'application/json; charset=utf-8'
  if (options.liveness !== false) {
    fastify.get(options.liveness, { logLevel: 'warn' }, (_request, reply) => {
      reply.header('cache-control', 'no-store').type(json).send(OK)
    })
  }
  if (options.readiness !== false) {
    fastify.get(options.readiness, { logLevel: 'warn' }, (_request, reply) => {
      const why = notReady(manager, cluster, clusterRequired)
      reply.header('cache-control', 'no-store').type(json)
      if (why === null) reply.send(READY)
      else reply.code(503).send(JSON.stringify({ status: why }))
    })
  }
  registering = false
}
