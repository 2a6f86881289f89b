"""metrics-server on the kind path (`make kind-up`): KServe's CPU autoscaling needs it.

In Standard mode KServe turns `scaleMetric: cpu` / `scaleTarget` into a HorizontalPodAutoscaler,
which reads the resource metrics API that only metrics-server serves. `manifests/kind/up.sh`
installs the pinned release (versions.env) from its upstream manifest, with
`--kubelet-insecure-tls` added (kind's kubelets serve self-signed certificates). No Docker here,
so the step's rendering is run for real on metrics-server's own deployment manifest, taken from
the pinned module source on the Go module proxy (the base that the release's components.yaml
is built from), and the script around it is checked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KIND = REPO / "manifests" / "kind"
UP = KIND / "up.sh"
FLAG = "--kubelet-insecure-tls"


def versions() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (KIND / "versions.env").read_text().splitlines()
             if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


@pytest.fixture(scope="module")
def module_dir() -> Path:
    """sigs.k8s.io/metrics-server at the pinned version, from the Go module proxy."""
    version = versions()["METRICS_SERVER_VERSION"]
    go = shutil.which("go") or "/usr/local/go/bin/go"
    proc = subprocess.run([go, "mod", "download", "-json", f"sigs.k8s.io/metrics-server@{version}"],
                          capture_output=True, text=True, timeout=600, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        pytest.fail(f"go mod download sigs.k8s.io/metrics-server@{version} failed (needs Go and the "
                    f"module proxy the first time):\n{proc.stdout}{proc.stderr}")
    return Path(json.loads(proc.stdout)["Dir"])


def render(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(UP), "--render-metrics-server", str(path)],
                          capture_output=True, text=True, timeout=60)


def container_args(manifest: str) -> list[str]:
    deployments = [d for d in yaml.safe_load_all(manifest)
                   if d and d.get("kind") == "Deployment" and d["metadata"]["name"] == "metrics-server"]
    assert len(deployments) == 1, "the manifest must hold exactly one metrics-server Deployment"
    (container,) = deployments[0]["spec"]["template"]["spec"]["containers"]
    return container["args"]


def test_the_pin_is_a_real_release_for_the_kind_node(module_dir):
    pins = versions()
    version = pins["METRICS_SERVER_VERSION"]
    release = yaml.safe_load((module_dir / "manifests/components/release/kustomization.yaml").read_text())
    assert release["images"][0]["newTag"] == version, "the release component must name the pinned image"
    # The README's compatibility matrix: "0.8.x | `metrics.k8s.io/v1beta1` | 1.31+".
    series = ".".join(version.lstrip("v").split(".")[:2]) + ".x"
    row = re.search(rf"^{re.escape(series)}\s*\|[^|]*\|\s*(\d+)\.(\d+)\+", (module_dir / "README.md").read_text(), re.M)
    assert row, f"metrics-server's README has no compatibility row for {series}"
    node = re.search(r":v(\d+)\.(\d+)\.", pins["KIND_NODE_IMAGE"])
    assert (int(node[1]), int(node[2])) >= (int(row[1]), int(row[2])), (
        f"metrics-server {version} needs Kubernetes {row[1]}.{row[2]}+, the kind node is {pins['KIND_NODE_IMAGE']}")


@pytest.mark.parametrize("layout", ["upstream", "kustomize-sorted"])
def test_render_adds_the_insecure_tls_flag_once(module_dir, tmp_path, layout):
    source = (module_dir / "manifests/base/deployment.yaml").read_text()
    before = container_args(source)
    assert FLAG not in before
    if layout == "kustomize-sorted":  # the release manifest is kustomize output: keys sorted, "- args:"
        source = yaml.safe_dump(yaml.safe_load(source), sort_keys=True)
    path = tmp_path / "components.yaml"
    path.write_text("---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: metrics-server}\n---\n" + source)
    proc = render(path)
    assert proc.returncode == 0, proc.stderr
    after = container_args(proc.stdout)
    assert after.count(FLAG) == 1
    assert [a for a in after if a != FLAG] == before, "every upstream arg kept, in order"
    assert [d["kind"] for d in yaml.safe_load_all(proc.stdout) if d] == ["ServiceAccount", "Deployment"]


def test_render_refuses_a_manifest_it_cannot_edit(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    proc = render(path)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and FLAG in proc.stderr
    missing = render(tmp_path / "absent.yaml")
    assert missing.returncode == 2 and "needs a manifest file" in missing.stderr


def test_up_sh_applies_the_rendered_manifest_before_kserve_and_waits_for_the_api():
    script = UP.read_text()
    steps = [
        "releases/download/$METRICS_SERVER_VERSION/components.yaml",
        'render_metrics_server "$dl/metrics-server-components.yaml" > "$dl/metrics-server.yaml"',
        'apply -f "$dl/metrics-server.yaml"',
        "rollout status deploy/metrics-server",
        "apiservice/v1beta1.metrics.k8s.io",
        'echo ">> KServe',
    ]
    at = [script.find(s) for s in steps]
    assert -1 not in at and at == sorted(at), dict(zip(steps, at))
    help_text = subprocess.run([str(UP), "--help"], capture_output=True, text=True, timeout=30)
    assert help_text.returncode == 0 and "--render-metrics-server" in help_text.stdout
    bad = subprocess.run([str(UP), "--bogus"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_up_sh_passes_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed: `make cluster-apt` (apt-get install shellcheck)")
    proc = subprocess.run([shellcheck, "-x", "manifests/kind/up.sh"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docs_say_autoscaling_needs_metrics_server():
    text = (REPO / "docs" / "deploy-kubernetes.md").read_text()
    assert f"| metrics-server | {versions()['METRICS_SERVER_VERSION']} |" in text
    line = next(line for line in text.splitlines() if line.startswith("| `models.<name>` |"))
    assert "scaleMetric" in line and "metrics-server" in line
