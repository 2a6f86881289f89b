"""The offline gate: tiny models against each other on a real (per-test sqlite) MLflow."""

from __future__ import annotations

import json
import shutil

import mlflow
import pytest

from fissure.models import build_model, default_spec, io
from fissure.promotion.gate import ARTIFACT, GatePolicy, record, run_gate
from fissure.training import tracking
from fissure.training.datasets import find_splits
from fissure.training.loop import fit

from ..training.conftest import tiny_config, write_classify_set, write_segment_set

pytestmark = pytest.mark.slow

CLF = "crack-classifier"


@pytest.fixture(scope="module")
def clf_sets(tmp_path_factory):
    """Train/val data, a gate set, and the training data with its labels swapped."""
    root = tmp_path_factory.mktemp("gate-clf")
    write_classify_set(root / "data" / "train", 64, seed=1)
    write_classify_set(root / "data" / "val", 16, seed=2)
    write_classify_set(root / "gate", 32, seed=3)
    write_classify_set(root / "feedback", 16, seed=4)
    flipped = root / "flipped"
    for split in ("train", "val"):
        shutil.copytree(root / "data" / split / "crack", flipped / split / "no_crack")
        shutil.copytree(root / "data" / split / "no_crack", flipped / split / "crack")
    return root


@pytest.fixture(scope="module")
def trained(clf_sets):
    """State dicts of a good classifier and of one trained on flipped labels (trained once per module)."""
    out = {}
    for key, data in (("good", clf_sets / "data"), ("flipped", clf_sets / "flipped")):
        cfg = tiny_config("classify", epochs=4)
        result = fit("classify", find_splits("classify", data, seed=cfg.seed), cfg, progress=False)
        out[key] = (result.module, result.spec)
    return out


def _register(module, spec) -> str:
    """Log under a run of the task's experiment and register; the version's models:/ URI."""
    mlf = tracking.mlflow_client()
    with mlf.start_run(experiment_id=tracking.ensure_experiment(spec["task"])):
        info = io.log_model(module, spec)
        reg = tracking.register(info.model_uri, spec["task"])
    return reg["uri"]


def _policy(**kw) -> GatePolicy:
    return GatePolicy(**{"latency_ms": 1e6, "size_mb": 1e6, "latency_batches": 2, "latency_batch_size": 4, **kw})


def test_model_against_itself_passes_and_is_recorded(clf_sets, trained):
    uri = _register(*trained["good"])
    decision = run_gate(CLF, uri, uri, clf_sets / "gate", clf_sets / "feedback", _policy())
    assert decision.passed, decision.reasons
    gate = decision.check("gate_set")
    assert gate.value == gate.baseline and gate.limit == pytest.approx(gate.baseline - 0.02)
    assert gate.value >= 0.7  # the good model did learn, so the flipped one below is a real regression
    assert decision.check("feedback").value == decision.check("feedback").baseline

    client = mlflow.MlflowClient()
    record(decision, client)
    version = client.get_model_version(CLF, decision.challenger_version)
    assert version.tags["gate"] == "passed"
    run = client.get_run(decision.challenger_run_id)
    assert run.data.metrics["gate_passed"] == 1.0
    assert run.data.metrics["gate_gate_set_value"] == pytest.approx(gate.value)
    assert run.data.tags["gate"] == "passed"
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=ARTIFACT)
    saved = json.loads(open(path).read())
    assert saved["decision"] == "passed"
    assert [c["name"] for c in saved["checks"]] == ["gate_set", "feedback", "latency", "size"]


def test_flipped_labels_challenger_is_refused_and_keeps_its_version(clf_sets, trained):
    champion = _register(*trained["good"])
    challenger = _register(*trained["flipped"])
    decision = run_gate(CLF, challenger, champion, clf_sets / "gate", clf_sets / "feedback", _policy())
    assert not decision.passed
    assert any("regression of" in r and "beyond tolerance" in r for r in decision.reasons)
    assert not decision.check("feedback").passed  # worse on feedback too, not an improvement
    assert decision.check("latency").passed and decision.check("size").passed
    assert all("\n" not in r for r in decision.reasons)

    client = mlflow.MlflowClient()
    record(decision, client)
    version = client.get_model_version(CLF, decision.challenger_version)
    assert version.tags["gate"] == "failed" and version.current_stage is not None
    assert "regression of" in json.loads(version.tags["gate.reasons"])[0]
    assert client.get_run(decision.challenger_run_id).data.metrics["gate_passed"] == 0.0
    assert tracking.aliases(CLF)["champion"] == champion.rsplit("/", 1)[1]  # the gate promotes nothing


