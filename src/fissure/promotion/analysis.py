"""A canary step's evidence: the challenger against the champion over one window, from Prometheus.

Every check compares the two versions of one model served side by side over the same window
(error ratio, p95 latency, class mix, confidence histogram, feedback disagreement), so a busy or
quiet period moves both alike. Each check keeps its numbers and the PromQL it ran, for the audit
trail and the Argo outputs. Verdict: ``insufficient`` when either version answered fewer than
``min_requests`` in the window (a quiet period never passes a step), else ``fail`` when any
check fails, else ``pass``. All series names come from :mod:`fissure.observability.catalog`.
"""

from __future__ import annotations

import math
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fissure.errors import ServerError, Unavailable
from fissure.observability import catalog
from fissure.observability.prometheus import Prometheus

Verdict = Literal["pass", "fail", "insufficient"]


class StepPolicy(BaseModel):
    """Thresholds of one canary step (a params.yaml block)."""

    model_config = ConfigDict(extra="forbid")

    min_requests: int = Field(100, ge=1, description="requests each version must answer in the window")
    max_error_ratio_increase: float = Field(0.005, ge=0, description="5xx ratio over the champion's, absolute")
    latency_quantile: float = Field(0.95, gt=0, lt=1)
    max_latency_ratio: float = Field(1.25, ge=1, description="challenger quantile <= champion's x this + slack")
    latency_slack_seconds: float = Field(0.010, ge=0)
    max_class_shift: float = Field(0.1, ge=0, le=1, description="total-variation distance of the predicted labels")
    # a classifier retrained on more data moved its confidence histogram by 0.43-0.48 from its
    # champion's (make bench-promotion, docs/benchmarks.md): 0.1 rolled every such one back; 0.5
    # still catches a collapse (all answers unsure, or all certain)
    max_confidence_shift: float = Field(0.5, ge=0, le=1,
                                        description="total-variation distance of the confidence histograms")
    min_verdicts: int = Field(30, ge=1, description="feedback verdicts each version needs for the disagreement check")
    max_disagreement_increase: float = Field(0.05, ge=0, description="wrong/judged over the champion's, absolute")


class Check(BaseModel):
    name: str
    value: float | None  # None: no data (see passed)
    threshold: float | None
    passed: bool | None  # None: skipped (feedback check without enough verdicts)
    detail: str = ""
    promql: dict[str, str] = {}


class StepResult(BaseModel):
    model: str
    champion_version: str
    challenger_version: str
    window: str
    evaluated_at: float  # unix time every query was evaluated at
    verdict: Verdict
    checks: list[Check]

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _selector(namespace: str, model: str, version: str, extra: str = "") -> str:
    sel = f'namespace=~"{_escape(namespace)}", model="{_escape(model)}", version="{_escape(version)}"'
    return "{" + sel + (", " + extra if extra else "") + "}"


class _Queries:
    """Instant queries at one evaluation time, over :class:`fissure.observability.prometheus.Prometheus`."""

    def __init__(self, url: str, at: float, timeout: float):
        self.prom, self.at = Prometheus(url, timeout), at

    def query(self, promql: str) -> list[tuple[dict, float]]:
        try:
            return [(s.labels, s.v[0]) for s in self.prom.instant(promql, self.at)]
        except ServerError as exc:  # a rejected query stops the step like an outage: nothing to judge on
            raise Unavailable(f"Prometheus at {self.prom.url} refused a query ({exc}): {promql}") from None

    def scalar(self, promql: str) -> float | None:
        found = self.query(promql)
        if not found or math.isnan(found[0][1]):
            return None
        return found[0][1]


