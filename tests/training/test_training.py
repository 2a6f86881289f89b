"""The loop learns, is reproducible, logs to MLflow and registers with the right aliases."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch

from fissure.cli import main
from fissure.models import io
from fissure.training import tracking
from fissure.training.datasets import find_splits
from fissure.training.loop import fit
from fissure.training.run import train

from .conftest import tiny_config, write_classify_set, write_segment_set

pytestmark = pytest.mark.slow


def _fit(task, data, **kw):
    cfg = tiny_config(task, **kw)
    splits = find_splits(task, data, seed=cfg.seed)
    return fit(task, splits, cfg, progress=False)


def test_classifier_learns(clf_data):
    result = _fit("classify", clf_data, epochs=6)
    losses = [h.train_loss for h in result.history]
    assert losses[-1] < 0.6 * losses[0]
    assert result.best_val["f1"] >= 0.8
    assert result.best_val["roc_auc"] >= 0.9


def test_segmenter_learns(seg_data):
    result = _fit("segment", seg_data, epochs=8)
    losses = [h.train_loss for h in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert result.best_val["dice"] > 0.4
    # the best epoch's weights are the ones returned
    assert result.best_val == max((h.val for h in result.history), key=lambda v: v["dice"])


def test_segmenter_threshold_is_tuned_on_validation_and_shipped(seg_data):
    from fissure.training import metrics as M
    from fissure.training.evaluate import evaluate_items, evaluate_segmenter

    result = _fit("segment", seg_data, epochs=3)
    thr = result.spec["threshold"]
    assert 0.2 <= thr <= 0.8
    # it is the best validation threshold: no other one in range scores higher on val
    splits = find_splits("segment", seg_data)
    val = evaluate_segmenter(result.module, result.spec, splits.val, overlays=0, threshold=0.5).counts
    assert result.extra["val_dice_at_threshold"] >= M.segmentation_metrics_from_counts(val.tp, val.fp, val.fn)["dice"] - 1e-6
    # evaluate (and serving) use the spec's threshold by default
    by_spec = evaluate_items(result.module, result.spec, splits.test, overlays=0).metrics
    explicit = evaluate_segmenter(result.module, result.spec, splits.test, overlays=0, threshold=thr).metrics
    assert by_spec == explicit
    # a fixed threshold in the params is kept as is
    fixed = _fit("segment", seg_data, epochs=1, threshold=0.35).spec
    assert fixed["threshold"] == 0.35 and fixed["threshold_from"] == {"mode": "fixed"}


def test_segmenter_threshold_is_tuned_on_the_real_sources_validation_images(tmp_path):
    """Prepared synthetic + real data: the shipped threshold is the best on the real source's
    validation images alone (threshold_from: real, the default), on the whole split with
    threshold_from: all, and on the whole split when validation holds no real image or fewer than
    min_real_val_images. The best epoch is chosen on the same images (select_on follows it)."""
    import dataclasses

    from fissure.data.prepare import make_params, prepare
    from fissure.models import preprocess_config
    from fissure.training.datasets import SegmentationDataset
    from fissure.training.loop import THRESHOLD_RANGE, _loader, validate

    write_segment_set(tmp_path / "site" / "survey", 24, seed=4)
    params = make_params({"source": ["synth", {"path": str(tmp_path / "site" / "survey"), "val_fraction": 0.25}],
                          "count": 16, "size": 64, "patch_size": 32, "patch_stride": 32, "feedback": None})
    prepare(params, tmp_path / "prepared")
    cfg = tiny_config("segment", epochs=3, eval_batch_size=1, min_real_val_images=2)
    splits = find_splits("segment", tmp_path / "prepared" / "segment", seed=cfg.seed)
    real_val = [it for it in splits.val if not it.image.name.startswith("synth-")]
    synth_val = [it for it in splits.val if it.image.name.startswith("synth-")]
    assert real_val and synth_val

    def best_on(result, items):
        """The best threshold and Dice on ``items`` alone, scored again with the returned model."""
        loader = _loader(SegmentationDataset(items, preprocess_config(result.spec)), 1, shuffle=False, seed=0,
                         num_workers=0)
        _, _, pixels = validate("segment", result.module, loader, torch.device(result.device),
                                lambda logits, y: torch.zeros(()))
        t, dice = pixels.best_threshold(*THRESHOLD_RANGE)
        return t, round(dice, 4)

    real = fit("segment", splits, cfg, progress=False)
    assert real.spec["threshold_from"] == {"mode": "real", "sources": ["site-survey"], "images": len(real_val),
                                           "dice": best_on(real, real_val)[1]}
    assert real.spec["threshold"] == best_on(real, real_val)[0]
    # the best epoch: the best real-source validation Dice (logged per epoch as val_real_dice)
    scores = [h.select.get("val_real_dice") for h in real.history]
    assert None not in scores and all("val_real_dice" in h.row() for h in real.history)
    assert real.best_epoch == _first_best(scores) and real.best_val == real.history[real.best_epoch - 1].val
    # select_metric tuned_dice: the real images' Dice at each epoch's tuned threshold; the best one's is
    # the shipped threshold's Dice there
    tuned = fit("segment", splits, cfg.model_copy(update={"select_metric": "tuned_dice"}), progress=False)
    tuned_scores = [h.select["val_real_tuned_dice"] for h in tuned.history]
    assert tuned.best_epoch == _first_best(tuned_scores)
    assert tuned.spec["select_on"]["dice"] == tuned.spec["threshold_from"]["dice"] == round(max(tuned_scores), 4)
    assert real.spec["select_on"] == {"mode": "real", "sources": ["site-survey"], "images": len(real_val),
                                      "metric": "dice", "epoch": real.best_epoch,
                                      "dice": round(scores[real.best_epoch - 1], 4)}

    whole = fit("segment", splits, cfg.model_copy(update={"threshold_from": "all"}), progress=False)
    assert whole.spec["threshold_from"] == {"mode": "all", "sources": ["site-survey", "synth"],
                                            "images": len(splits.val), "dice": best_on(whole, splits.val)[1]}
    assert whole.spec["threshold"] == best_on(whole, splits.val)[0]
    whole_dice = [h.val["dice"] for h in whole.history]
    assert whole.best_epoch == _first_best(whole_dice) and "val_real_dice" not in whole.history[0].row()
    assert whole.spec["select_on"] == {"mode": "all", "sources": ["site-survey", "synth"], "images": len(splits.val),
                                       "metric": "dice", "epoch": whole.best_epoch,
                                       "dice": round(whole_dice[whole.best_epoch - 1], 4)}
    # select_on overrides threshold_from for the epoch only
    mixed = fit("segment", splits, cfg.model_copy(update={"threshold_from": "all", "select_on": "real"}),
                progress=False)
    assert mixed.spec["select_on"]["mode"] == "real" and mixed.spec["threshold_from"]["mode"] == "all"

    # fewer real validation images than min_real_val_images: both on the whole split, saying why
    few = fit("segment", splits, cfg.model_copy(update={"min_real_val_images": len(real_val) + 1}), progress=False)
    why = f"only {len(real_val)} real-source validation images (min_real_val_images: {len(real_val) + 1})"
    assert few.spec["select_on"]["mode"] == "all" and few.spec["select_on"]["fallback"] == why
    assert few.spec["threshold_from"]["mode"] == "all" and few.spec["threshold_from"]["fallback"] == why
    assert few.best_epoch == _first_best([h.val["dice"] for h in few.history])

    synth_only = fit("segment", dataclasses.replace(splits, val=synth_val), cfg, progress=False)
    assert synth_only.spec["threshold_from"] == {
        "mode": "all", "fallback": "no real-source validation images", "sources": ["synth"],
        "images": len(synth_val), "dice": best_on(synth_only, synth_val)[1]}
    assert synth_only.spec["threshold"] == best_on(synth_only, synth_val)[0]
    assert synth_only.spec["select_on"]["fallback"] == "no real-source validation images"


def _first_best(scores: list[float], min_delta: float = 1e-4) -> int:
    """The epoch (1-based) the loop keeps: the last one to beat the best so far by more than min_delta."""
    best, epoch = -float("inf"), 0
    for i, score in enumerate(scores, start=1):
        if score > best + min_delta:
            best, epoch = score, i
    return epoch


def test_seeded_runs_are_reproducible(seg_data):
    a = _fit("segment", seg_data, epochs=2, seed=7)
    b = _fit("segment", seg_data, epochs=2, seed=7)
    c = _fit("segment", seg_data, epochs=2, seed=8)
    sa, sb, sc = a.module.state_dict(), b.module.state_dict(), c.module.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h.val for h in a.history] == [h.val for h in b.history]
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("task", ["segment", "classify"])
def test_blur_and_noise_reach_the_training_images_and_stay_seeded(task, seg_data, clf_data):
    data = seg_data if task == "segment" else clf_data
    plain = _fit(task, data, epochs=1, seed=3)
    a = _fit(task, data, epochs=1, seed=3, blur=1.5, noise=20.0)
    b = _fit(task, data, epochs=1, seed=3, blur=1.5, noise=20.0)
    sp, sa, sb = plain.module.state_dict(), a.module.state_dict(), b.module.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sp[k]) for k in sa)


def test_the_skeleton_recall_term_changes_what_the_segmenter_learns(seg_data):
    plain = _fit("segment", seg_data, epochs=1, seed=3)
    skel = _fit("segment", seg_data, epochs=1, seed=3, skeleton_weight=1.0)
    sp, ss = plain.module.state_dict(), skel.module.state_dict()
    assert not all(torch.equal(sp[k], ss[k]) for k in sp)
    assert skel.history[0].train_loss > plain.history[0].train_loss  # the term is added, not swapped in


def test_early_stopping_restores_best(clf_data):
    # a negligible lr (0 is not a valid one) never improves after epoch 1 -> stops after `patience` stale epochs
    result = _fit("classify", clf_data, epochs=10, lr=1e-12, patience=2)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_single_folder_is_split_deterministically(tmp_path):
    write_segment_set(tmp_path / "one", 20)
    a = find_splits("segment", tmp_path / "one", val_fraction=0.2, test_fraction=0.2, seed=3)
    b = find_splits("segment", tmp_path / "one", val_fraction=0.2, test_fraction=0.2, seed=3)
    assert a.sizes() == {"train": 12, "val": 4, "test": 4} and a.val == b.val and a.test == b.test
    assert not set(a.train) & set(a.test)
    write_classify_set(tmp_path / "clf", 40)
    c = find_splits("classify", tmp_path / "clf", seed=0)
    assert c.classes == ["no_crack", "crack"] and {lbl for _, lbl in c.val} == {0, 1}


def test_registry_versions_aliases_and_lineage(clf_data, tmp_path):
    cfg = tiny_config("classify", epochs=1)
    first = train("classify", clf_data, cfg, out=tmp_path / "m1", register=True, progress=False, echo=lambda m: None)
    assert first.registered["version"] == "1"
    assert tracking.aliases("crack-classifier") == {"champion": "1", "challenger": "1"}
    second = train("classify", clf_data, cfg, out=tmp_path / "m2", register=True, progress=False, echo=lambda m: None)
    assert second.registered["version"] == "2"
    assert tracking.aliases("crack-classifier") == {"champion": "1", "challenger": "2"}

    run = mlflow.MlflowClient().get_run(second.run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["git.commit"] and tags["params.hash"] and tags["dvc.data_hash"].startswith("md5:")
    assert json.loads(params["spec"])["task"] == "classify"
    assert {"test_f1", "test_roc_auc", "final_val_f1", "val_loss", "train_loss"} <= set(metrics)
    history = mlflow.MlflowClient().get_metric_history(second.run_id, "val_f1")
    assert [m.step for m in history] == [1]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(second.run_id, "plots")}
    assert {"plots/loss_curves.png", "plots/test_pr_curve.png", "plots/test_confusion_matrix.png"} <= artifacts
    saved = json.loads((tmp_path / "m2" / "metrics.json").read_text())
    assert saved["registered_version"] == "2" and set(saved["test"]) == {"accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc"}

    # load_model on every kind of URI
    champion = io.load_model("models:/crack-classifier@champion")
    assert (champion.name, champion.version, champion.run_id) == ("crack-classifier", "1", first.run_id)
    assert io.load_model("models:/crack-classifier@challenger").version == "2"
    by_run = io.load_model(f"runs:/{second.run_id}/model")
    assert by_run.task == "classify" and by_run.run_id == second.run_id
    local = io.load_model(str(tmp_path / "m2" / "model"))
    assert local.version == "2" and local.spec == champion.spec
    x = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(local.module(x), by_run.module(x))


def test_evaluate_cli_writes_named_metrics(seg_data, clf_data, tmp_path, capsys):
    seg = train("segment", seg_data, tiny_config("segment", epochs=1), out=tmp_path / "seg", progress=False,
                echo=lambda m: None)
    out = tmp_path / "seg.json"
    rc = main(["evaluate", "--task", "segment", "--model", str(tmp_path / "seg" / "model"),
               "--data", str(seg_data / "test"), "--out", str(out), "--plots", str(tmp_path / "plots")])
    assert rc == 0
    report = json.loads(out.read_text())
    assert {"dice", "iou", "precision", "recall", "f1"} <= set(report) and report["n_images"] == 8
    assert report["model"] == "crack-segmenter"
    assert {p.name for p in (tmp_path / "plots").iterdir()} >= {"pr_curve.csv", "pr_curve.png", "overlays.png"}

    # the MLflow runs:/ URI works too
    rc = main(["evaluate", "--task", "segment", "--model", f"runs:/{seg.run_id}/model",
               "--data", str(seg_data / "test"), "--out", str(out)])
    assert rc == 0 and json.loads(out.read_text())["run_id"] == seg.run_id

    # task mismatch: one line, exit 1 (found at run time), no traceback
    capsys.readouterr()
    rc = main(["evaluate", "--task", "classify", "--model", str(tmp_path / "seg" / "model"),
               "--data", str(clf_data / "test"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("fissure: error: --task classify but") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_evaluate_classifier_cli(clf_data, tmp_path):
    train("classify", clf_data, tiny_config("classify", epochs=2), out=tmp_path / "clf", register=True,
          progress=False, echo=lambda m: None)
    out = tmp_path / "clf.json"
    rc = main(["evaluate", "--task", "classify", "--model", "models:/crack-classifier@champion",
               "--data", str(clf_data / "test"), "--out", str(out), "--plots", str(tmp_path / "p")])
    report = json.loads(out.read_text())
    assert rc == 0 and {"accuracy", "precision", "recall", "f1", "roc_auc", "n_images"} <= set(report)
    assert report["model"] == "crack-classifier" and report["model_version"] == "1" and report["n_images"] == 32
    assert (tmp_path / "p" / "confusion.csv").read_text().startswith("actual,predicted")
    # per class: the counts add up to the images, each class's support is its row of the confusion
    counts = report["confusion"]["counts"]
    assert report["confusion"]["classes"] == ["no_crack", "crack"] and sum(map(sum, counts)) == 32
    assert [report["per_class"][c]["support"] for c in ("no_crack", "crack")] == [sum(row) for row in counts]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--task", "segment", "--data", "/nonexistent/data"], "no such folder"),
        (["evaluate", "--task", "segment", "--model", "/nonexistent/model", "--data", ".", "--out", "x.json"], "not found"),
        (["evaluate", "--task", "segment", "--model", "models:/crack-segmenter@champion", "--data", ".", "--out", "x.json"], "crack-segmenter"),
    ],
)
def test_user_mistakes_are_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err.startswith("fissure: error:") and message in err and len(err.splitlines()) == 1


def test_help_everywhere(capsys):
    for cmd in ("train", "evaluate"):
        assert main([cmd, "--help"]) == 0
        assert "Usage: fissure " + cmd in capsys.readouterr().out


def test_params_file_overrides_and_rejects_unknown_keys(tmp_path):
    from fissure.errors import FissureError
    from fissure.training.config import load_config

    p = tmp_path / "params.yaml"
    p.write_text("train_segmenter:\n  epochs: 3\n  model: {base: 4}\n")
    cfg = load_config("segment", p, batch_size=2)
    assert (cfg.epochs, cfg.batch_size, cfg.model["base"], cfg.model["depth"]) == (3, 2, 4, 4)
    p.write_text("train_segmenter:\n  epoch: 3\n")
    with pytest.raises(FissureError, match="unknown key"):
        load_config("segment", p)


def test_params_asking_for_deep_supervision_without_the_heads_are_refused_before_training(tmp_path):
    """aux_weight (0.5 by default) on a model built without deep_supervision is a params error
    naming the key, raised when the params are read: before a run is opened and left FAILED."""
    from fissure.errors import DataError
    from fissure.training.config import load_config

    p = tmp_path / "params.yaml"
    p.write_text("train_segmenter:\n  model: {deep_supervision: false}\n")
    with pytest.raises(DataError, match=r"train_segmenter\.aux_weight: aux_weight > 0 needs model\.deep_supervision"):
        load_config("segment", p)
    p.write_text("train_segmenter:\n  aux_weight: 0\n  model: {deep_supervision: false}\n")
    assert load_config("segment", p).aux_weight == 0


def test_segmenter_trains_with_deep_supervision(seg_data):
    from fissure.errors import FissureError
    from fissure.models import build_model

    model = {"base": 4, "depth": 2, "norm": "group", "deep_supervision": True}
    deep = _fit("segment", seg_data, epochs=2, aux_weight=1.0, model=model)
    idle = _fit("segment", seg_data, epochs=2, aux_weight=0.0, model=model)
    assert deep.spec["params"]["deep_supervision"] is True
    torch.manual_seed(0)  # the run's seed: the weights it started from
    start = build_model(deep.spec).aux_heads[0].weight
    # the coarse head learns only from the deep-supervision term
    assert not torch.equal(deep.module.aux_heads[0].weight, start)
    assert torch.equal(idle.module.aux_heads[0].weight, start)
    with pytest.raises(FissureError, match="deep_supervision: true"):
        _fit("segment", seg_data, epochs=1, aux_weight=1.0)


def test_segmentation_dataset_draws_hard_negatives_in_training_only(seg_data):
    """hard_negatives: 1.0 draws a joint or sealant band into every training crop, reproducibly
    for the torch seed; validation items (no augmentation) are left as they are."""
    from fissure.models import default_spec, preprocess_config
    from fissure.training.datasets import SegmentationDataset

    splits = find_splits("segment", seg_data)
    cfg = preprocess_config(default_spec("segment", size=64))

    def crops(hard_negatives):
        ds = SegmentationDataset(splits.train[:6], cfg, crop=48, augment=True, hard_negatives=hard_negatives)
        ds.augment = False  # same crops, no flips or jitter: only the drawing differs
        return [(torch.manual_seed(i), ds[i])[1] for i in range(len(ds))]

    plain, drawn, again = crops(0.0), crops(1.0), crops(1.0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(drawn, again))
    darkened = [float(((d[0] - p[0]).mean(0) < -0.5).float().mean()) for p, d in zip(plain, drawn)]
    assert min(darkened) > 0.01  # every crop shows a dark line or band
    assert all(not (d[1] > p[1]).any() for p, d in zip(plain, drawn))  # masks only lose pixels
    val = SegmentationDataset(splits.val[:2], cfg, hard_negatives=1.0)
    assert val.hard_negatives == 0.0


def test_weight_average_is_what_gets_validated_and_kept(seg_data):
    """ema > 0: the moving average of the weights is validated each epoch and returned; it is a
    different model from the last raw weights, and the run is still reproducible."""
    ema = _fit("segment", seg_data, epochs=3, ema=0.9, min_epochs=3)
    again = _fit("segment", seg_data, epochs=3, ema=0.9, min_epochs=3)
    raw = _fit("segment", seg_data, epochs=3, min_epochs=3)
    key = "head.weight"
    assert torch.equal(ema.module.state_dict()[key], again.module.state_dict()[key])
    assert not torch.equal(ema.module.state_dict()[key], raw.module.state_dict()[key])
    assert ema.best_val["dice"] > 0.2  # the average of a learning model has learnt too


def test_params_yaml_equals_the_built_in_defaults():
    """`fissure train` without --params trains what `dvc repro` trains (docs/training.md)."""
    from pathlib import Path

    from fissure.training.config import default_config, load_config

    params = Path(__file__).resolve().parents[2] / "params.yaml"
    for task in ("classify", "segment"):
        assert load_config(task, params) == default_config(task), task


def test_auto_threads_leave_cores_that_others_keep_busy():
    """With every CPU kept busy by other processes, training takes one thread, not all."""
    import subprocess
    import sys

    from fissure.training.loop import auto_threads, busy_cpus, cpu_count

    assert 1 <= auto_threads() <= cpu_count()
    spin = [subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
            for _ in range(cpu_count())]
    try:
        import time

        time.sleep(0.5)
        assert busy_cpus() > cpu_count() - 0.5
        assert auto_threads() == 1
    finally:
        for p in spin:
            p.kill()
            p.wait()


def test_train_cli_shows_each_epoch_and_an_eta_in_a_log(clf_data, tmp_path, capsys):
    """What `dvc repro` and `fissure up --detach` capture: a line per epoch with its metrics and
    an ETA, then the test split's evaluation (output that is not a terminal)."""
    import re

    import yaml

    cfg = tiny_config("classify", epochs=2).to_dict()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train_classifier": cfg}))
    assert main(["train", "--task", "classify", "--data", str(clf_data), "--params", str(tmp_path / "params.yaml")]) == 0
    err = capsys.readouterr().err
    epochs = re.findall(r"^train crack-classifier: epoch (\d)/2 loss \d\.\d{4} val_loss \d\.\d{4} val_f1 \d\.\d{4} "
                        r"best \d elapsed \d+s eta \d+s$", err, re.M)
    assert epochs == ["1", "2"], err
    assert re.search(r"^evaluate crack-classifier: images 32/32 elapsed \S+ eta \S+$", err, re.M), err


