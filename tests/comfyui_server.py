"""A real ComfyUI 0.8.0 server for tests: ../shared/comfyui started on CPU on a free local port, with
every writable folder in a temp dir (that source tree is read-only), stopped after."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SHARED_COMFYUI = Path(os.environ.get("PERSONA_SHARED_COMFYUI", REPO.parent / "shared" / "comfyui"))
# What ComfyUI imports beyond persona's own dependencies (the `test` extra installs them).
EXTRA_MODULES = ("torchsde", "kornia", "sqlalchemy", "alembic", "comfy_kitchen", "pydantic_settings",
                 "comfyui_frontend_package", "websocket")


def unavailable() -> str | None:
    """Why a ComfyUI server cannot be started here, or None."""
    if not (SHARED_COMFYUI / "main.py").is_file():
        return f"ComfyUI source not found at {SHARED_COMFYUI} (../shared/comfyui is absent on this machine)"
    missing = [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return f"ComfyUI's packages are not installed ({', '.join(missing)}): pip install -e '.[test]'"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    base: Path
    proc: subprocess.Popen

    @property
    def models(self) -> Path:
        return self.base / "models"

    def kill(self) -> None:
        """Stop it the hard way (as a crash or a restart would), and wait until it is gone."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def start(base: Path, timeout: float = 240.0) -> Server:
    """Start ComfyUI with its folders under `base` (put model files in base/models/<kind>/ first)."""
    for sub in ("custom_nodes", "models", "user", "output", "temp", "input"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(base / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(SHARED_COMFYUI / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--base-directory", str(base), "--database-url", "sqlite:///:memory:"],
        stdout=log, stderr=subprocess.STDOUT, cwd=base, start_new_session=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    server = Server(f"http://127.0.0.1:{port}", base, proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with {proc.returncode}: {_tail(base / 'server.log')}")
        try:
            if httpx.get(f"{server.url}/object_info/SaveImage", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"ComfyUI did not serve /object_info within {timeout:.0f} s: {_tail(base / 'server.log')}")


def _tail(path: Path, n: int = 1500) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def place_placeholders(models: Path, names: dict[str, list[str]]) -> None:
    """Empty files under the names loaders list ({folder: [file names]}): enough for /object_info's
    enums and so for checking graphs, never for running them."""
    for folder, files in names.items():
        for name in files:
            path = models / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
