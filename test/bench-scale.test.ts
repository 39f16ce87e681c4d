import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { SCALE_SYSTEMS } from '../bench/scale-common'
import type { ScaleResults } from '../bench/scale-report'
import { runScript } from './helper'

// The scale benchmark (bench/scale.ts) in its quick form, at 3,000 idle connections so that
// it does not load the machine under npm test's other timing tests for long: every system holds every idle
// connection it was given, its figures mean something, and every broadcast reaches every
// client exactly once.
test('the quick scale benchmark holds every connection and delivers every broadcast exactly once', { timeout: 120_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wsm-bench-scale-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const out = join(dir, 'scale.json')
  const { code, output } = await runScript(t, join(__dirname, '..', 'bench', 'scale.ts'), ['--quick', '--no-md', '--connections', '3000', '--out', out])
  assert.equal(code, 0, `the benchmark failed:\n${output}`)

  const results = JSON.parse(readFileSync(out, 'utf8')) as ScaleResults
  assert.equal(results.meta.mode, 'quick')
  assert.deepEqual(results.failures, [])
  const target = results.params.idle.connections
  assert.equal(results.limit.measured, target)
  assert.deepEqual(results.idle.map((r) => r.system), [...SCALE_SYSTEMS])
  for (const r of results.idle) {
    const what = `idle ${r.system}`
    assert.equal(r.held, target, `${what}: connections held`)
    assert.equal(r.lost, 0, `${what}: connections lost`)
    assert.equal(r.points.length, results.params.idle.shares.length, `${what}: memory points`)
    assert.equal(r.points[r.points.length - 1].connections, target, `${what}: last memory point`)
    // An idle connection costs between half a KiB and 100 KiB of heap here, whatever the system.
    assert.ok(r.heapPerConnection > 500 && r.heapPerConnection < 100_000, `${what}: heap per connection ${r.heapPerConnection}`)
    assert.ok(Number.isFinite(r.rssPerConnection), `${what}: RSS per connection`)
    assert.ok(r.setup.connections === target - results.params.idle.warmup, `${what}: measured setup connections`)
    assert.ok(r.setup.perSecond > 0 && r.setup.serverUsPerConnection > 0, `${what}: setup figures`)
    assert.ok(r.cpu.serverCpuPercent >= 0 && r.cpu.serverCpuPercent < 100, `${what}: idle CPU ${r.cpu.serverCpuPercent}`)
    assert.ok(r.cpu.ms >= results.params.idle.cpuWindowMs * 0.9, `${what}: CPU window length`)
    assert.ok(r.eld.maxMs > 0 && r.eld.maxMs >= r.eld.p99Ms, `${what}: event-loop figures`)
  }
  assert.deepEqual(results.broadcast.map((r) => r.system), [...SCALE_SYSTEMS])
  const b = results.params.broadcast
  for (const r of results.broadcast) {
    const what = `broadcast ${r.system}`
    assert.equal(r.expected, (b.warmup + b.count) * b.connections, `${what}: expected`)
    assert.equal(r.received, r.expected, `${what}: received`)
    assert.equal(r.missing, 0, `${what}: missing`)
    assert.equal(r.duplicates, 0, `${what}: duplicates`)
    assert.equal(r.other, 0, `${what}: stray messages`)
    assert.ok(r.latencyMs.p50 > 0, `${what}: p50`)
    assert.ok(r.latencyMs.p99 >= r.latencyMs.p50, `${what}: p99 ${r.latencyMs.p99} < p50 ${r.latencyMs.p50}`)
    assert.ok(r.latencyMs.max >= r.latencyMs.p99, `${what}: max`)
    assert.ok(r.fanOutMs.median > 0 && r.fanOutMs.max <= r.latencyMs.max * 1.01 + 0.01, `${what}: fan-out time`)
    assert.ok(r.loopPerSecond > 0 && r.endToEndPerSecond > 0 && r.serverUsPerDelivery > 0, `${what}: rates`)
  }
  assert.match(output, /broadcast: delivered exactly once/)
})
