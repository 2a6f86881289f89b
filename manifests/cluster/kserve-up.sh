#!/usr/bin/env bash
# make cluster-kserve: KServe on the single-node cluster of `make cluster-up`, installed from the
# pinned upstream manifest (../shared/k8s-upstream/kserve-VERSION/kserve.yaml) as up.sh installs it
# on kind (render-upstream.py: kserve Namespace, Standard mode, Gateway API, restricted storage
# initializer), with what this machine cannot pull replaced:
#   - the controllers: fissure.local/kserve-controller:VERSION and
#     fissure.local/llmisvc-controller:VERSION (LLMInferenceService and its configs' webhooks),
#     built by images.sh from KServe's Go module (the localmodel controllers are left out);
#   - the storage initializer KServe injects: fissure.local/kserve-storage-initializer:VERSION;
#   - cert-manager: the webhooks' certificate is made here (openssl: a CA and one serving
#     certificate for kserve-webhook-server-service and llmisvc-webhook-server-service in kserve,
#     kept under STATE/kserve-pki), their Secrets written and the CA bundle set on the webhook
#     configurations and conversion webhooks by render-upstream.py.
# Gateway API's CRDs (v1.2.1, standard) go in first: KServe's controller watches HTTPRoutes.
# Then, as up.sh on kind, kserve-cluster-resources.yaml (the ClusterServingRuntimes and the
# LLMInferenceServiceConfigs), which the two controllers' webhooks validate: applied once both
# answer, and retried while they come up.
# Re-runnable (one server-side apply under one field manager).
#
# usage: kserve-up.sh BIN_DIR [STATE_DIR]      (env: KSERVE_VERSION, GATEWAY_API_VERSION)
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${1:?usage: kserve-up.sh BIN_DIR [STATE_DIR]}"
state="$(cd "${2:-.fissure/cluster}" 2>/dev/null && pwd)" || { echo "kserve-up: no cluster state in ${2:-.fissure/cluster}: make cluster-up first" >&2; exit 1; }
kserve_version="${KSERVE_VERSION:-v0.20.0}"
gateway_api_version="${GATEWAY_API_VERSION:-v1.2.1}"
image="fissure.local/kserve-controller:$kserve_version"
llmisvc="fissure.local/llmisvc-controller:$kserve_version"
initializer="fissure.local/kserve-storage-initializer:$kserve_version"
name=kserve-up
# shellcheck source=manifests/cluster/lib.sh
. "$here/lib.sh"

log "importing $image, $llmisvc and $initializer"
CTR_ADDRESS="$state/containerd/containerd.sock" "$here/images.sh" import kserve-controller llmisvc-controller storage-initializer

log "Gateway API $gateway_api_version CRDs (standard channel)"
apply -f "$(upstream "gateway-api-$gateway_api_version" standard-install.yaml \
  "https://github.com/kubernetes-sigs/gateway-api/releases/download/$gateway_api_version/standard-install.yaml")"

pki="$state/kserve-pki"
# (a certificate made before llmisvc ran here lacks its name: made again)
if [ ! -f "$pki/tls.crt" ] || ! grep -q llmisvc-webhook-server-service "$pki/tls.ext" 2>/dev/null; then
  log "making the webhooks' CA and serving certificate (no cert-manager)"
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=fissure-kserve-webhook-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kserve-webhook-server-service.kserve.svc" \
    -keyout "$pki/tls.key" -out "$pki/tls.csr" 2>/dev/null
  sans=""
  for svc in kserve-webhook-server-service llmisvc-webhook-server-service; do
    sans="$sans${sans:+,}DNS:$svc.kserve.svc,DNS:$svc.kserve.svc.cluster.local,DNS:$svc.kserve"
  done
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$sans" > "$pki/tls.ext"
  openssl x509 -req -in "$pki/tls.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/tls.ext" -out "$pki/tls.crt" 2>/dev/null
  chmod 600 "$pki/"*.key
fi

log "KServe $kserve_version (Standard mode; controllers $image, $llmisvc; webhook certificate from $pki)"
"$python" "$repo/manifests/kind/render-upstream.py" kserve \
  "$(upstream "kserve-$kserve_version" kserve.yaml \
     "https://github.com/kserve/kserve/releases/download/$kserve_version/kserve.yaml")" \
  --controller-image "$image" --llmisvc-image "$llmisvc" --storage-initializer-image "$initializer" \
  --webhook-certs "$pki" > "$dl/kserve.yaml"
apply -f "$dl/kserve.yaml"
"${kubectl[@]}" -n kserve rollout status deploy/kserve-controller-manager --timeout=300s
"${kubectl[@]}" -n kserve rollout status deploy/llmisvc-controller-manager --timeout=300s
# the webhook answers: a server-side dry run of a ServingRuntime goes through it
probe='{"apiVersion":"serving.kserve.io/v1alpha1","kind":"ServingRuntime","metadata":{"name":"fissure-webhook-probe","namespace":"default"},"spec":{"supportedModelFormats":[{"name":"x"}],"containers":[{"name":"kserve-container","image":"x"}]}}'
up=""
for i in $(seq 1 60); do
  if echo "$probe" | "${kubectl[@]}" apply --dry-run=server -f - >/dev/null 2>"$dl/probe.log"; then
    up=1; log "KServe's controller and webhook are up"; break
  fi
  sleep 2
done
[ -n "$up" ] || { echo "kserve-up: KServe's webhook does not answer: $(cat "$dl/probe.log")" >&2; exit 1; }

# kserve-cluster-resources.yaml: its LLMInferenceServiceConfigs go through llmisvc's webhook,
# whose endpoints may still be coming up (apply retries: issue 16's item 7)
log "KServe $kserve_version cluster resources (ClusterServingRuntimes, LLMInferenceServiceConfigs)"
apply -f "$(upstream "kserve-$kserve_version" kserve-cluster-resources.yaml \
  "https://github.com/kserve/kserve/releases/download/$kserve_version/kserve-cluster-resources.yaml")"
log "KServe's controllers, webhooks and cluster resources are up"