def _stage_imports(entry: str, src) -> set:
    """Files of the fissure modules that running ``entry`` imports (at any depth, function-level
    imports included), without following the modules a stage's deps leave out on purpose."""
    import ast

    def file_of(name):
        path = src.joinpath(*name.split("."))
        return path / "__init__.py" if (path / "__init__.py").is_file() else path.with_suffix(".py")

    seen, todo = set(), [entry]
    while todo:
        name = todo.pop()
        path = file_of(name)
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        if path.relative_to(src.parent).as_posix() in NOT_STAGE_DEPS:
            continue
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                todo += [module] + [f"{module}.{a.name}" for a in node.names]
    return {file_of(n).relative_to(src.parent).as_posix() for n in seen if n.split(".")[0] == "fissure"}


# Imported by every stage but unable to change its outputs (dvc.yaml says why).
NOT_STAGE_DEPS = {"src/fissure/cli/__init__.py", "src/fissure/errors.py", "src/fissure/progress.py",
                  "src/fissure/settings.py"}


def test_dvc_stages_depend_on_the_code_they_import():
    """Each stage's code deps cover every fissure module its command imports, and name no code it
    does not import (a serving change must not retrain); no stage silences its progress."""
    import shlex
    from pathlib import Path

    import yaml

    from fissure.cli import COMMANDS

    root = Path(__file__).resolve().parents[2]
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {"prepare", "train_classifier", "train_segmenter", "evaluate"}
    for name, stage in stages.items():
        cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
        assert not any("--no-progress" in c for c in cmds), name
        imported = set().union(*(_stage_imports(COMMANDS[shlex.split(c)[1]][0], root / "src") for c in cmds))
        code = [d for d in stage["deps"] if d.startswith("src/")]
        assert all((root / d).exists() for d in code), name

        def covered(path, dep):
            return path == dep or path.startswith(dep + "/")

        missing = sorted(p for p in imported - NOT_STAGE_DEPS if not any(covered(p, d) for d in code))
        assert not missing, f"{name}: add to deps: {missing}"
        unused = [d for d in code if not any(covered(p, d) for p in imported)]
        assert not unused, f"{name}: deps it does not import: {unused}"


