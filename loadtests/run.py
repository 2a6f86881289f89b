"""``python -m loadtests.run``: one headless Locust run against a fissure stack, checked.

Prepares the images, starts Locust in its own process (``python -m locust``: gevent must never
patch the caller's process), samples the stack's memory meanwhile, then writes Locust's CSV
and HTML, ``report.png`` and ``summary.md`` into ``.fissure/loadtests/<timestamp>-<mode>/`` and
checks loadtests/thresholds.yaml: one ``FAIL ...`` line per breached threshold, exit 1.

    python -m loadtests.run                  # loadtest: 20 users, 3 min, failures and p95 budgets
    python -m loadtests.run --smoke          # 60 s, 8 users: fails on any error
    python -m loadtests.run --soak --duration 30m
    python -m loadtests.run --smoke --rest http://127.0.0.1:18080 --grpc 127.0.0.1:18081 \\
        --api http://127.0.0.1:18000 --token "$TOKEN" --pids 1234,1240

From Python (a test of the stack): ``loadtests.run.run(Options(mode="smoke", rest=..., ...))``
returns a :class:`Result` (folder, breaches, exit code); it only starts subprocesses.
Exit codes: 0 passed, 1 a threshold was breached, 2 the run could not start (one line why).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from loadtests import config, images
from loadtests.checker import check_report, load_thresholds
from loadtests.memory import MemorySampler, stack_roots

EXIT_BREACH, EXIT_USAGE = 1, 2


class RunError(Exception):
    """The run could not start or Locust broke: one line for the user (exit 2)."""


@dataclass
class Options:
    mode: str = "loadtest"                # smoke | loadtest | soak (config.MODES)
    rest: str | None = None               # None: FISSURE_LOADTEST_REST, else the local stack's port
    grpc: str | None = None
    api: str | None = None
    token: str | None = None              # None: FISSURE_LOADTEST_TOKEN, else a local annotator token
    users: int | None = None              # None: the mode's
    spawn_rate: float | None = None
    duration: str | None = None           # Locust's --run-time (90s, 3m, 1h)
    scenarios: list[str] = field(default_factory=lambda: list(config.SCENARIOS))
    sizes: list[str] | None = None        # None: every size of config.SIZES
    models: list[str] | None = None
    shift: str = "none"
    wrong_ratio: float | None = None
    thresholds: Path = config.THRESHOLDS
    out: Path | None = None               # None: .fissure/loadtests/<timestamp>-<mode>
    pids: list[int] | None = None         # None: the detached stack's processes
    sample_seconds: float | None = None   # None: the thresholds file's
    quiet: bool = False                   # Locust's output only into locust.log


@dataclass
class Result:
    folder: Path
    breaches: list[str]
    locust_exit: int | None

    @property
    def code(self) -> int:
        return EXIT_BREACH if self.breaches else 0


def seconds(run_time: str) -> float:
    """Locust's --run-time (``90``, ``90s``, ``3m``, ``1h30m``) in seconds."""
    text = run_time.strip().lower()
    if text.isdigit():
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise RunError(f"--duration {run_time!r}: use Locust's form, e.g. 90s, 3m, 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def _loopback(url: str) -> bool:
    from fissure.stack import is_loopback

    host = urlparse(url if "://" in url else f"//{url}").hostname or ""
    return is_loopback(host)


# --------------------------------------------------------------------------- the API token
def token_cache() -> Path:
    from fissure.settings import state_dir

    return state_dir() / "loadtests" / "token"


def _token_works(api: str, token: str) -> bool:
    import httpx

    try:
        r = httpx.get(f"{api}/predictions", params={"page_size": 1}, timeout=10,
                      headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise RunError(f"the API at {api} does not answer ({exc}); is the stack up? (`make up DETACH=1`)") from None
    return r.status_code == 200


def local_token(api: str, echo=print) -> str:
    """An annotator token for an API on this machine: the cached one while the API accepts it,
    else a new one from `fissure token create` (the same store as the local stack's API)."""
    cache = token_cache()
    if cache.exists():
        token = cache.read_text().strip()
        if token and _token_works(api, token):
            return token
    fissure = str(Path(sys.executable).with_name("fissure"))
    made = subprocess.run([fissure, "token", "create", "--role", "annotator", "--name", "loadtest"],
                          capture_output=True, text=True, timeout=120, cwd=config.REPO)
    if made.returncode or not made.stdout.strip():
        raise RunError(f"`fissure token create` failed: {(made.stderr or made.stdout).strip().splitlines()[-1:]}; "
                       f"set {config.ENV_TOKEN} to an annotator token")
    token = made.stdout.strip().splitlines()[0]
    if not _token_works(api, token):
        raise RunError(f"the API at {api} does not accept a token of this checkout's store; "
                       f"set {config.ENV_TOKEN} to an annotator token of that API (`fissure token create --role annotator`)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.touch(mode=0o600)
    cache.write_text(token + "\n")
    echo(f">> made an annotator token for the load tests (cached in {cache})")
    return token


# --------------------------------------------------------------------------- preflight
def preflight(rest: str, api: str, scenarios: list[str]) -> None:
    """The targets answer before Locust starts: a stack that is down is one line, not 100 % failures."""
    import httpx

    checks = []
    if {"v1", "v2", "grpc"} & set(scenarios):
        checks.append((f"{rest}/v2/health/ready", "the serving front"))
    if "api" in scenarios:
        checks.append((f"{api}/ping", "the feedback API"))
    for url, what in checks:
        try:
            r = httpx.get(url, timeout=10)
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        if not ok:
            raise RunError(f"{what} is not ready at {url}; start the stack (`make up DETACH=1`) or pass its URL")


def warm_up(rest: str, api: str, token: str, scenarios: list[str], models: list[str], image: bytes) -> None:
    """One request per model to the front and through the API before the clock starts: first
    calls load what processes load lazily (torch in the API, the models' first batch), which is
    start-up, not load. Errors are left for the run to report."""
    import base64

    import httpx

    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(image).decode()]}]}
    with httpx.Client(timeout=300) as client:
        for model in models:
            try:
                if {"v1", "v2", "grpc"} & set(scenarios):
                    client.post(f"{rest}/v2/models/{model}/infer", json=body)
                if "api" in scenarios:
                    client.post(f"{api}/predict", files={"file": ("warm-up.jpg", image, "image/jpeg")},
                                data={"model": model}, headers={"Authorization": f"Bearer {token}"})
            except httpx.HTTPError:
                pass


