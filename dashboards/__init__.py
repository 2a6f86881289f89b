"""fissure's Grafana dashboards as code (grafana-foundation-sdk), exported to committed JSON.

``python -m dashboards`` (``make dashboards``) writes ``charts/fissure/files/dashboards/<uid>.json``;
``python -m dashboards --check`` fails when the committed JSON is not what this source builds.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "charts" / "fissure" / "files" / "dashboards"


def builders():
    """uid -> a function that builds that dashboard (imported here so that a typo fails loudly)."""
    from dashboards import canary, model_health, pipeline, service

    return {m.UID: m.build for m in (service, model_health, canary, pipeline)}


def render() -> dict[str, str]:
    """file name -> JSON text, exactly as committed (sorted keys: a diff shows what changed)."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    return {f"{uid}.json": json.dumps(build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
            for uid, build in builders().items()}


def stale(out: Path = OUT) -> list[str]:
    """Names of the files under ``out`` that differ from the source (missing, changed or extra)."""
    want = render()
    have = {p.name for p in out.glob("*.json")} if out.is_dir() else set()
    changed = [name for name, text in want.items()
               if not (out / name).is_file() or (out / name).read_text() != text]
    return sorted(changed + sorted(have - set(want)))


def write(out: Path = OUT) -> list[Path]:
    """Write every dashboard under ``out``; remove JSON files no dashboard builds any more."""
    out.mkdir(parents=True, exist_ok=True)
    want = render()
    for path in out.glob("*.json"):
        if path.name not in want:
            path.unlink()
    written = []
    for name, text in want.items():
        path = out / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written
