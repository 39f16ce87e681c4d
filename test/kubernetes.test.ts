// The Kubernetes manifests in deploy/kubernetes. No cluster runs them here, so this is what
// stands between a typo and a broken deploy: every object passes its API schema, no field is
// unknown to it, and the numbers that must agree across files (ports, paths, labels, the
// shutdown timeline, the HPA target) do.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parse, parseAllDocuments } from 'yaml'
import { loadConfig } from '../lib/index'

const DIR = join(__dirname, '..', 'deploy', 'kubernetes')
// Left out of kustomization.yaml on purpose (deploy/kubernetes/README.md says why); validated
// all the same.
const NOT_APPLIED = ['secret.yaml', 'servicemonitor.yaml', 'prometheus-adapter.yaml']
// BENCHMARKS.md, idle 10,000 connections: the plugin's RSS per connection after GC.
const IDLE_RSS_PER_CONNECTION = 4429
// The reference server's RSS in cluster mode with metrics, before its first connection,
// measured for deploy/kubernetes/README.md.
const BASE_RSS = 112 * 2 ** 20
const POD_NAME = 'fastify-ws-manager-5d8c7b9f4-x2x9q'
const REAL_SECRET = 'k'.repeat(48)

type Fields = Record<string, unknown>
interface Model { validate: () => void }
type ModelClass = (new (data: never) => Model) & { apiVersion: string, kind: string }
interface Manifest { file: string, where: string, object: Fields }

function isFields (value: unknown): value is Fields {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
}

/** The value at a dotted path (`spec.template.spec.containers.0`), or undefined. */
function get (value: unknown, path: string): unknown {
  let v = value
  for (const key of path.split('.')) {
    if (v === null || typeof v !== 'object') return undefined
    v = (v as Fields)[key]
  }
  return v
}

function fields (value: unknown, what: string): Fields {
  assert.ok(isFields(value), `${what}: expected a mapping, got ${JSON.stringify(value)}`)
  return value
}

function list (value: unknown, what: string): unknown[] {
  assert.ok(Array.isArray(value), `${what}: expected a list, got ${JSON.stringify(value)}`)
  return value
}

function text (value: unknown, what: string): string {
  assert.equal(typeof value, 'string', `${what}: expected a string, got ${JSON.stringify(value)}`)
  return value as string
}

function int (value: unknown, what: string): number {
  assert.ok(Number.isInteger(value), `${what}: expected an integer, got ${JSON.stringify(value)}`)
  return value as number
}

// ESM-only packages (their exports have an "import" condition only): this CommonJS test
// loads them with import().
async function loadModels (): Promise<Map<string, ModelClass>> {
  const classes: ModelClass[] = await Promise.all([
    import('kubernetes-models/v1/ConfigMap').then((m) => m.ConfigMap),
    import('kubernetes-models/v1/Secret').then((m) => m.Secret),
    import('kubernetes-models/v1/Service').then((m) => m.Service),
    import('kubernetes-models/apps/v1/Deployment').then((m) => m.Deployment),
    import('kubernetes-models/policy/v1/PodDisruptionBudget').then((m) => m.PodDisruptionBudget),
    import('kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler').then((m) => m.HorizontalPodAutoscaler),
    import('kubernetes-models/networking.k8s.io/v1/NetworkPolicy').then((m) => m.NetworkPolicy),
    import('@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor').then((m) => m.ServiceMonitor)
  ])
  return new Map(classes.map((c) => [`${c.apiVersion} ${c.kind}`, c]))
}

function pointer (path: string[]): string {
  return path.map((key) => '/' + key.replaceAll('~', '~0').replaceAll('/', '~1')).join('')
}

// Whether the schema has a say on the field at `path`: the field is replaced by `true`, then
// by a string, and a known field rejects at least one of them (no schema type takes both),
// while an unknown field takes anything.
function schemaKnows (Model: ModelClass, object: Fields, path: string[]): boolean {
  const at = pointer(path)
  for (const probe of [true, 'probe']) {
    const copy = structuredClone(object)
    const parent = path.slice(0, -1).reduce<Fields>((v, key) => v[key] as Fields, copy)
    parent[path[path.length - 1]] = probe
    try {
      new Model(copy as never).validate()
    } catch (err) {
      const errors = (err as { errors?: Array<{ instancePath?: string }> }).errors ?? []
      if (errors.some((e) => e.instancePath === at || e.instancePath?.startsWith(at + '/') === true)) return true
    }
  }
  return false
}

