"""Small file helpers every stage shares: atomic writes, content hashes, JSON records."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A killed or failed write therefore never leaves a half-written file under the final name.
    The temporary name keeps the final suffix so libraries that pick a format from it still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix or path.suffix + ".part")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; finished files are ordinary
        os.replace(tmp_path, path)
    except OSError as e:
        if e.filename is None:  # a failed write() names no file; say which one (e.g. a full disk)
            e.filename = str(path)
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside `path`; it replaces `path` whole only if the block succeeds.

    A killed or failed build leaves the previous folder (or none) in place, never a mix of both.
    The staging and swap folders are named after this process and a random part, so two runs never
    share (and delete) each other's; ones left by killed processes are swept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_dead_stages(path)
    prefix = f".{path.name}.{os.getpid()}-"
    stage = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".partial"))
    old = stage.with_name(stage.name.removesuffix(".partial") + ".old")
    try:
        yield stage
        if path.exists():
            os.replace(path, old)
        os.replace(stage, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _sweep_dead_stages(path: Path) -> None:
    """Remove the staging folders of killed runs; a previous folder a killed swap left aside is put back."""
    for suffix in (".partial", ".old"):
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.*-*{suffix}"):
            pid = leftover.name[len(path.name) + 2:].split("-", 1)[0]
            if not pid.isdigit() or process_alive(int(pid)):
                continue
            if suffix == ".old" and not path.exists():
                os.replace(leftover, path)
            else:
                shutil.rmtree(leftover, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any worker threads exist
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        # A record that cannot be parsed is treated as absent: the work it describes is redone.
        return default


def read_json_strict(path: str | Path, fix: str) -> Any:
    """A JSON file whose loss is not harmless (a dataset's manifest): missing or unreadable is an
    error naming the file, never an empty default that lets a run report success on nothing."""
    from persona.errors import PersonaError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PersonaError("is missing", file=path, fix=fix) from None
    except json.JSONDecodeError as e:
        raise PersonaError(f"is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", file=path, fix=fix) from None
    except UnicodeDecodeError:
        raise PersonaError("is not UTF-8 text", file=path, fix=fix) from None


def hash_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remembered_hash(path: Path, memo: dict[str, list]) -> str:
    """hash_file, remembered in `memo` by path, size and modification time: hashing hours of footage
    takes a while, and a re-run should not pay it again for unchanged files."""
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    entry = memo.get(str(path))
    if not entry or entry[:2] != stamp:
        memo[str(path)] = entry = stamp + [hash_file(path)]
    return entry[2]


def stat_key(paths: list[Path], root: Path) -> str:
    """Identifies files by their names (relative to `root`), sizes and modification times: hashing
    gigabytes of weights on every run would cost more than the caches it keys save."""
    return hash_json([(p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in paths])


def hash_json(obj: Any) -> str:
    """A stable hash of JSON-able data (settings, prompts, upstream hashes)."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def hash_tree(root: str | Path, pattern: str = "*") -> str:
    """A hash of every file under `root` matching `pattern` (names and contents)."""
    root = Path(root)
    h = hashlib.blake2b(digest_size=16)
    for p in sorted(root.rglob(pattern)):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(hash_file(p).encode())
    return h.hexdigest()


def record_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".json")


def is_fresh(output: str | Path, key: str) -> bool:
    """True when `output` exists and was made from inputs hashing to `key`.

    Each stage writes `<output>.json` beside its output with the hash of everything it was made
    from; a re-run with the same inputs skips the work, an edited input redoes it.
    """
    output = Path(output)
    rec = read_json(record_path(output), default={})
    return output.exists() and rec.get("key") == key


def mark_fresh(output: str | Path, key: str, **info: Any) -> None:
    """Record that `output` (already written) was made from inputs hashing to `key`."""
    write_json(record_path(output), {"key": key, **info})
