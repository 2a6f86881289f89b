"""Contrast probe: a trained segmenter scored on test images whose contrast was changed first.

    make bench-contrast    # after make bench-realdata: its segmenter and held-back test images
    python training/bench_contrast.py --model DIR_OR_URI --data [NAME=]DIR ... [--variant std24 ...]

No retraining: each --data folder (images/ + masks/) is copied once per variant with every
image's pixels changed at its own size, then scored with `fissure evaluate` at the model's
threshold. It answers "would this model do better on flatter or contraster photos", the
question behind `gray_std` (docs/training.md, "Contrast stretch"). Variants:

  as-is      the images unchanged
  xK         every image's pixels scaled by K about its channel means (x1.5: 50 % more contrast)
  stdN       every image stretched to grey-level standard deviation N (the `gray_std` function,
             fissure.preprocess.stretch_contrast)
  equalize   global histogram equalisation (PIL's ImageOps.equalize)

The report (Markdown, --out) has each folder's grey-level spread (10th / 50th / 90th percentile
of the per-image standard deviation) and one row per variant: Dice (precision / recall) per
folder and the 2-px relaxed F1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fissure.data.loaders import IMAGE_SUFFIXES
from fissure.preprocess import gray_spread, scale_contrast, stretch_contrast

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "reports" / "bench_realdata"  # make bench-realdata's work folder
DEFAULT_MODEL = BENCH / "model-segment" / "model"
DEFAULT_DATA = [f"DeepCrack={BENCH / 'deepcrack-test'}",
                f"CrackForest={REPO.parent / 'shared' / 'datasets' / 'crackforest' / 'all'}"]

DEFAULT_VARIANTS = ["as-is", "x1.5", "x2", "std20", "std24", "std30", "equalize"]
VARIANT = re.compile(r"^(as-is|equalize|x\d+(\.\d+)?|std\d+(\.\d+)?)$")


def change(pixels: np.ndarray, variant: str) -> np.ndarray:
    """uint8 [H, W, 3] pixels as ``variant`` says (see the module's docstring)."""
    if variant == "as-is":
        return pixels
    if variant == "equalize":
        return np.asarray(ImageOps.equalize(Image.fromarray(pixels)))
    if variant.startswith("std"):
        return stretch_contrast(pixels, float(variant[3:]))
    return scale_contrast(pixels, float(variant[1:]))


def images_of(folder: Path) -> list[Path]:
    """The images `fissure evaluate` reads from folder/images (the loaders' own suffixes)."""
    return sorted(p for p in (folder / "images").iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def changed_copy(src: Path, dst: Path, variant: str) -> Path:
    """``src`` with its images changed (PNG, lossless) and its masks linked."""
    (dst / "images").mkdir(parents=True, exist_ok=True)
    if not (dst / "masks").exists():
        os.symlink((src / "masks").resolve(), dst / "masks")
    for path in images_of(src):
        out = dst / "images" / (path.stem + ".png")
        if not out.exists():
            Image.fromarray(change(np.asarray(Image.open(path).convert("RGB")), variant)).save(out)
    return dst


def parse_data(values: list[str]) -> dict[str, Path]:
    sets: dict[str, Path] = {}
    for value in values:
        name, _, folder = value.rpartition("=")
        path = Path(folder)
        if not (path / "images").is_dir() or not (path / "masks").is_dir():
            raise SystemExit(f"--data {value}: needs {path}/images and {path}/masks"
                             + (" (run make bench-realdata first)" if BENCH in path.parents else ""))
        sets[name or path.name] = path
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL),
                    help="a segmenter: model dir or MLflow URI [make bench-realdata's]")
    ap.add_argument("--data", action="append", default=None, metavar="[NAME=]DIR",
                    help="images/ + masks/ (repeat) [its DeepCrack held-out test and ../shared's CrackForest]")
    ap.add_argument("--variant", action="append", default=None,
                    help=f"as-is | xK | stdN | equalize (repeat) [{' '.join(DEFAULT_VARIANTS)}]")
    ap.add_argument("--work", type=Path, default=Path("reports/bench_contrast"))
    ap.add_argument("--out", type=Path, default=Path("reports/bench_contrast.md"))
    args = ap.parse_args()
    variants = args.variant or DEFAULT_VARIANTS
    bad = [v for v in variants if not VARIANT.match(v)]
    if bad:
        raise SystemExit(f"--variant {bad[0]}: expected as-is, equalize, xK (e.g. x1.5) or stdN (e.g. std24)")
    if args.model == str(DEFAULT_MODEL) and not DEFAULT_MODEL.is_dir():
        raise SystemExit(f"--model {DEFAULT_MODEL}: no such model (run make bench-realdata first, or give --model)")
    sets = parse_data(args.data or DEFAULT_DATA)
    fissure = Path(sys.executable).parent / "fissure"

    lines = ["| folder | images | grey-level std, 10th / 50th / 90th percentile |", "| --- | ---: | --- |"]
    for name, folder in sets.items():
        spreads = [gray_spread(np.asarray(Image.open(p).convert("RGB"))) for p in images_of(folder)]
        p10, p50, p90 = np.percentile(spreads, [10, 50, 90])
        lines.append(f"| {name} | {len(spreads)} | {p10:.1f} / {p50:.1f} / {p90:.1f} |")
    head = " | ".join(f"{n} Dice (P / R)" for n in sets)
    lines += ["", f"| test images | {head} | {' | '.join(f'{n} relaxed F1' for n in sets)} |",
              "| --- |" + " ---: |" * (2 * len(sets))]
    for variant in variants:
        print(f"[{variants.index(variant) + 1}/{len(variants)}] {variant}", flush=True)
        cmd = [fissure, "evaluate", "--task", "segment", "--model", args.model, "--out", args.work / f"{variant}.json"]
        for name, folder in sets.items():
            cmd += ["--data", f"{name}={changed_copy(folder, args.work / variant / name, variant)}"]
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"fissure evaluate failed on {variant}: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        scores = json.loads((args.work / f"{variant}.json").read_text())
        by = scores["datasets"] if len(sets) > 1 else {next(iter(sets)): scores}
        dice = " | ".join(f"{by[n]['dice']:.3f} ({by[n]['precision']:.3f} / {by[n]['recall']:.3f})" for n in sets)
        relaxed = " | ".join(f"{by[n]['relaxed_f1']:.3f}" for n in sets)
        lines.append(f"| {variant} | {dice} | {relaxed} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
