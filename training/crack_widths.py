"""Crack width statistics of segmentation sets, at the models' input size.

    python training/crack_widths.py DIR [DIR ...] [--size 256]

Each DIR holds masks in ``*/masks/*.png`` or ``masks/*.png``. A mask is resized to
``size`` x ``size`` (area average, pixels at least 1/4 covered count), and its mean crack
width is estimated as area / (boundary pixels / 2), the width of a thin region. Prints, per
DIR: images with a crack, median width and quartiles in pixels, and mean crack share.
Used for the synthetic-vs-real width table in docs/data.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi


def mask_width(path: Path, size: int) -> tuple[float, float] | None:
    m = np.asarray(Image.open(path).convert("L").resize((size, size), Image.BOX)) >= 64
    if m.sum() < 20:  # no crack (or a speck)
        return None
    boundary = (m & ~ndi.binary_erosion(m)).sum()
    return m.sum() / max(boundary / 2, 1), float(m.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    print("| set | images with a crack | median width (px) | quartiles | mean crack share |")
    print("| --- | ---: | ---: | --- | ---: |")
    for d in args.dirs:
        paths = sorted(d.glob("masks/*.png")) + sorted(d.glob("*/masks/*.png"))
        stats = [s for s in (mask_width(p, args.size) for p in paths) if s]
        if not stats:
            raise SystemExit(f"{d}: no masks with a crack under masks/ or */masks/")
        w = np.array([s[0] for s in stats])
        share = np.mean([s[1] for s in stats])
        q1, med, q3 = np.percentile(w, [25, 50, 75])
        print(f"| {d} | {len(w)} | {med:.2f} | {q1:.2f}-{q3:.2f} | {share:.1%} |")


if __name__ == "__main__":
    main()
