"""Model cards with further evaluations (`fissure model-card --report`), attached to their version,
and cards of local model folders: what a fresh user met."""

from __future__ import annotations

import json

import mlflow
import pytest

from fissure.cli import main
from fissure.training import modelcard
from fissure.training.run import train

from .conftest import tiny_config

pytestmark = pytest.mark.slow  # trains tiny models into MLflow stores

SEG_SPEC = {"task": "segment", "arch": "attention_unet", "classes": ["background", "crack"],
            "preprocess": {"size": 256}, "threshold": 0.795, "threshold_low": 0.25}


@pytest.fixture
def registered_segmenter(seg_data, tmp_path):
    return train("segment", seg_data, tiny_config("segment", epochs=1), out=tmp_path / "seg", register=True,
                 progress=False, echo=lambda m: None)


def _report(path, **kw) -> str:
    """A `fissure evaluate` JSON (its keys the card reads) at ``path``."""
    report = {"task": "segment", "model": "crack-segmenter", "model_version": "1", "n_images": 30, "dice": 0.681,
              "relaxed_f1": 0.702, "data": "data/cf", "tta": "none", "resolution": "resized",
              "weakest_slice": {"slice": "width:thin", "metric": "dice", "value": 0.41}, **kw}
    path.write_text(json.dumps(report))
    return str(path)


def _card(spec=None, reports=(), **kw) -> str:
    return modelcard.render(modelcard.CardFacts(name="crack-segmenter", version="1", run_id="r", task="segment",
                                                spec=SEG_SPEC if spec is None else spec, reports=list(reports), **kw))


def test_attached_card_is_the_card_written(registered_segmenter, tmp_path, capsys):
    """--attach logs the very card --out gets, its further evaluations included."""
    run_id = registered_segmenter.run_id
    report = _report(tmp_path / "cf.json", run_id=run_id)
    out = tmp_path / "att.md"
    assert main(["model-card", "--model", "models:/crack-segmenter/1", "--report", report, "--attach",
                 "--out", str(out)]) == 0
    assert "attached to crack-segmenter v1" in capsys.readouterr().err
    card = out.read_text()
    assert "## Further evaluations" in card and "| data/cf | 30 | 0.681 | 0.702 |" in card
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/{modelcard.CARD_ARTIFACT}") == card


def test_a_report_on_another_model_is_refused(registered_segmenter, tmp_path, capsys):
    run_id = registered_segmenter.run_id
    other_task = _report(tmp_path / "clf.json", task="classify", model="crack-classifier", run_id=run_id,
                         data="prepmt/classify/test", n_images=182, weakest_slice={"slice": "class:break"})
    other_run = _report(tmp_path / "v2.json", run_id="0123456789abcdef", model_version="2")
    capsys.readouterr()
    for report, message in ((other_task, "a report on a classify model (crack-classifier v1), not on this segment "
                                         "model (crack-segmenter v1)"),
                            (other_run, "a report on the model of run 0123456789abcdef (crack-segmenter v2), not on "
                                        f"this one (crack-segmenter v1, run {run_id})")):
        rc = main(["model-card", "--model", "models:/crack-segmenter/1", "--report", report, "--out",
                   str(tmp_path / "card.md")])
        err = capsys.readouterr().err
        assert rc == 1 and err.startswith(f"fissure: error: --report {report}: ") and message in err, err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "card.md").exists()
    # a report of this model's run (or of no run: an unregistered local folder's) is taken
    for report in (_report(tmp_path / "ok.json", run_id=run_id), _report(tmp_path / "norun.json", run_id=None)):
        assert main(["model-card", "--model", "models:/crack-segmenter/1", "--report", report]) == 0
        assert "| data/cf | 30 | 0.681 |" in capsys.readouterr().out


def test_a_report_not_scored_as_served_says_how_it_was(tmp_path):
    """`fissure evaluate --threshold/--threshold-low/--tta` scores other masks or views than the
    model serves: the row says which; a report scored as served says so beside it."""
    served = {"threshold": 0.795, "dice": 0.7, "threshold_low": 0.25}
    plain = {"threshold": 0.3, "dice": 0.6}
    card = _card(reports=[{"n_images": 30, "data": "data/cf", "dice": 0.6, "tta": "flips", "threshold_sweep": plain},
                          {"n_images": 12, "data": "data/dc", "dice": 0.7, "tta": "none", "threshold_sweep": served}])
    assert "| data | images | dice | relaxed F1 | resolution | weakest slice | scored with |" in card
    assert ("| data/cf | 30 | 0.600 | n/a | - | - | masks at threshold 0.300 (served: threshold 0.795, hysteresis "
            "from 0.250); tta flips (served: none) |") in card
    assert "| data/dc | 12 | 0.700 | n/a | - | - | as served |" in card
    # every report as served (or an older one that does not say): the table as before
    assert "scored with" not in _card(reports=[{"n_images": 12, "data": "data/dc", "dice": 0.7, "tta": "none",
                                                "threshold_sweep": served}, {"n_images": 3, "dice": 0.5}])
    # the served threshold as a report keeps it (6 digits), hysteresis off as mask_params says
    spec = {**SEG_SPEC, "threshold": 0.7951234567, "threshold_low": 0.9}
    assert "scored with" not in _card(spec, [{"n_images": 3, "dice": 0.5, "threshold_sweep": {"threshold": 0.795123}}])
    # a classifier's: its views only (its sweep's 0.5 is no mask rule)
    clf = modelcard.render(modelcard.CardFacts(
        name="crack-classifier", version="1", run_id="r", task="classify", spec={"task": "classify", "tta": "d8"},
        reports=[{"n_images": 5, "f1": 0.9, "tta": "none", "threshold_sweep": {"threshold": 0.5, "f1": 0.9}}]))
    assert "| 5 | 0.900 | n/a | - | - | tta none (served: d8) |" in clf


