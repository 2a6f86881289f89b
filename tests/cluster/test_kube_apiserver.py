"""The chart, the upstream add-ons and manifests/kind/ against a real kube-apiserver v1.34.

What a schema check cannot see and an API server does: server-side apply (field ownership,
re-runs), CRD structural schemas and CEL rules, Pod Security admission, RBAC.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from kube_cluster import REPO, UPSTREAM, KubeAPIServer, cluster_paths, start_kube_apiserver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

RENDERED = REPO / "manifests" / "rendered" / "fissure.yaml"
KIND = REPO / "manifests" / "kind"
PYTHON = REPO / ".venv" / "bin" / "python"
KSERVE = UPSTREAM / "kserve-v0.20.0" / "kserve.yaml"
ARGO = UPSTREAM / "argo-workflows-v4.1.2" / "install.yaml"
PROMETHEUS = UPSTREAM / "prometheus-operator-v0.93.0" / "bundle.yaml"
GATEWAY_API = UPSTREAM / "gateway-api-v1.2.1" / "standard-install.yaml"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


def load_all(text: str) -> list[dict]:
    """Every document of a YAML stream, parsed with libyaml (the upstream files are ~10 MB)."""
    return [d for d in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]


def need_upstream() -> None:
    if not UPSTREAM.is_dir():
        pytest.skip(f"the pinned upstream manifests are not at {UPSTREAM} (only in the fissure workplace)")


def render_upstream(which: str, manifest: Path) -> str:
    proc = subprocess.run([str(PYTHON), str(KIND / "render-upstream.py"), which, str(manifest)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def find(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d and d.get("kind") == kind and d["metadata"]["name"] == name)


def rendered_docs() -> list[dict]:
    return load_all(RENDERED.read_text())


@pytest.fixture(scope="module")
def upstream_crds(kube_apiserver: KubeAPIServer) -> KubeAPIServer:
    """From the pinned upstream installs of KServe v0.20, Argo Workflows v4.1.2, Prometheus
    Operator v0.93 and Gateway API v1.2.1: the CRDs of every custom kind the chart renders."""
    need_upstream()
    builtin = {line.split()[-1] for line in
               kube_apiserver.kubectl("api-resources", "--no-headers").stdout.splitlines()}
    kinds = {d["kind"] for d in rendered_docs()} - builtin
    installed = kube_apiserver.apply_crds(KSERVE, ARGO, PROMETHEUS, GATEWAY_API, kinds=kinds)
    assert len(installed) == len(kinds), (sorted(kinds), installed)
    return kube_apiserver


def test_the_server_is_the_built_version_with_rbac(kube_apiserver: KubeAPIServer):
    version = json.loads(kube_apiserver.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == kube_apiserver.version
    assert version["clientVersion"]["gitVersion"] == kube_apiserver.version
    # RBAC is on: a fresh service account may do nothing until bound
    ns = kube_apiserver.namespace("rbac")
    kube_apiserver.kubectl("-n", ns, "create", "serviceaccount", "nobody")
    token = kube_apiserver.kubectl("-n", ns, "create", "token", "nobody").stdout.strip()
    denied = kube_apiserver.kubectl("--token", token, "-n", ns, "get", "configmaps", check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()


def test_rendered_chart_server_side_dry_run_in_a_restricted_namespace(upstream_crds: KubeAPIServer):
    """manifests/rendered/ (what `make deploy` installs) is accepted by the API server with
    the add-ons' CRDs, and no pod template would violate Pod Security `restricted`."""
    ns = upstream_crds.namespace("fissure", labels={
        **RESTRICTED, "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/warn-version": "latest"})
    docs = rendered_docs()
    for d in docs:
        if d["metadata"].get("namespace") == "fissure":
            d["metadata"]["namespace"] = ns
    assert len(docs) > 20
    proc = upstream_crds.kubectl(
        "apply", "--server-side", "--dry-run=server", "--field-manager=helm", "-n", ns, "-f", "-",
        input="\n".join(json.dumps(d) for d in docs), check=False)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert proc.stdout.count("(server dry run)") == len(docs), proc.stdout
    # Deployments/StatefulSets/Jobs are only warned about (Pods are refused): the warning is the signal
    assert "violate PodSecurity" not in proc.stderr, proc.stderr