/**
 * Fields the schema does not know. The schemas check types and required fields but let
 * unknown fields through, so `terminationGracePeriodSecond` would pass validate() here and
 * be refused by the API server (strict field validation) or silently dropped.
 */
function unknownFields (Model: ModelClass, object: Fields): string[] {
  const unknown: string[] = []
  const visit = (value: unknown, path: string[]): void => {
    if (value === null || typeof value !== 'object') return
    for (const key of Object.keys(value)) {
      const at = [...path, key]
      if (schemaKnows(Model, object, at)) visit((value as Fields)[key], at)
      else unknown.push(at.join('.'))
    }
  }
  visit(object, [])
  return unknown
}

/** Validates one object against the schema of its apiVersion and kind; throws on any problem. */
function checkObject (models: Map<string, ModelClass>, object: Fields, where: string): void {
  const key = `${String(object.apiVersion)} ${String(object.kind)}`
  const Model = models.get(key)
  if (Model === undefined) throw new Error(`${where}: no schema for ${key}; add its model to this test`)
  const name = get(object, 'metadata.name')
  if (typeof name !== 'string' || name === '') throw new Error(`${where}: metadata.name is missing`)
  new Model(object as never).validate()
  const unknown = unknownFields(Model, object)
  if (unknown.length > 0) throw new Error(`${where}: fields the ${key} schema does not know: ${unknown.join(', ')}`)
}

interface Loaded { files: string[], manifests: Manifest[], kustomization: Fields, models: Map<string, ModelClass> }
let loading: Promise<Loaded> | null = null

function load (): Promise<Loaded> {
  loading ??= (async () => {
    const files = readdirSync(DIR).filter((f) => /\.ya?ml$/.test(f)).sort()
    const manifests: Manifest[] = []
    let kustomization: Fields | null = null
    for (const file of files) {
      const docs = parseAllDocuments(readFileSync(join(DIR, file), 'utf8'))
      assert.ok(Array.isArray(docs), `${file}: not YAML documents`)
      for (const [i, doc] of docs.entries()) {
        assert.deepEqual([...doc.errors, ...doc.warnings].map((e) => e.message), [], `${file}, document ${i + 1}`)
        const object: unknown = doc.toJS()
        if (object === null) continue
        if (file === 'kustomization.yaml') kustomization = fields(object, file)
        else manifests.push({ file, where: `${file}, document ${i + 1}`, object: fields(object, `${file}, document ${i + 1}`) })
      }
    }
    assert.ok(kustomization !== null, 'kustomization.yaml')
    return { files, manifests, kustomization, models: await loadModels() }
  })()
  return loading
}

/** The one object of a kind (and of a component, by its app.kubernetes.io/component label). */
function find (manifests: Manifest[], kind: string, component?: string): Fields {
  const componentOf = (object: Fields): unknown => {
    const labels = get(object, 'metadata.labels')
    return isFields(labels) ? labels['app.kubernetes.io/component'] : undefined
  }
  const found = manifests.filter((m) => m.object.kind === kind && (component === undefined || componentOf(m.object) === component))
  assert.equal(found.length, 1, `one ${kind}${component === undefined ? '' : ` of component ${component}`}`)
  return found[0].object
}

function labelsMatch (selector: unknown, labels: unknown, what: string): boolean {
  const s = fields(selector, what)
  const l = fields(labels, `${what}: labels`)
  assert.ok(Object.keys(s).length > 0, `${what}: an empty selector selects everything`)
  return Object.entries(s).every(([k, v]) => l[k] === v)
}

function matchLabels (selector: unknown, what: string): Fields {
  assert.equal(get(selector, 'matchExpressions'), undefined, `${what}: matchExpressions are not read by this test`)
  return fields(get(selector, 'matchLabels'), what)
}

interface Server { deployment: Fields, pod: Fields, container: Fields, env: Map<string, unknown>, port: Fields }

function server (manifests: Manifest[]): Server {
  const deployment = find(manifests, 'Deployment', 'server')
  const pod = fields(get(deployment, 'spec.template'), 'pod template')
  const containers = list(get(pod, 'spec.containers'), 'containers')
  assert.equal(containers.length, 1, 'one container')
  const container = fields(containers[0], 'container')
  const entries = list(container.env, 'env')
  const env = new Map(entries.map((e) => [text(get(e, 'name'), 'env name'), e]))
  assert.equal(env.size, entries.length, 'no env variable twice')
  const ports = list(container.ports, 'ports')
  assert.equal(ports.length, 1, 'one container port')
  return { deployment, pod, container, env, port: fields(ports[0], 'port') }
}

