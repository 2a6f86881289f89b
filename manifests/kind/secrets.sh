#!/usr/bin/env bash
# Creates the Secrets the fissure chart references, once, with random passwords. Existing
# Secrets are left alone (so upgrades keep their passwords). Nothing is written to disk.
set -euo pipefail
ns="${1:-fissure}"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
rand() { LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32; }
exists() { kubectl -n "$ns" get secret "$1" >/dev/null 2>&1; }

exists fissure-postgresql || kubectl -n "$ns" create secret generic fissure-postgresql \
  --from-literal=password="$(rand)"
if ! exists fissure-minio; then
  user="fissure-$(rand | head -c 8)"; pass="$(rand)"
  kubectl -n "$ns" create secret generic fissure-minio \
    --from-literal=root-user="$user" --from-literal=root-password="$pass"
  # The same credentials for KServe's storage initializer and the training workflows, with
  # the annotations KServe reads S3 settings from.
  kubectl -n "$ns" create secret generic fissure-s3 \
    --from-literal=AWS_ACCESS_KEY_ID="$user" --from-literal=AWS_SECRET_ACCESS_KEY="$pass"
  kubectl -n "$ns" annotate secret fissure-s3 \
    serving.kserve.io/s3-endpoint=fissure-minio."$ns".svc:9000 \
    serving.kserve.io/s3-usehttps=0 serving.kserve.io/s3-region=us-east-1 \
    serving.kserve.io/s3-useanoncredential=false
fi
echo ">> secrets present in namespace $ns"