def test_tiny_budgets_fail(clf_sets, trained, tmp_path):
    uri = _register(*trained["good"])
    (tmp_path / "feedback").mkdir()  # an export with no items yet
    decision = run_gate(CLF, uri, uri, clf_sets / "gate", tmp_path / "feedback", _policy(latency_ms=1e-6, size_mb=1e-6))
    assert not decision.passed
    assert decision.check("gate_set").passed
    assert decision.check("feedback").passed and "no items" in decision.check("feedback").reason
    assert not decision.check("latency").passed and decision.check("latency").value > 0
    assert not decision.check("size").passed
    assert decision.check("size").value == pytest.approx(sum(
        p.numel() * p.element_size() for p in trained["good"][0].state_dict().values()) / 1e6)
    assert len(decision.reasons) == 2


def test_no_champion_uses_the_floor(clf_sets, trained):
    uri = _register(*trained["good"])
    ok = run_gate(CLF, uri, None, clf_sets / "gate", clf_sets / "feedback", _policy(floor={"classify": 0.5}))
    assert ok.passed and ok.check("gate_set").baseline is None and ok.check("gate_set").limit == 0.5
    high = run_gate(CLF, uri, None, clf_sets / "gate", None, _policy(floor={"classify": 1.01}))
    assert not high.passed and "< floor 1.0100" in high.reasons[0]


def test_segmenter_gate_uses_dice(tmp_path):
    data = write_segment_set(tmp_path / "gate", 4, seed=5)
    spec = default_spec("segment", size=64, base=4, depth=2)
    uri = _register(build_model(spec), spec)
    decision = run_gate("crack-segmenter", uri, uri, data, None, _policy())
    assert decision.passed and decision.task == "segment" and "dice" in decision.check("gate_set").reason


def test_an_export_without_the_tasks_items_is_no_items(tmp_path):
    """`fissure feedback export` writes manifest.json even when nothing was judged, and one folder
    for both tasks: the segmenter's gate on an export holding only the classifier's feedback (and
    the classifier's on one holding only the segmenter's) skips the feedback check instead of
    failing on the layout (seen on the node: `a segmentation set needs images/ and masks/`)."""
    from fissure.promotion.gate import has_task_items

    export = tmp_path / "feedback"
    export.mkdir()
    (export / "manifest.json").write_text("{}")
    assert not has_task_items("segment", export) and not has_task_items("classify", export / "images")
    write_classify_set(export / "images", 4, seed=6)  # images/<class>/ only: the classifier's feedback
    assert has_task_items("classify", export / "images") and not has_task_items("segment", export)
    spec = default_spec("segment", size=64, base=4, depth=2)
    uri = _register(build_model(spec), spec)
    gate = write_segment_set(tmp_path / "gate", 4, seed=5)
    decision = run_gate("crack-segmenter", uri, uri, gate, export, _policy())
    assert decision.check("feedback").passed and "no items" in decision.check("feedback").reason
    # the segmenter's own items make it count, and a broken pair is still an error
    seg = write_segment_set(tmp_path / "seg", 3, seed=7)
    shutil.copytree(seg / "images", export / "images", dirs_exist_ok=True)
    shutil.copytree(seg / "masks", export / "masks")
    assert has_task_items("segment", export)
    decision = run_gate("crack-segmenter", uri, uri, gate, export, _policy())
    assert "3 items" in decision.check("feedback").reason
    next((export / "masks").iterdir()).unlink()
    with pytest.raises(Exception, match="mask"):
        run_gate("crack-segmenter", uri, uri, gate, export, _policy())
