"""The local Prometheus of ``fissure up``: what it scrapes, its generated config, the rules.

Debian's ``prometheus`` package (``make prometheus`` installs it when run as root). ``fissure up``
writes ``.fissure/prometheus.yml`` from :func:`targets`, the one list of what the stack exposes
on ``/metrics``, and runs Prometheus under honcho with its storage in ``.fissure/prometheus/``.
Every target carries the static label ``namespace="local"`` (in a cluster the PodMonitor's
namespace fills that label), so the rules and dashboards select the same way in both places.
The rules are the chart's own file, ``charts/fissure/files/prometheus/rules.yaml``.

Nothing here imports the serving front or the API: the stack only launches processes.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import yaml

from fissure.errors import ServerError, Unavailable, UsageError

if TYPE_CHECKING:
    from fissure.stack import StackOptions

NAMESPACE = "local"
SCRAPE_INTERVAL = "5s"
EVALUATION_INTERVAL = "5s"
SCRAPE_TIMEOUT = "4s"  # must not exceed the interval
RETENTION = "15d"
RULES_FILE = Path("charts") / "fissure" / "files" / "prometheus" / "rules.yaml"
DEBIAN_BINARY = "/usr/bin/prometheus"
INSTALL_HINT = ("Prometheus is not installed, so the stack starts without it: `make prometheus` "
                "(or `apt-get install prometheus`) adds it")


@dataclass(frozen=True)
class Target:
    """One thing Prometheus scrapes: ``job`` names the component (the ``job`` label)."""

    job: str
    address: str  # host:port as Prometheus dials it
    what: str
    path: str = "/metrics"


def targets(opts: StackOptions) -> list[Target]:
    """What the local stack exposes to Prometheus: the one list the config is generated from."""
    from fissure.stack import _url_host, client_host, ts_port

    host = _url_host(client_host(opts.host))
    found = [Target("fissure-front", f"{host}:{opts.http_port}", "the inference front (REST and gRPC counted)"),
             Target("fissure-api", f"{host}:{opts.api_port}", "the feedback API")]
    if opts.runtime == "torchserve":
        found.append(Target("torchserve", f"{host}:{ts_port('torchserve_metrics')}", "TorchServe's own metrics"))
    found.append(Target("prometheus", f"{host}:{opts.prometheus_port}", "Prometheus itself"))
    return found


def config(scrape: list[Target], rule_files: list[Path] = (), scrape_interval: str = SCRAPE_INTERVAL,
           evaluation_interval: str = EVALUATION_INTERVAL, scrape_timeout: str = SCRAPE_TIMEOUT) -> dict:
    """A prometheus.yml: one scrape job per target, each labelled ``namespace="local"``."""
    return {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_timeout,
                   "evaluation_interval": evaluation_interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": t.job, "metrics_path": t.path,
             "static_configs": [{"targets": [t.address], "labels": {"namespace": NAMESPACE}}]}
            for t in scrape
        ],
    }


def rules_file(root: Path) -> Path | None:
    """The chart's rule file: the project's at ``root``, else that of the checkout fissure is
    installed from (editable installs: a pipeline copied elsewhere keeps its rules); None when
    neither has one (a wheel without the chart: Prometheus then only scrapes)."""
    for base in (root, Path(__file__).resolve().parents[3]):
        path = base / RULES_FILE
        if path.is_file():
            return path
    return None


def write_config(path: Path, scrape: list[Target], rule_files: list[Path] = (), **intervals) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config(scrape, rule_files, **intervals), sort_keys=False)
    path.write_text("# written by `fissure up` from fissure.observability.prometheus.targets(); do not edit\n" + text)
    return path


def find() -> str | None:
    """The prometheus binary: on the PATH, else Debian's."""
    found = shutil.which("prometheus")
    if found:
        return found
    return DEBIAN_BINARY if Path(DEBIAN_BINARY).is_file() else None


