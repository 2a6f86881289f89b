#!/usr/bin/env bash
# make e2e-kind: `helm test`, then inference over REST (curl) and gRPC (fissure predict, which
# sets the :authority the GRPCRoute matches) through the Gateway. Written for a laptop with kind; untested on the project's machines.
set -euo pipefail
ns="${1:-fissure}"; release="${2:-fissure}"; host="${3:-fissure.localtest.me}"
helm="${HELM:-helm}"
image="${E2E_IMAGE:-tests/k8s/data/crack.png}"
test -x .venv/bin/fissure || { echo "e2e-kind: run 'make venv' first (fissure predict is the gRPC client)" >&2; exit 1; }
for tool in kubectl curl "$helm"; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: '$tool' is not installed" >&2; exit 1; }
done

"$helm" test "$release" -n "$ns" --logs --timeout 10m

# Envoy Gateway names the Service after the Gateway; find it by label and forward to it.
svc=$(kubectl -n envoy-gateway-system get svc \
  -l gateway.envoyproxy.io/owning-gateway-name=fissure-gateway,gateway.envoyproxy.io/owning-gateway-namespace=fissure-gateway \
  -o jsonpath='{.items[0].metadata.name}')
kubectl -n envoy-gateway-system port-forward "svc/$svc" 18080:80 >/dev/null 2>&1 &
pf=$!; trap 'kill $pf' EXIT; sleep 3

b64=$(base64 < "$image" | tr -d '\n')
for model in crack-classifier crack-segmenter; do
  echo ">> REST v2 ready + infer: $model"
  curl -fsS -H "Host: $host" "http://127.0.0.1:18080/v2/models/$model/ready"; echo
  curl -fsS -H "Host: $host" -H 'Content-Type: application/json' \
    -d "{\"inputs\":[{\"name\":\"image\",\"shape\":[1],\"datatype\":\"BYTES\",\"data\":[\"$b64\"]}]}" \
    "http://127.0.0.1:18080/v2/models/$model/infer" | head -c 400; echo
  echo ">> REST v1 predict: $model"
  curl -fsS -H "Host: $host" -H 'Content-Type: application/json' \
    -d "{\"instances\":[{\"b64\":\"$b64\"}]}" "http://127.0.0.1:18080/v1/models/$model:predict" | head -c 400; echo
  echo ">> gRPC v2 infer through the gateway: $model (authority $model.grpc.$host)"
  .venv/bin/fissure predict --protocol grpc --grpc-url 127.0.0.1:18080 --grpc-authority "$model.grpc.$host" \
    --url "http://127.0.0.1:18080" --model "$model" "$image"
done
echo ">> e2e-kind: REST and gRPC predictions through the gateway succeeded"
