"""The DVC pipeline runs end to end in a copy of the repository, and a second run does nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

TINY = {
    "prepare": {"count": 12, "size": 64, "patch_size": 32, "patch_stride": 32, "patch_margin": 4,
                "val_fraction": 0.25, "test_fraction": 0.25},
    "train_classifier": {"epochs": 1, "batch_size": 16, "size": 32, "model": {"width": 4}},
    "train_segmenter": {"epochs": 1, "batch_size": 4, "size": 64, "crop": 32, "model": {"base": 4, "depth": 2}},
    "evaluate": {"overlays": 1},
}


def _dvc(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def repo_copy(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    dst = tmp_path / "repo"
    dst.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(REPO / name, dst / name)
    (dst / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy2(REPO / ".dvc" / name, dst / ".dvc" / name)
    shutil.copytree(REPO / "src", dst / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((dst / "params.yaml").read_text())
    for section, values in TINY.items():
        for key, value in values.items():
            if isinstance(value, dict):
                params[section][key] = {**params[section].get(key, {}), **value}
            else:
                params[section][key] = value
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=dst, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "copy"], cwd=dst, check=True)
    return dst


def test_dvc_repro_then_nothing_to_do(repo_copy):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["FISSURE_THREADS"] = "1"
    first = _dvc(["repro"], repo_copy, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in ("prepare", "train_classifier", "train_segmenter", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    seg = json.loads((repo_copy / "reports" / "segmenter.json").read_text())
    clf = json.loads((repo_copy / "reports" / "classifier.json").read_text())
    assert {"dice", "iou", "precision", "recall", "f1", "n_images"} <= set(seg)
    assert {"accuracy", "precision", "recall", "f1", "roc_auc", "n_images"} <= set(clf)
    for plot in ("classifier/pr_curve.csv", "classifier/confusion.csv", "segmenter/overlays.png"):
        assert (repo_copy / "reports" / "plots" / plot).is_file()
    assert "Running stage" not in (second := _dvc(["repro"], repo_copy, env)).stdout, second.stdout
    status = _dvc(["status"], repo_copy, env)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
    push = _dvc(["push"], repo_copy, env)
    assert push.returncode == 0, push.stderr
    assert any((repo_copy / ".fissure" / "dvc-remote").rglob("*"))
    # a params change re-runs only what depends on it
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["evaluate"]["overlays"] = 2
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _dvc(["repro"], repo_copy, env)
    assert "Running stage 'evaluate'" in third.stdout and "Running stage 'train_segmenter'" not in third.stdout
