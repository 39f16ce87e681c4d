// `--token-cmd`: a shell command the user wrote, run to print a token. Its output is the
// token, so it is never part of an error message; only the exit status and stderr's first
// line are.

import { exec } from 'node:child_process'

/** How long a token command may run. */
export const TOKEN_COMMAND_TIMEOUT_MS = 10_000

/**
 * Runs `command` in the system shell and resolves with what it printed on stdout, trimmed.
 * @throws Error (rejects) when the command fails, times out, prints nothing, or prints more
 *   than one word (a token has no whitespace).
 */
export function runTokenCommand (command: string, timeoutMs = TOKEN_COMMAND_TIMEOUT_MS): Promise<string> {
  return new Promise((resolve, reject) => {
    exec(command, { timeout: timeoutMs, maxBuffer: 1024 * 1024, windowsHide: true }, (err, stdout, stderr) => {
      if (err !== null) {
        const why = err.killed === true ? `timed out after ${timeoutMs} ms` : `exited with ${String(err.code ?? err.signal)}`
        const line = stderr.trim().split('\n')[0]?.slice(0, 200) ?? ''
        reject(new Error(`the token command ${why}${line === '' ? '' : `: ${line}`}`))
        return
      }
      const token = stdout.trim()
      if (token === '') reject(new Error('the token command printed nothing'))
      else if (/\s/.test(token)) reject(new Error('the token command printed more than one word'))
      else resolve(token)
    })
  })
}
