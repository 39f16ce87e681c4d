import assert from 'node:assert/strict'
import { join } from 'node:path'
import { test } from 'node:test'
import { runScript } from './helper'

// The soak (bench/soak.ts) in short: 15 s of the mixed load. It cannot judge slow growth in so
// little time (its memory bounds allow for the warm-up of a short run), but every other check
// holds at any length: the server stays up, every client kind comes to its outcome, every
// limit and timer is reached, and fds, handles, timers and the registry come back to their
// baseline after the drain. `SOAK_INJECT_LEAK=timer` (or fd) makes this fail.
test('a 15-second soak passes its verdict', { timeout: 60_000 }, async (t) => {
  const { code, output } = await runScript(t, join(__dirname, '..', 'bench', 'soak.ts'), ['--duration', '15'])
  assert.equal(code, 0, `the soak failed:\n${output}`)
  assert.match(output, /^PASS$/m)
})
