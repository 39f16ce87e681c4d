import assert from 'node:assert/strict'
import { createHook } from 'node:async_hooks'
import { EventEmitter, once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { Socket } from 'node:net'
import { test, type TestContext } from 'node:test'
import { setImmediate as tick } from 'node:timers/promises'
import websocket from '@fastify/websocket'
import Fastify from 'fastify'
import WebSocket, { WebSocketServer, type ClientOptions, type ServerOptions } from 'ws'
import { HeartbeatManager, detectionBound, resolveHeartbeatOptions, type HeartbeatManagerStats } from '../lib/heartbeat'
import { within } from './helper'

const WAIT_MS = 3000
// Timer lateness allowed on top of a computed due time (generous: these tests share a small
// machine with other test files), and how early an event may run (the manager treats what is
// due within 1 ms as due; 1 more for clock rounding). Intervals are chosen so that a broken
// behaviour lands well outside these margins.
const LATE_MS = 100
const EARLY_MS = 2

/** Records when an event fires and waits, with a deadline, for the nth time. */
function recorder (emitter: EventEmitter, event: string): { times: number[], until: (n: number, what: string) => Promise<void> } {
  const times: number[] = []
  let waiter: { n: number, resolve: () => void } | null = null
  emitter.on(event, () => {
    times.push(performance.now())
    if (waiter !== null && times.length >= waiter.n) {
      waiter.resolve()
      waiter = null
    }
  })
  return {
    times,
    until (n, what) {
      if (times.length >= n) return Promise.resolve()
      return within(new Promise<void>((resolve) => { waiter = { n, resolve } }), WAIT_MS, what)
    }
  }
}

/** A timeout callback that records its calls and can be awaited. */
function onTimeout (): { cb: (ws: WebSocket) => void, calls: Array<{ ws: WebSocket, at: number }>, called: () => Promise<number> } {
  const calls: Array<{ ws: WebSocket, at: number }> = []
  let settle: (at: number) => void = () => {}
  const first = new Promise<number>((resolve) => { settle = resolve })
  return {
    calls,
    cb (ws) {
      const at = performance.now()
      calls.push({ ws, at })
      settle(at)
    },
    called: () => within(first, WAIT_MS, 'timeout callback')
  }
}

interface TestServer {
  url: string
  wss: WebSocketServer
  /** Opens a client and returns it with the server's side of the connection. */
  pair: (options?: ClientOptions) => Promise<{ client: WebSocket, server: WebSocket }>
}

/** A plain ws server on an ephemeral loopback port; every socket is ended in t.after. */
async function wsServer (t: TestContext, options: ServerOptions = {}): Promise<TestServer> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', ...options })
  await within(once(wss, 'listening'), WAIT_MS, 'listening')
  t.after(async () => {
    for (const ws of wss.clients) ws.terminate()
    await new Promise((resolve) => wss.close(resolve))
  })
  const { port } = wss.address() as { port: number }
  const url = `ws://127.0.0.1:${port}`
  return {
    url,
    wss,
    async pair (clientOptions = {}) {
      const accepted = once(wss, 'connection') as Promise<[WebSocket]>
      const client = new WebSocket(url, clientOptions)
      t.after(() => client.terminate())
      await within(once(client, 'open'), WAIT_MS, 'client open')
      const [server] = await within(accepted, WAIT_MS, 'server connection')
      return { client, server }
    }
  }
}

/** Counts live Timeout resources created from now on, unref'd ones included. */
function timerTracker (t: TestContext): () => Promise<number> {
  const live = new Set<number>()
  const hook = createHook({
    init (id, type) { if (type === 'Timeout') live.add(id) },
    destroy (id) { live.delete(id) }
  }).enable()
  t.after(() => { hook.disable() })
  return async () => {
    await tick() // destroy hooks are emitted asynchronously
    return live.size
  }
}

function refTimeouts (): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length
}

