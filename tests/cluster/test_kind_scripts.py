"""Offline checks of manifests/kind/ and its make targets (the scripts `make kind-up` and
`make deploy` run): shellcheck, render-upstream.py's errors, make's prerequisites. What the
scripts apply is checked against a real API server in test_kube_apiserver.py."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from kube_cluster import REPO

KIND = REPO / "manifests" / "kind"
PYTHON = REPO / ".venv" / "bin" / "python"
SCRIPTS = sorted(KIND.glob("*.sh")) + sorted((REPO / "manifests" / "cluster").glob("*.sh")) + [
    REPO / "mk" / "build-kubernetes.sh"]


def test_shell_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed: `make cluster-apt` (apt-get install shellcheck)")
    proc = subprocess.run([shellcheck, "-x", *map(str, SCRIPTS)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:]


def test_upload_models_does_not_need_tar_in_the_minio_client_image():
    """`kubectl cp` runs tar in the container; the MinIO client image has none."""
    script = (KIND / "upload-models.sh").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert "kubectl -n \"$ns\" cp" not in code and " cp " not in code
    assert "mc --config-dir /tmp/mc pipe" in code


def test_render_upstream_refuses_bad_input(tmp_path):
    """A one-line error and exit 2 for a missing file or a bad --gateway, exit 1 for a manifest
    that lacks what it edits."""
    script = str(KIND / "render-upstream.py")
    missing = subprocess.run([str(PYTHON), script, "kserve", str(tmp_path / "nope.yaml")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    empty = tmp_path / "empty.yaml"
    empty.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\n")
    lacking = subprocess.run([str(PYTHON), script, "argo", str(empty)], capture_output=True, text=True)
    assert lacking.returncode == 1 and "workflow-controller-configmap" in lacking.stderr
    assert "Traceback" not in lacking.stderr
    bad = subprocess.run([str(PYTHON), script, "kserve", str(empty), "--gateway", "no slash"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--gateway" in bad.stderr


def test_make_deploy_builds_helm_when_only_its_stamp_is_left(tmp_path):
    """`make deploy` depends on the helm binary, not only on its version stamp."""
    stamps = tmp_path / "bin" / ".stamps"
    stamps.mkdir(parents=True)
    (stamps / "helm-v3.21.4").touch()
    env = {k: v for k, v in os.environ.items() if k != "MAKEFLAGS"}
    proc = subprocess.run(["make", "-n", "--no-print-directory", "deploy", f"CACHE={tmp_path}",
                           "HELM_VERSION=v3.21.4"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"test -x {tmp_path}/bin/helm" in proc.stdout
    assert "go install" in proc.stdout and "helm.sh/helm/v3/cmd/helm@v3.21.4" in proc.stdout
