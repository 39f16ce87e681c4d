// The vocabulary of the SSH connection pool (lib/ssh-pool.ts): its options with their defaults
// and validation, the known_hosts matcher behind `hostVerifier`, targets and call arguments and
// their validation, and the pool's coded errors (to join lib/errors.ts).

import { createHmac } from 'node:crypto'
import type { FastifyError } from '@fastify/error'
import type { FastifyBaseLogger } from 'fastify'
import { CloseCode, errors } from './errors'
import { checkInt, fail, isPlainObject, section } from './validate'

/** Where an SSH session goes, without its credential: what a host verifier is told. */
export interface SshHostInfo {
  host: string
  port: number
  username: string
}

/**
 * A host key check: the server's public key blob (SSH wire format, as in a known_hosts line
 * after base64 decoding) and the target. True accepts the key; false, a throw or a rejection
 * refuses it.
 */
export type SshHostKeyCheck = (key: Buffer, target: SshHostInfo) => boolean | Promise<boolean>

/**
 * How host keys are verified: the text of an OpenSSH known_hosts file, a function, or the
 * explicit `'insecure-accept-any'` (no verification: only for tests and trusted networks).
 */
export type SshHostVerifier = { knownHosts: string } | SshHostKeyCheck | 'insecure-accept-any'

/** Options of {@link SshConnectionPool}. */
export interface SshPoolOptions {
  /**
   * Required. `{ knownHosts }`: the text of a known_hosts file; a host is looked up as `host`
   * on port 22 and as `[host]:port` otherwise; plain and hashed (`|1|`) names, `*`/`?`
   * wildcards, `!` negations and `@revoked` lines are understood (`@cert-authority` is refused
   * at construction). A function: called with each server's key. `'insecure-accept-any'`:
   * accepts any key. Unknown keys are refused with kind `'hostkey'`.
   */
  hostVerifier: SshHostVerifier
  /**
   * Channels (sessions and forwards, open or opening) per SSH connection; OpenSSH refuses
   * sessions beyond its `MaxSessions`, whose default is 10. Integer from 1 to 1024.
   * @default 10
   */
  maxSessionsPerConnection?: number
  /** SSH connections per target (user, host, port and credential). Integer from 1 to 1024. @default 4 */
  maxConnectionsPerTarget?: number
  /** Milliseconds a connection without sessions is kept before it is ended; 0 keeps it. @default 60000 */
  idleTimeout?: number
  /** Milliseconds between SSH keepalive requests (ssh2 `keepaliveInterval`); 0 off. @default 15000 */
  keepaliveInterval?: number
  /** Unanswered keepalives after which a connection is dropped. Integer from 1 to 100. @default 3 */
  keepaliveCountMax?: number
  /** Milliseconds for TCP connect, SSH handshake and authentication together. @default 10000 */
  readyTimeout?: number
  /** Callers per target that may wait when the caps are reached; 0 refuses at once. @default 100 */
  maxQueue?: number
  /** Milliseconds a waiting caller waits before it is refused with kind `'saturated'`. @default 5000 */
  queueTimeout?: number
  /** Where connection events are logged (targets as `user@host:port`, never a credential). @default undefined (silent) */
  logger?: FastifyBaseLogger
}

/** The options after defaults and validation. */
export interface ResolvedSshPoolOptions {
  verifyHostKey: SshHostKeyCheck
  maxSessionsPerConnection: number
  maxConnectionsPerTarget: number
  idleTimeout: number
  keepaliveInterval: number
  keepaliveCountMax: number
  readyTimeout: number
  maxQueue: number
  queueTimeout: number
  logger: FastifyBaseLogger | null
}

/** The defaults of every numeric option. */
export const SSH_POOL_DEFAULTS = Object.freeze({
  maxSessionsPerConnection: 10,
  maxConnectionsPerTarget: 4,
  idleTimeout: 60_000,
  keepaliveInterval: 15_000,
  keepaliveCountMax: 3,
  readyTimeout: 10_000,
  maxQueue: 100,
  queueTimeout: 5_000
})

const MAX_MS = 86_400_000
const KEYS = ['hostVerifier', 'logger', ...Object.keys(SSH_POOL_DEFAULTS)] as const
const HOST_VERIFIER_HELP = "expected { knownHosts: string }, a function (key, target) => boolean, or 'insecure-accept-any' to accept any host key explicitly"