test('a silent peer is timed out within pingInterval + maxMissedPongs × pongTimeout, and not earlier', async (t) => {
  const { pair } = await wsServer(t)
  const { client, server } = await pair({ autoPong: false })
  const pings = recorder(client, 'ping')
  const timers = timerTracker(t)
  const pongListeners = server.listenerCount('pong')
  const closeListeners = server.listenerCount('close')

  // Without the retry at once this would take 300 + 3 × (100 + 300) ms rather than 600.
  const hb = new HeartbeatManager({ pingInterval: 300, pongTimeout: 100, maxMissedPongs: 3 })
  t.after(() => hb.stopAll())
  const bound = hb.detectionBound
  assert.equal(bound, 600)
  let trackedInCallback: boolean | null = null
  let listenersInCallback = -1
  const timedOut = onTimeout()
  const started = performance.now()
  assert.equal(hb.startHeartbeat(server, (ws) => {
    trackedInCallback = hb.isTracked(ws)
    listenersInCallback = ws.listenerCount('pong')
    timedOut.cb(ws)
  }), true)
  assert.equal(await timers(), 1)

  const at = await timedOut.called()
  const elapsed = at - started
  assert.ok(elapsed >= bound - EARLY_MS, `timed out after ${elapsed} ms, before the ${bound} ms bound`)
  assert.ok(elapsed <= bound + LATE_MS, `timed out after ${elapsed} ms, bound ${bound} ms`)
  assert.equal(timedOut.calls.length, 1)
  assert.equal(timedOut.calls[0].ws, server)
  // Untracked before the callback ran, so the callback may start it again or close it.
  assert.equal(trackedInCallback, false)
  assert.equal(listenersInCallback, pongListeners)

  // One ping, then one retry per miss but none after the last miss.
  assert.equal(pings.times.length, 3)
  assert.equal(hb.getHeartbeatStats(server), undefined)
  assert.equal(hb.isConnectionHealthy(server), false)
  assert.equal(server.listenerCount('pong'), pongListeners)
  assert.equal(server.listenerCount('close'), closeListeners)
  assert.equal(await timers(), 0)
  const stats = hb.getStats()
  assert.deepEqual(stats, {
    tracked: 0,
    healthy: 0,
    unhealthy: 0,
    averageLatency: null,
    pingsSent: 3,
    pongsReceived: 0,
    missedPongs: 3,
    timeouts: 1
  } satisfies HeartbeatManagerStats)
  assert.match(hb.getSummary(), /average latency n\/a/)
})

test('a responsive peer stays tracked and healthy across many intervals, with its latency', async (t) => {
  const { pair } = await wsServer(t)
  const { client, server } = await pair()
  const hb = new HeartbeatManager({ pingInterval: 60, pongTimeout: 50, maxMissedPongs: 2 })
  t.after(() => hb.stopAll())
  const timedOut = onTimeout()
  const started = performance.now()
  hb.startHeartbeat(server, timedOut.cb)
  const pings = recorder(client, 'ping')
  const pongs = recorder(server, 'pong')

  let first: ReturnType<HeartbeatManager['getHeartbeatStats']>
  server.once('pong', () => { first = hb.getHeartbeatStats(server) })
  await pongs.until(1, 'first pong')
  assert.ok(first !== undefined && typeof first.latency === 'number')

  await pongs.until(8, '8 pongs')
  // The manager's listener ran before ours: its figures include the 8th pong.
  const stats = hb.getHeartbeatStats(server)
  assert.ok(stats !== undefined)
  assert.equal(stats.pingsSent, 8)
  assert.equal(stats.pongsReceived, 8)
  assert.equal(pings.times.length, 8)
  assert.equal(stats.missedPongs, 0)
  assert.equal(hb.isConnectionHealthy(server), true)
  assert.ok(typeof stats.latency === 'number' && stats.latency >= 0 && stats.latency < 50, `latency ${stats.latency}`)
  assert.ok(stats.lastPingAt !== null && stats.lastPongAt !== null)
  assert.ok(stats.lastPingAt <= stats.lastPongAt)
  assert.ok(Math.abs(Date.now() - stats.lastPongAt) < 1000)

  // A ping every interval: each counted from when the previous one went out, so only the
  // timer's lateness (about 1 ms a round when idle, more under load) adds up.
  const elapsed = pings.times[7] - started
  assert.ok(elapsed >= 8 * 60 - EARLY_MS && elapsed <= 8 * 60 + 2 * LATE_MS, `8th ping after ${elapsed} ms`)
  assert.equal(timedOut.calls.length, 0)
  const all = hb.getStats()
  assert.equal(all.tracked, 1)
  assert.equal(all.healthy, 1)
  assert.equal(all.averageLatency, stats.latency)
})

