// Instructions per echoed message, counted by valgrind's callgrind rather than timed.
//
// On this machine two CPU-time windows of the same echo differ by 5-10 % (BENCHMARKS.md), so
// the per-message goal of issue 17 (within 3 % of bare @fastify/websocket) cannot be resolved
// by timing. Callgrind counts every instruction the server process executes, JIT-compiled
// code, garbage collection and V8's helper threads included, and the count barely moves from
// one run to the next. It cannot see what a system call costs in the kernel; the syscalls per
// message are the same for bare and the plugin (one read and one writev, checked with strace),
// so the ratio of user-space instructions is the ratio that matters.
//
// Method, per system and payload size: the server child (bench/server-process.ts) runs under
// `valgrind --tool=callgrind`; the generator (native) opens the connections and runs the
// lock-step echo of the echo scenario; after a warm-up long enough for V8 to optimize the hot
// path, `callgrind_control -z` zeroes the counters, the server counts the messages of a
// window, and `callgrind_control -d` dumps the instructions of that window. Instructions per
// message = instructions / messages. Under valgrind the server runs some 50 times slower, so
// the generator's echo settles at the server's pace.
//
//   npm run bench:instructions -- [--systems bare,plugin] [--sizes 64,16384] [--seconds 20]

import { execFileSync, fork } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { BUILD_DIR, buildChildren } from './build'
import { Peer, sleep, started } from './ipc'
import { remote } from './scenarios'
import type { GeneratorApi } from './generator'
import type { ServerApi, ServerReady } from './server-process'
import { SYSTEMS, type SystemName } from './servers'

const { values: args } = parseArgs({
  options: {
    systems: { type: 'string', default: 'bare,plugin' },
    sizes: { type: 'string', default: '64,16384' },
    seconds: { type: 'string', default: '20' },
    warmup: { type: 'string', default: '15' },
    connections: { type: 'string', default: '100' },
    'in-flight': { type: 'string', default: '8' },
    json: { type: 'string' },
    keep: { type: 'string' },
    help: { type: 'boolean', default: false }
  }
})

const HELP = `npm run bench:instructions -- [options]
  --systems a,b     systems to count (${SYSTEMS.join(', ')}); default bare,plugin
  --sizes 64,16384  payload sizes in bytes
  --seconds N       length of the counted window, in valgrind's slow time (default 20)
  --warmup N        seconds of echo before counting (default 15)
  --connections N   connections (default 100), --in-flight N messages each (default 8)
  --json FILE       also write the figures as JSON
  --keep DIR        keep callgrind's dumps in DIR (for callgrind_annotate) instead of a temporary folder`

function log (msg: string): void {
  process.stderr.write(`${msg}\n`)
}

