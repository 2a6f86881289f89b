"""data/feedback is a dependency of the DVC prepare stage: it always exists (a tracked .gitkeep),
and new feedback re-runs prepare while unchanged feedback does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fissure.data.synth import write_dataset

pytestmark = pytest.mark.slow


def dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_new_feedback_reruns_prepare_and_nothing_else(pipeline_copy):
    repo = pipeline_copy
    assert (repo / "data" / "feedback" / ".gitkeep").exists()  # tracked: there in a fresh clone
    dvc(repo, "repro", "prepare")
    assert json.loads(dvc(repo, "status", "prepare", "--json")) == {}
    manifest = json.loads((repo / "data" / "prepared" / "manifest.json").read_text())
    assert manifest["feedback"] is None  # .gitkeep alone: no feedback

    write_dataset(repo / "data" / "feedback", "segment", 2, seed=5, size=64)  # what an export adds
    changed = json.loads(dvc(repo, "status", "prepare", "--json"))
    assert list(changed) == ["prepare"] and "data/feedback" in json.dumps(changed["prepare"])
    out = dvc(repo, "repro", "prepare")
    assert "Running stage 'prepare'" in out
    manifest = json.loads((repo / "data" / "prepared" / "manifest.json").read_text())
    assert manifest["feedback"]["items"] == 2
    assert "Running stage" not in dvc(repo, "repro", "prepare")  # the same feedback: nothing to do