/** A literal env value of the server container. */
function envValue (s: Server, name: string): string {
  return text(get(s.env.get(name), 'value'), `env ${name}`)
}

/** The container port a probe's or Service's port (a name or a number) refers to. */
function resolvePort (port: unknown, container: Fields, what: string): number {
  const ports = list(container.ports, 'ports').map((p) => fields(p, 'port'))
  const hit = ports.find((p) => typeof port === 'string' ? p.name === port : p.containerPort === port)
  assert.ok(hit !== undefined, `${what}: port ${JSON.stringify(port)} is not a port of the container`)
  return int(hit.containerPort, what)
}

/** Seconds the preStop hook pauses: the sleep action, or exec sleep N. */
function preStopSeconds (container: Fields): number {
  const hook = fields(get(container, 'lifecycle.preStop'), 'preStop')
  if (hook.sleep !== undefined) return int(get(hook, 'sleep.seconds'), 'preStop sleep')
  const command = list(get(hook, 'exec.command'), 'preStop exec').map((c) => text(c, 'preStop command'))
  const line = command.join(' ')
  const match = /^(?:(?:\/bin\/)?sh -c )?(?:\/bin\/)?sleep (\d+)$/.exec(line)
  assert.ok(match !== null, `preStop must pause with sleep N, got ${line}`)
  return Number(match[1])
}

function bytes (quantity: unknown, what: string): number {
  const match = /^(\d+)(Ki|Mi|Gi)?$/.exec(String(quantity))
  assert.ok(match !== null, `${what}: expected a memory quantity such as 256Mi, got ${String(quantity)}`)
  return Number(match[1]) * { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30 }[match[2] as 'Ki' | 'Mi' | 'Gi']
}

test('every manifest passes the schema of its kind, with no field the schema does not know', async () => {
  const { manifests, models } = await load()
  for (const m of manifests) checkObject(models, m.object, m.where)
  const kinds = manifests.map((m) => String(m.object.kind)).sort()
  assert.deepEqual(kinds, ['ConfigMap', 'Deployment', 'Deployment', 'HorizontalPodAutoscaler', 'NetworkPolicy',
    'PodDisruptionBudget', 'Secret', 'Service', 'Service', 'ServiceMonitor'])
  const names = manifests.map((m) => `${String(m.object.kind)}/${String(get(m.object, 'metadata.name'))}`)
  assert.equal(new Set(names).size, names.length, 'names are unique per kind')
  for (const m of manifests) assert.equal(get(m.object, 'metadata.namespace'), undefined, `${m.file}: the namespace is chosen at apply time`)
})

test('the validation is live: broken copies fail it', async () => {
  const { manifests, models } = await load()
  const deployment = find(manifests, 'Deployment', 'server')
  const broken = (change: (copy: Fields) => void): Fields => {
    const copy = structuredClone(deployment)
    change(copy)
    return copy
  }
  // Each with the message that names what is wrong (the schema's, or this test's own).
  const cases: Array<[Fields, RegExp]> = [
    [broken((d) => { fields(d.spec, 'spec').replicas = '3' }), /data\/spec\/replicas must be integer/],
    [broken((d) => { delete fields(get(d, 'spec.template.spec.containers.0'), 'container').name }), /containers\/0 must have required property name/],
    [broken((d) => { fields(get(d, 'spec.template.spec.containers.0.ports.0'), 'port').containerPort = '3001' }), /containerPort must be integer/],
    [broken((d) => {
      const pod = fields(get(d, 'spec.template.spec'), 'pod')
      pod.terminationGracePeriodSecond = pod.terminationGracePeriodSeconds
      delete pod.terminationGracePeriodSeconds
    }), /does not know: spec\.template\.spec\.terminationGracePeriodSecond$/],
    [broken((d) => { fields(get(d, 'spec.template.spec.containers.0.readinessProbe.httpGet'), 'httpGet').paht = '/ready' }), /does not know: spec\.template\.spec\.containers\.0\.readinessProbe\.httpGet\.paht$/],
    [{ ...deployment, kind: 'Deploymnet' }, /no schema for apps\/v1 Deploymnet/],
    [broken((d) => { delete fields(d.metadata, 'metadata').name }), /metadata\.name is missing/]
  ]
  for (const [object, message] of cases) {
    assert.throws(() => checkObject(models, object, 'broken copy'), message)
  }
  // And the unbroken original passes the same function.
  checkObject(models, deployment, 'original')
})

