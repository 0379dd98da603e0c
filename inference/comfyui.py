"""The ComfyUI engine's client: run persona's graphs on one or more ComfyUI servers.

Over ComfyUI's own HTTP and websocket API (server.py): inputs go up with `POST /upload/image`
(images, audio, and the pack's LoRA, see `upload_lora`), the graph is checked against `/object_info`
and queued with `POST /prompt`, progress streams from `/ws` into a callback, outputs come back from
`/history/{id}` and `/view`, and Ctrl-C sends `POST /interrupt` before it is re-raised.

Every failure is one PersonaError line: an unreachable server, a node or model the server lacks
(refused before queueing), a node error mid-graph (node id, class type, message), the server going
away mid-graph (the websocket drops and the server no longer knows the prompt), an output missing from
/history. `ServerGone` marks the first and the fourth: the `Dispatcher` moves the job to another server
when it has one, and a caller that marks each scene as it arrives keeps its finished scenes, so the same
command resumes at the unfinished one.

HTTP is httpx (already under huggingface-hub); the websocket is websocket-client, the small, synchronous
client ComfyUI's own API examples use; threads give the dispatcher its concurrency.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from persona.errors import PersonaError
from persona.files import atomic_path, hash_file
from persona.inference.comfy_graphs import ROLES, STAGE_NEEDS, Graph, check, choices, pick_model

ENV_URL = "PERSONA_COMFYUI_URL"
T = TypeVar("T")
R = TypeVar("R")


class ComfyUISettings(BaseModel):
    """`[comfyui]` of the render settings."""

    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(default_factory=list)  # also --comfyui-url and PERSONA_COMFYUI_URL
    connect_timeout: float = 10.0  # s to reach a server
    request_timeout: float = 300.0  # s for one HTTP call (a LoRA upload, a video download)
    job_timeout: float = 4 * 3600.0  # s one graph may take, time in the server's queue included
    # file names on the server by role (flux, clip_l, t5, flux_vae, wan_i2v, wan_flf2v, umt5, wan_vae,
    # clip_vision, wan_s2v, wav2vec2, humo, whisper); unset: the first server file that matches the role
    models: dict[str, str] = Field(default_factory=dict)


def merge_urls(configured: Iterable[str] = (), flags: Iterable[str] = (), env: dict[str, str] | None = None) -> list[str]:
    """The servers to use: --comfyui-url flags, else PERSONA_COMFYUI_URL (comma or space separated),
    else the settings' urls; normalised (http:// added, no trailing slash) and without repeats."""
    env = os.environ if env is None else env
    for source in (list(flags), env.get(ENV_URL, "").replace(",", " ").split(), list(configured)):
        if source:
            break
    out: list[str] = []
    for raw in source:
        url = normalise_url(raw)
        if url not in out:
            out.append(url)
    return out


def normalise_url(raw: str) -> str:
    url = raw.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PersonaError(f"{raw!r} is not a ComfyUI address",
                           fix="give one like http://127.0.0.1:8188 (--comfyui-url or PERSONA_COMFYUI_URL)")
    return url


class ServerGone(PersonaError):
    """The server cannot be reached, or it restarted and forgot the prompt: another server may do the job."""


@dataclass
class ProgressEvent:
    """One websocket update for the running graph: sampler steps (`value`/`max`) of node `node`."""

    prompt_id: str
    node: str | None
    class_type: str | None
    value: float
    max: float
    nodes_done: int
    nodes_total: int


@dataclass
class JobResult:
    prompt_id: str
    server: str
    files: dict[str, Path]  # graph output name -> the local file it was written to
    seconds: dict[str, float] = field(default_factory=dict)  # upload check connect queue wait history download total; execution

    @property
    def overhead(self) -> float:
        """Seconds the client spent outside the server's own execution of the graph."""
        return max(0.0, self.seconds.get("total", 0.0) - self.seconds.get("execution", 0.0))


