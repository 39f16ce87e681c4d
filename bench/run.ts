// The benchmark orchestrator (issue 7): what the plugin costs next to raw ws and bare
// @fastify/websocket, in one run.
//
//   npm run bench                       full run, under 5 minutes; updates BENCHMARKS.md
//   npm run bench -- --quick            under a minute, fewer rounds and smaller counts
//   npm run bench -- --only echo,slow   some scenarios (echo, capacity, compression, heartbeat, slow)
//   npm run bench -- --rounds 5         rounds for every scenario
//   npm run bench -- --profile plugin   CPU-profile that system's measurement windows, summarize
//                                       (figures of a profiled run are not for the table)
//
// Each system in each round gets fresh server children (bench/server-process.ts), one per
// server configuration, shared by the scenarios that need it; one generator child
// (bench/generator.ts) drives them all from raw sockets on 127.0.0.0/8. Systems are
// interleaved round by round (A B C, A B C, ...) and ratios are taken per round.
// Figures go to bench/results/latest.json; the table is printed, and a full run writes it
// into BENCHMARKS.md between its result markers.

import { fork } from 'node:child_process'
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { BUILD_DIR, buildChildren } from './build'
import { Peer, started } from './ipc'
import { summarizeProfile } from './profile'
import { buildTable, markdownTable, textTable, type Collected, type TableRow } from './report'
import { FULL, QUICK, remote, SCENARIOS, type Context, type Scenario, type ServerHandle } from './scenarios'
import type { GeneratorApi } from './generator'
import type { ServerApi, ServerReady } from './server-process'
import { SYSTEMS, type ServerSpec, type SystemName } from './servers'
import { headerHelp, machineBasics, packageVersion, writeBetweenMarkers } from './markdown'

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    rounds: { type: 'string' },
    profile: { type: 'string' },
    out: { type: 'string', default: join(__dirname, 'results', 'latest.json') },
    'no-md': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false }
  }
})

const ROOT = join(__dirname, '..')
const PROFILE_DIR = join(__dirname, 'results', 'profiles')
const BENCHMARKS_MD = join(ROOT, 'BENCHMARKS.md')
const MARK_START = '<!-- bench-results:start -->'
const MARK_END = '<!-- bench-results:end -->'

const quick = args.quick === true
const params = quick ? QUICK : FULL
const live = new Set<Peer>()
let current = { scenario: '', round: 0 }

function log (msg: string): void {
  process.stderr.write(`${msg}\n`)
}

function killAll (): void {
  for (const peer of live) peer.kill()
}

