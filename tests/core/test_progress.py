"""Long stages say where they are: plain lines in logs and pipes, a live bar on a terminal."""

from __future__ import annotations

import io
import os
import re

import pytest

from fissure.cli import main
from fissure.progress import Progress, duration, iterate


class Clock:
    """A clock the test moves by hand, so elapsed and ETA are exact."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_duration():
    assert [duration(s) for s in (0, 44.6, 60, 112, 3599, 7500)] == ["0s", "45s", "1m00s", "1m52s", "59m59s", "2h05m"]


def test_epoch_lines_when_not_a_terminal():
    out, clock = io.StringIO(), Clock()
    with Progress("train crack-segmenter", 4, unit="epoch", every=1, stream=out, clock=clock) as bar:
        for epoch in range(1, 4):
            clock.now += 30
            bar.note(loss=9.0)  # running values belong to the live bar only
            bar.advance(loss=0.5 / epoch, val_dice=None, best=epoch)
    assert out.getvalue().splitlines() == [
        "train crack-segmenter: epoch 1/4 loss 0.5000 val_dice n/a best 1 elapsed 30s eta 1m30s",
        "train crack-segmenter: epoch 2/4 loss 0.2500 val_dice n/a best 2 elapsed 1m00s eta 1m00s",
        "train crack-segmenter: epoch 3/4 loss 0.1667 val_dice n/a best 3 elapsed 1m30s eta 30s",
    ]


def test_item_lines_come_each_tenth_and_at_the_end():
    out = io.StringIO()
    for _ in iterate(range(25), "synth segment", 25, unit="images", stream=out):
        pass
    steps = [int(m) for m in re.findall(r"^synth segment: images (\d+)/25 elapsed \S+ eta \S+$", out.getvalue(), re.M)]
    assert steps == [3, 6, 9, 12, 15, 18, 21, 24, 25]
    assert len(out.getvalue().splitlines()) == len(steps)


@pytest.mark.parametrize("enabled", [None, False])
def test_quiet_when_piped_unless_enabled(enabled):
    out = io.StringIO()
    with Progress("evaluate crack-classifier", 3, unit="images", enabled=enabled, stream=out) as bar:
        bar.advance(3)
    assert out.getvalue() == ""


def _pty_output(monkeypatch, term: str, run) -> str:
    monkeypatch.setenv("TERM", term)
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w")
    try:
        run(stream)
    finally:
        stream.close()
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return b"".join(chunks).decode()


def _train_two_epochs(stream):
    with Progress("train crack-classifier", 2, unit="epoch", every=1, stream=stream) as bar:
        for epoch in (1, 2):
            for _ in bar.track(range(3)):
                bar.note(loss=0.25)
            bar.advance(loss=0.25, best=epoch)


def test_live_bar_on_a_terminal_keeps_the_epoch_lines(monkeypatch):
    text = _pty_output(monkeypatch, "xterm", _train_two_epochs)
    assert "\x1b[" in text  # drawn and cleared with escape sequences: a live bar
    assert "train crack-classifier: epoch 1/2 loss 0.2500 best 1 elapsed" in text
    assert "train crack-classifier: epoch 2/2 loss 0.2500 best 2 elapsed" in text


def test_dumb_terminal_gets_plain_lines(monkeypatch):
    text = _pty_output(monkeypatch, "dumb", _train_two_epochs)
    assert "\x1b[" not in text
    lines = [line for line in text.splitlines() if line]
    assert len(lines) == 2 and all(re.fullmatch(r"train crack-classifier: epoch \d/2 loss 0.2500 best \d elapsed \S+ eta \S+", line)
                                   for line in lines), lines


def test_data_commands_show_progress_in_a_log(tmp_path, capsys):
    assert main(["data", "synth", "--task", "segment", "--count", "4", "--size", "64", "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^synth segment: images 4/4 elapsed \S+ eta \S+$", err, re.M), err
    assert main(["data", "prepare", "--count", "4", "--size", "64", "--patch-size", "32", "--patch-stride", "32",
                 "--feedback", "", "--out", str(tmp_path / "p")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^prepare synth: images 4/4 elapsed \S+ eta \S+$", err, re.M), err
