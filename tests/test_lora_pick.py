"""train-lora's choice of step and strength by likeness: the picking logic on planted scores, the
scorer on real pictures (scikit-image's portrait, and ../shared/media footage when present), and a
tiny-cpu training end to end (random weights draw no faces: the fallback must say so)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from persona import faces as fx
from persona import likeness as lk
from persona import samples
from persona.config import resolve_settings
from persona.files import read_json, write_json
from persona.train.lora import LoraSettings, Scorer, train_lora

TOKEN = "TestPerson"
ROWS = [f"a photo of {TOKEN}", "a photo of a person"]


def planted(identity: float | None, leak: float = 0.0, faces: int = 4) -> dict:
    return {"identity": identity, "leak": leak, "faces": faces if identity is not None else 0, "token_cells": 4}


# ---- the pure picking logic -----------------------------------------------------------------------
def test_pick_keeps_the_earliest_step_within_tolerance_of_the_best():
    scores = {250: planted(0.70), 500: planted(0.46), 750: planted(0.44), 1000: planted(0.43), 1250: planted(0.60)}
    pick = lk.pick_checkpoint(scores, last=1250, tolerance=0.03, leak_weight=0.25)
    assert (pick["step"], pick["best_step"]) == (500, 1000)  # 0.46 <= 0.43 + 0.03: the earliest such step
    assert "overtraining" in pick["reason"] and "step 1000" in pick["reason"]
    exact = lk.pick_checkpoint(scores, last=1250, tolerance=0.0, leak_weight=0.25)
    assert exact["step"] == 1000 and "best of 5" in exact["reason"]
    # only steps that may still win keep their weights: 500, 750, 1000 (1250 and 250 never can)
    assert lk.within_reach(scores, 0.03, 0.25) == {500, 750, 1000}


def test_leak_is_penalised():
    scores = {300: planted(0.40, leak=1.0), 600: planted(0.44, leak=0.0)}
    assert lk.pick_checkpoint(scores, 600, tolerance=0.0, leak_weight=0.25)["step"] == 600  # 0.65 vs 0.44
    assert lk.pick_checkpoint(scores, 600, tolerance=0.0, leak_weight=0.0)["step"] == 300


def test_steps_without_a_face_are_never_picked_and_none_at_all_falls_back_to_last():
    scores = {3: planted(None), 6: planted(0.5), 9: planted(None)}
    assert lk.pick_checkpoint(scores, 9, 0.03, 0.25)["step"] == 6
    assert lk.within_reach({3: planted(None)}, 0.03, 0.25) == set()
    none = lk.pick_checkpoint({3: planted(None), 6: planted(None)}, 6, 0.03, 0.25)
    assert none["step"] == 6 and none["fallback"] and "no face" in none["reason"] and "last step (6)" in none["reason"]
    assert "no sample grid was scored" in lk.pick_checkpoint({}, 6, 0.03, 0.25)["reason"]


def test_strength_sweep_picks_the_lowest_score_ties_nearest_one():
    sweep = [{"strength": 0.6, **planted(0.62)}, {"strength": 0.8, **planted(0.45)},
             {"strength": 1.0, **planted(0.41, leak=0.5)}, {"strength": 1.2, **planted(0.40, leak=1.0)}]
    best = lk.pick_strength(sweep, leak_weight=0.25, default=1.0)
    assert best["strength"] == 0.8 and "0.6, 0.8, 1, 1.2" in best["reason"]  # 0.45 < 0.535 < 0.65
    tie = [{"strength": s, **planted(0.5)} for s in (0.6, 0.8, 1.2)]
    assert lk.pick_strength(tie, 0.25, 1.0)["strength"] == 0.8
    none = lk.pick_strength([{"strength": 1.0, **planted(None)}], 0.25, default=0.9)
    assert none["strength"] == 0.9 and none["fallback"]


# ---- the scorer on real pictures -------------------------------------------------------------------
def grid(cells: list[list[np.ndarray]], size: int = 512) -> Image.Image:
    sheet = Image.new("RGB", (len(cells[0]) * size, len(cells) * size))
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            sheet.paste(Image.fromarray(cell).resize((size, size)), (c * size, r * size))
    return sheet


def test_scorer_scores_grids_keeps_candidates_and_reuses_stored_scores(tmp_path):
    """The astronaut portrait is "the person"; the cameraman photo has no frontal face dlib finds."""
    person, other = samples.portrait(), samples.other_person()
    be = fx.backend("dlib")
    reference = {"backend": "dlib", "match_distance": 0.55,
                 "embedding": be.embed(person, lk.main_face(person, be)).tolist()}
    s = resolve_settings(LoraSettings, "lora", "tiny-cpu", {"sample_size": 512, "sample_every": 3, "steps": 9,
                                                           "sample_prompts": ["a photo of {token}"]})
    rows = ["a photo of TestPerson", "a photo of a person"]
    mirrored = np.ascontiguousarray(person[:, ::-1])
    good = grid([[person, mirrored], [other, other]])  # the person with the token, nobody without
    leaky = grid([[mirrored, mirrored], [person, person]])  # the person shows up without the token too
    lost = grid([[other, other], [other, other]])  # no face with the token
    run = tmp_path / "run"
    scorer = Scorer(run, reference, rows, TOKEN, s)
    for step, sheet in [(3, good), (6, leaky), (9, lost)]:
        sheet.save(tmp_path / f"{step}.png")
        score = scorer.score(step, tmp_path / f"{step}.png")
        assert 0 <= score["faces"] <= score["token_cells"] == 2 and 0.0 <= score["leak"] <= 1.0
        assert score["identity"] is None or 0.0 <= score["identity"] <= lk.NO_FACE_DISTANCE
        scorer.keep(step, {"w": __import__("torch").full((2,), float(step))})
    g, lk_, lo = scorer.scores[3], scorer.scores[6], scorer.scores[9]
    assert g["identity"] < 0.15 and g["leak"] == 0.0 and g["faces"] == 2
    assert lk_["leak"] == 1.0 and lk_["identity"] < 0.3
    assert lo["identity"] is None and lo["faces"] == 0
    # step 6 looks alike but leaks (0.20 + 0.25 > 0.10 + 0.03); step 9 has no face: only step 3 is kept
    assert sorted(p.name for p in (run / "likeness").glob("*.safetensors")) == ["step-000003.safetensors"]
    assert scorer.choose()["step"] == 3

    # a resumed run (from step 6) reads the stored scores instead of scoring again: the grids are gone
    for step in (3, 6, 9):
        (tmp_path / f"{step}.png").unlink()
    again = Scorer(run, reference, rows, TOKEN, s)
    again.resume(6)
    assert again.scores == {3: g, 6: lk_}
    assert again.score(9, tmp_path / "9.png") == lo
    assert float(again.weights(3)["w"][0]) == 3.0
    # other sample settings are another grid: not reused
    changed = Scorer(run, reference, rows, TOKEN, s.model_copy(update={"sample_seeds": [7, 8]}))
    changed.resume(9)
    assert changed.scores == {}


def _frames(path: Path, seconds: list[float], side: int = 640) -> list[np.ndarray]:
    from persona.media import iter_frames

    want, out = sorted(seconds), []
    for t, rgb in iter_frames(path, 1.0):
        if want and t >= want[0]:
            out.append(lk._small(rgb, side))
            want.pop(0)
        if not want:
            break
    return out


def letterbox(rgb: np.ndarray, side: int = 512) -> np.ndarray:
    im = Image.fromarray(rgb)
    im.thumbnail((side, side))
    canvas = Image.new("RGB", (side, side), (128, 128, 128))
    canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return np.asarray(canvas)


def test_real_frames_of_the_person_outrank_another_person(shared_media, tmp_path):
    """Frames of the person as one step's samples and of another person as another step's: the
    person's step is picked, and the person's face in a token-less row counts as a leak."""
    man, woman = shared_media / "footage" / "latentsync_demo2.mp4", shared_media / "footage" / "latentsync_demo1.mp4"
    ref_frames = _frames(man, [0, 2, 4, 6, 8])
    be = fx.backend("dlib")
    reference = {"backend": "dlib", "match_distance": be.match_distance,
                 "embedding": lk.reference_face([be.embed(f, lk.main_face(f, be)) for f in ref_frames]).tolist()}
    him, her = _frames(man, [12, 14]), _frames(woman, [1, 3])
    s = resolve_settings(LoraSettings, "lora", "tiny-cpu", {"steps": 4, "sample_every": 2,
                                                           "sample_prompts": ["a photo of {token}"]})
    scorer = Scorer(tmp_path / "run", reference, ROWS, TOKEN, s)
    square = [letterbox(f) for f in him + her]  # the footage is 9:16; samples are square
    grid([[square[2], square[3]], [square[0], square[0]]]).save(tmp_path / "her.png")  # her, and him leaking
    grid([[square[0], square[1]], [square[2], square[3]]]).save(tmp_path / "him.png")
    at_2, at_4 = scorer.score(2, tmp_path / "her.png"), scorer.score(4, tmp_path / "him.png")
    assert at_4["identity"] < be.match_distance < at_2["identity"]
    assert at_2["leak"] == 1.0 and at_4["leak"] == 0.0
    assert scorer.choose()["step"] == 4


# ---- a tiny-cpu training ---------------------------------------------------------------------------
def test_tiny_training_scores_every_grid_and_says_why_it_fell_back(make_workspace, tmp_path):
    from test_train_lora import write_dataset

    ws = make_workspace()
    write_dataset(ws.root / "datasets" / "images", ws.token)
    ws.update("datasets", {"images": "datasets/images"})
    s = resolve_settings(LoraSettings, "lora", "tiny-cpu", {"steps": 4, "sample_every": 2, "checkpoint_every": 2})

    no_ref = train_lora(ws, s, force=True, resume=False)
    assert no_ref["pick"]["fallback"] and "reference_face.json" in no_ref["pick"]["reason"][0]
    assert no_ref["pick"]["step"] == 4 and "plot" not in no_ref["pick"]

    person = samples.portrait()
    be = fx.backend("dlib")
    write_json(ws.root / "datasets" / "images" / "reference_face.json",
               {"backend": "dlib", "faces": 1, "match_distance": 0.55,
                "embedding": be.embed(person, lk.main_face(person, be)).tolist()})
    resumed = train_lora(ws, s)  # the same run, resumed from step 2: the pick's key includes the reference
    assert resumed["resumed_from"] == 2 and "steps 2 were sampled before scoring was on" in resumed["pick"]["reason"][0]
    assert [x["step"] for x in read_json(resumed["pick"]["likeness"])["steps"]] == [4]

    summary = train_lora(ws, s, force=True, resume=False)  # --restart: every step scored
    record = read_json(summary["pick"]["likeness"])
    assert [x["step"] for x in record["steps"]] == [0, 2, 4]
    for x in record["steps"]:
        assert x["token_cells"] == 4 and 0 <= x["faces"] <= 4 and 0.0 <= x["leak"] <= 1.0
        assert x["identity"] is None or 0.0 <= x["identity"] <= lk.NO_FACE_DISTANCE
        assert len(x["distances"]) == 4 and all(len(r) == 2 for r in x["distances"])
    assert record["chosen_step"] == 4 and record["fallback"] and "no face" in record["step_reason"]
    assert Path(summary["pick"]["plot"]).stat().st_size > 1000
    assert ws.pack.lora.strength == s.strength and ws.pack.lora.steps == 4

    last = train_lora(ws, s, pick="last")
    assert last["pick"]["reason"][0].startswith("--pick last") and not last["pick"]["fallback"]
    assert json.loads(Path(last["pick"]["likeness"]).read_text())["pick"] == "last"


def test_a_picked_earlier_step_is_exported_and_its_strength_swept(make_workspace):
    """A stored score (as a resumed run finds it) makes step 2 of 4 the only step with a face: its
    weights are exported (the same as a 2-step run's), and the strength sweep draws it at every strength."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from test_train_lora import write_dataset

    ws = make_workspace()
    write_dataset(ws.root / "datasets" / "images", ws.token)
    ws.update("datasets", {"images": "datasets/images"})
    person = samples.portrait()
    be = fx.backend("dlib")
    write_json(ws.root / "datasets" / "images" / "reference_face.json",
               {"backend": "dlib", "faces": 1, "match_distance": 0.55,
                "embedding": be.embed(person, lk.main_face(person, be)).tolist()})
    s = resolve_settings(LoraSettings, "lora", "tiny-cpu", {"steps": 4, "sample_every": 2, "checkpoint_every": 0})
    first = train_lora(ws, s, force=True)
    stored = Path(first["run_dir"]) / "likeness" / "step-000002.json"
    planted_score = read_json(stored)
    planted_score["score"]["distances"][0][0] = 0.3  # as if the first token cell had shown the person
    planted_score["score"].update(faces=1, identity=round((0.3 + 3 * lk.NO_FACE_DISTANCE) / 4, 4))
    write_json(stored, planted_score)

    summary = train_lora(ws, s, force=True)
    pick = summary["pick"]
    assert pick["step"] == 2 and not pick["fallback"] and "step 2" in pick["reason"][0]
    record = read_json(pick["likeness"])
    assert [x["strength"] for x in record["sweep"]] == s.sweep_strengths
    swept = {x["strength"]: x for x in record["sweep"]}
    assert swept[1.0]["faces"] == 1 and all(swept[k]["faces"] == 0 for k in (0.6, 0.8, 1.2))  # drawn, faceless
    assert pick["strength"] == 1.0 and ws.pack.lora.strength == 1.0 and ws.pack.lora.steps == 2
    assert len(list((Path(first["run_dir"]) / "likeness").glob("sweep-*.json"))) == 3
    with safe_open(summary["lora"], "pt") as f:
        assert f.metadata()["persona.steps"] == "2"
    exported = load_file(summary["lora"])

    two = train_lora(ws, s.model_copy(update={"steps": 2}), force=True, pick="last")
    expected = load_file(two["lora"])
    assert exported.keys() == expected.keys()
    for k in exported:
        assert (exported[k] == expected[k]).all(), k


KOHYA_STAND_IN = '''
import sys, tomllib
from pathlib import Path
import numpy as np, torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data
args = {k: v for section in tomllib.loads(Path(sys.argv[2]).read_text()).values() for k, v in section.items()}
assert "save_last_n_steps" not in args and "save_last_n_steps_state" in args  # step files kept, states pruned
out, name, steps = Path(args["output_dir"]), args["output_name"], args["max_train_steps"]
(out / "sample").mkdir(parents=True, exist_ok=True)
lines = [ln for ln in Path(args["sample_prompts"]).read_text().splitlines() if ln.strip()]
person, nobody = data.astronaut(), np.repeat(data.camera()[..., None], 3, axis=2)
key = "lora_unet_double_blocks_0_img_attn_qkv"
for step in range(1, steps + 1):
    print(f"steps: {100 * step // steps}%| | {step}/{steps} [00:01<00:01, 1.00it/s, avr_loss=0.4]", flush=True)
    if step % args["sample_every_n_steps"] == 0:
        for i, line in enumerate(lines):  # the person only with the token, and only at step 2
            face = person if step == 2 and "TestPerson" in line.split(" --")[0] else nobody
            Image.fromarray(face).save(out / "sample" / f"{name}_{step:06d}_{i:02d}_20260101000000_{i}.png")
    weights = {f"{key}.lora_down.weight": torch.full((4, 8), float(step)), f"{key}.alpha": torch.tensor(4.0)}
    if step % args["save_every_n_steps"] == 0 and step < steps:
        save_file(weights, str(out / f"{name}-step{step:08d}.safetensors"))
save_file(weights, str(out / f"{name}.safetensors"))
'''


def test_kohya_samples_are_scored_and_the_picked_step_file_exported(make_workspace, tiny_models, tmp_path, own_config):
    """sd-scripts stands in as a script writing sample images the way kohya names them (real pictures:
    the portrait with the token at step 2, a faceless photo elsewhere) and step LoRA files."""
    import shutil

    from safetensors.torch import load_file

    ws = make_workspace(name="Test Person")
    assert ws.token == TOKEN
    from test_train_lora import write_dataset

    write_dataset(ws.root / "datasets" / "images", ws.token)
    ws.update("datasets", {"images": "datasets/images"})
    repo = tmp_path / "sd-scripts"
    repo.mkdir()
    (repo / "flux_train_network.py").write_text(KOHYA_STAND_IN)
    flux = tmp_path / "flux"
    shutil.copytree(tiny_models["flux"], flux)
    (flux / "ae.safetensors").write_bytes(b"")
    (flux / "flux1-dev.safetensors").write_bytes(b"")
    ws.update("models", {"flux": str(flux)})
    own_config(models={"sd-scripts": repo})
    person = samples.portrait()
    be = fx.backend("dlib")
    write_json(ws.root / "datasets" / "images" / "reference_face.json",
               {"backend": "dlib", "faces": 1, "match_distance": 0.55,
                "embedding": be.embed(person, lk.main_face(person, be)).tolist()})
    s = resolve_settings(LoraSettings, "lora", "tiny-cpu", {"steps": 4, "sample_every": 2, "checkpoint_every": 2,
                                                           "sample_size": 512, "bucket_step": 64,
                                                           "resolutions": [64, 128]})
    summary = train_lora(ws, s, backend="kohya")
    pick = summary["pick"]
    assert pick["step"] == 2 and not pick["fallback"] and "kohya backend: no strength sweep" in pick["reason"][1]
    assert float(load_file(summary["lora"])["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"][0, 0]) == 2.0
    record = read_json(pick["likeness"])
    assert [x["step"] for x in record["steps"]] == [2, 4] and record["steps"][0]["faces"] == 4
    assert record["steps"][0]["identity"] < 0.1 and record["steps"][1]["identity"] is None
    assert ws.pack.lora.steps == 2 and ws.pack.lora.strength == s.strength
    out_dir = Path(summary["run_dir"]) / "kohya" / "output"
    assert [p.name for p in out_dir.glob("*-step*.safetensors")] == ["persona-lora-step00000002.safetensors"]


def test_scaling_b_is_the_adapter_strength(tiny_models):
    """The strength sweep scales the LoRA's B matrices; that must equal what render does with
    diffusers' `set_adapters(..., weights=[strength])`."""
    import torch
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig, set_peft_model_state_dict

    from persona.train.lora import TARGET_MODULES
    from persona.train.lora_native import flux_forward, lora_state

    torch.manual_seed(0)
    model = FluxTransformer2DModel.from_pretrained(str(tiny_models["flux"]), subfolder="transformer")
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=TARGET_MODULES))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # trained B: not the zeros it starts from
    state = lora_state(model)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([0.5])
    embeds, pooled = torch.randn(1, 5, 32), torch.randn(1, 32)

    def out() -> torch.Tensor:
        with torch.no_grad():
            return flux_forward(model, x, t, embeds, pooled, 1.0)

    full = out()
    set_peft_model_state_dict(model, {k: v * 0.6 if ".lora_B." in k else v for k, v in state.items()})
    scaled_b = out()
    set_peft_model_state_dict(model, state)
    model.set_adapters(["default"], weights=[0.6])
    torch.testing.assert_close(scaled_b, out(), rtol=1e-5, atol=1e-5)
    assert (scaled_b - full).abs().max() > 1e-3  # the strength did change the output