function positive (name: string, text: string | undefined): number {
  const n = Number(text)
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, not ${String(text)}`)
  return n
}

function hasValgrind (): boolean {
  try {
    execFileSync('valgrind', ['--version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** The total instruction count of the newest callgrind dump in `dir` for `pid`. */
function dumpedInstructions (dir: string, pid: number): number {
  const dumps = readdirSync(dir).filter((f) => f.startsWith(`cg.${pid}.`)).sort((a, b) => Number(a.split('.').pop()) - Number(b.split('.').pop()))
  const last = dumps.at(-1)
  if (last === undefined) throw new Error(`no callgrind dump for ${pid} in ${dir}`)
  const text = readFileSync(join(dir, last), 'utf8')
  const m = /^(?:summary|totals): (\d+)/m.exec(text)
  if (m === null) throw new Error(`no instruction total in ${last}`)
  return Number(m[1])
}

interface Row {
  system: SystemName
  bytes: number
  messages: number
  instructions: number
  perMessage: number
}

async function countOne (generator: ReturnType<typeof remote<GeneratorApi>>, dir: string, system: SystemName, sizes: number[]): Promise<Row[]> {
  const child = fork(join(BUILD_DIR, 'bench', 'server-process.js'), [JSON.stringify({ system })], {
    execPath: 'valgrind',
    execArgv: ['--tool=callgrind', '--quiet', `--callgrind-out-file=${join(dir, 'cg.%p')}`, process.execPath, '--expose-gc'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  const peer = new Peer(`server ${system}`, child)
  try {
    const ready = await started<ServerReady>(peer, 300_000)
    const server = remote<ServerApi>(peer)
    const pid = ready.pid
    const connections = positive('connections', args.connections)
    const opened = await generator.call('connect', {
      port: ready.port, path: '/ws', deflate: false, headers: ready.headers, count: connections, concurrency: 20, timeoutMs: 300_000
    }, 310_000)
    if (opened.failed > 0) throw new Error(`${opened.failed} connections failed: ${opened.firstError ?? ''}`)
    const rows: Row[] = []
    for (const bytes of sizes) {
      await generator.call('echoStart', { bytes, inFlight: positive('in-flight', args['in-flight']), maxMs: 600_000 })
      await sleep(positive('warmup', args.warmup) * 1000)
      execFileSync('callgrind_control', ['-z', String(pid)], { stdio: 'ignore' })
      await server.call('mark', {}, 120_000)
      await sleep(positive('seconds', args.seconds) * 1000)
      const window = await server.call('measure', undefined, 120_000)
      execFileSync('callgrind_control', ['-d', String(pid)], { stdio: 'ignore' })
      const outstanding = await generator.call('echoStop', undefined, 120_000)
      // The generator waits 5 s for the echoes in flight; under valgrind large ones can take
      // longer. They were sent outside the counted window, so only the next size could see
      // them: let them land first.
      if (outstanding > 0) {
        log(`${outstanding} echoes still in flight after the window; waiting for them`)
        await sleep(15_000)
      }
      if (window.messages === 0) throw new Error('no message was echoed')
      const instructions = dumpedInstructions(dir, pid)
      const row = { system, bytes, messages: window.messages, instructions, perMessage: instructions / window.messages }
      log(`${system} ${bytes} B: ${row.messages} messages, ${Math.round(row.perMessage)} instructions each`)
      rows.push(row)
    }
    await generator.call('closeAll', {}, 120_000)
    await server.call('waitEmpty', { timeoutMs: 120_000 }, 130_000)
    return rows
  } finally {
    await peer.stop(60_000).catch(() => peer.kill())
  }
}

async function main (): Promise<void> {
  if (args.help === true) {
    process.stdout.write(`${HELP}\n`)
    return
  }
  if (!hasValgrind()) throw new Error('valgrind is not installed (Debian: apt-get install -y valgrind)')
  const systems = String(args.systems).split(',').map((s) => s.trim()) as SystemName[]
  for (const s of systems) if (!SYSTEMS.includes(s)) throw new Error(`unknown system ${s}; one of ${SYSTEMS.join(', ')}`)
  const sizes = String(args.sizes).split(',').map((s) => positive('sizes', s))
  buildChildren()
  const dir = args.keep ?? mkdtempSync(join(tmpdir(), 'wsm-callgrind-'))
  mkdirSync(dir, { recursive: true })
  const generatorPeer = new Peer('generator', fork(join(BUILD_DIR, 'bench', 'generator.js'), [], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }))
  const rows: Row[] = []
  try {
    const generator = remote<GeneratorApi>(generatorPeer)
    for (const system of systems) rows.push(...await countOne(generator, dir, system, sizes))
  } finally {
    await generatorPeer.stop()
    if (args.keep === undefined) rmSync(dir, { recursive: true, force: true })
  }
  const base = rows.filter((r) => r.system === systems[0])
  const lines = ['| system | payload | messages counted | instructions per message | vs ' + systems[0] + ' |', '|---|---:|---:|---:|---:|']
  for (const r of rows) {
    const b = base.find((x) => x.bytes === r.bytes)
    lines.push(`| ${r.system} | ${r.bytes} B | ${r.messages.toLocaleString('en-US')} | ${Math.round(r.perMessage).toLocaleString('en-US')} | ${b === undefined ? '' : (r.perMessage / b.perMessage).toFixed(3) + '×'} |`)
  }
  process.stdout.write(`${lines.join('\n')}\n`)
  if (args.json !== undefined) {
    const { writeFileSync } = await import('node:fs')
    writeFileSync(args.json, JSON.stringify({ date: new Date().toISOString(), args, rows }, null, 2))
  }
}

main().catch((err: unknown) => {
  log(err instanceof Error ? err.message : String(err))
  process.exitCode = 1
})
