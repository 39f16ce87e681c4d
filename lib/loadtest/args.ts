// The command line of fastify-ws-manager-loadtest: node:util's parseArgs, then the same
// checks runLoadTest makes (options.ts), with every complaint worded in terms of the flags.

import { parseArgs } from 'node:util'
import { DEFAULTS, normalizeOptions, type LoadTestOptions } from './options'

/** The command's name, as installed by the package's `bin`. */
export const COMMAND = 'fastify-ws-manager-loadtest'

/** The `--help` text. */
export const USAGE = `Usage: ${COMMAND} <url> [options]

Opens WebSocket connections to <url> (ws:// or wss://) at a steady rate, holds them while
sending messages, closes them with 1000 and prints a summary. Nothing but <url> is contacted.

Connections
  --connections N          connections to open (default ${DEFAULTS.connections})
  --ramp-rate N            connections opened per second (default ${DEFAULTS.rampRate})
  --duration S             seconds to hold them once the ramp is over (default ${DEFAULTS.duration});
                           the run lasts about N / ramp-rate + S seconds, then stops by itself
  --source-addresses LIST  local addresses to bind, round-robin, comma-separated:
                           127.0.0.1,127.0.0.2 or a range 127.0.0.1-127.0.0.20; each must
                           be an address of this machine (on Linux all of 127.0.0.0/8 is).
                           Each address has its own ~28k ephemeral ports toward one server
                           port: the way past that many connections from one machine
  --connect-timeout S      seconds an opening handshake may take (default ${DEFAULTS.connectTimeout})
  --insecure               accept any TLS certificate (wss:// with a self-signed one)

Messages (one of --message, --json, --request, with a --message-rate)
  --message-rate N         messages per second per open connection (default 0: idle)
  --message TEXT           fixed text
  --json TEMPLATE          a JSON template; {{seq}} (per connection), {{conn}} (connection
                           index) and {{ts}} (Date.now()) become numbers:
                           '{"type":"chat","text":"{{seq}}"}'
  --request TEMPLATE       a JSON object sent as a request: a unique "id" is added and the
                           reply carrying the same "id" is timed: '{"type":"who"}'
  --request-timeout S      seconds a request waits for its reply (default ${DEFAULTS.requestTimeout})
  --subscribe LIST         topics each connection subscribes to (topic.subscribe), comma-
                           separated; topic.message messages are counted

Authentication
  --token JWT              the token to send
  --token-cmd CMD          a shell command printing the token, run once at the start
  --token-per-connection   run --token-cmd once per connection instead
  --token-in WHERE         header (default: Authorization: Bearer <jwt>) or subprotocol
                           (bearer.<jwt>, offered after the --protocol names; needs one)
  --protocol NAME          an application subprotocol to offer (repeatable, or comma-separated)

Output
  --json-out FILE          also write the results as JSON to FILE; '-' prints the JSON on
                           stdout instead of the summary table (the progress stays on stderr)
  --quiet                  no progress on stderr
  --close-timeout S        at the end, seconds to wait for outstanding replies, then again
                           for the closing handshakes before terminating (default ${DEFAULTS.closeTimeout})
  --fail-on-error          exit 1 when any error was counted
  -h, --help               print this text

While it runs, progress goes to stderr: a line rewritten in place on a terminal, a line every
5 s otherwise. The summary (connect time and reply latency percentiles, messages, errors by
kind, close codes, connections per source address) goes to stdout.
SIGINT or SIGTERM stops early and still reports; a second one exits at once (130).
Exit codes: 0 it ran (whatever it measured), 1 errors counted with --fail-on-error,
2 bad arguments.
`

/** What the command line asks for. */
export type CommandLine =
  | { help: true }
  | {
    help: false
    options: LoadTestOptions
    /** `--json-out`: a file, `'-'` for stdout, or null. */
    jsonOut: string | null
    failOnError: boolean
    quiet: boolean
  }