/**
 * Validates the pool options. `path` prefixes the names in errors when the options are
 * a section of larger ones.
 * @throws FST_WSM_OPTION_INVALID naming the option
 */
export function resolveSshPoolOptions (input: unknown, path = ''): ResolvedSshPoolOptions {
  const name = (key: string): string => path === '' ? key : `${path}.${key}`
  if (!isPlainObject(input)) fail(path === '' ? 'options' : path, 'expected an object with at least hostVerifier')
  const given = section(path, input, KEYS)
  const int = (key: keyof typeof SSH_POOL_DEFAULTS, min: number, max: number): number =>
    given[key] === undefined ? SSH_POOL_DEFAULTS[key] : checkInt(name(key), given[key], min, max)
  const logger = given.logger as { warn?: unknown, debug?: unknown } | undefined | null
  if (logger !== undefined && (typeof logger !== 'object' || logger === null || typeof logger.warn !== 'function' || typeof logger.debug !== 'function')) {
    fail(name('logger'), 'expected a Fastify or pino logger')
  }
  return {
    verifyHostKey: resolveHostVerifier(name('hostVerifier'), given.hostVerifier),
    maxSessionsPerConnection: int('maxSessionsPerConnection', 1, 1024),
    maxConnectionsPerTarget: int('maxConnectionsPerTarget', 1, 1024),
    idleTimeout: int('idleTimeout', 0, MAX_MS),
    keepaliveInterval: int('keepaliveInterval', 0, MAX_MS),
    keepaliveCountMax: int('keepaliveCountMax', 1, 100),
    readyTimeout: int('readyTimeout', 1, MAX_MS),
    maxQueue: int('maxQueue', 0, 1_000_000),
    queueTimeout: int('queueTimeout', 1, MAX_MS),
    logger: (logger as FastifyBaseLogger | undefined) ?? null
  }
}

function resolveHostVerifier (name: string, value: unknown): SshHostKeyCheck {
  if (value === 'insecure-accept-any') return () => true
  if (typeof value === 'function') return value as SshHostKeyCheck
  if (value === undefined) fail(name, `required: ${HOST_VERIFIER_HELP}`)
  if (!isPlainObject(value)) fail(name, HOST_VERIFIER_HELP)
  const given = section(name, value, ['knownHosts'])
  if (typeof given.knownHosts !== 'string') fail(`${name}.knownHosts`, 'expected the text of an OpenSSH known_hosts file')
  const entries = parseKnownHosts(`${name}.knownHosts`, given.knownHosts)
  if (!entries.some((entry) => !entry.revoked)) fail(`${name}.knownHosts`, 'no host key in it: every host would be refused')
  return (key, target) => knownHostsAccept(entries, key, target)
}

// -- known_hosts ------------------------------------------------------------------------------

interface KnownHost {
  revoked: boolean
  /** Plain patterns, each a RegExp and whether it is negated; null for a hashed name. */
  patterns: Array<{ re: RegExp, negated: boolean }> | null
  hashed: { salt: Buffer, hash: Buffer } | null
  key: Buffer
}

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/

/** The key type a public key blob starts with (a uint32 length and the name), or null. */
function blobType (blob: Buffer): string | null {
  if (blob.length < 4) return null
  const length = blob.readUInt32BE(0)
  if (length === 0 || length > 64 || 4 + length > blob.length) return null
  return blob.toString('latin1', 4, 4 + length)
}

function patternRegExp (pattern: string): RegExp {
  const source = pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')
  return new RegExp(`^${source}$`, 'i')
}

/**
 * Parses known_hosts text; a line it cannot read fails construction rather than being skipped,
 * since a skipped line is a host that will be refused for a reason nobody sees.
 */
