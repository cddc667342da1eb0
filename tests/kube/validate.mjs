// Offline checks of the Kubernetes manifests (deploy/kubernetes) that kubernetes-validate cannot do:
//
//   node validate.mjs FILE...
//
// 1. Schema: every KEDA object (keda.sh) and prometheus-operator object (monitoring.coreos.com) is validated
//    with the validators @kubernetes-models generates from those projects' CRDs (no network, no cluster).
//    Core objects are left to kubernetes-validate; a kind neither knows is an error, not a silent pass.
// 2. Consistency across files (only when the files of one deployment are given together): the ScaledObject
//    targets the Deployment, the PodMonitor selects its pods and scrapes a port the worker exposes, probes
//    ask /healthz and /readyz on that port, the grace period outlasts SHUTDOWN_TIMEOUT_MS, the worker runs
//    as non-root on a read-only root file system with a plugin volume at PLUGIN_DIR, and the scaling queries
//    read the queue-depth gauge.
//
// Prints one JSON document: {objects: [{file, kind, name, checkedBy}], problems: [text]}; exit status 1 when
// there is any problem.

import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { ScaledObject } from '@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject';
import { TriggerAuthentication } from '@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication';
import { PodMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';

// The CRD kinds this script validates, by apiVersion/kind.
const CRD_MODELS = {
  'keda.sh/v1alpha1/ScaledObject': ScaledObject,
  'keda.sh/v1alpha1/TriggerAuthentication': TriggerAuthentication,
  'monitoring.coreos.com/v1/PodMonitor': PodMonitor,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
};
// Groups kubernetes-validate checks (core API groups), and kustomize's own file.
const CORE_GROUPS = ['v1', 'apps/v1', 'policy/v1', 'batch/v1', 'autoscaling/v2', 'networking.k8s.io/v1'];
const NOT_AN_OBJECT = ['kustomize.config.k8s.io/v1beta1/Kustomization'];

const problems = [];
const objects = [];

for (const file of process.argv.slice(2)) {
  let docs;
  try {
    docs = parseAllDocuments(readFileSync(file, 'utf8'));
  } catch (err) {
    problems.push(`${file}: cannot read: ${err.message}`);
    continue;
  }
  for (const doc of docs) {
    if (doc.errors.length > 0) {
      problems.push(`${file}: not valid YAML: ${doc.errors.map((e) => e.message).join('; ')}`);
      continue;
    }
    const obj = doc.toJS();
    if (obj === null || obj === undefined) continue;
    const id = `${obj.apiVersion}/${obj.kind}`;
    const entry = { file: basename(file), kind: obj.kind, name: obj.metadata?.name ?? null, obj };
    if (CRD_MODELS[id]) {
      try {
        new CRD_MODELS[id](obj).validate();
        entry.checkedBy = '@kubernetes-models';
      } catch (err) {
        problems.push(`${file}: ${obj.kind} ${entry.name}: ${err.message}`);
      }
    } else if (CORE_GROUPS.includes(obj.apiVersion)) {
      entry.checkedBy = 'kubernetes-validate';
    } else if (NOT_AN_OBJECT.includes(id)) {
      entry.checkedBy = 'kustomize file';
    } else {
      problems.push(`${file}: no schema known for ${id}: add its validator here`);
    }
    objects.push(entry);
  }
}

const find = (kind) => objects.filter((o) => o.kind === kind).map((o) => o.obj);
const [deployment] = find('Deployment');
const [configMap] = find('ConfigMap');
const [scaledObject] = find('ScaledObject');
const [podMonitor] = find('PodMonitor');

function check(condition, message) {
  if (!condition) problems.push(message);
}

if (deployment) {
  const spec = deployment.spec.template.spec;
  const worker = spec.containers.find((c) => c.name === 'worker') ?? spec.containers[0];
  const ports = new Map((worker.ports ?? []).map((p) => [p.name, p.containerPort]));
  const env = Object.fromEntries((worker.env ?? []).filter((e) => 'value' in e).map((e) => [e.name, e.value]));
  const settings = { ...(configMap?.data ?? {}), ...env };
  const secCtx = { ...(spec.securityContext ?? {}), ...(worker.securityContext ?? {}) };
  check(secCtx.runAsNonRoot === true, 'Deployment: the worker must run with runAsNonRoot: true');
  check(worker.securityContext?.readOnlyRootFilesystem === true, 'Deployment: the worker needs readOnlyRootFilesystem: true');
  check(worker.securityContext?.allowPrivilegeEscalation === false, 'Deployment: allowPrivilegeEscalation must be false');
  check(worker.resources?.requests && worker.resources?.limits, 'Deployment: the worker needs resource requests and limits');
  for (const [probe, path] of [['livenessProbe', '/healthz'], ['readinessProbe', '/readyz']]) {
    const get = worker[probe]?.httpGet;
    check(get?.path === path, `Deployment: ${probe} must ask ${path}`);
    check(
      get && (ports.has(get.port) || [...ports.values()].includes(get.port)),
      `Deployment: ${probe} asks a port the worker does not expose`,
    );
  }
  const httpPort = Number(settings.HTTP_PORT ?? 9090);
  check([...ports.values()].includes(httpPort), `Deployment: no container port for HTTP_PORT ${httpPort}`);
  const pluginDir = settings.PLUGIN_DIR ?? '/usr/local/lib/frostguard-worker/plugins';
  const pluginMount = (worker.volumeMounts ?? []).find((m) => m.mountPath === pluginDir);
  check(pluginMount, `Deployment: no volume mounted at PLUGIN_DIR ${pluginDir}`);
  check(
    pluginMount && (spec.volumes ?? []).some((v) => v.name === pluginMount.name),
    'Deployment: the plugin mount names no volume of the pod',
  );
  const shutdownMs = Number(settings.SHUTDOWN_TIMEOUT_MS ?? 25000);
  // The host needs SHUTDOWN_TIMEOUT_MS plus its cancel/abandon phases (about 6 s) before the SIGKILL.
  check(
    (spec.terminationGracePeriodSeconds ?? 30) * 1000 >= shutdownMs + 6000,
    `Deployment: terminationGracePeriodSeconds ${spec.terminationGracePeriodSeconds} must exceed SHUTDOWN_TIMEOUT_MS ${shutdownMs} ms by at least 6 s`,
  );
  const refs = (worker.envFrom ?? []).map((e) => e.configMapRef?.name ?? e.secretRef?.name);
  check(!configMap || refs.includes(configMap.metadata.name), 'Deployment: the ConfigMap is not referenced');
  check((worker.envFrom ?? []).some((e) => e.secretRef), 'Deployment: no Secret referenced for the credentials');
  if (settings.REDIS_CLUSTER_NODES !== undefined) {
    check(/\{[^}]+\}/.test(settings.BULLMQ_PREFIX ?? ''), 'ConfigMap: REDIS_CLUSTER_NODES needs a hash-tagged BULLMQ_PREFIX such as {bull}');
  }
  if (scaledObject) {
    check(
      scaledObject.spec.scaleTargetRef.name === deployment.metadata.name &&
        (scaledObject.spec.scaleTargetRef.kind ?? 'Deployment') === 'Deployment',
      'ScaledObject: scaleTargetRef does not name the Deployment',
    );
    for (const trigger of scaledObject.spec.triggers) {
      if (trigger.type === 'prometheus') {
        check(
          /frostguard_queue_jobs\{[^}]*queue="[^"]+"/.test(trigger.metadata.query ?? ''),
          `ScaledObject: trigger ${trigger.name} does not read frostguard_queue_jobs of a queue`,
        );
      }
    }
    check((scaledObject.spec.minReplicaCount ?? 0) >= 1, 'ScaledObject: the gauge needs a running pod, keep minReplicaCount >= 1');
  }
  if (podMonitor) {
    const labels = deployment.spec.template.metadata.labels ?? {};
    const wanted = podMonitor.spec.selector?.matchLabels ?? {};
    check(
      Object.entries(wanted).every(([k, v]) => labels[k] === v),
      'PodMonitor: its selector does not match the worker pods',
    );
    for (const ep of podMonitor.spec.podMetricsEndpoints ?? []) {
      check(ports.has(ep.port), `PodMonitor: port ${ep.port} is not a named port of the worker`);
      check((ep.path ?? '/metrics') === '/metrics', 'PodMonitor: must scrape /metrics');
    }
  }
}

process.stdout.write(
  `${JSON.stringify({ objects: objects.map(({ obj, ...rest }) => rest), problems }, null, 2)}\n`,
);
process.exit(problems.length > 0 ? 1 : 0);
