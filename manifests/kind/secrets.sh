#!/usr/bin/env bash
# Makes the release's namespace with Pod Security `restricted` enforced, and creates the Secrets
# the fissure chart references, once, with random passwords. Existing Secrets are left alone
# (so upgrades keep their passwords). Nothing is written to disk.
set -euo pipefail
command -v openssl >/dev/null || { echo "secrets.sh: 'openssl' is not installed" >&2; exit 1; }
ns="${1:-fissure}"
# Create if absent, then label: a client-side `kubectl apply` of a bare namespace used to drop
# the labels on every re-run, and a server-side apply would drop labels others set with
# kubectl apply (kubectl hands their fields to the server-side manager). `kubectl label`
# patches only these keys. The restricted Pod Security Standard: the chart's pods, KServe's
# storage initializer and Argo's executor containers (render-upstream.py) comply.
kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns"
kubectl label namespace "$ns" --overwrite \
  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest \
  pod-security.kubernetes.io/warn=restricted pod-security.kubernetes.io/warn-version=latest
# openssl, not `tr </dev/urandom | head`: under pipefail that pipeline dies of SIGPIPE (exit 141)
rand() { openssl rand -hex "${1:-16}"; }
exists() { kubectl -n "$ns" get secret "$1" >/dev/null 2>&1; }

exists fissure-postgresql || kubectl -n "$ns" create secret generic fissure-postgresql \
  --from-literal=password="$(rand)"
if ! exists fissure-minio; then
  user="fissure-$(rand 4)"; pass="$(rand)"
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
