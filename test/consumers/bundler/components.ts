// The README's "Components on their own" example, as it is there, after the values it
// leaves to the reader.
import { WebSocket, WebSocketServer } from 'ws'

declare const ws: WebSocket
declare const sockets: WebSocket[]
declare const size: number
declare const userId: string
declare const connectionId: string

import { GracefulCloseManager, HeartbeatManager, FrameSizeValidator, CompressionManager, CloseCode } from 'fastify-ws-manager'

const closer = new GracefulCloseManager({ timeout: 5000 })
await closer.closeGoingAway(ws, 'Server maintenance')            // resolves { code, reason, clean, durationMs }
await closer.closeAll(sockets, { code: CloseCode.SERVICE_RESTART, reason: 'Server restart' })

const hb = new HeartbeatManager({ pingInterval: 30000, pongTimeout: 5000, maxMissedPongs: 3 })
hb.startHeartbeat(ws, (ws) => ws.terminate())
hb.getHeartbeatStats(ws)                                          // { latency, lastPingAt, lastPongAt, missedPongs, pingsSent, pongsReceived }

const frames = FrameSizeValidator.createDefault()
frames.validateFrameSize(size, userId, connectionId)             // { valid, frameSize, maxSize, warning }

const compression = CompressionManager.createDefault()
const wss = new WebSocketServer({ perMessageDeflate: compression.getCompressionOptions() })

export { wss }
