// The client as one browser ES module with no imports: written to dist/client/browser.js by
// scripts/build-client.ts, and served by the reference server from the sources (npm start
// runs without a build).
import { join } from 'node:path'
import { build, type Plugin } from 'esbuild'

const entry = join(__dirname, '..', 'lib', 'client', 'index.ts')

// A browser always has its own WebSocket: `ws` becomes a module with nothing in it.
const noWs: Plugin = {
  name: 'no-ws',
  setup (b) {
    b.onResolve({ filter: /^ws$/ }, () => ({ path: 'ws', namespace: 'no-ws' }))
    b.onLoad({ filter: /.*/, namespace: 'no-ws' }, () => ({ contents: 'export default undefined', loader: 'js' }))
  }
}

/** Bundles the client for browsers; the text, or the file written when `outfile` is given. */
export async function bundleBrowserClient (outfile?: string): Promise<string> {
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    format: 'esm',
    target: 'es2022',
    platform: 'neutral',
    logLevel: 'warning',
    plugins: [noWs],
    ...(outfile === undefined ? { write: false } : { outfile, sourcemap: true })
  })
  const text = outfile === undefined ? (result.outputFiles?.[0]?.text ?? '') : (await import('node:fs')).readFileSync(outfile, 'utf8')
  // A bare specifier would fail in a browser: the bundle must import nothing at all.
  if (/\bimport\s*\(|^\s*import\s|\brequire\(/m.test(text)) throw new Error('the browser bundle still imports or requires a module')
  return text
}
