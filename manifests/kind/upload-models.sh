#!/usr/bin/env bash
# Packages the local champions (`fissure package --model models:/<model>@champion`, the KServe
# layout: <dir>/<model>/model-store/<model>.mar + <dir>/<model>/config/config.properties) unless
# already packaged under $FISSURE_KSERVE_DIR, and copies them into the
# in-cluster MinIO at s3://fissure-models/<model>/champion (the chart's default storageUri),
# using a short-lived pod with the MinIO client, then restarts the predictors.
# The MinIO client image has no `tar`, so `kubectl cp` cannot copy into it: each file is
# streamed through `kubectl exec -i ... mc pipe` instead, and the alias comes from the
# MC_HOST_<alias> variable (no shell needed in the image).
set -euo pipefail
ns="${1:-fissure}"; release="${2:-fissure}"
src="${FISSURE_KSERVE_DIR:-.fissure/kserve}"
mc_image="${MC_IMAGE:-quay.io/minio/mc:RELEASE.2024-11-21T17-21-54Z}"
for model in crack-classifier crack-segmenter; do
  [ -d "$src/$model/model-store" ] && continue
  echo ">> packaging models:/$model@champion into $src/$model (train first with 'make up' if this fails)"
  .venv/bin/fissure package --model "models:/$model@champion" --out "$src/$model"
done

pod=fissure-upload-models
kubectl -n "$ns" delete pod "$pod" --ignore-not-found >/dev/null
# $(U) and $(P) are Kubernetes' own dependent-variable references, expanded by the kubelet
# shellcheck disable=SC2016
kubectl -n "$ns" run "$pod" --image "$mc_image" --restart=Never \
  --overrides='{"spec":{"securityContext":{"runAsNonRoot":true,"runAsUser":1000,"seccompProfile":{"type":"RuntimeDefault"}},"containers":[{"name":"fissure-upload-models","image":"'"$mc_image"'","command":["sleep","600"],"securityContext":{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}},"env":[{"name":"U","valueFrom":{"secretKeyRef":{"name":"fissure-minio","key":"root-user"}}},{"name":"P","valueFrom":{"secretKeyRef":{"name":"fissure-minio","key":"root-password"}}},{"name":"MC_HOST_m","value":"http://$(U):$(P)@'"$release"'-minio:9000"},{"name":"MC_CONFIG_DIR","value":"/tmp/mc"}]}]}}' >/dev/null
trap 'kubectl -n "$ns" delete pod "$pod" --ignore-not-found --wait=false >/dev/null' EXIT
kubectl -n "$ns" wait --for=condition=Ready "pod/$pod" --timeout=120s
for model in crack-classifier crack-segmenter; do
  [ -d "$src/$model" ] || { echo "upload-models: no $src/$model, skipped"; continue; }
  (cd "$src/$model" && find . -type f | sed 's|^\./||' | sort) | while IFS= read -r rel; do
    echo ">> s3://fissure-models/$model/champion/$rel"
    kubectl -n "$ns" exec -i "$pod" -- mc --config-dir /tmp/mc pipe "m/fissure-models/$model/champion/$rel" \
      < "$src/$model/$rel" >/dev/null
  done
  # the chart names each InferenceService <release>-<model>; its predictor Deployment carries that name
  kubectl -n "$ns" rollout restart deploy -l "serving.kserve.io/inferenceservice=$release-$model" \
    || echo "upload-models: no predictor of $release-$model to restart (is the chart installed?)"
done