def command(binary: str, config_path: Path, storage: Path, listen: str, retention: str = RETENTION) -> list[str]:
    """Prometheus's command line; ``listen`` is host:port (IPv6 hosts in brackets). No lifecycle or
    admin API: on a stack open to the network anyone could stop it or delete its data."""
    return [binary, f"--config.file={config_path}", f"--storage.tsdb.path={storage}",
            f"--storage.tsdb.retention.time={retention}", f"--web.listen-address={listen}", "--log.level=warn"]


def procfile_line(binary: str, config_path: Path, storage: Path, listen: str) -> str:
    return "prometheus: exec " + shlex.join(command(binary, config_path, storage, listen))


# --- the rules' series --------------------------------------------------------------------
# A small PromQL lexer, enough to list the series an expression selects: identifiers that are
# not functions, keywords, label names or durations.

_TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<punct>[(){}\[\],@]|=~|!~|==|!=|<=|>=|[-+*/%^<>=])
""", re.VERBOSE)
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _LABEL_LISTS | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (``fissure_requests_total``, ...)."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read PromQL at {pos}: {expr[pos:pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "space":
            tokens.append((m.lastgroup, m.group()))
    names: set[str] = set()
    braces = brackets = 0
    label_list = 0  # parentheses open inside a `by (...)`-like label list, 0 outside
    opens_list = False  # the last token was by/on/... and a "(" follows
    for i, (kind, text) in enumerate(tokens):
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "punct":
            if text == "{":
                braces += 1
            elif text == "}":
                braces -= 1
            elif text == "[":
                brackets += 1
            elif text == "]":
                brackets -= 1
            elif text == "(" and (opens_list or label_list):
                label_list += 1
            elif text == ")" and label_list:
                label_list -= 1
            opens_list = False
            continue
        opens_list = False
        if kind != "ident" or braces or brackets or label_list:
            continue
        if text.lower() in _KEYWORDS:
            opens_list = text in _LABEL_LISTS and nxt == "("
            continue
        if nxt == "(" or nxt in ("by", "without"):
            continue  # a function or an aggregation
        names.add(text)
    return names


# ---------------------------------------------------------------------------- queries


@dataclass
class Series:
    labels: dict
    t: list  # unix seconds
    v: list  # floats (NaN where Prometheus had no sample)
    name: str = ""


class Prometheus:
    """Prometheus's two query endpoints (those Grafana uses), over httpx, for the dashboard
    pictures and the canary analysis: unreachable or failing -> :class:`Unavailable`, a query it
    rejects (400/422) -> :class:`ServerError`; one line each."""

    def __init__(self, url: str, timeout: float = 15.0):
        if not re.match(r"^https?://[^/\s]+", url or ""):
            raise UsageError(f"the Prometheus URL must be http(s)://host:port, not {url!r}")
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self):
        self.client.close()

    def _get(self, path: str, params: dict):
        try:
            response = self.client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise Unavailable(f"Prometheus at {self.url} is unreachable ({type(exc).__name__}: {exc})") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or body.get("status") != "success":
            error = body.get("error") or f"HTTP {response.status_code}"
            if response.status_code in (400, 422):
                raise ServerError(str(error).splitlines()[0])
            raise Unavailable(f"Prometheus at {self.url} answered {path} with {error}".splitlines()[0])
        return body["data"]

    def check(self) -> None:
        self._get("/api/v1/query", {"query": "1"})

    def range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        data = self._get("/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})
        out = []
        for item in data.get("result") or []:
            values = item.get("values") or []
            out.append(Series(item.get("metric") or {}, [float(t) for t, _ in values], [float(v) for _, v in values]))
        return out

    def instant(self, expr: str, at: float) -> list[Series]:
        data = self._get("/api/v1/query", {"query": expr, "time": at})
        if data.get("resultType") == "scalar":
            t, v = data["result"]
            return [Series({}, [float(t)], [float(v)])]
        return [Series(item.get("metric") or {}, [float(item["value"][0])], [float(item["value"][1])])
                for item in data.get("result") or []]
