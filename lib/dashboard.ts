// The live dashboard (issue 13): a page served by the plugin, charts updated every second over
// a WebSocket of its own, and a table of connections with a disconnect button.
import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type WebSocket from 'ws'
import { CloseCode } from './errors'
import type { WsManager } from './manager'
import { DashboardSampler, type DashboardViewer } from './dashboard-sampler'
import { refusalBody } from './refusal'

/** The dashboard's settings, after validation. */
export interface DashboardSettings {
  /** Where the page is served; its WebSocket and files live under it. */
  path: string
  /** Milliseconds between samples. @default 1000 */
  interval?: number
}

/**
 * Lets a request in, or answers it (401 without a valid token when auth is on, 403 when the
 * application's `authorize` refuses) and resolves false. Supplied by the plugin.
 */
export type DashboardGate = (request: FastifyRequest, reply: FastifyReply) => Promise<boolean>

/** The close an operator's disconnect button sends. */
export const OPERATOR_CLOSE = Object.freeze({ code: CloseCode.NORMAL, reason: 'Disconnected by an operator' })

/** The subprotocol the page offers before its token entry: a browser needs one to be selected. */
export const DASHBOARD_PROTOCOL = 'wsm-dashboard'

// Next to this file in lib/ (tsx) and in dist/ (copied there by scripts/copy-assets.ts).
const ASSET_DIR = join(__dirname, 'dashboard-assets')

