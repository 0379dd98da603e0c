"""Captions: Florence-2 describes each image, and the trigger token takes the place of the person.

A person LoRA learns what the captions leave unsaid, so a caption should name the person by the
token and describe what varies between images (clothes, setting, light, pose, expression), not
what makes the face theirs (beard, eyes, nose), which would otherwise be attributed to the words.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from PIL import Image

from persona.device import default_device


# "The image shows", "In this image we can see", "This is a close-up photo of", ...
_LEAD = re.compile(
    r"^\s*(?:in\s+)?(?:the|this)\s+(?:is\s+)?(?:an?\s+)?(?:close-up\s+)?(?:image|picture|photo(?:graph)?|frame|scene|portrait)"
    r"(?:\s+(?:shows|features|depicts|captures|contains|is\s+an?\s+(?:close-up|photo|picture)\s+of|is\s+of|of"
    r"|we\s+can\s+see|there\s+is))*\s*[,:]?\s*",
    re.IGNORECASE)
_FACE_FEATURE = r"(?:an?\s+)?(?:[\w-]+\s+){0,2}(?:beard|moustache|mustache|goatee|stubble|freckles)\b"
# "with a beard and a black sweater" -> "with a black sweater"; "with a grey beard" -> ""
_FACE_CLAUSE_AND = re.compile(r"\bwith\s+" + _FACE_FEATURE + r"\s*(?:,\s*and|,|and)\s+", re.IGNORECASE)
_FACE_CLAUSE = re.compile(r",?\s+(?:and\s+)?with\s+" + _FACE_FEATURE, re.IGNORECASE)
_FACE_SENTENCE = re.compile(
    r"\b(?:his|her|their|the\s+(?:man|woman|person)'s)\s+(?:beard|moustache|mustache|eyes|nose|eyebrows|skin|"
    r"complexion|facial\s+features|hairline|jawline)\b", re.IGNORECASE)
_EXPRESSION = re.compile(r"smil|frown|expression|looking|gaz|laugh|talk|speak", re.IGNORECASE)


def person_caption(raw: str, token: str) -> str:
    """'The image shows a man with a beard in a kitchen. His eyes are blue.' ->
    'MichaelPound, a man in a kitchen.': the token first, in place of the lead-in naming the image,
    and without clauses and sentences about fixed facial features."""
    text = " ".join(raw.split())
    text = _LEAD.sub("", text, count=1)
    text = _FACE_CLAUSE.sub("", _FACE_CLAUSE_AND.sub("with ", text))
    sentences = re.split(r"(?<=[.!?])\s+", text)
    text = " ".join(s for s in sentences if not _FACE_SENTENCE.search(s) or _EXPRESSION.search(s)).strip(" ,;:")
    if not text:
        return token
    if not text.startswith("I ") and not (len(text) > 1 and text[1].isupper()):  # keep "I", "TV"
        text = text[0].lower() + text[1:]
    return f"{token}, {text}"


class Florence:
    """Florence-2 through transformers' native Florence2ForConditionalGeneration, from a local folder."""

    def __init__(self, path: Path, task: str = "<DETAILED_CAPTION>"):
        import torch
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        self.device = default_device()
        self.dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.task = task
        self.processor = AutoProcessor.from_pretrained(str(path))
        self.model = Florence2ForConditionalGeneration.from_pretrained(str(path), dtype=self.dtype).to(self.device).eval()

    def describe(self, image: Image.Image, max_new_tokens: int = 256) -> str:
        import torch

        inputs = self.processor(text=self.task, images=image.convert("RGB"), return_tensors="pt")
        with torch.inference_mode():
            ids = self.model.generate(input_ids=inputs["input_ids"].to(self.device),
                                      pixel_values=inputs["pixel_values"].to(self.device, self.dtype),
                                      max_new_tokens=max_new_tokens, num_beams=3, do_sample=False)
        text = self.processor.batch_decode(ids, skip_special_tokens=False)[0]
        return str(self.processor.post_process_generation(text, task=self.task, image_size=image.size)[self.task])


def find_florence(models: dict[str, str]) -> tuple[Path | None, str | None]:
    """The local Florence-2 folder, or None and the line saying how to get it."""
    from persona.errors import PersonaError
    from persona.models import locate

    try:
        return locate("florence2", models=models), None
    except PersonaError as e:
        return None, str(e)


def needs_caption(entry: dict[str, Any], captioner: str, token: str) -> bool:
    return entry.get("captioner") != captioner or not str(entry.get("caption", "")).startswith(token)