# --------------------------------------------------------------------------- the run
def _pump(stream, log_path: Path, echo_lines: bool) -> None:
    with open(log_path, "ab") as log:
        for line in iter(stream.readline, b""):
            log.write(line)
            log.flush()
            if echo_lines:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()


def run(opts: Options, echo=print) -> Result:
    """One checked run; raises RunError when it cannot start."""
    from fissure.settings import state_dir

    from loadtests import report

    if opts.mode not in config.MODES:
        raise RunError(f"unknown mode {opts.mode!r}; use one of {list(config.MODES)}")
    unknown = [s for s in opts.scenarios if s not in config.SCENARIOS]
    if unknown or not opts.scenarios:
        raise RunError(f"scenarios {unknown or '(none)'}: choose from {list(config.SCENARIOS)}")
    mode = config.MODES[opts.mode]
    th = load_thresholds(opts.thresholds)
    users = opts.users or mode.users
    spawn_rate = opts.spawn_rate or mode.spawn_rate
    duration = opts.duration or mode.duration
    run_seconds = seconds(duration)
    rest = (opts.rest or config.env_or(config.ENV_REST, config.DEFAULT_REST)).rstrip("/")
    grpc = opts.grpc or config.env_or(config.ENV_GRPC, config.DEFAULT_GRPC)
    api = (opts.api or config.env_or(config.ENV_API, config.DEFAULT_API)).rstrip("/")
    preflight(rest, api, opts.scenarios)
    token = ""
    if "api" in opts.scenarios:
        token = opts.token or os.environ.get(config.ENV_TOKEN, "")
        if not token:
            if not _loopback(api):
                raise RunError(f"the API scenario needs a token for {api}: set {config.ENV_TOKEN} (annotator role)")
            token = local_token(api, echo)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if opts.sizes:
        env[config.ENV_SIZES] = ",".join(opts.sizes)
    try:
        sizes = config.selected_sizes() if not opts.sizes else [config.SIZE_BY_NAME[s] for s in opts.sizes]
    except (KeyError, ValueError) as exc:
        raise RunError(f"sizes: {exc}; known: {list(config.SIZE_BY_NAME)}") from None
    prepared = images.prepare(sizes, opts.shift, echo=echo)  # here, not in Locust's process: its clock would count it
    warm_up(rest, api, token, opts.scenarios, opts.models or list(config.MODELS),
            prepared[min(sizes, key=lambda s: s.width * s.height).name][0].read_bytes())
    env.update({config.ENV_REST: rest, config.ENV_GRPC: grpc, config.ENV_API: api, config.ENV_TOKEN: token,
                config.ENV_SHIFT: opts.shift})
    if opts.models:
        env[config.ENV_MODELS] = ",".join(opts.models)
    if opts.wrong_ratio is not None:
        env[config.ENV_WRONG] = str(opts.wrong_ratio)

    started = report.now()
    folder = opts.out or state_dir() / "loadtests" / f"{started:%Y%m%d-%H%M%S}-{opts.mode}"
    folder.mkdir(parents=True, exist_ok=True)
    classes = [config.SCENARIOS[s][0] for s in opts.scenarios]
    cmd = [sys.executable, "-m", "locust", "-f", str(config.LOCUSTFILE), "--headless", "-u", str(users),
           "-r", str(spawn_rate), "-t", duration, "--csv", str(folder / "locust"), "--csv-full-history",
           "--html", str(folder / "report.html"), "--only-summary",
           # at the end, users finish the request they are in and stop at their next wait
           "--stop-timeout", "120", *classes]
    roots = opts.pids if opts.pids is not None else stack_roots()
    every = opts.sample_seconds or float(th.memory["sample_seconds"])
    if not roots and th.judges(opts.mode, "memory"):
        echo("!! no running stack found (fissure up --detach writes .fissure/stack.pid): memory is not sampled; "
             "pass --pids")
    echo(f">> {opts.mode}: {users} users, {duration}, scenarios {','.join(opts.scenarios)} -> {folder}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    sampler = MemorySampler(roots, folder / "memory.csv", every) if roots else None
    if sampler:
        sampler.start()
    locust_exit = None
    try:
        proc = subprocess.Popen(cmd, env=env, cwd=config.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        pump = threading.Thread(target=_pump, args=(proc.stdout, folder / "locust.log", not opts.quiet), daemon=True)
        pump.start()
        try:
            # Locust stops itself at --run-time; the grace covers start-up, --stop-timeout and the reports
            locust_exit = proc.wait(timeout=run_seconds + 300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RunError(f"Locust did not stop {run_seconds + 300:.0f} s after starting; see {folder / 'locust.log'}")
        finally:
            pump.join(timeout=10)
    finally:
        if sampler:
            sampler.stop()
    breaches = check_report(folder, th, opts.mode, opts.scenarios)
    if locust_exit not in (0, 1):  # 1: Locust saw failures, which the checker reports line by line
        breaches.insert(0, f"Locust exited with {locust_exit}; see {folder / 'locust.log'}")
    title = f"{opts.mode}: {users} users for {duration}"
    try:
        report.plot(folder, title)
    except Exception as exc:  # a report without its picture still has its verdict
        echo(f"!! the plot failed: {exc}")
    command = "python -m loadtests.run " + shlex.join(_argv_of(opts, users, duration))
    report.summary(folder, mode=opts.mode, title=title, command=command,
                   targets={"REST": rest, "gRPC": grpc, "API": api}, users=users, duration=duration,
                   scenarios=opts.scenarios, th=th, breaches=breaches, started=started, load_at_start=load,
                   sample_seconds=every,
                   notes=[f"Images: {', '.join(f'{s.name} {s.width}x{s.height} ({s.weight})' for s in sizes)}"
                          + (f", shifted ({opts.shift})" if opts.shift != "none" else "") + "; user weights "
                          + ", ".join(f"{s} {config.SCENARIOS[s][1]}" for s in opts.scenarios) + "."])
    return Result(folder, breaches, locust_exit)


def _argv_of(opts: Options, users: int, duration: str) -> list[str]:
    argv = [f"--{opts.mode}"] if opts.mode != "loadtest" else []
    argv += ["--users", str(users), "--duration", duration]
    if opts.scenarios != list(config.SCENARIOS):
        argv += ["--scenarios", ",".join(opts.scenarios)]
    if opts.sizes:
        argv += ["--sizes", ",".join(opts.sizes)]
    if opts.shift != "none":
        argv += ["--shift", opts.shift]
    return argv


# --------------------------------------------------------------------------- CLI
def parse(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_mutually_exclusive_group()
    m.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help=config.MODES["smoke"].what)
    m.add_argument("--soak", dest="mode", action="store_const", const="soak", help=config.MODES["soak"].what)
    p.set_defaults(mode="loadtest")
    p.add_argument("--rest", help=f"the front's REST URL [env {config.ENV_REST}; {config.DEFAULT_REST}]")
    p.add_argument("--grpc", help=f"the front's gRPC host:port [env {config.ENV_GRPC}; {config.DEFAULT_GRPC}]")
    p.add_argument("--api", help=f"the feedback API's URL [env {config.ENV_API}; {config.DEFAULT_API}]")
    p.add_argument("--token", help=f"annotator token(s) for the API, comma-separated [env {config.ENV_TOKEN}; "
                                   "on loopback: made with `fissure token create` and cached]")
    p.add_argument("--users", type=int, help="concurrent users [the mode's]")
    p.add_argument("--spawn-rate", type=float, help="users started per second [the mode's]")
    p.add_argument("--duration", help="run time, Locust's form: 90s, 3m, 1h [the mode's]")
    p.add_argument("--scenarios", default=",".join(config.SCENARIOS), help="comma list of %(default)s")
    p.add_argument("--sizes", help=f"comma list of image sizes [all: {','.join(config.SIZE_BY_NAME)}]")
    p.add_argument("--models", help=f"comma list of served models [{','.join(config.MODELS)}]")
    p.add_argument("--shift", choices=images.SHIFTS, default="none", help="image set: dark for drift tests")
    p.add_argument("--wrong-ratio", type=float, help=f"share of 'wrong' verdicts [{config.WRONG_RATIO}]")
    p.add_argument("--thresholds", type=Path, default=config.THRESHOLDS)
    p.add_argument("--out", type=Path, help="report folder [.fissure/loadtests/<timestamp>-<mode>]")
    p.add_argument("--pids", help="comma list of pids whose process trees to sample [the detached stack's]")
    p.add_argument("--sample-seconds", type=float, help="memory sampling interval [the thresholds file's]")
    p.add_argument("--quiet", action="store_true", help="Locust's output only into locust.log")
    a = p.parse_args(argv)

    def items(text):
        return [x.strip() for x in text.split(",") if x.strip()] if text else None

    try:
        pids = [int(x) for x in items(a.pids)] if a.pids else None
    except ValueError:
        p.error(f"--pids {a.pids!r}: comma-separated process ids")
    return Options(mode=a.mode, rest=a.rest, grpc=a.grpc, api=a.api, token=a.token, users=a.users,
                   spawn_rate=a.spawn_rate, duration=a.duration, scenarios=items(a.scenarios) or [],
                   sizes=items(a.sizes), models=items(a.models), shift=a.shift, wrong_ratio=a.wrong_ratio,
                   thresholds=a.thresholds, out=a.out, pids=pids, sample_seconds=a.sample_seconds, quiet=a.quiet)


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse(argv)
        result = run(opts)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as exc:  # a bad thresholds file, an unwritable folder
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    for line in result.breaches:
        print(f"FAIL {line}")
    verdict = "FAIL" if result.breaches else "PASS"
    print(f"{verdict}: report in {result.folder} (summary.md, report.html, report.png)")
    return result.code


if __name__ == "__main__":
    sys.exit(main())
