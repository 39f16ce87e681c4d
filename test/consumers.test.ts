// The published package as three kinds of TypeScript projects use it: ESM under NodeNext, a
// bundler, and CommonJS (TypeScript and checked JavaScript), each `strict` with
// `skipLibCheck: false`, so the declarations in dist/ are checked as well as the examples.
// The package is installed from `npm pack`, with only what it declares as dependencies, into a
// temporary directory that the three projects (test/consumers/*) share.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'

const run = promisify(execFile)
const root = join(__dirname, '..')
const consumers = join(__dirname, 'consumers')
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')

function installedVersion (name: string): string {
  return (JSON.parse(readFileSync(join(root, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version
}

// The nth ts block (from 0) that follows a README heading.
function readmeExample (heading: string, nth = 0): string {
  const readme = readFileSync(join(root, 'README.md'), 'utf8')
  const at = readme.indexOf(`\n${heading}\n`)
  assert.notEqual(at, -1, `README has no "${heading}"`)
  const blocks = [...readme.slice(at).matchAll(/```ts\n([\s\S]*?)```/g)]
  assert.ok(blocks.length > nth, `no ts example ${nth} after "${heading}"`)
  return blocks[nth][1]
}

// npm runs this file under `npm test` with its own settings in npm_* variables (the project
// root among them): the install below belongs to the temporary directory alone. And c8's
// NODE_V8_COVERAGE would have npm and tsc write coverage that c8 then has to read.
function childEnv (): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.toLowerCase().startsWith('npm_') && key !== 'NODE_V8_COVERAGE'))
}

test('the consumer projects hold the README examples as they are', () => {
  const usage = readmeExample('## Usage')
  const components = readmeExample('## Components on their own')
  const hooks = readmeExample('### Hooks, data, iteration, diagnostics')
  const messages = readmeExample('### Message routing', 1)
  for (const project of ['esm-nodenext', 'bundler']) {
    assert.ok(readFileSync(join(consumers, project, 'usage.ts'), 'utf8').includes(usage), `${project}/usage.ts differs from the README`)
    assert.ok(readFileSync(join(consumers, project, 'components.ts'), 'utf8').includes(components), `${project}/components.ts differs from the README`)
    assert.ok(readFileSync(join(consumers, project, 'hooks.ts'), 'utf8').includes(hooks), `${project}/hooks.ts differs from the README`)
    assert.ok(readFileSync(join(consumers, project, 'messages.ts'), 'utf8').includes(messages), `${project}/messages.ts differs from the README`)
  }
})

test('the packed package type-checks in ESM (NodeNext), bundler and CommonJS projects', { timeout: 120_000 }, async (t) => {
  assert.ok(existsSync(join(root, 'dist', 'index.d.ts')), 'dist/ is missing: npm run build')
  const dir = mkdtempSync(join(tmpdir(), 'fastify-ws-manager-consumers-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const env = childEnv()

  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', dir], { cwd: root, env })
  const tarball = join(dir, (JSON.parse(stdout) as Array<{ filename: string }>)[0].filename)
  // The application's own dependencies, at the versions this repository tests with (so npm's
  // cache usually has them); everything else comes from the package's dependencies.
  const dependencies: Record<string, string> = { 'fastify-ws-manager': `file:${tarball}` }
  for (const name of ['fastify', '@fastify/jwt', '@types/node', '@sinclair/typebox']) dependencies[name] = installedVersion(name)
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumers', private: true, dependencies }))
  await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts', '--no-package-lock'], { cwd: dir, env })

  const projects = readdirSync(consumers)
  assert.deepEqual(projects.sort(), ['bundler', 'commonjs', 'esm-nodenext'])
  cpSync(consumers, dir, { recursive: true })
  const results = await Promise.all(projects.map(async (project) => {
    try {
      await run(process.execPath, [tsc, '-p', join(dir, project)], { cwd: dir, env })
      return ''
    } catch (err) {
      const { stdout = '', message } = err as { stdout?: string, message: string }
      return `${project}:\n${stdout === '' ? message : stdout}`
    }
  }))
  assert.equal(results.filter((result) => result !== '').join('\n'), '')
})
