"""Offline checks of what `make cluster-images` / `make cluster-kserve` are made of: the OCI
archive writer (layers streamed, the digest known before writing) and render-upstream.py's
local mode (KServe's main controller from a local image, webhook certificates without
cert-manager). The real build and install run in test_cluster_kserve.py (`make test-cluster`)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import tarfile

import pytest
import yaml
from kube_cluster import REPO

PYTHON = REPO / ".venv" / "bin" / "python"
OCI = REPO / "manifests" / "cluster" / "oci-image.py"
RENDER = REPO / "manifests" / "kind" / "render-upstream.py"
KSERVE = REPO.parent / "shared" / "k8s-upstream" / "kserve-v0.20.0" / "kserve.yaml"


def _layer(path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_oci_image_streams_layers_and_knows_its_digest(tmp_path):
    base, app = tmp_path / "base.tar", tmp_path / "app.tar"
    _layer(base, {"etc/hello": b"base"})
    _layer(app, {"opt/app/run": b"#!/bin/sh\necho hi\n"})
    common = [str(PYTHON), str(OCI), "--name", "fissure.local/test:1", "--layer", str(base), "--layer", str(app),
              "--entrypoint", '["fissure"]', "--cmd", '["serve", "--x"]', "--env", "A=1", "--user", "1000:1000",
              "--workdir", "/home/x"]
    digest = subprocess.run([*common, "--digest", "-"], capture_output=True, text=True, check=True).stdout.strip()
    out = tmp_path / "image.tar"
    subprocess.run([*common, str(out)], check=True)
    with tarfile.open(out) as tar:
        blobs = {m.name.rsplit("/", 1)[1]: tar.extractfile(m).read() for m in tar if m.name.startswith("blobs/")}
        index = json.loads(tar.extractfile("index.json").read())
    for name, data in blobs.items():  # every blob is named by its content
        assert hashlib.sha256(data).hexdigest() == name
    entry = index["manifests"][0]
    assert entry["digest"] == digest  # what `images.sh import` compares with containerd's
    assert entry["annotations"]["io.containerd.image.name"] == "fissure.local/test:1"
    manifest = json.loads(blobs[digest.removeprefix("sha256:")])
    layer_digests = [layer["digest"] for layer in manifest["layers"]]
    assert layer_digests == [f"sha256:{hashlib.sha256(p.read_bytes()).hexdigest()}" for p in (base, app)]
    config = json.loads(blobs[manifest["config"]["digest"].removeprefix("sha256:")])
    assert config["rootfs"]["diff_ids"] == layer_digests
    assert config["config"] == {"Env": ["A=1"], "Entrypoint": ["fissure"], "Cmd": ["serve", "--x"],
                                "User": "1000:1000", "WorkingDir": "/home/x"}
    # the layer digests are cached beside the layers and reused while size and mtime match
    assert (tmp_path / "base.tar.sha256").read_text().split()[-1] == layer_digests[0]


def test_oci_image_omits_the_layers_the_store_has(tmp_path):
    base, app = tmp_path / "base.tar", tmp_path / "app.tar"
    _layer(base, {"opt/venv/big": b"x" * 4096})
    _layer(app, {"opt/app/run": b"new code"})
    common = [str(PYTHON), str(OCI), "--name", "fissure.local/test:2", "--layer", str(base), "--layer", str(app)]
    full, thin = tmp_path / "full.tar", tmp_path / "thin.tar"
    subprocess.run([*common, str(full)], check=True)
    have = tmp_path / "have.txt"  # as `ctr content ls -q` prints it, with an unrelated digest
    have.write_text(f"sha256:{hashlib.sha256(base.read_bytes()).hexdigest()}\nsha256:{'0' * 64}\n")
    subprocess.run([*common, "--omit-blobs", str(have), str(thin)], check=True)

    def blobs(path):
        with tarfile.open(path) as tar:
            return {m.name for m in tar if m.name.startswith("blobs/")}, json.loads(tar.extractfile("index.json").read())

    full_blobs, full_index = blobs(full)
    thin_blobs, thin_index = blobs(thin)
    assert full_blobs - thin_blobs == {f"blobs/sha256/{hashlib.sha256(base.read_bytes()).hexdigest()}"}
    assert thin_index == full_index  # the same image: the manifest still names every layer
    proc = subprocess.run([*common, "--omit-blobs", str(tmp_path / "nope.txt"), "-"], capture_output=True, text=True)
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_oci_image_refuses_bad_input(tmp_path):
    for args, needle in ((["--layer", str(tmp_path / "nope.tar"), "o.tar"], "no such layer"),
                         (["o.tar"], "at least one"),
                         (["--file", "x", "o.tar"], "SRC:/DEST"),
                         (["--file", f"{OCI}:/x", "--cmd", "[1]", "o.tar"], "JSON list")):
        proc = subprocess.run([str(PYTHON), str(OCI), "--name", "x", *args], capture_output=True, text=True,
                              cwd=tmp_path)
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.fixture
def certs(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=t",
                    "-keyout", str(d / "tls.key"), "-out", str(d / "tls.crt")], check=True, capture_output=True)
    (d / "ca.crt").write_bytes((d / "tls.crt").read_bytes())
    return d


@pytest.mark.parametrize("llmisvc", [False, True], ids=["main-controller-only", "with-llmisvc"])
def test_render_kserve_local_runs_the_controllers_built_here_without_cert_manager(certs, llmisvc):
    if not KSERVE.is_file():
        pytest.skip(f"KServe's pinned install manifest is not at {KSERVE} (../shared/k8s-upstream)")
    image = "fissure.local/kserve-controller:v0.20.0"
    llm_image = "fissure.local/llmisvc-controller:v0.20.0"
    initializer = "fissure.local/kserve-storage-initializer:v0.20.0"
    proc = subprocess.run([str(PYTHON), str(RENDER), "kserve", str(KSERVE), "--controller-image", image,
                           "--webhook-certs", str(certs), "--storage-initializer-image", initializer,
                           *(["--llmisvc-image", llm_image] if llmisvc else [])],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs make ~7 MB of YAML
    docs = [d for d in yaml.load_all(proc.stdout, Loader=loader) if d]
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Certificate", "Issuer", "DaemonSet"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    want = {"kserve-controller-manager": image, **({"llmisvc-controller-manager": llm_image} if llmisvc else {})}
    assert set(deployments) == set(want)
    for name, img in want.items():
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert container["image"] == img and container["imagePullPolicy"] == "Never"
    services = {"kserve-webhook-server-service"} | ({"llmisvc-webhook-server-service"} if llmisvc else set())
    ca = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
    hooks = [d for d in docs if d["kind"].endswith("WebhookConfiguration")]
    assert {d["metadata"]["name"] for d in hooks} >= {"inferenceservice.serving.kserve.io",
                                                      "servingruntime.serving.kserve.io"}
    assert ("llminferenceserviceconfig.serving.kserve.io" in {d["metadata"]["name"] for d in hooks}) == llmisvc
    for hook_config in hooks:
        assert "cert-manager.io/inject-ca-from" not in hook_config["metadata"].get("annotations", {})
        for hook in hook_config["webhooks"]:
            assert hook["clientConfig"]["service"]["name"] in services
            assert hook["clientConfig"]["caBundle"] == ca
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    for secret in ["kserve-webhook-server-cert"] + (["llmisvc-webhook-server-cert"] if llmisvc else []):
        assert base64.b64decode(secrets[secret]["data"]["tls.key"]) == (certs / "tls.key").read_bytes()
    # llmisvc's CRDs convert v1alpha1 <-> v1alpha2 through its webhook: that needs the CA too
    converting = [d for d in docs if d["kind"] == "CustomResourceDefinition"
                  and d["spec"].get("conversion", {}).get("strategy") == "Webhook"]
    assert {d["metadata"]["name"] for d in converting} == {"llminferenceservices.serving.kserve.io",
                                                           "llminferenceserviceconfigs.serving.kserve.io"}
    for crd in converting:
        assert (crd["spec"]["conversion"]["webhook"]["clientConfig"].get("caBundle") == ca) == llmisvc
    # the rest is as up.sh renders it for kind
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "inferenceservice-config")
    assert json.loads(config["data"]["deploy"])["defaultDeploymentMode"] == "Standard"
    assert json.loads(config["data"]["storageInitializer"])["image"] == initializer
    (csc,) = [d for d in docs if d["kind"] == "ClusterStorageContainer"]
    assert csc["spec"]["container"]["image"] == initializer
    assert csc["spec"]["container"]["imagePullPolicy"] == "Never"
    assert csc["spec"]["container"]["securityContext"]["runAsNonRoot"] is True  # still restricted
    assert docs[0]["kind"] == "Namespace"


def test_render_kserve_local_refuses_incomplete_certs(tmp_path, certs):
    (certs / "tls.key").unlink()
    manifest = tmp_path / "m.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n")
    proc = subprocess.run([str(PYTHON), str(RENDER), "kserve", str(manifest), "--webhook-certs", str(certs)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "missing tls.key" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([str(PYTHON), str(RENDER), "argo", str(manifest), "--controller-image", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "for kserve" in proc.stderr
