"""Locust scenarios of the fissure stack: KServe v1 and v2 REST, KServe v2 gRPC, and people
through the feedback API (predict, look, judge, browse the history).

Run through ``python -m loadtests.run`` (which prepares the images, passes the targets and
checks the thresholds), or by hand from the repository root::

    FISSURE_LOADTEST_TOKEN=<annotator token> .venv/bin/locust -f loadtests/locustfile.py \\
        --headless -u 20 -r 2 -t 3m RestV1User RestV2User GrpcUser ApiPersonUser

Every request is named ``<protocol> <model>`` (``rest-v1``, ``rest-v2``, ``grpc``, as the
front's ``protocol`` label), with `` 12MP`` for the full-resolution photos, or ``api <step>``;
loadtests/thresholds.yaml budgets them by these names. An answer that is not a full result
(an error status, an ``error`` field or output, a missing output) is a failure.
"""

from __future__ import annotations

import base64
import csv
import itertools
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Locust imports this file by path: make `loadtests` importable as a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc.experimental.gevent as grpc_gevent  # noqa: E402

# before any gRPC object exists: blocking gRPC calls then yield to the other users' greenlets
grpc_gevent.init_gevent()

import gevent  # noqa: E402
import numpy as np  # noqa: E402
from locust import FastHttpUser, SequentialTaskSet, User, between, events, task  # noqa: E402
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV  # noqa: E402
from urllib3 import encode_multipart_formdata  # noqa: E402

from loadtests import config, images  # noqa: E402

REST = config.env_or(config.ENV_REST, config.DEFAULT_REST).rstrip("/")
GRPC = config.env_or(config.ENV_GRPC, config.DEFAULT_GRPC)
API = config.env_or(config.ENV_API, config.DEFAULT_API).rstrip("/")
TOKENS = [t.strip() for t in os.environ.get(config.ENV_TOKEN, "").split(",") if t.strip()]
WRONG_RATIO = float(config.env_or(config.ENV_WRONG, str(config.WRONG_RATIO)))
MODELS = [m.strip() for m in config.env_or(config.ENV_MODELS, ",".join(config.MODELS)).split(",") if m.strip()]
JSON_HEADERS = {"Content-Type": "application/json"}
# what a full answer of each known model holds (v1 keys, v2 output names)
EXPECTED = {"crack-classifier": ("label", "probabilities"), "crack-segmenter": ("mask_png", "crack_ratio")}


# --------------------------------------------------------------------------- images
@dataclass
class Picture:
    size: config.Size
    data: bytes
    index: int
    _v1: bytes | None = None
    _v2: bytes | None = None
    _grpc: list = field(default_factory=list)

    # bodies built once per image: the load generator should spend its CPU on sending
    @property
    def v1(self) -> bytes:
        if self._v1 is None:
            self._v1 = json.dumps({"instances": [{"image": {"b64": base64.b64encode(self.data).decode()}}]}).encode()
        return self._v1

    @property
    def v2(self) -> bytes:
        if self._v2 is None:
            self._v2 = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                               "data": [base64.b64encode(self.data).decode()]}]}).encode()
        return self._v2

    def grpc_inputs(self):
        if not self._grpc:
            import tritonclient.grpc as grpcclient

            inp = grpcclient.InferInput("image", [1], "BYTES")
            inp.set_data_from_numpy(np.array([self.data], dtype=np.object_))
            self._grpc.append(inp)
        return self._grpc


class Pool:
    def __init__(self):
        sizes = config.selected_sizes()
        root = os.environ.get(config.ENV_IMAGES)
        shift = config.env_or(config.ENV_SHIFT, "none")
        loaded = images.load(sizes, shift, Path(root) if root else None)
        self.sizes = sizes
        self.weights = [s.weight for s in sizes]
        self.pictures = {s.name: [Picture(s, d, i) for i, d in enumerate(loaded[s.name])] for s in sizes}

    def pick(self) -> Picture:
        size = random.choices(self.sizes, self.weights)[0]
        return random.choice(self.pictures[size.name])


POOL = Pool()
# gevent's loop caches its clock: without this, the seconds spent loading images above would be
# taken off Locust's --run-time (its timer is scheduled from the stale time)
gevent.get_hub().loop.update_now()


def pick_model(mix: dict[str, int]) -> str:
    weights = [mix.get(m, 1) for m in MODELS]
    return random.choices(MODELS, weights)[0]


def first_line(text: str, limit: int = 200) -> str:
    return (text or "").strip().splitlines()[0][:limit] if (text or "").strip() else ""


