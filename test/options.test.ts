import { test } from 'node:test'
import assert from 'node:assert/strict'
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import wsManager, { DEFAULTS, loadConfig, normalizeOptions } from '../lib/index'

test('defaults are frozen and complete', () => {
  assert.ok(Object.isFrozen(DEFAULTS))
  assert.ok(Object.isFrozen(DEFAULTS.close))
  assert.deepEqual(normalizeOptions({}), { ...DEFAULTS, close: { ...DEFAULTS.close } })
})

test('a wrong type or out-of-range option fails ready() with FST_WSM_OPTION_INVALID', async () => {
  const bad: unknown[] = [
    { close: { timeout: 'abc' } },
    { close: { timeout: -1 } },
    { close: { timeout: 1.5 } },
    { close: { shutdownCode: 1005 } },
    { close: { shutdownReason: 42 } },
    { close: 'soon' },
    { auth: 'yes' },
    { auth: { algorithms: ['none'] } },
    { allowedOrigins: 5 },
    { upgradeRateLimit: { max: 0 } },
    { messageRateLimit: { policy: 'wait' } },
    { onUserLimit: 'kick' },
    { nope: 1 },
    { close: { timeot: 100 } }
  ]
  for (const options of bad) {
    const app = Fastify()
    app.register(wsManager, options as never)
    await assert.rejects(async () => { await app.ready() }, { code: 'FST_WSM_OPTION_INVALID' }, JSON.stringify(options))
    await app.close()
  }
})

test('registering @fastify/websocket as well is a coded registration error', async () => {
  const app = Fastify()
  app.register(websocket)
  app.register(wsManager, { auth: false })
  await assert.rejects(async () => { await app.ready() }, { code: 'FST_WSM_WEBSOCKET_REGISTERED' })
  await app.close()
})

test('loadConfig maps the environment to options with the seed defaults', () => {
  const config = loadConfig({})
  assert.equal(config.port, 3001)
  assert.equal(config.path, '/ws')
  assert.equal(config.host, '127.0.0.1')
  assert.deepEqual(config.options.close, { timeout: 5000, shutdownCode: 1001 })
  const custom = loadConfig({ WEBSOCKET_PORT: '8080', WEBSOCKET_PATH: '/live', CLOSE_TIMEOUT: '2500', SHUTDOWN_CLOSE_CODE: '1012', HEADERS_TIMEOUT: '2000', REQUEST_TIMEOUT: '5000', LOG_LEVEL: 'warn', HOST: '0.0.0.0' })
  assert.equal(custom.port, 8080)
  assert.equal(custom.path, '/live')
  assert.equal(custom.host, '0.0.0.0')
  assert.deepEqual(custom.options.close, { timeout: 2500, shutdownCode: 1012 })
  assert.equal(custom.headersTimeout, 2000)
  assert.equal(custom.requestTimeout, 5000)
  assert.equal(custom.logLevel, 'warn')
  // Every option loadConfig produces passes the plugin's own validation.
  normalizeOptions(custom.options)
})

test('a bad environment value fails with FST_WSM_ENV_INVALID naming the variable', () => {
  const bad: Record<string, string>[] = [
    { WEBSOCKET_PORT: '70000' },
    { WEBSOCKET_PORT: 'abc' },
    { CLOSE_TIMEOUT: '-5' },
    { CLOSE_TIMEOUT: '1e3' },
    { SHUTDOWN_CLOSE_CODE: '1006' },
    { WEBSOCKET_PATH: 'ws' },
    { HEADERS_TIMEOUT: '20000', REQUEST_TIMEOUT: '10000' },
    { LOG_LEVEL: 'loud' }
  ]
  for (const env of bad) {
    const variable = Object.keys(env).at(-1) as string
    assert.throws(() => loadConfig(env), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'FST_WSM_ENV_INVALID')
      // The requirement is that the message names the variable, so that is what is checked.
      assert.ok(err.message.includes(variable), err.message)
      return true
    }, JSON.stringify(env))
  }
})
