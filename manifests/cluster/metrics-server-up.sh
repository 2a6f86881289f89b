#!/usr/bin/env bash
# make cluster-metrics-server: metrics-server on the single-node cluster of `make cluster-up`, so
# that the resource metrics API (metrics.k8s.io) answers and HorizontalPodAutoscalers act (KServe's
# CPU autoscaling is one HPA per InferenceService in Standard mode; `kubectl top` reads it too).
# The manifest is upstream's release overlay (manifests/overlays/release, rendered by kubectl's
# kustomize) from the pinned Go module, the same objects as the release's components.yaml that
# manifests/kind/up.sh applies on kind, with the same edit (--kubelet-insecure-tls: the kubelet's
# serving certificate is self-signed) and the image replaced by fissure.local/metrics-server:VERSION
# (images.sh builds it from the same module). up.sh turns on the aggregation layer the APIService
# needs (front-proxy client certificate, --enable-aggregator-routing: the apiserver runs on the host
# and dials the pod directly). Re-runnable (one server-side apply under one field manager).
#
# usage: metrics-server-up.sh BIN_DIR [STATE_DIR]      (env: METRICS_SERVER_VERSION, GO)
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${1:?usage: metrics-server-up.sh BIN_DIR [STATE_DIR]}"
state="$(cd "${2:-.fissure/cluster}" 2>/dev/null && pwd)" || { echo "metrics-server-up: no cluster state in ${2:-.fissure/cluster}: make cluster-up first" >&2; exit 1; }
# shellcheck source=manifests/kind/versions.env
. "$repo/manifests/kind/versions.env"
version="${METRICS_SERVER_VERSION:?}"
image="fissure.local/metrics-server:$version"
name=metrics-server-up
# shellcheck source=manifests/cluster/lib.sh
. "$here/lib.sh"

log "importing $image"
CTR_ADDRESS="$state/containerd/containerd.sock" "$here/images.sh" import metrics-server

module=$(cd "${TMPDIR:-/tmp}" && "${GO:-go}" mod download -json "sigs.k8s.io/metrics-server@$version" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$module/manifests/overlays/release" ] || { echo "metrics-server-up: go mod download sigs.k8s.io/metrics-server@$version failed" >&2; exit 1; }
"${kubectl[@]}" kustomize "$module/manifests/overlays/release" > "$dl/components.yaml"
"$repo/manifests/kind/up.sh" --render-metrics-server "$dl/components.yaml" \
  | sed "s#image: registry.k8s.io/metrics-server/metrics-server:$version#image: $image#" > "$dl/metrics-server.yaml"
grep -q "image: $image\$" "$dl/metrics-server.yaml" || { echo "metrics-server-up: the release overlay names no registry.k8s.io/metrics-server/metrics-server:$version image" >&2; exit 1; }

log "metrics-server $version ($image, --kubelet-insecure-tls)"
apply -f "$dl/metrics-server.yaml"
"${kubectl[@]}" -n kube-system rollout status deploy/metrics-server --timeout=300s
"${kubectl[@]}" wait --for=condition=Available apiservice/v1beta1.metrics.k8s.io --timeout=180s
log "the resource metrics API answers (kubectl top node)"
