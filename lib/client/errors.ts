// The client's coded errors. @fastify/error needs node:util, so the client has its own
// small class: `code` says what happened; `closeCode` and `serverCode` carry what the server
// said, when it said something.

/** Codes of the errors the client rejects with or emits. */
export type ClientErrorCode =
  | 'FST_WSM_CLIENT_OPTION_INVALID'
  | 'FST_WSM_CLIENT_NOT_OPEN'
  | 'FST_WSM_CLIENT_TIMEOUT'
  | 'FST_WSM_CLIENT_CLOSED'
  | 'FST_WSM_CLIENT_ERROR_REPLY'
  | 'FST_WSM_CLIENT_TOKEN'
  | 'FST_WSM_CLIENT_REFUSED'
  | 'FST_WSM_CLIENT_NO_WEBSOCKET'

/** An error of the client, with a code to switch on. */
export class ClientError extends Error {
  /** What went wrong; see {@link ClientErrorCode}. */
  readonly code: ClientErrorCode
  /** The close code of the close that rejected a request, or null. */
  readonly closeCode: number | null
  /** The `code` of the server's `{ type: 'error' }` reply (UNKNOWN_TYPE, INVALID_TOKEN ...), or null. */
  readonly serverCode: string | null
  /** The HTTP status of a refused upgrade (where the runtime shows it), or null. */
  readonly status: number | null

  constructor (code: ClientErrorCode, message: string, details: { closeCode?: number, serverCode?: string, status?: number, cause?: unknown } = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause })
    this.name = 'ClientError'
    this.code = code
    this.closeCode = details.closeCode ?? null
    this.serverCode = details.serverCode ?? null
    this.status = details.status ?? null
  }
}
