"""Real-data quality: train on synthetic + real images, score held-back real images never trained on.

    python training/bench_realdata.py [--out reports/bench_realdata.md] [--work reports/bench_realdata]
                                      [--params params.yaml]
                                      [--segment-epochs N] [--classify-epochs N]
                                      [--classify-encoder {none,efficientnet-lite0,efficientnet-lite1,efficientnet-lite2}]
                                      [--only {cracks,magnetic-tile}] [--segment-only | --classify-only]
                                      [--no-d8]
                                      [--mt-epochs N] [--mt-size PX]
                                      [--mt-encoder {none,efficientnet-lite0,efficientnet-lite1,efficientnet-lite2}]
                                      [--mt-class-weights {inverse,sqrt_inverse,none}] [--mt-seed N]
                                      [--mt-tta {none,flips,d8}]

Legs (both by default; ``--only`` runs one):

cracks:

1. `fissure data prepare --source synth --source ../shared/datasets/deepcrack/train`: synthetic
   images plus DeepCrack, each source split 70/15/15 by a seeded hash (DeepCrack test images
   are never trained on or used for early stopping).
2. Train both models with params.yaml (their own MLflow store under the work folder), the
   classifier on the pretrained EfficientNet-Lite0 (lr 1e-3, 5 epochs, faded crack patches, as
   params.yaml's comment says for real data; --classify-encoder none: params.yaml's from-scratch model and epochs),
   --classify-epochs its maximum epochs.
3. Evaluate the segmenter on the DeepCrack test part and on all of CrackForest (a dataset the
   models never saw), as the model is and with `--tta d8` (8 views averaged), and the classifier
   on patches cut from the same held-back images.

magnetic-tile (an N-class defect classifier from class folders):
1. `fissure data prepare` with the one source `{path: ../shared/datasets/magnetic-tile/train,
   val_fraction: 0.15, test_fraction: 0.2}`: 913 images in six classes (blowhole, break, crack,
   fray, uneven, free), each class split on its own by a seeded hash.
2. `fissure train --task classify` with params.yaml's train_classifier section and the leg's
   overrides: --mt-size (128), --mt-epochs (20), --mt-encoder (the pretrained EfficientNet-Lite0,
   lr 1e-3; the from-scratch resnet-lite did not learn the set, docs/benchmarks.md), patience 8,
   --mt-class-weights and --mt-seed (params.yaml's train_classifier values when not given),
   --mt-tta (d8: probabilities averaged over the 8 flips and quarter turns, validation included).
3. Balanced accuracy, per-class recall and the confusion matrix on the held-back 20 %
   (`fissure evaluate`), never trained on or used for early stopping; with --mt-tta, also the same
   model on one view (`--tta none`).

Needs ../shared/datasets (exits with a message when absent).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
PARAMS = REPO / "params.yaml"  # --params replaces it: a variant measured without editing the pipeline's


def run(cmd, env):
    print("$", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, env=env)


def link_subset(src_split: Path, dst: Path, keep) -> Path:
    """Symlink the images/masks of ``src_split`` whose stem passes ``keep`` into ``dst``."""
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for img in sorted((src_split / "images").iterdir()):
        if keep(img.stem):
            os.symlink(img.resolve(), dst / "images" / img.name)
            for mask in (src_split / "masks").glob(img.stem + ".*"):
                os.symlink(mask.resolve(), dst / "masks" / mask.name)
    return dst


MT_CLASSES = ("blowhole", "break", "crack", "fray", "uneven", "free")


def pretrained_classifier(encoder: str) -> dict:
    """train_classifier keys both legs use for a classifier on the pretrained encoder: a lower LR
    than from scratch spares the ImageNet features; faded cracks (crack patches with a mask tile:
    the cracks leg) took CrackForest's patch F1 0.795 -> 0.883 (docs/benchmarks.md)."""
    return {"model": {"encoder": encoder, "pretrained": True, "dropout": 0.2}, "lr": 1e-3, "fade": [0.25, 1.0]}