export function parseKnownHosts (name: string, text: string): KnownHost[] {
  const entries: KnownHost[] = []
  const lines = text.split(/\r?\n/)
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim()
    if (line === '' || line.startsWith('#')) continue
    const where = `line ${i + 1}`
    const fields = line.split(/\s+/)
    let revoked = false
    if (fields[0].startsWith('@')) {
      const marker = fields.shift()
      if (marker === '@revoked') revoked = true
      else fail(name, `${where}: ${marker} is not supported (host certificates are not verified by this pool)`)
    }
    if (fields.length < 3) fail(name, `${where}: expected "hosts keytype base64-key [comment]"`)
    const [hosts, type, base64] = fields
    const key = BASE64.test(base64) ? Buffer.from(base64, 'base64') : Buffer.alloc(0)
    if (blobType(key) !== type) fail(name, `${where}: the key is not valid base64 of a ${type} public key`)
    let hashed: KnownHost['hashed'] = null
    let patterns: KnownHost['patterns'] = null
    if (hosts.startsWith('|')) {
      const parts = hosts.split('|')
      if (parts.length !== 4 || parts[1] !== '1' || !BASE64.test(parts[2]) || !BASE64.test(parts[3])) {
        fail(name, `${where}: a hashed host name must be |1|base64-salt|base64-hash`)
      }
      hashed = { salt: Buffer.from(parts[2], 'base64'), hash: Buffer.from(parts[3], 'base64') }
    } else {
      patterns = hosts.split(',').filter((p) => p !== '').map((p) => {
        const negated = p.startsWith('!')
        return { re: patternRegExp(negated ? p.slice(1) : p), negated }
      })
    }
    entries.push({ revoked, patterns, hashed, key })
  }
  return entries
}

/** How OpenSSH writes a host in known_hosts: `host` on port 22, `[host]:port` otherwise. */
export function knownHostsName (host: string, port: number): string {
  return port === 22 ? host.toLowerCase() : `[${host.toLowerCase()}]:${port}`
}

function nameMatches (entry: KnownHost, name: string): boolean {
  if (entry.hashed !== null) {
    return createHmac('sha1', entry.hashed.salt).update(name).digest().equals(entry.hashed.hash)
  }
  let matched = false
  for (const { re, negated } of entry.patterns ?? []) {
    if (!re.test(name)) continue
    if (negated) return false
    matched = true
  }
  return matched
}

function knownHostsAccept (entries: KnownHost[], key: Buffer, target: SshHostInfo): boolean {
  const name = knownHostsName(target.host, target.port)
  let accepted = false
  for (const entry of entries) {
    if (!entry.key.equals(key)) continue
    // A revoked key is refused whatever other lines say, and for every host.
    if (entry.revoked) return false
    if (nameMatches(entry, name)) accepted = true
  }
  return accepted
}

// -- errors ---------------------------------------------------------------------------------

/**
 * Why a pool call failed: `'saturated'` (caps reached and the queue full or its wait over),
 * `'unreachable'` (connect refused, DNS, readyTimeout, connection lost), `'auth'` (every
 * authentication method failed, or the private key could not be read), `'hostkey'` (the
 * server's key was not verified), `'refused'` (the server refused the channel: a forward to a
 * closed port, a pty or command request), `'closed'` (the pool was closed).
 */
export type SshErrorKind = 'saturated' | 'unreachable' | 'auth' | 'hostkey' | 'refused' | 'closed'

/**
 * The WebSocket close code each kind leads to. `'hostkey'` gets 1008 like `'auth'`: both are
 * refusals by policy that no retry can heal until an operator changes a key or known_hosts,
 * and this project's client stops on 1008 rather than reconnecting, again and again, into what
 * may be an intercepted network path.
 */
export const SSH_CLOSE_CODES: Readonly<Record<SshErrorKind, number>> = Object.freeze({
  saturated: CloseCode.TRY_AGAIN_LATER,
  unreachable: CloseCode.INTERNAL_ERROR,
  auth: CloseCode.POLICY_VIOLATION,
  hostkey: CloseCode.POLICY_VIOLATION,
  refused: CloseCode.INTERNAL_ERROR,
  closed: CloseCode.GOING_AWAY
})

/** The pool's coded errors (in lib/errors.ts); each message names the target as `user@host:port`, never a credential. */
export const sshPoolErrors = {
  FST_WSM_SSH_SATURATED: errors.FST_WSM_SSH_SATURATED,
  FST_WSM_SSH_UNREACHABLE: errors.FST_WSM_SSH_UNREACHABLE,
  FST_WSM_SSH_AUTH: errors.FST_WSM_SSH_AUTH,
  FST_WSM_SSH_HOSTKEY: errors.FST_WSM_SSH_HOSTKEY,
  FST_WSM_SSH_REFUSED: errors.FST_WSM_SSH_REFUSED,
  FST_WSM_SSH_CLOSED: errors.FST_WSM_SSH_CLOSED
} as const

