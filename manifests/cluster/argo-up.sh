#!/usr/bin/env bash
# make cluster-argo: Argo Workflows on the single-node cluster of `make cluster-up`, from the pinned
# upstream cluster install (../shared/k8s-upstream/argo-workflows-VERSION/install.yaml: CRDs, RBAC,
# the controller's ConfigMap and Deployment), with what this machine cannot pull replaced:
#   - the workflow controller: fissure.local/argo-workflow-controller:ARGO_WORKFLOWS_VERSION and the
#     executor it names (--executor-image) fissure.local/argoexec:ARGO_WORKFLOWS_VERSION, both built
#     by images.sh from the Go module (the proxy serves v4.0.5 as the newest v4; the manifests are
#     v4.1.2's) and imported into the node's containerd; pull policy Never;
#   - argo-server (the workflows' API, `argo server` over TLS on 2746, client auth mode: a caller's
#     bearer token acts as that caller): fissure.local/argocli:ARGO_WORKFLOWS_VERSION, cmd/argo from
#     the same module with an empty web UI (upstream builds the UI with yarn; the API needs none).
# The controller's ConfigMap gives the executor (the init and wait containers of every workflow
# pod) the securityContext Pod Security `restricted` asks for: runAsNonRoot, no privilege
# escalation, all capabilities dropped, seccomp RuntimeDefault, read-only root filesystem.
# Re-runnable (one server-side apply under one field manager).
#
# usage: argo-up.sh BIN_DIR [STATE_DIR]      (env: ARGO_MANIFEST_VERSION, ARGO_WORKFLOWS_VERSION)
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
bin="${1:?usage: argo-up.sh BIN_DIR [STATE_DIR]}"
state="$(cd "${2:-.fissure/cluster}" 2>/dev/null && pwd)" || { echo "argo-up: no cluster state in ${2:-.fissure/cluster}: make cluster-up first" >&2; exit 1; }
manifest_version="${ARGO_MANIFEST_VERSION:-v4.1.2}"
argo_version="${ARGO_WORKFLOWS_VERSION:-v4.0.5}"
controller="fissure.local/argo-workflow-controller:$argo_version"
executor="fissure.local/argoexec:$argo_version"
server="fissure.local/argocli:$argo_version"
name=argo-up
# shellcheck source=manifests/cluster/lib.sh
. "$here/lib.sh"
manifest="$(upstream "argo-workflows-$manifest_version" install.yaml \
  "https://github.com/argoproj/argo-workflows/releases/download/$manifest_version/install.yaml")"

log "importing $controller, $executor and $server"
CTR_ADDRESS="$state/containerd/containerd.sock" ARGO_WORKFLOWS_VERSION="$argo_version" "$here/images.sh" import argo-controller argoexec argocli

log "Argo Workflows (manifests $manifest_version, controller $controller, executor $executor, server $server)"
"$python" - "$manifest" "$controller" "$executor" "$server" > "$dl/argo.yaml" <<'PY'
import sys
import yaml

src, controller, executor, server = sys.argv[1:]
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
restricted = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
              "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
out = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "argo"}}]
for doc in yaml.load_all(open(src), Loader=Loader):
    if not doc:
        continue
    kind, name = doc["kind"], doc["metadata"]["name"]
    if kind == "ConfigMap" and name == "workflow-controller-configmap":
        doc["data"] = {"executor": yaml.safe_dump({"imagePullPolicy": "Never", "securityContext": restricted})}
    if kind == "Deployment" and name == "workflow-controller":
        pod = doc["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["name"] == "workflow-controller", c["name"]
        c["image"], c["imagePullPolicy"] = controller, "Never"
        c["command"] = ["/bin/workflow-controller"]
        c["args"] = ["--executor-image", executor, "--executor-image-pull-policy", "Never"]
        c["securityContext"] = restricted
        pod["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if kind == "Deployment" and name == "argo-server":
        pod = doc["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["name"] == "argo-server", c["name"]
        c["image"], c["imagePullPolicy"] = server, "Never"
        c["securityContext"] = restricted  # upstream's lacks only the seccomp profile
        pod["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    out.append(doc)
yaml.safe_dump_all(out, sys.stdout, sort_keys=False)
PY
apply -f "$dl/argo.yaml"
"${kubectl[@]}" -n argo rollout status deploy/workflow-controller --timeout=300s
"${kubectl[@]}" -n argo rollout status deploy/argo-server --timeout=300s
log "Argo Workflows' controller and server are up (namespace argo; the API: service argo-server, https on 2746)"
