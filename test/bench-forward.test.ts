import assert from 'node:assert/strict'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { FORWARDERS, PATHS, type ForwardResults } from '../bench/forward-report'
import type { ServerStats } from '../bench/forward-server'
import { runScript } from './helper'

// The forwarding benchmark (bench/forward.ts) in its quick form, against a real sshd on
// loopback: every path moved exactly the bytes sent each way, the figures mean something, and
// a session through a warm pool opens faster than one that needs its own SSH connection.
test('the quick forwarding benchmark moves every byte on every path and times session opens', { timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'wsm-bench-forward-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  const out = join(dir, 'forward.json')
  const { code, output } = await runScript(t, join(__dirname, '..', 'bench', 'forward.ts'), ['--quick', '--no-md', '--out', out])
  assert.equal(code, 0, `the benchmark failed:\n${output}`)

  const results = JSON.parse(readFileSync(out, 'utf8')) as ForwardResults
  assert.equal(results.meta.mode, 'quick')
  assert.deepEqual(results.problems, [])
  const { bytes, runs, opens } = results.params
  assert.ok(bytes >= 1024 * 1024, `transfers of ${bytes} bytes`)
  for (const direction of ['download', 'upload'] as const) {
    for (const path of PATHS) {
      const done = results.transfers.filter((r) => r.path === path && r.direction === direction)
      assert.equal(done.length, runs, `${direction} ${path}: runs`)
      for (const run of done) {
        assert.equal(run.bytes, bytes, `${direction} ${path}: bytes moved`)
        assert.ok(run.mbps > 0 && Number.isFinite(run.mbps), `${direction} ${path}: throughput ${run.mbps}`)
        // The Node server is measured in µs: it did work exactly when it forwarded.
        if (FORWARDERS[path].includes('server')) assert.ok(run.cpuUs.server > 0, `${direction} ${path}: server CPU`)
      }
    }
  }

  // The server's own counters agree with the clients (uploads are the only client bytes).
  const server = results.server as ServerStats
  assert.deepEqual(server.failed, {})
  assert.equal(server.bytesUp.tcp, bytes * runs)
  assert.equal(server.bytesUp['ssh-tunnel'], bytes * runs)
  // The shared pool connected once: every warm session reused that SSH connection.
  assert.equal(server.poolOpened, 1)

  const kinds = new Map(results.opens.map((o) => [o.kind, o]))
  assert.deepEqual([...kinds.keys()].sort(), ['direct', 'ssh -L', 'ssh -W', 'sshTunnel fresh', 'sshTunnel warm', 'tcpTunnel'])
  for (const o of results.opens) {
    assert.equal(o.ms.length, opens, `${o.kind}: openings`)
    assert.ok(o.median > 0 && o.p90 >= o.median, `${o.kind}: median ${o.median}, p90 ${o.p90}`)
  }
  const warm = kinds.get('sshTunnel warm')?.median as number
  const fresh = kinds.get('sshTunnel fresh')?.median as number
  assert.ok(warm < fresh, `warm pool ${warm} ms, fresh pool ${fresh} ms`)
  assert.match(output, /open sshTunnel fresh/)
})
