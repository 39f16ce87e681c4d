// Runs after tsc (npm run build): tsc copies no files but TypeScript, and the dashboard's page,
// script and style sheet must sit beside dist/dashboard.js as they sit beside lib/dashboard.ts,
// since it finds them through __dirname. uPlot's files are not copied: they are read from the
// installed uplot package, a dependency.

import { copyFileSync, mkdirSync, readdirSync } from 'node:fs'
import { join } from 'node:path'

const from = join(__dirname, '..', 'lib', 'dashboard-assets')
const to = join(__dirname, '..', 'dist', 'dashboard-assets')

const files = readdirSync(from, { withFileTypes: true })
if (files.length === 0) throw new Error(`${from} is empty`)
mkdirSync(to, { recursive: true })
for (const file of files) {
  // A flat folder: a subfolder would need the server's allow-list to change too.
  if (!file.isFile()) throw new Error(`${join(from, file.name)}: only files are copied`)
  copyFileSync(join(from, file.name), join(to, file.name))
}
