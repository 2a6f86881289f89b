# Sourced by the add-on installers (kserve-up.sh, argo-up.sh) after they set `name`, `bin`,
# `state` and `repo`: kubectl against the node, the venv's python, a scratch folder removed on
# exit, and the two ways they install upstream manifests. Not a script of its own.
# shellcheck shell=bash disable=SC2154  # name, bin, state, repo: set by the sourcing script
kubectl=("$bin/kubectl" --kubeconfig "$state/kubeconfigs/admin")
python="$repo/.venv/bin/python"; [ -x "$python" ] || python=python3
log() { echo ">> $name: $*"; }

"${kubectl[@]}" get --raw /readyz >/dev/null 2>&1 || { echo "$name: the cluster's API server does not answer: make cluster-up first" >&2; exit 1; }

dl="$(mktemp -d)"; trap 'rm -rf "$dl"' EXIT
upstream_dir="$(cd "$repo/.." && pwd)/shared/k8s-upstream"
upstream() {  # upstream LOCAL_SUBDIR FILE URL -> path of the pinned copy in ../shared, else downloaded
  if [ -f "$upstream_dir/$1/$2" ]; then echo "$upstream_dir/$1/$2"
  else curl -fsSL -o "$dl/$1-$2" "$3" && echo "$dl/$1-$2"; fi
}
apply() {  # server-side under one field manager (re-runnable), again while CRDs become established and webhooks come up
  local i
  for i in $(seq 1 30); do
    "${kubectl[@]}" apply --server-side --force-conflicts --field-manager=fissure-cluster-up "$@" >"$dl/apply.log" 2>&1 && return 0
    [ "$i" = 1 ] && log "apply not complete yet: waiting for CRDs and webhooks ($(grep -m1 -i error "$dl/apply.log" | cut -c1-200))"
    "${kubectl[@]}" wait --for=condition=Established crd --all --timeout=30s >/dev/null 2>&1 || true
    sleep 5
  done
  cat "$dl/apply.log" >&2; return 1
}
