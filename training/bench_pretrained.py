"""From scratch vs pretrained encoder: the segmenter trained the same way, scored on real images.

    python training/bench_pretrained.py [--out reports/bench_pretrained.md] [--work reports/bench_pretrained]
                                        [--data deepcrack|default] [--epochs N] [--threads N]
                                        [--variants scratch,pretrained:24] [--native]

1. `fissure data prepare --source ../shared/datasets/deepcrack/train` (DeepCrack only, split
   70/15/15 by the seeded hash; its test part is never trained on). With ``--data default`` the
   models train on what the default `dvc repro` prepares (params.yaml's prepare section: the
   synthetic images, no feedback) and DeepCrack is prepared only to cut the same held-out part.
2. For each variant, `fissure train --task segment` with params.yaml's train_segmenter section,
   the epochs given (``name:epochs`` sets one variant's), and the variant's model block:
   ``scratch`` = the from-scratch attention U-Net (params.yaml's model when that is one),
   ``pretrained`` = EfficientNet-Lite0 (ImageNet) under the attention U-Net decoder,
   ``random-encoder`` = the same architecture from random weights (what pretraining brings).
3. `fissure evaluate` on the DeepCrack test part and on all of CrackForest (never seen), and
   with ``--data default`` on the synthetic test split too; ``--native`` scores the real sets
   both resized (the whole image at the model's size) and at native resolution in tiles.
Reports Dice/precision/recall, wall and CPU seconds per epoch. Needs ../shared/datasets.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
ENCODER = {"encoder": "efficientnet-lite0", "base": 8, "norm": "group", "deep_supervision": True}
SCRATCH = {"encoder": "none", "base": 8, "depth": 4, "norm": "group", "deep_supervision": True}
VARIANTS = {
    "scratch": SCRATCH,
    "pretrained": {**ENCODER, "pretrained": True},
    "random-encoder": {**ENCODER, "pretrained": False},
}


def run(cmd, env) -> float:
    """Run ``cmd``; returns the CPU seconds (user + system) it used."""
    print("$", " ".join(map(str, cmd)), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([str(c) for c in cmd], check=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="reports/bench_pretrained.md")
    ap.add_argument("--work", default="reports/bench_pretrained")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--variants", default="scratch,pretrained", help="comma-separated, each name or name:epochs")
    ap.add_argument("--data", choices=["deepcrack", "default"], default="deepcrack",
                    help="train on DeepCrack's train part, or on the default pipeline's (synthetic) data")
    ap.add_argument("--native", action="store_true", help="score the real sets resized and at native resolution")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=None, help="override train_segmenter.lr for every variant")
    args = ap.parse_args()
    if not (SHARED / "deepcrack" / "train").is_dir():
        raise SystemExit(f"real datasets not found at {SHARED}; nothing to benchmark")
    variants = [v.partition(":")[0] for v in args.variants.split(",")]
    epochs_of = {v.partition(":")[0]: int(v.partition(":")[2] or args.epochs) for v in args.variants.split(",")}
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, FISSURE_HOME=str(work / "fissure-home"))
    env.pop("MLFLOW_TRACKING_URI", None)
    fissure = Path(sys.executable).parent / "fissure"
    deepcrack = work / ("prepared" if args.data == "deepcrack" else "deepcrack-split")
    if not (deepcrack / "segment" / "test").is_dir():
        run([fissure, "data", "prepare", "--params", REPO / "params.yaml", "--out", deepcrack, "--feedback", "",
             "--source", SHARED / "deepcrack" / "train"], env)
    prepared = deepcrack
    sets = {"DeepCrack held-out": deepcrack / "segment" / "test", "CrackForest (never seen)": SHARED / "crackforest" / "all"}
    if args.data == "default":
        prepared = work / "prepared"
        if not (prepared / "segment" / "test").is_dir():
            run([fissure, "data", "prepare", "--params", REPO / "params.yaml", "--out", prepared, "--feedback", ""], env)
        sets = {"synthetic test": prepared / "segment" / "test", **sets}
    modes = [("resized", "--resized")]
    if args.native:
        modes.append(("native", "--native"))
    evals = [(f"{label} ({mode})" if args.native and not label.startswith("synthetic") else label, data, flag)
             for label, data in sets.items() for mode, flag in modes
             if mode == "resized" or not label.startswith("synthetic")]
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    rows = []
    for name in variants:
        params = {"train_segmenter": dict(base["train_segmenter"], threads=args.threads)}
        seg = params["train_segmenter"]
        seg["model"] = dict(seg.get("model") or {}, **VARIANTS[name])
        if VARIANTS[name].get("encoder", "none") != "none":
            seg["model"].pop("depth", None)
        if args.lr:
            seg["lr"] = args.lr
        folder = work / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (folder / "params.yaml").write_text(yaml.safe_dump(params))
        t0 = time.perf_counter()
        cpu = run([fissure, "train", "--task", "segment", "--data", prepared / "segment", "--params",
                   folder / "params.yaml", "--out", folder / "train", "--epochs", epochs_of[name], "--no-progress"], env)
        metrics = json.loads((folder / "train" / "metrics.json").read_text())
        metrics["process_wall_seconds"] = round(time.perf_counter() - t0, 1)  # the whole `fissure train`
        scores = {}
        for label, data, flag in evals:
            out = folder / f"eval-{len(scores)}.json"
            t0 = time.perf_counter()
            run([fissure, "evaluate", "--task", "segment", "--model", folder / "train" / "model", "--data", data,
                 "--out", out, flag], env)
            scores[label] = dict(json.loads(out.read_text()), wall_seconds=round(time.perf_counter() - t0, 1))
        rows.append((name, metrics, cpu, scores))
        (work / "results.json").write_text(json.dumps([(n, m, c, s) for n, m, c, s in rows], indent=1, default=str))
    trained_on = "DeepCrack train part only" if args.data == "deepcrack" else "the default pipeline's data"
    lines = [
        f"{trained_on}, epochs max {args.variants}, params.yaml's train_segmenter otherwise"
        + (f" (lr {args.lr})" if args.lr else "") + f"; {args.threads} torch thread(s).",
        "",
        "| segmenter | best epoch / run | s/epoch (wall) | CPU s/epoch | "
        + " | ".join(f"{label} Dice / P / R" for label, _, _ in evals) + " |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in evals) + " |",
    ]
    for name, m, cpu, scores in rows:
        epochs = m.get("epochs_run") or epochs_of[name]
        wall = m.get("train_seconds") or m.get("seconds") or 0
        cells = " | ".join(f"{s['dice']:.3f} / {s['precision']:.2f} / {s['recall']:.2f}" for s in scores.values())
        lines.append(f"| {name} | {m.get('best_epoch')}/{epochs} | {wall / epochs:.0f} | {cpu / epochs:.0f} | {cells} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
