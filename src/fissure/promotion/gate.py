"""The offline gate: before any traffic, a challenger is checked against the champion.

Checks (policy :class:`GatePolicy`, ``gate:`` in params.yaml):

- ``gate_set``: the task's metric (``metric``; classifier F1 and segmenter Dice by default, any
  metric the evaluation reports, e.g. the threshold-free ``roc_auc``) on a fixed gate set may not drop more than ``tolerance`` below the champion's; with no champion, it must reach the
  policy's absolute ``floor``.
- ``feedback``: on the new feedback items (when there are any, and a champion), the challenger
  must beat the champion by at least ``min_improvement``.
- ``latency``: milliseconds per image on CPU, the median over a few batches, within budget.
- ``size``: megabytes of weights within budget.

:func:`run_gate` returns a :class:`GateDecision` with every check's numbers; :func:`record`
logs it on the challenger's MLflow run and tags its model version ``gate=passed|failed``
(a refused challenger keeps its version, tagged ``failed``).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from fissure.errors import FissureError
from fissure.training import metrics as M

MAIN_METRIC = M.SELECTION_METRIC  # task -> metric the gate compares
ARTIFACT = "gate_decision.json"
TAG = "gate"


class GatePolicy(BaseModel):
    """The gate's thresholds; lives in params.yaml under ``gate:``."""

    model_config = ConfigDict(extra="forbid")

    tolerance: float = Field(0.02, ge=0, description="largest allowed drop of the main metric on the gate set")
    min_improvement: float = Field(0.0, description="gain over the champion required on the feedback set")
    floor: dict[str, float] = Field(default_factory=lambda: {"classify": 0.5, "segment": 0.3},
                                    description="main metric needed on the gate set when there is no champion")
    metric: dict[str, str] = Field(default_factory=lambda: dict(MAIN_METRIC),
                                   description="metric compared per task (any the evaluation reports, e.g. roc_auc)")
    latency_ms: float = Field(200.0, gt=0, description="budget, ms per image on CPU")
    size_mb: float = Field(100.0, gt=0, description="budget, MB of weights")
    latency_batches: int = Field(3, ge=1, description="timed batches (after one warm-up)")
    latency_batch_size: int = Field(8, ge=1)


@dataclass
class Check:
    name: str
    passed: bool
    value: float | None  # the challenger's number
    limit: float | None  # what it was held to
    baseline: float | None = None  # the champion's number, where compared
    reason: str = ""  # one line


@dataclass
class GateDecision:
    model: str
    task: str
    challenger_uri: str
    champion_uri: str | None
    challenger_version: str | None
    challenger_run_id: str | None
    champion_version: str | None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def reasons(self) -> list[str]:
        """One line per failed check."""
        return [c.reason for c in self.checks if not c.passed]

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(passed=self.passed, decision="passed" if self.passed else "failed", reasons=self.reasons)
        return d

    def metrics(self) -> dict[str, float]:
        """The numbers as MLflow metrics ``gate_*``."""
        out = {"gate_passed": float(self.passed)}
        for c in self.checks:
            out[f"gate_{c.name}_passed"] = float(c.passed)
            for key in ("value", "limit", "baseline"):
                v = getattr(c, key)
                if v is not None:
                    out[f"gate_{c.name}_{key}"] = float(v)
        return out


def has_task_items(task: str, data: str | Path) -> bool:
    """Whether a feedback set holds items of `task`. `fissure feedback export` writes one folder
    for both tasks (images/<class>/ for the classifier, images/ + masks/ for the segmenter) and its
    manifest.json even when nothing was judged, so a set with none, or only the other task's,
    has none of this one (seen on a cluster: the segmenter's gate failed on an export without
    masks/). A set that has this task's folders is loaded, and a malformed one is an error then.
    `data` is the task's path in the export (policy.FEEDBACK_DATA): the root for `segment`,
    images/ for `classify`."""
    from fissure.data.loaders import IMAGE_SUFFIXES

    data = Path(data)
    if not data.is_dir():
        return False
    if task == "segment":
        images = data / "images"
        loose = images.is_dir() and any(f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES for f in images.iterdir())
        return (data / "masks").is_dir() or loose
    return any(d.is_dir() and not d.name.startswith(".") and any(f.is_file() for f in d.rglob("*"))
               for d in data.iterdir())


def _score(loaded, data, task: str, classes, metric: str) -> tuple[float | None, int]:
    from fissure.training.datasets import eval_items
    from fissure.training.evaluate import evaluate_items

    items, _ = eval_items(task, data, classes)
    if not items:
        return None, 0
    result = evaluate_items(loaded.module, loaded.spec, items, overlays=0, progress=False)
    if result.metrics.get(metric) is None:
        raise FissureError(f"gate metric {metric!r} is not reported for {task} on {data} "
                           f"(reported: {', '.join(sorted(k for k, v in result.metrics.items() if v is not None))})")
    return float(result.metrics[metric]), len(items)


