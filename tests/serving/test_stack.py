"""`fissure up`/`down` pieces that need no running stack (the full stack is `make up`)."""

from __future__ import annotations

import pytest

from fissure.errors import FissureError


def test_procfile_runs_mlflow_and_serve(tmp_path):
    from fissure.stack import StackOptions, procfile

    path = procfile(StackOptions(http_port=18080, grpc_port=18081, mlflow_port=15000), tmp_path / "serving")
    text = path.read_text()
    assert path.parent.name == "fissure-home"  # under FISSURE_HOME (.fissure/ by default)
    mlflow = next(line for line in text.splitlines() if line.startswith("mlflow:"))
    serve = next(line for line in text.splitlines() if line.startswith("serve:"))
    assert "server --backend-store-uri sqlite:///" in mlflow and "--port 15000" in mlflow
    assert "--host 127.0.0.1" in mlflow
    assert " serve --model-store " in serve and "--http-port 18080" in serve and "--grpc-port 18081" in serve


def test_down_without_a_stack_says_so():
    from fissure.stack import down

    lines = []
    assert down(echo=lines.append) == 0
    assert lines == ["no detached stack is running"]


def test_missing_champions_without_pipeline_is_one_clear_error(tmp_path, monkeypatch):
    from fissure.stack import ensure_champions

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FissureError, match="no champion for .*crack-classifier.* and no dvc.yaml"):
        ensure_champions(echo=lambda *_: None)


def test_failing_pipeline_is_one_clear_error(tmp_path, monkeypatch):
    from fissure.serving import stack

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stack.subprocess, "call", lambda *a, **k: 3)
    with pytest.raises(FissureError, match=r"`dvc repro` failed \(exit 3\)"):
        stack.ensure_champions(echo=lambda *_: None)