def http_problem(resp) -> str:
    """Why an HTTP answer failed, in one line (the fissure error body when there is one)."""
    try:
        reason = resp.json().get("error")
    except Exception:  # not JSON: the body's first line
        reason = None
    text = reason or getattr(resp, "error", None) or (resp.text if resp.content else "")
    return f"HTTP {resp.status_code}: {first_line(str(text or ''))}"


# --------------------------------------------------------------------------- the front, REST
class _MachineClient(FastHttpUser):
    """An application posting one image at a time (an inspection app, a batch uploader)."""

    abstract = True
    host = REST
    wait_time = between(*config.MACHINE_WAIT)
    connection_timeout = 30.0
    network_timeout = 120.0  # a 12 MP segmentation on a busy machine takes seconds


class RestV1User(_MachineClient):
    weight = config.SCENARIOS["v1"][1]

    @task
    def predict(self):
        model, pic = pick_model(config.MACHINE_MODEL_MIX), POOL.pick()
        with self.client.post(f"/v1/models/{model}:predict", data=pic.v1, headers=JSON_HEADERS,
                              name=config.request_name("rest-v1", model, pic.size), catch_response=True) as r:
            if r.status_code != 200:
                return r.failure(http_problem(r))
            try:
                pred = r.json()["predictions"][0]
            except (ValueError, KeyError, IndexError, TypeError):
                return r.failure(f"no predictions in the answer: {first_line(r.text)}")
            if pred.get("error"):
                return r.failure(f"item error: {first_line(str(pred['error']))}")
            missing = [k for k in EXPECTED.get(model, ()) if k not in pred]
            if missing:
                return r.failure(f"prediction without {missing}")
            r.success()


def v2_outputs_problem(outputs: dict, model: str) -> str | None:
    errors = [e for e in outputs.get("error", []) if e]
    if errors:
        return f"item error: {first_line(errors[0] if isinstance(errors[0], str) else errors[0].decode())}"
    missing = [k for k in EXPECTED.get(model, ()) if k not in outputs]
    return f"answer without outputs {missing}" if missing else None


class RestV2User(_MachineClient):
    weight = config.SCENARIOS["v2"][1]

    @task
    def infer(self):
        model, pic = pick_model(config.MACHINE_MODEL_MIX), POOL.pick()
        with self.client.post(f"/v2/models/{model}/infer", data=pic.v2, headers=JSON_HEADERS,
                              name=config.request_name("rest-v2", model, pic.size), catch_response=True) as r:
            if r.status_code != 200:
                return r.failure(http_problem(r))
            try:
                outputs = {o["name"]: o["data"] for o in r.json()["outputs"]}
            except (ValueError, KeyError, TypeError):
                return r.failure(f"no outputs in the answer: {first_line(r.text)}")
            problem = v2_outputs_problem(outputs, model)
            if problem:
                return r.failure(problem)
            r.success()


# --------------------------------------------------------------------------- the front, gRPC
class GrpcUser(User):
    """KServe v2 GRPCInferenceService through tritonclient.grpc; each call is a Locust request
    event (type ``grpc``) with its time, answer size and exception, so it shows in the stats."""

    weight = config.SCENARIOS["grpc"][1]
    host = GRPC
    wait_time = between(*config.MACHINE_WAIT)

    def on_start(self):
        import tritonclient.grpc as grpcclient

        from fissure.serving.client import GRPC_MAX_MESSAGE

        self.client = grpcclient.InferenceServerClient(
            GRPC, channel_args=[("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
                                ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE)])

    def on_stop(self):
        self.client.close()

    @task
    def infer(self):
        from tritonclient.utils import InferenceServerException

        model, pic = pick_model(config.MACHINE_MODEL_MIX), POOL.pick()
        exception, length, start = None, 0, time.perf_counter()
        try:
            res = self.client.infer(model, pic.grpc_inputs(), client_timeout=120.0)
            answer = res.get_response()
            length = answer.ByteSize()
            outputs = {o.name: (res.as_numpy(o.name).ravel().tolist() if o.name == "error" else True)
                       for o in answer.outputs}
            problem = v2_outputs_problem(outputs, model)
            if problem:
                exception = RuntimeError(problem)
        except InferenceServerException as exc:
            exception = RuntimeError(f"gRPC {exc.status() or ''}: {first_line(exc.message() or str(exc))}")
        self.environment.events.request.fire(
            request_type="grpc", name=config.request_name("grpc", model, pic.size),
            response_time=(time.perf_counter() - start) * 1000.0, response_length=length,
            exception=exception, context={}, response=None)


# --------------------------------------------------------------------------- people, through the API
_token_cycle = itertools.cycle(TOKENS or [""])


