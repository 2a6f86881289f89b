"""What native-resolution inference costs: seconds per image and per megapixel, resize vs tiles.

For each model (the default architectures untrained, or ``--model`` URIs: compute does not
depend on the weights) and photo size, ModelRuntime runs the served path on one JPEG: decode ->
prepare -> forward -> mask/label (``prepare_image`` + ``predict``), once with the whole image
resized to the model's size (``tiling.mode: resize``, today's default) and once in overlapping
tiles at the image's own resolution (``tiling.mode: tile``). Median of ``--repeat`` runs after a
warm-up, on ``--threads`` torch threads. The segmenter's rows add what a hysteresis mask
(``threshold_low``, :func:`fissure.models.masks.crack_mask`) costs over the plain threshold at
that size, on its worst case: a map of uniform noise, the most regions to label. Run:
``make bench-native`` (``--write`` puts the table into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SIZES = {"0.3 MP (640x480)": (480, 640), "1 MP (1280x800)": (800, 1280), "3 MP (2048x1536)": (1536, 2048),
         "12 MP (4000x3000)": (3000, 4000)}
START, END = "<!-- native-bench:start -->", "<!-- native-bench:end -->"


def photo(h: int, w: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = rng.normal(150, 25, size=(h, w)).clip(0, 255).astype(np.uint8)
    arr[h // 2 - 1 : h // 2 + 1, :] = 30  # a 2-pixel crack
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def runtimes(task: str, uri: str | None, tiling: dict, device: str):
    """(resize, tile) runtimes of one model."""
    import torch

    from fissure.models import build_model, default_spec
    from fissure.serving.runtime import ModelRuntime

    if uri:
        from fissure.models.io import load_model

        loaded = load_model(uri)
        module, spec = loaded.module, loaded.spec
    else:
        spec = default_spec(task)
        torch.manual_seed(0)
        module = build_model(spec)
    plain = {k: v for k, v in spec.items() if k != "tiling"}
    tiled = {**spec, "tiling": {**(spec.get("tiling") or {}), **tiling, "mode": "tile"}}
    return ModelRuntime(module, plain, device=device), ModelRuntime(module, tiled, device=device)


def timed(rt, data: bytes, repeat: int) -> tuple[float, dict]:
    rt.predict([rt.prepare_image(data)])  # warm-up
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = rt.predict([rt.prepare_image(data)])[0]
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def hysteresis_ms(h: int, w: int, repeat: int) -> float:
    """Median extra milliseconds of a hysteresis mask over the plain threshold, on a noise map."""
    from fissure.models.masks import crack_mask

    prob = np.random.default_rng(0).random((h, w), dtype=np.float32)
    extra = []
    for _ in range(repeat):
        t = time.perf_counter()
        crack_mask(prob, 0.5, 0.25)
        t_hyst = time.perf_counter() - t
        t = time.perf_counter()
        crack_mask(prob, 0.5)
        extra.append(t_hyst - (time.perf_counter() - t))
    return statistics.median(extra) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (the 2-core budget)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per point (median)")
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated keys of: " + ", ".join(SIZES))
    p.add_argument("--tasks", default="segment,classify")
    p.add_argument("--segmenter", default=None, help="model URI (default: the default architecture, untrained)")
    p.add_argument("--classifier", default=None, help="model URI (default: the default architecture, untrained)")
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--write", type=Path, default=None, help="put the table into this markdown file")
    args = p.parse_args()

    import torch

    from fissure.models.tiling import grid_shape, working_size

    torch.set_num_threads(args.threads)
    rows = []
    for task in args.tasks.split(","):
        uri = args.segmenter if task == "segment" else args.classifier
        resize, tile = runtimes(task, uri, {"overlap": args.overlap}, args.device)
        for key in args.sizes.split(","):
            h, w = SIZES[key.strip()]
            data = photo(h, w)
            mp = h * w / 1e6
            t_resize, _ = timed(resize, data, args.repeat)
            t_tile, res = timed(tile, data, max(1, args.repeat if mp < 5 else 1))
            wh = working_size(h, w, tile.tiling)
            r, c = grid_shape(*wh, tile.tiling)
            hyst = hysteresis_ms(h, w, args.repeat) if task == "segment" else None  # masks are drawn at the photo's size
            rows.append((resize.name, key, r * c, t_resize, t_tile, t_tile / mp, t_tile / (r * c) * 1000, hyst))
            print(f"{resize.name} {key}: resize {t_resize:.3f} s, tiles {t_tile:.3f} s ({r * c} tiles)", flush=True)
    load = os.getloadavg()[0]
    tile_cfg = tile.tiling
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), torch "
        f"{torch.__version__}, {args.threads} torch threads, device {args.device}, load average at the end {load:.1f}.",
        "",
        f"Command: `python serving/bench/bench_native.py --write docs/benchmarks.md` (ModelRuntime: JPEG "
        f"decode + prepare + forward + mask/label, one image per call, median of {args.repeat} after a warm-up "
        f"(12 MP tiled: 1); tiles of the model's size, overlap {args.overlap} px, budget "
        f"{tile_cfg.max_pixels / 1e6:.3g} MP, {tile_cfg.batch} tiles per forward pass).",
        "",
        "| model | photo | tiles | resized s | native (tiled) s | native s per MP | ms per tile | hysteresis mask, worst case ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, key, n, tr, tt, per_mp, per_tile, hyst in rows:
        lines.append(f"| {name} | {key} | {n} | {tr:.3f} | {tt:.2f} | {per_mp:.2f} | {per_tile:.1f} | "
                     + (f"{hyst:.0f} |" if hyst is not None else "n/a |"))
    text = "\n".join(lines)
    print(text)
    if args.write:
        doc = args.write.read_text()
        if START in doc and END in doc:
            doc = doc[: doc.index(START) + len(START)] + "\n" + text + "\n" + doc[doc.index(END):]
        else:
            doc += f"\n{START}\n{text}\n{END}\n"
        args.write.write_text(doc)


if __name__ == "__main__":
    main()
