"""`fissure evaluate` on several datasets: each scored on its own and all together."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fissure.cli import main
from fissure.models import build_model, default_spec
from fissure.models.io import save_model
from fissure.training.datasets import eval_items
from fissure.training.evaluate import EvalResult, evaluate_segmenter

from .conftest import write_segment_set
from .test_quality_report import SEG_SPEC, DarkIsCrack, prepared  # noqa: F401 - prepared is a fixture


def _always_crack(tmp_path) -> str:
    """A saved classifier that calls every image a crack: its weights zero, the last layer's bias +-5."""
    spec = default_spec("classify", width=8, blocks=1, dropout=0.0, size=32)
    module = build_model(spec)
    last = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        last.bias.copy_(torch.tensor([-5.0, 5.0]))
    return str(save_model(module, spec, tmp_path / "always-crack"))


def _one_class(root: Path, cls: str, n: int) -> Path:
    (root / cls).mkdir(parents=True)
    (root / ("no_crack" if cls == "crack" else "crack")).mkdir()
    for i in range(n):
        Image.new("RGB", (32, 32), (100 + i, 100, 100)).save(root / cls / f"p{i}.png")
    return root


def test_each_dataset_gets_its_own_scores_and_the_sum_is_the_whole(tmp_path, capsys):
    model = _always_crack(tmp_path)
    cracks = _one_class(tmp_path / "site-a" / "cracks", "crack", 4)
    clean = _one_class(tmp_path / "site-b" / "clean", "no_crack", 6)
    out, plots = tmp_path / "r.json", tmp_path / "plots"
    rc = main(["evaluate", "--task", "classify", "--model", model, "--data", str(cracks), "--data", f"clean={clean}",
               "--out", str(out), "--plots", str(plots)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["datasets_by"] == "folder" and list(report["datasets"]) == ["site-a-cracks", "clean"]
    a, b = report["datasets"]["site-a-cracks"], report["datasets"]["clean"]
    assert (a["n_images"], a["accuracy"], a["recall"]) == (4, 1.0, 1.0)
    assert (b["n_images"], b["accuracy"]) == (6, 0.0)
    assert b["slices"]["class:no_crack"]["recall"] == 0.0 and b["slices"]["size:<=512px"]["false_alarm_rate"] == 1.0
    assert report["n_images"] == 10 and report["accuracy"] == pytest.approx(0.4)
    assert report["confusion"]["counts"] == (np.array(a["confusion"]["counts"]) + b["confusion"]["counts"]).tolist()
    assert report["data"] == [str(cracks), str(clean)] and "sources" not in report
    assert {w["dataset"] for w in report["worst"]} == {"clean"}  # the only mistakes
    # the same plots for the whole and for each dataset
    for folder in (plots, plots / "datasets" / "site-a-cracks", plots / "datasets" / "clean"):
        assert (folder / "quality.json").is_file() and (folder / "worst.png").is_file(), folder
    assert len(list((plots / "datasets" / "clean" / "worst").iterdir())) == 6
    # the plots' quality.json says the datasets as the JSON does (one shape, one name), and so do their slices.csv
    quality = json.loads((plots / "quality.json").read_text())
    assert quality["datasets_by"] == "folder" and quality["datasets"] == report["datasets"] and "sources" not in quality
    assert json.loads((plots / "datasets" / "clean" / "quality.json").read_text())["datasets_by"] == "source"
    with (plots / "slices.csv").open() as fh:
        rows = {r["slice"]: r for r in csv.DictReader(fh)}
    assert float(rows["folder:clean"]["accuracy"]) == 0.0 and rows["folder:site-a-cracks"]["n_images"] == "4"
    err = capsys.readouterr().err.splitlines()
    table = err[next(i for i, line in enumerate(err) if line.split()[:2] == ["folder", "images"]):]
    assert [line.split()[:3] for line in table[1:4]] == [["site-a-cracks", "4", "1.0000"], ["clean", "6", "0.0000"],
                                                          ["all", "10", "0.4000"]]

    # a dataset's entry is what evaluating that folder alone gives
    rc = main(["evaluate", "--task", "classify", "--model", model, "--data", str(clean), "--out", str(out)])
    alone = json.loads(out.read_text())
    assert rc == 0 and alone["datasets_by"] == "source"
    for key in ("accuracy", "precision", "recall", "f1", "confusion", "slices", "weakest_slice"):
        assert b[key] == alone[key], key


def test_segmenter_sets_together_score_as_one_set(prepared, tmp_path):  # noqa: F811
    """Combining per-set results gives what one pass over all the images gives."""
    other = write_segment_set(tmp_path / "other", 5, size=48, seed=4)
    sets = {"prepared": eval_items("segment", prepared / "segment" / "test")[0], "other": eval_items("segment", other)[0]}
    parts = {name: evaluate_segmenter(DarkIsCrack(), SEG_SPEC, its, overlays=2, worst=3) for name, its in sets.items()}
    both = EvalResult.combine(parts)
    whole = evaluate_segmenter(DarkIsCrack(), SEG_SPEC, [*sets["prepared"], *sets["other"]], overlays=2, worst=3)
    assert both.metrics == pytest.approx(whole.metrics)
    assert both.quality()["slices"] == whole.quality()["slices"]
    assert both.quality()["threshold_sweep"] == whole.quality()["threshold_sweep"]
    assert [w["image"] for w in both.quality()["worst"]] == [w["image"] for w in whole.quality()["worst"]]
    assert {w["dataset"] for w in both.quality()["worst"]} <= {"prepared", "other"}
    assert len(both.samples) == 2 and both.datasets.count("other") == 5


def test_each_quality_is_computed_once_and_handed_down(prepared, tmp_path):  # noqa: F811
    """`fissure evaluate` computes each set's quality once and hands it to the report, the folder
    entries and the plots: they say what computing it again would, and change nothing handed in."""
    other = write_segment_set(tmp_path / "other", 4, size=48, seed=5)
    folders = {"prepared": prepared / "segment" / "test", "other": other}
    parts = {name: evaluate_segmenter(DarkIsCrack(), SEG_SPEC, eval_items("segment", folder)[0], overlays=1, worst=2)
             for name, folder in folders.items()}
    both = EvalResult.combine(parts, folders)
    given = {name: r.quality() for name, r in parts.items()}
    kept = copy.deepcopy(given)
    quality = both.quality(given)
    assert quality == both.quality() and set(quality["datasets"]) == set(folders)
    both.write_plots(tmp_path / "given", quality=quality)
    both.write_plots(tmp_path / "computed")
    for name, r in parts.items():
        r.write_plots(tmp_path / "given" / name, quality=given[name])
        r.write_plots(tmp_path / "computed" / name)
    assert given == kept
    files = sorted(p.relative_to(tmp_path / "given") for p in (tmp_path / "given").rglob("*") if p.is_file())
    assert Path("quality.json") in files and Path("other/slices.csv") in files
    for f in files:
        assert (tmp_path / "given" / f).read_bytes() == (tmp_path / "computed" / f).read_bytes(), f


def test_one_prepared_folder_reports_per_source(prepared, tmp_path, seg_model):  # noqa: F811
    """The DVC evaluate stage's case: one test split holding held-back sets from several sources."""
    out = tmp_path / "seg.json"
    assert main(["evaluate", "--task", "segment", "--model", seg_model, "--data", str(prepared / "segment" / "test"),
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["datasets_by"] == "source" and set(report["datasets"]) == {"synth", "datasets-deepcrack"}
    assert sum(m["n_images"] for m in report["datasets"].values()) == report["n_images"] == 6
    assert "sources" not in report  # said once, as datasets


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory) -> str:
    spec = default_spec("segment", base=4, depth=2, size=64)
    return str(save_model(build_model(spec), spec, tmp_path_factory.mktemp("seg") / "model"))  # untrained


@pytest.mark.parametrize("case", ["missing", "layout", "same-name", "twice"])
def test_bad_data_folders_are_one_line_errors(tmp_path, capsys, seg_model, case):
    model = seg_model
    good = write_segment_set(tmp_path / "a" / "test", 2, size=32)
    bad = {"missing": [str(tmp_path / "nope")],
           "layout": [str(_one_class(tmp_path / "classes", "crack", 2))],
           "same-name": [str(write_segment_set(tmp_path / "b" / "x" / "a" / "test", 2, size=32))],
           "twice": [str(good)]}[case]
    args = ["evaluate", "--task", "segment", "--model", model, "--data", str(good)]
    for folder in bad:
        args += ["--data", folder]
    rc = main([*args, "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip()
    assert rc == (2 if case in ("same-name", "twice") else 1), err
    assert err.startswith("fissure: error:") and len(err.splitlines()) == 1, err
    assert {"missing": "no such folder", "layout": "images/ and masks/", "same-name": "both named a-test",
            "twice": "given twice"}[case] in err
    assert not (tmp_path / "r.json").exists()