class PersonVisit(SequentialTaskSet):
    """One visit, step by step, thinking 2-6 s between steps: upload a photo, look at the
    overlay, judge the answer (four visits in five: correct, or wrong with the right class),
    browse the history (every other visit).
    Steps are tasks so a run's end stops a person between steps, never inside a request."""

    wait_time = between(*config.person_wait())

    def on_start(self):
        self.pred, self.visits = None, 0

    @task
    def predict(self):
        self.pred = None
        self.visits += 1
        model, pic = pick_model(config.PERSON_MODEL_MIX), POOL.pick()
        body, content_type = encode_multipart_formdata({
            "file": (f"photo-{pic.size.name}-{pic.index}.jpg", pic.data, "image/jpeg"), "model": model})
        suffix = config.LARGE_SUFFIX if pic.size.name in config.LARGE_SIZES else ""
        with self.client.post("/predict", data=body, headers={**self.user.auth, "Content-Type": content_type},
                              name="api predict" + suffix, catch_response=True) as r:
            if r.status_code != 201:
                return r.failure(http_problem(r))
            try:
                pred = r.json()
                self.pred = {"id": pred["id"], "output": pred["output"], "overlay": pred["links"]["overlay"]}
            except (ValueError, KeyError, TypeError):
                return r.failure(f"no prediction in the answer: {first_line(r.text)}")
            r.success()

    @task
    def look(self):
        if self.pred is None:
            return
        with self.client.get(self.pred["overlay"], headers=self.user.auth, name="api overlay",
                             catch_response=True) as r:
            if r.status_code != 200 or not r.content:
                return r.failure(http_problem(r))
            r.success()

    @task
    def judge(self):
        if self.pred is None or not config.JUDGE_EVERY[(self.visits - 1) % len(config.JUDGE_EVERY)]:
            return
        output, fields = self.pred["output"], {"verdict": "correct"}
        if random.random() < WRONG_RATIO:
            fields["verdict"] = "wrong"
            classes = sorted(output.get("probabilities") or {})
            if output.get("label") in classes and len(classes) > 1:
                fields["label"] = next(c for c in classes if c != output["label"])
        body, content_type = encode_multipart_formdata(fields)
        with self.client.post(f"/predictions/{self.pred['id']}/feedback", data=body,
                              headers={**self.user.auth, "Content-Type": content_type},
                              name="api feedback", catch_response=True) as r:
            if r.status_code != 200:
                return r.failure(http_problem(r))
            try:
                ok = r.json()["verdict"] == fields["verdict"]
            except (ValueError, KeyError, TypeError):
                ok = False
            r.success() if ok else r.failure(f"feedback not recorded as {fields['verdict']}: {first_line(r.text)}")

    @task
    def history(self):
        if self.pred is None or not config.HISTORY_EVERY[(self.visits - 1) % len(config.HISTORY_EVERY)]:
            return
        with self.client.get("/predictions?page=1&page_size=20", headers=self.user.auth, name="api history",
                             catch_response=True) as r:
            if r.status_code != 200:
                return r.failure(http_problem(r))
            try:
                items = r.json()["items"]
            except (ValueError, KeyError, TypeError):
                return r.failure(f"no items in the history: {first_line(r.text)}")
            r.success() if items else r.failure("empty history after a prediction")


class ApiPersonUser(FastHttpUser):
    """A person in the feedback UI (token from FISSURE_LOADTEST_TOKEN, round robin)."""

    weight = config.SCENARIOS["api"][1]
    host = API
    tasks = [PersonVisit]
    connection_timeout = 30.0
    network_timeout = 120.0

    def on_start(self):
        token = next(_token_cycle)
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}


# --------------------------------------------------------------------------- the final numbers
@events.quit.add_listener
def _final_csv(exit_code: int, **_kw):
    """Locust rewrites its CSVs every second and not after the last requests: write the final
    statistics once more, after every user stopped, as final_*.csv (what the checker reads)."""
    env = _ENV.get("env")
    prefix = getattr(getattr(env, "parsed_options", None), "csv_prefix", None)
    if env is None or not prefix:
        return
    writer = StatsCSV(env, PERCENTILES_TO_REPORT)
    folder = Path(prefix).parent
    for name, write in (("final_stats.csv", writer.requests_csv), ("final_failures.csv", writer.failures_csv),
                        ("final_exceptions.csv", writer.exceptions_csv)):
        with open(folder / name, "w", newline="") as f:
            write(csv.writer(f))


_ENV: dict = {}


@events.init.add_listener
def _keep_environment(environment, **_kw):
    _ENV["env"] = environment