test('a peer that misses two pongs and then answers is not timed out, and is healthy again', async (t) => {
  const { pair } = await wsServer(t)
  const { client, server } = await pair({ autoPong: false })
  const hb = new HeartbeatManager({ pingInterval: 300, pongTimeout: 100, maxMissedPongs: 3 })
  t.after(() => hb.stopAll())
  const timedOut = onTimeout()
  const started = performance.now()
  hb.startHeartbeat(server, timedOut.cb)

  // What the server's manager thought when each ping reached the client.
  const seen: Array<{ missed: number | undefined, healthy: boolean }> = []
  client.on('ping', () => {
    seen.push({ missed: hb.getHeartbeatStats(server)?.missedPongs, healthy: hb.isConnectionHealthy(server) })
    if (seen.length >= 3) client.pong()
  })
  const pongs = recorder(server, 'pong')

  await pongs.until(1, 'the pong to the third ping')
  assert.deepEqual(seen.slice(0, 3), [
    { missed: 0, healthy: true },
    { missed: 1, healthy: false },
    { missed: 2, healthy: false }
  ])
  let stats = hb.getHeartbeatStats(server)
  assert.equal(stats?.missedPongs, 0)
  assert.equal(hb.isConnectionHealthy(server), true)
  // A pong after a miss may answer an earlier ping, so it gives no latency sample.
  assert.equal(stats?.latency, null)

  // The next round starts one interval after the answered ping: past the 600 ms at which a
  // peer that stayed silent would have been timed out.
  await pongs.until(2, 'the pong to the fourth ping')
  assert.ok(performance.now() - started > hb.detectionBound)
  assert.equal(timedOut.calls.length, 0)
  stats = hb.getHeartbeatStats(server)
  assert.equal(stats?.missedPongs, 0)
  assert.equal(typeof stats?.latency, 'number')
  assert.equal(stats?.pingsSent, 4)
  assert.equal(stats?.pongsReceived, 2)
  assert.deepEqual({ ...hb.getStats(), averageLatency: null }, {
    tracked: 1, healthy: 1, unhealthy: 0, averageLatency: null, pingsSent: 4, pongsReceived: 2, missedPongs: 2, timeouts: 0
  })
})

test('an unsolicited pong resets the miss count too', async (t) => {
  const { pair } = await wsServer(t)
  const { client, server } = await pair({ autoPong: false })
  const hb = new HeartbeatManager({ pingInterval: 300, pongTimeout: 150, maxMissedPongs: 2 })
  t.after(() => hb.stopAll())
  const timedOut = onTimeout()
  hb.startHeartbeat(server, timedOut.cb)
  const pings = recorder(client, 'ping')
  const pongs = recorder(server, 'pong')

  // Before any ping: counted, and nothing else changes.
  client.pong()
  await pongs.until(1, 'the unsolicited pong')
  assert.deepEqual({ ...hb.getHeartbeatStats(server), lastPongAt: null }, {
    latency: null, lastPingAt: null, lastPongAt: null, missedPongs: 0, pingsSent: 0, pongsReceived: 1
  })

  await pings.until(2, 'the retry after the first miss')
  assert.equal(hb.getHeartbeatStats(server)?.missedPongs, 1)
  client.pong('unsolicited')
  await pongs.until(2, 'the pong')
  assert.equal(hb.getHeartbeatStats(server)?.missedPongs, 0)
  assert.equal(hb.isConnectionHealthy(server), true)
  assert.equal(timedOut.calls.length, 0)
})

test('after a miss the next ping goes out at once, not a whole interval later', async (t) => {
  const { pair } = await wsServer(t)
  const { client, server } = await pair({ autoPong: false })
  // When the server sent each ping, to check the peer got its whole pongTimeout to answer.
  const sent: number[] = []
  const ping = server.ping.bind(server)
  server.ping = (...args: Parameters<WebSocket['ping']>): void => {
    sent.push(performance.now())
    ping(...args)
  }
  const hb = new HeartbeatManager({ pingInterval: 300, pongTimeout: 60, maxMissedPongs: 3 })
  t.after(() => hb.stopAll())
  const timedOut = onTimeout()
  const pings = recorder(client, 'ping')
  const started = performance.now()
  hb.startHeartbeat(server, timedOut.cb)

  await pings.until(3, 'three pings')
  const [p1, p2, p3] = pings.times
  assert.ok(p1 - started >= 300 - EARLY_MS && p1 - started <= 300 + LATE_MS, `first ping after ${p1 - started} ms`)
  // On the client, each retry arrives about one pongTimeout after the previous ping, far
  // sooner than the 300 ms interval that a retry on the regular schedule would take.
  for (const gap of [p2 - p1, p3 - p2]) {
    assert.ok(gap <= 60 + LATE_MS, `retry ${gap} ms after the previous ping, pongTimeout 60, pingInterval 300`)
  }
  assert.equal(sent.length, 3)
  for (const gap of [sent[1] - sent[0], sent[2] - sent[1]]) {
    assert.ok(gap >= 60 - EARLY_MS, `retry sent ${gap} ms after the previous ping, before the pong timeout`)
  }
  await timedOut.called()
})

