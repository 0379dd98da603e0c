"""Progress and messages on stderr, so stdout stays clean for `--json` summaries."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False, soft_wrap=True)
T = TypeVar("T")

_warned: set[str] = set()


def quiet_libraries() -> None:
    """Silence upstream chatter (weight-loading bars, optional-kernel notices); persona shows its own
    progress. Environment variables are read when those libraries are imported, so nothing is imported here."""
    import logging
    import os

    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_NO_ADVISORY_WARNINGS"):
        os.environ.setdefault(var, "1")
    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(var, "error")
    for name in ("bitsandbytes", "torch.utils.cpp_extension"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    # Notices about upstream internals that users cannot act on: torchaudio's planned switch to
    # torchcodec (f5-tts calls torchaudio.load), and pydub looking for an ffmpeg it never uses here.
    warnings.filterwarnings("ignore", message=r"In 2\.9, this function's implementation")
    warnings.filterwarnings("ignore", message="Couldn't find ffmpeg or avconv")
    # torchaudio 2.8 marks most of its API as deprecated (whisperx, pyannote and f5-tts call it), and
    # face_recognition_models and webrtcvad import pkg_resources, which setuptools warns about.
    warnings.filterwarnings("ignore", message=r"torchaudio\..* has been deprecated")
    warnings.filterwarnings("ignore", message=r".*TorchAudio into a maintenance phase")
    warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated as an API")


def info(message: str, markup: bool = False) -> None:
    """A line for people. Plain text unless markup=True: paths and names may hold "[...]", which Rich
    would read as markup (hiding the text, or failing on a stray closing tag). With markup=True the
    caller escapes what it interpolates (rich.markup.escape)."""
    console.print(message, markup=markup)


def warn(message: str, once: bool = False) -> None:
    """A warning line (plain text, not markup); with once=True it is shown once per process."""
    if once:
        if message in _warned:
            return
        _warned.add(message)
    console.print(f"[yellow]warning:[/yellow] {escape(message)}")


def _bar(extra: str = "") -> Progress:
    columns: list[Any] = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    if extra:
        columns.append(TextColumn(extra))
    return Progress(*columns, console=console, transient=False)


def track(items: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    """Iterate with a progress bar (elapsed time and ETA) when stderr is a terminal."""
    if not console.is_terminal:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with _bar() as bar:
        task = bar.add_task(escape(description), total=total)
        for item in items:
            yield item
            bar.advance(task)


class Meter:
    """A progress bar advanced by hand, with free-form status (e.g. loss, steps/s). When stderr is not
    a terminal (logs, CI) it prints a line at every tenth of the way instead of redrawing a bar."""

    def __init__(self, bar: Progress | None, task: Any, description: str = "", total: float | None = None,
                 completed: float = 0):
        self._bar, self._task = bar, task
        self._description, self._total, self._done = description, total, completed
        self._start, self._t0, self._next_line = completed, time.perf_counter(), 0.1

    def advance(self, n: float = 1, **status: Any) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=n, status=escape(_format_status(status)))
        else:
            self._log(self._done + n, status)

    def update(self, completed: float | None = None, total: float | None = None, **status: Any) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, total=total, status=escape(_format_status(status)))
        else:
            self._total = total if total is not None else self._total
            self._log(completed if completed is not None else self._done, status)

    def _log(self, done: float, status: dict[str, Any]) -> None:
        self._done = done
        if not self._total:
            return
        fraction = done / self._total
        if fraction + 1e-9 < self._next_line and done < self._total:
            return
        self._next_line = (int(fraction * 10) + 1) / 10
        elapsed = time.perf_counter() - self._t0
        rate = (done - self._start) / elapsed if elapsed > 0 else 0.0
        eta = f"ETA {(self._total - done) / rate:.0f} s" if rate > 0 and done < self._total else f"{elapsed:.0f} s"
        extra = _format_status(status)
        console.print(escape(f"{self._description}: {done:g}/{self._total:g} ({fraction:.0%}), {eta}"
                             + (f"  {extra}" if extra else "")))


def _format_status(status: dict[str, Any]) -> str:
    parts = []
    for k, v in status.items():
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return "  ".join(parts)


@contextlib.contextmanager
def meter(description: str, total: float | None, completed: float = 0) -> Iterator[Meter]:
    if not console.is_terminal:
        yield Meter(None, None, description, total, completed)
        return
    with _bar("{task.fields[status]}") as bar:
        task = bar.add_task(escape(description), total=total, completed=completed, status="")
        yield Meter(bar, task)


@contextlib.contextmanager
def timed(label: str, results: dict[str, float] | None = None) -> Iterator[None]:
    """Time a block; store seconds in `results[label]` when given."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if results is not None:
            results[label] = round(time.perf_counter() - t0, 3)
