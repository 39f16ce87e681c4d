// The reference server's browser terminal: an xterm.js page at /terminal and, once the SSH_*
// variables name a server, the verified user's shell there at /terminal/ws (sshTerminal over
// one SshConnectionPool). Without them the page says what to set and /terminal/ws does not exist.
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { utils } from 'ssh2'
import { errors, sshTerminal, SshConnectionPool, type ForwardHandler, type SshTarget } from '../lib/index'

type Env = Record<string, string | undefined>

/** The variables registerTerminal() reads; any of them set turns the terminal on. */
export const TERMINAL_VARIABLES = ['SSH_HOST', 'SSH_PORT', 'SSH_USER', 'SSH_KEY_FILE', 'SSH_KNOWN_HOSTS', 'SSH_INSECURE_ACCEPT_ANY_HOST_KEY'] as const

/** Where the terminal page is served; its assets and socket live under it. */
export const TERMINAL_PATH = '/terminal'

interface Settings {
  target: SshTarget & { port: number }
  hostVerifier: { knownHosts: string } | 'insecure-accept-any'
  knownHostsFile: string | null
}

interface Asset {
  body: Buffer
  type: string
  etag: string
}

function invalid (name: string, shown: string, problem: string): never {
  throw new errors.FST_WSM_ENV_INVALID(name, shown, problem)
}

// The file's text, or a coded error naming the variable and the path (never the contents).
async function readVariableFile (name: string, path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8')
  } catch (err) {
    return invalid(name, JSON.stringify(path), `cannot read the file (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  }
}

/** The SSH settings, or null when no SSH_* variable is set. */
async function readSettings (env: Env): Promise<Settings | null> {
  const get = (name: string): string | null => {
    const value = env[name]?.trim()
    return value === undefined || value === '' ? null : value
  }
  const given = TERMINAL_VARIABLES.filter((name) => get(name) !== null)
  if (given.length === 0) return null
  // One of them set means the operator wants the terminal: the others are required, so a
  // typo in a name fails the start instead of leaving the page saying "not configured".
  const required = (name: string, what: string): string => get(name) ?? invalid(name, '(unset)', `required when ${given.join(', ')} ${given.length === 1 ? 'is' : 'are'} set: ${what}`)
  const host = required('SSH_HOST', 'the SSH server\'s host name or IP address')
  if (!/^[A-Za-z0-9._:-]+$/.test(host)) invalid('SSH_HOST', JSON.stringify(host), 'expected a host name or an IP address (IPv6 without brackets or zone)')
  const rawPort = get('SSH_PORT') ?? '22'
  const port = /^\d{1,5}$/.test(rawPort) ? Number(rawPort) : NaN
  if (!(port >= 1 && port <= 65535)) invalid('SSH_PORT', JSON.stringify(rawPort), 'expected an integer from 1 to 65535')
  const username = required('SSH_USER', 'the login the shells run as')
  // eslint-disable-next-line no-control-regex
  if (/[\s\u0000-\u001f\u007f]/.test(username)) invalid('SSH_USER', JSON.stringify(username), 'expected a login name without spaces or control characters')
  const rawInsecure = get('SSH_INSECURE_ACCEPT_ANY_HOST_KEY')?.toLowerCase() ?? 'false'
  if (!['true', 'false', '1', '0', 'yes', 'no'].includes(rawInsecure)) invalid('SSH_INSECURE_ACCEPT_ANY_HOST_KEY', JSON.stringify(rawInsecure), 'expected true or false')
  const insecure = rawInsecure === 'true' || rawInsecure === '1' || rawInsecure === 'yes'
  const knownHostsFile = get('SSH_KNOWN_HOSTS')
  if (insecure && knownHostsFile !== null) invalid('SSH_INSECURE_ACCEPT_ANY_HOST_KEY', JSON.stringify(rawInsecure), 'set SSH_KNOWN_HOSTS or this, not both')
  if (!insecure && knownHostsFile === null) {
    invalid('SSH_KNOWN_HOSTS', '(unset)', `required: the path of a known_hosts file holding the server's host key (ssh-keyscan -p ${port} ${host}), or SSH_INSECURE_ACCEPT_ANY_HOST_KEY=true to accept any key`)
  }
  const keyFile = required('SSH_KEY_FILE', 'the path of the private key the shells log in with')
  const privateKey = await readVariableFile('SSH_KEY_FILE', keyFile)
  // Checked now rather than at the first login. ssh2's own message is left out of ours: it
  // was not written with secrets in mind.
  const key = utils.parseKey(privateKey)
  if (key instanceof Error || !key.isPrivateKey()) {
    invalid('SSH_KEY_FILE', JSON.stringify(keyFile), 'expected an unencrypted private key (OpenSSH, PEM or PuTTY format)')
  }
  return {
    target: { host, port, username, privateKey },
    hostVerifier: knownHostsFile === null ? 'insecure-accept-any' : { knownHosts: await readVariableFile('SSH_KNOWN_HOSTS', knownHostsFile) },
    knownHostsFile
  }
}

