import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { errors } from '../lib/index'

const root = join(__dirname, '..')

test('require() of the built package gives the plugin itself, with the named exports on it', () => {
  const script = `
    const assert = require('node:assert/strict')
    const wsManager = require(${JSON.stringify(root)})
    assert.equal(typeof wsManager, 'function')
    assert.equal(wsManager[Symbol.for('fastify.display-name')], 'fastify-ws-manager')
    assert.equal(wsManager.default, wsManager)
    assert.equal(wsManager.CloseCode.GOING_AWAY, 1001)
    assert.equal(typeof wsManager.GracefulCloseManager, 'function')
    const Fastify = require('fastify')
    const app = Fastify()
    app.register(wsManager, { auth: false })
    app.ready().then(() => { assert.equal(typeof app.wsManager.closeAll, 'function'); return app.close() })
      .then(() => process.stdout.write('cjs ok'))
  `
  assert.equal(execFileSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8' }), 'cjs ok')
})

test('ESM import of the built package gives the plugin as default and the named exports', () => {
  const script = `
    import assert from 'node:assert/strict'
    import wsManager, { CloseCode, GracefulCloseManager } from ${JSON.stringify(join(root, 'dist', 'index.js'))}
    assert.equal(typeof wsManager, 'function')
    assert.equal(CloseCode.SERVICE_RESTART, 1012)
    assert.equal(typeof GracefulCloseManager, 'function')
    process.stdout.write('esm ok')
  `
  assert.equal(execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' }), 'esm ok')
})

test('every error code is documented in the README', () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8')
  for (const code of Object.keys(errors)) {
    assert.ok(readme.includes(`\`${code}\``), `${code} missing from README`)
  }
})
