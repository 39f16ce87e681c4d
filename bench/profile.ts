// Summarizes a V8 .cpuprofile (a server's measurement window, see `--profile` in
// bench/run.ts; a file from node --cpu-prof works too): top functions by self time, the plugin's own functions by
// inclusive time, and time by origin (plugin, ws, fastify, node internals, GC).
//
//   node --import tsx bench/profile.ts bench/results/profiles/<file>.cpuprofile [top]

import { readFileSync } from 'node:fs'
import { join, relative } from 'node:path'

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  children?: number[]
}

interface CpuProfile {
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
}

interface Entry {
  name: string
  self: number
  total: number
}

const ROOT = relative(process.cwd(), join(__dirname, '..')) || '.'

// The children run lib/ and bench/ compiled into node_modules/.cache (bench/build.ts).
const COMPILED = '/.cache/fastify-ws-manager-bench/'

function fileOf (url: string): string {
  const file = url.replace(/^file:\/\//, '')
  if (file.includes(COMPILED)) return file.slice(file.indexOf(COMPILED) + COMPILED.length)
  if (file.includes('/node_modules/')) return file.replace(/^.*\/node_modules\//, '')
  return file.replace(/^.*\/(lib|bench)\//, '$1/')
}

function keyOf (node: ProfileNode): string {
  const { functionName, url, lineNumber } = node.callFrame
  const file = fileOf(url)
  const where = file === '' ? '' : `${file}:${lineNumber + 1}`
  return `${functionName === '' ? '(anonymous)' : functionName} ${where}`.trim()
}

function originOf (url: string, name: string): string {
  if (name === '(garbage collector)') return 'gc'
  if (name === '(idle)' || name === '(program)' || name === '(root)') return name
  if (url.includes(COMPILED)) return url.includes(`${COMPILED}lib/`) ? 'plugin (lib/)' : 'bench harness'
  if (url.includes('/node_modules/ws/')) return 'ws'
  if (url.includes('/node_modules/@fastify/websocket/')) return '@fastify/websocket'
  if (url.includes('/node_modules/')) return 'other packages (fastify, pino, ...)'
  if (url.includes('/lib/') && !url.startsWith('node:')) return 'plugin (lib/)'
  if (url.includes('/bench/')) return 'bench harness'
  return 'node internals / native'
}

/** Text summary of one profile. */
export function summarizeProfile (file: string, top = 15): string {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const selfById = new Map<number, number>()
  let total = 0
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = profile.timeDeltas[i] ?? 0
    selfById.set(profile.samples[i], (selfById.get(profile.samples[i]) ?? 0) + dt)
    total += dt
  }
  const entries = new Map<string, Entry>()
  const origins = new Map<string, number>()
  const entry = (key: string): Entry => {
    let e = entries.get(key)
    if (e === undefined) {
      e = { name: key, self: 0, total: 0 }
      entries.set(key, e)
    }
    return e
  }
  // Inclusive time per function counts each stack once, however often the function recurs in it.
  // Starting and stopping the profiler (bench/server-process.ts) shows up as a stack of its
  // own; it is the instrument, not the server, so it is left out.
  let instrument = 0
  const visit = (id: number, active: Set<string>): number => {
    const node = byId.get(id) as ProfileNode
    if (node.callFrame.functionName === 'startProfile' || node.callFrame.functionName === 'stopProfile') {
      instrument += subtree(id)
      return 0
    }
    const key = keyOf(node)
    const self = selfById.get(id) ?? 0
    entry(key).self += self
    const origin = originOf(node.callFrame.url, node.callFrame.functionName)
    origins.set(origin, (origins.get(origin) ?? 0) + self)
    const outer = active.has(key)
    if (!outer) active.add(key)
    let inclusive = self
    for (const child of node.children ?? []) inclusive += visit(child, active)
    if (!outer) {
      active.delete(key)
      entry(key).total += inclusive
    }
    return inclusive
  }
  const subtree = (id: number): number => {
    const node = byId.get(id) as ProfileNode
    let sum = selfById.get(id) ?? 0
    for (const child of node.children ?? []) sum += subtree(child)
    return sum
  }
  visit(profile.nodes[0].id, new Set())

  const busy = total - instrument - (origins.get('(idle)') ?? 0)
  const pct = (us: number): string => `${(100 * us / busy).toFixed(1).padStart(5)}%`
  const out: string[] = [`${relative(ROOT, file)}: ${(total / 1000).toFixed(0)} ms sampled, ${(busy / 1000).toFixed(0)} ms not idle (percentages of that)`]
  out.push('', 'by origin (self time):')
  for (const [origin, us] of [...origins].filter(([o]) => o !== '(idle)').sort((a, b) => b[1] - a[1])) out.push(`  ${pct(us)}  ${origin}`)
  const list = [...entries.values()].filter((e) => !e.name.startsWith('(idle)') && !e.name.startsWith('(root)'))
  out.push('', `top ${top} functions by self time:`)
  for (const e of list.sort((a, b) => b.self - a.self).slice(0, top)) out.push(`  ${pct(e.self)}  ${e.name}`)
  out.push('', `top ${top} plugin functions (lib/) by inclusive time:`)
  for (const e of list.filter((x) => / lib\/[\w-]+\.[jt]s:\d+$/.test(x.name)).sort((a, b) => b.total - a.total).slice(0, top)) {
    out.push(`  ${pct(e.total)} incl ${pct(e.self)} self  ${e.name}`)
  }
  return out.join('\n')
}

if (require.main === module) {
  const [file, top] = process.argv.slice(2)
  if (file === undefined) {
    console.error('usage: node --import tsx bench/profile.ts <file.cpuprofile> [top]')
    process.exit(1)
  }
  console.log(summarizeProfile(file, top === undefined ? 15 : Number(top)))
}
