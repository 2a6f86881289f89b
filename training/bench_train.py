"""Training benchmark: images/s of both models on CPU and the wall time of `dvc repro` from scratch.

    python training/bench_train.py [--out reports/bench_train.md] [--no-repro]

Throughput uses the default params.yaml models (classifier at its size, segmenter on its
training crops for the train step and at full size for inference), random inputs, after a
warm-up step. The repro timing copies the tracked pipeline files into a temporary git repo
(fresh: no data, no DVC cache, its own MLflow store) and runs `dvc repro` there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from fissure.models import build_model  # noqa: E402
from fissure.training.config import load_config  # noqa: E402
from fissure.training.loop import make_spec, segmenter_batch_loss, set_threads  # noqa: E402
from fissure.training.sandbox import copy_pipeline  # noqa: E402


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def throughput(task: str, seconds: float = 10.0) -> dict:
    cfg = load_config(task, REPO / "params.yaml")
    classes = ["no_crack", "crack"] if task == "classify" else ["background", "crack"]
    spec = make_spec(task, cfg, classes)
    model = build_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    side = cfg.crop or cfg.size
    x = torch.randn(cfg.batch_size, 3, side, side)
    if task == "segment":
        y = (torch.rand(cfg.batch_size, 1, side, side) > 0.98).float()
        loss_fn = lambda: segmenter_batch_loss(model, x, y, cfg)  # noqa: E731
    else:
        y = torch.randint(0, 2, (cfg.batch_size,))
        loss_fn = lambda: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731

    def train_step():
        opt.zero_grad()
        loss_fn().backward()
        opt.step()

    def timed(fn, n_images):
        fn()  # warm-up
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            fn()
            n += n_images
        return n / (time.perf_counter() - t0)

    model.train()
    train_ips = timed(train_step, cfg.batch_size)
    model.eval()
    xi = torch.randn(cfg.eval_batch_size or cfg.batch_size, 3, cfg.size, cfg.size)
    with torch.no_grad():
        infer_ips = timed(lambda: model(xi), len(xi))
    params = sum(p.numel() for p in model.parameters())
    return {"task": task, "model": spec["name"], "arch": f"{spec['arch']} {spec['params']}", "params": params,
            "train_input": f"{cfg.batch_size}x3x{side}x{side}", "train_ips": train_ips,
            "infer_input": f"{len(xi)}x3x{cfg.size}x{cfg.size}", "infer_ips": infer_ips}


def repro_from_scratch() -> tuple[float, str]:
    with tempfile.TemporaryDirectory(prefix="fissure-bench-") as tmp:
        dst = copy_pipeline(REPO, Path(tmp) / "repo")
        env = dict(os.environ, FISSURE_HOME=str(dst / ".fissure"))
        env.pop("MLFLOW_TRACKING_URI", None)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=dst, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"dvc repro failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        seg = (dst / "reports" / "segmenter.json").read_text()
        clf = (dst / "reports" / "classifier.json").read_text()
        # each training stage's own wall time (split, fit, test, MLflow logging)
        stages = {name: json.loads((dst / "models" / name / "metrics.json").read_text())
                  for name in ("crack-classifier", "crack-segmenter")}
        fits = ", ".join(f"{n}: {m['seconds']:.0f} s ({m['epochs_run']} epochs, best {m['best_epoch']})"
                         for n, m in stages.items())
        return wall, f"training stages: {fits}\nsegmenter {seg}\nclassifier {clf}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="reports/bench_train.md")
    ap.add_argument("--seconds", type=float, default=10.0, help="timing window per measurement")
    ap.add_argument("--no-repro", action="store_true", help="skip the dvc repro timing")
    args = ap.parse_args()
    threads = set_threads()
    rows = [throughput(t, args.seconds) for t in ("classify", "segment")]
    lines = [
        f"Machine: {os.cpu_count()} CPUs, {cpu_model()}; torch {torch.__version__}, {threads} threads; "
        f"load average at start {os.getloadavg()[0]:.1f}",
        "",
        "| model | architecture | parameters | train step input | train images/s | inference input | inference images/s |",
        "| --- | --- | ---: | --- | ---: | --- | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['arch']} | {r['params']:,} | {r['train_input']} | {r['train_ips']:.1f} "
                     f"| {r['infer_input']} | {r['infer_ips']:.1f} |")
    if not args.no_repro:
        wall, detail = repro_from_scratch()
        lines += ["", f"`dvc repro` from scratch (default params.yaml): **{wall / 60:.1f} min** ({wall:.0f} s)", "",
                  "```", detail.strip(), "```"]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