test('the server answers a client ping with a pong, and the manager works on client sockets', async (t) => {
  // A plain ws server answers pings by itself (autoPong), as does @fastify/websocket's.
  const plain = await wsServer(t)
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(websocket)
  app.get('/ws', { websocket: true }, () => {})
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address() as { port: number }
  const fastifyClient = new WebSocket(`ws://127.0.0.1:${port}/ws`)
  t.after(() => fastifyClient.terminate())
  await within(once(fastifyClient, 'open'), WAIT_MS, 'fastify client open')
  const { client } = await plain.pair()

  const hb = new HeartbeatManager({ pingInterval: 100, pongTimeout: 60, maxMissedPongs: 2 })
  t.after(() => hb.stopAll())
  const timedOut = onTimeout()
  const clients = [client, fastifyClient]
  const pongs = clients.map((ws) => recorder(ws, 'pong'))
  for (const ws of clients) hb.startHeartbeat(ws, timedOut.cb)
  await Promise.all(pongs.map((p) => p.until(3, 'three pongs from the server')))
  for (const ws of clients) {
    const stats = hb.getHeartbeatStats(ws)
    assert.equal(stats?.pongsReceived, 3)
    assert.equal(typeof stats?.latency, 'number')
    assert.equal(hb.isConnectionHealthy(ws), true)
  }
  assert.equal(timedOut.calls.length, 0)

  // Control: a server that does not answer pings gets its client's heartbeat timed out.
  const mute = await wsServer(t, { autoPong: false })
  const { client: muted } = await mute.pair()
  const started = performance.now()
  hb.startHeartbeat(muted, timedOut.cb)
  const at = await timedOut.called()
  assert.equal(timedOut.calls[0].ws, muted)
  assert.ok(at - started >= 220 - EARLY_MS && at - started <= 220 + LATE_MS, `timed out after ${at - started} ms`)
  assert.equal(hb.getStats().tracked, 2)
})

test('getStats, getAllHeartbeatStats and getSummary count what happened', async (t) => {
  const { pair } = await wsServer(t)
  const a = await pair()
  const b = await pair({ autoPong: false })
  const hb = new HeartbeatManager({ pingInterval: 200, pongTimeout: 100, maxMissedPongs: 2 })
  t.after(() => hb.stopAll())
  const timedOut = onTimeout()
  hb.startHeartbeat(a.server, timedOut.cb)
  hb.startHeartbeat(b.server, timedOut.cb)
  assert.deepEqual(hb.getStats(), {
    tracked: 2, healthy: 2, unhealthy: 0, averageLatency: null, pingsSent: 0, pongsReceived: 0, missedPongs: 0, timeouts: 0
  })

  // The retry reaching b's client means b's manager state holds one miss.
  let during: HeartbeatManagerStats | undefined
  const bPings = recorder(b.client, 'ping')
  b.client.on('ping', () => { if (bPings.times.length === 2) during = hb.getStats() })
  await bPings.until(2, 'the retry to b')
  assert.ok(during !== undefined)
  assert.equal(during.tracked, 2)
  assert.equal(during.healthy, 1)
  assert.equal(during.unhealthy, 1)
  assert.equal(during.missedPongs, 1)

  await timedOut.called()
  assert.equal(timedOut.calls[0].ws, b.server)
  const statsA = hb.getHeartbeatStats(a.server)
  assert.ok(statsA !== undefined && statsA.latency !== null)
  const stats = hb.getStats()
  assert.deepEqual(stats, {
    tracked: 1,
    healthy: 1,
    unhealthy: 0,
    averageLatency: statsA.latency,
    pingsSent: statsA.pingsSent + 2,
    pongsReceived: statsA.pongsReceived,
    missedPongs: 2,
    timeouts: 1
  })
  const all = hb.getAllHeartbeatStats()
  assert.ok(all instanceof Map)
  assert.deepEqual([...all.keys()], [a.server])
  assert.deepEqual(all.get(a.server), statsA)

  const summary = hb.getSummary()
  assert.equal(summary.includes('\n'), false)
  assert.match(summary, /\b1 tracked\b/)
  assert.match(summary, /\b1 timeouts\b/)
  assert.match(summary, /\b2 missed\b/)
})

