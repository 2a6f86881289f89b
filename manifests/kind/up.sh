#!/usr/bin/env bash
# make kind-up: a kind cluster with everything fissure needs, at pinned versions
# (versions.env): metrics-server, cert-manager, Gateway API + Envoy Gateway, KServe (Standard
# mode, Gateway API), Argo Workflows, kube-prometheus-stack. MinIO comes with the fissure chart
# itself. Needs docker, kind, kubectl, helm. Written for a laptop; not run on the project's CI
# machines (they have no Docker engine).
#
# Usage: up.sh [CLUSTER]                        create (or complete) the kind cluster CLUSTER
#        up.sh --render-metrics-server FILE     print metrics-server's manifest FILE as applied
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=manifests/kind/versions.env
source "$here/versions.env"

# metrics-server's upstream manifest with --kubelet-insecure-tls added to its container args:
# kind's kubelets serve self-signed certificates that metrics-server refuses otherwise (and then
# reports no metrics, so no HorizontalPodAutoscaler, KServe's included, ever acts). Edited in the
# manifest, not patched afterwards, so a second server-side apply does not conflict.
render_metrics_server() {  # render_metrics_server FILE -> manifest on stdout
  local out
  out="$(sed 's|^\( *\)- --cert-dir=/tmp$|&\n\1- --kubelet-insecure-tls|' "$1")"
  if [ "$(grep -c -- '- --kubelet-insecure-tls$' <<<"$out")" != 1 ]; then
    echo "kind-up: cannot add --kubelet-insecure-tls to $1 (no '- --cert-dir=/tmp' arg, or more than one)" >&2
    return 1
  fi
  printf '%s\n' "$out"
}

case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  --render-metrics-server)
    [ -f "${2:-}" ] || { echo "kind-up: --render-metrics-server needs a manifest file" >&2; exit 2; }
    render_metrics_server "$2"; exit ;;
  -*) echo "kind-up: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac
cluster="${1:-fissure}"
helm="${HELM:-helm}"

for tool in docker kind kubectl curl "$helm"; do
  command -v "$tool" >/dev/null || { echo "kind-up: '$tool' is not installed" >&2; exit 1; }
done

if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --config "$here/cluster.yaml" --image "$KIND_NODE_IMAGE" --wait 120s
fi
kubectl config use-context "kind-$cluster"

# Upstream manifests: the pinned copies in ../shared/k8s-upstream when present, else the release URLs.
upstream_dir="$(cd "$here/../../.." && pwd)/shared/k8s-upstream"
dl="$(mktemp -d)"; trap 'rm -rf "$dl"' EXIT
upstream() {  # upstream LOCAL_SUBDIR FILE URL -> path of the file
  if [ -f "$upstream_dir/$1/$2" ]; then echo "$upstream_dir/$1/$2"
  else curl -fsSL -o "$dl/$1-$2" "$3" && echo "$dl/$1-$2"; fi
}
# Server-side apply, again after the CRDs it just created are established (custom resources
# in the same file are refused until then) and while a webhook's endpoints come up.
apply() {
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    kubectl apply --server-side --field-manager=fissure-kind-up "$@" && return 0
    echo ">> apply not complete yet (attempt $i): waiting for CRDs and webhooks" >&2
    kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null || true
    sleep 10
  done
  return 1
}
python="$here/../../.venv/bin/python"; [ -x "$python" ] || python=python3

echo ">> metrics-server $METRICS_SERVER_VERSION (--kubelet-insecure-tls: kind's kubelet certificates are self-signed)"
# The resource metrics API that KServe's CPU autoscaling (an HPA per InferenceService) reads.
# ../shared/k8s-upstream has no copy of it: the release URL is used.
curl -fsSL -o "$dl/metrics-server-components.yaml" \
  "https://github.com/kubernetes-sigs/metrics-server/releases/download/$METRICS_SERVER_VERSION/components.yaml"