def magnetic_tile(work: Path, env: dict, fissure: Path, *, epochs: int, size: int, encoder: str,
                  class_weights: str | None = None, seed: int | None = None, tta: str = "d8") -> str:
    """The magnetic-tile leg (module docstring); returns its Markdown section."""
    import yaml

    source = SHARED / "magnetic-tile" / "train"
    if not all((source / "images" / c).is_dir() for c in MT_CLASSES):
        raise SystemExit(f"magnetic-tile class folders not found in {source / 'images'}; nothing to benchmark")
    t0 = time.perf_counter()
    params = yaml.safe_load(PARAMS.read_text())
    arch = pretrained_classifier(encoder) if encoder != "none" else \
        {"model": {**params["train_classifier"].get("model", {}), "encoder": "none"}}
    params["prepare"] = {**params["prepare"], "feedback": None,
                         "source": [{"path": str(source), "val_fraction": 0.15, "test_fraction": 0.2}]}
    params["train_classifier"] = {**params["train_classifier"], "epochs": epochs, "size": size, "patience": 8,
                                  **arch, "tta": tta,
                                  **({"class_weights": class_weights} if class_weights else {}),
                                  **({"seed": seed} if seed is not None else {})}
    pfile = work / "params-magnetic-tile.yaml"
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    prepared = work / "prepared-magnetic-tile"
    run([fissure, "data", "prepare", "--params", pfile, "--out", prepared], env)
    model_dir = work / "model-magnetic-tile"
    run([fissure, "train", "--task", "classify", "--data", prepared / "classify", "--params", pfile,
         "--out", model_dir, "--no-progress"], env)
    trained = json.loads((model_dir / "metrics.json").read_text())
    report_json = work / "eval-magnetic-tile.json"
    run([fissure, "evaluate", "--task", "classify", "--model", model_dir / "model", "--data",
         prepared / "classify" / "test", "--out", report_json, "--plots", work / "plots-magnetic-tile"], env)
    r = json.loads(report_json.read_text())
    wall = time.perf_counter() - t0
    plain = None
    if tta != "none":  # the same model on one view: what the averaging adds
        plain_json = work / "eval-magnetic-tile-one-view.json"
        run([fissure, "evaluate", "--task", "classify", "--model", model_dir / "model", "--data",
             prepared / "classify" / "test", "--out", plain_json, "--tta", "none"], env)
        plain = json.loads(plain_json.read_text())
    classes = r["confusion"]["classes"]
    sizes = trained["sizes"]
    arch = f"pretrained {encoder}" if encoder != "none" else "from scratch (resnet-lite)"
    weighting = params["train_classifier"].get("class_weights", "inverse")
    lines = [
        f"magnetic-tile, {len(classes)} classes from class folders: {sizes['train']} train / {sizes['val']} val / "
        f"{sizes['test']} held-back test images; classifier {arch} at {size} px, class weights {weighting}, "
        f"test-time augmentation {tta}, seed {params['train_classifier'].get('seed', 0)}, best epoch "
        f"{trained['best_epoch']}/{trained['epochs_run']} (max {epochs}); {wall / 60:.1f} min wall time.",
        "",
        f"**balanced accuracy {r['balanced_accuracy']:.3f}**, accuracy {r['accuracy']:.3f}, macro F1 {r['f1']:.3f} "
        f"(test, {r['n_images']} images)" + (
            f"; the same model on one view (--tta none): balanced accuracy {plain['balanced_accuracy']:.3f}, "
            f"accuracy {plain['accuracy']:.3f}, macro F1 {plain['f1']:.3f}" if plain else ""),
        "",
        "| class | test images | recall | precision | F1 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for c in classes:
        m = r["per_class"][c]
        lines.append(f"| {c} | {m['support']} | {m['recall']:.3f} | {m['precision']:.3f} | {m['f1']:.3f} |")
    lines += ["", "Confusion (rows: actual, columns: predicted):", "",
              "| actual \\ predicted | " + " | ".join(classes) + " |",
              "| --- | " + " | ".join("---:" for _ in classes) + " |"]
    for c, row in zip(classes, r["confusion"]["counts"]):
        lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from fissure.models.encoders import ENCODERS

    global PARAMS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="reports/bench_realdata.md")
    ap.add_argument("--work", default="reports/bench_realdata")
    ap.add_argument("--params", type=Path, default=PARAMS,
                    help="the pipeline parameters both legs start from (a variant to measure) [params.yaml]")
    ap.add_argument("--segment-epochs", type=int, default=None)
    ap.add_argument("--classify-epochs", type=int, default=None)
    ap.add_argument("--only", choices=["cracks", "magnetic-tile"], default=None,
                    help="run one leg: cracks (DeepCrack + CrackForest) or magnetic-tile (N-class defects)")
    only_one = ap.add_mutually_exclusive_group()
    only_one.add_argument("--segment-only", action="store_true",
                          help="cracks: train and score the segmenter only (no classifier: its columns say n/a)")
    only_one.add_argument("--classify-only", action="store_true",
                          help="cracks: train and score the classifier only (no segmenter: its columns say n/a)")
    ap.add_argument("--no-d8", action="store_true",
                    help="cracks: skip scoring the segmenter again with 8 views averaged (8x its evaluation time)")
    ap.add_argument("--classify-encoder", choices=["none", *ENCODERS], default="efficientnet-lite0",
                    help="cracks: the classifier from scratch (none: params.yaml's model and epochs) or on the "
                         "pretrained encoder (lr 1e-3, 5 epochs unless --classify-epochs) [efficientnet-lite0]")
    ap.add_argument("--mt-epochs", type=int, default=20, help="magnetic-tile: maximum epochs [20]")
    ap.add_argument("--mt-size", type=int, default=128, help="magnetic-tile: classifier input side in px [128]")
    ap.add_argument("--mt-encoder", choices=["none", *ENCODERS], default="efficientnet-lite0",
                    help="magnetic-tile: from scratch (none) or the pretrained encoder [efficientnet-lite0]")
    ap.add_argument("--mt-seed", type=int, default=None,
                    help="magnetic-tile: the training seed (the split stays) [params.yaml's train_classifier.seed]")
    ap.add_argument("--mt-tta", choices=["none", "flips", "d8"], default="d8",
                    help="magnetic-tile: test-time augmentation saved with the model (fissure.models.tta) [d8]")
    ap.add_argument("--mt-class-weights", choices=["inverse", "sqrt_inverse", "none"], default=None,
                    help="magnetic-tile: the loss's class weights [params.yaml's train_classifier.class_weights]")
    args = ap.parse_args()
    if not args.params.is_file():
        raise SystemExit(f"--params {args.params}: no such file")
    PARAMS = args.params.resolve()
    legs = [args.only] if args.only else ["cracks", "magnetic-tile"]
    if not SHARED.is_dir():
        raise SystemExit(f"real datasets not found at {SHARED}; nothing to benchmark")
    if "cracks" in legs and not (SHARED / "deepcrack" / "train").is_dir():
        raise SystemExit(f"real datasets not found at {SHARED}; nothing to benchmark")
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, FISSURE_HOME=str(work / "fissure-home"))
    env.pop("MLFLOW_TRACKING_URI", None)
    bin_dir = Path(sys.executable).parent
    fissure = bin_dir / "fissure"
    sections = []
    if "cracks" in legs:
        sections.append(cracks(work, env, fissure, args))
    if "magnetic-tile" in legs:
        sections.append(magnetic_tile(work, env, fissure, epochs=args.mt_epochs, size=args.mt_size,
                                      encoder=args.mt_encoder, class_weights=args.mt_class_weights,
                                      seed=args.mt_seed, tta=args.mt_tta))
    text = "\n".join(sections)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


