#!/usr/bin/env bash
# Makes the release's namespace with Pod Security `restricted` enforced, and creates the Secrets
# the fissure chart references, once, with random passwords. Existing Secrets are left alone
# (so upgrades keep their passwords). Nothing is written to disk.
set -euo pipefail
ns="${1:-fissure}"
# Server-side apply under our own field manager: re-running it (or anyone else applying the
# namespace) keeps the labels; a client-side apply of a bare namespace used to drop them.
kubectl apply --server-side --field-manager=fissure-namespace -f - <<EOF_NS
apiVersion: v1
kind: Namespace
metadata:
  name: $ns
  labels:
    # the restricted Pod Security Standard: the chart's pods, KServe's storage initializer and
    # Argo's executor containers (manifests/kind/render-upstream.py) comply
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
    pod-security.kubernetes.io/warn: restricted
    pod-security.kubernetes.io/warn-version: latest
EOF_NS
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