test('stopHeartbeat, close and stopAll leave no timer and no listener behind', async (t) => {
  const { pair } = await wsServer(t)
  const one = await pair()
  const two = await pair()
  const three = await pair()
  const sockets = [one.server, two.server, three.server]
  const onePongs = recorder(one.server, 'pong')
  const base = sockets.map((ws) => ({ pong: ws.listenerCount('pong'), close: ws.listenerCount('close') }))
  const listeners = (i: number): { pong: number, close: number } =>
    ({ pong: sockets[i].listenerCount('pong'), close: sockets[i].listenerCount('close') })
  const timers = timerTracker(t)
  const refTimers = refTimeouts()

  const hb = new HeartbeatManager({ pingInterval: 50, pongTimeout: 40 })
  t.after(() => hb.stopAll())
  const timedOut = onTimeout()
  assert.equal(await timers(), 0, 'no timer before a socket is tracked')
  for (const ws of sockets) assert.equal(hb.startHeartbeat(ws, timedOut.cb), true)
  // Starting twice does not track twice.
  assert.equal(hb.startHeartbeat(one.server, timedOut.cb), false)
  assert.deepEqual(listeners(0), { pong: base[0].pong + 1, close: base[0].close + 1 })
  assert.equal(hb.getStats().tracked, 3)
  // One shared timer for all three sockets; unref'd, so it keeps no process alive.
  assert.equal(await timers(), 1)
  assert.equal(refTimeouts(), refTimers)

  await onePongs.until(1, 'a pong')
  assert.equal(hb.getHeartbeatStats(one.server)?.pongsReceived, 1)

  assert.equal(hb.stopHeartbeat(one.server), true)
  assert.equal(hb.stopHeartbeat(one.server), false, 'idempotent')
  assert.deepEqual(listeners(0), base[0])
  assert.equal(hb.getHeartbeatStats(one.server), undefined)

  // A socket that closes is untracked by the manager's own 'close' listener, which was added
  // before ours and so has run when ours fires.
  two.client.terminate()
  await within(once(two.server, 'close'), WAIT_MS, 'close')
  assert.equal(hb.isTracked(two.server), false)
  assert.deepEqual(listeners(1), base[1])
  assert.equal(await timers(), 1, 'the third socket still needs the timer')

  hb.stopAll()
  assert.deepEqual(listeners(2), base[2])
  assert.equal(hb.getStats().tracked, 0)
  assert.equal(await timers(), 0)

  // The last tracked socket closing clears the timer as well.
  hb.startHeartbeat(three.server, timedOut.cb)
  assert.equal(await timers(), 1)
  three.client.terminate()
  await within(once(three.server, 'close'), WAIT_MS, 'close')
  assert.deepEqual(listeners(2), base[2])
  assert.equal(await timers(), 0)
  assert.equal(refTimeouts(), refTimers)
  assert.equal(hb.startHeartbeat(three.server, timedOut.cb), false, 'a closed socket is not tracked')
  assert.equal(timedOut.calls.length, 0)
})

test('per-socket overrides are honoured, each socket on its own schedule', async (t) => {
  const { pair } = await wsServer(t)
  const hb = new HeartbeatManager({ pingInterval: 5000, pongTimeout: 1000 })
  t.after(() => hb.stopAll())
  const overrides = [
    { pingInterval: 300, pongTimeout: 100, maxMissedPongs: 2 },
    { pingInterval: 150, pongTimeout: 50, maxMissedPongs: 1 },
    { pingInterval: 100, pongTimeout: 20, maxMissedPongs: 3 }
  ]
  const peers: Array<{ client: WebSocket, server: WebSocket }> = []
  for (let i = 0; i < overrides.length; i++) peers.push(await pair({ autoPong: false }))
  const untouched = await pair({ autoPong: false })
  const untouchedPings = recorder(untouched.client, 'ping')
  hb.startHeartbeat(untouched.server, () => assert.fail('default settings timed out'))

  const runs = overrides.map((o, i) => {
    const timedOut = onTimeout()
    const started = performance.now()
    hb.startHeartbeat(peers[i].server, timedOut.cb, o)
    return { bound: detectionBound(o), started, timedOut }
  })
  for (const { bound, started, timedOut } of runs) {
    const elapsed = await timedOut.called() - started
    assert.ok(elapsed >= bound - EARLY_MS && elapsed <= bound + LATE_MS, `timed out after ${elapsed} ms, bound ${bound} ms`)
  }
  assert.equal(untouchedPings.times.length, 0)
  assert.equal(hb.isConnectionHealthy(untouched.server), true)
  assert.equal(hb.getStats().timeouts, 3)
})

