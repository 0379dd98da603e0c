"""Render overhead on the tiny models: model loads per render, and what a one-scene edit costs.

Prints: model loads per render (must equal the number of distinct models the render needs), and the
wall time of re-rendering after editing one scene's narration as a fraction of the full render.

    python benchmarks/render_overhead.py
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from persona import tiny  # noqa: E402
from persona.inference.render import render  # noqa: E402
from persona.progress import quiet_libraries  # noqa: E402
from persona.workspace import Consent, Workspace  # noqa: E402

SCRIPT = {
    "title": "How computers see",
    "scenes": [
        {"narration": "Today we look at how computers see pictures. It starts with numbers.",
         "image_prompt": "the presenter in a lecture hall, medium shot", "motion_prompt": "slow push-in",
         "on_camera": True},
        {"narration": "Every image is a grid of numbers.", "image_prompt": "a pixel grid on a monitor",
         "motion_prompt": "slow pan", "on_camera": False},
        {"narration": "A network learns edges, then shapes, then whole objects.",
         "image_prompt": "the presenter at a whiteboard, half body shot", "motion_prompt": "static camera",
         "on_camera": True},
        {"narration": "That is all there is to it. Thanks for watching!",
         "image_prompt": "the presenter smiling, close-up", "motion_prompt": "gentle nod", "on_camera": True},
    ],
}


def main() -> None:
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = tiny.build_all(root / "models")
        consent = Consent(person="Bench", granted_by="Bench", date=dt.date.today(), scope="benchmark")
        ws = Workspace.create(root / "ws", "Bench Mark", consent=consent)
        # FILM is code: a user's own setting (here the environment), never a pack's [models]
        os.environ["PERSONA_FILM"] = str(models.pop("film"))
        ws.update("models", {k: str(v) for k, v in models.items() if k != "speaker-embedding"})
        tiny.fill_pack(ws, models)
        script = root / "script.json"
        script.write_text(json.dumps(SCRIPT))

        t0 = time.perf_counter()
        full = render(ws, None, script_file=script, name="bench", profile="demo")
        t_full = time.perf_counter() - t0
        distinct = len(full["model_loads"])
        loads = sum(full["model_loads"].values())

        edited = json.loads(script.read_text())
        edited["scenes"][2]["narration"] = "A network learns edges first, then shapes, then whole objects."
        (ws.root / "renders/bench/script.json").write_text(json.dumps(edited))
        t0 = time.perf_counter()
        again = render(ws, None, name="bench", profile="demo")
        t_edit = time.perf_counter() - t0

        print(f"scenes: {len(SCRIPT['scenes'])}")
        print(f"model loads per render: {loads} (distinct models: {distinct}) {full['model_loads']}")
        print(f"full render: {t_full:.1f} s")
        print(f"re-render after a one-scene edit: {t_edit:.1f} s = {t_edit / t_full:.0%} of a full render "
              f"(loads: {again['model_loads']}; redone: "
              f"{ {k: v['rendered'] for k, v in again['stages'].items() if v.get('rendered')} })")
        print("seconds per stage, full / after the edit: " + ", ".join(
            f"{k} {full['stages'][k]['seconds']:.1f}/{again['stages'][k]['seconds']:.1f}" for k in full["stages"]))


if __name__ == "__main__":
    main()
