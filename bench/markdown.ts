// What the benchmark runners share with their reports: a table written into BENCHMARKS.md
// between its markers, and --help from a file's own header comment.
import { existsSync, readFileSync, writeFileSync } from 'node:fs'

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