test('invalid options throw FST_WSM_OPTION_INVALID', async (t) => {
  const code = { code: 'FST_WSM_OPTION_INVALID' }
  const bad: unknown[] = [
    { pingInterval: 9 },
    { pingInterval: 100.5 },
    { pingInterval: '100' },
    { pingInterval: Number.NaN },
    { pingInterval: 86_400_001 },
    { pongTimeout: 4 },
    { pingInterval: 100, pongTimeout: 100 },
    { pingInterval: 100, pongTimeout: 150 },
    { pongTimeout: null },
    { maxMissedPongs: 0 },
    { maxMissedPongs: 101 },
    { maxMissedPongs: 2.5 },
    { maxDetectionTime: 0 },
    { maxDetectionTime: '45000' },
    { pingIntervall: 100 },
    null,
    []
  ]
  for (const options of bad) {
    assert.throws(() => new HeartbeatManager(options as never), code, JSON.stringify(options))
  }

  // The detection bound is checked against maxDetectionTime: 30000 + 3 × 5000 with defaults.
  assert.throws(() => new HeartbeatManager({ maxDetectionTime: 44_999 }), code)
  assert.equal(new HeartbeatManager({ maxDetectionTime: 45_000 }).detectionBound, 45_000)
  assert.throws(() => new HeartbeatManager({ pingInterval: 1000, pongTimeout: 100, maxMissedPongs: 5, maxDetectionTime: 1499 }), code)
  assert.deepEqual(new HeartbeatManager().settings, { pingInterval: 30_000, pongTimeout: 5_000, maxMissedPongs: 3 })
  assert.deepEqual(resolveHeartbeatOptions({ pingInterval: 10, pongTimeout: 5, maxMissedPongs: 100 }), {
    pingInterval: 10, pongTimeout: 5, maxMissedPongs: 100, maxDetectionTime: null
  })
  assert.throws(() => resolveHeartbeatOptions({ pingInterval: 1 }, 'heartbeat.'), code)

  // Overrides are validated the same way, on top of the manager's settings, and a socket
  // whose overrides are rejected is not tracked.
  const { pair } = await wsServer(t)
  const { server } = await pair()
  const hb = new HeartbeatManager({ pingInterval: 1000, pongTimeout: 100, maxMissedPongs: 3, maxDetectionTime: 1300 })
  t.after(() => hb.stopAll())
  const listeners = server.listenerCount('pong')
  const noop = (): void => {}
  for (const overrides of [{ maxMissedPongs: 4 }, { pingInterval: 100 }, { pongTimeout: 0 }, { maxMissedPongs: 0 }, { bogus: 1 }]) {
    assert.throws(() => hb.startHeartbeat(server, noop, overrides as never), code, JSON.stringify(overrides))
  }
  assert.equal(hb.isTracked(server), false)
  assert.equal(server.listenerCount('pong'), listeners)
  assert.equal(hb.startHeartbeat(server, noop, { pingInterval: 500, maxMissedPongs: 4 }), true)
})

test('a socket that is not open gets no ping and no miss', async (t) => {
  // An HTTP server that takes the upgrade and never answers keeps the client CONNECTING.
  const held: Socket[] = []
  const http: Server = createServer()
  http.on('upgrade', (_req, socket: Socket) => { held.push(socket) })
  http.listen(0, '127.0.0.1')
  await within(once(http, 'listening'), WAIT_MS, 'listening')
  t.after(() => {
    for (const socket of held) socket.destroy()
    http.close()
  })
  const { port } = http.address() as { port: number }
  const connecting = new WebSocket(`ws://127.0.0.1:${port}`)
  connecting.on('error', () => {}) // terminate() while connecting reports an aborted handshake
  t.after(() => connecting.terminate())

  // An open socket on the same schedule serves as the clock.
  const { pair } = await wsServer(t)
  const { client: clock } = await pair()
  const hb = new HeartbeatManager({ pingInterval: 50, pongTimeout: 40, maxMissedPongs: 3 })
  t.after(() => hb.stopAll())
  const timedOut = onTimeout()
  const clockPongs = recorder(clock, 'pong')
  // Without the readyState check, ws.ping() would throw from the timer for this socket.
  assert.equal(hb.startHeartbeat(connecting, timedOut.cb), true)
  hb.startHeartbeat(clock, timedOut.cb)
  await clockPongs.until(4, 'four rounds')
  assert.equal(connecting.readyState, WebSocket.CONNECTING)
  assert.deepEqual(hb.getHeartbeatStats(connecting), {
    latency: null, lastPingAt: null, lastPongAt: null, missedPongs: 0, pingsSent: 0, pongsReceived: 0
  })
  assert.equal(timedOut.calls.length, 0)

  // A client whose handshake fails emits 'close' and so is untracked as well.
  // (events.once would reject on that 'error', so wait for 'close' by hand.)
  const closed = new Promise((resolve) => connecting.once('close', resolve))
  connecting.terminate()
  await within(closed, WAIT_MS, 'close')
  assert.equal(hb.isTracked(connecting), false)
  assert.equal(connecting.listenerCount('pong'), 0)
})