// The only files the assets route serves; anything else is a 404, so no path ever reaches the
// file system from a request.
const ASSET_FILES: Record<string, { path: () => string, type: string }> = {
  'dashboard.js': { path: () => join(ASSET_DIR, 'dashboard.js'), type: 'text/javascript; charset=utf-8' },
  'dashboard.css': { path: () => join(ASSET_DIR, 'dashboard.css'), type: 'text/css; charset=utf-8' },
  'uPlot.iife.min.js': { path: () => require.resolve('uplot/dist/uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' },
  'uPlot.min.css': { path: () => require.resolve('uplot/dist/uPlot.min.css'), type: 'text/css; charset=utf-8' }
}

// Nothing but the shipped files runs or loads on the page, and it cannot be framed (the
// disconnect button would be a clickjacking target). 'self' covers ws: and wss: to the same host.
const PAGE_HEADERS = Object.freeze({
  'content-type': 'text/html; charset=utf-8',
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store'
})

interface Asset { body: Buffer, type: string, etag: string }

function loadAssets (): Map<string, Asset> {
  const assets = new Map<string, Asset>()
  for (const [name, file] of Object.entries(ASSET_FILES)) {
    const body = readFileSync(file.path())
    assets.set(name, { body, type: file.type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"` })
  }
  return assets
}

function escapeAttribute (value: string): string {
  return value.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;').replace(/>/g, '&gt;')
}

/** How the page passes its token on to its WebSocket, from the plugin's auth settings. */
function tokenPassing (manager: WsManager): { param: string, protocolPrefix: string, query: string } {
  const auth = manager.options.auth
  if (auth === false) return { param: '', protocolPrefix: '', query: '' }
  const param = auth.queryParam === false ? '' : auth.queryParam
  return {
    param,
    protocolPrefix: auth.sources.includes('subprotocol') ? auth.subprotocolPrefix : '',
    query: auth.sources.includes('query') ? param : ''
  }
}

function renderPage (base: string, manager: WsManager): string {
  const token = tokenPassing(manager)
  const values: Record<string, string> = {
    assets: `${base}/assets`,
    live: `${base}/live`,
    tokenParam: token.param,
    tokenProtocolPrefix: token.protocolPrefix,
    tokenQuery: token.query,
    protocol: DASHBOARD_PROTOCOL
  }
  const template = readFileSync(join(ASSET_DIR, 'index.html'), 'utf8')
  return template.replace(/\{\{(\w+)\}\}/g, (_match, key: string) => {
    const value = values[key]
    if (value === undefined) throw new Error(`dashboard-assets/index.html: unknown placeholder {{${key}}}`)
    return escapeAttribute(value)
  })
}

/** A dashboard command; anything else a viewer sends is ignored. */
function disconnectTarget (data: WebSocket.RawData, isBinary: boolean): string | null {
  if (isBinary) return null
  let message: unknown
  try {
    message = JSON.parse(data.toString())
  } catch {
    return null
  }
  if (message === null || typeof message !== 'object') return null
  const { type, connectionId } = message as { type?: unknown, connectionId?: unknown }
  return type === 'disconnect' && typeof connectionId === 'string' ? connectionId : null
}

/**
 * A browser always sends Origin on a WebSocket upgrade: the live socket takes commands, so a
 * page of another site must not open it with the operator's cookie (cross-site WebSocket
 * hijacking). Clients without Origin (not browsers) are let through to the token check.
 */
function sameOrigin (request: FastifyRequest): boolean {
  const origin = request.headers.origin
  if (origin === undefined) return true
  try {
    return new URL(origin).host === request.host
  } catch {
    return false
  }
}

/** Registers the dashboard's routes: the page, its files and its live socket. */
export function registerDashboard (fastify: FastifyInstance, manager: WsManager, settings: DashboardSettings, gate: DashboardGate): void {
  const { path } = settings
  const base = fastify.prefix + path
  const livePath = `${path}/live`
  const liveRoute = fastify.prefix + livePath
  const page = renderPage(base, manager)
  const assets = loadAssets()
  const sampler = new DashboardSampler(manager, {
    interval: settings.interval,
    isOwnRoute: (route) => route === liveRoute,
    log: fastify.log
  })

  async function guard (request: FastifyRequest, reply: FastifyReply): Promise<FastifyReply | undefined> {
    if (!(await gate(request, reply))) return reply
  }

  fastify.get(path, { onRequest: guard }, (_request, reply) => {
    reply.headers(PAGE_HEADERS).send(page)
  })

  // Not gated: a browser loads these without the page's token (it is in the page's query,
  // not in theirs), and they are the files published in the npm package, public already.
  fastify.get<{ Params: { file: string } }>(`${path}/assets/:file`, (request, reply) => {
    const asset = assets.get(request.params.file)
    if (asset === undefined) {
      reply.callNotFound()
      return
    }
    reply.headers({ 'content-type': asset.type, 'x-content-type-options': 'nosniff', 'cache-control': 'no-cache', etag: asset.etag })
    if (request.headers['if-none-match'] === asset.etag) reply.code(304).send()
    else reply.send(asset.body)
  })

  fastify.get(livePath, {
    websocket: true,
    onRequest: async (request, reply) => {
      if (!sameOrigin(request)) {
        return reply.code(403).type('application/json; charset=utf-8').send(refusalBody(403, 'Origin does not match the dashboard'))
      }
      return guard(request, reply)
    }
  }, (socket, request) => {
    const connection = request.wsConnection
    if (connection === null) return
    const operator = connection.userId
    const viewer: DashboardViewer = {
      send (sample) {
        // Under the 'wait' policy this may be a promise; it never rejects.
        if (connection.state === 'open') connection.send(sample)
      }
    }
    socket.on('message', (data, isBinary) => {
      const id = disconnectTarget(data, isBinary)
      if (id === null) return
      const target = manager.connections.get(id)
      // Only what the table shows: open connections of the application's routes.
      if (target === undefined || target.state !== 'open' || target.route === liveRoute) return
      target.log.info({ operator }, 'disconnected by an operator')
      target.close(OPERATOR_CLOSE.code, OPERATOR_CLOSE.reason).catch((err: unknown) => {
        connection.log.warn({ err, connectionId: id }, 'operator disconnect failed')
      })
    })
    socket.on('close', () => sampler.delete(viewer))
    sampler.add(viewer)
  })

  fastify.addHook('onClose', (_instance, done) => {
    sampler.stop()
    done()
  })
}
