"""Model cards: one Markdown page per registered model version.

A card says what a version is for and how good it is, from what MLflow already holds:

- the version (aliases, lineage tags: data hash, git commit, params hash, parent champion);
- its training run: params, validation and test metrics, and the test split's quality report
  (``plots/test_quality.json``: metrics per slice and per source, threshold sweep, the worst
  predictions; :meth:`fissure.training.evaluate.EvalResult.quality`);
- the prepared data's ``manifest.json`` (sources and counts) while the run's data folder exists;
- any number of ``fissure evaluate`` reports (other datasets, e.g. real images never trained on).

:func:`attach` runs when a version is registered (:func:`fissure.training.tracking.register`):
the card becomes the run's ``model_card.md`` artifact, the version's ``model_card`` tag points
to it and its description carries the headline scores. ``fissure model-card`` writes a card
for any model URI.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fissure import MODEL_NAMES, __version__
from fissure.errors import FissureError, NotFoundError
from fissure.models.masks import mask_params
from fissure.training import metrics as M
from fissure.training import slices as S

CARD_ARTIFACT = "model_card.md"
CARD_TAG = "model_card"
QUALITY_ARTIFACT = "plots/test_quality.json"
GALLERY_ARTIFACT = "plots/test_worst.png"
# the run's own lineage tags (fissure.training.run), shown when there is no registered version's
LINEAGE_RUN_TAGS = ("git.commit", "dvc.data_hash", "params.hash", "init")

INTENDED_USE = {
    "segment": (
        "Outlines cracks in photos of concrete, asphalt and masonry surfaces: a crack-probability map "
        "per image, a crack mask where it is at least the model's threshold. Meant to help inspection "
        "teams find and measure cracks faster, with a person reviewing what it marks (the review "
        "queue and feedback UI feed corrections back into training)."
    ),
    "classify": (
        "Tells whether an image patch shows a crack (or, with more classes, which surface defect): "
        "the class probabilities of the whole patch. Meant to triage inspection photos (which ones "
        "or which tiles to look at first), with a person confirming what it flags."
    ),
}
NOT_FOR = (
    "Not a structural-safety judgement: it does not know a crack's depth, cause or whether it grows, "
    "and a miss is possible on any image. Do not use it as the only check where a missed defect is a "
    "hazard, nor on imagery unlike its training data (other materials, thermal or X-ray images, "
    "drawings) without evaluating it there first (`fissure evaluate`)."
)


@dataclass
class CardFacts:
    """Everything a card shows, gathered from MLflow (and the data folder, when present)."""

    name: str
    version: str | None
    run_id: str | None
    task: str
    aliases: list[str] = field(default_factory=list)
    created: str | None = None
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    run_tags: dict = field(default_factory=dict)
    version_tags: dict = field(default_factory=dict)
    spec: dict = field(default_factory=dict)
    quality: dict | None = None
    manifest: dict | None = None
    reports: list[dict] = field(default_factory=list)


def _client():
    from fissure.training.tracking import mlflow_client

    mlflow = mlflow_client()
    return mlflow, mlflow.MlflowClient()


def _locate(model_uri: str) -> dict:
    """{'name', 'version', 'run_id'} of a models:/, runs:/ URI or a local model folder."""
    from fissure.models import io

    if model_uri.startswith(("models:", "runs:")):
        return io.resolve(model_uri)
    path = Path(model_uri)
    if not (path / "MLmodel").is_file():
        raise NotFoundError(f"model {model_uri!r} not found: give a models:/, runs:/ URI or a model folder (with MLmodel)")
    mlflow, _ = _client()
    meta = mlflow.models.get_model_info(str(path)).metadata or {}
    registered = meta.get("fissure_registered") or {}
    return {"name": registered.get("name"), "version": registered.get("version"), "run_id": meta.get("fissure_run_id")}


def _download_json(run_id: str, artifact: str) -> dict | None:
    mlflow, _ = _client()
    with tempfile.TemporaryDirectory(prefix="fissure-card-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp)
            return json.loads(Path(local).read_text())
        except Exception:  # noqa: BLE001 - absent (an older run) or unreadable: the card says so
            return None


def gather(model_uri: str) -> CardFacts:
    """The facts of ``model_uri``'s version and run. Raises NotFoundError for an unknown model."""
    mlflow, client = _client()
    try:
        where = _locate(model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise NotFoundError(f"{model_uri}: {exc.message.splitlines()[0]}") from None
    run_id = where.get("run_id")
    if not run_id:
        raise NotFoundError(f"{model_uri}: no MLflow run recorded for this model, so nothing to write a card from")
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        # the card is the run's params, metrics and test report: a model folder holds only its spec
        raise NotFoundError(f"{model_uri}: its run {run_id} is not in the tracking store {mlflow.get_tracking_uri()}, "
                            "and a card is written from the run: point MLFLOW_TRACKING_URI (or FISSURE_HOME) at "
                            "the store it was trained with") from None
    tags = dict(run.data.tags)
    task = tags.get("fissure.task") or ""
    name = where.get("name") or MODEL_NAMES.get(task, "model")
    version = where.get("version") or tags.get("registered.version")
    facts = CardFacts(name=name, version=version, run_id=run_id, task=task, params=dict(run.data.params),
                      metrics=dict(run.data.metrics), run_tags=tags)
    try:
        facts.spec = json.loads(facts.params.get("spec") or "{}")
    except ValueError:
        facts.spec = {}
    facts.task = facts.task or facts.spec.get("task", "")
    if version:
        try:
            mv = client.get_model_version(name, version)
            facts.version_tags = dict(mv.tags or {})
            facts.created = _when(mv.creation_timestamp)
            facts.aliases = sorted(a for a, v in (client.get_registered_model(name).aliases or {}).items()
                                   if str(v) == str(version))
        except mlflow.exceptions.MlflowException:
            pass
    facts.quality = _download_json(run_id, QUALITY_ARTIFACT)
    data = tags.get("data.path")
    if data and Path(data).exists():
        facts.manifest = S.find_manifest(data, levels=2)
    return facts


def _when(ms) -> str | None:
    if not ms:
        return None
    return _dt.datetime.fromtimestamp(int(ms) / 1000, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _f(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _threshold_text(spec: dict) -> str:
    """The mask threshold and the validation images it was tuned on (the spec's ``threshold_from``,
    :func:`fissure.training.loop.select_threshold`; older specs lack it)."""
    t, info = _f(spec.get("threshold", 0.5)), spec.get("threshold_from") or {}
    _, low = mask_params(spec)
    linked = (f"; hysteresis: pixels from {_f(low)} up are crack where they connect to one at the threshold"
              if low is not None else "")
    if info.get("mode") == "fixed":
        return f"{t} (fixed in the params{linked})"
    if not info:
        return f"{t} ({linked[2:]})" if linked else t
    why = f"; {info['fallback']}" if info.get("fallback") else ""
    # threshold_from carries threshold_low when the threshold was tuned on the hysteresis masks served
    # (hysteresis only where that low threshold is below the threshold: mask_params)
    _, tuned_low = mask_params({**spec, "threshold_low": info.get("threshold_low")})
    masks = " of the hysteresis masks" if tuned_low is not None else ""
    return (f"{t} (best Dice{masks} on the pooled pixels of {info.get('images', '?')} validation images of "
            f"{', '.join(info.get('sources') or ['?'])}: threshold_from {info.get('mode', '?')}{why}{linked})")


def _select_text(spec: dict) -> str | None:
    """The validation images the best epoch was chosen on (the spec's ``select_on``,
    :class:`fissure.training.loop.EpochSelector`; older specs lack it: None)."""
    info = spec.get("select_on")
    if not info:
        return None
    why = f"; {info['fallback']}" if info.get("fallback") else ""
    score = "tuned Dice" if info.get("metric") == "tuned_dice" else "Dice at 0.5"
    return (f"epoch {_f(info.get('epoch'), 0)}: best {score} ({_f(info.get('dice'))}) on the pooled pixels of "
            f"{info.get('images', '?')} validation images of {', '.join(info.get('sources') or ['?'])}: "
            f"select_on {info.get('mode', '?')}{why}")


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(_f(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out + [""]


def _metric_names(task: str) -> tuple[str, ...]:
    return (*M.SEGMENTATION_METRICS, *M.RELAXED_METRICS) if task == "segment" else M.CLASSIFICATION_METRICS


def _false_alarms(m: dict) -> str:
    """A slice's crack-free images taken for a crack, of its crack-free images ("-": none)."""
    return f"{m['false_alarm_images']}/{m['crack_free_images']}" if m.get("crack_free_images") else "-"


def _slice_rows(task: str, section: dict) -> tuple[list[str], list[list]]:
    if task == "segment":
        header = ["slice", "images", "dice", "relaxed F1", "precision", "recall", "false alarms (crack-free images)"]
        rows = [[name, m.get("n_images"), m.get("dice") if m.get("truth_px") else None,
                 m.get("relaxed_f1") if m.get("truth_px") else None,
                 m.get("precision") if m.get("truth_px") else None, m.get("recall") if m.get("truth_px") else None,
                 _false_alarms(m)]
                for name, m in section.items()]
    else:  # a crack-free slice (hard_negative, a size of no_crack items) has no recall, only false alarms
        header = ["slice", "images", "precision", "recall", "F1", "false alarms (crack-free images)"]
        rows = [[name, m.get("n_images"), m.get("precision"), m.get("recall"), m.get("f1"), _false_alarms(m)]
                for name, m in section.items()]
    return header, rows


def failure_cases(task: str, quality: dict | None, overall: dict) -> list[str]:
    """Plain sentences on where the model fails, from a quality report."""
    if not quality:
        return ["No per-slice report was logged with this version (trained before fissure recorded one, or "
                "without a test split): run `fissure evaluate --plots DIR` to see where it fails."]
    out = []
    weakest = quality.get("weakest_slice")
    if weakest:
        out.append(f"Weakest slice: `{weakest['slice']}` ({weakest['metric']} {_f(weakest['value'])}).")
    slices = quality.get("slices") or {}
    if task == "segment":
        ref = overall.get("dice")
        thin, wide = slices.get("width:thin"), slices.get("width:wide")
        if thin and wide and thin.get("dice") is not None and wide.get("dice") is not None:
            if thin["dice"] < wide["dice"] - 0.05:
                out.append(f"Thin cracks (<= {S.THIN_MAX_PX:g} px) are found less well than wide ones: Dice "
                           f"{_f(thin['dice'])} vs {_f(wide['dice'])} (relaxed F1 {_f(thin.get('relaxed_f1'))} vs "
                           f"{_f(wide.get('relaxed_f1'))}).")
        for name, m in slices.items():
            if m.get("truth_px") == 0 and (m.get("false_alarm_rate") or 0) > 0.1:
                out.append(f"False alarms on `{name}`: {m['false_alarm_images']} of {m['crack_free_images']} "
                           "crack-free images get crack pixels.")
            elif ref is not None and m.get("truth_px") and m.get("dice") is not None and m["dice"] < ref - 0.1 \
                    and (m.get("n_images") or 0) >= 2 and name not in ("width:thin",):
                out.append(f"`{name}` scores below the whole set: Dice {_f(m['dice'])} vs {_f(ref)}.")
        worst = quality.get("worst") or []
        if worst:
            out.append("Worst test images (lowest Dice; gallery `" + GALLERY_ARTIFACT + "` in the run's artifacts): "
                       + "; ".join(f"`{w['image']}` ({w['source']}, dice {_f(w['dice'])}, "
                                   f"{w.get('missed_px', 0)} px missed, {w.get('false_px', 0)} false)" for w in worst[:5])
                       + ".")
        sweep = quality.get("threshold_sweep") or {}
        if sweep.get("best_dice") is not None and sweep.get("dice") is not None and sweep["best_dice"] > sweep["dice"] + 0.03:
            out.append(f"The test split would score Dice {_f(sweep['best_dice'])} at threshold "
                       f"{_f(sweep['best_threshold'], 2)} instead of {_f(sweep['dice'])} at the shipped "
                       f"{_f(sweep['threshold'], 2)}: the threshold (tuned on validation) does not transfer fully.")
    else:
        for name, m in slices.items():
            if m.get("recall") is None and (m.get("false_alarm_rate") or 0) > 0.1:  # crack-free: no recall
                out.append(f"False alarms on `{name}`: {m['false_alarm_images']} of {m['crack_free_images']} "
                           "crack-free images taken for a crack.")
            elif m.get("recall") is not None and m["recall"] < 0.8 and m.get("n_images"):
                out.append(f"`{name}`: recall {_f(m['recall'])} ({m['n_images']} images).")
        worst = quality.get("worst") or []
        if worst:
            out.append("Most confident mistakes (gallery `" + GALLERY_ARTIFACT + "`): "
                       + "; ".join(f"`{w['image']}` {w['true']} taken for {w['predicted']} ({_f(w['confidence'], 2)})"
                                   for w in worst[:5]) + ".")
    return out or ["No slice of the test split stands out as weak."]


def render(facts: CardFacts) -> str:
    """The card's Markdown."""
    task = facts.task
    title = f"{facts.name} v{facts.version}" if facts.version else facts.name
    lines = [f"# Model card: {title}", ""]
    lines.append(f"Generated by fissure {__version__} on {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC} "
                 f"from MLflow run `{facts.run_id}`." + (f" Registered {facts.created}." if facts.created else "")
                 + (f" Aliases: {', '.join(facts.aliases)}." if facts.aliases else ""))
    lines.append("")
    spec = facts.spec
    pre = spec.get("preprocess") or {}
    arch = spec.get("arch", "?")
    if spec.get("params"):
        arch += " (" + ", ".join(f"{k} {v}" for k, v in sorted(spec["params"].items())) + ")"
    summary = [["task", task], ["classes", ", ".join(spec.get("classes") or [])], ["architecture", arch],
               ["input size", f"{pre.get('size', '?')} px"]]
    tiling = spec.get("tiling") or {}
    if task == "segment":
        summary.append(["crack threshold", _threshold_text(spec)])
        if _select_text(spec):
            summary.append(["best epoch", _select_text(spec)])
        summary.append(["resolution", "native, in overlapping tiles" if tiling.get("mode") == "tile"
                        else "whole image resized to the input size"])
    if pre.get("gray_std"):
        summary.append(["contrast", f"each image stretched to a grey-level standard deviation of "
                                    f"{pre['gray_std']:g} (0-255) before the model (gray_std)"])
    views = {"flips": "the image and its 3 mirror images (4 forward passes)",
             "d8": "the image, its mirror images and quarter turns (8 forward passes)"}
    if spec.get("tta") in views:
        summary.append(["test-time augmentation", "probabilities averaged over " + views[spec["tta"]]])
    lines += ["## Summary", ""] + _table(["", ""], summary)

    lines += ["## Intended use", "", INTENDED_USE.get(task, "See docs/."), "", "## Limits", "", "- " + NOT_FOR]
    sources = (facts.manifest or {}).get("sources") or []
    kinds = {s.get("kind") for s in sources if isinstance(s, dict)}
    if kinds == {"synth"}:
        lines.append("- Trained on synthetic images only: expect lower scores on real photos (docs/benchmarks.md "
                     "measures the gap on DeepCrack and CrackForest).")
    if task == "segment" and tiling.get("mode") != "tile":
        lines.append(f"- Each image is resized to {pre.get('size', '?')} px before the model sees it: cracks thinner "
                     "than a pixel at that size fade (native-resolution tiling avoids this).")
    lines.append("- The test scores below are on held-out images of the same sources as training; on other data "
                 "they are usually lower (see the further evaluations, if any).")
    lines.append("")

    lines += ["## Data", ""]
    p, t = facts.params, facts.run_tags
    data_rows = [["training data", t.get("data.path", "?")],
                 ["data hash", facts.version_tags.get("dvc.data_hash") or t.get("dvc.data_hash", "?")],
                 ["images train / val / test", f"{p.get('split.train', '?')} / {p.get('split.val', '?')} / {p.get('split.test', '?')}"],
                 ["feedback items", facts.version_tags.get("feedback.items", "0")]]
    if facts.manifest and facts.manifest.get("content_hash"):
        data_rows.append(["prepared content hash", facts.manifest["content_hash"][:16]])
    lines += _table(["", ""], data_rows)
    if sources:
        rows = [[s.get("source"), s.get("kind"), s.get("images"), *[(s.get("splits") or {}).get(k) for k in ("train", "val", "test")]]
                for s in sources if isinstance(s, dict)]
        lines += ["Sources (`fissure data prepare`):", ""] + _table(["source", "kind", "images", "train", "val", "test"], rows)

    lines += ["## Training", ""]
    shown = {k: v for k, v in sorted(p.items()) if k != "spec" and not k.startswith("split.")}
    lines += _table(["param", "value"], [[k, v] for k, v in shown.items()])
    m = facts.metrics
    lines += [f"Best epoch {_f(m.get('best_epoch'), 0)} of {_f(m.get('epochs_run'), 0)}; "
              f"{_f(m.get('train_seconds'), 0)} s of training on {p.get('device', '?')}.", ""]

    names = _metric_names(task)
    lines += ["## Metrics", "", "Validation (best epoch) and test split; crack pixels at the model's threshold for the "
              f"segmenter, `relaxed_*` forgiving {M.RELAXED_TOLERANCE} px." if task == "segment" else
              "Validation (best epoch) and test split.", ""]
    rows = [[n, m.get(f"final_val_{n}"), m.get(f"test_{n}")] for n in names
            if m.get(f"final_val_{n}") is not None or m.get(f"test_{n}") is not None]
    lines += _table(["metric", "validation", "test"], rows)

    q = facts.quality or {}
    datasets = q.get("datasets") or q.get("sources")  # runs before quality reports said datasets: sources
    if datasets:
        lines += ["## Metrics by dataset (test split)", ""]
        lines += _table(*_slice_rows(task, datasets))
    if q.get("slices"):
        lines += ["## Metrics by slice (test split)", ""]
        lines += _table(*_slice_rows(task, q["slices"]))
        if task == "segment":
            lines += ["Slices: " + "; ".join(f"`{k}`: {v}" for k, v in S.DEFINITIONS.items()) + ".", ""]

    lines += ["## Known failure cases", ""]
    overall = {n: m.get(f"test_{n}") for n in names}
    lines += [f"- {s}" for s in failure_cases(task, facts.quality, overall)] + [""]

    if facts.reports:
        lines += ["## Further evaluations (`fissure evaluate`)", ""]
        key = "dice" if task == "segment" else "f1"
        header = ["data", "images", key, "relaxed F1" if task == "segment" else "ROC AUC", "resolution", "weakest slice"]
        rows = []
        for r in facts.reports:
            rows.append([_data_text(r), r.get("n_images"), r.get(key), r.get("relaxed_f1") if task == "segment" else r.get("roc_auc"),
                         r.get("resolution", "-"), (r.get("weakest_slice") or {}).get("slice", "-")])
        otherwise = [_scored_otherwise(task, facts.spec, r) for r in facts.reports]
        if any(otherwise):  # a report not scored as the model serves says how it was
            header.append("scored with")
            for row, notes in zip(rows, otherwise):
                row.append("; ".join(notes) or "as served")
        lines += _table(header, rows)
        for r in facts.reports:
            datasets = r.get("datasets") or r.get("sources")  # reports before fissure evaluate said sources
            if datasets and len(datasets) > 1:
                lines += [f"By dataset in {_data_text(r)}:", ""] + _table(*_slice_rows(task, datasets))

    lineage = {k: v for k, v in sorted(facts.version_tags.items()) if k != CARD_TAG}
    if not facts.version_tags:  # no registered version (an unregistered run's folder): the run's own tags
        lineage = {k: facts.run_tags[k] for k in LINEAGE_RUN_TAGS if k in facts.run_tags}
    if lineage:
        lines += ["## Lineage", ""] + _table(["tag", "value"], [[k, v] for k, v in lineage.items()])
    lines += ["## Artifacts", "", f"In the run `{facts.run_id}`: `model/`, `plots/` (loss curves, test PR curve, "
              "threshold sweep, slices, worst-prediction gallery `plots/test_worst/`), `spec.json`, this card.", ""]
    return "\n".join(lines).rstrip() + "\n"


def _data_text(report: dict) -> str:
    """A report's data: its folder, or its folders comma-joined (several ``--data``: a list)."""
    data = report.get("data")
    return ", ".join(str(d) for d in data) if isinstance(data, (list, tuple)) else _f(data)


def _mask_rule(threshold: float, low: float | None) -> str:
    return f"threshold {_f(float(threshold))}" + (f", hysteresis from {_f(float(low))}" if low is not None else "")


def _same(a, b) -> bool:
    """Two thresholds (None: none) alike, to the 6 digits a report keeps."""
    return (a is None) == (b is None) and (a is None or math.isclose(float(a), float(b), abs_tol=1e-6))


def _scored_otherwise(task: str, spec: dict, report: dict) -> list[str]:
    """How ``report`` was scored where that is not as the model serves (its spec): the masks
    (``fissure evaluate --threshold/--threshold-low``: the report's ``threshold_sweep``) and the
    test-time augmentation (``--tta``). Nothing where the report (an older one) or the spec does not say."""
    if not spec:
        return []
    out = []
    sweep = report.get("threshold_sweep") or {}
    if task == "segment" and sweep.get("threshold") is not None:
        served, used = mask_params(spec), (sweep["threshold"], sweep.get("threshold_low"))
        if not (_same(used[0], served[0]) and _same(used[1], served[1])):
            out.append(f"masks at {_mask_rule(*used)} (served: {_mask_rule(*served)})")
    tta, served_tta = report.get("tta"), spec.get("tta") or "none"
    if tta is not None and (tta or "none") != served_tta:
        out.append(f"tta {tta or 'none'} (served: {served_tta})")
    return out


def _check_report(path, report: dict, facts: CardFacts) -> None:
    """Refuse a report on another task's model or on another run's model than the card's."""
    of = report.get("model") or report.get("model_uri") or "?"
    of += f" v{report['model_version']}" if report.get("model_version") else ""
    this = f"{facts.name} v{facts.version}" if facts.version else facts.name
    task = report.get("task")
    if task and facts.task and task != facts.task:
        raise FissureError(f"--report {path}: a report on a {task} model ({of}), not on this {facts.task} model ({this})")
    run_id = report.get("run_id")
    if run_id and facts.run_id and run_id != facts.run_id:
        raise FissureError(f"--report {path}: a report on the model of run {run_id} ({of}), not on this one "
                         f"({this}, run {facts.run_id}): evaluate this model for its card")


def read_reports(paths, facts: CardFacts | None = None) -> list[dict]:
    """The ``fissure evaluate`` JSONs at ``paths``; with ``facts``, only reports on that model
    (its task, its run where the report names one)."""
    out = []
    for path in paths or []:
        try:
            report = json.loads(Path(path).read_text())
        except OSError as exc:
            raise FissureError(f"{path}: cannot read: {exc.strerror}") from None
        except ValueError:
            raise FissureError(f"{path}: not a JSON report of fissure evaluate") from None
        if not isinstance(report, dict) or "n_images" not in report:
            raise FissureError(f"{path}: not a report of fissure evaluate (no n_images)")
        if facts is not None:
            _check_report(path, report, facts)
        out.append(report)
    return out


def make_card(model_uri: str, reports=()) -> tuple[CardFacts, str]:
    """The facts and the card of ``model_uri`` (with ``reports``: paths of evaluate JSONs of it)."""
    facts = gather(model_uri)
    facts.reports = read_reports(reports, facts)
    return facts, render(facts)


def save(text: str, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def headline(facts: CardFacts) -> str:
    """One line of the version's description: its test scores and weakest slice."""
    m = facts.metrics
    if facts.task == "segment":
        text = f"test dice {_f(m.get('test_dice'))}, relaxed F1 {_f(m.get('test_relaxed_f1'))}"
    else:
        text = f"test F1 {_f(m.get('test_f1'))}, balanced accuracy {_f(m.get('test_balanced_accuracy'))}"
    weakest = (facts.quality or {}).get("weakest_slice")
    if weakest:
        text += f"; weakest slice {weakest['slice']} ({weakest['metric']} {_f(weakest['value'])})"
    return text


def attach(name: str, version: str, run_id: str, *, facts: CardFacts | None = None, text: str | None = None) -> str:
    """Write the version's card into its run (``model_card.md``), tag the version with its URI
    and put the headline scores in its description. Returns the card's artifact URI.

    ``facts`` and ``text``: the card already made (:func:`make_card`, e.g. with further evaluations),
    so that the card attached is the one written elsewhere; otherwise gathered and rendered here."""
    mlflow, client = _client()
    facts = gather(f"models:/{name}/{version}") if facts is None else facts
    client.log_text(run_id, render(facts) if text is None else text, CARD_ARTIFACT)
    uri = f"runs:/{run_id}/{CARD_ARTIFACT}"
    client.set_model_version_tag(name, version, CARD_TAG, uri)
    client.update_model_version(name, version, description=f"{headline(facts)}. Model card: {uri}")
    return uri