test('several managers track one socket independently', async (t) => {
  const { pair } = await wsServer(t)
  const { server } = await pair()
  const first = new HeartbeatManager({ pingInterval: 50, pongTimeout: 25 })
  const second = new HeartbeatManager({ pingInterval: 70, pongTimeout: 25 })
  t.after(() => { first.stopAll(); second.stopAll() })
  const base = server.listenerCount('pong')
  const noop = (): void => {}
  first.startHeartbeat(server, noop)
  second.startHeartbeat(server, noop)
  assert.equal(server.listenerCount('pong'), base + 2)
  first.stopHeartbeat(server)
  assert.equal(server.listenerCount('pong'), base + 1)
  assert.equal(first.isTracked(server), false)
  await recorder(server, 'pong').until(1, 'a pong to the second manager')
  assert.equal(second.getHeartbeatStats(server)?.pingsSent, 1)
  assert.equal(second.isConnectionHealthy(server), true)
})

test('a pong listener that runs first may stop the heartbeat', async (t) => {
  const { pair } = await wsServer(t)
  const { server } = await pair()
  const hb = new HeartbeatManager({ pingInterval: 50, pongTimeout: 40 })
  t.after(() => hb.stopAll())
  const pongs = recorder(server, 'pong')
  server.once('pong', () => hb.stopHeartbeat(server))
  hb.startHeartbeat(server, () => assert.fail('timed out'))
  await pongs.until(1, 'a pong')
  assert.equal(hb.isTracked(server), false)
  assert.equal(hb.getStats().pongsReceived, 0)
})

test('a socket stuck in CLOSING with a silent peer is still timed out, with no ping sent on it', async (t) => {
  const { pair } = await wsServer(t)
  const { client, server } = await pair({ autoPong: false })
  const hb = new HeartbeatManager({ pingInterval: 100, pongTimeout: 50, maxMissedPongs: 3 })
  t.after(() => hb.stopAll())
  const sent: number[] = []
  const ping = server.ping.bind(server)
  server.ping = (...args: Parameters<WebSocket['ping']>): void => {
    sent.push(performance.now())
    ping(...args)
  }
  const timedOut = onTimeout()
  const started = performance.now()
  hb.startHeartbeat(server, timedOut.cb)
  // Once the first ping is out, the client stops reading, so the server's close handshake
  // cannot finish and ws keeps the socket CLOSING (its close timeout is 30 s).
  await recorder(client, 'ping').until(1, 'the first ping')
  client.pause()
  server.close()
  assert.equal(server.readyState, WebSocket.CLOSING)
  const at = await timedOut.called()
  assert.equal(server.readyState, WebSocket.CLOSING)
  assert.equal(sent.length, 1)
  assert.ok(at - started >= hb.detectionBound - EARLY_MS && at - started <= hb.detectionBound + LATE_MS, `timed out after ${at - started} ms`)
  assert.equal(hb.getStats().missedPongs, 3)
  server.terminate()
})

test('many silent sockets started together are all timed out within the bound', async (t) => {
  const { pair } = await wsServer(t)
  const n = 50
  const peers: Array<{ client: WebSocket, server: WebSocket }> = []
  for (let i = 0; i < n; i++) peers.push(await pair({ autoPong: false }))
  const timers = timerTracker(t)
  const hb = new HeartbeatManager({ pingInterval: 200, pongTimeout: 50, maxMissedPongs: 2 })
  t.after(() => hb.stopAll())
  const times: number[] = []
  let done: () => void = () => {}
  const all = new Promise<void>((resolve) => { done = resolve })
  const started = performance.now()
  for (const { server } of peers) {
    hb.startHeartbeat(server, () => {
      times.push(performance.now() - started)
      if (times.length === n) done()
    })
  }
  assert.equal(await timers(), 1)
  await within(all, WAIT_MS, 'every timeout')
  const bound = hb.detectionBound
  assert.ok(Math.min(...times) >= bound - EARLY_MS, `earliest ${Math.min(...times)} ms`)
  assert.ok(Math.max(...times) <= bound + LATE_MS, `latest ${Math.max(...times)} ms`)
  assert.equal(hb.getStats().pingsSent, 2 * n)
  assert.equal(await timers(), 0)
})

