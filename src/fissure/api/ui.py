"""The web UI's pages: server-rendered shells that call the JSON API from the browser.

The pages need no token (the brief's contract): the person's token lives in the browser
(localStorage) and the page's script sends it as ``Authorization: Bearer`` on every API call,
so everything shown comes from the same endpoints a script would use. What the server decides
is rendered here: the model list, the filters from the query string, the links to MLflow,
Prometheus, Grafana and Argo (shown only when their ``FISSURE_*_URL`` is set).

Static files are served by a route over the fixed list of files shipped beside this module
(a list cannot be walked out of), each under a content-hash URL so browsers may keep it for
good. Every page carries a strict Content-Security-Policy: no inline script, no third-party
origin, so a stored token cannot be read by anything the page did not ship.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

from fissure import MODEL_NAMES
from fissure.errors import NotFoundError
from fissure.settings import Settings, settings

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}
# name -> short content hash, for cache-busting URLs (?v=) that can then be cached for a long time
STATIC = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12]
          for p in sorted(STATIC_DIR.iterdir()) if p.suffix in STATIC_TYPES}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# (label, settings field) of the outside tools the header links to when configured
TOOL_LINKS = (("MLflow", "mlflow_url"), ("Prometheus", "prometheus_url"),
              ("Grafana", "grafana_url"), ("Argo", "argo_url"))
VERDICTS = ("correct", "wrong", "none")

templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)


def _settings(request: Request) -> Settings:
    """The app's own settings when create_app was given some, else the process's."""
    return getattr(request.app.state, "settings", None) or settings()


def _page(request: Request, template: str, active: str, **context) -> HTMLResponse:
    cfg = _settings(request)
    base = request.scope.get("root_path", "").rstrip("/")
    links = [(label, url) for label, field in TOOL_LINKS if (url := getattr(cfg, field))]
    response = templates.TemplateResponse(request, template, {
        "base": base, "active": active, "models": list(MODEL_NAMES.values()), "tool_links": links,
        "mlflow_url": (cfg.mlflow_url or "").rstrip("/"), "static": STATIC, **context})
    response.headers.update(SECURITY_HEADERS)
    return response


@router.get("/", response_class=HTMLResponse)
def predict_page(request: Request):
    return _page(request, "predict.html", "predict")


@router.get("/history", response_class=HTMLResponse)
def history_page(request: Request):
    q = request.query_params
    filters = {key: q.get(key, "") for key in ("model", "version", "verdict", "since", "until")}
    if filters["verdict"] not in VERDICTS:
        filters["verdict"] = ""
    if filters["model"] not in MODEL_NAMES.values():
        filters["model"] = ""
    return _page(request, "history.html", "history", filters=filters, verdicts=VERDICTS)


@router.get("/review", response_class=HTMLResponse)
def review_page(request: Request):
    model = request.query_params.get("model", "")
    return _page(request, "review.html", "review", model=model if model in MODEL_NAMES.values() else "")


@router.get("/p/{prediction_id}", response_class=HTMLResponse)
def prediction_page(request: Request, prediction_id: str):
    return _page(request, "prediction.html", "", prediction_id=prediction_id)


@router.get("/static/{name}")
def static_file(name: str):
    if name not in STATIC:
        raise NotFoundError(f"no static file {name!r}")
    path = STATIC_DIR / name
    return FileResponse(path, media_type=STATIC_TYPES[path.suffix],
                        headers={"Cache-Control": "public, max-age=31536000, immutable",
                                 "X-Content-Type-Options": "nosniff"})
