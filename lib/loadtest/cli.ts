#!/usr/bin/env node
// fastify-ws-manager-loadtest: the command around runLoadTest. Arguments (args.ts), progress
// on stderr, the summary or JSON on stdout (report.ts), SIGINT/SIGTERM, exit codes.

import { closeSync, openSync, readFileSync, writeSync } from 'node:fs'
import { COMMAND, parseCommandLine, USAGE, UsageError } from './args'
import { DEFAULTS } from './options'
import { formatJson, formatSummary } from './report'
import { runLoadTest, type Progress } from './run'

/** Seconds between progress lines when stderr is not a terminal. */
export const PLAIN_PROGRESS_SECONDS = 5

/** Linux's soft limit of open files for this process, or null where it cannot be read. */
function openFileLimit (): number | null {
  try {
    const match = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))
    return match === null ? null : Number(match[1])
  } catch {
    return null
  }
}

function progressLine (p: Progress): string {
  const connecting = p.connecting > 0 ? ` (+${p.connecting} connecting)` : ''
  return `${(p.elapsedMs / 1000).toFixed(1).padStart(6)}s  ${p.phase.padEnd(7)} open ${p.open}${connecting}  ` +
    `sent ${Math.round(p.sentPerSecond)}/s  received ${Math.round(p.receivedPerSecond)}/s  errors ${p.errors}`
}

/** Runs the command with `argv` (without node and the script); resolves with the exit code. */
export async function main (argv: readonly string[]): Promise<number> {
  let command
  try {
    command = parseCommandLine(argv)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    process.stderr.write(`${COMMAND}: ${err.message}\nTry ${COMMAND} --help\n`)
    return 2
  }
  if (command.help) {
    process.stdout.write(USAGE)
    return 0
  }

  // Opened now, so that an unwritable path fails before the run rather than after it.
  let jsonFd: number | null = null
  if (command.jsonOut !== null && command.jsonOut !== '-') {
    try {
      jsonFd = openSync(command.jsonOut, 'w')
    } catch (err) {
      process.stderr.write(`${COMMAND}: --json-out: cannot write ${command.jsonOut}: ${(err as Error).message}\n`)
      return 2
    }
  }

  const limit = openFileLimit()
  const connections = command.options.connections ?? DEFAULTS.connections
  if (limit !== null && connections + 32 > limit) {
    process.stderr.write(`${COMMAND}: warning: ${connections} connections need as many file descriptors; this process may open ${limit} (ulimit -n)\n`)
  }

  const controller = new AbortController()
  let signals = 0
  const onSignal = (signal: NodeJS.Signals): void => {
    if (++signals > 1) process.exit(130)
    process.stderr.write(`\n${signal}: stopping; closing the connections (again to exit at once)\n`)
    controller.abort()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  const tty = process.stderr.isTTY === true
  let lastPrinted = -Infinity
  let printedLive = false
  const onProgress = (p: Progress): void => {
    if (command.quiet) return
    if (tty) {
      process.stderr.write(`\r${progressLine(p)}\x1b[K`)
      printedLive = true
    } else if (p.elapsedMs - lastPrinted >= PLAIN_PROGRESS_SECONDS * 1000 - 100) {
      lastPrinted = p.elapsedMs
      process.stderr.write(progressLine(p) + '\n')
    }
  }

  let result
  try {
    result = await runLoadTest({ ...command.options, signal: controller.signal }, onProgress)
  } catch (err) {
    // The options were checked already; what is left is the token command failing at the start.
    process.stderr.write(`${COMMAND}: ${(err as Error).message}\n`)
    if (jsonFd !== null) closeSync(jsonFd)
    return 2
  } finally {
    process.removeListener('SIGINT', onSignal)
    process.removeListener('SIGTERM', onSignal)
  }
  if (printedLive) process.stderr.write('\n')

  const json = formatJson(result)
  if (jsonFd !== null) {
    writeSync(jsonFd, json)
    closeSync(jsonFd)
  }
  process.stdout.write(command.jsonOut === '-' ? json : formatSummary(result))
  return command.failOnError && result.errorCount > 0 ? 1 : 0
}

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code }, (err: unknown) => {
    console.error(err)
    process.exitCode = 1
  })
}
