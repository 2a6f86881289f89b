"""Model cards: written for every registered version, and by `fissure model-card`."""

from __future__ import annotations

import json

import mlflow
import pytest

from fissure.cli import main
from fissure.training import modelcard
from fissure.training.run import train

from .conftest import tiny_config


@pytest.fixture
def registered_segmenter(seg_data, tmp_path):
    return train("segment", seg_data, tiny_config("segment", epochs=1), out=tmp_path / "seg", register=True,
                 progress=False, echo=lambda m: None)


def test_every_registered_version_gets_its_card(registered_segmenter, seg_data):
    outcome = registered_segmenter
    client = mlflow.MlflowClient()
    version = client.get_model_version("crack-segmenter", outcome.registered["version"])
    uri = f"runs:/{outcome.run_id}/{modelcard.CARD_ARTIFACT}"
    assert version.tags[modelcard.CARD_TAG] == uri and outcome.registered["model_card"] == uri
    assert uri in version.description and "test dice" in version.description
    card = mlflow.artifacts.load_text(uri)
    for section in ("# Model card: crack-segmenter v1", "## Intended use", "## Limits", "## Data", "## Training",
                    "## Metrics", "## Metrics by dataset (test split)", "## Metrics by slice (test split)",
                    "## Known failure cases", "## Lineage"):
        assert section in card, section
    # the numbers are the run's: the test Dice, the data hash, a slice of the test split, the worst image
    run = client.get_run(outcome.run_id)
    assert f"| dice | {run.data.metrics['final_val_dice']:.3f} | {run.data.metrics['test_dice']:.3f} |" in card
    assert run.data.tags["dvc.data_hash"] in card
    # where the mask threshold was tuned and the best epoch chosen: the 8 validation images of the one
    # (real, no synth-) source, below min_real_val_images (10), so on the whole split, as the card says
    spec = json.loads(run.data.params["spec"])
    why = "only 8 real-source validation images (min_real_val_images: 10)"
    assert spec["threshold_from"]["images"] == 8 and spec["threshold_from"]["mode"] == "all"
    source = spec["threshold_from"]["sources"][0]
    assert (f"| crack threshold | {spec['threshold']:.3f} (best Dice on the pooled pixels of 8 validation images of "
            f"{source}: threshold_from all; {why}) |") in card
    assert spec["select_on"] == {"mode": "all", "fallback": why, "sources": [source], "images": 8, "metric": "dice",
                                 "epoch": 1,
                                 "dice": round(run.data.metrics["final_val_dice"], 4)}
    assert (f"| best epoch | epoch 1: best Dice at 0.5 ({spec['select_on']['dice']:.3f}) on the pooled pixels of 8 "
            f"validation images of {source}: select_on all; {why} |") in card
    quality = json.loads(mlflow.artifacts.load_text(f"runs:/{outcome.run_id}/plots/test_quality.json"))
    assert "| width:" in card and f"`{quality['worst'][0]['image']}`" in card
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id, "plots")}
    assert {"plots/test_threshold_sweep.csv", "plots/test_threshold_sweep.png", "plots/test_worst.png",
            "plots/test_slices.csv", "plots/test_quality.json", "plots/test_worst"} <= artifacts


