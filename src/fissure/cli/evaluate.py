"""``fissure evaluate``: metrics of a model on a folder, written as JSON."""

from __future__ import annotations


import click

from fissure import MODEL_NAMES


OFF = "none"  # --threshold-low none: the masks without hysteresis


class LowThreshold(click.ParamType):
    """A hysteresis low threshold: a probability in (0, 1), or ``none`` (off)."""

    name = "float|none"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value == OFF:
            return value
        if str(value).strip().lower() == OFF:
            return OFF
        try:
            low = float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number or none", param, ctx)
        if not 0 < low < 1:
            self.fail(f"{low} is not in the range 0<x<1", param, ctx)
        return low


@click.command("evaluate", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--task", type=click.Choice(sorted(MODEL_NAMES)), required=True,
              help="Must match the model's task.")
@click.option("--model", "model", required=True,
              help="Any MLflow model URI: models:/crack-segmenter@champion, models:/NAME/3, runs:/ID/model, or a local model dir.")
@click.option("--data", "data", multiple=True, required=True, metavar="[NAME=]DIR",
              help="segment: DIR/images + DIR/masks (any image size); classify: DIR/<class>/ folders. "
                   "Repeat for several datasets: each is scored on its own and all together, named after "
                   "its last two path parts unless NAME= says otherwise.")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="Metrics JSON to write.")
@click.option("--plots", "plots", type=click.Path(file_okay=False), default=None,
              help="Also write PR curve, confusion matrix, threshold sweep (not for N classes), scores by "
                   "slice, the worst predictions' gallery and (segment) sample overlays here (CSV + PNG).")
@click.option("--device", default=None, help="cpu, cuda ... [default: cuda when available, else cpu]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Inference batch size [default: 64 (classify), 8 (segment), the spec's tiling.batch tiles (native)].")
@click.option("--overlays", type=click.IntRange(min=0), default=4, show_default=True,
              help="Sample overlays drawn with --plots (segment).")
@click.option("--worst", type=click.IntRange(min=0), default=8, show_default=True,
              help="How many of the worst predictions to list and draw with --plots (segment: lowest "
                   "per-image Dice; classify: the most confident mistakes).")
@click.option("--native/--resized", "native", default=None,
              help="segment: score at each image's own resolution in overlapping tiles of the model's size "
                   "(as served), or the whole image resized to it [default: as the model's spec says "
                   "(tiling.mode), resized for models without one]. --batch-size then counts tiles.")
@click.option("--tta", type=click.Choice(["none", "flips", "d8"]), default=None,
              help="Average the model's probabilities over views of each input: none, flips (4 forward "
                   "passes) or d8 (8: flips and quarter turns) [default: as the model's spec says (tta), "
                   "none for models without one].")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="segment: score the masks at this crack probability instead of the model's tuned one "
                   "[default: the spec's threshold, as served].")
@click.option("--threshold-low", type=LowThreshold(), default=None, metavar="FLOAT|none",
              help="segment: hysteresis: also mark pixels at or above this that connect to one at the "
                   "threshold; none turns it off [default: the spec's threshold_low, as served].")
