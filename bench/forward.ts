// Forwarding throughput and session open times (issue 16), all on loopback: a bulk transfer
// from (and to) a TCP service directly, through OpenSSH's `ssh -L`, through the plugin's
// tcpTunnel and through its sshTunnel (an SSH direct-tcpip channel of a pooled connection to
// a real sshd), and the time a session takes to open.
//
//   npm run bench:forward                full run, about a minute; updates BENCHMARKS.md
//   npm run bench:forward -- --quick     32 MiB, one run per path, 5 openings (what the test runs)
//   npm run bench:forward -- --no-md     leave BENCHMARKS.md alone
//   npm run bench:forward -- --out FILE  figures to FILE (default bench/results/forward.json)
//
// Processes: the TCP services (bench/forward-source.ts: download, sink, greeting) in one
// child, the plugin's server (bench/forward-server.ts) in another, sshd from the tests'
// fixture, `ssh -N -L` for the OpenSSH path, and the clients here. Each transfer's CPU is
// read per process: process.cpuUsage() in the Node children, /proc for ssh and sshd (sshd and
// every process under it). The run fails when any transfer moves more or fewer bytes than sent.
// The handlers' limits are off (auth, upgrade and message rate limits, idle timeouts): every
// client-to-server WebSocket frame of an upload would count against messageRateLimit.
import { fork, spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { parseArgs } from 'node:util'
import { startSshd, type Sshd } from '../test/fixtures/sshd'
import { freePort } from '../test/fixtures/cluster'
import { BUILD_DIR, buildChildren } from './build'
import { downloadTcp, downloadWs, openSshW, openTcp, openWs, uploadTcp, uploadWs, waitForListener, type Transfer } from './forward-clients'
import { markdownSection, PATHS, PROCS, percentile, textReport, type Direction, type ForwardParams, type ForwardPath, type ForwardResults, type OpenSeries, type Proc, type TransferRun } from './forward-report'
import type { ServerSpec, ServerStats } from './forward-server'
import type { SourcePorts, SourceSpec } from './forward-source'
import { Peer, started } from './ipc'
import { headerHelp, machineBasics, packageVersion, writeBetweenMarkers } from './markdown'

const MIB = 1024 * 1024
const FULL: ForwardParams = { bytes: 256 * MIB, runs: 5, opens: 30, timeoutMs: 60_000 }
const QUICK: ForwardParams = { bytes: 32 * MIB, runs: 1, opens: 5, timeoutMs: 30_000 }

const ROOT = join(__dirname, '..')
const MARK_START = '<!-- forward-results:start -->'
const MARK_END = '<!-- forward-results:end -->'
const SSH = '/usr/bin/ssh'

/** utime + stime of one process, µs; 0 once it is gone. */
function procCpuUs (pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The name in parentheses may hold spaces: the fields after the last ')' are fixed.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // USER_HZ is 100 on Linux.
    return (Number(f[11]) + Number(f[12])) * 1e4
  } catch {
    return 0
  }
}

/** Busy CPU time of the whole machine so far, µs, from /proc/stat (everything but idle and iowait). */
function machineBusyUs (): number {
  const fields = (readFileSync('/proc/stat', 'utf8').split('\n')[0] as string).trim().split(/\s+/).slice(1, 9).map(Number)
  return (fields.reduce((a, b) => a + b, 0) - (fields[3] as number) - (fields[4] as number)) * 1e4
}

/** CPU µs of a process and every process under it that is still running. */
function treeCpuUs (root: number): number {
  const children = new Map<number, number[]>()
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      const list = children.get(ppid) ?? []
      list.push(Number(entry))
      children.set(ppid, list)
    } catch {}
  }
  let total = 0
  const todo = [root]
  while (todo.length > 0) {
    const pid = todo.shift() as number
    total += procCpuUs(pid)
    todo.push(...(children.get(pid) ?? []))
  }
  return total
}

function log (line: string): void {
  process.stderr.write(`${line}\n`)
}

