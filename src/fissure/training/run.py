"""``fissure train`` as a library call: split, fit, test, log to MLflow, save, register."""

from __future__ import annotations

import csv
import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fissure import MODEL_NAMES, __version__
from fissure.errors import FissureError
from fissure.models import preprocess_config, tta
from fissure.observability import drift
from fissure.preprocess import image_to_array, load_image, normalize, stretch_contrast
from fissure.training import metrics as M
from fissure.training import plots, tracking
from fissure.training.config import TrainConfig
from fissure.training.datasets import find_splits
from fissure.training.evaluate import clean, evaluate_items
from fissure.training.loop import EpochLog, fit


@dataclass
class TrainOutcome:
    run_id: str
    model_uri: str
    val: dict
    test: dict
    registered: dict | None
    out: Path | None
    best_epoch: int
    epochs_run: int
    seconds: float
    report: dict


def train(
    task: str,
    data: str | Path,
    cfg: TrainConfig,
    *,
    out: str | Path | None = None,
    register: bool = False,
    device: str | None = None,
    progress: bool | None = True,
    echo: Callable[[str], None] = print,
    overlays: int = 4,
) -> TrainOutcome:
    """Train, test, log and save one model. ``echo`` gets the stage's messages; the epochs'
    progress goes to stderr (``progress`` as in :func:`~fissure.training.loop.fit`)."""
    if task not in MODEL_NAMES:
        raise FissureError(f"unknown task {task!r}; choose one of {sorted(MODEL_NAMES)}")
    started = time.perf_counter()
    splits = find_splits(task, data, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed)
    sizes = splits.sizes()
    echo(f"{MODEL_NAMES[task]}: train {sizes['train']}, val {sizes['val']}, test {sizes['test']} images from {data}")

    mlflow = tracking.mlflow_client()
    try:
        experiment_id = tracking.ensure_experiment(task)
    except mlflow.exceptions.MlflowException as exc:
        raise FissureError(f"MLflow at {mlflow.get_tracking_uri()}: {exc.message.splitlines()[0]}") from None
    except Exception as exc:  # connection errors from a remote tracking server
        if type(exc).__module__.startswith(("requests", "urllib3", "mlflow")):
            raise FissureError(f"cannot reach MLflow at {mlflow.get_tracking_uri()}: {exc}") from None
        raise

    params = cfg.to_dict()
    parent = tracking.champion_version(MODEL_NAMES[task])  # lineage: what this run may replace
    init_state, init_from = None, "scratch"
    if cfg.init == "champion":
        if parent is None:
            echo(f"init: champion, but {MODEL_NAMES[task]} has no champion yet: training from scratch")
        else:
            from fissure.models import io as model_io

            init_state = model_io.load_model(f"models:/{MODEL_NAMES[task]}/{parent}").module.state_dict()
            init_from = f"champion:v{parent}"
            echo(f"fine-tuning from {MODEL_NAMES[task]} v{parent} (the champion)")
    tags = {
        "git.commit": tracking.git_commit(),
        "dvc.data_hash": tracking.data_hash(splits.roots["train"]),
        "params.hash": tracking.params_hash(params),
        "fissure.task": task,
        "fissure.version": __version__,
        "data.path": str(data),
        "init": init_from,
    }
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        run_id = run.info.run_id
        echo(f"mlflow run {run_id} (experiment {tracking.experiment_name(task)}, {mlflow.get_tracking_uri()})")

        def on_epoch(log: EpochLog):
            mlflow.log_metrics({k: v for k, v in log.row().items() if k != "epoch" and v is not None}, step=log.epoch)

        result = fit(task, splits, cfg, device=device, progress=progress, on_epoch=on_epoch, init_state=init_state)
        spec = result.spec
        for line in selection_notes(spec):
            echo(line)
        mlflow.log_params({**tracking.flat_params("", params), **{f"split.{k}": v for k, v in sizes.items()},
                           "device": result.device, "threads": result.extra.get("threads")})
        # The param is the architecture, for comparing runs; the profile is an artifact of its own.
        mlflow.log_param("spec", json.dumps(spec, sort_keys=True))
        # What serving's drift gauges compare live traffic with: it rides in the spec (MLflow, MAR, front).
        t0 = time.perf_counter()
        profile = reference_profile(result.module, spec, splits.val, device=result.device,
                                    batch_size=cfg.eval_batch_size or cfg.batch_size)
        spec[drift.PROFILE_KEY] = profile.to_dict()
        mlflow.log_dict(spec[drift.PROFILE_KEY], drift.PROFILE_ARTIFACT)
        mlflow.log_dict(spec, "spec.json")
        echo(f"reference profile of {profile.items} validation images in {time.perf_counter() - t0:.1f}s")

        # Final metrics: validation (best epoch, model size) and test (native resolution).
        val = clean(result.best_val)
        test, test_eval = {}, None
        if splits.test:
            test_eval = evaluate_items(result.module, spec, splits.test, device=result.device, overlays=overlays,
                                       progress=progress)
            test = clean(test_eval.metrics)
        final = {**{f"final_val_{k}": v for k, v in val.items() if v is not None},
                 **{f"test_{k}": v for k, v in test.items() if v is not None},
                 "best_epoch": result.best_epoch, "epochs_run": len(result.history),
                 "train_seconds": result.seconds, "train_images_per_second": result.images_per_second}
        if "threshold" in spec:
            final["mask_threshold"] = spec["threshold"]
        if spec.get("threshold_low") is not None:
            final["mask_threshold_low"] = spec["threshold_low"]
        if result.extra.get("val_dice_at_threshold") is not None:
            final["final_val_dice_at_threshold"] = result.extra["val_dice_at_threshold"]
        by_class = {}
        if task == "classify":  # what the macro averages hide: each class's own scores, the confusion
            evals = {"val": evaluate_items(result.module, spec, splits.val, device=result.device)}
            if test_eval is not None:
                evals["test"] = test_eval
            for split, ev in evals.items():
                by_class[split] = class_report(ev)
                final.update(class_metrics(by_class[split], f"{'final_val' if split == 'val' else split}_class"))
                mlflow.log_dict(by_class[split], f"{split}_classes.json")
        mlflow.log_metrics(final)

        history = [h.row() for h in result.history]
        with tempfile.TemporaryDirectory() as tmp:
            pdir = Path(tmp) / "plots"
            plots.save(plots.loss_figure(history, M.SELECTION_METRIC[task]), pdir / "loss_curves.png")
            if test_eval is not None:
                test_eval.write_plots(pdir, prefix="test_")
            _write_history(pdir / "history.csv", history)
            mlflow.log_artifacts(str(pdir), "plots")
            if out is not None:
                target = Path(out) / "plots"
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(pdir, target)

        from fissure.models import io

        model_info = io.log_model(result.module, spec)
        lineage = {"git.commit": tags["git.commit"], "dvc.data_hash": tags["dvc.data_hash"],
                   "params.hash": tags["params.hash"], "parent.champion": parent or "none", "init": init_from,
                   "feedback.items": str(tracking.feedback_items(data))}
        registered = tracking.register(model_info.model_uri, task, run_id, lineage) if register else None
        if registered:
            mlflow.set_tag("registered.version", registered["version"])
            echo(f"registered {registered['name']} version {registered['version']} "
                 f"(aliases: {', '.join(registered['aliases'])})")

    report = {
        "task": task,
        "model": MODEL_NAMES[task],
        "val": val,
        "test": test,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "train_images_per_second": round(result.images_per_second, 2),
        "seconds": round(time.perf_counter() - started, 1),
        "device": result.device,
        "run_id": run_id,
        "model_uri": model_info.model_uri,
        "registered_version": registered["version"] if registered else None,
        "sizes": sizes,
    }
    if "threshold" in spec:
        report["threshold"] = spec["threshold"]
    if spec.get("threshold_low") is not None:
        report["threshold_low"] = spec["threshold_low"]
    if by_class:
        report["classes"] = list(spec["classes"])
        for split, rep in by_class.items():
            report[f"{split}_per_class"] = rep["per_class"]
            report[f"{split}_confusion"] = rep["confusion"]
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out / "model", ignore_errors=True)
        io.save_model(result.module, spec, out / "model",
                      extra_metadata={"fissure_run_id": run_id,
                                      "fissure_registered": registered or {}})
        _write_history(out / "history.csv", history)
        (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    sel = M.SELECTION_METRIC[task]
    echo(f"best epoch {result.best_epoch}/{len(result.history)}: val_{sel} {val.get(sel)}"
         + (f", test_{sel} {test.get(sel)}" if test else "") + f" in {report['seconds']}s"
         + (f"; saved to {out}" if out is not None else ""))
    if by_class:
        split = "test" if "test" in by_class else "val"
        rep = by_class[split]
        balanced = rep["balanced_accuracy"]
        echo(f"{split} balanced accuracy {'n/a' if balanced is None else f'{balanced:.4f}'}; recall per class: "
             + ", ".join(f"{c} {m['recall']:.3f} (n={m['support']})" for c, m in rep["per_class"].items()))
    return TrainOutcome(run_id, model_info.model_uri, val, test, registered, out, result.best_epoch,
                        len(result.history), report["seconds"], report)


def class_report(ev) -> dict:
    """A classifier's per-class precision/recall/F1/support and confusion counts
    (``confusion[actual][predicted]``), by class name, from an evaluation's labels and probabilities."""
    scores, cm = ev.class_scores()
    per_class = {c: clean(m) for c, m in scores.items()}
    confusion = {a: {p: int(cm[i, j]) for j, p in enumerate(ev.classes)} for i, a in enumerate(ev.classes)}
    return {"classes": list(ev.classes), "per_class": per_class, "confusion": confusion,
            "balanced_accuracy": ev.metrics.get("balanced_accuracy")}


def class_metrics(report: dict, prefix: str) -> dict:
    """MLflow metrics of :func:`class_report`: ``<prefix>.<class>.{precision,recall,f1}`` (a class
    name is made MLflow-safe)."""
    out = {}
    for name, m in report["per_class"].items():
        safe = re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)
        out.update({f"{prefix}.{safe}.{k}": m[k] for k in ("precision", "recall", "f1") if m.get(k) is not None})
    return out