class ComfyUI:
    """One ComfyUI server."""

    def __init__(self, url: str, settings: ComfyUISettings | None = None):
        import httpx

        self.url = normalise_url(url)
        self.settings = settings or ComfyUISettings()
        s = self.settings
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(s.request_timeout, connect=s.connect_timeout))
        self._object_info: dict[str, Any] | None = None
        self._uploaded: dict[tuple[str, str], str] = {}  # (content hash, kind) -> name on the server
        self.running: str | None = None  # the prompt this client waits for (for interrupts)

    def __repr__(self) -> str:
        return f"ComfyUI({self.url})"

    @property
    def name(self) -> str:
        return f"ComfyUI at {self.url}"

    def close(self) -> None:
        self._http.close()

    # -- HTTP ------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ServerGone(f"cannot reach {self.name} ({type(e).__name__}: {e})",
                             fix="start ComfyUI there (python main.py --listen), or fix --comfyui-url / "
                                 f"{ENV_URL} / [comfyui] urls") from None
        return response

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        response = self._request(method, path, **kw)
        if response.status_code != 200:
            raise PersonaError(f"{self.name} answered {method} {path} with HTTP {response.status_code}: "
                               f"{response.text[:200].strip()}", fix="check that the address is a ComfyUI server (0.8.0 or later)")
        return response.json()

    def object_info(self, refresh: bool = False) -> dict[str, Any]:
        """Every node the server has, with its inputs and enum choices (the model files it lists)."""
        if self._object_info is None or refresh:
            self._object_info = self._json("GET", "/object_info")
        return self._object_info

    def refresh_node(self, class_type: str) -> None:
        """Re-read one node's info (its enums list files added since; cheaper than all of /object_info)."""
        info = self._json("GET", f"/object_info/{class_type}")
        self.object_info().update(info)

    def system_stats(self) -> dict[str, Any]:
        return self._json("GET", "/system_stats")

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        return self._json("GET", f"/history/{prompt_id}").get(prompt_id)

    def upload(self, path: Path, subfolder: str = "persona", kind: str = "input") -> str:
        """Upload a file (image, audio, video; `kind` "output" for files read from output/) and return
        the name nodes refer to it by. The name carries the content hash; without `overwrite` the server
        compares the bytes (sha256) of a file already under that name and keeps it only if identical,
        so the returned name always holds exactly these bytes."""
        path = Path(path)
        digest = hash_file(path)
        if (digest, kind + subfolder) in self._uploaded:
            return self._uploaded[(digest, kind + subfolder)]
        filename = f"{path.stem}-{digest[:12]}{path.suffix.lower()}"
        with open(path, "rb") as f:
            response = self._request("POST", "/upload/image", files={"image": (filename, f, "application/octet-stream")},
                                     data={"type": kind, "subfolder": subfolder})
        if response.status_code != 200:
            raise PersonaError(f"{self.name} refused the upload of {path.name} (HTTP {response.status_code})", file=path,
                               fix="check the server's input/ and output/ folders are writable")
        got = response.json()
        name = f"{got['subfolder']}/{got['name']}" if got.get("subfolder") else got["name"]
        self._uploaded[(digest, kind + subfolder)] = name
        return name

    def upload_lora(self, path: Path, subfolder: str = "persona") -> str:
        """Make the pack's LoRA loadable by LoraLoader and return its lora_name. ComfyUI 0.8.0 reads
        LoRAs from models/loras and output/loras, and `/upload/image` writes into output/ subfolders, so
        the LoRA is uploaded to output/loras/<subfolder>/ under a name that carries its hash (the server
        checks the bytes, see `upload`); this works for remote servers as well as local ones. Its
        appearance in LoraLoader's list is then confirmed."""
        stored = self.upload(Path(path), subfolder=f"loras/{subfolder}", kind="output")
        name = stored.removeprefix("loras/")
        for node in ("LoraLoaderModelOnly", "LoraLoader"):
            if node in self.object_info():
                self.refresh_node(node)
        if name not in (choices(self.object_info(), "LoraLoaderModelOnly", "lora_name") or []):
            raise PersonaError(f"{self.name} stored the LoRA but does not list it as {name}", file=path,
                               fix=f"copy the file to that server's models/loras/{name} and run again")
        return name

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop `prompt_id` (or whatever runs): drop it from the queue if it waits, interrupt it if it runs.
        Best effort: a server that is gone has nothing to stop."""
        try:
            if prompt_id:
                self._request("POST", "/queue", json={"delete": [prompt_id]})
            self._request("POST", "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})
        except PersonaError:
            pass

    def download(self, ref: dict[str, Any], dest: Path) -> Path:
        """Fetch one output file ({"filename", "subfolder", "type"} from /history) to `dest`, atomically."""
        import httpx

        params = {"filename": ref["filename"], "subfolder": ref.get("subfolder", ""), "type": ref.get("type", "output")}
        try:
            with self._http.stream("GET", "/view", params=params) as response:
                if response.status_code != 200:
                    raise PersonaError(f"{self.name} has no output file {ref['filename']} (HTTP {response.status_code})",
                                       fix="its output folder was cleaned or is not writable; run the same command again")
                with atomic_path(dest) as tmp, open(tmp, "wb") as f:
                    for block in response.iter_bytes(1 << 20):
                        f.write(block)
        except httpx.TransportError as e:
            raise ServerGone(f"{self.name} went away while sending {ref['filename']} ({type(e).__name__})",
                             fix="start the server again and run the same command; finished scenes are kept") from None
        return dest

    # -- running a graph -------------------------------------------------------------------------
    def prepare(self, graph: Graph) -> tuple[Graph, set[tuple[str, str]]]:
        """Upload the graph's local files; the graph with server names in their place, and which inputs
        were uploaded (their enums were read before the upload)."""
        values, uploaded = {}, set()
        for nid, name, local in graph.local_files():
            if not local.path.exists():
                raise PersonaError(f"the {graph.label} graph needs a file that is missing", file=local.path,
                                   fix="run the earlier render stages again")
            values[(nid, name)] = self.upload_lora(local.path) if local.kind == "loras" else self.upload(local.path)
            if local.kind == "input":
                uploaded.add((nid, name))
        return graph.with_values(values), uploaded

    def check(self, graph: Graph, uploaded: set[tuple[str, str]] | frozenset = frozenset()) -> None:
        check(graph, self.object_info(), self.name, uploaded)

    def queue(self, api: dict[str, Any], client_id: str) -> str:
        response = self._request("POST", "/prompt", json={"prompt": api, "client_id": client_id})
        body = _json_or_none(response)
        if response.status_code == 200 and body and "prompt_id" in body:
            return body["prompt_id"]
        raise PersonaError(self._refusal(body, api, response.status_code),
                           fix="fix what is named (a model file in the server's models/ folders, a node version) and run again")

    def _refusal(self, body: dict[str, Any] | None, api: dict[str, Any], status: int) -> str:
        if not body:
            return f"{self.name} refused the graph (HTTP {status})"
        for nid, err in (body.get("node_errors") or {}).items():
            first = (err.get("errors") or [{}])[0]
            what = first.get("details") or first.get("message") or "invalid"
            ct = err.get("class_type") or api.get(nid, {}).get("class_type")
            return f"{self.name} refused the graph: node {nid} ({ct}): {first.get('message', '')}: {what}".rstrip(": ")
        e = body.get("error") or {}
        return f"{self.name} refused the graph: {e.get('message', 'invalid prompt')} {e.get('details', '')}".strip()

    def run(self, graph: Graph, dests: dict[str, Path], on_progress: Callable[[ProgressEvent], None] | None = None) -> JobResult:
        """Run `graph` and write each named output (graph.outputs) to its path in `dests`."""
        t0 = time.perf_counter()
        seconds: dict[str, float] = {}
        ready, uploaded = self.prepare(graph)
        seconds["upload"] = time.perf_counter() - t0
        t = time.perf_counter()
        self.check(ready, uploaded)
        seconds["check"] = time.perf_counter() - t
        api = ready.to_api()
        entry, prompt_id, timing = self._execute(ready, api, on_progress)
        seconds.update(timing)
        t = time.perf_counter()
        files = {}
        for name, dest in dests.items():
            nid = ready.outputs[name]
            refs = _output_files(entry.get("outputs", {}).get(nid, {}))
            if not refs:
                raise PersonaError(f"{self.name} finished the {ready.label} graph, but /history has no output of node "
                                   f"{nid} ({api[nid]['class_type']})",
                                   fix="check the server's log (is its output folder writable?) and run the same command again")
            files[name] = self.download(refs[0], Path(dest))
        seconds["download"] = time.perf_counter() - t
        seconds["total"] = time.perf_counter() - t0
        return JobResult(prompt_id, self.url, files, {k: round(v, 4) for k, v in seconds.items()})

    def _connect(self, client_id: str) -> Any:
        import websocket

        ws_url = self.url.replace("http", "ws", 1) + f"/ws?clientId={client_id}"
        try:
            ws = websocket.create_connection(ws_url, timeout=self.settings.connect_timeout)
        except (OSError, websocket.WebSocketException) as e:
            raise ServerGone(f"cannot reach {self.name} ({type(e).__name__}: {e})",
                             fix=f"start ComfyUI there (python main.py --listen), or fix --comfyui-url / {ENV_URL}") from None
        ws.settimeout(1.0)  # wake up every second: Ctrl-C and the job timeout are noticed promptly
        return ws

    def _execute(self, graph: Graph, api: dict[str, Any], on_progress: Callable[[ProgressEvent], None] | None
                 ) -> tuple[dict[str, Any], str, dict[str, float]]:
        import websocket

        client_id = uuid.uuid4().hex
        t = time.perf_counter()
        ws = self._connect(client_id)  # before queueing, so no message is missed
        timing: dict[str, float] = {"connect": time.perf_counter() - t}
        prompt_id = None
        try:
            t = time.perf_counter()
            prompt_id = self.queue(api, client_id)
            self.running = prompt_id
            timing["queue"] = time.perf_counter() - t
            t = time.perf_counter()
            deadline = time.monotonic() + self.settings.job_timeout
            done: set[str] = set()
            while True:
                try:
                    raw = ws.recv()
                except websocket.WebSocketTimeoutException:
                    if time.monotonic() > deadline:
                        self.interrupt(prompt_id)
                        raise PersonaError(f"{self.name} did not finish the {graph.label} graph in "
                                           f"{self.settings.job_timeout:.0f} s; it was interrupted",
                                           fix="raise [comfyui] job_timeout, or free the server's queue") from None
                    continue
                except (OSError, websocket.WebSocketException):
                    if self._still_running(prompt_id, graph):  # a dropped socket, the server still has the job
                        ws = self._connect(client_id)
                        continue
                    break  # it finished just before the drop: its history is read below
                if not isinstance(raw, str):
                    continue  # binary previews
                message = json.loads(raw)
                kind, data = message.get("type"), message.get("data") or {}
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if kind == "progress" and on_progress is not None:
                    node = data.get("node")
                    on_progress(ProgressEvent(prompt_id, node, api.get(node or "", {}).get("class_type"),
                                              float(data.get("value", 0)), float(data.get("max", 1)), len(done), len(api)))
                elif kind == "execution_cached":
                    done.update(data.get("nodes") or [])
                elif kind == "executed":
                    done.add(str(data.get("node")))
                elif kind == "execution_error":
                    nid = data.get("node_id")
                    raise PersonaError(f"{self.name}: node {nid} ({data.get('node_type')}) of the {graph.label} graph failed: "
                                       f"{data.get('exception_type', 'error')}: {_first_line(data.get('exception_message'))}",
                                       fix="fix that on the server (the model file, its memory) and run the same command "
                                           "again; finished scenes are kept")
                elif kind == "execution_interrupted":
                    raise PersonaError(f"{self.name} interrupted the {graph.label} graph at node {data.get('node_id')} "
                                       f"({data.get('node_type')})",
                                       fix="someone pressed Cancel or /interrupt on that server; run the same command again")
                elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    break  # sent after the history is written (execution_success comes before it)
            timing["wait"] = time.perf_counter() - t
        except KeyboardInterrupt:
            if prompt_id is not None:
                self.interrupt(prompt_id)
            raise
        finally:
            self.running = None
            ws.close(timeout=0.2)  # the default waits up to 3 s for the server's close frame
        t = time.perf_counter()
        entry = self.history(prompt_id)
        timing["history"] = time.perf_counter() - t
        if entry is None:
            raise ServerGone(f"{self.name} lost the {graph.label} graph: /history does not know it",
                             fix="the server restarted; run the same command again (finished scenes are kept)")
        status = entry.get("status") or {}
        timing["execution"] = _execution_seconds(status)
        if status.get("status_str") == "error":
            for kind, data in status.get("messages", []):
                if kind == "execution_error":
                    raise PersonaError(f"{self.name}: node {data.get('node_id')} ({data.get('node_type')}) of the "
                                       f"{graph.label} graph failed: {data.get('exception_type', 'error')}: "
                                       f"{_first_line(data.get('exception_message'))}",
                                       fix="fix that on the server and run the same command again")
        return entry, prompt_id, timing

    def _still_running(self, prompt_id: str, graph: Graph) -> bool:
        """After the websocket dropped: True if the server still queues or runs the prompt, False if it
        finished it; ServerGone if the server is down or restarted (and so forgot the prompt)."""
        gone = ServerGone(f"{self.name} went away while running the {graph.label} graph (the server stopped or restarted)",
                          fix="start it again and run the same command: finished scenes are kept and it resumes at this one")
        for _ in range(3):
            try:
                if self.history(prompt_id) is not None:
                    return False
                q = self._json("GET", "/queue")
            except ServerGone:
                time.sleep(1.0)
                continue
            waiting = [item[1] for key in ("queue_running", "queue_pending") for item in q.get(key, [])]
            if prompt_id in waiting:
                return True
            raise gone
        raise gone


def _first_line(text: Any, limit: int = 300) -> str:
    """A server's exception message as one line (PyTorch's load errors put the reason on line two)."""
    line = " ".join(str(text or "").split()) or "(no message)"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _json_or_none(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _output_files(output: dict[str, Any]) -> list[dict[str, Any]]:
    """File references in one node's /history output (images, video, audio, gifs)."""
    return [item for value in output.values() if isinstance(value, list)
            for item in value if isinstance(item, dict) and "filename" in item]


