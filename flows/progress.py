"""What a command shows of its flows' progress: in a terminal, one bar per
stage (training runs, representations, tests, report) with counts, rate and
time left; without one (CI, pipes), a few plain lines per stage. The flows
call ``show`` as their work completes; it does nothing where no command
installed a display (a deployment on a worker: its progress is the
Prefect artifact)."""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO

_display = None


def show(stage: str, done: int, total: int, unit: str) -> None:
    """``done`` of ``total`` ``unit`` of ``stage`` are complete."""
    if _display is not None:
        _display.update(stage, done, total, unit)


class _Lines:
    """Plain lines: a stage's start, each quarter, its end."""

    def __init__(self, stream: TextIO):
        self.stream, self.started, self.said = stream, {}, {}

    def update(self, stage: str, done: int, total: int, unit: str) -> None:
        now = time.monotonic()
        t0 = self.started.setdefault(stage, now)
        quarter = 4 * done // max(total, 1)
        if self.said.get(stage, -1) >= quarter:
            return
        self.said[stage] = quarter
        text = f"{stage}: {done}/{total} {unit}"
        if done >= total:
            text += f" in {now - t0:.0f} s"
        elif done:
            text += f", about {_duration((now - t0) * (total - done) / done)} left"
        print(text, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


class _Bars:
    """rich bars, one per stage."""

    def __init__(self, progress):
        self.progress, self.tasks = progress, {}

    def update(self, stage: str, done: int, total: int, unit: str) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, unit=unit)
        self.progress.update(self.tasks[stage], completed=done, total=total)


@contextlib.contextmanager
def display(stream: TextIO = sys.stderr) -> Iterator[None]:
    """Show progress on ``stream`` for the block: bars on a terminal, plain
    lines elsewhere."""
    global _display
    if stream.isatty():
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:.2f} {task.fields['unit']}/s" if speed else "", style="progress.data.speed")

        columns = (TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[unit]}"), Rate(), TimeElapsedColumn(), TextColumn("·"),
                   TimeRemainingColumn(), TextColumn("left"))
        with Progress(*columns, console=Console(file=stream), transient=False) as progress:
            _display = _Bars(progress)
            try:
                yield
            finally:
                _display = None
        return
    _display = _Lines(stream)
    try:
        yield
    finally:
        _display = None