@torch.no_grad()
def latency_ms(module, spec: dict, *, batches: int = 3, batch_size: int = 8) -> float:
    """Median ms per image of CPU forward passes on random inputs at the model's size."""
    from fissure.models import preprocess_config

    size = preprocess_config(spec).size
    module = module.to("cpu").eval()
    x = torch.rand(batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
    module(x)  # warm-up: first-call allocations and oneDNN kernel selection
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        module(x)
        times.append((time.perf_counter() - t0) * 1000 / batch_size)
    return statistics.median(times)


def size_mb(module) -> float:
    """Weights (parameters and buffers) in MB, as the state dict stores them."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values()) / 1e6


def run_gate(model_name: str, challenger_uri: str, champion_uri: str | None, gate_data: str | Path,
             feedback_data: str | Path | None, policy: GatePolicy) -> GateDecision:
    """Evaluate the challenger (and the champion, when given) and apply ``policy``."""
    from fissure.models import io

    challenger = io.load_model(challenger_uri)
    task = challenger.task
    champion = io.load_model(champion_uri) if champion_uri else None
    if champion is not None and champion.task != task:
        raise FissureError(f"champion {champion_uri} is a {champion.task} model, "
                           f"challenger {challenger_uri} a {task} one")
    metric = policy.metric.get(task, MAIN_METRIC[task])
    classes = challenger.spec["classes"] if task == "classify" else None
    decision = GateDecision(model_name, task, challenger_uri, champion_uri, challenger.version, challenger.run_id,
                            champion.version if champion else None)

    # gate set: no regression beyond the tolerance, or the floor when there is no champion
    score, n = _score(challenger, gate_data, task, classes, metric)
    if not n:
        raise FissureError(f"gate set {gate_data} has no items")
    if champion is None:
        floor = float(policy.floor.get(task, 0.0))
        ok = score >= floor
        decision.checks.append(Check("gate_set", ok, score, floor, None,
                                     f"gate set {metric} {score:.4f} {'>=' if ok else '<'} floor {floor:.4f} "
                                     f"(no champion, {n} items)"))
    else:
        base, _ = _score(champion, gate_data, task, classes, metric)
        limit = base - policy.tolerance
        ok = score >= limit
        decision.checks.append(Check("gate_set", ok, score, limit, base,
                                     f"gate set {metric} {score:.4f} vs champion {base:.4f}: "
                                     + (f"within tolerance {policy.tolerance}" if ok else
                                        f"regression of {base - score:.4f} beyond tolerance {policy.tolerance}")
                                     + f" ({n} items)"))

    # feedback: an improvement over the champion, when there are items to judge on
    # a missing export, or one without this task's items, is "no items"; a malformed one is an error
    if feedback_data is not None and has_task_items(task, feedback_data):
        fscore, fn = _score(challenger, feedback_data, task, classes, metric)
    else:
        fscore, fn = None, 0
    if not fn:
        decision.checks.append(Check("feedback", True, None, None, None, "feedback set: no items, skipped"))
    elif champion is None:
        decision.checks.append(Check("feedback", True, fscore, None, None,
                                     f"feedback {metric} {fscore:.4f} ({fn} items): no champion to improve on"))
    else:
        fbase, _ = _score(champion, feedback_data, task, classes, metric)
        gain = fscore - fbase
        ok = gain >= policy.min_improvement
        decision.checks.append(Check("feedback", ok, fscore, fbase + policy.min_improvement, fbase,
                                     f"feedback {metric} {fscore:.4f} vs champion {fbase:.4f}: gain {gain:+.4f} "
                                     f"{'>=' if ok else '<'} required {policy.min_improvement:+.4f} ({fn} items)"))

    ms = latency_ms(challenger.module, challenger.spec, batches=policy.latency_batches,
                    batch_size=policy.latency_batch_size)
    ok = ms <= policy.latency_ms
    decision.checks.append(Check("latency", ok, ms, policy.latency_ms, None,
                                 f"latency {ms:.2f} ms/image on CPU {'within' if ok else 'over'} budget "
                                 f"{policy.latency_ms} ms"))
    mb = size_mb(challenger.module)
    ok = mb <= policy.size_mb
    decision.checks.append(Check("size", ok, mb, policy.size_mb, None,
                                 f"size {mb:.3f} MB {'within' if ok else 'over'} budget {policy.size_mb} MB"))
    return decision


def record(decision: GateDecision, client) -> None:
    """Log ``decision`` on the challenger's run (``gate_*`` metrics, :data:`ARTIFACT`) and tag its
    model version ``gate=passed|failed``. ``client``: an ``mlflow.MlflowClient``."""
    verdict = "passed" if decision.passed else "failed"
    if decision.challenger_run_id:
        now = int(time.time() * 1000)
        from mlflow.entities import Metric

        client.log_batch(decision.challenger_run_id,
                         metrics=[Metric(k, v, now, 0) for k, v in decision.metrics().items()])
        client.log_dict(decision.challenger_run_id, decision.to_dict(), ARTIFACT)
        client.set_tag(decision.challenger_run_id, TAG, verdict)
    if decision.challenger_version:
        client.set_model_version_tag(decision.model, decision.challenger_version, TAG, verdict)
        client.set_model_version_tag(decision.model, decision.challenger_version, "gate.reasons",
                                     json.dumps(decision.reasons)[:5000])
