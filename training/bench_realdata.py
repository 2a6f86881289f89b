"""Real-data quality: train on synthetic + real images, score held-back real images never trained on.

    python training/bench_realdata.py [--out reports/bench_realdata.md] [--work reports/bench_realdata]
                                      [--segment-epochs N] [--classify-epochs N]

1. `fissure data prepare --source synth --source ../shared/datasets/deepcrack/train`: synthetic
   images plus DeepCrack, each source split 70/15/15 by a seeded hash (DeepCrack test images
   are never trained on or used for early stopping).
2. Train both models with params.yaml (their own MLflow store under the work folder).
3. Evaluate the segmenter on the DeepCrack test part and on all of CrackForest (a dataset the
   models never saw), and the classifier on patches cut from the same held-back images.
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

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="reports/bench_realdata.md")
    ap.add_argument("--work", default="reports/bench_realdata")
    ap.add_argument("--segment-epochs", type=int, default=None)
    ap.add_argument("--classify-epochs", type=int, default=None)
    args = ap.parse_args()
    if not (SHARED / "deepcrack" / "train").is_dir():
        raise SystemExit(f"real datasets not found at {SHARED}; nothing to benchmark")
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, FISSURE_HOME=str(work / "fissure-home"))
    env.pop("MLFLOW_TRACKING_URI", None)
    bin_dir = Path(sys.executable).parent
    fissure = bin_dir / "fissure"
    t0 = time.perf_counter()
    prepared = work / "prepared"
    run([fissure, "data", "prepare", "--params", REPO / "params.yaml", "--out", prepared, "--feedback", "",
         "--source", "synth", "--source", SHARED / "deepcrack" / "train"], env)
    results = {}
    for task, epochs in (("segment", args.segment_epochs), ("classify", args.classify_epochs)):
        cmd = [fissure, "train", "--task", task, "--data", prepared / task, "--params", REPO / "params.yaml",
               "--out", work / f"model-{task}", "--no-progress"]
        if epochs:
            cmd += ["--epochs", str(epochs)]
        run(cmd, env)
        results[f"train-{task}"] = json.loads((work / f"model-{task}" / "metrics.json").read_text())
    # held-back real sets
    deep_test = link_subset(prepared / "segment" / "test", work / "deepcrack-test", lambda s: not s.startswith("synth-"))
    sets = {"DeepCrack held-out test": deep_test, "CrackForest (all, never seen)": SHARED / "crackforest" / "all"}
    from fissure.data.patches import PatchSpec, extract_patches
    from fissure.training.config import load_config

    patch = PatchSpec(size=load_config("classify", REPO / "params.yaml").size)
    rows = []
    for label, folder in sets.items():
        n = len(list((Path(folder) / "images").iterdir()))
        seg_json = work / f"eval-segment-{len(rows)}.json"
        run([fissure, "evaluate", "--task", "segment", "--model", work / "model-segment" / "model", "--data", folder,
             "--out", seg_json, "--plots", work / f"plots-segment-{len(rows)}"], env)
        patches = work / f"patches-{len(rows)}"
        extract_patches(folder, patches, patch, progress=False)
        clf_json = work / f"eval-classify-{len(rows)}.json"
        run([fissure, "evaluate", "--task", "classify", "--model", work / "model-classify" / "model", "--data", patches,
             "--out", clf_json], env)
        rows.append((label, n, json.loads(seg_json.read_text()), json.loads(clf_json.read_text())))
    wall = time.perf_counter() - t0
    seg_train, clf_train = results["train-segment"], results["train-classify"]
    lines = [
        f"Trained on synthetic ({seg_train['sizes']['train']} segmentation training images incl. DeepCrack's train part) "
        f"in {wall / 60:.1f} min total wall time; segmenter best epoch {seg_train['best_epoch']}/{seg_train['epochs_run']}, "
        f"classifier best epoch {clf_train['best_epoch']}/{clf_train['epochs_run']}.",
        "",
        "| held-back real images | images | seg Dice | seg IoU | seg precision | seg recall | patches | clf accuracy | clf F1 | clf ROC-AUC |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, n, s, c in rows:
        auc = f"{c['roc_auc']:.3f}" if c["roc_auc"] is not None else "n/a"
        lines.append(f"| {label} | {n} | {s['dice']:.3f} | {s['iou']:.3f} | {s['precision']:.3f} | {s['recall']:.3f} "
                     f"| {c['n_images']} | {c['accuracy']:.3f} | {c['f1']:.3f} | {auc} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