const CODE_OF = {
  saturated: 'FST_WSM_SSH_SATURATED',
  unreachable: 'FST_WSM_SSH_UNREACHABLE',
  auth: 'FST_WSM_SSH_AUTH',
  hostkey: 'FST_WSM_SSH_HOSTKEY',
  refused: 'FST_WSM_SSH_REFUSED',
  closed: 'FST_WSM_SSH_CLOSED'
} as const satisfies Record<SshErrorKind, keyof typeof sshPoolErrors>

/** An error of the pool: its code, its kind and the close code it suggests. */
export interface SshPoolError extends FastifyError {
  kind: SshErrorKind
  /** The WebSocket close code for this kind ({@link SSH_CLOSE_CODES}). */
  closeCode: number
  /** `user@host:port`. */
  target: string
}

/** A new error of the pool: its code, kind and close code for the kind. */
export function sshError (kind: SshErrorKind, target: string, detail: string): SshPoolError {
  const err = new sshPoolErrors[CODE_OF[kind]](target, detail) as SshPoolError
  err.kind = kind
  err.closeCode = SSH_CLOSE_CODES[kind]
  err.target = target
  return err
}

/** Whether a value is an error of the pool. */
export function isSshPoolError (value: unknown): value is SshPoolError {
  if (!(value instanceof Error)) return false
  const { kind, code } = value as { kind?: unknown, code?: unknown }
  return typeof kind === 'string' && typeof code === 'string' && Object.hasOwn(sshPoolErrors, code)
}

// -- targets ----------------------------------------------------------------------------------

/**
 * Where to open sessions and as whom: `host`, `port` (default 22), `username`, and exactly one
 * of `privateKey` (with its `passphrase` when encrypted) and `password`.
 */
export interface SshTarget {
  host: string
  /** @default 22 */
  port?: number
  username: string
  privateKey?: string | Buffer
  passphrase?: string | Buffer
  password?: string
}

/** A validated target: its credential, the label used in logs and errors, and its pool key. */
export interface ResolvedSshTarget extends SshHostInfo {
  /** `user@host:port`: safe to log; never carries the credential. */
  label: string
  /** The label plus an HMAC of the credential under the pool's secret. */
  key: string
  privateKey: string | Buffer | undefined
  passphrase: string | Buffer | undefined
  password: string | undefined
}

const TARGET_KEYS = ['host', 'port', 'username', 'privateKey', 'passphrase', 'password']
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/

function badArgument (name: string, allowed: string): never {
  throw new errors.FST_WSM_ARGUMENT_INVALID(name, allowed)
}

function isSecret (value: unknown): value is string | Buffer {
  return (typeof value === 'string' && value !== '') || (Buffer.isBuffer(value) && value.length > 0)
}

/**
 * Validates a target. Error messages describe a credential's type, never its value.
 * @throws FST_WSM_ARGUMENT_INVALID naming the field
 */