/** A bench child on compiled JavaScript; resolves once it sends `{ ready }`. */
async function startChild<T> (name: string, file: string, spec: unknown): Promise<{ peer: Peer, ready: T }> {
  const child = fork(join(BUILD_DIR, 'bench', file), [JSON.stringify(spec)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const peer = new Peer(name, child)
  const ready = await started<T>(peer)
  return { peer, ready }
}

/** `ssh -N -L` for each service, logged in and listening; killed by the caller. */
async function startSshL (options: string[], login: string, source: SourcePorts): Promise<{ child: ChildProcess, ports: SourcePorts, stderr: () => string }> {
  const ports: SourcePorts = { download: await freePort(), sink: await freePort(), greet: await freePort() }
  const forwards = (Object.keys(ports) as Array<keyof SourcePorts>).flatMap((s) => ['-L', `${ports[s]}:127.0.0.1:${source[s]}`])
  const child = spawn(SSH, ['-N', '-o', 'ExitOnForwardFailure=yes', ...forwards, ...options, login], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const exited = new Promise<never>((_resolve, reject) => child.once('exit', (code) => reject(new Error(`ssh -L exited (${String(code)}): ${stderr.trim()}`))))
  exited.catch(() => {})
  // ssh listens on its forwards once it is logged in; the greeting port costs nothing to probe.
  await Promise.race([waitForListener(ports.greet, 10_000), exited])
  return { child, ports, stderr: () => stderr }
}

/** Everything one run starts, and a way to read each process's CPU. */
interface Rig {
  sshd: Sshd
  sshdPid: number
  source: Peer
  sourcePorts: SourcePorts
  server: Peer
  base: string
  sshL: { child: ChildProcess, ports: SourcePorts }
  sshOptions: string[]
  login: string
}

async function cpuNow (rig: Rig): Promise<Record<Proc | 'machine', number>> {
  const [server, source] = await Promise.all([
    rig.server.call<NodeJS.CpuUsage>('cpu'),
    rig.source.call<NodeJS.CpuUsage>('cpu')
  ])
  const client = process.cpuUsage()
  return {
    machine: machineBusyUs(),
    server: server.user + server.system,
    source: source.user + source.system,
    client: client.user + client.system,
    sshd: treeCpuUs(rig.sshdPid),
    ssh: procCpuUs(rig.sshL.child.pid as number)
  }
}

function transfer (rig: Rig, path: ForwardPath, direction: Direction, params: ForwardParams): Promise<Transfer> {
  const t = params.timeoutMs
  const service = direction === 'download' ? 'download' : 'sink'
  const ws = (route: string): string => `${rig.base}/${route}?to=${service}`
  switch (path) {
    case 'direct': return direction === 'download' ? downloadTcp(rig.sourcePorts.download, t) : uploadTcp(rig.sourcePorts.sink, params.bytes, t)
    case 'ssh -L': return direction === 'download' ? downloadTcp(rig.sshL.ports.download, t) : uploadTcp(rig.sshL.ports.sink, params.bytes, t)
    case 'tcpTunnel': return direction === 'download' ? downloadWs(ws('tcp'), t) : uploadWs(ws('tcp'), params.bytes, t)
    case 'sshTunnel': return direction === 'download' ? downloadWs(ws('ssh'), t) : uploadWs(ws('ssh'), params.bytes, t)
  }
}

/** The session kinds whose open time is measured, each a function that opens one and resolves with ms. */
function openers (rig: Rig, timeoutMs: number): Array<{ kind: string, what: string, open: () => Promise<number> }> {
  const greet = `${rig.base}/%s?to=greet`
  return [
    { kind: 'direct', what: 'direct TCP (baseline)', open: () => openTcp(rig.sourcePorts.greet, timeoutMs) },
    { kind: 'ssh -L', what: '`ssh -L`, its SSH connection already open (a new channel)', open: () => openTcp(rig.sshL.ports.greet, timeoutMs) },
    { kind: 'ssh -W', what: '`ssh -W`, a new ssh process and SSH connection', open: () => openSshW(rig.sshOptions, `127.0.0.1:${rig.sourcePorts.greet}`, rig.login, timeoutMs) },
    { kind: 'tcpTunnel', what: '`tcpTunnel`', open: () => openWs(greet.replace('%s', 'tcp'), timeoutMs) },
    { kind: 'sshTunnel warm', what: '`sshTunnel`, warm pool (an SSH connection already open)', open: () => openWs(greet.replace('%s', 'ssh'), timeoutMs) },
    { kind: 'sshTunnel fresh', what: '`sshTunnel`, fresh pool (new SSH connection: handshake and authentication)', open: () => openWs(greet.replace('%s', 'ssh-fresh'), timeoutMs) }
  ]
}

/** One benchmark run; every process it starts is gone when it resolves or rejects. */
export async function runForward (params: ForwardParams, mode: 'full' | 'quick'): Promise<ForwardResults> {
  const started = performance.now()
  const compiled = buildChildren()
  if (compiled > 0) log(`compiled ${compiled} files for the children`)
  const busy = machineBusyUs()
  await new Promise((resolve) => setTimeout(resolve, 1000))
  const machineBusy = (machineBusyUs() - busy) / 1e6
  const peers: Peer[] = []
  let sshd: Sshd | null = null
  let sshL: ChildProcess | null = null
  try {
    sshd = await startSshd()
    const sshdPid = Number(readFileSync(join(sshd.dir, 'sshd.pid'), 'utf8').trim())
    const keyFile = join(sshd.dir, 'user_key')
    const knownHostsFile = join(sshd.dir, 'known_hosts')
    writeFileSync(knownHostsFile, sshd.knownHosts)
    const sshOptions = ['-F', '/dev/null', '-p', String(sshd.port), '-i', keyFile, '-o', `UserKnownHostsFile=${knownHostsFile}`,
      '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', '-o', 'IdentitiesOnly=yes', '-o', 'LogLevel=ERROR']
    const login = 'root@127.0.0.1'

    const source = await startChild<SourcePorts>('forward source', 'forward-source.js', { bytes: params.bytes } satisfies SourceSpec)
    peers.push(source.peer)
    const server = await startChild<{ port: number }>('forward server', 'forward-server.js',
      { source: source.ready, sshd: { target: sshd.target, knownHosts: sshd.knownHosts } } satisfies ServerSpec)
    peers.push(server.peer)
    const ssh = await startSshL(sshOptions, login, source.ready)
    sshL = ssh.child
    const rig: Rig = {
      sshd,
      sshdPid,
      source: source.peer,
      sourcePorts: source.ready,
      server: server.peer,
      base: `ws://127.0.0.1:${server.ready.port}`,
      sshL: ssh,
      sshOptions,
      login
    }
    log(`sshd on ${sshd.port}, server on ${server.ready.port}, ssh -L up; ${params.bytes / MIB} MiB per transfer, ${params.runs} run(s)`)

    const kinds = openers(rig, params.timeoutMs)
    // The shared pool's SSH connection, the handlers' code and ssh -L's channel, opened once before anything is timed.
    for (const k of kinds) await k.open()

    const problems: string[] = []
    const transfers: TransferRun[] = []
    for (let run = 1; run <= params.runs; run++) {
      for (const direction of ['download', 'upload'] as const) {
        for (const path of PATHS) {
          const before = await cpuNow(rig)
          let result: Transfer
          try {
            result = await transfer(rig, path, direction, params)
          } catch (err) {
            problems.push(`${direction} ${path} run ${run}: ${(err as Error).message}`)
            log(`  ${direction} ${path}: FAILED ${(err as Error).message}`)
            continue
          }
          const after = await cpuNow(rig)
          const cpuUs = Object.fromEntries(PROCS.map((p) => [p, after[p] - before[p]])) as Record<Proc, number>
          // What the machine did besides the processes of the run (the /proc figures tick at 10 ms).
          const otherUs = Math.max(0, after.machine - before.machine - PROCS.reduce((n, p) => n + cpuUs[p], 0))
          const entry: TransferRun = { path, direction, run, bytes: result.bytes, ms: result.ms, mbps: result.bytes / 1e6 / (result.ms / 1000), cpuUs, otherCores: otherUs / (result.ms * 1000) }
          transfers.push(entry)
          if (result.bytes !== params.bytes) problems.push(`${direction} ${path} run ${run}: moved ${result.bytes} bytes, sent ${params.bytes}`)
          log(`  ${direction} ${path}: ${entry.mbps.toFixed(0)} MB/s in ${result.ms.toFixed(0)} ms, ${result.bytes === params.bytes ? 'bytes match' : `BYTES DIFFER: ${result.bytes}`}`)
        }
      }
    }

    const samples = new Map<string, number[]>(kinds.map((k) => [k.kind, []]))
    for (let i = 0; i < params.opens; i++) {
      for (const k of kinds) {
        try {
          samples.get(k.kind)?.push(await k.open())
        } catch (err) {
          problems.push(`open ${k.kind}: ${(err as Error).message}`)
        }
      }
    }
    const opens: OpenSeries[] = kinds.map((k) => {
      const ms = samples.get(k.kind) as number[]
      return { kind: k.kind, what: k.what, ms, median: ms.length === 0 ? NaN : percentile(ms, 0.5), p90: ms.length === 0 ? NaN : percentile(ms, 0.9) }
    })
    const stats = await server.peer.call<ServerStats>('stats')
    const machine = machineBasics(ROOT)
    return {
      meta: {
        date: new Date().toISOString(),
        mode,
        durationS: Math.round((performance.now() - started) / 1000),
        machine,
        machineBusy,
        versions: {
          ssh2: packageVersion('ssh2'),
          fastify: packageVersion('fastify'),
          ws: packageVersion('ws'),
          openssh: spawnSync(SSH, ['-V'], { encoding: 'utf8' }).stderr.trim().split(',')[0] ?? 'unknown'
        }
      },
      params,
      transfers,
      opens,
      server: stats,
      problems
    }
  } finally {
    if (sshL !== null && sshL.exitCode === null) sshL.kill('SIGTERM')
    await Promise.all(peers.map((p) => p.stop(5000).catch(() => p.kill())))
    await sshd?.stop()
  }
}

async function main (): Promise<void> {
  const { values: args } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      'no-md': { type: 'boolean', default: false },
      out: { type: 'string', default: join(__dirname, 'results', 'forward.json') },
      help: { type: 'boolean', default: false }
    }
  })
  if (args.help === true) {
    process.stdout.write(headerHelp(__filename) + '\n')
    return
  }
  const quick = args.quick === true
  const results = await runForward(quick ? QUICK : FULL, quick ? 'quick' : 'full')
  mkdirSync(dirname(args.out as string), { recursive: true })
  writeFileSync(args.out as string, JSON.stringify(results, null, 2))
  process.stdout.write(textReport(results) + '\n')
  if (results.problems.length > 0) {
    process.stderr.write(`the run failed:\n${results.problems.map((p) => `  ${p}`).join('\n')}\n`)
    process.exitCode = 1
    return
  }
  const section = markdownSection(results)
  if (args['no-md'] !== true && !quick) writeBetweenMarkers(join(ROOT, 'BENCHMARKS.md'), MARK_START, MARK_END, section, log)
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`${String((err as Error).stack ?? err)}\n`)
    process.exit(1)
  })
}
