#!/usr/bin/env bash
# make kind-up: a kind cluster with everything fissure needs, at pinned versions
# (versions.env): cert-manager, Gateway API + Envoy Gateway, KServe (Standard mode, Gateway
# API), Argo Workflows, kube-prometheus-stack. MinIO comes with the fissure chart itself.
# Needs docker, kind, kubectl, helm. Written for a laptop; not run on the project's CI
# machines (they have no Docker engine).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cluster="${1:-fissure}"
helm="${HELM:-helm}"

for tool in docker kind kubectl "$helm"; do
  command -v "$tool" >/dev/null || { echo "kind-up: '$tool' is not installed" >&2; exit 1; }
done

if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --config "$here/cluster.yaml" --image "$KIND_NODE_IMAGE" --wait 120s
fi
kubectl config use-context "kind-$cluster"

echo ">> cert-manager $CERT_MANAGER_VERSION"
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
kubectl -n cert-manager rollout status deploy --timeout=300s

echo ">> Gateway API $GATEWAY_API_VERSION (standard channel) + Envoy Gateway $ENVOY_GATEWAY_VERSION"
kubectl apply --server-side -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/$GATEWAY_API_VERSION/standard-install.yaml"
"$helm" upgrade --install eg oci://docker.io/envoyproxy/gateway-helm --version "$ENVOY_GATEWAY_VERSION" \
  --namespace envoy-gateway-system --create-namespace --skip-crds --wait --timeout 10m
kubectl apply -f "$here/gateway.yaml"

echo ">> KServe $KSERVE_VERSION (Standard mode, Gateway API)"
kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve.yaml"
kubectl -n kserve rollout status deploy/kserve-controller-manager --timeout=300s
kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve-cluster-resources.yaml"
# Standard mode by default; the fissure chart creates its own routes, so KServe need not.
kubectl -n kserve get configmap inferenceservice-config -o json | python3 -c '
import json, sys
cm = json.load(sys.stdin)
deploy = json.loads(cm["data"].get("deploy", "{}")); deploy["defaultDeploymentMode"] = "Standard"
ingress = json.loads(cm["data"].get("ingress", "{}"))
ingress.update({"enableGatewayApi": True, "kserveIngressGateway": "fissure-gateway/fissure-gateway",
                "disableIngressCreation": True})
cm["data"]["deploy"] = json.dumps(deploy); cm["data"]["ingress"] = json.dumps(ingress)
json.dump(cm, sys.stdout)' | kubectl apply -f -
kubectl -n kserve rollout restart deploy/kserve-controller-manager
kubectl -n kserve rollout status deploy/kserve-controller-manager --timeout=300s

echo ">> Argo Workflows $ARGO_WORKFLOWS_VERSION"
kubectl create namespace argo --dry-run=client -o yaml | kubectl apply -f -
kubectl apply --server-side -n argo -f "https://github.com/argoproj/argo-workflows/releases/download/$ARGO_WORKFLOWS_VERSION/install.yaml"
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
