import { test } from 'node:test'
import assert from 'node:assert/strict'
import { once } from 'node:events'
import { WebSocketServer, type WebSocket } from 'ws'
import { CloseCode, GracefulCloseManager, truncateReason } from '../lib/index'
import { closed, connect, rawPeer } from './helper'

async function plainServer (t: import('node:test').TestContext): Promise<{ url: string, next: () => Promise<WebSocket> }> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' })
  await once(wss, 'listening')
  t.after(() => new Promise<void>((resolve) => {
    for (const client of wss.clients) client.terminate()
    wss.close(() => resolve())
  }))
  const address = wss.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return {
    url: `ws://127.0.0.1:${address.port}`,
    next: async () => (await once(wss, 'connection'))[0] as WebSocket
  }
}

test('closeNormal, closeGoingAway and closeInternalError send their codes and finish cleanly', async (t) => {
  const { url, next } = await plainServer(t)
  const closer = new GracefulCloseManager({ timeout: 1000 })
  const cases: Array<[keyof GracefulCloseManager, number]> = [
    ['closeNormal', CloseCode.NORMAL],
    ['closeGoingAway', CloseCode.GOING_AWAY],
    ['closeInternalError', CloseCode.INTERNAL_ERROR]
  ]
  for (const [method, code] of cases) {
    const accepted = next()
    const client = await connect(t, url)
    const server = await accepted
    const seen = closed(client)
    const result = await (closer[method] as (ws: WebSocket, reason: string) => Promise<{ code: number, clean: boolean, reason: string }>).call(closer, server, `bye ${code}`)
    assert.equal(result.code, code)
    assert.equal(result.clean, true)
    assert.equal(result.reason, `bye ${code}`)
    assert.deepEqual(await seen, { code, reason: `bye ${code}` })
  }
  assert.deepEqual(closer.getStats(), { closing: 0, clean: 3, forced: 0 })
})

test('a peer that never answers the close frame is terminated after the timeout', async (t) => {
  const { url, next } = await plainServer(t)
  const closer = new GracefulCloseManager({ timeout: 200 })
  const accepted = next()
  const peer = await rawPeer(t, url, '/')
  const server = await accepted
  const started = Date.now()
  const pending = closer.close(server, { code: CloseCode.GOING_AWAY, reason: 'maintenance' })
  assert.equal(closer.isClosing(server), true)
  assert.equal(closer.getClosingCount(), 1)
  assert.equal(closer.close(server, { code: 1000 }), pending, 'a second close joins the first')
  const result = await pending
  const elapsed = Date.now() - started
  assert.equal(result.clean, false)
  assert.equal(result.code, CloseCode.GOING_AWAY)
  assert.ok(elapsed >= 190 && elapsed < 900, `took ${elapsed} ms`)
  assert.equal(server.readyState, server.CLOSED)
  assert.equal(closer.isClosing(server), false)
  assert.equal(closer.getClosingCount(), 0)
  assert.deepEqual(closer.getStats(), { closing: 0, clean: 0, forced: 1 })
  assert.equal(peer.destroyed || peer.readableEnded || true, true)
})

test('closeAll closes in parallel: five silent peers take one timeout, not five', async (t) => {
  const { url, next } = await plainServer(t)
  const closer = new GracefulCloseManager({ timeout: 300 })
  const sockets: WebSocket[] = []
  for (let i = 0; i < 5; i++) {
    const accepted = next()
    await rawPeer(t, url, '/')
    sockets.push(await accepted)
  }
  const started = Date.now()
  const results = await closer.closeAll(sockets, { code: CloseCode.SERVICE_RESTART, reason: 'deploy' })
  const elapsed = Date.now() - started
  assert.equal(results.length, 5)
  assert.ok(results.every((r) => !r.clean && r.code === 1012))
  assert.ok(elapsed < 300 + 700, `took ${elapsed} ms`)
})

test('reasons over 123 bytes are cut at a character boundary, not thrown', async (t) => {
  const { url, next } = await plainServer(t)
  const long = 'é'.repeat(100) // 200 bytes; a cut at byte 123 would split a character
  const cut = truncateReason(long)
  assert.ok(Buffer.byteLength(cut) <= 123)
  assert.equal(cut, 'é'.repeat(61))
  assert.equal(truncateReason('short'), 'short')
  assert.equal(Buffer.byteLength(truncateReason('x'.repeat(500))), 123)

  const closer = new GracefulCloseManager()
  const accepted = next()
  const client = await connect(t, url)
  const server = await accepted
  const seen = closed(client)
  const result = await closer.closeNormal(server, long)
  assert.equal(result.reason, cut)
  assert.deepEqual(await seen, { code: 1000, reason: cut })
})

test('codes RFC 6455 forbids are refused with a coded error; closed sockets resolve at once', async (t) => {
  const { url, next } = await plainServer(t)
  const closer = new GracefulCloseManager()
  const accepted = next()
  const client = await connect(t, url)
  const server = await accepted
  for (const code of [999, 1004, 1005, 1006, 1015, 2000, 5000, 1000.5]) {
    await assert.rejects(closer.close(server, { code }), { code: 'FST_WSM_CLOSE_CODE_INVALID' })
  }
  assert.equal(server.readyState, server.OPEN)
  const seen = closed(client)
  await closer.close(server, { code: 4000, reason: 'app code' })
  assert.equal((await seen).code, 4000)
  const again = await closer.close(server)
  assert.equal(again.durationMs, 0)
  assert.throws(() => new GracefulCloseManager({ timeout: 0 }), { code: 'FST_WSM_OPTION_INVALID' })
})
