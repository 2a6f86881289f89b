"""docs/observability.md stays true to the code: every alert's runbook anchor is a heading there,
and every metric of the catalogue is described."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from fissure.observability import catalog

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "observability.md").read_text()
RULES = yaml.safe_load((REPO / "charts/fissure/files/prometheus/rules.yaml").read_text())


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def test_every_runbook_anchor_is_a_heading():
    anchors = {_anchor(h) for h in re.findall(r"^#{2,4} (.+)$", DOC, flags=re.M)}
    urls = [r["annotations"]["runbook_url"] for g in RULES["groups"] for r in g["rules"] if "alert" in r]
    missing = sorted({u.split("#", 1)[1] for u in urls} - anchors)
    assert urls and not missing, missing


def test_every_catalogue_metric_is_described():
    shown = set(re.findall(r"`(fissure_[a-z_]+)", DOC))
    missing = [m.series for m in catalog.ALL if m.series not in shown]
    assert not missing, missing
