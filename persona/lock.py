"""One writing job per workspace.

Every verb that writes into a workspace (ingest, train-lora, train-voice, render, and persona.toml
updates) holds `workspace_lock(ws, verb)`. A second job gets `WorkspaceBusy` at once instead of
racing the first one over the same files. The lock is an OS-level lock (filelock: `flock` on POSIX),
which the kernel releases when its holder dies, so a lock left by a killed process is simply taken
over; who holds it (verb, pid, start time) lives in a small JSON file beside it, for the message.
filelock closes the lock's descriptor in forked children (data loader workers), so a child that
outlives a killed holder does not keep the workspace locked.

Within one process the lock is reentrant per thread (a verb may call another library function that
locks too); another thread of the same process is refused like another process, so a web studio
running jobs in threads gets the same protection. Under `accelerate launch`/torchrun only the main
process (RANK 0) takes it: the others run the same verb in lockstep and write nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TYPE_CHECKING, TypeVar

from filelock import FileLock, Timeout

from persona.errors import PersonaError
from persona.files import process_alive, write_json

if TYPE_CHECKING:
    from persona.workspace import Workspace

LOCK_FILE = ".persona.lock"
INFO_FILE = ".persona.lock.json"
F = TypeVar("F", bound=Callable[..., Any])


class WorkspaceBusy(PersonaError):
    """Another job is writing into this workspace."""

    def __init__(self, verb: str, pid: int | None, since: str | None, lock: Path):
        when = _clock(since) if since else "an unknown time"
        who = f"{verb} (pid {pid})" if pid else verb
        super().__init__(f"busy: {who} since {when}", file=lock, fix="wait for it or stop it")
        self.verb, self.pid, self.since = verb, pid, since

    def __str__(self) -> str:  # one line that leads with "busy", not with the lock file's path
        return f"{self.message} — {self.fix}"


class _Held:
    def __init__(self, lock: FileLock, verb: str, owner: int, since: str):
        self.lock, self.verb, self.owner, self.since, self.depth = lock, verb, owner, since, 1


_held: dict[Path, _Held] = {}
_guard = threading.Lock()


def lock_path(root: Path) -> Path:
    return Path(root) / LOCK_FILE


def holder(root: str | Path) -> dict[str, Any] | None:
    """Who holds (or last held) the lock of the workspace at `root`, from the info file."""
    try:
        info = json.loads((Path(root) / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


@contextlib.contextmanager
def workspace_lock(ws: Workspace, verb: str, wait: float = 0.0) -> Iterator[None]:
    """Hold the workspace's writing lock for the block, or raise WorkspaceBusy (at once, or after
    `wait` seconds: a persona.toml update takes milliseconds and may wait for another one).

    `ws` is a Workspace (or anything with `.root`). Reentrant within one thread of one process.
    """
    if not is_main_process():
        yield
        return
    root = Path(ws.root).resolve()
    me = threading.get_ident()
    with _guard:
        held = _held.get(root)
        if held is not None and held.owner != me:
            raise WorkspaceBusy(held.verb, os.getpid(), held.since, lock_path(root))
        if held is not None:
            held.depth += 1
    reentered = held is not None
    if not reentered:
        # Outside the guard, so a wait does not hold up other threads; flock locks of two open files
        # exclude each other within one process too, so two threads cannot both get here and win.
        lock = FileLock(lock_path(root), timeout=wait, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            who = _current_holder(root)
            raise WorkspaceBusy(str(who.get("verb") or "another persona command"), who.get("pid"),
                                who.get("since"), lock_path(root)) from None
        since = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        with _guard:
            _held[root] = held = _Held(lock, verb, me, since)
        _write_info(root, verb, since)
    try:
        yield
    finally:
        if reentered:
            with _guard:
                held.depth -= 1
        else:
            with _guard:
                _held.pop(root, None)
                # The info file goes first: a stale one (a killed holder) is only ever overwritten.
                with contextlib.suppress(OSError):
                    (root / INFO_FILE).unlink()
                held.lock.release()


def _current_holder(root: Path, patience: float = 2.0) -> dict[str, Any]:
    """The holder's info; it is written just after the lock is taken, so a job refused in that moment
    (or one reading a killed holder's stale info) waits a little for the new holder's."""
    deadline = time.monotonic() + patience
    while True:
        who = holder(root) or {}
        pid = who.get("pid")
        if (isinstance(pid, int) and process_alive(pid)) or time.monotonic() > deadline:
            return who
        time.sleep(0.05)


def _write_info(root: Path, verb: str, since: str) -> None:
    with contextlib.suppress(OSError):  # the message is a courtesy; the lock itself is what protects
        write_json(root / INFO_FILE, {"verb": verb, "pid": os.getpid(), "since": since})


def _clock(since: str) -> str:
    """HH:MM in local time, with the date when it is not today."""
    try:
        t = dt.datetime.fromisoformat(since).astimezone()
    except ValueError:
        return since
    return t.strftime("%H:%M") if t.date() == dt.date.today() else t.strftime("%Y-%m-%d %H:%M")


def locked(verb: str) -> Callable[[F], F]:
    """Decorator: the function (whose first argument is the workspace) runs under workspace_lock."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(ws: Workspace, *args: Any, **kwargs: Any) -> Any:
            with workspace_lock(ws, verb):
                return fn(ws, *args, **kwargs)
        return inner  # type: ignore[return-value]
    return wrap