async function asset (path: string, type: string, edit: (text: string) => string = (text) => text): Promise<Asset> {
  const body = Buffer.from(edit(await readFile(path, 'utf8')))
  return { body, type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"` }
}

// Unversioned URLs: browsers revalidate every time (no-cache) and get a 304 while the ETag holds,
// so a page never runs with an xterm.js older than the server's.
function send (file: Asset) {
  return async (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> => {
    reply.header('cache-control', 'no-cache').header('etag', file.etag)
    if (request.headers['if-none-match'] === file.etag) return reply.code(304).send()
    return reply.type(file.type).send(file.body)
  }
}

/** The pool and the route's handler: both made before anything is registered. */
function openTerminal (app: FastifyInstance, settings: Settings): { pool: SshConnectionPool, handler: ForwardHandler } {
  let pool: SshConnectionPool
  try {
    pool = new SshConnectionPool({ hostVerifier: settings.hostVerifier, logger: app.log.child({ component: 'ssh-pool' }) })
  } catch (err) {
    // The pool parses known_hosts; its message names the line (the file holds public keys only).
    return invalid('SSH_KNOWN_HOSTS', JSON.stringify(settings.knownHostsFile), (err as Error).message)
  }
  const { target } = settings
  const handler = sshTerminal({
    pool,
    // The demo gives every verified user the one configured login. A real deployment maps
    // request.user to that user's own login and credential here, and lists its servers below.
    target: () => target,
    allowedTargets: [`${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}`]
  })
  return { pool, handler }
}

/**
 * Serves the terminal page (`GET /terminal`) and its xterm.js assets, and, when the SSH_*
 * variables are set, the shell socket `GET /terminal/ws` (JWT-authenticated like every route
 * of the plugin, which must be registered first). SSH_HOST, SSH_PORT (default 22), SSH_USER,
 * SSH_KEY_FILE (read once, at the start) and SSH_KNOWN_HOSTS (or
 * SSH_INSECURE_ACCEPT_ANY_HOST_KEY=true, logged as a warning). Nothing is registered if a
 * setting is bad.
 * @throws FST_WSM_ENV_INVALID naming the variable (and a file's path, never its contents).
 */
export async function registerTerminal (app: FastifyInstance, env: Env = process.env): Promise<void> {
  const settings = await readSettings(env)
  const state = settings === null ? 'unconfigured' : 'ready'
  const page = await asset(join(__dirname, 'public', 'terminal.html'), 'text/html; charset=utf-8', (html) => {
    if (!html.includes('{{state}}')) throw new Error('examples/public/terminal.html lost its {{state}} placeholder')
    return html.replace('{{state}}', state)
  })
  // The maps are not served: drop the comment that would have DevTools ask for them.
  const noMap = (text: string): string => text.replace(/\n\/\/# sourceMappingURL=\S+\s*$/, '\n')
  const js = 'text/javascript; charset=utf-8'
  const xtermJs = await asset(require.resolve('@xterm/xterm/lib/xterm.js'), js, noMap)
  const xtermCss = await asset(require.resolve('@xterm/xterm/css/xterm.css'), 'text/css; charset=utf-8')
  const fitJs = await asset(require.resolve('@xterm/addon-fit/lib/addon-fit.js'), js, noMap)

  const terminal = settings === null ? null : openTerminal(app, settings)

  app.get(TERMINAL_PATH, send(page))
  app.get(`${TERMINAL_PATH}/xterm.js`, send(xtermJs))
  app.get(`${TERMINAL_PATH}/xterm.css`, send(xtermCss))
  app.get(`${TERMINAL_PATH}/addon-fit.js`, send(fitJs))
  if (settings === null || terminal === null) return

  app.addHook('onClose', async () => terminal.pool.close())
  const { target } = settings
  const label = `${target.username}@${target.host}:${target.port}`
  if (settings.hostVerifier === 'insecure-accept-any') {
    app.log.warn({ target: label }, 'terminal accepts any ssh host key: SSH_INSECURE_ACCEPT_ANY_HOST_KEY is true')
  }
  app.get(`${TERMINAL_PATH}/ws`, {
    websocket: true,
    // The session's own idle timeout governs: a shell quiet for minutes is normal.
    config: { wsManager: { idleTimeout: 0 } }
  }, terminal.handler)
  app.log.info({ target: label, hostKeys: settings.knownHostsFile ?? 'any' }, 'terminal ready')
}