def _threshold_from(model_dir: Path) -> str:
    """Where the saved segmenter's mask threshold was tuned, in words (its spec's threshold_from)."""
    from fissure.models import io

    info = io.load_model(str(model_dir)).spec.get("threshold_from") or {}
    if info.get("mode") == "fixed":
        return "nothing (fixed in params.yaml)"
    what = f"{info.get('images', '?')} validation images of {', '.join(info.get('sources') or ['?'])}"
    dice = f", validation Dice {info['dice']:.3f} there" if info.get("dice") is not None else ""
    why = f" ({info['fallback']})" if info.get("fallback") else ""
    return f"{what} (threshold_from: {info.get('mode', '?')}{why}{dice})"


def _classifier_params(work: Path, encoder: str) -> Path:
    """params.yaml as it is (`none`: its from-scratch classifier), or a copy whose classifier sits
    on the pretrained encoder: lr 1e-3 and faded cracks (as the magnetic-tile leg's), 5 epochs (it
    passed the from-scratch model's best validation F1 at its second; docs/benchmarks.md)."""
    if encoder == "none":
        return PARAMS
    import yaml

    params = yaml.safe_load(PARAMS.read_text())
    clf = params["train_classifier"]
    clf.update(pretrained_classifier(encoder), epochs=5)
    pfile = work / "params-cracks-classify.yaml"
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    return pfile