def test_model_card_command(registered_segmenter, seg_data, tmp_path, capsys):
    report = tmp_path / "other.json"
    rc = main(["evaluate", "--task", "segment", "--model", "models:/crack-segmenter@champion", "--data",
               str(seg_data / "val"), "--data", str(seg_data / "test"), "--out", str(report), "--plots",
               str(tmp_path / "p"), "--worst", "2"])
    assert rc == 0
    evaluated = json.loads(report.read_text())
    assert len(evaluated["worst"]) == 2 and len(list((tmp_path / "p" / "worst").iterdir())) == 2
    assert {"slices", "datasets", "threshold_sweep", "weakest_slice"} <= set(evaluated)

    out = tmp_path / "card.md"
    rc = main(["model-card", "--model", "models:/crack-segmenter@champion", "--out", str(out), "--report", str(report)])
    assert rc == 0
    card = out.read_text()
    assert card.startswith("# Model card: crack-segmenter v1") and "Aliases: challenger, champion" in card
    assert "## Further evaluations" in card and str(seg_data / "val") in card
    names = list(evaluated["datasets"])  # each folder's row, with its Dice
    assert "By dataset in" in card and all(f"| {n} | 8 | {evaluated['datasets'][n]['dice']:.3f}" in card for n in names)
    # a local model folder finds its run and version too
    rc = main(["model-card", "--model", str(tmp_path / "seg" / "model")])
    assert rc == 0 and "# Model card: crack-segmenter v1" in capsys.readouterr().out

    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for args, message in (
        (["--model", "models:/crack-segmenter@champion", "--report", str(bad)], "not a JSON report"),
        (["--model", "models:/crack-segmenter@nosuch"], "crack-segmenter"),
        (["--model", str(tmp_path / "nowhere")], "not found"),
        (["--model", str(tmp_path / "seg" / "model"), "--attach"], "--attach needs a registered version"),
    ):
        rc = main(["model-card", *args])
        err = capsys.readouterr().err
        assert rc in (1, 2) and err.startswith("fissure: error:") and message in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_model_card_help(capsys):
    assert main(["model-card", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: fissure model-card" in out and "--report" in out
    assert main(["--help"]) == 0 and "model-card" in capsys.readouterr().out


def test_classifier_card_counts_false_alarms_on_crack_free_slices(tmp_path):
    """A crack-free slice (drawn hard negatives, the no_crack class) has no recall: the card says its
    false alarms, from the same quality report a training run logs (and from an old one's `sources`)."""
    from fissure.data import synth
    from fissure.training.datasets import eval_items
    from fissure.training.evaluate import evaluate_classifier

    from .test_quality_report import CLF_SPEC, AlwaysCrack

    synth.write_dataset(tmp_path / "clf", "classify", count=8, size=48)
    items, _ = eval_items("classify", tmp_path / "clf", CLF_SPEC["classes"])
    quality = evaluate_classifier(AlwaysCrack(), CLF_SPEC, items).quality()
    hard, free = quality["slices"]["hard_negative"], quality["slices"]["class:no_crack"]
    assert hard["n_images"] >= 1 and free["crack_free_images"] == 4 and free["false_alarm_images"] == 4
    facts = modelcard.CardFacts(name="crack-classifier", version="1", run_id="r", task="classify", spec=CLF_SPEC,
                                quality=quality)
    card = modelcard.render(facts)
    assert "| slice | images | precision | recall | F1 | false alarms (crack-free images) |" in card
    n = hard["n_images"]
    assert f"| hard_negative | {n} | n/a | n/a | n/a | {n}/{n} |" in card  # every crack-free item taken for a crack
    assert "| class:no_crack | 4 | 0.000 | 0.000 | 0.000 | 4/4 |" in card
    assert "| class:crack | 4 | 0.500 | 1.000 | 0.667 | - |" in card  # no crack-free item: no false alarms
    assert f"False alarms on `hard_negative`: {n} of {n} crack-free images" in card
    (source,) = quality["datasets"]
    assert "## Metrics by dataset (test split)" in card and f"| {source} | 8 | 0.500 | 1.000 | 0.667 | 4/4 |" in card

    # a report from before quality reports said datasets: its per-source entries were `sources`
    old = {k: v for k, v in quality.items() if k not in ("datasets", "datasets_by")}
    old["sources"] = quality["datasets"]
    assert modelcard.render(modelcard.CardFacts(name="crack-classifier", version="1", run_id="r", task="classify",
                                                spec=CLF_SPEC, quality=old)).count(f"| {source} | 8 |") == 1


def test_card_names_the_test_time_augmentation():
    from .test_quality_report import CLF_SPEC

    def card(spec):
        return modelcard.render(modelcard.CardFacts(name="crack-classifier", version="1", run_id="r", task="classify",
                                                    spec=spec))

    assert "| test-time augmentation | probabilities averaged over the image, its mirror images and quarter turns " \
           "(8 forward passes) |" in card({**CLF_SPEC, "tta": "d8"})
    assert "test-time augmentation" not in card(CLF_SPEC) and "test-time augmentation" not in card({**CLF_SPEC, "tta": "none"})


def test_card_names_the_contrast_stretch():
    from .test_quality_report import CLF_SPEC

    def card(spec):
        return modelcard.render(modelcard.CardFacts(name="crack-classifier", version="1", run_id="r", task="classify",
                                                    spec=spec))

    stretched = {**CLF_SPEC, "preprocess": {**CLF_SPEC["preprocess"], "gray_std": 24.0}}
    assert "| contrast | each image stretched to a grey-level standard deviation of 24 (0-255) before the model " \
           "(gray_std) |" in card(stretched)
    assert "| contrast |" not in card(CLF_SPEC)