def _pod(name: str, init: list[dict], containers: list[dict]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": {"initContainers": init, "containers": containers}})


def _main_container() -> dict:
    return {"name": "main", "image": "fissure-serving:test", "securityContext": {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}}


def test_kserve_storage_initializer_is_admitted_under_restricted(kube_apiserver: KubeAPIServer):
    """The storage initializer KServe injects (the `default` ClusterStorageContainer's container)
    with up.sh's securityContext is admitted; upstream's own is refused (why it is set)."""
    need_upstream()
    ns = kube_apiserver.namespace("psa-kserve", labels=RESTRICTED)
    ours = find(load_all((render_upstream("kserve", KSERVE))),
                "ClusterStorageContainer", "default")["spec"]["container"]
    theirs = find(load_all((KSERVE.read_text())),
                  "ClusterStorageContainer", "default")["spec"]["container"]
    ok = kube_apiserver.kubectl("-n", ns, "create", "--dry-run=server", "-f", "-",
                                input=_pod("predictor", [ours], [_main_container()]), check=False)
    assert ok.returncode == 0, ok.stderr
    refused = kube_apiserver.kubectl("-n", ns, "create", "--dry-run=server", "-f", "-",
                                     input=_pod("predictor", [theirs], [_main_container()]), check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr


def test_argo_executor_containers_are_admitted_under_restricted(kube_apiserver: KubeAPIServer):
    """Argo's init and wait containers get the executor template from
    workflow-controller-configmap: up.sh's is admitted, the upstream default (none) is refused."""
    need_upstream()
    ns = kube_apiserver.namespace("psa-argo", labels=RESTRICTED)
    config = find(load_all((render_upstream("argo", ARGO))),
                  "ConfigMap", "workflow-controller-configmap")
    executor = yaml.safe_load(config["data"]["executor"])
    image = "quay.io/argoproj/argoexec:v4.1.2"
    init = {"name": "init", "image": image, **executor}
    wait = {"name": "wait", "image": image, **executor}
    ok = kube_apiserver.kubectl("-n", ns, "create", "--dry-run=server", "-f", "-",
                                input=_pod("step", [init], [wait, _main_container()]), check=False)
    assert ok.returncode == 0, ok.stderr
    bare = [{"name": c["name"], "image": image} for c in (init, wait)]
    refused = kube_apiserver.kubectl("-n", ns, "create", "--dry-run=server", "-f", "-",
                                     input=_pod("step", bare[:1], [bare[1], _main_container()]), check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr


def test_secrets_sh_keeps_the_pod_security_labels_and_the_secrets_on_rerun(kube_apiserver: KubeAPIServer):
    """manifests/kind/secrets.sh (the first step of `make deploy`), run twice, as for an upgrade."""
    ns = f"rerun-{kube_apiserver.token[:6]}"
    env = kube_apiserver.env()

    def run_secrets():
        proc = subprocess.run(["bash", str(KIND / "secrets.sh"), ns], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def state():
        labels = json.loads(kube_apiserver.kubectl("get", "namespace", ns, "-o", "json").stdout)["metadata"]["labels"]
        secret = json.loads(kube_apiserver.kubectl("-n", ns, "get", "secret", "fissure-minio", "-o", "json").stdout)
        return labels, secret["data"]

    run_secrets()
    labels, minio = state()
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # someone else (helm --create-namespace, a platform team) applies the namespace client-side
    kube_apiserver.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"team": "ml"}}}))
    run_secrets()
    labels_again, minio_again = state()
    assert labels_again["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels_again["team"] == "ml"
    assert minio_again == minio  # the passwords survive a re-run
    s3 = json.loads(kube_apiserver.kubectl("-n", ns, "get", "secret", "fissure-s3", "-o", "json").stdout)
    assert s3["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == f"fissure-minio.{ns}.svc:9000"


@pytest.fixture
def private_apiserver(tmp_path):
    """A kube-apiserver of the test's own: installing KServe registers webhooks (with no
    controller behind them) that would refuse the other tests' InferenceServices."""
    paths = cluster_paths()
    server = start_kube_apiserver(Path(paths["K8S_RELEASE_BIN"]), paths["ETCD"], paths["K8S_VERSION"],
                                  tmp_path / "cluster")
    try:
        yield server
    finally:
        server.stop()


def test_kserve_install_as_up_sh_applies_it_is_rerunnable(private_apiserver: KubeAPIServer, tmp_path):
    """up.sh's KServe step (render-upstream.py + one server-side apply under one field manager)
    applies without a prepared namespace and applies again without conflicts."""
    need_upstream()
    server = private_apiserver
    # Left out: cert-manager's objects (it is not installed here), and the CRDs but the one
    # whose object is in the file (the other 14 cost minutes and are not what conflicted).
    docs = [d for d in load_all(render_upstream("kserve", KSERVE))
            if not d["apiVersion"].startswith("cert-manager.io/")
            and (d["kind"] != "CustomResourceDefinition"
                 or d["spec"]["names"]["kind"] == "ClusterStorageContainer")]
    kserve = tmp_path / "kserve.yaml"
    kserve.write_text("\n---\n".join(json.dumps(d) for d in docs))
    # the CRD first, as up.sh's apply() retries until CRDs are established
    server.apply_crds(kserve)
    for attempt in ("install", "re-run"):
        proc = server.kubectl("apply", "--server-side", "--field-manager=fissure-kind-up", "-f", str(kserve),
                              check=False)
        assert proc.returncode == 0, f"{attempt}: {proc.stderr[-4000:]}"
    config = json.loads(server.kubectl("-n", "kserve", "get", "configmap", "inferenceservice-config",
                                       "-o", "json").stdout)["data"]
    assert json.loads(config["deploy"])["defaultDeploymentMode"] == "Standard"
    ingress = json.loads(config["ingress"])
    assert ingress["enableGatewayApi"] is True and ingress["disableIngressCreation"] is True
    csc = json.loads(server.kubectl("get", "clusterstoragecontainer", "default", "-o", "json").stdout)
    assert csc["spec"]["container"]["securityContext"]["runAsNonRoot"] is True
