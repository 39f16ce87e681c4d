// What nodes of a cluster say to each other over Redis pub/sub, and the Lua scripts that keep
// presence and the per-user cap atomic. Keys share one hash tag so that each script touches
// one slot; channels do not, so sharded pub/sub spreads them over a Redis Cluster's shards.
import { createHash } from 'node:crypto'

/** A message between nodes: a JSON header, then the payload bytes as they go on the wire. */
export interface Envelope {
  header: Header
  payload: Buffer
}

/**
 * Kinds: u user, b broadcast, t topic, d disconnect a user, x close connections, a answer.
 * `p` is the publisher's W3C traceparent (tracing), so the delivering node's span is its child.
 */
export type Header =
  | { n: string, k: 'u', u: string, b: boolean, p?: string }
  | { n: string, k: 'b', r: string | null, b: boolean, p?: string }
  | { n: string, k: 't', t: string, b: boolean, p?: string, o?: number, e?: string }
  | { n: string, k: 'd', u: string, q: string, c: number, r: string, o: number }
  | { n: string, k: 'x', ids: string[], c: number, r: string }
  | { n: string, k: 'a', q: string, res: unknown[] }

const VERSION = 1

/** One buffer: a version byte, the header's length (4 bytes), the header, the payload. */
export function encode (header: Header, payload?: Buffer): Buffer {
  const json = Buffer.from(JSON.stringify(header))
  const head = Buffer.allocUnsafe(5)
  head[0] = VERSION
  head.writeUInt32BE(json.length, 1)
  return payload === undefined ? Buffer.concat([head, json]) : Buffer.concat([head, json, payload])
}

const KINDS = new Set(['u', 'b', 't', 'd', 'x', 'a'])

/** The envelope, or null for anything malformed (anyone who can publish on Redis can send it). */
export function decode (message: Buffer): Envelope | null {
  if (message.length < 5 || message[0] !== VERSION) return null
  const length = message.readUInt32BE(1)
  if (length > message.length - 5) return null
  let header: unknown
  try {
    header = JSON.parse(message.toString('utf8', 5, 5 + length))
  } catch {
    return null
  }
  if (typeof header !== 'object' || header === null) return null
  const h = header as Record<string, unknown>
  if (typeof h.n !== 'string' || typeof h.k !== 'string' || !KINDS.has(h.k)) return null
  if (h.p !== undefined && (typeof h.p !== 'string' || h.p.length > 512)) return null
  switch (h.k) {
    case 'u': if (typeof h.u !== 'string' || typeof h.b !== 'boolean') return null; break
    case 'b': if ((h.r !== null && typeof h.r !== 'string') || typeof h.b !== 'boolean') return null; break
    case 't': if (typeof h.t !== 'string' || typeof h.b !== 'boolean' || (h.o !== undefined && (typeof h.o !== 'number' || !Number.isSafeInteger(h.o))) || (h.e !== undefined && typeof h.e !== 'string')) return null; break
    case 'd': if (typeof h.u !== 'string' || typeof h.q !== 'string' || typeof h.c !== 'number' || typeof h.r !== 'string' || typeof h.o !== 'number') return null; break
    case 'x': if (!Array.isArray(h.ids) || !h.ids.every((id) => typeof id === 'string') || typeof h.c !== 'number' || typeof h.r !== 'string') return null; break
    case 'a': if (typeof h.q !== 'string' || !Array.isArray(h.res)) return null; break
  }
  return { header: header as Header, payload: message.subarray(5 + length) }
}

/** The names of one cluster's keys and channels. */
export class ClusterNames {
  readonly nodes: string
  readonly tokens: string
  readonly info: string
  readonly userKeyPrefix: string
  readonly broadcast: string
  readonly #prefix: string
  readonly #tag: string

  constructor (prefix: string) {
    this.#prefix = prefix
    this.#tag = `{${prefix}}`
    this.nodes = `${this.#tag}:nodes`
    this.tokens = `${this.#tag}:node-tokens`
    this.info = `${this.#tag}:node-info`
    this.userKeyPrefix = `${this.#tag}:user:`
    this.broadcast = `${prefix}:broadcast`
  }

  /** A user id may hold any character: JSON keeps two ids from sharing a key (lone surrogates included). */
  userPart (userId: string): string {
    return JSON.stringify(userId)
  }

  userKey (userId: string): string {
    return this.userKeyPrefix + this.userPart(userId)
  }

  nodeConnections (nodeId: string): string {
    return `${this.#tag}:node-conns:${nodeId}`
  }

