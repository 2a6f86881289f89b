"""The dashboards outside Grafana: their queries as plain PromQL, and a Grafana provisioning.

:func:`panel_queries` reads an exported dashboard (``charts/fissure/files/dashboards/*.json``) and
expands Grafana's variables the way Grafana would, so that each panel's PromQL can run against a
plain Prometheus (the end-to-end test, :mod:`fissure.observability.pictures`). :func:`provision`
writes what ``grafana-server`` needs to start with the Prometheus data source and these
dashboards, for machines where Grafana is installed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Mapping

import yaml

from fissure.errors import UsageError

REPO = Path(__file__).resolve().parents[3]
DASHBOARDS = REPO / "charts" / "fissure" / "files" / "dashboards"

# Grafana's built-in variables, as Grafana would fill them for a one-hour range at 5 s scrapes.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
ALL = ".*"  # what the dashboards' query variables send for "All" (their allValue)

# $name, ${name}, ${name:format}, [[name]] (Grafana's three spellings of a variable)
_VARIABLE = re.compile(r"\$\{(\w+)(?::[\w-]+)?\}|\[\[(\w+)(?::[\w-]+)?\]\]|\$(\w+)")


def load(dashboard: Mapping | str | Path) -> dict:
    """A dashboard as a dict, from a dict, a JSON file's path or JSON text."""
    if isinstance(dashboard, Mapping):
        return dict(dashboard)
    text = str(dashboard)
    if isinstance(dashboard, Path) or not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise UsageError(f"no dashboard JSON at {path}")
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"dashboard is not JSON: {exc}") from None
    if not isinstance(data, dict) or "panels" not in data:
        raise UsageError("dashboard JSON has no panels")
    return data


def dashboard_files(folder: str | Path = DASHBOARDS) -> list[Path]:
    return sorted(Path(folder).glob("*.json"))


def default_variables(dashboard: Mapping) -> dict[str, str]:
    """Each templating variable's value when nobody picks one: All (``.*``) for query variables,
    the default text for text boxes and constants, the current option for custom ones."""
    out: dict[str, str] = {}
    for var in (dashboard.get("templating") or {}).get("list") or []:
        name, kind = var.get("name"), var.get("type")
        if kind in ("query", "datasource"):
            out[name] = (var.get("allValue") or ALL) if kind == "query" else ""
        elif kind in ("textbox", "constant"):
            out[name] = str(var.get("query") or "")
        else:
            current = (var.get("current") or {}).get("value")
            out[name] = current[0] if isinstance(current, list) and current else str(current or "")
    return out


def expand(text: str, values: Mapping[str, str], where: str = "query") -> str:
    """Replace every ``$var``, ``${var}``, ``${var:fmt}`` and ``[[var]]`` with its value."""

    def sub(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name.isdigit():  # label_replace's "$1" is PromQL's, not a variable
            return match.group(0)
        if name not in values:
            raise UsageError(f"{where}: unknown variable ${name}")
        return str(values[name])

    return _VARIABLE.sub(sub, text)


def panels(dashboard: Mapping) -> Iterable[dict]:
    """Every panel that is not a row, in order; the panels of collapsed rows too."""
    for panel in dashboard.get("panels") or []:
        if panel.get("type") == "row":
            yield from panel.get("panels") or []
        else:
            yield panel


def panel_queries(dashboard_json: Mapping | str | Path,
                  variables: Mapping[str, str] | None = None) -> list[tuple[str, str, str, str]]:
    """``(dashboard title, panel title, refId, PromQL)`` of every visible target, variables expanded.

    Defaults: the dashboard's variables as nobody picked them (:func:`default_variables`: ``.*``
    for namespace, model and version) and :data:`BUILTINS` (``$__rate_interval`` = 1m,
    ``$__range`` = 1h ...); ``variables`` overrides any of them, e.g. ``{"model": "crack-classifier",
    "__range": "15m"}``. A variable the dashboard does not define is a :class:`UsageError`.
    """
    dashboard = load(dashboard_json)
    values = {**BUILTINS, **default_variables(dashboard), **(variables or {})}
    title = dashboard.get("title") or dashboard.get("uid") or "dashboard"
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets") or []:
            if target.get("hide") or not target.get("expr"):
                continue
            where = f"{title} / {panel.get('title')} / {target.get('refId')}"
            out.append((title, panel.get("title", ""), target.get("refId", ""),
                        expand(target["expr"], values, where)))
    return out


def provision(dir: str | Path, prometheus_url: str, *, dashboards: str | Path = DASHBOARDS,
              port: int = 3000) -> Path:
    """Write a Grafana configuration under ``dir`` and return the path of its ``grafana.ini``.

    - ``provisioning/datasources/fissure.yaml``: Prometheus at ``prometheus_url`` (uid
      ``prometheus``, the default data source, 5 s scrape interval as the local Prometheus);
    - ``provisioning/dashboards/fissure.yaml``: a file provider reading ``dashboards`` (the
      chart's exported JSON) into the folder fissure;
    - ``grafana.ini``: those paths, data and logs under ``dir``, ``port`` on loopback, anonymous
      viewers, the service overview as home page.

    Start it with ``grafana-server --homepath /usr/share/grafana --config DIR/grafana.ini``.
    """
    if not re.match(r"^https?://[^/\s]+", prometheus_url or ""):
        raise UsageError(f"Prometheus URL must be http(s)://host:port, not {prometheus_url!r}")
    root = Path(dir).resolve()
    dashboards = Path(dashboards).resolve()
    if not dashboard_files(dashboards):
        raise UsageError(f"no dashboard JSON in {dashboards} (run make dashboards)")
    prov = root / "provisioning"
    for sub in ("datasources", "dashboards", "plugins", "alerting", "notifiers"):
        (prov / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("data", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    datasources = {"apiVersion": 1, "datasources": [{
        "name": "Prometheus", "uid": "prometheus", "type": "prometheus", "access": "proxy",
        "url": prometheus_url.rstrip("/"), "isDefault": True, "editable": False,
        "jsonData": {"timeInterval": "5s", "httpMethod": "POST"},
    }]}
    providers = {"apiVersion": 1, "providers": [{
        "name": "fissure", "orgId": 1, "folder": "fissure", "type": "file",
        "disableDeletion": True, "allowUiUpdates": False, "updateIntervalSeconds": 10,
        "options": {"path": str(dashboards), "foldersFromFilesStructure": False},
    }]}
    (prov / "datasources" / "fissure.yaml").write_text(yaml.safe_dump(datasources, sort_keys=False))
    (prov / "dashboards" / "fissure.yaml").write_text(yaml.safe_dump(providers, sort_keys=False))

    home = dashboards / "fissure-service.json"
    ini = root / "grafana.ini"
    ini.write_text("\n".join([
        "; written by fissure.observability.grafana.provision",
        "[paths]", f"data = {root / 'data'}", f"logs = {root / 'logs'}", f"plugins = {root / 'data' / 'plugins'}",
        f"provisioning = {prov}",
        "[server]", "http_addr = 127.0.0.1", f"http_port = {int(port)}",
        "[auth.anonymous]", "enabled = true", "org_role = Viewer",
        "[analytics]", "reporting_enabled = false", "check_for_updates = false", "check_for_plugin_updates = false",
        "[news]", "news_feed_enabled = false",
        "[dashboards]", *([f"default_home_dashboard_path = {home}"] if home.is_file() else []),
        "",
    ]))
    return ini
