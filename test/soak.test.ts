import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { test } from 'node:test'

// The soak (bench/soak.ts) in short: 15 s of the mixed load. It cannot judge slow growth in so
// little time (its memory bounds allow for the warm-up of a short run), but every other check
// holds at any length: the server stays up, every client kind comes to its outcome, every
// limit and timer is reached, and fds, handles, timers and the registry come back to their
// baseline after the drain. `SOAK_INJECT_LEAK=timer` (or fd) makes this fail.
test('a 15-second soak passes its verdict', { timeout: 60_000 }, async (t) => {
  const script = join(__dirname, '..', 'bench', 'soak.ts')
  const child = spawn(process.execPath, ['--import', 'tsx', script, '--duration', '15'], {
    cwd: join(__dirname, '..'),
    stdio: ['ignore', 'pipe', 'pipe']
  })
  // Its server child exits with it (it watches the IPC channel).
  t.after(() => child.kill())
  let output = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve))
  assert.equal(code, 0, `the soak failed:\n${output}`)
  assert.match(output, /^PASS$/m)
})
