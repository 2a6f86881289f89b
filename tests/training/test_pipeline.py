"""The DVC pipeline runs end to end in a copy of the repository, and a second run does nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def _dvc(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_dvc_repro_then_nothing_to_do(pipeline_copy):
    repo_copy = pipeline_copy
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["FISSURE_THREADS"] = "1"
    first = _dvc(["repro"], repo_copy, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for stage in ("prepare", "train_classifier", "train_segmenter", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    seg = json.loads((repo_copy / "reports" / "segmenter.json").read_text())
    clf = json.loads((repo_copy / "reports" / "classifier.json").read_text())
    assert {"dice", "iou", "precision", "recall", "f1", "relaxed_f1", "n_images"} <= set(seg)
    assert seg["relaxed_f1"] >= seg["f1"] - 1e-6  # forgiving the rim never scores lower
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