test('a timeout callback may throw or track its socket again without disturbing the others', async (t) => {
  const { pair } = await wsServer(t)
  const thrower = await pair({ autoPong: false })
  const again = await pair({ autoPong: false })
  const other = await pair({ autoPong: false })
  const hb = new HeartbeatManager({ pingInterval: 100, pongTimeout: 50, maxMissedPongs: 1 })
  t.after(() => hb.stopAll())

  // The manager rethrows a callback's error on the next tick, as a throwing listener would;
  // catch it there instead of letting it fail the run.
  const boom = new Error('callback failed')
  const rethrown: unknown[] = []
  const nextTick = process.nextTick
  t.mock.method(process, 'nextTick', function (this: NodeJS.Process, fn: (...args: unknown[]) => void, ...args: unknown[]) {
    if (args[0] === boom) rethrown.push(boom)
    else nextTick.call(this, fn, ...args)
  })

  hb.startHeartbeat(thrower.server, () => { throw boom })
  // Untracked before its callback runs, so the callback can start it again.
  const second = onTimeout()
  hb.startHeartbeat(again.server, (ws) => {
    assert.equal(hb.startHeartbeat(ws, second.cb), true)
  })
  const third = onTimeout()
  const started = performance.now()
  hb.startHeartbeat(other.server, third.cb)

  await third.called()
  const at = await second.called()
  t.mock.restoreAll()
  assert.deepEqual(rethrown, [boom])
  assert.equal(hb.isTracked(thrower.server), false)
  const bound = hb.detectionBound
  assert.ok(at - started >= 2 * bound - EARLY_MS && at - started <= 2 * bound + LATE_MS, `second timeout after ${at - started} ms`)
  assert.equal(hb.getStats().timeouts, 4)
  assert.equal(hb.getStats().tracked, 0)
})

// A stand-in socket: the manager needs only readyState, ping() and listeners.
class FakeSocket extends EventEmitter {
  readyState = 1
  readonly pings: number[] = []
  constructor (private readonly turn: () => number) { super() }
  ping (): void { this.pings.push(this.turn()) }
}

test('pings due close together share a wakeup, and no turn of the event loop sends more than 100', async (t) => {
  let turn = 0
  let spinning = true
  const spin = (): void => { turn++; if (spinning) setImmediate(spin) }
  setImmediate(spin)
  const hb = new HeartbeatManager({ pingInterval: 4000, pongTimeout: 100, maxMissedPongs: 3 })
  t.after(() => { spinning = false; hb.stopAll() })
  // Warm the code up first, so that starting 1,000 sockets fits in the window below.
  for (let i = 0; i < 2000; i++) {
    const warm = new FakeSocket(() => turn)
    hb.startHeartbeat(warm as never, () => {})
    hb.stopHeartbeat(warm as never)
  }
  const sockets: FakeSocket[] = []
  const startBatch = (): void => {
    for (let i = 0; i < 500; i++) {
      const socket = new FakeSocket(() => turn)
      sockets.push(socket)
      hb.startHeartbeat(socket as never, () => {})
    }
  }
  // Two batches 15 ms apart: the second falls due within 2% (80 ms) of the first.
  const started = performance.now()
  startBatch()
  await new Promise((resolve) => setTimeout(resolve, 15))
  startBatch()
  const spread = performance.now() - started
  assert.ok(spread < 80, `batches started ${spread} ms apart`)
  const deadline = Date.now() + 6000
  while (sockets.some((s) => s.pings.length === 0) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10))
  const perTurn = new Map<number, number>()
  for (const s of sockets) {
    assert.equal(s.pings.length, 1)
    perTurn.set(s.pings[0], (perTurn.get(s.pings[0]) ?? 0) + 1)
  }
  assert.ok(Math.max(...perTurn.values()) <= 100, `at most 100 pings in one turn, got ${Math.max(...perTurn.values())}`)
  assert.ok(perTurn.size <= 20, `1,000 pings in ${perTurn.size} turns`)
})
