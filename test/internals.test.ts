// The private fields of ws and Node the plugin reads (lib/internals.ts), checked on real
// objects: a new ws or Node that renames or reshapes one fails here, by name, rather than
// somewhere downstream.
import { test } from 'node:test'
import { EventEmitter } from 'node:events'
import assert from 'node:assert/strict'
import { IncomingMessage, ServerResponse } from 'node:http'
import { Socket } from 'node:net'
import WebSocket from 'ws'
import type { Connection } from '../lib/index'
import { canSendDeflated, captureRejections, closeFrameReceived, detachHttpResponse, freeDeflateContexts, guardReceiver, independentDeflateBits, transportOf } from '../lib/internals'
import { build, connect, listen, waitFor } from './helper'

test("ws's _socket is the TCP socket, with Node's byte counters", async (t) => {
  const app = await build(t, { auth: false })
  const seen: Connection[] = []
  app.get('/ws', { websocket: true }, (_socket, request) => { seen.push(request.wsConnection as Connection) })
  const url = await listen(app)
  const client = await connect(t, `${url}/ws`)
  await waitFor(() => seen.length === 1, 2000, 'accepted')
  const transport = transportOf(seen[0].socket)
  assert.ok(transport instanceof Socket, 'ws._socket is a net.Socket')
  assert.equal(typeof transport.bytesWritten, 'number')
  assert.equal(typeof transport.bytesRead, 'number')
  // The plugin detached @fastify/websocket's HTTP response from it.
  assert.equal((transport as unknown as { _httpMessage: unknown })._httpMessage, null)
  client.terminate()
})

test("ws's _closeFrameReceived turns true when the peer's close frame arrives", async (t) => {
  const app = await build(t, { auth: false })
  const seen: Connection[] = []
  app.get('/ws', { websocket: true }, (socket, request) => {
    seen.push(request.wsConnection as Connection)
    // Read at the moment the peer's close arrives, before the plugin answers it.
    socket.on('close', () => { frameSeen = closeFrameReceived(socket) })
  })
  let frameSeen: boolean | null = null
  const url = await listen(app)
  const client = await connect(t, `${url}/ws`)
  await waitFor(() => seen.length === 1, 2000, 'accepted')
  assert.equal(closeFrameReceived(seen[0].socket), false)
  client.close(1000)
  await waitFor(() => frameSeen !== null, 2000, 'closed')
  assert.equal(frameSeen, true)
  assert.equal(seen[0].socket.closeInitiator, 'client')
})

test("Node's _httpMessage holds an assigned response until detachHttpResponse() lets go of it", () => {
  const socket = new Socket()
  const response = new ServerResponse(new IncomingMessage(socket))
  response.assignSocket(socket)
  assert.equal((socket as unknown as { _httpMessage: unknown })._httpMessage, response)
  const ws = Object.assign(Object.create(WebSocket.prototype) as WebSocket, { _socket: socket })
  assert.equal(detachHttpResponse(ws), true)
  assert.equal((socket as unknown as { _httpMessage: unknown })._httpMessage, null)
  assert.equal(detachHttpResponse(ws), false, 'nothing left to detach')
  socket.destroy()
})

test("ws's receiver keeps _errored and _write, which guardReceiver() relies on to drop data after a failure", async (t) => {
  const app = await build(t, { auth: false })
  const seen: Connection[] = []
  app.get('/ws', { websocket: true }, (_socket, request) => { seen.push(request.wsConnection as Connection) })
  const url = await listen(app)
  const client = await connect(t, `${url}/ws`)
  await waitFor(() => seen.length === 1, 2000, 'accepted')
  const receiver = (seen[0].socket as unknown as { _receiver: { _errored: unknown, _write: unknown } })._receiver
  assert.equal(typeof receiver._errored, 'boolean', 'ws.Receiver#_errored')
  const Receiver = (WebSocket as unknown as { Receiver: { new (): unknown, prototype: { _write: unknown } } }).Receiver
  assert.ok(receiver instanceof Receiver)
  assert.notEqual(receiver._write, Receiver.prototype._write, 'the plugin guarded this socket\'s receiver')
  assert.equal(guardReceiver(seen[0].socket), true)
  client.terminate()
})

test("Node's EventEmitter keeps captureRejections under a Symbol described 'kCapture', which captureRejections() sets", () => {
  const emitter = new EventEmitter()
  assert.equal(captureRejections(emitter), true, 'the kCapture symbol was found')
  let caught: unknown = null
  ;(emitter as unknown as Record<symbol, unknown>)[Symbol.for('nodejs.rejection')] = (err: unknown) => { caught = err }
  emitter.on('x', async () => { throw new Error('rejected') })
  emitter.emit('x')
  return new Promise<void>((resolve) => setImmediate(() => {
    assert.equal((caught as Error | null)?.message, 'rejected')
    resolve()
  }))
})

test('ws: a sender takes a message deflated by the plugin (the shared profile), in its queue', () => {
  // sender.js's kByteLength, dispatch() and enqueue(): found, or the shared profile falls back to per-socket deflate.
  assert.equal(canSendDeflated, true)
  const plain = new WebSocket(null as never, undefined as never, { autoPong: true } as never)
  assert.equal(independentDeflateBits(plain), -1)
  assert.equal(freeDeflateContexts(plain), null)
})