def _pool_text(info: dict) -> str:
    where = (f"the real sources' {info.get('images', '?')} validation images ({', '.join(info.get('sources') or [])})"
             if info.get("mode") == "real" else f"the whole validation split ({info.get('images', '?')} images)")
    return where + (f": {info['fallback']}" if info.get("fallback") else "")


def _score_name(select_on: dict) -> str:
    """The best epoch's score in words (the spec's ``select_on.metric``; specs without it: dice)."""
    return "tuned Dice" if select_on.get("metric") == "tuned_dice" else "Dice at 0.5"


def selection_notes(spec: dict) -> list[str]:
    """A segmenter's spec in words: the validation images its best epoch and its mask threshold were
    chosen on, and why the whole split when real mode fell back (a line each)."""
    notes = []
    if spec.get("select_on"):
        sel = spec["select_on"]
        notes.append(f"best epoch {sel.get('epoch')} chosen on {_pool_text(sel)} ({_score_name(sel)} {sel.get('dice')}; "
                     f"select_on {sel.get('mode')})")
    info = spec.get("threshold_from") or {}
    if info and info.get("mode") != "fixed":
        notes.append(f"mask threshold {spec.get('threshold')} tuned on {_pool_text(info)} "
                     f"(Dice {info.get('dice')}; threshold_from {info.get('mode')})")
    return notes


