"""A fresh copy of this checkout's DVC pipeline in a new git repo: no data, no DVC cache, no
MLflow store. For timing `dvc repro` from scratch (training/bench_train.py) and for tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

PIPELINE_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "data/feedback/.gitkeep")
DVC_FILES = ("config", ".gitignore")


def copy_pipeline(repo: Path, dst: Path, params: dict | None = None) -> Path:
    """Copy the pipeline files and ``src/`` of ``repo`` to ``dst`` (created), merge ``params``
    (``{section: {key: value}}``, dict values merged one level deep) into its ``params.yaml``,
    and commit it all in a new git repo."""
    dst.mkdir(parents=True)
    for name in PIPELINE_FILES:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, dst / name)
    (dst / ".dvc").mkdir()
    for name in DVC_FILES:
        shutil.copy2(repo / ".dvc" / name, dst / ".dvc" / name)
    shutil.copytree(repo / "src", dst / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if params:
        merged = yaml.safe_load((dst / "params.yaml").read_text())
        for section, values in params.items():
            for key, value in values.items():
                old = merged[section].get(key)
                merged[section][key] = {**old, **value} if isinstance(value, dict) and isinstance(old, dict) else value
        (dst / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    git = ["git", "-c", "user.name=fissure", "-c", "user.email=fissure@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=dst, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "pipeline copy"], cwd=dst, check=True)
    return dst
