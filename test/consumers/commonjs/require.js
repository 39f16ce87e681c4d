// require() in plain JavaScript, checked by TypeScript (checkJs): the plugin itself, with the
// named exports on it.
'use strict'

const Fastify = require('fastify')
const wsManager = require('fastify-ws-manager')
const { CloseCode, GracefulCloseManager } = require('fastify-ws-manager')

async function start () {
  const app = Fastify()
  await app.register(wsManager, { auth: false, maxConnectionsPerUser: 5 })
  await app.register(wsManager.wsManager, { auth: false })
  // @ts-expect-error an option of the wrong type is refused, so the plugin is not typed `any`
  await app.register(wsManager, { maxConnectionsPerUser: 'five' })
  const closer = new GracefulCloseManager({ timeout: 5000 })
  /** @type {import('fastify-ws-manager').WsManagerOptions} */
  const options = { close: { shutdownCode: wsManager.CloseCode.SERVICE_RESTART } }
  return { app, closer, options, code: CloseCode.GOING_AWAY }
}

module.exports = { start }
