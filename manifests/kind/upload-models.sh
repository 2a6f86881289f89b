#!/usr/bin/env bash
# Packages the local champions (`fissure package --model models:/<model>@champion`, the KServe
# layout: <dir>/<model>/model-store/<model>.mar + <dir>/<model>/config/config.properties) unless
# already packaged under $FISSURE_KSERVE_DIR, and copies them into the
# in-cluster MinIO at s3://fissure-models/<model>/champion (the chart's default storageUri),
# using a short-lived pod with the MinIO client, then restarts the predictors.
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
kubectl -n "$ns" run "$pod" --image "$mc_image" --restart=Never \
  --overrides='{"spec":{"securityContext":{"runAsNonRoot":true,"runAsUser":1000,"seccompProfile":{"type":"RuntimeDefault"}},"containers":[{"name":"fissure-upload-models","image":"'"$mc_image"'","command":["sleep","600"],"securityContext":{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}},"env":[{"name":"U","valueFrom":{"secretKeyRef":{"name":"fissure-minio","key":"root-user"}}},{"name":"P","valueFrom":{"secretKeyRef":{"name":"fissure-minio","key":"root-password"}}}]}]}}' >/dev/null
trap 'kubectl -n "$ns" delete pod "$pod" --ignore-not-found --wait=false >/dev/null' EXIT
kubectl -n "$ns" wait --for=condition=Ready "pod/$pod" --timeout=120s
kubectl -n "$ns" exec "$pod" -- sh -c "mc --config-dir /tmp/mc alias set m http://$release-minio:9000 \"\$U\" \"\$P\" >/dev/null"
for model in crack-classifier crack-segmenter; do
  [ -d "$src/$model" ] || { echo "upload-models: no $src/$model, skipped"; continue; }
  kubectl -n "$ns" cp "$src/$model" "$pod:/tmp/$model"
  kubectl -n "$ns" exec "$pod" -- mc --config-dir /tmp/mc mirror --overwrite "/tmp/$model" "m/fissure-models/$model/champion"
  kubectl -n "$ns" rollout restart deploy -l "serving.kserve.io/inferenceservice=$model" || true
done
