// The client as the built package ships it (npm run build first): the `./client` subpath from
// CommonJS and from ESM, and the browser bundle, which must import nothing.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'

const root = join(__dirname, '..')

test("require('fastify-ws-manager/client') gives the CommonJS build", () => {
  const script = `
    const assert = require('node:assert/strict')
    const client = require('fastify-ws-manager/client')
    assert.equal(typeof client.createClient, 'function')
    assert.equal(client.RECONNECT_DEFAULTS.base, 500)
    assert.ok(require.resolve('fastify-ws-manager/client').endsWith('dist/client/index.js'))
    const c = client.createClient({ url: 'ws://127.0.0.1:1/ws', getToken: () => null })
    assert.equal(c.state, 'closed')
    process.stdout.write('cjs ok')
  `
  assert.equal(execFileSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8' }), 'cjs ok')
})

test("import 'fastify-ws-manager/client' gives the ESM build, which loads ws when there is no global WebSocket", () => {
  const script = `
    import assert from 'node:assert/strict'
    import { createClient, ClientError } from 'fastify-ws-manager/client'
    assert.ok(import.meta.resolve('fastify-ws-manager/client').endsWith('dist/client/index.mjs'))
    const c = createClient({ url: 'ws://127.0.0.1:1/ws', getToken: () => null, reconnect: false })
    const err = await c.connect().catch((e) => e)
    assert.ok(err instanceof ClientError)
    assert.equal(err.code, 'FST_WSM_CLIENT_CLOSED')
    assert.equal(err.closeCode, 1006)
    process.stdout.write('esm ok')
  `
  assert.equal(execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' }), 'esm ok')
})

test('the browser bundle is one ES module that imports nothing', () => {
  const bundle = readFileSync(join(root, 'dist', 'client', 'browser.js'), 'utf8')
  assert.doesNotMatch(bundle, /^\s*import\s|\bimport\s*\(|\brequire\s*\(/m)
  assert.match(bundle, /export\s*\{[^}]*createClient/)
})