def evaluate(task, model, data, out, plots, device, batch_size, overlays, worst, native, tta, threshold, threshold_low):
    """Evaluate a model on a dataset and write its metrics JSON.

    \b
    Keys: classify -> accuracy, balanced_accuracy, precision, recall, f1, roc_auc
                      (two classes: of the positive class, crack; N classes: macro
                      averages over the classes present, balanced_accuracy the
                      headline), per_class (each class's precision, recall, f1,
                      support) and confusion (classes, counts[actual][predicted])
          segment  -> dice, iou, precision, recall, f1 (crack pixels of the masks the
                      model serves: its threshold and threshold_low, else 0.5, unless
                      --threshold/--threshold-low say otherwise; at each mask's native
                      resolution)
    plus n_images, task, model, model_version (null when not registered), model_uri,
    run_id, data, tta, and where the model fails: slices (segment: crack / no_crack,
    hard_negative[:kind], width:thin / width:wide, size:...; classify: class:NAME of each
    class with images, hard_negative[:kind], size:...), datasets (per --data folder when
    several, else per source of the one folder; see datasets_by), threshold_sweep
    (segment: the masks' threshold and the best one, with the same hysteresis; classify:
    two classes only), worst and weakest_slice.
    With --plots also: pr_curve.csv/png (N classes: whether the top prediction is right,
    against its confidence), confusion_matrix.png (classify: and confusion.csv),
    threshold_sweep.csv/png (segment, two-class classify), slices.csv/png, worst.png and
    worst/, per_image.csv and overlays.png (segment) and quality.json; with several
    --data the same per folder in PLOTS/datasets/NAME/.

    \b
    Examples:
      fissure evaluate --task segment --model models:/crack-segmenter@champion \\
          --data ../shared/datasets/crackforest/all --out reports/crackforest.json
      fissure evaluate --task segment --model models:/crack-segmenter@champion \\
          --data ../shared/datasets/crackforest/all --data deepcrack=data/deepcrack/test \\
          --out reports/real.json --plots reports/real
    (data/deepcrack/test: fissure data import --format deepcrack SRC data/deepcrack)
    """
    from fissure.training.evaluate import dataset_folders, run_evaluation

    folders = dataset_folders(data)
    report = run_evaluation(model, task, folders if len(folders) > 1 else next(iter(folders.values())), out, plots, device=device,
                            batch_size=batch_size, overlays=overlays, native=native, worst=worst, tta=tta,
                            threshold=threshold, threshold_low=threshold_low)
    names = _metric_names(task, report)
    if len(report["datasets"]) > 1:
        click.echo(_table(report, names), err=True)
    summary = ", ".join(f"{k} {report[k]:.4f}" if report[k] is not None else f"{k} n/a" for k in names)
    click.echo(f"{report['model']}" + (f" v{report['model_version']}" if report["model_version"] else "")
               + f" on {report['n_images']} images" + (f" ({report['resolution']}{_downscaled_text(report.get('tiling'))})" if "resolution" in report else "")
               + (f" (tta {report['tta']})" if report["tta"] != "none" else "")
               + (f" (threshold {_mask_text(report['threshold_sweep'])})" if "threshold_sweep" in report and task == "segment" else "")
               + f": {summary} -> {out}", err=True)
    weakest = report.get("weakest_slice")
    if weakest:
        click.echo(f"weakest slice: {weakest['slice']} ({weakest['metric']} {weakest['value']})"
                   + (f"; worst predictions in {plots}" if plots else ""), err=True)


def _metric_names(task: str, report: dict) -> tuple[str, ...]:
    """The metrics the summary and the table show: an N-class classifier's headline,
    balanced_accuracy, first (its precision, recall and f1 are macro averages)."""
    if task == "segment":
        return ("dice", "iou", "precision", "recall", "f1")
    binary = len(report.get("confusion", {}).get("classes") or ()) <= 2
    return ("accuracy", "precision", "recall", "f1", "roc_auc") if binary else \
        ("balanced_accuracy", "accuracy", "precision", "recall", "f1", "roc_auc")


def _downscaled_text(tiling: dict | None) -> str:
    """``, 2 downscaled to the 16 MP budget`` when native scoring had to shrink images."""
    n = (tiling or {}).get("downscaled_images")
    return f", {n} downscaled to the {tiling['max_pixels'] / 1e6:.3g} MP budget" if n else ""


def _mask_text(sweep: dict) -> str:
    """How the scored masks were drawn: ``0.34`` or ``0.34, hysteresis from 0.25``."""
    low = sweep.get("threshold_low")
    return f"{sweep['threshold']:g}" + (f", hysteresis from {low:g}" if low is not None else "")


def _table(report: dict, names) -> str:
    """The report's metrics per dataset (folder or source) and over all of them."""
    rows = [(name, m) for name, m in report["datasets"].items()] + [("all", report)]
    width = max(len(n) for n, _ in rows + [(report["datasets_by"], None)])
    cols = [max(9, len(k)) for k in names]
    lines = [f"{report['datasets_by']:<{width}}  {'images':>6}  " + "  ".join(f"{k:>{c}}" for k, c in zip(names, cols))]
    for name, m in rows:
        cells = [f"{m[k]:{c}.4f}" if m.get(k) is not None else f"{'n/a':>{c}}" for k, c in zip(names, cols)]
        lines.append(f"{name:<{width}}  {m.get('n_images', 0):>6}  " + "  ".join(cells))
    return "\n".join(lines)