render_metrics_server "$dl/metrics-server-components.yaml" > "$dl/metrics-server.yaml"
apply -f "$dl/metrics-server.yaml"
kubectl -n kube-system rollout status deploy/metrics-server --timeout=300s
kubectl wait --for=condition=Available apiservice/v1beta1.metrics.k8s.io --timeout=120s

echo ">> cert-manager $CERT_MANAGER_VERSION"
apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
kubectl -n cert-manager rollout status deploy --timeout=300s

echo ">> Gateway API $GATEWAY_API_VERSION (standard channel) + Envoy Gateway $ENVOY_GATEWAY_VERSION"
apply -f "$(upstream "gateway-api-$GATEWAY_API_VERSION" standard-install.yaml \
  "https://github.com/kubernetes-sigs/gateway-api/releases/download/$GATEWAY_API_VERSION/standard-install.yaml")"
"$helm" upgrade --install eg oci://docker.io/envoyproxy/gateway-helm --version "$ENVOY_GATEWAY_VERSION" \
  --namespace envoy-gateway-system --create-namespace --skip-crds --wait --timeout 10m
apply -f "$here/gateway.yaml"

echo ">> KServe $KSERVE_VERSION (Standard mode, Gateway API, restricted storage initializer)"
# render-upstream.py adds the kserve Namespace and sets our inferenceservice-config and the
# storage initializer's securityContext in the manifest itself: one apply, re-runnable.
"$python" "$here/render-upstream.py" kserve --gateway fissure-gateway/fissure-gateway \
  "$(upstream "kserve-$KSERVE_VERSION" kserve.yaml \
     "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve.yaml")" > "$dl/kserve.yaml"
apply -f "$dl/kserve.yaml"
# Every controller, llmisvc-controller-manager included: it serves the webhook that validates
# the LLMInferenceServiceConfigs in kserve-cluster-resources.yaml (apply() retries while its
# endpoints and certificate come up).
kubectl -n kserve rollout status deploy --timeout=300s
apply -f "$(upstream "kserve-$KSERVE_VERSION" kserve-cluster-resources.yaml \
  "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve-cluster-resources.yaml")"

echo ">> Argo Workflows $ARGO_WORKFLOWS_VERSION (executor with a restricted securityContext)"
kubectl get namespace argo >/dev/null 2>&1 || kubectl create namespace argo
"$python" "$here/render-upstream.py" argo \
  "$(upstream "argo-workflows-$ARGO_WORKFLOWS_VERSION" install.yaml \
     "https://github.com/argoproj/argo-workflows/releases/download/$ARGO_WORKFLOWS_VERSION/install.yaml")" > "$dl/argo.yaml"
apply -n argo -f "$dl/argo.yaml"
kubectl -n argo rollout status deploy --timeout=300s

echo ">> kube-prometheus-stack $KUBE_PROMETHEUS_STACK_VERSION (selects every PodMonitor; Grafana loads fissure's dashboards)"
# The fissure chart's dashboard ConfigMaps (label grafana_dashboard: "1") live in the release's
# namespace, not in monitoring: the Grafana sidecar must search every namespace to find them.
"$helm" upgrade --install kube-prometheus-stack kube-prometheus-stack \
  --repo https://prometheus-community.github.io/helm-charts --version "$KUBE_PROMETHEUS_STACK_VERSION" \
  --namespace monitoring --create-namespace \
  --set prometheus.prometheusSpec.podMonitorSelectorNilUsesHelmValues=false \
  --set prometheus.prometheusSpec.serviceMonitorSelectorNilUsesHelmValues=false \
  --set grafana.sidecar.dashboards.enabled=true \
  --set grafana.sidecar.dashboards.searchNamespace=ALL \
  --set alertmanager.enabled=false --wait --timeout 10m

echo ">> kind cluster '$cluster' is ready: next 'make images deploy e2e-kind'"