test('kustomization.yaml lists every manifest but the ones left out on purpose', async () => {
  const { files, kustomization } = await load()
  assert.equal(kustomization.apiVersion, 'kustomize.config.k8s.io/v1beta1')
  assert.equal(kustomization.kind, 'Kustomization')
  assert.deepEqual(Object.keys(kustomization).sort(), ['apiVersion', 'kind', 'resources'])
  const resources = list(kustomization.resources, 'resources').map((r) => text(r, 'resource'))
  assert.equal(new Set(resources).size, resources.length, 'no resource twice')
  for (const r of resources) assert.ok(files.includes(r), `${r} exists`)
  const manifests = files.filter((f) => f !== 'kustomization.yaml')
  assert.deepEqual([...resources, ...NOT_APPLIED].sort(), manifests, 'every manifest is listed or left out on purpose')
})

test('shutdown: the grace period outlasts preStop, the drain and the close timeout', async () => {
  const s = server((await load()).manifests)
  const preStop = preStopSeconds(s.container)
  const drain = Number(envValue(s, 'DRAIN_DURATION')) / 1000
  const closeTimeout = Number(envValue(s, 'CLOSE_TIMEOUT')) / 1000
  const grace = int(get(s.pod, 'spec.terminationGracePeriodSeconds'), 'terminationGracePeriodSeconds')
  assert.ok(preStop >= 5, `preStop ${preStop} s leaves the endpoints too little time to drop the pod`)
  assert.ok(drain > 0, 'DRAIN_DURATION')
  // app.close() after the drain (Redis, the last sockets) needs a few seconds more.
  assert.ok(grace >= preStop + drain + closeTimeout + 10, `grace ${grace} s vs preStop ${preStop} + drain ${drain} + close ${closeTimeout} + 10 s`)
  // The next old pod stops only once the previous one has drained.
  const minReady = int(get(s.deployment, 'spec.minReadySeconds'), 'minReadySeconds')
  assert.ok(minReady >= preStop + drain + closeTimeout, `minReadySeconds ${minReady}`)
})

test('rollout: never below the replica count, and the HPA owns the count', async () => {
  const { manifests } = await load()
  const s = server(manifests)
  assert.equal(get(s.deployment, 'spec.strategy.type'), 'RollingUpdate')
  assert.equal(get(s.deployment, 'spec.strategy.rollingUpdate.maxUnavailable'), 0)
  assert.ok(int(get(s.deployment, 'spec.strategy.rollingUpdate.maxSurge'), 'maxSurge') >= 1)
  const hpa = find(manifests, 'HorizontalPodAutoscaler')
  assert.deepEqual(get(hpa, 'spec.scaleTargetRef'), { apiVersion: 'apps/v1', kind: 'Deployment', name: get(s.deployment, 'metadata.name') })
  // A replicas field would reset the HPA's count on every kubectl apply.
  assert.equal(get(s.deployment, 'spec.replicas'), undefined)
  assert.ok(int(get(hpa, 'spec.minReplicas'), 'minReplicas') >= 3)
})

test('probes: /ready and /health on the container port the server listens on', async () => {
  const s = server((await load()).manifests)
  const port = int(s.port.containerPort, 'containerPort')
  assert.equal(envValue(s, 'WEBSOCKET_PORT'), String(port))
  assert.equal(envValue(s, 'HOST'), '0.0.0.0')
  for (const [probe, path] of [['readinessProbe', '/ready'], ['livenessProbe', '/health'], ['startupProbe', '/health']]) {
    assert.equal(get(s.container, `${probe}.httpGet.path`), path, probe)
    assert.equal(resolvePort(get(s.container, `${probe}.httpGet.port`), s.container, probe), port, probe)
  }
})