export function resolveTarget (input: unknown, secret: Buffer): ResolvedSshTarget {
  if (!isPlainObject(input)) badArgument('target', 'expected an object { host, port, username, privateKey | password }')
  for (const field of Object.keys(input)) {
    if (!TARGET_KEYS.includes(field)) badArgument(`target.${field}`, `unknown field; known: ${TARGET_KEYS.join(', ')}`)
  }
  const { host, username, privateKey, passphrase, password } = input
  if (typeof host !== 'string' || host === '' || host.length > 255 || /\s/.test(host) || CONTROL.test(host)) {
    badArgument('target.host', 'expected a host name or IP address')
  }
  const port = input.port ?? 22
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) {
    badArgument('target.port', `expected an integer from 1 to 65535, got ${JSON.stringify(port)}`)
  }
  if (typeof username !== 'string' || username === '' || username.length > 256 || CONTROL.test(username)) {
    badArgument('target.username', 'expected a non-empty string without control characters')
  }
  if (privateKey !== undefined && !isSecret(privateKey)) badArgument('target.privateKey', 'expected a non-empty string or Buffer')
  if (password !== undefined && (typeof password !== 'string' || password === '')) badArgument('target.password', 'expected a non-empty string')
  if ((privateKey === undefined) === (password === undefined)) badArgument('target', 'expected exactly one of privateKey and password')
  if (passphrase !== undefined && (privateKey === undefined || !isSecret(passphrase))) {
    badArgument('target.passphrase', 'expected a non-empty string or Buffer, with privateKey')
  }
  const hmac = createHmac('sha256', secret)
  if (password !== undefined) {
    hmac.update('password\0').update(password as string)
  } else {
    hmac.update('key\0').update(privateKey as string | Buffer).update('\0')
    if (passphrase !== undefined) hmac.update(passphrase as string | Buffer)
  }
  const lower = host.toLowerCase()
  const label = `${username}@${lower.includes(':') ? `[${lower}]` : lower}:${port}`
  return {
    host: lower,
    port,
    username,
    label,
    key: `${label}#${hmac.digest('base64url')}`,
    privateKey: privateKey as string | Buffer | undefined,
    passphrase: passphrase as string | Buffer | undefined,
    password: password as string | undefined
  }
}

// -- call arguments -------------------------------------------------------------------------

/** A pty of {@link SshConnectionPool.shell} and {@link SshConnectionPool.exec}. */
export interface SshPtyOptions {
  /** @default 80 */
  cols?: number
  /** @default 24 */
  rows?: number
  /** $TERM. @default 'xterm-256color' */
  term?: string
}

/** Options of {@link SshConnectionPool.exec}. */
export interface SshExecOptions {
  /** A pty for the command; true for the defaults. @default false */
  pty?: boolean | SshPtyOptions
}

/** Where {@link SshConnectionPool.forwardOut} connects from the SSH server. */
export interface SshForwardDestination {
  host: string
  port: number
}

const TERM = /^[A-Za-z0-9._+-]{1,64}$/

/**
 * Validates a pty's size and $TERM.
 * @throws FST_WSM_ARGUMENT_INVALID naming the field
 */
export function checkPty (name: string, value: unknown): { cols: number, rows: number, term: string } {
  if (value === undefined || value === true) return { cols: 80, rows: 24, term: 'xterm-256color' }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) badArgument(name, 'expected { cols, rows, term }')
  const { cols = 80, rows = 24, term = 'xterm-256color', ...rest } = value as Record<string, unknown>
  for (const key of Object.keys(rest)) badArgument(`${name}.${key}`, 'unknown field; known: cols, rows, term')
  for (const [key, n] of [['cols', cols], ['rows', rows]] as const) {
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 10_000) badArgument(`${name}.${key}`, 'expected an integer from 1 to 10000')
  }
  if (typeof term !== 'string' || !TERM.test(term)) badArgument(`${name}.term`, 'expected 1 to 64 of A-Z a-z 0-9 . _ + -')
  return { cols: cols as number, rows: rows as number, term }
}

/**
 * Validates the command and options of an exec; the pty, if any.
 * @throws FST_WSM_ARGUMENT_INVALID naming the argument
 */
export function checkExec (command: unknown, options: unknown): { command: string, pty: ReturnType<typeof checkPty> | undefined } {
  if (typeof command !== 'string' || command === '' || command.length > 65_536) badArgument('command', 'expected a non-empty string')
  if (!isPlainObject(options)) badArgument('options', 'expected { pty }')
  for (const key of Object.keys(options)) if (key !== 'pty') badArgument(`options.${key}`, 'unknown field; known: pty')
  return { command, pty: options.pty === undefined || options.pty === false ? undefined : checkPty('options.pty', options.pty) }
}

/**
 * Validates where a forward goes.
 * @throws FST_WSM_ARGUMENT_INVALID naming the field
 */
export function checkDestination (destination: unknown): SshForwardDestination {
  const { host, port } = (isPlainObject(destination) ? destination : {}) as Partial<Record<string, unknown>>
  if (typeof host !== 'string' || host === '' || host.length > 255 || CONTROL.test(host)) badArgument('destination.host', 'expected a host name or IP address')
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) badArgument('destination.port', 'expected an integer from 1 to 65535')
  return { host, port }
}
