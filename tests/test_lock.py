"""One writing job per workspace (persona.lock), unique staging names, and the faults around them."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from persona.errors import PersonaError
from persona.files import staged_dir
from persona.lock import INFO_FILE, WorkspaceBusy, holder, workspace_lock
from persona.workspace import Workspace

BUSY_LINE = re.compile(r"^busy: (?P<verb>[\w-]+) \(pid (?P<pid>\d+)\) since \d\d:\d\d — wait for it or stop it$")

HOLD = """
import sys, time
from types import SimpleNamespace
from persona.lock import workspace_lock
with workspace_lock(SimpleNamespace(root=sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def hold(root: Path, verb: str = "ingest", seconds: float = 60) -> subprocess.Popen:
    """Another process holding the workspace's lock (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), verb, str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "persona", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.create(tmp_path / "ws", "Ada Lovelace")


# ---- the lock --------------------------------------------------------------------------------------
def test_a_second_process_is_refused_with_who_holds_it(ws):
    proc = hold(ws.root, "train-voice")
    try:
        with pytest.raises(WorkspaceBusy) as e:
            with workspace_lock(ws, "ingest"):
                pass
        m = BUSY_LINE.match(str(e.value))
        assert m, str(e.value)
        assert (m["verb"], int(m["pid"])) == ("train-voice", proc.pid)
    finally:
        proc.kill()
        proc.wait()


SLOW_INFO = """
import json, os, sys, time
from filelock import FileLock
from persona.lock import INFO_FILE, LOCK_FILE
with FileLock(os.path.join(sys.argv[1], LOCK_FILE)):
    print("held", flush=True)
    time.sleep(0.5)  # the moment between taking the lock and saying who holds it
    with open(os.path.join(sys.argv[1], INFO_FILE), "w") as f:
        json.dump({"verb": "render", "pid": os.getpid(), "since": "2026-01-01T10:00:00+00:00"}, f)
    time.sleep(60)
"""


def test_refused_in_the_moment_the_holder_takes_the_lock_still_names_it(ws):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_INFO, str(ws.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(WorkspaceBusy) as e:
            with workspace_lock(ws, "ingest"):
                pass
        assert e.value.pid == proc.pid and e.value.verb == "render", str(e.value)
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over(ws):
    proc = hold(ws.root, "render")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert holder(ws.root)["pid"] == proc.pid  # its info file is still there ...
    with workspace_lock(ws, "ingest"):  # ... but the OS released its lock
        assert holder(ws.root)["verb"] == "ingest" and holder(ws.root)["pid"] == os.getpid()
    assert not (ws.root / INFO_FILE).exists()


ORPHAN = """
import os, sys, time
from types import SimpleNamespace
from persona.lock import workspace_lock
with workspace_lock(SimpleNamespace(root=sys.argv[1]), "train-voice"):
    ready = sys.argv[1] + "/child-ready"
    if os.fork() == 0:  # like a data loader worker, which outlives its parent a little
        open(ready, "w").close()  # the fork's handlers have run
        time.sleep(30)
        os._exit(0)
    while not os.path.exists(ready):
        time.sleep(0.01)
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_forked_child_of_a_killed_holder_does_not_keep_the_lock(ws):
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN, str(ws.root)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with workspace_lock(ws, "ingest"):  # while the child still runs
            pass
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


def test_reentrant_in_one_thread_refused_in_another(ws):
    seen = []
    with workspace_lock(ws, "ingest"):
        with workspace_lock(ws, "update persona.toml"):  # a verb calling another locked function
            ws.update("datasets", {"images": "datasets/images"})

        def other():
            try:
                with workspace_lock(ws, "render"):
                    seen.append("entered")
            except WorkspaceBusy as e:
                seen.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(seen) == 1 and BUSY_LINE.match(seen[0]) and "busy: ingest" in seen[0]
    with workspace_lock(ws, "render"):  # released after the outermost block
        pass


def test_library_entry_points_take_the_lock(ws, tmp_path):
    from persona.data.ingest import ingest
    from persona.train.lora import LoraSettings, train_lora
    from persona.train.voice import train_voice

    proc = hold(ws.root, "render")
    try:
        for call in (lambda: ingest(ws, [tmp_path]), lambda: train_voice(ws),
                     lambda: train_lora(ws, LoraSettings())):
            with pytest.raises(WorkspaceBusy, match=r"busy: render \(pid"):
                call()
    finally:
        proc.kill()
        proc.wait()


def test_only_the_main_process_of_a_distributed_launch_locks(ws, monkeypatch):
    proc = hold(ws.root, "train-lora")
    try:
        monkeypatch.setenv("RANK", "1")  # another rank of `accelerate launch`: runs, writes nothing
        with workspace_lock(ws, "train-lora"):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(WorkspaceBusy):
            with workspace_lock(ws, "train-lora"):
                pass
    finally:
        proc.kill()
        proc.wait()


MODEL_KEYS = ["flux", "wan-i2v", "f5-tts", "vocos", "florence2", "whisper", "llm", "upscaler"]
UPDATES = """
import sys
from persona.workspace import Workspace
keys = %r
ws = Workspace(sys.argv[1])
for i in range(int(sys.argv[3])):
    ws.update(sys.argv[2], {"images": f"d{i}"} if sys.argv[2] == "datasets" else {keys[i %% len(keys)]: f"/models/{i}"})
""" % MODEL_KEYS


def test_concurrent_updates_of_two_sections_keep_both(ws):
    """Each update reads persona.toml afresh under the lock: one written from a stale read would drop
    the other process's keys (models) or put back an older value (datasets)."""
    n = 25
    procs = [subprocess.Popen([sys.executable, "-c", UPDATES, str(ws.root), section, str(n)])
             for section in ("models", "datasets")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    pack = Workspace(ws.root).pack
    assert pack.models == {MODEL_KEYS[i % len(MODEL_KEYS)]: f"/models/{i}" for i in range(n)}  # the last of each
    assert pack.datasets.images == f"d{n - 1}"


def test_cli_second_command_says_busy(ws, tmp_path):
    proc = hold(ws.root, "ingest")
    try:
        out = cli("-w", str(ws.root), "ingest", str(tmp_path))
        assert out.returncode == 75
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and BUSY_LINE.match(lines[0]) and f"(pid {proc.pid})" in lines[0], out.stderr
        as_json = cli("-w", str(ws.root), "ingest", str(tmp_path), "--json")
        failure = json.loads(as_json.stdout)
        assert failure["error"].startswith("busy: ingest") and failure["fix"] == "wait for it or stop it"
    finally:
        proc.kill()
        proc.wait()


# ---- no shared names -------------------------------------------------------------------------------
def test_staging_folders_are_unique_to_the_run(tmp_path):
    target = tmp_path / "images"
    with staged_dir(target) as a:
        (a / "a.txt").write_text("a")
        with staged_dir(target) as b:  # a second build of the same folder does not wipe the first's
            assert a != b and (a / "a.txt").exists()
            (b / "b.txt").write_text("b")
        assert (target / "b.txt").exists() and (a / "a.txt").exists()
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["images"]


def test_staging_folders_of_killed_runs_are_swept(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = tmp_path / f".images.{proc.pid}-abc.partial"
    dead.mkdir()
    alive = tmp_path / f".images.{os.getpid()}-xyz.partial"
    alive.mkdir()
    with staged_dir(tmp_path / "images"):
        pass
    assert not dead.exists() and alive.exists()


# ---- scans -----------------------------------------------------------------------------------------
def test_merge_refuses_a_scan_with_a_missing_segment(tmp_path):
    from persona.data import scan

    src = scan.Source(tmp_path / "a.mp4", "video", key="k")
    present = tmp_path / "seg-0.json"
    present.write_text(json.dumps({"samples": [{"t": 0.0}], "faces": [], "embeddings": [], "cuts": []}))
    with pytest.raises(scan.IncompleteScan, match="missing"):
        scan.merge(src, [present, tmp_path / "seg-20.json"], scan.ScanSettings(2.0, 160))


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    from persona.demo import make_footage

    return make_footage(tmp_path_factory.mktemp("lock-footage"))


def test_a_dead_scan_worker_is_noticed(footage, tmp_path):
    import multiprocessing

    from persona.data import scan

    settings = scan.ScanSettings(0.5, 96)
    sources = [scan.Source(Path(footage["files"][k]), "video") for k in ("lecture", "interview")]
    scan.prepare(sources, settings, tmp_path)

    def kill_a_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            workers = [p for p in multiprocessing.active_children() if p.pid]
            if workers:
                time.sleep(0.5)
                os.kill(workers[0].pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    with pytest.raises(PersonaError, match=r"^.*: a scan worker died on \w+\.mp4( or \w+\.mp4)?; run again to resume"):
        scan.run(sources, settings, tmp_path, workers=2)
    killer.join()
    assert not list(tmp_path.rglob("analysis.json"))  # nothing half-finished is cached as finished


def test_a_video_with_no_frames_is_reported(tmp_path):
    from persona.data import scan
    from persona.data.images import _decode_problems

    src = scan.Source(tmp_path / "blank.mp4", "video")
    src.analysis = {"samples": [], "errors": [], "truncated": False, "faces": []}
    problems = _decode_problems(src)
    assert len(problems) == 1 and "blank.mp4" in problems[0] and "0 samples" in problems[0]


# ---- faults --------------------------------------------------------------------------------------
def test_a_full_disk_on_one_side_names_the_file_and_the_other_side_goes_on(ws, footage, monkeypatch):
    import persona.data.ingest as ingest_module

    full = ws.root / "datasets" / "images" / "0001.png"

    def images_side(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(full))

    voice_ran = []
    monkeypatch.setattr(ingest_module, "ingest_images", images_side)
    monkeypatch.setattr(ingest_module, "ingest_voice", lambda *a, **k: voice_ran.append(1) or {"clips": 3})
    summary = ingest_module.ingest(ws, [Path(footage["files"]["lecture"])])
    assert voice_ran and summary["voice"] == {"clips": 3}
    problem = summary["failed"]["images"]
    assert str(full) in problem and "no space left" in problem and "free disk space" in problem


def test_an_interrupted_ingest_exits_130_without_tracebacks(ws, footage):
    proc = subprocess.Popen([sys.executable, "-m", "persona", "-w", str(ws.root), "ingest",
                             footage["files"]["lecture"], footage["files"]["interview"], "--images-only"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (ws.root / INFO_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # into the scan, with its workers running
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: to every process of the group, workers included
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: finished work is kept; run the same command again to resume" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_json_failures_are_json_on_stdout(tmp_path):
    out = cli("-w", str(tmp_path / "nowhere"), "ingest", str(tmp_path), "--json")
    assert out.returncode == 1
    failure = json.loads(out.stdout)
    assert set(failure) == {"error", "file", "fix"}
    assert failure["file"] == str(tmp_path / "nowhere") and "persona init" in failure["fix"]


def test_markup_in_user_text_is_printed_as_is(capsys):
    from persona.progress import info, track, warn

    info("wrote /tmp/[bold]x[/]/a [/red] b")
    warn("file [/] c")
    assert list(track([1, 2], "captioning [/] with x")) == [1, 2]
    err = capsys.readouterr().err
    assert "/tmp/[bold]x[/]/a [/red] b" in err and "file [/] c" in err


def test_library_notices_are_silenced():
    from persona.progress import quiet_libraries

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_libraries()
        warnings.warn("pkg_resources is deprecated as an API. See https://setuptools.pypa.io", UserWarning)
        warnings.warn("torchaudio._backend.list_audio_backends has been deprecated. This deprecation is part "
                      "of a large refactoring effort to transition TorchAudio into a maintenance phase.", UserWarning)
        warnings.warn("something persona's users should see", UserWarning)
    assert [str(w.message) for w in caught] == ["something persona's users should see"]