/** A command line the command cannot run; exit code 2. */
export class UsageError extends Error {
  /** Always FST_WSM_LOADTEST_USAGE. */
  readonly code = 'FST_WSM_LOADTEST_USAGE'
}

const FLAGS = {
  connections: { type: 'string' },
  'ramp-rate': { type: 'string' },
  duration: { type: 'string' },
  'source-addresses': { type: 'string' },
  'connect-timeout': { type: 'string' },
  insecure: { type: 'boolean' },
  'message-rate': { type: 'string' },
  message: { type: 'string' },
  json: { type: 'string' },
  request: { type: 'string' },
  'request-timeout': { type: 'string' },
  subscribe: { type: 'string' },
  token: { type: 'string' },
  'token-cmd': { type: 'string' },
  'token-per-connection': { type: 'boolean' },
  'token-in': { type: 'string' },
  protocol: { type: 'string', multiple: true },
  'json-out': { type: 'string' },
  quiet: { type: 'boolean' },
  'close-timeout': { type: 'string' },
  'fail-on-error': { type: 'boolean' },
  help: { type: 'boolean', short: 'h' }
} as const

const NUMERIC = new Set(['connections', 'ramp-rate', 'duration', 'connect-timeout', 'message-rate', 'request-timeout', 'close-timeout'])

// runLoadTest's option names, as flags.
const FLAG_OF: Record<string, string> = {
  url: '<url>',
  connections: '--connections',
  rampRate: '--ramp-rate',
  duration: '--duration',
  sourceAddresses: '--source-addresses',
  connectTimeout: '--connect-timeout',
  messageRate: '--message-rate',
  message: '--message',
  json: '--json',
  request: '--request',
  requestTimeout: '--request-timeout',
  subscribe: '--subscribe',
  token: '--token',
  tokenCommand: '--token-cmd',
  tokenPerConnection: '--token-per-connection',
  tokenIn: '--token-in',
  protocols: '--protocol',
  closeTimeout: '--close-timeout',
  insecure: '--insecure'
}

// parseArgs takes "-1" after "--connections" for a flag and calls the value ambiguous; a
// negative number is a value here, and then gets the message about its range.
function joinNegativeNumbers (argv: readonly string[]): string[] {
  const out: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string
    const next = argv[i + 1]
    if (arg.startsWith('--') && NUMERIC.has(arg.slice(2)) && next !== undefined && /^-\d/.test(next)) {
      out.push(`${arg}=${next}`)
      i++
    } else out.push(arg)
  }
  return out
}

function parseError (err: Error & { code?: string }): UsageError {
  const message = err.message.split('\n')[0] as string
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
    const flag = /'([^']+)'/.exec(message)?.[1] ?? message
    return new UsageError(`unknown option ${flag}`)
  }
  const flag = /'(--?[\w-]+)/.exec(message)?.[1]
  if (/argument missing/.test(message)) return new UsageError(`${flag ?? 'an option'} needs a value`)
  if (/does not take an argument/.test(message)) return new UsageError(`${flag ?? 'an option'} takes no value`)
  if (/argument is ambiguous/.test(message)) return new UsageError(`${flag ?? 'an option'} needs a value (one starting with "-" is written ${flag ?? '--option'}=-value)`)
  return new UsageError(message)
}

function toNumber (flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  if (!/^-?(\d+(\.\d*)?|\.\d+)$/.test(value.trim())) throw new UsageError(`--${flag} expects a number, got ${JSON.stringify(value)}`)
  return Number(value)
}

function list (value: string | undefined): string[] | undefined {
  if (value === undefined) return undefined
  const items = value.split(',').map((item) => item.trim()).filter((item) => item !== '')
  return items
}

/**
 * Parses the command's arguments (without `node` and the script).
 * @throws UsageError with a message meant for the user, for anything the command cannot run.
 */
