// The idle sweeper (lib/idle.ts) on its own: due connections close within one interval, an
// active one is looked at about once per idle timeout rather than once per interval, closed
// ones are forgotten at once. The plugin-level behaviour (close codes, per-route timeouts)
// is in test/liveness.test.ts.

import assert from 'node:assert/strict'
import { setTimeout as delay } from 'node:timers/promises'
import { test } from 'node:test'
import { IdleSweeper } from '../lib/idle'

class Fake {
  state = 'open'
  readonly settings: { idleTimeout: number }
  #last = Date.now()
  /** How often the sweeper read lastActivityAt: one per look. */
  reads = 0

  constructor (idleTimeout: number) {
    this.settings = { idleTimeout }
  }

  get lastActivityAt (): number {
    this.reads++
    return this.#last
  }

  touch (): void {
    this.#last = Date.now()
  }
}

test('an idle connection is reported within one interval of its due time, with its idle time', async (t) => {
  const closed: Array<{ at: number, idleMs: number }> = []
  const sweeper = new IdleSweeper<Fake>(20, (c, idleMs) => { c.state = 'closing'; closed.push({ at: Date.now(), idleMs }) })
  t.after(() => sweeper.stop())
  const start = Date.now()
  const c = new Fake(200)
  sweeper.add(c)
  while (closed.length === 0 && Date.now() - start < 2000) await delay(5)
  assert.equal(closed.length, 1)
  const [{ at, idleMs }] = closed
  assert.ok(at - start >= 200, `closed after ${at - start} ms, before its 200 ms`)
  assert.ok(at - start <= 200 + 20 + 60, `closed after ${at - start} ms`)
  assert.ok(idleMs >= 200)
  assert.equal(sweeper.size, 0)
})

test('an active connection is looked at about once per idle timeout, not once per interval', async (t) => {
  const sweeper = new IdleSweeper<Fake>(10, () => assert.fail('an active connection was reported idle'))
  t.after(() => sweeper.stop())
  const many = Array.from({ length: 500 }, () => new Fake(150))
  for (const c of many) sweeper.add(c)
  const reads0 = many.map((c) => c.reads)
  const start = Date.now()
  // 600 ms of activity every 50 ms: 60 intervals, 4 idle timeouts.
  while (Date.now() - start < 600) {
    for (const c of many) c.touch()
    await delay(50)
  }
  const looks = many.reduce((n, c, i) => n + c.reads - reads0[i], 0) / many.length
  // A pass over every connection every interval would look 60 times; due-only, about 4 to 5.
  assert.ok(looks >= 2 && looks <= 10, `${looks} looks per connection in 600 ms`)
  assert.equal(sweeper.size, 500)
})

test('a closed or deleted connection is forgotten and never reported', async (t) => {
  const reported: Fake[] = []
  const sweeper = new IdleSweeper<Fake>(10, (c) => reported.push(c))
  t.after(() => sweeper.stop())
  const deleted = new Fake(50)
  const closing = new Fake(50)
  const idle = new Fake(50)
  for (const c of [deleted, closing, idle]) sweeper.add(c)
  sweeper.add(idle) // twice: still one entry
  assert.equal(sweeper.size, 3)
  sweeper.delete(deleted)
  closing.state = 'closing'
  await delay(200)
  assert.deepEqual(reported, [idle])
  assert.equal(sweeper.size, 0)
})

test('a connection without an idle timeout is not tracked', (t) => {
  const sweeper = new IdleSweeper<Fake>(10, () => assert.fail('reported'))
  t.after(() => sweeper.stop())
  sweeper.add(new Fake(0))
  assert.equal(sweeper.size, 0)
})

test('a late timer still handles every tick it missed', async (t) => {
  const reported: Fake[] = []
  const sweeper = new IdleSweeper<Fake>(10, (c) => { c.state = 'closing'; reported.push(c) })
  t.after(() => sweeper.stop())
  const a = new Fake(30)
  const b = new Fake(60)
  sweeper.add(a)
  sweeper.add(b)
  // Block the event loop past both due times: the next run handles all the ticks in between.
  const until = Date.now() + 150
  while (Date.now() < until) { /* busy */ }
  await delay(40)
  assert.deepEqual(new Set(reported), new Set([a, b]))
})
