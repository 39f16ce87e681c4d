// What the benchmark runners share with their reports: a table written into BENCHMARKS.md
// between its markers, and --help from a file's own header comment.
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'

/** Writes `section` between the markers of `file`; false (and a log line) when it cannot. */
export function writeBetweenMarkers (file: string, startMark: string, endMark: string, section: string, log: (line: string) => void): boolean {
  if (!existsSync(file)) {
    log(`${file} not found; table not written there`)
    return false
  }
  const text = readFileSync(file, 'utf8')
  const start = text.indexOf(startMark)
  const end = text.indexOf(endMark)
  if (start === -1 || end < start) {
    log(`${file} has no ${startMark} … ${endMark} markers; table not written there`)
    return false
  }
  writeFileSync(file, `${text.slice(0, start + startMark.length)}\n${section}\n${text.slice(end)}`)
  log(`${file} updated`)
  return true
}

/** The `//` comment lines of a file, as its --help text. */
export function headerHelp (file: string): string {
  return readFileSync(file, 'utf8').split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n')
}

/** What every run records of the machine and the code: CPU, cores, memory, Node, the commit. */
export function machineBasics (root: string): { cpu: string, cores: number, memoryGiB: number, node: string, commit: string } {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8')
  let commit = 'unknown'
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim()
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'lib'], { cwd: root, encoding: 'utf8' }).trim()
    if (dirty !== '') commit += ' + uncommitted lib/ changes'
  } catch {}
  return {
    cpu: /^model name\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 1024 ** 3),
    node: process.version,
    commit
  }
}

/** The installed version of a package. */
export function packageVersion (pkg: string): string {
  return (JSON.parse(readFileSync(require.resolve(`${pkg}/package.json`), 'utf8')) as { version: string }).version
}
