#!/usr/bin/env bash
# make cluster-gateway: a Gateway on the single-node cluster of `make cluster-up`, so that the
# chart's HTTPRoute and GRPCRoutes (route.type gatewayAPI, its default) carry traffic as on kind.
# Traefik is the implementation (manifests/cluster/traefik.yaml says why and how it is set up):
# its binary from `make gateway-traefik` in the one-file image fissure.local/traefik:VERSION
# (images.sh), the Gateway API standard CRDs from `make gateway-crds` (v1.4: Traefik v3.6 watches
# BackendTLSPolicy v1, which the v1.2.1 CRDs kserve-up.sh applies lack; v1.4 serves the same v1
# routes KServe's controller watches), and Traefik's own RBAC for its Gateway provider. Clients
# in the cluster (and on this host, which routes the service network) reach the Gateway at the
# `traefik` Service in fissure-gateway, port 80; the REST host picks the routes
# (route.host), gRPC's :authority the model (<model>.<route.grpcHostSuffix>). The same Traefik is
# the node's Ingress controller (IngressClass `traefik`) for the chart's route.type=ingress.
# Re-runnable (one server-side apply under one field manager).
#
# usage: traefik-up.sh BIN_DIR [STATE_DIR]      (env: TRAEFIK_VERSION, GO)
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${1:?usage: traefik-up.sh BIN_DIR [STATE_DIR]}"
state="$(cd "${2:-.fissure/cluster}" 2>/dev/null && pwd)" || { echo "traefik-up: no cluster state in ${2:-.fissure/cluster}: make cluster-up first" >&2; exit 1; }
name=traefik-up
# shellcheck source=manifests/cluster/lib.sh
. "$here/lib.sh"

# the binary, its RBAC and the CRDs: mk/gateway.mk (stamped: no-ops once built)
make -C "$repo" --no-print-directory -s ${GO:+"GO=$GO"} ${TRAEFIK_VERSION:+"TRAEFIK_VERSION=$TRAEFIK_VERSION"} \
  gateway-traefik gateway-crds >&2 || { echo "traefik-up: make gateway-traefik gateway-crds failed" >&2; exit 1; }
paths=$(make -C "$repo" --no-print-directory -s ${TRAEFIK_VERSION:+"TRAEFIK_VERSION=$TRAEFIK_VERSION"} gateway-paths)
value() { sed -n "s/^$1=//p" <<<"$paths"; }
version=$(value TRAEFIK_VERSION); crds=$(value GATEWAY_API_CRDS); rbac=$(value TRAEFIK_RBAC)
image="fissure.local/traefik:$version"

log "importing $image"
CTR_ADDRESS="$state/containerd/containerd.sock" TRAEFIK_VERSION="$version" "$here/images.sh" build traefik >/dev/null
CTR_ADDRESS="$state/containerd/containerd.sock" TRAEFIK_VERSION="$version" "$here/images.sh" import traefik

log "Gateway API $(value GATEWAY_API_VERSION) CRDs (standard channel, from the Go module)"
apply -f "$crds"
log "Traefik $version: its Gateway provider's RBAC, the Deployment, the Service, the GatewayClass and Gateway"
sed 's/^\(    namespace:\) default$/\1 fissure-gateway/' "$rbac" > "$dl/rbac.yaml"
grep -q '^    namespace: fissure-gateway$' "$dl/rbac.yaml" || { echo "traefik-up: $rbac binds no ServiceAccount in namespace default" >&2; exit 1; }
sed "s#__TRAEFIK_IMAGE__#$image#" "$here/traefik.yaml" > "$dl/traefik.yaml"
apply -f "$dl/traefik.yaml" -f "$dl/rbac.yaml"
"${kubectl[@]}" -n fissure-gateway rollout status deploy/traefik --timeout=300s
"${kubectl[@]}" -n fissure-gateway wait --for=condition=Programmed gateway/fissure-gateway --timeout=180s
log "the Gateway is Programmed: fissure-gateway/fissure-gateway at $("${kubectl[@]}" -n fissure-gateway get svc traefik -o jsonpath='{.spec.clusterIP}'):80"
