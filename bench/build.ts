// Compiles lib/ and bench/ to CommonJS for the child processes, with TypeScript's
// transpileModule (no type check: `npm test` does that). A child on plain JavaScript starts
// in about half the time it takes under tsx's require hook, which also slows the loading of
// every package; with some thirty server children per run, that is most of a quick run's
// margin. Only files newer than their output are compiled again, so TypeScript itself is
// loaded only when something changed.
//
// The output goes to node_modules/.cache/, where build tools keep their caches: git, the
// linter and the type checker leave it alone, and the compiled files still resolve packages
// from the project's node_modules.

import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

const ROOT = join(__dirname, '..')

/** Where the compiled children live. */
export const BUILD_DIR = join(ROOT, 'node_modules', '.cache', 'fastify-ws-manager-bench')

/** Compiles what changed; returns how many files were compiled. */
export function buildChildren (): number {
  let ts: typeof import('typescript') | null = null
  let compiled = 0
  for (const dir of ['lib', 'bench']) {
    for (const file of readdirSync(join(ROOT, dir)).filter((f) => f.endsWith('.ts'))) {
      const source = join(ROOT, dir, file)
      const output = join(BUILD_DIR, dir, file.replace(/\.ts$/, '.js'))
      if (existsSync(output) && statSync(output).mtimeMs >= statSync(source).mtimeMs) continue
      ts ??= createRequire(__filename)('typescript') as typeof import('typescript')
      const { outputText } = ts.transpileModule(readFileSync(source, 'utf8'), {
        fileName: source,
        compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true }
      })
      mkdirSync(dirname(output), { recursive: true })
      writeFileSync(output, outputText)
      compiled++
    }
  }
  return compiled
}
