"""Background jobs: a `persona` verb run as a process of its own, its state in files of the workspace.

The studio starts ingest, trainings, speak and renders this way, so a job outlives a page reload, a
closed browser and the studio itself, and runs exactly what the CLI runs (the same verb, the same
workspace lock, the same one-line errors). Per job, under `<workspace>/.persona/jobs/`:

    <id>.json   what runs (argv), its pid, when it started and ended, its exit code, and the verb's
                --json summary (or the error: message, file, fix)
    <id>.log    the verb's messages and progress lines (stderr)

Stopping sends Ctrl-C (SIGINT) to the job's process group: the verb stops the way it does in a
terminal, keeps finished work, and the same job started again resumes. A second stop kills it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from persona.errors import PersonaError
from persona.files import process_alive, read_json, write_json

JOBS = ".persona/jobs"
INTERRUPTED = 130  # persona.cli.EXIT_INTERRUPTED
BUSY = 75  # persona.cli.EXIT_BUSY
# A persona.progress.meter line when stderr is not a terminal: "training: 30/100 (30%), ETA 12 s  loss 0.3"
PROGRESS = re.compile(r"^(?P<what>[^:\n]+): (?P<done>[\d.]+)/(?P<total>[\d.]+) \((?P<pct>\d+)%\), (?P<eta>ETA [\d.]+ s|[\d.]+ s)(?P<status>.*)$")
_children: dict[str, subprocess.Popen] = {}  # job id -> process started here: polled so that none stays a zombie


def folder(root: str | Path) -> Path:
    return Path(root) / JOBS


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def start(root: str | Path, args: list[str], label: str | None = None) -> dict[str, Any]:
    """Start `persona -w ROOT ARGS --json` in the background; returns the job's record.

    Refused with WorkspaceBusy while another job of this workspace runs: the verb's own lock would
    refuse it too, but only after the new process has started, and the page should say so at once.
    """
    from persona.lock import WorkspaceBusy, holder, lock_path

    root = Path(root).resolve()
    for job in jobs(root):
        if job["state"] == "running":
            raise WorkspaceBusy(job["label"], job["pid"], job["started"], lock_path(root))
    who = holder(root)
    if who and isinstance(who.get("pid"), int) and process_alive(who["pid"]):
        raise WorkspaceBusy(str(who.get("verb")), who["pid"], who.get("since"), lock_path(root))
    out = folder(root)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    job_id = f"{stamp}-{re.sub(r'[^a-z0-9]+', '-', args[0].lower())}"
    argv = ["-w", str(root), *args, "--json"]
    record = {"id": job_id, "label": label or args[0], "verb": args[0], "argv": argv, "pid": None,
              "started": _now(), "finished": None, "rc": None, "summary": None, "error": None}
    write_json(out / f"{job_id}.json", record)
    with open(out / f"{job_id}.log", "ab") as log:
        # An argv list (never a shell string); a session of its own, so that the studio's Ctrl-C or
        # death does not stop the job, and a stop reaches the verb's data loader workers too.
        proc = subprocess.Popen([sys.executable, "-m", "persona.jobs", str(out / f"{job_id}.json")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _children[job_id] = proc  # the job writes its pid itself: one writer of the record at a time
    return read(root, job_id)


def _update(path: Path, **values: Any) -> None:
    record = read_json(path, {})
    record.update(values)
    write_json(path, record)


def read(root: str | Path, job_id: str) -> dict[str, Any]:
    """A job's record with its state (running, done, failed, stopped), its last progress line and
    its error as the CLI's one line."""
    path = folder(root) / f"{job_id}.json"
    record = read_json(path)
    if not isinstance(record, dict):
        raise PersonaError("no such job", file=path, fix="start it again")
    pid = record.get("pid")
    if job_id in _children:
        pid = record["pid"] = pid or _children[job_id].pid  # before the job has written it
        if _children[job_id].poll() is not None:
            _children.pop(job_id)
    rc = record.get("rc")
    if rc is None:
        alive = isinstance(pid, int) and process_alive(pid)
        state = "running" if alive or pid is None else "stopped"
    else:
        state = "done" if rc == 0 else "stopped" if rc == INTERRUPTED else "failed"
    log = read_log(root, job_id)
    record.update(state=state, progress=last_progress(log), log_tail="\n".join(log.splitlines()[-12:]))
    error = record.get("error")
    if state == "failed" and isinstance(error, dict):  # as the CLI prints it
        line = str(PersonaError(error.get("error") or "failed", file=error.get("file"), fix=error.get("fix")))
        record["message"] = line if rc == BUSY else f"error: {line}"
    elif state == "failed":
        record["message"] = f"{record['label']} failed (exit {rc}); see {path.with_suffix('.log')}"
    elif state == "stopped":
        record["message"] = f"{record['label']} stopped: finished work is kept; start it again to resume"
    return record


def read_log(root: str | Path, job_id: str) -> str:
    try:
        return (folder(root) / f"{job_id}.log").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def last_progress(log: str) -> dict[str, Any] | None:
    """The last persona.progress line of a log, as numbers (what, done, total, percent, eta, status)."""
    for line in reversed(log.splitlines()):
        m = PROGRESS.match(line.strip())
        if m:
            return {"what": m["what"], "done": float(m["done"]), "total": float(m["total"]), "percent": int(m["pct"]),
                    "eta": m["eta"], "status": m["status"].strip(), "line": line.strip()}
    return None


def jobs(root: str | Path, verb: str | None = None) -> list[dict[str, Any]]:
    """Every job of the workspace, newest first (optionally only those of one verb)."""
    ids = sorted((p.stem for p in folder(root).glob("*.json")), reverse=True)
    found = []
    for job_id in ids:
        try:
            job = read(root, job_id)
        except PersonaError:
            continue
        if verb is None or job["verb"] == verb:
            found.append(job)
    return found


def latest(root: str | Path, verb: str | None = None, label: str | None = None) -> dict[str, Any] | None:
    for job in jobs(root, verb):
        if label is None or job["label"] == label:
            return job
    return None


def stop(root: str | Path, job_id: str) -> dict[str, Any]:
    """Ctrl-C to the job's process group (finished work is kept); when it was already sent, kill it."""
    job = read(root, job_id)
    if job["state"] != "running" or not job.get("pid"):
        return job
    path = folder(root) / f"{job_id}.json"
    sig = signal.SIGKILL if job.get("stop_requested") else signal.SIGINT
    try:
        os.killpg(job["pid"], sig)
    except ProcessLookupError:
        pass
    _update(path, stop_requested=_now())
    return read(root, job_id)


def _run(path: Path) -> int:
    """The job process: the CLI in this process, its --json summary (or error) into the record."""
    import contextlib
    import io

    from persona.cli import main

    _update(path, pid=os.getpid())
    record = read_json(path)
    stdout = io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stdout(stdout):
        try:
            main(record["argv"])
        except SystemExit as e:
            code = e.code
        except KeyboardInterrupt:  # between the CLI's own handlers, e.g. while it exits
            code = INTERRUPTED
    rc = code if isinstance(code, int) else (0 if code is None else 1)
    try:
        out = json.loads(stdout.getvalue()) if stdout.getvalue().strip() else None
    except json.JSONDecodeError:
        out = None
    failed = isinstance(out, dict) and rc != 0 and "error" in out
    _update(path, rc=rc, finished=_now(), summary=None if failed else out, error=out if failed else None)
    return rc


if __name__ == "__main__":
    sys.exit(_run(Path(sys.argv[1])))