export function parseCommandLine (argv: readonly string[]): CommandLine {
  let parsed: { values: Record<string, string | boolean | string[] | undefined>, positionals: string[] }
  try {
    parsed = parseArgs({ args: joinNegativeNumbers(argv), options: FLAGS, allowPositionals: true, strict: true })
  } catch (err) {
    throw parseError(err as Error & { code?: string })
  }
  const v = parsed.values as { [K in keyof typeof FLAGS]?: (typeof FLAGS)[K]['type'] extends 'boolean' ? boolean : K extends 'protocol' ? string[] : string }
  if (v.help === true) return { help: true }
  if (parsed.positionals.length === 0) throw new UsageError('the URL to connect to is missing (a ws:// or wss:// URL)')
  if (parsed.positionals.length > 1) throw new UsageError(`one URL only; unexpected ${JSON.stringify(parsed.positionals[1])}`)

  // Conflicts between flags, worded as flags.
  const payloads = (['message', 'json', 'request'] as const).filter((flag) => v[flag] !== undefined)
  if (payloads.length > 1) throw new UsageError(`give one of --message, --json and --request, not ${payloads.map((f) => `--${f}`).join(' and ')}`)
  if (v.token !== undefined && v['token-cmd'] !== undefined) throw new UsageError('give --token or --token-cmd, not both')
  if (v['token-per-connection'] === true && v['token-cmd'] === undefined) throw new UsageError('--token-per-connection needs --token-cmd')
  const messageRate = toNumber('message-rate', v['message-rate'])
  if ((messageRate ?? 0) > 0 && payloads.length === 0) throw new UsageError('--message-rate needs something to send: --message, --json or --request')
  if (payloads.length === 1 && (messageRate === undefined || messageRate === 0)) throw new UsageError(`--${payloads[0] as string} is sent at --message-rate N per connection; give a rate above 0`)
  const tokenIn = v['token-in']
  if (tokenIn !== undefined && tokenIn !== 'header' && tokenIn !== 'subprotocol') throw new UsageError(`--token-in expects header or subprotocol, got ${JSON.stringify(tokenIn)}`)
  const protocols = (v.protocol ?? []).flatMap((p) => list(p) ?? [])
  if (tokenIn === 'subprotocol' && protocols.length === 0) throw new UsageError('--token-in subprotocol needs --protocol NAME: the server selects an application protocol, never the token entry, and a handshake without one fails')
  if (v['json-out'] === '') throw new UsageError('--json-out needs a file name, or - for stdout')

  const options: LoadTestOptions = {
    url: parsed.positionals[0] as string,
    connections: toNumber('connections', v.connections),
    rampRate: toNumber('ramp-rate', v['ramp-rate']),
    duration: toNumber('duration', v.duration),
    sourceAddresses: list(v['source-addresses']),
    connectTimeout: toNumber('connect-timeout', v['connect-timeout']),
    insecure: v.insecure,
    messageRate,
    message: v.message,
    json: v.json,
    request: v.request,
    requestTimeout: toNumber('request-timeout', v['request-timeout']),
    subscribe: list(v.subscribe),
    token: v.token,
    tokenCommand: v['token-cmd'],
    tokenPerConnection: v['token-per-connection'],
    tokenIn,
    protocols,
    closeTimeout: toNumber('close-timeout', v['close-timeout'])
  }
  if (v['source-addresses'] !== undefined && options.sourceAddresses?.length === 0) throw new UsageError('--source-addresses needs at least one address')
  if (v.subscribe !== undefined && options.subscribe?.length === 0) throw new UsageError('--subscribe needs at least one topic')
  try {
    normalizeOptions(options)
  } catch (err) {
    const match = /^Invalid load test option "(\w+)": ([^]*)$/.exec((err as Error).message)
    if (match === null) throw err
    throw new UsageError(`${FLAG_OF[match[1] as string] ?? (match[1] as string)}: ${match[2] as string}`)
  }
  return { help: false, options, jsonOut: v['json-out'] ?? null, failOnError: v['fail-on-error'] === true, quiet: v.quiet === true }
}