def cracks(work: Path, env: dict, fissure: Path, args) -> str:
    """The cracks leg (module docstring); returns its Markdown section."""
    t0 = time.perf_counter()
    prepared = work / "prepared"
    run([fissure, "data", "prepare", "--params", PARAMS, "--out", prepared, "--feedback", "",
         "--source", "synth", "--source", SHARED / "deepcrack" / "train"], env)
    results = {}
    tasks = (() if args.classify_only else (("segment", args.segment_epochs),)) + \
        (() if args.segment_only else (("classify", args.classify_epochs),))
    for task, epochs in tasks:
        pfile = _classifier_params(work, args.classify_encoder) if task == "classify" else PARAMS
        cmd = [fissure, "train", "--task", task, "--data", prepared / task, "--params", pfile,
               "--out", work / f"model-{task}", "--no-progress"]
        if epochs:
            cmd += ["--epochs", str(epochs)]
        run(cmd, env)
        results[f"train-{task}"] = json.loads((work / f"model-{task}" / "metrics.json").read_text())
    # held-back real sets
    deep_test = link_subset(prepared / "segment" / "test", work / "deepcrack-test", lambda s: not s.startswith("synth-"))
    sets = {"DeepCrack held-out test": deep_test, "CrackForest (all, never seen)": SHARED / "crackforest" / "all"}
    from fissure.data.patches import PatchSpec, extract_patches

    # held-back patches of the training patches' size (prepare's, which a classifier whose input
    # `size` differs resizes), side by side (stride = size)
    patch = PatchSpec(size=int(yaml.safe_load(PARAMS.read_text())["prepare"]["patch_size"]))
    rows = []
    for label, folder in sets.items():
        n = len(list((Path(folder) / "images").iterdir()))
        seg = None
        if not args.classify_only:
            seg_json = work / f"eval-segment-{len(rows)}.json"
            run([fissure, "evaluate", "--task", "segment", "--model", work / "model-segment" / "model", "--data",
                 folder, "--out", seg_json, "--plots", work / f"plots-segment-{len(rows)}"], env)
            seg = json.loads(seg_json.read_text())
            if not args.no_d8:  # what averaging the 8 views would add (not the default: 8x the serving CPU)
                d8_json = work / f"eval-segment-{len(rows)}-d8.json"
                run([fissure, "evaluate", "--task", "segment", "--model", work / "model-segment" / "model", "--data",
                     folder, "--out", d8_json, "--tta", "d8"], env)
                seg["d8"] = json.loads(d8_json.read_text())
        clf = None
        if not args.segment_only:
            patches = work / f"patches-{len(rows)}"
            extract_patches(folder, patches, patch, progress=False)
            clf_json = work / f"eval-classify-{len(rows)}.json"
            run([fissure, "evaluate", "--task", "classify", "--model", work / "model-classify" / "model",
                 "--data", patches, "--out", clf_json], env)
            clf = json.loads(clf_json.read_text())
        rows.append((label, n, seg, clf))
    wall = time.perf_counter() - t0
    seg_train, clf_train = results.get("train-segment"), results.get("train-classify")
    if seg_train:
        head = (f"Trained on synthetic ({seg_train['sizes']['train']} segmentation training images incl. DeepCrack's "
                f"train part) in {wall / 60:.1f} min total wall time; segmenter best epoch "
                f"{seg_train['best_epoch']}/{seg_train['epochs_run']}")
        low = seg_train.get("threshold_low")
        linked = f" (hysteresis from {low})" if low is not None else ""
        tail = (f" Mask threshold {seg_train.get('threshold')}{linked}, tuned on "
                f"{_threshold_from(work / 'model-segment' / 'model')}.")
    else:
        head = f"--classify-only: {wall / 60:.1f} min total wall time; no segmenter"
        tail = ""
    clf_arch = "params.yaml's model" if args.classify_encoder == "none" else f"pretrained {args.classify_encoder}"
    lines = [
        head + (f", classifier ({clf_arch}, {clf_train['sizes']['train']} training patches) best epoch "
                f"{clf_train['best_epoch']}/{clf_train['epochs_run']}." if clf_train else
                " (--segment-only: no classifier).") + tail,
        "",
        "| held-back real images | images | seg Dice | seg IoU | seg precision | seg recall | seg relaxed F1 (2 px) "
        "| patches | clf accuracy | clf F1 | clf ROC-AUC |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, n, s, c in rows:
        if c is None:
            clf_cells = "n/a | n/a | n/a | n/a"
        else:
            auc = f"{c['roc_auc']:.3f}" if c["roc_auc"] is not None else "n/a"
            clf_cells = f"{c['n_images']} | {c['accuracy']:.3f} | {c['f1']:.3f} | {auc}"
        # relaxed: a predicted pixel within 2 px of a true one counts (the published convention)
        seg_cells = "n/a | n/a | n/a | n/a | n/a" if s is None else \
            f"{s['dice']:.3f} | {s['iou']:.3f} | {s['precision']:.3f} | {s['recall']:.3f} | {s['relaxed_f1']:.3f}"
        lines.append(f"| {label} | {n} | {seg_cells} | {clf_cells} |")
    d8 = [f"{label} {s['d8']['dice']:.3f} (relaxed F1 {s['d8']['relaxed_f1']:.3f})" for label, _, s, _ in rows if s and "d8" in s]
    if d8:
        lines += ["", "The same segmenter with its probabilities averaged over 8 views (`fissure evaluate --tta d8`, "
                  "same threshold): Dice " + "; ".join(d8) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
