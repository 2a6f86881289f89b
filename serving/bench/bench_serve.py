"""Serving benchmark: the same crack-classifier (224x224) behind five serving paths.

    (a) raw      in-process loop: decode JPEG -> preprocess -> forward (batch 1), no server
    (b) fissure  `fissure serve` (KServe front -> TorchServe, dynamic batching) over v2 REST and gRPC
    (b") fissure `fissure serve --runtime inprocess` (KServe front, the same model runtime in
                 process, adaptive batching) over v2 REST and gRPC
    (c) kserve   kserve.ModelServer with a custom Model running torch in-process (v2 REST)
    (d) mlflow   `mlflow models serve` (pyfunc; the client sends the preprocessed tensor as JSON)
    (e) fastapi  a plain FastAPI + torch endpoint taking the JPEG bytes

Every server is started first; then ``--rounds`` rounds each run every path at every
concurrency in turn: closed-loop load (C clients, each sends its next request when the
previous one returns) for ``--duration`` seconds after a warm-up. The table pools the rounds:
images/s, p50/p95/p99 latency and throughput relative to (a), and each round's images/s.
Run: ``make bench-serve`` (writes the table into docs/benchmarks.md with ``--write``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
PY = sys.executable
BIN = Path(PY).parent


# ---------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_image(size: int = 224) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = rng.normal(150, 25, size=(size, size)).clip(0, 255).astype(np.uint8)
    arr[size // 2 - 1 : size // 2 + 2, :] = 30
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def threads_env(threads: int) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # mlflow models serve runs `uvicorn`
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "FISSURE_TORCH_THREADS": str(threads), "PYTHONUNBUFFERED": "1"})
    return env


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready in {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---------------------------------------------------------------------------- in-process servers (c), (e)


def load_runtime(model_dir: str):
    from fissure.models.io import load_model
    from fissure.serving.runtime import ModelRuntime

    loaded = load_model(model_dir)
    return ModelRuntime(loaded.module, loaded.spec, {"name": "crack-classifier", "version": "1"})


def serve_kserve(model_dir: str, port: int) -> None:
    """(c): the KServe Python ModelServer with a custom Model doing torch in-process."""
    import torch

    torch.set_num_threads(int(os.environ.get("FISSURE_TORCH_THREADS", "1")))
    sys.argv = sys.argv[:1]
    import kserve
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    runtime = load_runtime(model_dir)

    class TorchModel(kserve.Model):
        def __init__(self):
            super().__init__("crack-classifier")
            self.ready = True

        def predict(self, payload: InferRequest, headers=None):
            data = payload.inputs[0].as_numpy().reshape(-1)
            items = [runtime.prepare_image(base64.b64decode(x) if isinstance(x, str) else bytes(x)) for x in data]
            res = runtime.predict(items)
            probs = [p for r in res for p in r["probabilities"].values()]
            return InferResponse(response_id=payload.id or "x", model_name=self.name, infer_outputs=[
                InferOutput("label", [len(res)], "BYTES", [r["label"] for r in res]),
                InferOutput("probabilities", [len(res), 2], "FP32", probs)])

    kserve.ModelServer(http_port=port, enable_grpc=False, enable_latency_logging=False).start([TorchModel()])


def serve_fastapi(model_dir: str, port: int) -> None:
    """(e): plain FastAPI + torch; POST the JPEG bytes."""
    import torch
    import uvicorn
    from fastapi import FastAPI, Request

    torch.set_num_threads(int(os.environ.get("FISSURE_TORCH_THREADS", "1")))
    runtime = load_runtime(model_dir)
    globals()["Request"] = Request  # annotations are strings here (from __future__ import annotations)
    app = FastAPI()

    @app.get("/ready")
    def ready():
        return {"ready": True}

    @app.post("/predict")
    async def predict(request: Request):
        body = await request.body()
        return runtime.predict([runtime.prepare_image(body)])[0]

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---------------------------------------------------------------------------- load generator


async def closed_loop(make_caller, concurrency: int, duration: float, warmup: float) -> dict:
    make_call, close = make_caller()  # clients live in this event loop
    latencies: list[float] = []
    errors = 0
    first_error: list[str] = []
    stop_at = time.perf_counter() + warmup + duration
    measure_from = time.perf_counter() + warmup

    async def worker():
        nonlocal errors
        call = await make_call()
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            try:
                await call()
            except Exception as exc:  # noqa: BLE001 - counted, reported
                errors += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                    print(f"   first error: {first_error[0]}", flush=True)
                continue
            t1 = time.perf_counter()
            if t0 >= measure_from and t1 <= stop_at:
                latencies.append(t1 - t0)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await close()
    return summarize(concurrency, np.array(latencies) * 1000, duration, errors)


def summarize(concurrency: int, lat_ms: np.ndarray, duration: float, errors: int = 0) -> dict:
    """images/s and latency percentiles of one point (or of several rounds' pooled latencies)."""
    def pct(q):
        return float(np.percentile(lat_ms, q)) if len(lat_ms) else float("nan")

    return {"concurrency": concurrency, "rps": len(lat_ms) / duration, "p50": pct(50), "p95": pct(95),
            "p99": pct(99), "errors": errors, "n": len(lat_ms), "lat": lat_ms, "duration": duration}


def rest_caller(url: str, content: bytes, headers: dict):
    """aiohttp client: one keep-alive connection per closed-loop worker."""

    def setup():
        import aiohttp

        holder = {}

        async def make():
            if "s" not in holder:
                holder["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            session = holder["s"]

            async def call():
                async with session.post(url, data=content, headers=headers) as r:
                    body = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{r.status} {body[:200]!r}")

            return call

        async def close():
            if "s" in holder:
                await holder["s"].close()

        return make, close

    return setup


def grpc_caller(target: str, image: bytes):
    def setup():
        import tritonclient.grpc.aio as grpcclient

        holder = {}

        async def make():
            if "c" not in holder:
                holder["c"] = grpcclient.InferenceServerClient(target)
            inp = grpcclient.InferInput("image", [1], "BYTES")
            inp.set_data_from_numpy(np.array([image], dtype=object))

            async def call():
                await holder["c"].infer("crack-classifier", [inp])

            return call

        async def close():
            if "c" in holder:
                await holder["c"].close()

        return make, close

    return setup


def raw_loop(model_dir: str, image: bytes, duration: float, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    runtime = load_runtime(model_dir)
    for _ in range(20):
        runtime.predict([runtime.prepare_image(image)])
    lat = []
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        runtime.predict([runtime.prepare_image(image)])
        lat.append(time.perf_counter() - t0)
    return summarize(1, np.array(lat) * 1000, duration)


# ---------------------------------------------------------------------------- main


def run(args) -> list[dict]:
    from fissure.models import build_model, default_spec
    from fissure.models.io import save_model
    from fissure.serving.package import package

    work = Path(tempfile.mkdtemp(prefix="fissure-bench-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.environ.setdefault("FISSURE_HOME", str(work / "home"))
    import torch

    torch.manual_seed(0)
    spec = default_spec("classify")
    # a fissure MLflow model; its float32 input signature makes `mlflow models serve` cast JSON
    # numbers to float32 (the pyfunc would otherwise get float64)
    model_dir = str(save_model(build_model(spec).eval(), spec, work / "model"))
    image = make_image(224)
    b64 = base64.b64encode(image).decode()
    v2_body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}]}).encode()
    conc = [int(c) for c in args.concurrency.split(",")]
    env = threads_env(args.threads)
    targets = args.targets.split(",")
    procs: list[subprocess.Popen] = []
    paths: list[tuple[str, object]] = []  # (label, caller factory), in table order

    def spawn(cmd, log, ready_url):
        proc = subprocess.Popen(cmd, env=env, stdout=open(work / log, "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        procs.append(proc)
        wait_http(ready_url, proc)

    def fissure(batch_size: int, label: str, grpc: bool, runtime: str = "torchserve"):
        out = work / f"serving-b{batch_size}"
        if not out.exists():
            package(model_dir, out, name="crack-classifier", batch_size=batch_size,
                    max_batch_delay=args.max_batch_delay)
        ports = [free_port() for _ in range(7)]
        cmd = [str(BIN / "fissure"), "serve", "--runtime", runtime, "--model-store", str(out / "model-store"), "--config",
               str(out / "config" / "config.properties"), "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
               "--ts-inference-port", str(ports[2]), "--ts-management-port", str(ports[3]),
               "--ts-metrics-port", str(ports[4]), "--ts-grpc-inference-port", str(ports[5]),
               "--ts-grpc-management-port", str(ports[6]), "--workdir", str(work / f"serve-{runtime}-b{batch_size}")]
        spawn(cmd, f"fissure-{runtime}-b{batch_size}.log", f"http://127.0.0.1:{ports[0]}/v2/health/ready")
        paths.append((f"{label} v2 REST", rest_caller(f"http://127.0.0.1:{ports[0]}/v2/models/crack-classifier/infer",
                                                      content=v2_body, headers={"Content-Type": "application/json"})))
        if grpc:
            paths.append((f"{label} v2 gRPC", grpc_caller(f"127.0.0.1:{ports[1]}", image)))

    try:
        # Every server is started first and stays up (idle ones cost nothing measurable), then
        # each round measures every path in turn: on a shared machine whose speed drifts, the
        # paths are compared under the same conditions, and rounds are pooled.
        if "fissure" in targets:
            fissure(args.batch_size, "(b) fissure", grpc=True)
        if "inprocess" in targets:
            fissure(args.batch_size, '(b") fissure in-process', grpc=True, runtime="inprocess")
        if "nobatch" in targets:  # the same server with dynamic batching off: what batching buys
            fissure(1, "(b') fissure, batch size 1,", grpc=False)
        if "kserve" in targets:
            port = free_port()
            spawn([PY, str(HERE), "_kserve", model_dir, str(port)], "kserve.log",
                  f"http://127.0.0.1:{port}/v2/health/ready")
            paths.append(("(c) kserve in-process", rest_caller(
                f"http://127.0.0.1:{port}/v2/models/crack-classifier/infer", content=v2_body,
                headers={"Content-Type": "application/json"})))
        if "mlflow" in targets:
            from fissure.models import preprocess_config
            from fissure.preprocess import decode_image, image_to_tensor

            tensor = image_to_tensor(decode_image(image), preprocess_config(spec)).numpy()[None]
            body = json.dumps({"inputs": tensor.tolist()}).encode()
            port = free_port()
            spawn([str(BIN / "mlflow"), "models", "serve", "-m", model_dir, "--env-manager", "local",
                   "-h", "127.0.0.1", "-p", str(port), "-w", "1"], "mlflow.log", f"http://127.0.0.1:{port}/ping")
            paths.append(("(d) mlflow models serve", rest_caller(
                f"http://127.0.0.1:{port}/invocations", content=body, headers={"Content-Type": "application/json"})))
        if "fastapi" in targets:
            port = free_port()
            spawn([PY, str(HERE), "_fastapi", model_dir, str(port)], "fastapi.log", f"http://127.0.0.1:{port}/ready")
            paths.append(("(e) FastAPI + torch", rest_caller(
                f"http://127.0.0.1:{port}/predict", content=image, headers={"Content-Type": "image/jpeg"})))

        points: dict[tuple[str, int], list[dict]] = {}

        def record(target, res, rnd):
            points.setdefault((target, res["concurrency"]), []).append(res)
            print(f"round {rnd}  {target:30s} c={res['concurrency']:<3d} {res['rps']:7.1f} img/s  "
                  f"p50 {res['p50']:7.1f} ms  p95 {res['p95']:7.1f}  p99 {res['p99']:7.1f}  errors {res['errors']}",
                  flush=True)

        for rnd in range(1, args.rounds + 1):
            if "raw" in targets:
                record("(a) raw torch loop", raw_loop(model_dir, image, args.duration, args.threads), rnd)
            for c in conc:
                for label, caller in paths:
                    record(label, asyncio.run(closed_loop(caller, c, args.duration, args.warmup)), rnd)
    finally:
        for proc in procs:
            stop(proc)
    rows = []
    order = (["(a) raw torch loop"] if "raw" in targets else []) + [label for label, _ in paths]
    for target in order:
        for c in sorted({c for (t, c) in points if t == target}):
            runs = points[(target, c)]
            row = summarize(c, np.concatenate([r["lat"] for r in runs]), sum(r["duration"] for r in runs),
                            sum(r["errors"] for r in runs))
            row["target"] = target
            row["rounds"] = [r["rps"] for r in runs]
            rows.append(row)
    return rows


def table(rows: list[dict], args) -> str:
    raw = next((r["rps"] for r in rows if r["target"].startswith("(a)")), None)
    lines = ["| path | concurrency | images/s | rounds (images/s) | p50 ms | p95 ms | p99 ms | vs (a) | errors |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ratio = f"{r['rps'] / raw:.2f}" if raw else "-"
        spread = " / ".join(f"{x:.0f}" for x in r.get("rounds", []))
        lines.append(f"| {r['target']} | {r['concurrency']} | {r['rps']:.1f} | {spread} | {r['p50']:.1f} | "
                     f"{r['p95']:.1f} | {r['p99']:.1f} | {ratio} | {r['errors']} |")
    return "\n".join(lines)


def machine() -> str:
    import torch

    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores (shared), Python {platform.python_version()}, torch {torch.__version__}, "
            f"load average at start {os.getloadavg()[0]:.1f}")


def write_section(text: str, path: Path) -> None:
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    start = "<!-- serving-bench:start -->"
    end = "<!-- serving-bench:end -->"
    block = f"{start}\n{text}\n{end}"
    if start in doc:
        doc = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _m: block, doc, flags=re.S)
    else:
        if "## Serving" not in doc:
            doc = doc.rstrip() + "\n\n## Serving\n"
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_kserve":
        return serve_kserve(sys.argv[2], int(sys.argv[3]))
    if len(sys.argv) > 1 and sys.argv[1] == "_fastapi":
        return serve_fastapi(sys.argv[2], int(sys.argv[3]))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point and round")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    p.add_argument("--rounds", type=int, default=3, help="rounds over every path (pooled in the table)")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--threads", type=int, default=1, help="torch/OMP threads in every server")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batch-delay", type=int, default=2)
    p.add_argument("--targets", default="raw,fissure,inprocess,nobatch,kserve,mlflow,fastapi")
    p.add_argument("--write", type=Path, default=None, help="put the table into this markdown file")
    args = p.parse_args()
    started = machine()
    try:
        rows = run(args)
    finally:
        for d in Path(tempfile.gettempdir()).glob("fissure-bench-*"):
            if d.is_dir() and d.stat().st_mtime > time.time() - 7200:
                import shutil

                shutil.rmtree(d, ignore_errors=True)
    cmd = "python serving/bench/bench_serve.py " + " ".join(sys.argv[1:])
    text = (f"Machine: {started}.\n\nCommand: `{cmd}` "
            f"(torch threads {args.threads} everywhere, fissure batch size {args.batch_size}, "
            f"max batch delay {args.max_batch_delay} ms, {args.rounds} interleaved rounds of {args.duration:g} s per point "
            f"after {args.warmup:g} s warm-up, pooled; closed loop, client on the same machine).\n\n" + table(rows, args))
    print("\n" + text)
    if args.write:
        write_section(text, args.write)


if __name__ == "__main__":
    main()
