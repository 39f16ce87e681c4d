// The `cluster` option: several processes acting as one server over Redis (lib/cluster.ts).
import { hostname } from 'node:os'
import type { Redis } from 'ioredis'
import { checkBool, checkInt, checkOneOf, fail, section } from './validate'

/** Cluster mode: several processes share delivery, presence, topics and the per-user cap over Redis. */
export interface ClusterOptions {
  /**
   * A `redis://` (or `rediss://`) URL, or an ioredis client. The plugin duplicates a client
   * into its own command and subscriber connections (with fail-fast settings) and closes
   * those on `app.close()`; the client passed in is neither used for commands nor closed.
   * Env REDIS_URL.
   */
  redis: string | Redis
  /**
   * Prefix of every key and channel, so that several applications can share one Redis
   * (1 to 64 of A-Z a-z 0-9 . _ -).
   * Env CLUSTER_PREFIX.
   * @default 'wsm'
   */
  prefix?: string
  /**
   * This process's name in the cluster; two live nodes may not share one. Env NODE_ID.
   * @default `${hostname}-${pid}`
   */
  nodeId?: string
  /** Milliseconds a call that needs answers (presence, nodes, disconnectUser) waits for them. @default 2000 */
  requestTimeout?: number
  /** Milliseconds after which a node that stopped refreshing its entry (a crash) leaves nodes() and presence. @default 15000 */
  presenceTtl?: number
  /**
   * 'sharded' (SSUBSCRIBE/SPUBLISH, Redis 7+), 'classic' (SUBSCRIBE/PUBLISH) or 'auto'
   * (sharded when the server is Redis 7 or later). Every node of a cluster must use the same.
   * @default 'auto'
   */
  pubsub?: 'auto' | 'sharded' | 'classic'
  /**
   * The node is of no use without Redis: the readiness endpoint answers 503 while Redis is
   * unreachable (or the node is not registered), so a load balancer sends clients elsewhere.
   * Env CLUSTER_REQUIRED.
   * @default false
   */
  required?: boolean
}

/** The cluster options after validation. */
export interface ResolvedClusterOptions {
  redis: string | Redis
  prefix: string
  nodeId: string
  requestTimeout: number
  presenceTtl: number
  pubsub: 'auto' | 'sharded' | 'classic'
  required: boolean
}

const NAME = /^[A-Za-z0-9._:-]{1,64}$/
// No ':' in a prefix: channels are `prefix:kind:...`, and a prefix with ':' could make one
// application's topic channel another's broadcast channel.
const PREFIX = /^[A-Za-z0-9._-]{1,64}$/

function isRedisClient (value: unknown): value is Redis {
  return typeof value === 'object' && value !== null &&
    typeof (value as { duplicate?: unknown }).duplicate === 'function' &&
    typeof (value as { defineCommand?: unknown }).defineCommand === 'function'
}

/** The default node id: the host name (a pod's name in Kubernetes) and the process id. */
export function defaultNodeId (): string {
  return `${hostname()}-${process.pid}`.replace(/[^A-Za-z0-9._:-]/g, '_').slice(0, 64)
}

/** Validates the `cluster` option; `false` or undefined is off. */
export function resolveCluster (input: unknown): ResolvedClusterOptions | false {
  if (input === undefined || input === false) return false
  const given = section('cluster', input, ['redis', 'prefix', 'nodeId', 'requestTimeout', 'presenceTtl', 'pubsub', 'required'])
  const redis = given.redis
  if (typeof redis === 'string') {
    if (!/^rediss?:\/\//.test(redis)) fail('cluster.redis', 'expected a redis:// or rediss:// URL or an ioredis client')
  } else if (!isRedisClient(redis)) {
    fail('cluster.redis', 'expected a redis:// or rediss:// URL or an ioredis client')
  } else if ((redis as { isCluster?: boolean }).isCluster === true) {
    fail('cluster.redis', 'a Redis Cluster client is not supported yet: pass a client of one Redis server (or Sentinel)')
  }
  const prefix = given.prefix ?? 'wsm'
  if (typeof prefix !== 'string' || !PREFIX.test(prefix)) fail('cluster.prefix', 'expected 1 to 64 characters from A-Z a-z 0-9 . _ -')
  const nodeId = given.nodeId ?? defaultNodeId()
  if (typeof nodeId !== 'string' || !NAME.test(nodeId)) fail('cluster.nodeId', 'expected 1 to 64 characters from A-Z a-z 0-9 . _ : -')
  return {
    redis: redis as string | Redis,
    prefix,
    nodeId,
    requestTimeout: given.requestTimeout === undefined ? 2000 : checkInt('cluster.requestTimeout', given.requestTimeout, 10, 600_000),
    presenceTtl: given.presenceTtl === undefined ? 15_000 : checkInt('cluster.presenceTtl', given.presenceTtl, 300, 3_600_000),
    pubsub: given.pubsub === undefined ? 'auto' : checkOneOf('cluster.pubsub', given.pubsub, ['auto', 'sharded', 'classic'] as const),
    required: given.required === undefined ? false : checkBool('cluster.required', given.required)
  }
}
