"""The render-stage seam: what every per-scene stage shares, and the one loop that runs them.

A stage says only what its artifact depends on (`key`), how much work one scene is (`work`, in
units that move: denoising steps, frames, sentences) and how to make one (`make`); how its model
is loaded is `load`, called lazily by the runner the first time a scene needs it (so a stage whose
outputs are all fresh loads nothing). The runner does the rest for every stage alike: freshness,
moving work made under another scene number, the lazy model and its release, progress, the
`<output>.json` record and the disk-full message. An engine (diffusers in-process today) is what
`load` returns; a stage's `make` calls it.
"""

from __future__ import annotations

import contextlib
import errno
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from persona.errors import PersonaError
from persona.files import hash_json, mark_fresh
from persona.inference.memory import Lazy
from persona.inference.plan import RenderDir, RenderSettings, SceneDir
from persona.models import model_identity
from persona.progress import Meter

if TYPE_CHECKING:
    from persona.workspace import Workspace

Tick = Callable[[float], None]


@dataclass
class RenderJob:
    """One render: the pack, its settings, its folder, and the model loads counted so far."""

    ws: Workspace
    settings: RenderSettings
    rdir: RenderDir
    loads: dict[str, int] = field(default_factory=dict)
    # what the plan and earlier stages decided that later stages follow
    sources: dict[str, str] = field(default_factory=dict)  # per scene: footage, generated, talking, b-roll
    synced: list[str] = field(default_factory=list)  # scenes lip sync made synced.mp4 for

    @property
    def scenes(self) -> list[SceneDir]:
        return self.rdir.scenes


class Stage(ABC):
    """One per-scene render stage. Subclasses set `name`, `output` and `model`, and implement
    `key` and `make`; the rest has defaults that most stages keep."""

    name: ClassVar[str]  # the stage's label in render.json and --until
    output: ClassVar[str]  # the file each scene gets, e.g. "keyframe.png"
    model: str = ""  # what `load` loads, counted in render.json's model_loads

    def scenes(self, job: RenderJob) -> list[SceneDir]:
        """The scenes this stage makes its output for (all by default)."""
        return job.scenes

    @abstractmethod
    def key(self, job: RenderJob, scene: SceneDir) -> str:
        """The hash of everything the scene's output depends on."""

    def work(self, job: RenderJob, scene: SceneDir) -> float:
        """Progress units one scene takes (steps, frames, ...)."""
        return 1

    def load(self, job: RenderJob) -> Any:
        """The model or engine `make` uses; called at most once per render, only when needed."""
        return None

    @abstractmethod
    def make(self, job: RenderJob, scene: SceneDir, model: Lazy, tick: Tick) -> dict[str, Any]:
        """Write `scene.path(self.output)`; return what its record should say besides the key.
        `model.get()` loads the model on first use; `tick(n)` reports n units of progress."""

    def make_all(self, job: RenderJob, scenes: list[SceneDir], model: Lazy, tick: Tick
                 ) -> Iterator[tuple[SceneDir, dict[str, Any]]]:
        """Make every scene in `scenes`, yielding each with its record as it is done. One after the
        other here; an engine with several servers overrides it to make scenes at once."""
        for s in scenes:
            yield s, self.make(job, s, model, tick)

    def summary(self, job: RenderJob) -> dict[str, Any]:
        """Extra fields for this stage's entry in render.json."""
        return {}


def model_key(*parts: Any) -> str:
    """Identity of the models a stage uses, for its cache keys: every stage names its models the same
    way (registry key and `persona.models.model_identity`), so a swapped model redoes its artifacts."""
    return hash_json([p if isinstance(p, (str, int, float, type(None))) else model_identity(Path(p)) for p in parts])


@contextlib.contextmanager
def disk_full_is_kept(stage: str, root: Path) -> Iterator[None]:
    """A full disk becomes one line saying that finished work is kept and how to go on."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise PersonaError(f"the disk is full (stage {stage}); finished stages and scenes are kept",
                               file=root, fix="free some space and run the same command again") from None
        raise


def step_callback(tick: Tick) -> Callable[..., dict[str, Any]]:
    """A diffusers `callback_on_step_end` that reports each denoising step as progress."""
    def on_step(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        tick(1)
        return kwargs

    return on_step


def run_stage(job: RenderJob, stage: Stage, progress: Meter) -> dict[str, Any]:
    """Make `stage`'s output for every scene where it is stale; returns its render.json entry."""
    scenes = stage.scenes(job)
    keys = {s.label: stage.key(job, s) for s in scenes}
    make, result = job.rdir.scenes_to_make(stage.output, keys, scenes)
    progress.update(0, total=sum(stage.work(job, s) for s in make) or 1)
    # A stage without a model of its own counts its loads itself (finish: FILM and the upscaler).
    loads = job.loads if stage.model else {}
    with disk_full_is_kept(stage.name, job.rdir.root), Lazy(lambda: stage.load(job), stage.model, loads) as model:
        for s, info in stage.make_all(job, make, model, progress.advance):
            mark_fresh(s.path(stage.output), keys[s.label], **info)  # kept the moment it is made
    if not make:
        progress.update(1, total=1)
    return {**result, **stage.summary(job)}