def _execution_seconds(status: dict[str, Any]) -> float:
    """The server's own execution time, from the timestamps (ms) of its status messages."""
    stamps = {kind: data.get("timestamp") for kind, data in status.get("messages", []) if isinstance(data, dict)}
    start = stamps.get("execution_start")
    end = stamps.get("execution_success") or stamps.get("execution_error") or stamps.get("execution_interrupted")
    return round((end - start) / 1000, 4) if start and end else 0.0


# ------------------------------------------------------------------------------------------------
# Several servers
# ------------------------------------------------------------------------------------------------
class Dispatcher:
    """Runs jobs on whichever server is free: one worker thread per server takes the next job.
    Results come back in the caller's thread as they finish, so the caller records each one (a scene
    is kept the moment it is done). A server that goes away hands its job to the others; any other
    failure stops handing out jobs, lets running ones finish (their results still come back), then is
    raised. Ctrl-C interrupts what every server runs and is re-raised."""

    def __init__(self, clients: Sequence[ComfyUI]):
        if not clients:
            raise PersonaError("the ComfyUI engine needs a server",
                               fix=f"give --comfyui-url http://HOST:8188, set {ENV_URL}, or [comfyui] urls in the render settings")
        self.clients = list(clients)

    @classmethod
    def from_urls(cls, urls: Sequence[str], settings: ComfyUISettings | None = None) -> Dispatcher:
        return cls([ComfyUI(u, settings) for u in urls])

    def run(self, jobs: Iterable[T], work: Callable[[ComfyUI, T], R]) -> Iterator[tuple[T, R]]:
        pending: queue.Queue[T] = queue.Queue()
        for job in jobs:
            pending.put(job)
        results: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
        stop, lock, in_flight = threading.Event(), threading.Lock(), [0]

        def take() -> tuple[bool, Any]:
            with lock:
                try:
                    job = pending.get_nowait()
                except queue.Empty:
                    return False, in_flight[0] == 0  # nothing left, and nothing that could come back
                in_flight[0] += 1
                return True, job

        def worker(client: ComfyUI) -> None:
            while not stop.is_set():
                got, job = take()
                if not got:
                    if job:
                        break
                    time.sleep(0.2)  # a job running elsewhere may come back if its server goes away
                    continue
                try:
                    results.put(("done", job, work(client, job)))
                except ServerGone as e:
                    pending.put(job)  # another server may do it (put back before in_flight drops)
                    results.put(("gone", job, e))
                    return
                except BaseException as e:  # noqa: BLE001 - carried to the caller's thread and raised there
                    stop.set()
                    results.put(("failed", job, e))
                    return
                finally:
                    with lock:
                        in_flight[0] -= 1
            results.put(("idle", None, None))

        threads = [threading.Thread(target=worker, args=(c,), daemon=True, name=f"comfyui {c.url}") for c in self.clients]
        for th in threads:
            th.start()
        alive, error, last_gone = len(threads), None, None
        try:
            while alive:
                try:
                    kind, job, value = results.get(timeout=0.5)
                except queue.Empty:
                    continue
                if kind == "done":
                    yield job, value
                elif kind == "idle":
                    alive -= 1
                elif kind == "gone":
                    alive, last_gone = alive - 1, value
                else:
                    alive, error = alive - 1, error or value
            if error is not None:
                raise error
            if not pending.empty() and last_gone is not None:
                raise last_gone
        except (KeyboardInterrupt, GeneratorExit):
            stop.set()
            for c in self.clients:
                if c.running:
                    c.interrupt(c.running)
            raise

    def close(self) -> None:
        for c in self.clients:
            c.close()


