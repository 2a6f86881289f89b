#!/usr/bin/env bash
# make e2e-kind: `helm test`, then inference over REST (curl) and gRPC (fissure predict, which
# sets the :authority the GRPCRoute matches) through the Gateway, by a port-forward to the
# gateway's Service. Two cluster back-ends, one script:
#   kind (manifests/kind/up.sh): Envoy Gateway's Service for fissure-gateway/fissure-gateway,
#     found by its labels (the default);
#   the single-node cluster (make cluster-up cluster-gateway): Traefik's Service,
#     GATEWAY_SERVICE=fissure-gateway/traefik (NAMESPACE/NAME; its port 80 serves the Gateway).
# tests/cluster/test_cluster_deploy.py runs it against the single node; on kind it is untested
# on the project's machines (kind's nodes cannot start there).
set -euo pipefail
ns="${1:-fissure}"; release="${2:-fissure}"; host="${3:-fissure.localtest.me}"
helm="${HELM:-helm}"
image="${E2E_IMAGE:-tests/k8s/data/crack.png}"
test -x .venv/bin/fissure || { echo "e2e-kind: run 'make venv' first (fissure predict is the gRPC client)" >&2; exit 1; }
for tool in kubectl curl "$helm"; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: '$tool' is not installed" >&2; exit 1; }
done

# (no --logs: the chart deletes test pods that succeed, and `helm test --logs` then fails looking
# for them; a failed one stays, and its log is printed here)
if ! "$helm" test "$release" -n "$ns" --timeout 10m; then
  kubectl -n "$ns" logs -l app.kubernetes.io/component=test --all-containers --prefix --tail 50 >&2 || true
  echo "e2e-kind: helm test failed" >&2; exit 1
fi

if [ -n "${GATEWAY_SERVICE:-}" ]; then
  gw_ns=${GATEWAY_SERVICE%%/*}; svc=${GATEWAY_SERVICE#*/}
else  # Envoy Gateway names the Service after the Gateway; find it by label
  gw_ns=envoy-gateway-system
  svc=$(kubectl -n "$gw_ns" get svc \
    -l gateway.envoyproxy.io/owning-gateway-name=fissure-gateway,gateway.envoyproxy.io/owning-gateway-namespace=fissure-gateway \
    -o jsonpath='{.items[0].metadata.name}')
fi
[ -n "$svc" ] || { echo "e2e-kind: no gateway Service found (set GATEWAY_SERVICE=NAMESPACE/NAME)" >&2; exit 1; }
port="${E2E_LOCAL_PORT:-18080}"
kubectl -n "$gw_ns" port-forward "svc/$svc" "$port:80" >/dev/null 2>&1 &
pf=$!; trap 'kill $pf' EXIT
for _ in $(seq 1 30); do  # until the forward listens
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 1
done

b64=$(base64 < "$image" | tr -d '\n')
for model in crack-classifier crack-segmenter; do
  echo ">> REST v2 ready + infer: $model"
  curl -fsS -H "Host: $host" "http://127.0.0.1:$port/v2/models/$model/ready"; echo
  # (the whole answer read, then cut: `| head` would end curl with SIGPIPE, a failure under pipefail)
  out=$(curl -fsS -H "Host: $host" -H 'Content-Type: application/json' \
    -d "{\"inputs\":[{\"name\":\"image\",\"shape\":[1],\"datatype\":\"BYTES\",\"data\":[\"$b64\"]}]}" \
    "http://127.0.0.1:$port/v2/models/$model/infer"); echo "${out:0:400}"
  echo ">> REST v1 predict: $model"
  out=$(curl -fsS -H "Host: $host" -H 'Content-Type: application/json' \
    -d "{\"instances\":[{\"b64\":\"$b64\"}]}" "http://127.0.0.1:$port/v1/models/$model:predict"); echo "${out:0:400}"
  echo ">> gRPC v2 infer through the gateway: $model (authority $model.grpc.$host)"
  .venv/bin/fissure predict --protocol grpc --grpc-url "127.0.0.1:$port" --grpc-authority "$model.grpc.$host" \
    --url "http://127.0.0.1:$port" --model "$model" "$image"
done
echo ">> e2e-kind: REST and gRPC predictions through the gateway succeeded"
