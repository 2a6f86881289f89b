"""Where a long stage is and how long it has left: synthesis, prepare, training, evaluation.

One :class:`Progress` per stage. On a terminal it draws a live ``rich`` bar; anywhere else (the
log of ``fissure up --detach``, a stage's output under ``dvc repro``, a pipe) it prints plain
lines instead, because a live bar there is a stream of carriage returns. A line reads::

    train crack-segmenter: epoch 12/40 loss 0.3124 val_loss 0.2870 val_dice 0.7102 best 11 elapsed 1m52s eta 4m10s

The ETA assumes the remaining steps take as long as the finished ones did on average (with
early stopping, training may end sooner).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import IO, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def duration(seconds: float) -> str:
    """``45s``, ``1m52s``, ``2h05m``."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _value(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def is_terminal(stream: IO) -> bool:
    """A live bar only where a person watches: a TTY that is not ``TERM=dumb``."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"
    except ValueError:  # a closed stream
        return False


class Progress:
    """Progress of one stage of ``total`` steps (epochs, images ...).

    ``enabled``: True shows a live bar on a terminal and plain lines elsewhere; None shows only
    the live bar (quiet when piped); False shows nothing. Plain lines come at each tenth of
    ``total`` and at the last step; with ``every``, every ``every`` steps and on a terminal too,
    above the bar (lines worth keeping, such as each epoch's metrics).
    """

    def __init__(self, name: str, total: int, *, unit: str = "items", every: int | None = None,
                 enabled: bool | None = True, stream: IO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.name, self.total, self.unit = name, max(int(total), 1), unit
        self.every = every or max(math.ceil(self.total / 10), 1)
        self.stream = stream if stream is not None else sys.stderr
        self.live = enabled is not False and is_terminal(self.stream)
        # who prints lines: plain output, or the live bar when asked for ``every``
        self.lines = (enabled is True and not self.live) or (self.live and every is not None)
        self.done, self.partial = 0, 0.0
        self.metrics: dict = {}  # of the last finished step
        self.running: dict = {}  # of the step under way (the live bar)
        self.clock = clock
        self._start = clock()
        self._bar = self._task = None

    # -- context -------------------------------------------------------------------------

    def __enter__(self) -> "Progress":
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn

            console = Console(file=self.stream, force_terminal=True)
            self._bar = RichProgress(TextColumn("{task.description}", markup=False), BarColumn(bar_width=20),
                                     TextColumn("{task.fields[status]}", markup=False), console=console, transient=True)
            self._task = self._bar.add_task(self.name, total=self.total, status=self.status(running=True))
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    # -- updates -------------------------------------------------------------------------

    def track(self, iterable: Iterable[T], total: int | None = None) -> Iterator[T]:
        """Yield from ``iterable`` (one step's inner work, e.g. an epoch's batches), moving the
        live bar and its ETA within the step."""
        n = total if total is not None else len(iterable)  # type: ignore[arg-type]
        for k, item in enumerate(iterable, 1):
            yield item
            self.partial = min(k / max(n, 1), 1.0)
            self._refresh()
        self.partial = 0.0

    def note(self, **metrics) -> None:
        """Running metrics of the step under way (shown on the live bar only)."""
        self.running.update(metrics)
        self._refresh()

    def advance(self, n: int = 1, **metrics) -> None:
        """``n`` steps finished, with their metrics; prints a plain line when one is due."""
        before = self.done
        self.done = min(self.done + n, self.total)
        self.partial, self.metrics, self.running = 0.0, dict(metrics), {}
        due = self.done // self.every > before // self.every or self.done == self.total
        if due and self.lines:
            self._print(self.line())
        self._refresh()

    # -- text ----------------------------------------------------------------------------

    def status(self, running: bool = False) -> str:
        """``epoch 12/40 loss 0.3124 elapsed 1m52s eta 4m10s``: the line without the name. The
        step is the last one finished, or with ``running`` the one under way (the live bar)."""
        elapsed = self.clock() - self._start
        fraction = (self.done + self.partial) / self.total
        step = min(self.done + 1, self.total) if running else self.done
        parts = [f"{self.unit} {step}/{self.total}"]
        parts += [f"{k} {_value(v)}" for k, v in (self.running if running else self.metrics).items()]
        parts.append(f"elapsed {duration(elapsed)}")
        if fraction > 0:
            parts.append(f"eta {duration(elapsed * (1 - fraction) / fraction)}")
        return " ".join(parts)

    def line(self) -> str:
        return f"{self.name}: {self.status()}"

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done + self.partial, status=self.status(running=True))


def iterate(iterable: Iterable[T], name: str, total: int, *, unit: str = "items",
            enabled: bool | None = True, stream: IO | None = None) -> Iterator[T]:
    """Yield from ``iterable`` with a :class:`Progress` of one step per item."""
    with Progress(name, total, unit=unit, enabled=enabled, stream=stream) as bar:
        for item in iterable:
            yield item
            bar.advance()
