#!/usr/bin/env bash
# make cluster-prometheus: the Prometheus Operator and one Prometheus on the single-node cluster of
# `make cluster-up`, set up the way kube-prometheus-stack sets up its own (what manifests/kind/up.sh
# installs on kind, and what the chart's defaults assume), so the chart's PodMonitors,
# ServiceMonitors and PrometheusRule are picked up as on a user's cluster:
#   - the operator from the pinned upstream bundle (../shared/k8s-upstream/prometheus-operator-
#     VERSION/bundle.yaml: its CRDs, RBAC and Deployment), moved from `default` to `monitoring`,
#     with the images built here (images.sh prometheus-operator, prometheus-config-reloader);
#   - a Prometheus `kube-prometheus-stack-prometheus` in `monitoring` (images.sh prometheus:
#     v3.13.1 built here with the Kubernetes service discovery only) that selects every PodMonitor, ServiceMonitor and PrometheusRule labelled
#     release=kube-prometheus-stack in any namespace, behind the Service of that name on 9090
#     (the chart's argo.prometheusUrl default);
#   - `monitoring` under Pod Security `restricted`, every pod in it admitted.
# Re-runnable (one server-side apply under one field manager).
#
# usage: prometheus-up.sh BIN_DIR [STATE_DIR]      (env: PROMETHEUS_OPERATOR_VERSION, PROMETHEUS_VERSION)
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${1:?usage: prometheus-up.sh BIN_DIR [STATE_DIR]}"
state="$(cd "${2:-.fissure/cluster}" 2>/dev/null && pwd)" || { echo "prometheus-up: no cluster state in ${2:-.fissure/cluster}: make cluster-up first" >&2; exit 1; }
version="${PROMETHEUS_OPERATOR_VERSION:-v0.93.0}"
name="prometheus-up"
# shellcheck source=manifests/cluster/lib.sh
. "$here/lib.sh"
bundle="$(upstream "prometheus-operator-$version" bundle.yaml \
  "https://github.com/prometheus-operator/prometheus-operator/releases/download/$version/bundle.yaml")"
refs=$(PROMETHEUS_OPERATOR_VERSION="$version" "$here/images.sh" ref prometheus-operator prometheus-config-reloader prometheus)
operator=$(sed -n 1p <<<"$refs"); reloader=$(sed -n 2p <<<"$refs"); prometheus=$(sed -n 3p <<<"$refs")

log "importing $operator, $reloader and $prometheus"
CTR_ADDRESS="$state/containerd/containerd.sock" PROMETHEUS_OPERATOR_VERSION="$version" \
  "$here/images.sh" import prometheus-operator prometheus-config-reloader prometheus

log "the Prometheus Operator $version ($operator) and Prometheus ${prometheus##*:} in namespace monitoring"
"$python" - "$bundle" "$operator" "$reloader" "$prometheus" > "$dl/prometheus.yaml" <<'PY'
import sys
import yaml

src, operator, reloader, prometheus = sys.argv[1:]
ns, name, release = "monitoring", "kube-prometheus-stack-prometheus", "kube-prometheus-stack"


class Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    pass


# an enum in the AlertmanagerConfig CRD holds the plain scalar `=`: YAML 1.1's "value" type to
# PyYAML, the string "=" to Kubernetes
Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))
pod_restricted = {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534, "fsGroup": 65534,
                  "seccompProfile": {"type": "RuntimeDefault"}}
restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True}
out = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {
    "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}}}]
for doc in yaml.load_all(open(src), Loader=Loader):
    if not doc:
        continue
    if doc["metadata"].get("namespace") == "default":
        doc["metadata"]["namespace"] = ns
    if doc["kind"] == "ClusterRoleBinding":
        for subject in doc["subjects"]:
            subject["namespace"] = ns
    if doc["kind"] == "Deployment":
        pod = doc["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        args = [a for a in c["args"] if not a.startswith("--prometheus-config-reloader=")]
        assert len(args) == len(c["args"]) - 1, c["args"]
        c["image"], c["imagePullPolicy"] = operator, "Never"
        c["args"] = [*args, f"--prometheus-config-reloader={reloader}"]
        c["securityContext"] = restricted
        pod["securityContext"] = pod_restricted
    out.append(doc)

# what kube-prometheus-stack makes for its Prometheus: an account that may read targets, the
# Prometheus object (selecting by the release label, in every namespace) and its Service
labels = {"app.kubernetes.io/name": "prometheus", "app.kubernetes.io/part-of": "fissure-node"}
out += [
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns, "labels": labels}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name, "labels": labels},
     "rules": [{"apiGroups": [""], "resources": ["nodes", "nodes/metrics", "services", "endpoints", "pods"],
                "verbs": ["get", "list", "watch"]},
               {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
               {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": ["get", "list", "watch"]},
               {"nonResourceURLs": ["/metrics", "/metrics/cadvisor"], "verbs": ["get"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name, "labels": labels},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
     "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]},
    {"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus", "metadata": {"name": name, "namespace": ns, "labels": labels},
     "spec": {
         "image": prometheus, "version": prometheus.rsplit(":", 1)[1], "imagePullPolicy": "Never",
         "replicas": 1, "serviceAccountName": name, "retention": "1d",
         "scrapeInterval": "15s", "evaluationInterval": "15s",
         "serviceMonitorSelector": {"matchLabels": {"release": release}}, "serviceMonitorNamespaceSelector": {},
         "podMonitorSelector": {"matchLabels": {"release": release}}, "podMonitorNamespaceSelector": {},
         "ruleSelector": {"matchLabels": {"release": release}}, "ruleNamespaceSelector": {},
         "securityContext": pod_restricted,
         "resources": {"requests": {"cpu": "50m", "memory": "200Mi"}, "limits": {"memory": "1Gi"}}}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "labels": labels},
     "spec": {"selector": {"app.kubernetes.io/name": "prometheus", "prometheus": name},
              "ports": [{"name": "http-web", "port": 9090, "targetPort": 9090}]}},
]
yaml.safe_dump_all(out, sys.stdout, sort_keys=False)
PY
apply -f "$dl/prometheus.yaml"
"${kubectl[@]}" -n monitoring rollout status deploy/prometheus-operator --timeout=300s
# the operator makes the StatefulSet a moment after it sees the Prometheus object
for _ in $(seq 1 60); do
  "${kubectl[@]}" -n monitoring get statefulset prometheus-kube-prometheus-stack-prometheus >/dev/null 2>&1 && break
  sleep 2
done
"${kubectl[@]}" -n monitoring rollout status statefulset/prometheus-kube-prometheus-stack-prometheus --timeout=300s
"${kubectl[@]}" -n monitoring wait --for=condition=Available prometheus/kube-prometheus-stack-prometheus --timeout=120s
log "Prometheus answers at http://kube-prometheus-stack-prometheus.monitoring.svc:9090"