def test_a_report_on_several_folders_names_them_readably():
    datasets = {"cf": {"data": "data/cf", "n_images": 20, "dice": 0.7, "truth_px": 9},
                "test": {"data": "data/dc/test", "n_images": 10, "dice": 0.6, "truth_px": 9}}
    card = _card(reports=[{"n_images": 30, "data": ["data/cf", "data/dc/test"], "dice": 0.681, "datasets": datasets}])
    assert "| data/cf, data/dc/test | 30 | 0.681 |" in card
    assert "By dataset in data/cf, data/dc/test:" in card and "['" not in card
    assert "| cf | 20 | 0.700 |" in card


def test_threshold_row_names_hysteresis_only_when_it_is_on():
    """threshold_low at or above the threshold turns hysteresis off (mask_params): the row says no
    hysteresis masks, though threshold_from carries the low threshold it was tuned with."""
    tuned = {"mode": "real", "sources": ["deepcrack-train"], "images": 45, "dice": 0.84, "threshold_low": 0.25}
    spec = {**SEG_SPEC, "threshold": 0.2, "threshold_low": 0.25, "threshold_from": tuned}
    row = next(line for line in _card(spec).splitlines() if line.startswith("| crack threshold |"))
    assert row == ("| crack threshold | 0.200 (best Dice on the pooled pixels of 45 validation images of "
                   "deepcrack-train: threshold_from real) |")
    assert "hysteresis" not in row


def test_lineage_of_an_unregistered_run_is_its_own_tags():
    tags = {"git.commit": "abc123", "params.hash": "p9", "dvc.data_hash": "d7", "init": "scratch", "data.path": "d"}
    card = modelcard.render(modelcard.CardFacts(name="crack-segmenter", version=None, run_id="r", task="segment",
                                                spec=SEG_SPEC, run_tags=tags))
    assert "## Lineage" in card and "| git.commit | abc123 |" in card and "| params.hash | p9 |" in card
    assert "| data.path |" not in card
    # a registered version's tags win
    card = modelcard.render(modelcard.CardFacts(name="crack-segmenter", version="2", run_id="r", task="segment",
                                                spec=SEG_SPEC, run_tags=tags, version_tags={"git.commit": "def456"}))
    assert "| git.commit | def456 |" in card and "abc123" not in card.split("## Lineage")[1]


def test_card_of_an_unregistered_local_model_folder(seg_data, tmp_path, monkeypatch, capsys):
    """A local folder of an unregistered run: the card has the run's lineage tags; with its run
    not in the tracking store the error says where to point it (a folder holds only its spec)."""
    outcome = train("segment", seg_data, tiny_config("segment", epochs=1), out=tmp_path / "seg", progress=False,
                    echo=lambda m: None)
    tags = mlflow.MlflowClient().get_run(outcome.run_id).data.tags
    folder = str(tmp_path / "seg" / "model")
    capsys.readouterr()
    assert main(["model-card", "--model", folder]) == 0
    card = capsys.readouterr().out
    assert card.startswith("# Model card: crack-segmenter\n")
    assert "## Lineage" in card and f"| git.commit | {tags['git.commit']} |" in card
    assert f"| params.hash | {tags['params.hash']} |" in card

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere.db")
    assert main(["model-card", "--model", folder]) == 1
    err = capsys.readouterr().err
    assert f"its run {outcome.run_id} is not in the tracking store" in err
    assert "point MLFLOW_TRACKING_URI (or FISSURE_HOME) at the store it was trained with" in err
    assert len(err.strip().splitlines()) == 1


def test_runs_uri_of_a_registered_run_gets_its_version(registered_segmenter, capsys):
    capsys.readouterr()
    assert main(["model-card", "--model", f"runs:/{registered_segmenter.run_id}/model"]) == 0
    card = capsys.readouterr().out
    assert card.startswith("# Model card: crack-segmenter v1") and "Aliases: challenger, champion" in card
    assert "## Lineage" in card and "| parent.champion | none |" in card