@torch.no_grad()
def reference_profile(module, spec: dict, items, *, device="cpu", batch_size: int = 32) -> drift.Profile:
    """The drift reference of a trained model: each item's input statistics at model size
    (:func:`fissure.observability.drift.input_stats`) and the model's confidence on it as served
    (classifier: top-class probability; segmenter: mean over pixels of max(p, 1-p))."""
    pcfg = preprocess_config(spec)
    module = tta.wrap(module, spec.get("tta")).to(device).eval()
    samples: dict[str, list[float]] = {}
    for start in range(0, len(items), max(batch_size, 1)):
        pixels = []
        for item in items[start : start + max(batch_size, 1)]:
            img = load_image(item.image if hasattr(item, "image") else item[0])
            raw = image_to_array(img, pcfg, stretch=False)  # drift watches the images as they come
            for k, v in drift.input_stats(raw, (img.height, img.width)).items():
                samples.setdefault(k, []).append(v)
            pixels.append(stretch_contrast(raw, pcfg.gray_std))
        out = module(normalize(torch.from_numpy(np.stack(pixels)), pcfg).to(device)).float()
        if spec["task"] == "segment":
            conf = drift.segmenter_confidence(torch.sigmoid(out).cpu().numpy())
        else:
            conf = drift.classifier_confidence(torch.softmax(out, dim=1).cpu().numpy())
        samples.setdefault("confidence", []).extend(conf)
    return drift.Profile.from_samples(samples)


def _write_history(path: Path, history: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(history[0]) if history else ["epoch"]
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
