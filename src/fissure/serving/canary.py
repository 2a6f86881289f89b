"""The front's canary: a challenger version served beside the champion, with a share of the
model's requests routed to it (the local stack's counterpart of KServe's canaryTrafficPercent).

What to serve comes from a routing file (JSON, :class:`Routing`), written only by the local
actuator (:mod:`fissure.promotion.local`) and given to ``fissure serve --routing-file``. The front
polls it once a second; per model it may name

- ``challenger`` (a packaged MAR and its version) and ``percent``, the challenger's share;
- ``champion``: a MAR that replaces the version the front started with (a promotion); when it is
  the challenger being served, that warm instance simply becomes the champion;
- ``fault``: delay or abort a share of the challenger's requests (chaos tests of the rollback
  path, like an Istio fault; never the champion's).

Requests pick a version once, when the model is looked up (:meth:`TrafficSplit.pick`); a request
for an explicit version (``/v2/models/<m>/versions/<v>/infer``) gets that version. A file that
cannot be read or parsed, or a challenger that fails to load, leaves the last good routing in
place and is logged: the champion keeps its traffic.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fissure.errors import NotFoundError, ServerError

log = logging.getLogger("fissure.serve")
POLL_SECONDS = 1.0
RETIRE_AFTER_SECONDS = 30.0  # in-flight requests of a replaced version finish before it closes

# the version a request asked for explicitly (REST path or gRPC model_version), read by pick()
PINNED_VERSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("fissure_pinned_version", default=None)


class Served(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1)
    mar: Path


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid")
    abort_percent: float = Field(0.0, ge=0, le=100, description="share of the challenger's requests answered 500")
    delay_ms: float = Field(0.0, ge=0, le=60_000, description="added before each challenger request")


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid")
    champion: Served | None = None
    challenger: Served | None = None
    percent: int = Field(0, ge=0, le=100)
    fault: Fault | None = None


class Routing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: dict[str, Route] = {}

    @classmethod
    def read(cls, path: Path) -> "Routing":
        return cls.model_validate_json(path.read_bytes()) if path.exists() else cls()


class InjectedFault(ServerError):
    pass


async def inject(fault: Fault | None, rng: Callable[[], float] = random.random) -> None:
    if fault is None:
        return
    if fault.delay_ms:
        await asyncio.sleep(fault.delay_ms / 1000)
    if fault.abort_percent and rng() * 100 < fault.abort_percent:
        raise InjectedFault("fault injected into the canary (routing file 'fault'): request aborted")


class TrafficSplit:
    """Which version of a model answers a request. ``registry``: the front's kserve
    ModelRepository (it holds the champions); ``loader(name, mar)`` builds a FrontModel from a
    MAR (blocking: it runs in a thread); ``path``: the routing file (None: champions only, and
    explicit versions still checked); ``metrics``: the front's FrontMetrics or None."""

    def __init__(self, registry, loader: Callable[[str, Path], object] | None, path: Path | None,
                 metrics=None, rng: Callable[[], float] = random.random):
        self.registry = registry
        self.loader = loader
        self.path = Path(path) if path else None
        self.metrics = metrics
        self.rng = rng
        self.challengers: dict[str, object] = {}
        self.percent: dict[str, int] = {}
        self._seen: tuple | None = None
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ requests
    def pick(self, name: str):
        """The model that answers this request (None: no such model)."""
        primary = self.registry.get_model(name)
        challenger = self.challengers.get(name)
        pinned = PINNED_VERSION.get()
        if pinned is not None:
            for m in (primary, challenger):
                if m is not None and m.version == pinned:
                    return m
            served = [m.version for m in (primary, challenger) if m is not None]
            raise NotFoundError(f"model {name!r} version {pinned!r} is not served (serving {', '.join(served)})")
        share = self.percent.get(name, 0)
        if challenger is not None and share and (share >= 100 or self.rng() * 100 < share):
            return challenger
        return primary

    def versions(self, name: str) -> tuple[list[str], int]:
        """(served versions, champion first; the challenger's percent) for metadata."""
        primary = self.registry.get_model(name)
        challenger = self.challengers.get(name)
        versions = [m.version for m in (primary, challenger) if m is not None]
        return versions, self.percent.get(name, 0) if challenger is not None else 0

    # ------------------------------------------------------------------ the routing file
    async def watch(self) -> str | None:
        """Poll the routing file for as long as the front runs (a FrontServer background task)."""
        while True:
            await self.refresh()
            await asyncio.sleep(POLL_SECONDS)

    async def refresh(self) -> None:
        try:
            st = self.path.stat()
            seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            seen = None
        if seen == self._seen:
            return
        try:
            routing = Routing.read(self.path)
        except (OSError, ValueError, ValidationError) as exc:
            log.error("routing file %s unreadable, keeping the current routing: %s", self.path,
                      str(exc).splitlines()[0])
            self._seen = seen
            return
        self._seen = seen
        await self.apply(routing)

    async def apply(self, routing: Routing) -> None:
        for name in list(self.registry.get_models()):
            route = routing.models.get(name, Route())
            try:
                await self._apply(name, route)
            except Exception as exc:  # noqa: BLE001 - a bad challenger must not take the champion down
                log.error("model %s: routing not applied (%s); champion keeps its traffic", name, exc)
                self.percent[name] = 0

    async def _apply(self, name: str, route: Route) -> None:
        primary = self.registry.get_model(name)
        current = self.challengers.get(name)
        # promotion: the new champion replaces the primary (the warm challenger when it is the one)
        if route.champion is not None and route.champion.version != primary.version:
            if current is not None and current.version == route.champion.version:
                new = self.challengers.pop(name)
                self.percent[name] = 0
                current = None
            else:
                new = await self._load(name, route.champion.mar, route.champion.version)
            new.role = "champion"
            new.fault = None
            if self.metrics is not None:
                self.metrics.set_primary(new)
            self.registry.update(new)
            log.info("model %s: champion is now version %s (was %s)", name, new.version, primary.version)
            self._retire(primary)
        # the challenger
        want = route.challenger
        if current is not None and (want is None or want.version != current.version):
            self.percent[name] = 0
            del self.challengers[name]
            log.info("model %s: challenger version %s removed", name, current.version)
            self._retire(current)
            current = None
        if want is not None and current is None:
            if want.version == self.registry.get_model(name).version:
                raise ValueError(f"challenger version {want.version} is the champion's")
            current = await self._load(name, want.mar, want.version)
            current.role = "challenger"
            if self.metrics is not None:
                current.attach(self.metrics.add_model(current, primary=False))
            self.challengers[name] = current
            log.info("model %s: challenger version %s loaded", name, current.version)
        if current is not None:
            current.fault = route.fault
            if self.percent.get(name) != route.percent:
                log.info("model %s: challenger version %s gets %d%% of requests", name, current.version, route.percent)
            self.percent[name] = route.percent

    async def _load(self, name: str, mar: Path, version: str):
        model = await asyncio.to_thread(self.loader, name, Path(mar))
        if model.version != version:
            raise ValueError(f"{mar} holds version {model.version}, the routing file says {version}")
        model.ready = True
        return model

    def _retire(self, model) -> None:
        async def later():
            await asyncio.sleep(RETIRE_AFTER_SECONDS)
            if self.metrics is not None:
                self.metrics.remove_model(model)
            close = getattr(model, "close", None)
            if close is not None:
                await close()

        task = asyncio.ensure_future(later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
