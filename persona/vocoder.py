"""The Vocos vocoder (mel -> 24 kHz waveform) that F5-TTS speaks through, built safely from a local folder.

In the core because two stages speak: `persona speak`/`render` (inference) and train-voice, which
listens to its checkpoints to pick one by likeness.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from persona.errors import PersonaError
from persona.models import load_weights

# The classes a Vocos config.yaml may name (charactr/vocos-mel-24khz's). vocos' own `from_hparams`
# imports whatever `class_path` says, so a config from a pack could name `os.system`; persona builds
# these three itself from the config's numbers instead.
VOCOS_PARTS = {
    "feature_extractor": ("vocos.feature_extractors", "MelSpectrogramFeatures"),
    "backbone": ("vocos.models", "VocosBackbone"),
    "head": ("vocos.heads", "ISTFTHead"),
}


def load_vocos(folder: Path, device: str = "cpu") -> Any:
    """The Vocos vocoder in `folder` (config.yaml + pytorch_model.bin, as charactr/vocos-mel-24khz),
    built without importing anything the config names and loaded with weights_only."""
    import importlib

    import yaml
    from vocos import Vocos

    config_file = Path(folder) / "config.yaml"
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise PersonaError(f"is not a Vocos config ({e.__class__.__name__})", file=config_file,
                           fix="use charactr/vocos-mel-24khz's config.yaml") from None
    parts = {}
    for part, (module, name) in VOCOS_PARTS.items():
        entry = config.get(part) if isinstance(config, dict) else None
        named = entry.get("class_path") if isinstance(entry, dict) else None
        args = entry.get("init_args", {}) if isinstance(entry, dict) else None
        if named != f"{module}.{name}" or not isinstance(args, dict) \
                or not all(isinstance(v, (int, float, bool, str, type(None))) for v in args.values()):
            raise PersonaError(f"refused: {part} must be {module}.{name} with plain numbers, not {named!r}",
                               file=config_file, fix="use charactr/vocos-mel-24khz's config.yaml (a mel Vocos)")
        try:
            parts[part] = getattr(importlib.import_module(module), name)(**args)
        except TypeError as e:
            raise PersonaError(f"{part}: {e}", file=config_file, fix="use charactr/vocos-mel-24khz's config.yaml") from None
    vocoder = Vocos(**parts)
    weights = Path(folder) / "pytorch_model.bin"
    try:
        vocoder.load_state_dict(load_weights(weights))
    except RuntimeError as e:
        raise PersonaError(f"does not match its config.yaml ({str(e).splitlines()[0][:160]})", file=weights,
                           fix="use the config.yaml that came with these weights") from None
    return vocoder.eval().to(device)