def _tvd(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Total-variation distance of two count distributions (0 same mix, 1 disjoint)."""
    ta, tb = sum(a.values()), sum(b.values())
    if ta <= 0 or tb <= 0:
        return None
    return 0.5 * sum(abs(a.get(k, 0.0) / ta - b.get(k, 0.0) / tb) for k in set(a) | set(b))


def _bins(cumulative: list[tuple[dict, float]]) -> dict[str, float]:
    """Per-bucket counts from a histogram's cumulative ``le`` buckets."""
    ordered = sorted(((float(m["le"]), v) for m, v in cumulative), key=lambda p: p[0])
    out, below = {}, 0.0
    for le, v in ordered:
        out[str(le)] = max(v - below, 0.0)
        below = max(v, below)
    return out


def analyse(prometheus_url: str, model: str, champion_version: str, challenger_version: str,
            window: str = "5m", policy: StepPolicy | None = None, namespace: str = ".*",
            at: float | None = None, timeout: float = 10.0) -> StepResult:
    """Judge one canary step; raises :class:`fissure.errors.Unavailable` when Prometheus is down
    or refuses a query (the controller then stops in a known state)."""
    policy = policy or StepPolicy()
    prom = _Queries(prometheus_url, time.time() if at is None else at, timeout)
    versions = {"champion": champion_version, "challenger": challenger_version}
    sel = {role: _selector(namespace, model, v) for role, v in versions.items()}
    w = f"[{window}]"
    checks: list[Check] = []
    try:
        # traffic
        q = {r: f"sum(increase({catalog.REQUESTS.series}{sel[r]}{w}))" for r in versions}
        got = {r: prom.scalar(q[r]) or 0.0 for r in versions}
        enough = min(got.values()) >= policy.min_requests
        checks.append(Check(name="traffic", value=min(got.values()), threshold=policy.min_requests, passed=enough,
                            detail=f"champion {got['champion']:.0f}, challenger {got['challenger']:.0f} requests",
                            promql=q))

        # errors: 5xx share; no 5xx series at all means none
        five = 'code=~"5.."'
        q = {r: (f"(sum(rate({catalog.REQUESTS.series}"
                 f"{_selector(namespace, model, versions[r], five)}{w})) or vector(0))"
                 f" / sum(rate({catalog.REQUESTS.series}{sel[r]}{w}))") for r in versions}
        got = {r: prom.scalar(q[r]) for r in versions}
        if None in got.values():
            checks.append(Check(name="error_ratio", value=None, threshold=policy.max_error_ratio_increase,
                                passed=False, detail="no requests", promql=q))
        else:
            rise = got["challenger"] - got["champion"]
            checks.append(Check(name="error_ratio", value=rise, threshold=policy.max_error_ratio_increase,
                                passed=rise <= policy.max_error_ratio_increase,
                                detail=f"champion {got['champion']:.4f}, challenger {got['challenger']:.4f}",
                                promql=q))

        # latency
        q = {r: (f"histogram_quantile({policy.latency_quantile}, sum by (le) "
                 f"(rate({catalog.LATENCY.name}_bucket{sel[r]}{w})))") for r in versions}
        got = {r: prom.scalar(q[r]) for r in versions}
        if None in got.values():
            checks.append(Check(name="latency", value=None, threshold=None, passed=False,
                                detail="no latency histogram", promql=q))
        else:
            limit = got["champion"] * policy.max_latency_ratio + policy.latency_slack_seconds
            checks.append(Check(name="latency", value=got["challenger"], threshold=limit,
                                passed=got["challenger"] <= limit,
                                detail=f"p{policy.latency_quantile * 100:g} champion {got['champion']:.4f} s, "
                                       f"challenger {got['challenger']:.4f} s", promql=q))

        # class mix
        q = {r: f"sum by (label) (increase({catalog.PREDICTIONS.series}{sel[r]}{w}))" for r in versions}
        got = {r: {m.get("label", ""): v for m, v in prom.query(q[r]) if not math.isnan(v)} for r in versions}
        shift = _tvd(got["champion"], got["challenger"])
        checks.append(Check(name="class_mix", value=shift, threshold=policy.max_class_shift,
                            passed=shift is not None and shift <= policy.max_class_shift,
                            detail="total-variation distance of predicted labels" if shift is not None
                            else "no predictions", promql=q))

        # confidence histogram
        q = {r: f"sum by (le) (increase({catalog.CONFIDENCE.name}_bucket{sel[r]}{w}))" for r in versions}
        got = {r: _bins([(m, v) for m, v in prom.query(q[r]) if not math.isnan(v)]) for r in versions}
        shift = _tvd(got["champion"], got["challenger"])
        checks.append(Check(name="confidence", value=shift, threshold=policy.max_confidence_shift,
                            passed=shift is not None and shift <= policy.max_confidence_shift,
                            detail="total-variation distance of confidence histograms" if shift is not None
                            else "no confidences", promql=q))

        # feedback: only judged when both versions have enough verdicts
        q = {r: f"sum by (verdict) (increase({catalog.FEEDBACK.series}{sel[r]}{w}))" for r in versions}
        got = {r: {m.get("verdict", ""): v for m, v in prom.query(q[r]) if not math.isnan(v)} for r in versions}
        judged = {r: sum(got[r].get(v, 0.0) for v in catalog.VERDICTS) for r in versions}
        if min(judged.values()) < policy.min_verdicts:
            checks.append(Check(name="disagreement", value=None, threshold=policy.max_disagreement_increase,
                                passed=None, detail=f"skipped: under {policy.min_verdicts} verdicts "
                                                    f"(champion {judged['champion']:.0f}, "
                                                    f"challenger {judged['challenger']:.0f})", promql=q))
        else:
            ratio = {r: got[r].get("wrong", 0.0) / judged[r] for r in versions}
            rise = ratio["challenger"] - ratio["champion"]
            checks.append(Check(name="disagreement", value=rise, threshold=policy.max_disagreement_increase,
                                passed=rise <= policy.max_disagreement_increase,
                                detail=f"wrong/judged champion {ratio['champion']:.3f}, "
                                       f"challenger {ratio['challenger']:.3f}", promql=q))
    finally:
        prom.prom.close()

    if not enough:
        verdict: Verdict = "insufficient"
    elif any(c.passed is False for c in checks):
        verdict = "fail"
    else:
        verdict = "pass"
    return StepResult(model=model, champion_version=champion_version, challenger_version=challenger_version,
                      window=window, evaluated_at=prom.at, verdict=verdict, checks=checks)
