import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import type { ClusterResults } from '../bench/cluster-report'
import { runScript } from './helper'

// The cross-node fan-out benchmark (bench/cluster.ts) in its quick form, against the Redis on
// 127.0.0.1:6379: both systems measured, figures that mean something, and every published
// message received by every connection exactly once.
test('the quick cluster benchmark measures both systems and delivers every message exactly once', { timeout: 90_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wsm-bench-cluster-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const out = join(dir, 'cluster.json')
  const { code, output } = await runScript(t, join(__dirname, '..', 'bench', 'cluster.ts'), ['--quick', '--no-md', '--out', out])
  assert.equal(code, 0, `the benchmark failed:\n${output}`)

  const results = JSON.parse(readFileSync(out, 'utf8')) as ClusterResults
  assert.equal(results.meta.mode, 'quick')
  const connections = results.params.nodes * results.params.perNode
  assert.deepEqual(results.runs.map((r) => r.system).sort(), ['plugin', 'socket.io'])
  for (const run of results.runs) {
    assert.equal(run.connections, connections)
    // Every rate of both kinds, and a burst of each.
    assert.equal(run.windows.length, 2 * (results.params.rates.length + 1), `${run.system} windows`)
    for (const w of run.windows) {
      const what = `${run.system} ${w.kind} at ${w.rate ?? 'burst'}`
      assert.ok(w.published > 0, `${what}: published`)
      assert.equal(w.publishFailed, 0, `${what}: ${String(w.publishError)}`)
      // The count check: each connection flags each sequence number once.
      assert.equal(w.expected, w.published * connections, `${what}: expected`)
      assert.equal(w.received, w.expected, `${what}: received`)
      assert.equal(w.missing, 0, `${what}: missing`)
      assert.equal(w.duplicates, 0, `${what}: duplicates`)
      assert.equal(w.negative, 0, `${what}: latencies below zero`)
      assert.ok(w.deliveredPerS > 0, `${what}: throughput`)
      assert.ok(w.latencyMs.p50 > 0, `${what}: p50`)
      assert.ok(w.latencyMs.p99 >= w.latencyMs.p50, `${what}: p99 ${w.latencyMs.p99} < p50 ${w.latencyMs.p50}`)
      assert.ok(w.latencyMs.max >= w.latencyMs.p99, `${what}: max`)
    }
    for (const call of ['sendToUser', 'broadcast', 'publish'] as const) {
      const count = run.commands[call]
      assert.ok(count !== undefined && count.perCall >= 1, `${run.system} ${call}: Redis commands per call counted`)
    }
  }
  assert.match(output, /plugin delivered\/s/)
})