async function startServer (spec: ServerSpec): Promise<ServerHandle> {
  const argv = [JSON.stringify(spec)]
  if (args.profile === spec.system) argv.push(join(PROFILE_DIR, `${current.scenario}-${spec.system.replace('+', '-')}-r${current.round}`))
  const child = fork(join(BUILD_DIR, 'bench', 'server-process.js'), argv, { execArgv: ['--expose-gc'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const peer = new Peer(`server ${spec.system}`, child)
  live.add(peer)
  try {
    const ready = await started<ServerReady>(peer)
    return {
      server: remote<ServerApi>(peer),
      ready,
      stop: async () => {
        await peer.stop()
        live.delete(peer)
      }
    }
  } catch (err) {
    peer.kill()
    live.delete(peer)
    throw err
  }
}

interface Session {
  system: SystemName
  spec: ServerSpec
  scenarios: Scenario[]
}

// One server child per system and server configuration: the scenarios that need the same
// server run on it one after the other, in the order of SCENARIOS. Sessions come in the order
// they first appear, so every scenario's systems still run back to back within a round.
function plan (scenarios: Scenario[]): Session[] {
  const sessions = new Map<string, Session>()
  for (const scenario of scenarios) {
    for (const system of scenario.systems) {
      const spec = scenario.server(system)
      const key = JSON.stringify(spec)
      const session = sessions.get(key)
      if (session === undefined) sessions.set(key, { system, spec, scenarios: [scenario] })
      else session.scenarios.push(scenario)
    }
  }
  return [...sessions.values()]
}

function machine (): Record<string, unknown> {
  const { commit, ...basics } = machineBasics(ROOT)
  return {
    ...basics,
    ws: packageVersion('ws'),
    fastify: packageVersion('fastify'),
    fastifyWebsocket: packageVersion('@fastify/websocket'),
    commit
  }
}

function saturation (table: TableRow[]): string[] {
  const out: string[] = []
  const pairs = table.filter((r) => r.label.endsWith('server CPU (share of a core)'))
  for (const serverRow of pairs) {
    const prefix = serverRow.label.slice(0, serverRow.label.indexOf(':'))
    const genRow = table.find((r) => r.label === `${prefix}: generator CPU (share of a core)`)
    if (genRow === undefined) continue
    const parts = SYSTEMS.filter((s) => serverRow.summaries[s] != null && genRow.summaries[s] != null).map((s) =>
      `${s} ${(serverRow.summaries[s]?.median ?? 0).toFixed(2)} vs ${(genRow.summaries[s]?.median ?? 0).toFixed(2)}`)
    out.push(`${prefix}: server vs generator CPU (cores): ${parts.join('; ')}`)
  }
  return out
}

function markdown (meta: Record<string, unknown>, table: TableRow[], notes: string[]): string {
  const m = meta.machine as Record<string, string | number>
  return [
    `Run ${String(meta.date)} (${String(meta.mode)}, ${String(meta.durationS)} s) on ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB; ` +
      `Node ${m.node}, ws ${m.ws}, fastify ${m.fastify}, @fastify/websocket ${m.fastifyWebsocket}; commit ${m.commit}.`,
    '',
    'Cells: median (min–max) over rounds. "compare" is taken round by round, then the median (min–max) of those.',
    '',
    markdownTable(table),
    '',
    ...notes.map((n) => `- ${n}`)
  ].join('\n')
}

function updateBenchmarksMd (section: string): void {
  writeBetweenMarkers(BENCHMARKS_MD, MARK_START, MARK_END, section, log)
}

async function main (): Promise<void> {
  if (args.help === true) {
    console.log(headerHelp(__filename))
    return
  }
  const only = args.only?.split(',')
  const scenarios = SCENARIOS.filter((s) => only === undefined || only.includes(s.id))
  if (scenarios.length === 0) throw new Error(`no scenario matches --only ${String(args.only)}; have ${SCENARIOS.map((s) => s.id).join(', ')}`)
  if (args.profile !== undefined && !(SYSTEMS as readonly string[]).includes(args.profile)) {
    throw new Error(`--profile takes one of ${SYSTEMS.join(', ')}`)
  }
  if (args.profile !== undefined) {
    rmSync(PROFILE_DIR, { recursive: true, force: true })
    mkdirSync(PROFILE_DIR, { recursive: true })
  }
  const started = performance.now()
  // The harness stops by itself whatever happens: past this, every child is killed.
  const watchdog = setTimeout(() => {
    log('watchdog: the run took too long, stopping')
    killAll()
    process.exit(3)
  }, quick ? 150_000 : 600_000)

  const compiled = buildChildren()
  if (compiled > 0) log(`compiled ${compiled} files for the child processes`)
  const generatorPeer = new Peer('generator', fork(join(BUILD_DIR, 'bench', 'generator.js'), [], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }))
  live.add(generatorPeer)
  const ctx: Context = { generator: remote<GeneratorApi>(generatorPeer), params, startServer }
  // Other work on the machine skews every figure; say so up front and in the record.
  const calibration = await ctx.generator.call('calibrate', { ms: quick ? 500 : 1000 })
  log(`machine busy with other work: ${calibration.machineBusy.toFixed(2)} cores; one empty timer wakeup costs ${calibration.wakeupUs.toFixed(0)} µs of CPU here; ` +
    `CPU time of fixed work varies by ${(100 * calibration.cpuSpeedSpread).toFixed(0)}% between 25 ms windows (p90 − p10)`)
  if (calibration.machineBusy > 0.25) log('warning: the machine is not idle; figures will be noisy')
  const collected: Collected = {}
  const details: Record<string, unknown[]> = {}
  const failures: string[] = []
  const roundsOf = (scenario: Scenario): number => args.rounds === undefined ? scenario.rounds[quick ? 'quick' : 'full'] : Number(args.rounds)
  for (const scenario of scenarios) {
    collected[scenario.id] = { systems: [...scenario.systems], rounds: Array.from({ length: roundsOf(scenario) }, () => ({})) }
    details[scenario.id] = Array.from({ length: roundsOf(scenario) }, () => ({}))
  }
  const fail = (scenario: Scenario, round: number, system: SystemName, err: unknown): void => {
    const msg = `${scenario.id} round ${round} ${system}: ${err instanceof Error ? err.message : String(err)}`
    failures.push(msg)
    log(`FAILED ${msg}`)
    collected[scenario.id].rounds[round - 1][system] = null
  }

  const maxRounds = Math.max(...scenarios.map(roundsOf))
  for (let round = 1; round <= maxRounds; round++) {
    for (const session of plan(scenarios.filter((s) => round <= roundsOf(s)))) {
      const ids = session.scenarios.map((s) => s.id).join('+')
      current = { scenario: ids, round }
      const t0 = performance.now()
      let handle: ServerHandle
      try {
        handle = await startServer(session.spec)
      } catch (err) {
        for (const scenario of session.scenarios) fail(scenario, round, session.system, err)
        continue
      }
      const steps = [`start ${((performance.now() - t0) / 1000).toFixed(1)}`]
      try {
        for (const scenario of session.scenarios) {
          const t1 = performance.now()
          try {
            const result = await scenario.run(ctx, handle, session.system)
            steps.push(`${scenario.id} ${((performance.now() - t1) / 1000).toFixed(1)}`)
            collected[scenario.id].rounds[round - 1][session.system] = result.rows
            ;(details[scenario.id][round - 1] as Record<string, unknown>)[session.system] = result.detail
          } catch (err) {
            fail(scenario, round, session.system, err)
            // The server may be in any state now; the rest of this session would measure that.
            break
          }
        }
      } finally {
        await handle.stop()
        await ctx.generator.call('closeAll', {}, 15_000).catch(() => {})
      }
      log(`round ${round}/${maxRounds} ${session.system.padEnd(14)} ${((performance.now() - t0) / 1000).toFixed(1).padStart(5)} s  (${steps.join(', ')})`)
    }
  }
  await generatorPeer.stop()
  live.delete(generatorPeer)
  clearTimeout(watchdog)

  const table = buildTable(collected, params)
  const meta = {
    date: new Date().toISOString().slice(0, 16).replace('T', ' ') + ' UTC',
    mode: quick ? 'quick' : 'full',
    durationS: Math.round((performance.now() - started) / 1000),
    machine: machine(),
    calibration
  }
  const notes = [
    `Machine before the run: ${calibration.machineBusy.toFixed(2)} cores busy with other work; ` +
      `an empty timer wakeup cost ${calibration.wakeupUs.toFixed(0)} µs of CPU; the CPU time of a fixed piece of work ` +
      `varied by ${(100 * calibration.cpuSpeedSpread).toFixed(0)}% (p90 − p10, over the median) between 25 ms windows.`,
    ...saturation(table),
    ...failures.map((f) => `FAILED: ${f}`)
  ]
  console.log(`\n${textTable(table)}\n`)
  for (const n of notes) console.log(n)
  console.log(`\n${String(meta.mode)} run in ${meta.durationS} s`)

  mkdirSync(join(__dirname, 'results'), { recursive: true })
  const out = args.out as string
  writeFileSync(out, JSON.stringify({ meta, params, table, figures: collected, details, failures }, null, 1) + '\n')
  log(`figures written to ${out}`)
  if (!quick && only === undefined && args.rounds === undefined && args['no-md'] !== true) {
    updateBenchmarksMd(markdown(meta, table, notes))
  }

  if (args.profile !== undefined) {
    for (const file of readdirSync(PROFILE_DIR).filter((f) => f.endsWith('.cpuprofile')).sort()) {
      const summary = summarizeProfile(join(PROFILE_DIR, file))
      writeFileSync(join(PROFILE_DIR, file.replace(/\.cpuprofile$/, '.txt')), summary + '\n')
      console.log(`\n${summary}`)
    }
  }
  if (failures.length > 0) process.exitCode = 1
}

main().catch((err: unknown) => {
  console.error(err)
  killAll()
  process.exit(1)
})
