// The `metrics` option (lib/metrics.ts), apart so that the options module needs no metrics.
import type { onRequestHookHandler } from 'fastify'
import { Registry } from 'prom-client'
import { checkString, fail, isPlainObject, section } from './validate'

/** The `metrics` option. */
export interface MetricsOptions {
  /** Path of the scrape route; `false` registers none (serve `wsManager.metrics.registry` yourself). @default '/metrics' */
  endpoint?: string | false
  /** A prom-client Registry of the application's to register in. @default a new Registry */
  registry?: Registry
  /** Prefix of every metric name. @default 'ws_' */
  prefix?: string
  /** Also collect prom-client's default process metrics into the registry. @default false */
  defaultMetrics?: boolean
  /** onRequest hook(s) of the scrape route, to protect it like any Fastify route. */
  onRequest?: onRequestHookHandler | onRequestHookHandler[]
}

/** The metrics options after validation. */
export interface ResolvedMetricsOptions {
  endpoint: string | false
  registry: Registry | null
  prefix: string
  defaultMetrics: boolean
  onRequest: onRequestHookHandler[]
}

/** Validates the `metrics` option: false/undefined is off, true takes the defaults. */
export function resolveMetrics (input: unknown): ResolvedMetricsOptions | false {
  if (input === undefined || input === false) return false
  const given = input === true ? {} : section('metrics', input, ['endpoint', 'registry', 'prefix', 'defaultMetrics', 'onRequest'])
  const endpoint = given.endpoint ?? '/metrics'
  if (endpoint !== false && (typeof endpoint !== 'string' || !/^\/[A-Za-z0-9._~\-/]*$/.test(endpoint))) {
    fail('metrics.endpoint', 'expected an absolute path such as /metrics, or false')
  }
  const registry = given.registry ?? null
  if (registry !== null && !(registry instanceof Registry)) fail('metrics.registry', 'expected a prom-client Registry')
  const prefix = given.prefix === undefined ? 'ws_' : checkString('metrics.prefix', given.prefix)
  if (prefix !== '' && !/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(prefix)) fail('metrics.prefix', 'expected characters of a Prometheus metric name: [a-zA-Z_:][a-zA-Z0-9_:]*')
  const defaultMetrics = given.defaultMetrics ?? false
  if (typeof defaultMetrics !== 'boolean') fail('metrics.defaultMetrics', 'expected true or false')
  const hooks = given.onRequest === undefined ? [] : Array.isArray(given.onRequest) ? given.onRequest : [given.onRequest]
  if (!hooks.every((h) => typeof h === 'function')) fail('metrics.onRequest', 'expected an onRequest hook function or an array of them')
  if (isPlainObject(given.onRequest) && !Array.isArray(given.onRequest)) fail('metrics.onRequest', 'expected a function or an array of functions')
  return { endpoint: endpoint as string | false, registry, prefix, defaultMetrics, onRequest: hooks as onRequestHookHandler[] }
}
