"""How long from `fissure retrain` to a promoted champion, on the default data (`make bench-promotion`).

In a copy of the pipeline with the default params: `fissure up --detach` trains the first
champions (not timed), then the data grows (prepare.count x 1.2, "more data") and the clock runs
over `fissure retrain --model crack-classifier` (feedback export, `dvc repro` of both models,
the gate) and `fissure promote --model crack-classifier` with the default canary policy while
Locust sends classifier traffic (4 users, thumbnails). Prints the phases and a Markdown row for
docs/benchmarks.md; writes bench-promotion.json in the output folder.

    python training/bench_promotion.py [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = "crack-classifier"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    sys.path.insert(0, str(REPO))
    from fissure.training.sandbox import copy_pipeline
    from loadtests import config, images

    base = Path(args.out or tempfile.mkdtemp(prefix="fissure-bench-promotion-"))
    base.mkdir(parents=True, exist_ok=True)
    repo = copy_pipeline(REPO, base / "repo")
    home = base / "home"
    ports = dict(zip(("http", "grpc", "mlflow", "api", "prom"), free_ports(5)))
    env = dict(os.environ, FISSURE_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{home}/mlflow.db",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")

    def fissure(*a, check=True):
        t0 = time.monotonic()
        print(f"$ fissure {' '.join(a)}", flush=True)
        r = subprocess.run([str(BIN / "fissure"), *a], cwd=repo, env=env)
        if check and r.returncode:
            raise SystemExit(f"fissure {a[0]} failed (exit {r.returncode})")
        return r.returncode, time.monotonic() - t0

    result: dict = {"machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
                    "load_at_start": os.getloadavg()[0], "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    locust = None
    try:
        _, result["up_seconds"] = fissure("up", "--detach", "--http-port", str(ports["http"]), "--grpc-port",
                                          str(ports["grpc"]), "--mlflow-port", str(ports["mlflow"]), "--api-port",
                                          str(ports["api"]), "--prometheus-port", str(ports["prom"]))
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["prepare"]["count"] = int(params["prepare"]["count"] * 1.2)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        result["policy"] = params.get("canary")

        images.prepare([config.SIZE_BY_NAME["thumb"]])
        locust_env = {**env, config.ENV_REST: f"http://127.0.0.1:{ports['http']}", config.ENV_MODELS: MODEL,
                      config.ENV_SIZES: "thumb"}
        locust = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(config.LOCUSTFILE), "--headless",
                                   "-u", "4", "-r", "4", "-t", "3h", "--csv", str(base / "locust"),
                                   "--only-summary", "RestV2User"], env=locust_env, cwd=REPO,
                                  stdout=open(base / "locust.log", "wb"), stderr=subprocess.STDOUT)
        start = time.monotonic()
        code, result["retrain_seconds"] = fissure("retrain", "--model", MODEL, "--out", str(base / "retrain.json"))
        code, result["promote_seconds"] = fissure("promote", "--model", MODEL, "--out", str(base / "promote.json"),
                                                  check=False)
        result["total_seconds"] = time.monotonic() - start
        result["promoted"] = code == 0
        result["outcome"] = json.loads((base / "promote.json").read_text()) if (base / "promote.json").exists() else None
    finally:
        if locust is not None:
            locust.send_signal(signal.SIGTERM)
            locust.wait(timeout=120)
        fissure("down", check=False)
    (base / "bench-promotion.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "outcome"}, indent=2, default=str))
    print(f"\n| {result['started']} | {result['retrain_seconds']:.0f} s | {result['promote_seconds']:.0f} s | "
          f"{result['total_seconds'] / 60:.1f} min | {'promoted' if result['promoted'] else 'NOT promoted'} | "
          f"load {result['load_at_start']:.1f} |")
    if not args.keep and args.out is None:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if result["promoted"] else 1


if __name__ == "__main__":
    sys.exit(main())
