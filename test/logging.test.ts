import { test } from 'node:test'
import assert from 'node:assert/strict'
import { build, closed, connect, listen, logCapture, nextMessage, rawPeer, waitFor } from './helper'

test('open and close are logged at info, once each, with the connection bindings and counters', async (t) => {
  const logs = logCapture()
  const app = await build(t, { auth: false }, { fastify: { logger: { level: 'info', stream: logs.stream } } })
  app.get('/ws', { websocket: true }, (socket) => {
    socket.on('message', (data) => socket.send(data))
  })
  const url = await listen(app)
  const client = await connect(t, url + '/ws')
  for (let i = 0; i < 5; i++) {
    client.send('12345')
    await nextMessage(client)
  }
  const connection = [...app.wsManager.connections][0]
  client.close(1000, 'client done')
  await waitFor(() => logs.lines.some((l) => l.msg === 'connection closed'))

  const opened = logs.lines.filter((l) => l.msg === 'connection opened')
  const closedLines = logs.lines.filter((l) => l.msg === 'connection closed')
  assert.equal(opened.length, 1)
  assert.equal(closedLines.length, 1)
  assert.equal(opened[0].level, 30)
  assert.equal(opened[0].connectionId, connection.id)
  assert.equal(opened[0].userId, null)
  assert.equal(opened[0].route, '/ws')
  assert.equal(opened[0].remoteAddress, '127.0.0.1')
  const c = closedLines[0]
  assert.equal(c.level, 30)
  assert.equal(c.connectionId, connection.id)
  assert.equal(c.code, 1000)
  assert.equal(c.reason, 'client done')
  assert.equal(c.initiatedBy, 'client')
  assert.equal(typeof c.durationMs, 'number')
  assert.equal(c.messagesIn, 5)
  assert.equal(c.messagesOut, 5)
  assert.equal(c.bytesIn, 25)
  assert.equal(c.bytesOut, 25)
  // Nothing per message at info.
  assert.equal(logs.lines.filter((l) => l.connectionId === connection.id).length, 2)
})

test('the close line tells who initiated: server, client or the network', async (t) => {
  const logs = logCapture()
  const app = await build(t, { auth: false, close: { timeout: 200 } }, { fastify: { logger: { level: 'info', stream: logs.stream } } })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  const byServer = await connect(t, url + '/ws')
  await waitFor(() => app.wsManager.connections.size === 1)
  const serverSide = closed(byServer)
  await [...app.wsManager.connections][0].close(1000, 'server done')
  await serverSide

  const dropped = await rawPeer(t, url, '/ws')
  await waitFor(() => app.wsManager.connections.size === 1)
  dropped.destroy()
  await waitFor(() => app.wsManager.connections.size === 0)

  const initiators = logs.lines.filter((l) => l.msg === 'connection closed').map((l) => [l.initiatedBy, l.code])
  assert.deepEqual(initiators, [['server', 1000], ['network', 1006]])
})

test('the close line keeps the code the server sent when the peer never answers (sentCode)', async (t) => {
  const logs = logCapture()
  const app = await build(t, { auth: false, close: { timeout: 150 } }, { fastify: { logger: { level: 'info', stream: logs.stream } } })
  app.get('/ws', { websocket: true }, () => {})
  const url = await listen(app)
  await rawPeer(t, url, '/ws')
  await waitFor(() => app.wsManager.connections.size === 1)
  await [...app.wsManager.connections][0].close(1013, 'Slow consumer')
  await waitFor(() => logs.lines.some((l) => l.msg === 'connection closed'), 2000, 'close logged')
  const line = logs.lines.find((l) => l.msg === 'connection closed')
  assert.deepEqual([line?.code, line?.sentCode, line?.initiatedBy], [1006, 1013, 'server'])
})
