// The live dashboard (issue 13): a page served by the plugin, charts updated every second over
// a WebSocket of its own, and a table of connections with a disconnect button.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { WsManager } from './manager'

/** The dashboard's settings, after validation. */
export interface DashboardSettings {
  /** Where the page is served; its WebSocket and files live under it. */
  path: string
}

/**
 * Lets a request in, or answers it (401 without a valid token when auth is on, 403 when the
 * application's `authorize` refuses) and resolves false. Supplied by the plugin.
 */
export type DashboardGate = (request: FastifyRequest, reply: FastifyReply) => Promise<boolean>

/** Registers the dashboard's routes. */
export function registerDashboard (_fastify: FastifyInstance, _manager: WsManager, _settings: DashboardSettings, _gate: DashboardGate): void {
  throw new Error('not built yet')
}