  nodeChannel (nodeId: string): string {
    return `${this.#prefix}:node:${nodeId}`
  }

  userChannel (userId: string): string {
    return `${this.#prefix}:user:${this.userPart(userId)}`
  }

  topicChannel (topic: string): string {
    return `${this.#prefix}:topic:${topic}`
  }

  /** A topic's offset counter, epoch and history stream (the `topics` option). */
  topicKeys (topic: string): [string, string, string] {
    const part = JSON.stringify(topic)
    return [`${this.#tag}:topic-seq:${part}`, `${this.#tag}:topic-epoch:${part}`, `${this.#tag}:topic-log:${part}`]
  }
}

/** A Lua script, sent by hash and by source when the server does not know it (a restart). */
export class Script {
  readonly source: string
  readonly sha: string

  constructor (source: string) {
    this.source = NOW + source
    this.sha = createHash('sha1').update(this.source).digest('hex')
  }
}

// Redis's clock, so that nodes with skewed clocks agree on who is alive. Effects are
// replicated (Redis 7's default), so reading TIME before writing is allowed.
const NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function alive (cache, node)
  local ok = cache[node]
  if ok == nil then
    local s = redis.call('ZSCORE', KEYS[1], node)
    ok = s ~= false and tonumber(s) > now
    cache[node] = ok
  end
  return ok
