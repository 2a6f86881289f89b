"""``fissure retrain`` on one machine: new feedback becomes challengers that the gate judges.

::

    fissure feedback export --out data/feedback    people's corrections join the dataset
    (enough new judged items since the last registered version? --min-feedback)
    dvc pull / dvc repro / dvc push                 (pull and push when a DVC remote is configured;
                                                     only the asked models' stages when not both)
    for each model with a new registered version:   (the `challenger` alias; lineage tags on it)
        the offline gate against the champion       (fissure.promotion.gate; tags, MLflow numbers)

Promotion is the next, separate step (``--promote`` runs it: :mod:`fissure.promotion.controller`).
In a cluster the Argo WorkflowTemplate ``fissure-retrain`` runs the same commands as steps.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fissure import MODEL_NAMES
from fissure.errors import FissureError, NotFoundError
from fissure.promotion.gate import GateDecision, GatePolicy, record, run_gate
from fissure.promotion.policy import FEEDBACK_DATA, GATE_DATA

TASK_OF = {name: task for task, name in MODEL_NAMES.items()}


@dataclass
class RetrainResult:
    skipped: str | None = None  # why nothing was trained
    new_versions: dict[str, str] = field(default_factory=dict)  # model -> registered version
    decisions: dict[str, GateDecision] = field(default_factory=dict)

    @property
    def passed(self) -> list[str]:
        return [m for m, d in self.decisions.items() if d.passed]


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).with_name(name))


def _run(cmd: list[str], root: Path, echo, what: str, check: bool = True) -> int:
    echo(f"$ {' '.join(cmd)}")
    code = subprocess.call(cmd, cwd=root)
    if code and check:
        raise FissureError(f"{what} failed (exit {code}): `{' '.join(cmd)}`")
    return code


def latest_versions(names: list[str]) -> dict[str, int]:
    """Highest registered version per model (0 when none)."""
    from fissure.training.tracking import mlflow_client

    client = mlflow_client().MlflowClient()
    out = {}
    for name in names:
        found = client.search_model_versions(f"name = '{name}'")
        out[name] = max((int(v.version) for v in found), default=0)
    return out


def judged_feedback(folder: Path) -> int:
    """Items in a feedback export (its manifest), 0 when there is none."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return 0
    items = manifest.get("items")
    return len(items) if isinstance(items, list) else int(manifest.get("count", 0) or 0)


def trained_on_feedback(names: list[str]) -> int:
    """The largest ``feedback.items`` lineage tag of any registered version: what the last run used."""
    from fissure.training.tracking import mlflow_client

    client = mlflow_client().MlflowClient()
    best = 0
    for name in names:
        for v in client.search_model_versions(f"name = '{name}'"):
            try:
                best = max(best, int((v.tags or {}).get("feedback.items", 0)))
            except ValueError:
                continue
    return best


def gate(model: str, version: str | None, policy: GatePolicy, root: Path, gate_data: Path | None = None,
         feedback_data: Path | None = None, echo: Callable[[str], object] = print) -> GateDecision:
    """Run the offline gate on ``model`` (version, else its ``challenger``) against its champion and
    record the decision in MLflow."""
    from fissure.promotion.controller import CHALLENGER, CHAMPION, Registry

    if model not in TASK_OF:
        raise FissureError(f"unknown model {model!r}; choose one of {', '.join(TASK_OF)}")
    task = TASK_OF[model]
    registry = Registry()  # MLflow's not-found -> NotFoundError, its outages -> Unavailable
    challenger = registry.ref(model, version=version) if version else registry.ref(model, CHALLENGER)
    try:
        champ = registry.ref(model, CHAMPION).version
    except NotFoundError:  # no champion yet: the gate applies its floor
        champ = None
    if champ == challenger.version:
        champ = None  # the first version is both; it is judged against the floor
    gate_data = Path(gate_data) if gate_data else root / GATE_DATA[task]
    feedback_data = Path(feedback_data) if feedback_data else root / FEEDBACK_DATA[task]
    if not gate_data.is_dir():
        raise FissureError(f"gate set {gate_data} not found; run `dvc repro` (prepare) or pass --gate-data")
    echo(f">> gate: {model} v{challenger.version} vs " + (f"champion v{champ}" if champ else "the floor (no champion)")
         + f" on {gate_data}")
    decision = run_gate(model, challenger.uri, f"models:/{model}/{champ}" if champ else None,
                        gate_data, feedback_data if feedback_data.exists() else None, policy)
    record(decision, registry.client)
    for c in decision.checks:
        echo(f"   {'ok  ' if c.passed else 'FAIL'} {c.name:<9} {c.reason}")
    echo(f">> gate {'passed' if decision.passed else 'REFUSED'}: {model} v{challenger.version}")
    return decision


def retrain(root: Path, models: list[str], policy: GatePolicy, min_feedback: int = 0, export: bool = True,
            echo: Callable[[str], object] = print) -> RetrainResult:
    unknown = [m for m in models if m not in TASK_OF]
    if unknown:
        raise FissureError(f"unknown model(s) {unknown}; choose from {', '.join(TASK_OF)}")
    fissure, dvc = _tool("fissure"), _tool("dvc")
    feedback = root / "data" / "feedback"
    if export:
        _run([fissure, "feedback", "export", "--out", str(feedback)], root, echo, "the feedback export")
    if min_feedback:
        have, used = judged_feedback(feedback), trained_on_feedback(models)
        if have - used < min_feedback:
            return RetrainResult(skipped=f"{have - used} new judged feedback items since the last training "
                                         f"(of {have}); --min-feedback is {min_feedback}")
        echo(f">> {have - used} new judged feedback items (>= {min_feedback}): retraining")
    before = latest_versions(models)
    remote = subprocess.run([dvc, "remote", "list"], cwd=root, capture_output=True, text=True).stdout.strip()
    if remote:
        _run([dvc, "pull", "--allow-missing"], root, echo, "dvc pull", check=False)  # a first run has nothing
    # only what the asked models need (prepare and their training stages); all of them: the whole
    # pipeline, evaluation included
    from fissure.stack import TRAIN_STAGE

    targets = [] if set(models) >= set(TRAIN_STAGE) else [TRAIN_STAGE[m] for m in models]
    _run([dvc, "repro", *targets], root, echo, "`dvc repro`")
    if remote:
        _run([dvc, "push"], root, echo, "dvc push")
    after = latest_versions(models)
    result = RetrainResult()
    for model in models:
        if after[model] <= before[model]:
            echo(f">> {model}: no new version (its stage was up to date)")
            continue
        result.new_versions[model] = str(after[model])
        result.decisions[model] = gate(model, str(after[model]), policy, root, echo=echo)
    if not result.new_versions:
        result.skipped = "the pipeline was up to date: nothing new to train on"
    return result