test('Service, PDB, HPA and NetworkPolicy select the pods they mean, and only those', async () => {
  const { manifests } = await load()
  const s = server(manifests)
  const serverLabels = get(s.pod, 'metadata.labels')
  const redis = find(manifests, 'Deployment', 'redis')
  const redisLabels = get(redis, 'spec.template.metadata.labels')
  const redisContainer = fields(get(redis, 'spec.template.spec.containers.0'), 'redis container')

  assert.ok(labelsMatch(matchLabels(get(s.deployment, 'spec.selector'), 'server selector'), serverLabels, 'server selector'))
  assert.ok(labelsMatch(matchLabels(get(redis, 'spec.selector'), 'redis selector'), redisLabels, 'redis selector'))
  assert.ok(!labelsMatch(matchLabels(get(s.deployment, 'spec.selector'), 'server selector'), redisLabels, 'server selector'))

  const service = find(manifests, 'Service', 'server')
  assert.equal(get(service, 'spec.type'), 'ClusterIP')
  assert.equal(get(service, 'spec.sessionAffinity') ?? 'None', 'None')
  assert.ok(labelsMatch(get(service, 'spec.selector'), serverLabels, 'Service'))
  assert.ok(!labelsMatch(get(service, 'spec.selector'), redisLabels, 'Service'))
  const servicePort = fields(get(service, 'spec.ports.0'), 'Service port')
  assert.equal(resolvePort(servicePort.targetPort, s.container, 'Service'), s.port.containerPort)

  const pdb = find(manifests, 'PodDisruptionBudget')
  assert.ok(labelsMatch(matchLabels(get(pdb, 'spec.selector'), 'PDB'), serverLabels, 'PDB'))
  assert.ok(!labelsMatch(matchLabels(get(pdb, 'spec.selector'), 'PDB'), redisLabels, 'PDB'))
  const minReplicas = int(get(find(manifests, 'HorizontalPodAutoscaler'), 'spec.minReplicas'), 'minReplicas')
  const maxUnavailable = get(pdb, 'spec.maxUnavailable')
  const minAvailable = get(pdb, 'spec.minAvailable')
  // During an eviction at least two pods still serve.
  const serving = maxUnavailable !== undefined ? minReplicas - int(maxUnavailable, 'maxUnavailable') : int(minAvailable, 'minAvailable')
  assert.ok(serving >= 2 && serving < minReplicas, `PDB leaves ${serving} of ${minReplicas} pods`)

  // Redis: one pod, never two behind the Service during an update, reached by REDIS_URL.
  assert.equal(get(redis, 'spec.replicas'), 1)
  assert.equal(get(redis, 'spec.strategy.type'), 'Recreate')
  const redisService = find(manifests, 'Service', 'redis')
  assert.ok(labelsMatch(get(redisService, 'spec.selector'), redisLabels, 'Redis Service'))
  assert.ok(!labelsMatch(get(redisService, 'spec.selector'), serverLabels, 'Redis Service'))
  const redisPort = fields(get(redisService, 'spec.ports.0'), 'Redis Service port')
  assert.equal(resolvePort(redisPort.targetPort, redisContainer, 'Redis Service'), 6379)
  const url = new URL(envValue(s, 'REDIS_URL'))
  assert.equal(url.hostname, get(redisService, 'metadata.name'))
  assert.equal(Number(url.port), redisPort.port)

  const policy = find(manifests, 'NetworkPolicy')
  assert.ok(labelsMatch(matchLabels(get(policy, 'spec.podSelector'), 'NetworkPolicy'), redisLabels, 'NetworkPolicy'))
  assert.ok(labelsMatch(matchLabels(get(policy, 'spec.ingress.0.from.0.podSelector'), 'NetworkPolicy from'), serverLabels, 'NetworkPolicy from'))
  assert.equal(resolvePort(get(policy, 'spec.ingress.0.ports.0.port'), redisContainer, 'NetworkPolicy'), 6379)
})