# ------------------------------------------------------------------------------------------------
# Model discovery (persona doctor)
# ------------------------------------------------------------------------------------------------
def discover(client: ComfyUI, configured: dict[str, str] | None = None) -> dict[str, Any]:
    """What one server offers, per render stage: for each mode, the model files it needs (the one the
    server has, or the one to put in which models/ folder) and the nodes it lacks. Never raises for an
    unreachable server: that is part of the report."""
    configured = configured or {}
    try:
        info = client.object_info()
        stats = client.system_stats()
    except PersonaError as e:
        return {"url": client.url, "reachable": False, "error": str(e)}
    system = stats.get("system", {})
    devices = stats.get("devices") or [{}]
    stages: dict[str, list[dict[str, Any]]] = {}
    for stage, modes in STAGE_NEEDS.items():
        for mode, roles, nodes in modes:
            models = []
            for key in roles:
                role = ROLES[key]
                name, found = pick_model(role, info, configured.get(key))
                models.append({"role": key, "title": role.title, "folder": role.folder, "file": name, "found": found,
                               "fix": None if found else f"put {name} in ComfyUI/models/{role.folder}/ (from {role.source})"})
            missing_nodes = [n for n in nodes if n not in info]
            stages.setdefault(stage, []).append({
                "mode": mode, "models": models, "missing_nodes": missing_nodes,
                "ready": not missing_nodes and all(m["found"] for m in models)})
    return {"url": client.url, "reachable": True, "version": system.get("comfyui_version"),
            "device": devices[0].get("name"), "vram_gb": round((devices[0].get("vram_total") or 0) / 2**30, 1),
            "stages": stages}