def test_tta_is_saved_in_the_spec_and_scores_validation_as_served(clf_data):
    """tta: d8 trains the same network (the views are for inference only) but validates the averaged
    model, and the spec it ships with says so; evaluate_items then scores that model by default."""
    from fissure.models import tta
    from fissure.training.evaluate import evaluate_items

    plain = _fit("classify", clf_data, epochs=2, min_epochs=2)
    averaged = _fit("classify", clf_data, epochs=2, min_epochs=2, tta="d8")
    assert "tta" not in plain.spec and averaged.spec["tta"] == "d8"
    for a, b in zip(plain.module.state_dict().values(), averaged.module.state_dict().values()):
        assert torch.equal(a, b)  # same seed, same training: only the validation differs
    assert plain.history[-1].val_loss != averaged.history[-1].val_loss
    splits = find_splits("classify", clf_data, seed=0)
    served = evaluate_items(averaged.module, averaged.spec, splits.val).metrics
    one_view = evaluate_items(averaged.module, {**averaged.spec, "tta": "none"}, splits.val).metrics
    assert served["roc_auc"] == pytest.approx(averaged.best_val["roc_auc"], abs=1e-6)
    assert one_view["roc_auc"] == pytest.approx(plain.best_val["roc_auc"], abs=1e-6)
    assert not isinstance(averaged.module, tta.TestTimeAugmented)  # what gets saved is the plain model


def test_gray_std_is_saved_in_the_spec_and_drift_profiles_the_images_as_they_come(seg_data):
    """The stretch is part of the model (its spec), so serving repeats it; the drift reference
    keeps the unstretched images' statistics, or a darker, flatter camera would go unseen (the
    front does the same: tests/observability)."""
    from fissure.training.run import reference_profile

    result = _fit("segment", seg_data, epochs=1, gray_std=24.0)
    assert result.spec["preprocess"]["gray_std"] == 24.0
    val = find_splits("segment", seg_data, seed=0).val
    unstretched_spec = {**result.spec, "preprocess": {**result.spec["preprocess"], "gray_std": 0.0}}
    profile = reference_profile(result.module, result.spec, val).to_dict()["features"]
    plain = reference_profile(result.module, unstretched_spec, val).to_dict()["features"]
    assert profile["contrast"] == plain["contrast"] and profile["brightness"] == plain["brightness"]