test('HPA: ws_connections_active per pod, a target a pod can hold while a neighbour drains, a slow scale-down', async () => {
  const { manifests } = await load()
  const s = server(manifests)
  const hpa = find(manifests, 'HorizontalPodAutoscaler')
  const metrics = list(get(hpa, 'spec.metrics'), 'metrics')
  assert.equal(metrics.length, 1)
  assert.equal(get(metrics[0], 'type'), 'Pods')
  const name = get(metrics[0], 'pods.metric.name')
  assert.equal(name, 'ws_connections_active')
  assert.equal(get(metrics[0], 'pods.target.type'), 'AverageValue')
  const target = Number(text(get(metrics[0], 'pods.target.averageValue'), 'averageValue'))
  const cap = Number(envValue(s, 'MAX_CONNECTIONS'))
  const minReplicas = int(get(hpa, 'spec.minReplicas'), 'minReplicas')
  assert.ok(int(get(hpa, 'spec.maxReplicas'), 'maxReplicas') > minReplicas)
  // One of minReplicas pods drains: the others take its share and must stay under the cap.
  assert.ok(target > 0 && target * minReplicas / (minReplicas - 1) <= cap, `target ${target} with cap ${cap}`)

  const down = fields(get(hpa, 'spec.behavior.scaleDown'), 'scaleDown')
  assert.ok(int(down.stabilizationWindowSeconds, 'stabilizationWindowSeconds') >= 300)
  for (const p of list(down.policies, 'scaleDown policies')) {
    assert.equal(get(p, 'type'), 'Pods')
    assert.equal(get(p, 'value'), 1)
    // A removed pod has drained before the next one goes.
    assert.ok(int(get(p, 'periodSeconds'), 'periodSeconds') >= int(get(s.pod, 'spec.terminationGracePeriodSeconds'), 'grace'))
  }

  // The adapter rule serves the series under the name the HPA asks for, per pod.
  const adapter = find(manifests, 'ConfigMap')
  const config = fields(parse(text(fields(get(adapter, 'data'), 'ConfigMap data')['config.yaml'], 'config.yaml')), 'adapter config')
  const rules = list(config.rules, 'rules')
  assert.equal(rules.length, 1)
  assert.match(text(get(rules[0], 'seriesQuery'), 'seriesQuery'), /^ws_connections_active\{/)
  assert.equal(get(rules[0], 'name.as'), name)
  assert.deepEqual(get(rules[0], 'resources.overrides'), { namespace: { resource: 'namespace' }, pod: { resource: 'pod' } })
})

test('metrics: the scrape annotations and the ServiceMonitor point at METRICS_PATH on the container port', async () => {
  const { manifests } = await load()
  const s = server(manifests)
  assert.equal(envValue(s, 'METRICS_ENABLED'), 'true')
  const path = envValue(s, 'METRICS_PATH')
  const annotations = fields(get(s.pod, 'metadata.annotations'), 'pod annotations')
  assert.equal(annotations['prometheus.io/scrape'], 'true')
  assert.equal(annotations['prometheus.io/port'], String(s.port.containerPort))
  assert.equal(annotations['prometheus.io/path'], path)

  const service = find(manifests, 'Service', 'server')
  const monitor = find(manifests, 'ServiceMonitor')
  assert.ok(labelsMatch(matchLabels(get(monitor, 'spec.selector'), 'ServiceMonitor'), get(service, 'metadata.labels'), 'ServiceMonitor'))
  const endpoints = list(get(monitor, 'spec.endpoints'), 'endpoints')
  assert.equal(endpoints.length, 1)
  assert.equal(get(endpoints[0], 'path'), path)
  const servicePort = list(get(service, 'spec.ports'), 'Service ports').find((p) => get(p, 'name') === get(endpoints[0], 'port'))
  assert.ok(servicePort !== undefined, 'the ServiceMonitor names a port of the Service')
  assert.equal(resolvePort(get(servicePort, 'targetPort'), s.container, 'ServiceMonitor'), s.port.containerPort)
})

test('the server accepts the Deployment\'s environment; the Secret template\'s placeholder stops it', async () => {
  const { manifests } = await load()
  const s = server(manifests)
  const secret = find(manifests, 'Secret')
  const environment = (secretValue: (name: string, key: string) => string): Record<string, string> => {
    const env: Record<string, string> = {}
    for (const [name, e] of s.env) {
      const value = get(e, 'value')
      const field = get(e, 'valueFrom.fieldRef.fieldPath')
      const ref = get(e, 'valueFrom.secretKeyRef')
      if (value !== undefined) env[name] = text(value, name)
      else if (field !== undefined) env[name] = field === 'metadata.name' ? POD_NAME : assert.fail(`${name}: fieldRef ${String(field)}`)
      else env[name] = secretValue(text(get(ref, 'name'), `${name} secret`), text(get(ref, 'key'), `${name} key`))
    }
    return env
  }
  const fromTemplate = (name: string, key: string): string => {
    assert.equal(name, get(secret, 'metadata.name'), 'the Deployment reads the Secret of the template')
    return text(get(secret, `stringData.${key}`), `${name}.${key}`)
  }
  assert.ok(get(s.env.get('JWT_SECRET'), 'valueFrom.secretKeyRef') !== undefined, 'JWT_SECRET comes from a Secret')
  assert.throws(() => loadConfig(environment(fromTemplate)), { code: 'FST_WSM_ENV_INVALID' })

  const config = loadConfig(environment(() => REAL_SECRET))
  assert.equal(config.port, s.port.containerPort)
  assert.equal(config.host, '0.0.0.0')
  assert.equal(config.jwtSecret, REAL_SECRET)
  assert.equal(config.drainDuration, Number(envValue(s, 'DRAIN_DURATION')))
  assert.equal(config.options.close?.timeout, Number(envValue(s, 'CLOSE_TIMEOUT')))
  assert.equal(config.options.maxConnections, Number(envValue(s, 'MAX_CONNECTIONS')))
  const cluster = config.options.cluster
  assert.ok(cluster !== undefined && cluster !== false, 'cluster mode')
  assert.equal(cluster.nodeId, POD_NAME)
  assert.equal(cluster.redis, envValue(s, 'REDIS_URL'))
  assert.deepEqual(config.options.metrics, { endpoint: envValue(s, 'METRICS_PATH') })
})

test('resources cover the connection cap; the pods run as non-root on a read-only root', async () => {
  const { manifests } = await load()
  const s = server(manifests)
  const request = bytes(get(s.container, 'resources.requests.memory'), 'memory request')
  const limit = bytes(get(s.container, 'resources.limits.memory'), 'memory limit')
  const cap = Number(envValue(s, 'MAX_CONNECTIONS'))
  assert.ok(cap > 0, 'MAX_CONNECTIONS bounds what a pod holds')
  assert.ok(request >= BASE_RSS + cap * IDLE_RSS_PER_CONNECTION, `request ${request} B for ${cap} connections`)
  assert.ok(limit >= request)
  assert.equal(get(s.container, 'resources.limits.cpu'), undefined, 'no CPU limit: CFS throttling stalls the event loop')
  const heap = /^--max-old-space-size=(\d+)$/.exec(String(list(s.container.command, 'command').find((a) => String(a).startsWith('--max-old-space-size'))))
  assert.ok(heap !== null, 'the heap is sized explicitly')
  assert.ok(Number(heap[1]) * 2 ** 20 < limit, 'the heap fits the memory limit')

  const redis = find(manifests, 'Deployment', 'redis')
  const redisContainer = fields(get(redis, 'spec.template.spec.containers.0'), 'redis container')
  const args = list(redisContainer.args, 'redis args').map((a) => text(a, 'redis arg'))
  const maxmemory = /^(\d+)mb$/.exec(args[args.indexOf('--maxmemory') + 1])
  assert.ok(maxmemory !== null, 'Redis has a maxmemory')
  assert.ok(Number(maxmemory[1]) * 1e6 < bytes(get(redisContainer, 'resources.limits.memory'), 'redis limit'))

  for (const [deployment, container] of [[s.deployment, s.container], [redis, redisContainer]] as const) {
    const pod = fields(get(deployment, 'spec.template.spec'), 'pod spec')
    assert.equal(get(pod, 'securityContext.runAsNonRoot'), true)
    // A numeric user: runAsNonRoot cannot verify a named USER of the image (node's "node").
    assert.ok(int(get(pod, 'securityContext.runAsUser'), 'runAsUser') > 0)
    assert.equal(pod.automountServiceAccountToken, false)
    assert.equal(get(container, 'securityContext.readOnlyRootFilesystem'), true)
    assert.equal(get(container, 'securityContext.allowPrivilegeEscalation'), false)
    assert.deepEqual(get(container, 'securityContext.capabilities.drop'), ['ALL'])
  }
  // tsx writes its compile cache to /tmp: it must be writable.
  const tmp = list(s.container.volumeMounts, 'volumeMounts').find((v) => get(v, 'mountPath') === '/tmp')
  assert.ok(tmp !== undefined, '/tmp is mounted')
  const volume = list(get(s.pod, 'spec.volumes'), 'volumes').find((v) => get(v, 'name') === get(tmp, 'name'))
  assert.ok(get(volume, 'emptyDir') !== undefined, '/tmp is an emptyDir')
})
