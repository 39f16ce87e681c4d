// The rolling restart of issue 15, small: three cluster nodes behind a readiness-following
// balancer, 300 clients of the project's client, a topic at 50 messages/s with history; each
// node replaced in turn (bench/rollout.ts). With drain on, nothing is lost or doubled and the
// reconnects keep to the drain's pace; with drain off the same rollout makes a burst.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { runRollout, type RolloutResult } from '../bench/rollout'

const base = { nodes: 3, clients: 300, rate: 50, history: 5000 }
const DRAIN_MS = 3000

test('a rolling restart with drain: every client back, no duplicate, no gap, reconnects at the drain\'s pace', { timeout: 120_000 }, async () => {
  const drained = await runRollout({ ...base, mode: 'drain', drainMs: DRAIN_MS })
  const report = JSON.stringify(drained)
  assert.equal(drained.clientsOpenAtEnd, base.clients, report)
  assert.ok(drained.published >= 500, report)
  assert.equal(drained.duplicates, 0, report)
  assert.equal(drained.missing, 0, report)
  assert.equal(drained.unrecovered, 0, report)
  // Every client of a drained node reconnected once per drain it went through.
  assert.equal(drained.reconnects, drained.drains.reduce((n, d) => n + d.connections, 0), report)
  assert.equal(drained.closeCodes['1012'], drained.reconnects, report)
  const pace = drained.drainPacePerS as number
  assert.ok(drained.reconnectPeakPerS <= 2 * pace, `busiest second ${drained.reconnectPeakPerS} against a pace of ${pace}/s`)
  assert.ok(drained.refusedMax <= 3, report)
  // About three drain durations, plus the time the replacements take to start.
  const drainsMs = drained.rolloutMs - drained.startsMs
  assert.ok(drainsMs >= 3 * DRAIN_MS * 0.85 && drainsMs <= 3 * DRAIN_MS + 4000, `${drainsMs} ms of draining`)
  for (const d of drained.drains) assert.ok(d.durationMs >= DRAIN_MS * 0.7 && d.durationMs <= DRAIN_MS + 2500, report)

  // The same rollout with everything closed at once: the storm the drain prevents.
  const abrupt: RolloutResult = await runRollout({ ...base, mode: 'off', drainMs: 0 })
  assert.equal(abrupt.clientsOpenAtEnd, base.clients, JSON.stringify(abrupt))
  assert.ok(abrupt.reconnectPeakPerS > drained.reconnectPeakPerS, `abrupt ${abrupt.reconnectPeakPerS}/s, drained ${drained.reconnectPeakPerS}/s`)
  assert.ok(abrupt.closeCodes['1001'] !== undefined && abrupt.closeCodes['1012'] === undefined, JSON.stringify(abrupt.closeCodes))
})
