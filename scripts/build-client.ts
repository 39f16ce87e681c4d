// Runs after tsc (npm run build), which already wrote the client's CommonJS build and
// declarations to dist/client/. This adds what tsc cannot: the ESM build (index.mjs, with its
// declarations as .d.mts so that TypeScript under NodeNext types an import as ESM), and the
// browser bundle (browser.js: one ES module with no bare import, for a `<script type="module">`
// or a server to serve as is). esbuild comes with tsx.
//
// The client loads the `ws` package only in Node without a global WebSocket (socket.ts), by a
// dynamic import: index.mjs keeps it external (a dependency of the package), and browser.js
// gets a module in its place that has no WebSocket, since a browser always has its own.

import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { build, type BuildOptions } from 'esbuild'
import { bundleBrowserClient } from './client-bundle'

const root = join(__dirname, '..')
const entry = join(root, 'lib', 'client', 'index.ts')
const out = join(root, 'dist', 'client')

async function main (): Promise<void> {
  const common: BuildOptions = { entryPoints: [entry], bundle: true, format: 'esm', target: 'es2022', platform: 'neutral', sourcemap: true, logLevel: 'warning' }
  await build({ ...common, outfile: join(out, 'index.mjs'), external: ['ws'] })
  await bundleBrowserClient(join(out, 'browser.js'))

  // tsc's declarations, once more as ESM: relative imports need their extension there.
  for (const file of readdirSync(out)) {
    if (!file.endsWith('.d.ts')) continue
    const text = readFileSync(join(out, file), 'utf8')
      .replace(/(from\s+'|import\(')(\.\.?\/[^']+)'/g, (_match, head: string, path: string) => `${head}${path}.mjs'`)
    writeFileSync(join(out, file.replace(/\.d\.ts$/, '.d.mts')), text)
  }
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