end
-- A user's entries (KEYS[2]) split into those of live nodes, as {id, raw, decoded}, and the
-- ids of the others (dead nodes, unreadable entries).
local function user_entries ()
  local entries = redis.call('HGETALL', KEYS[2])
  local cache = {}
  local live, stale = {}, {}
  for i = 1, #entries, 2 do
    local ok, e = pcall(cjson.decode, entries[i + 1])
    if ok and type(e) == 'table' and type(e[1]) == 'string' and alive(cache, e[1]) then
      live[#live + 1] = {entries[i], entries[i + 1], e}
    else
      stale[#stale + 1] = entries[i]
    end
  end
  return live, stale
end
`

/**
 * Registers or refreshes this node. KEYS: nodes, tokens, info, this node's node-conns.
 * ARGV: nodeId, token, ttl, info, the user key prefix.
 * Returns 0 when another live node holds the id, else {1, the oldest dead node id or '',
 * 1 when Redis did not know this process under the id}. A new process under an id whose old holder died first removes what the old one left: its
 * connections are not this process's.
 */
export const REGISTER = new Script(`
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local holder = redis.call('HGET', KEYS[2], ARGV[1])
if score and tonumber(score) > now and holder and holder ~= ARGV[2] then return 0 end
if holder ~= ARGV[2] then
  local items = redis.call('HGETALL', KEYS[4])
  for i = 1, #items, 2 do
    redis.call('HDEL', ARGV[5] .. items[i + 1], items[i])
  end
  redis.call('DEL', KEYS[4])
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
local fresh = 0
if holder ~= ARGV[2] then fresh = 1 end
return {1, dead[1] or '', fresh}
`)

/**
 * Removes up to 500 presence entries of a dead node; the node itself once none is left.
 * KEYS: nodes, tokens, info, node-conns of the dead node. ARGV: its id, the user key prefix.
 * Returns 0 (the node is alive again), 1 (done) or 2 (more to remove). The user keys are
 * built here: they share the hash tag, so they live in the same slot.
 */
export const COLLECT = new Script(`
if alive({}, ARGV[1]) then return 0 end
local scan = redis.call('HSCAN', KEYS[4], 0, 'COUNT', 500)
local items = scan[2]
for i = 1, #items, 2 do
  redis.call('HDEL', ARGV[2] .. items[i + 1], items[i])
  redis.call('HDEL', KEYS[4], items[i])
end
if redis.call('HLEN', KEYS[4]) > 0 then return 2 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
`)

/**
 * Admits one connection of a user against the cluster-wide cap, atomically.
 * KEYS: nodes, the user's key, this node's node-conns. ARGV: nodeId, connectionId, entry
 * JSON [nodeId, route, openedAt], the user part, max (0: none), mode ('reject' or 'closeOldest').
 * Entries of dead nodes are dropped on the way. Returns {0} over the cap, else {1, then the
 * connection id and node id of each entry to close to make room}.
 */
export const ADMIT = new Script(`
local live, stale = user_entries()
for _, id in ipairs(stale) do redis.call('HDEL', KEYS[2], id) end
local max = tonumber(ARGV[5])
local result = {1}
if max > 0 and #live >= max then
  if ARGV[6] ~= 'closeOldest' then return {0} end
  table.sort(live, function (a, b) return (tonumber(a[3][3]) or 0) < (tonumber(b[3][3]) or 0) end)
  for i = 1, #live - max + 1 do
    result[#result + 1] = live[i][1]
    result[#result + 1] = live[i][3][1]
  end
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
return result
`)

/** A user's live entries. KEYS: nodes, the user's key. Returns {connectionId, entry JSON, ...}. */
export const PRESENCE = new Script(`
local live = user_entries()
local result = {}
for _, entry in ipairs(live) do
  result[#result + 1] = entry[1]
  result[#result + 1] = entry[2]
end
return result
`)

/**
 * Removes this node's entries for connections it no longer has (they closed while Redis was
 * out of reach, or an admission timed out here but ran there). KEYS: this node's node-conns.
 * ARGV: the user key prefix, then the ids to remove. Returns how many went.
 */
export const FORGET = new Script(`
local removed = 0
for i = 2, #ARGV do
  local user = redis.call('HGET', KEYS[1], ARGV[i])
  if user then
    redis.call('HDEL', ARGV[1] .. user, ARGV[i])
    redis.call('HDEL', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
`)

/**
 * Publishes one message of a topic with offsets (the `topics` option): the next offset, the
 * epoch (set from ARGV when the topic has none, its history then starting over), the history
 * entry, and the publication itself, in one step so that offsets follow publication order on
 * every node. KEYS: seq, epoch, stream. ARGV: topic as JSON, data JSON, a new epoch, history
 * size (0: none), ttl, channel, this node's id as JSON, 'sharded' or 'classic'.
 * Returns {offset, epoch}.
 */
export const PUBLISH_TOPIC = new Script(`
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[2], epoch)
  redis.call('DEL', KEYS[1], KEYS[3])
end
local offset = redis.call('INCR', KEYS[1])
local frame = '{"type":"topic.message","topic":' .. ARGV[1] .. ',"epoch":"' .. epoch .. '","offset":' .. offset .. ',"data":' .. ARGV[2] .. '}'
if tonumber(ARGV[4]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[4], '0-' .. offset, 'f', frame)
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local header = '{"n":' .. ARGV[7] .. ',"k":"t","t":' .. ARGV[1] .. ',"b":false,"o":' .. offset .. ',"e":"' .. epoch .. '"}'
local len = #header
local envelope = string.char(1, math.floor(len / 16777216) % 256, math.floor(len / 65536) % 256, math.floor(len / 256) % 256, len % 256) .. header .. frame
if ARGV[8] == 'sharded' then redis.call('SPUBLISH', ARGV[6], envelope) else redis.call('PUBLISH', ARGV[6], envelope) end
return {offset, epoch}
`)

/**
 * Where a topic stands and what came after an offset. KEYS: seq, epoch, stream. ARGV: the
 * offset after which to read (or -1 for none), a new epoch for a topic that has none yet (so a
 * subscriber always gets one), the ttl, the epoch the offset belongs to ('' for any). Returns {epoch, offset, first offset held or 0, frame,
 * frame, ...}.
 */
export const TOPIC_SINCE = new Script(`
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch, 'PX', ARGV[3])
  redis.call('DEL', KEYS[1], KEYS[3])
end
local offset = tonumber(redis.call('GET', KEYS[1]) or '0')
local result = {epoch, offset, 0}
local after = tonumber(ARGV[1])
-- Nothing to read for a fresh subscription or another epoch's offset.
if after < 0 or (ARGV[4] ~= '' and ARGV[4] ~= epoch) then return result end
local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
if first[1] then result[3] = tonumber(string.match(first[1][1], '-(%d+)$')) end
local entries = redis.call('XRANGE', KEYS[3], '(0-' .. after, '+')
for _, e in ipairs(entries) do result[#result + 1] = e[2][2] end
return result
`)

/** The live nodes. KEYS: nodes, info. Returns {nodeId, info JSON, ...}. */
export const NODES = new Script(`
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local result = {}
for _, id in ipairs(ids) do
  result[#result + 1] = id
  result[#result + 1] = redis.call('HGET', KEYS[2], id) or '{}'
end
return result
`)

/**
 * Takes this node out: its entry and its connections' presence, if the token is still ours.
 * KEYS: nodes, tokens, info, this node's node-conns. ARGV: nodeId, token, the user key prefix.
 */
export const DEREGISTER = new Script(`
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
local items = redis.call('HGETALL', KEYS[4])
for i = 1, #items, 2 do
  redis.call('HDEL', ARGV[3] .. items[i + 1], items[i])
end
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
`)
