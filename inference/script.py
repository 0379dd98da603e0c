"""The script stage: an LLM turns a topic into scenes, validated against a schema.

Three backends share one interface (`complete(messages, schema) -> str`): Ollama's /api/chat with
`format` set to the JSON schema, any OpenAI-compatible server (`response_format` json_schema: vLLM,
llama.cpp server, LM Studio, Ollama's /v1) and local transformers with schema-constrained decoding
(outlines). Output that fails validation is sent back with the validation error, a few times, then
the stage fails with a clear message. The system prompt is `recipes/prompts/script.txt` (a
workspace's `prompts/script.txt` overrides it).
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from persona.errors import PersonaError
from persona.progress import warn

# A sentence: letters (Latin, with accents), digits, spaces and light punctuation, ending in . ! or ?
# No other . ! ? inside (TTS pacing and subtitles split on them) except in decimals and a few common
# abbreviations, no double quotes or backslashes (JSON escapes trip up small models), and no stray
# bytes (constrained decoders otherwise accept tokens that decode to U+FFFD).
MAX_SENTENCE = 240
MAX_SENTENCES = 3
_CHARS = "A-Za-z0-9À-ÖØ-öø-ÿ ,;:'’()%&/\\-"
_START = "A-Za-z0-9À-ÖØ-öø-ÿ'("
# Abbreviations whose full stop does not end a sentence. Words that also end sentences ("etc.",
# "No.", "St.") are left out: a sentence ending in them would be merged with the next.
ABBREVIATIONS = ("Dr", "Mr", "Mrs", "Ms", "Prof", "vs", "e.g", "i.e", "cf", "approx", "Fig")
_ABBR = "|".join(re.escape(a) for a in ABBREVIATIONS)
NARRATION_RULES = (f"narration is 1 to {MAX_SENTENCES} sentences separated by one space, each ending in . ! or ?, "
                   f"at most {MAX_SENTENCE} characters and starting with a letter, a digit, ' or (; inside a sentence "
                   "only letters, digits, spaces and , ; : ' ’ ( ) % & / - are allowed (no double quotes, no "
                   "backslashes), and a . only in decimals (3.5) and abbreviations (" +
                   ", ".join(a + "." for a in ABBREVIATIONS[:5]) + ", e.g.)")


def sentence_pattern(max_sentence_chars: int = MAX_SENTENCE) -> str:
    """One sentence as the validator reads it: decimals and abbreviations may hold a full stop.
    ({0,N} counts pieces, not characters; the validator checks the length exactly.)"""
    return rf"(?:(?:{_ABBR})\.|[{_START}])(?:[{_CHARS}]|\.[0-9]|(?:{_ABBR})\.){{0,{max_sentence_chars - 2}}}[.!?]"


def narration_pattern(max_sentence_chars: int = MAX_SENTENCE) -> str:
    """The narration as LLMs are constrained to write it: the plain form, without abbreviations or
    decimals, which would multiply the states of a constrained decoder's automaton (outlines took
    minutes and gigabytes on it) and which a narrator reads better spelled out anyway."""
    sentence = rf"[{_START}][{_CHARS}]{{0,{max_sentence_chars - 2}}}[.!?]"
    return rf"^{sentence}( {sentence}){{0,{MAX_SENTENCES - 1}}}$"


NARRATION_PATTERN = narration_pattern()
_SENTENCE = re.compile(sentence_pattern())
# A sentence ends at . ! or ? followed by space, unless the full stop closes an abbreviation.
SENTENCE_END = re.compile(r"(?<=[.!?])" + "".join(rf"(?<!\b{re.escape(a)}\.)" for a in ABBREVIATIONS) + r"\s+")
_ALLOWED = re.compile(rf"[{_CHARS}.!?]")


def narration_problem(text: str, max_sentence_chars: int = MAX_SENTENCE) -> str | None:
    """What breaks the narration rules, in words (None when it keeps them)."""
    bad = next((c for c in text if not _ALLOWED.fullmatch(c)), None)
    if bad is not None:
        return f"the character {bad!r} is not allowed"
    if text != text.strip() or not text:
        return "it starts or ends with a space"
    if text[-1] not in ".!?":
        return "it does not end in . ! or ?"
    sentences = SENTENCE_END.split(text)
    if len(sentences) > MAX_SENTENCES:
        return f"it has {len(sentences)} sentences"
    if "  " in text:
        return "it has two spaces in a row"
    for i, sentence in enumerate(sentences, 1):
        if len(sentence) > max_sentence_chars:
            return f"sentence {i} has {len(sentence)} characters"
        if not re.match(rf"[{_START}]", sentence):
            return f"sentence {i} starts with {sentence[0]!r}"
        if not _SENTENCE.fullmatch(sentence):
            return f"sentence {i} has . ! or ? inside it (\"{sentence[:40]}\")"
    return None


class Scene(BaseModel):
    model_config = ConfigDict(extra="forbid")

    narration: str = Field(min_length=2, max_length=750, description="1 to 3 spoken sentences")
    image_prompt: str = Field(min_length=3, max_length=400, description="what the keyframe shows")
    motion_prompt: str = Field(min_length=3, max_length=200, description="how the shot moves")
    on_camera: bool = Field(description="is the person on screen in this scene?")
    # Only for on-camera scenes; None follows the render setting presenter.source. Not asked of the
    # LLM (it is a production choice, not part of the writing): set it by editing script.json.
    presenter: Literal["footage", "generated", "talking"] | None = Field(
        default=None, description="footage: the person's own clip, lip-synced; generated: FLUX + Wan, lip-synced; "
                                  "talking: FLUX + audio-driven video (ComfyUI engine)")

    @field_validator("narration")
    @classmethod
    def _narration_rules(cls, text: str) -> str:
        problem = narration_problem(text)
        if problem:
            raise ValueError(f"{problem}; {NARRATION_RULES}")
        return text

    def sentences(self) -> list[str]:
        return [s for s in SENTENCE_END.split(self.narration.strip()) if s]


class Script(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=120)
    scenes: list[Scene] = Field(min_length=1, max_length=16)


def script_schema(s: "ScriptSettings") -> dict[str, Any]:
    """The JSON schema sent to LLMs: pydantic's, with $refs inlined (several servers ignore $defs),
    tightened to the settings' limits (constrained decoders then cannot produce anything longer)."""
    schema = Script.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].split("/")[-1]])
            return {k: inline(v) for k, v in node.items() if k != "title" or not isinstance(v, str)}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    schema = inline(schema)
    schema["properties"]["scenes"].update(minItems=s.min_scenes, maxItems=s.max_scenes)
    schema["properties"]["title"]["maxLength"] = s.max_title_chars
    scene = schema["properties"]["scenes"]["items"]
    scene["properties"].pop("presenter", None)  # a production choice the user makes, not the LLM
    narration = scene["properties"]["narration"]
    narration["pattern"] = narration_pattern(s.max_sentence_chars)
    # The pattern bounds the length; outlines ignores a pattern that comes with min/maxLength.
    narration.pop("maxLength", None)
    narration.pop("minLength", None)
    for key in ("image_prompt", "motion_prompt"):
        scene["properties"][key]["maxLength"] = s.max_prompt_chars
    for obj in (schema, scene):
        obj["additionalProperties"] = False
        obj["required"] = list(obj["properties"])
    return schema


def load_script(path: str | Path, settings: "ScriptSettings | None" = None) -> Script:
    """A script.json, validated, with at most `settings.max_scenes` scenes (the default settings'
    when none are given)."""
    path = Path(path)
    max_scenes = (settings or ScriptSettings()).max_scenes
    try:
        script = Script.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PersonaError("not found", file=path, fix="check the path given to --script") from None
    except UnicodeDecodeError:
        raise PersonaError("is not UTF-8 text", file=path, fix="save the script as UTF-8 JSON") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PersonaError(f"invalid script at {where}: {first['msg'].removeprefix('Value error, ')}", file=path,
                           fix=f"fix that field; {SCRIPT_SHAPE}") from None
    if len(script.scenes) > max_scenes:
        raise PersonaError(f"the script has {len(script.scenes)} scenes (limit {max_scenes})", file=path,
                           fix=f"cut it to {max_scenes} scenes, or make two videos of it")
    return script


SCRIPT_SHAPE = ('a script is {"title": "...", "scenes": [{"narration": "...", "image_prompt": "...", '
                '"motion_prompt": "...", "on_camera": true}, ...]}')


# ------------------------------------------------------------------------------------------------
class Backend(Protocol):
    name: str

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> str: ...


# A dropped connection (a server restarting, a proxy timing out, Ollama swapping models) is worth
# a few retries; a refused one means no server is running, and that is said at once.
RETRIES = 3
BACKOFF_SECONDS = 2.0  # doubled after each try: 2, 4, 8 s
RETRY_HTTP = (429, 502, 503, 504)


def _dropped(e: BaseException) -> bool:
    reason = getattr(e, "reason", None) if isinstance(e, urllib.error.URLError) else e
    if isinstance(e, urllib.error.HTTPError):
        return e.code in RETRY_HTTP
    return isinstance(reason, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
                               http.client.RemoteDisconnected, http.client.IncompleteRead))


def _post_json(url: str, body: dict[str, Any], headers: dict[str, str] | None = None, timeout: float = 600) -> Any:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    for attempt in range(RETRIES + 1):
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read().decode())
        except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as e:
            if not _dropped(e):
                _raise_unreachable(url, e)
            if attempt == RETRIES:
                raise PersonaError(f"the LLM server at {url} dropped the connection {RETRIES + 1} times ({e})",
                                   fix="check the server's log, then render again (finished work is kept)") from None
            delay = BACKOFF_SECONDS * 2**attempt
            warn(f"the LLM server at {url} dropped the connection ({e.__class__.__name__}); retrying in {delay:g} s")
            time.sleep(delay)


def _raise_unreachable(url: str, e: BaseException) -> None:
    if isinstance(e, urllib.error.HTTPError):
        detail = e.read().decode(errors="replace")[:300]
        raise PersonaError(f"the LLM server at {url} answered HTTP {e.code}: {detail}",
                           fix="check the model name and that the server supports JSON-schema output") from None
    reason = getattr(e, "reason", e)
    raise PersonaError(f"cannot reach the LLM server at {url} ({reason})",
                       fix="start it (e.g. `ollama serve`), fix --llm-url, or pass --script script.json") from None


class OllamaBackend:
    """Ollama's native chat API; `format` takes a JSON schema (Ollama >= 0.5)."""

    name = "ollama"

    def __init__(self, url: str, model: str, temperature: float = 0.7, seed: int = 0):
        self.url, self.model, self.temperature, self.seed = url.rstrip("/"), model, temperature, seed

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> str:
        body = {"model": self.model, "messages": messages, "stream": False, "format": schema,
                "options": {"temperature": self.temperature, "seed": self.seed}}
        reply = _post_json(f"{self.url}/api/chat", body)
        try:
            return reply["message"]["content"]
        except (KeyError, TypeError):
            raise PersonaError(f"unexpected reply from Ollama at {self.url}: {str(reply)[:200]}") from None


class OpenAIBackend:
    """Any OpenAI-compatible chat-completions server with structured outputs."""

    name = "openai"

    def __init__(self, url: str, model: str, api_key: str | None = None, temperature: float = 0.7, seed: int = 0):
        self.url, self.model, self.api_key = url.rstrip("/"), model, api_key
        self.temperature, self.seed = temperature, seed

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> str:
        body = {"model": self.model, "messages": messages, "temperature": self.temperature, "seed": self.seed,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "script", "strict": True, "schema": schema}}}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        base = self.url if self.url.endswith("/v1") else f"{self.url}/v1"
        reply = _post_json(f"{base}/chat/completions", body, headers)
        try:
            return reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise PersonaError(f"unexpected reply from {self.url}: {str(reply)[:200]}") from None


class TransformersBackend:
    """A local model with decoding constrained to the schema, so even a weak model emits valid JSON."""

    name = "transformers"

    def __init__(self, model_path: Path, temperature: float = 0.7, seed: int = 0, max_new_tokens: int = 2048):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.seed, self.temperature, self.max_new_tokens = seed, temperature, max_new_tokens
        self.model_name = str(model_path)  # what render.json records as the script's model
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype,
                                                          device_map="auto" if torch.cuda.is_available() else None)

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> str:
        import outlines
        import torch
        from outlines.types import JsonSchema

        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        generator = outlines.Generator(outlines.from_transformers(self.model, self.tokenizer),
                                       JsonSchema(json.dumps(schema)))
        torch.manual_seed(self.seed)
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {"do_sample": False}
        return generator(prompt, max_new_tokens=self.max_new_tokens, **sampling)

    def close(self) -> None:
        del self.model


# ------------------------------------------------------------------------------------------------
class ScriptSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["ollama", "openai", "transformers"] = "ollama"
    url: str = "http://localhost:11434"
    model: str = "llama3.1:8b"
    api_key: str | None = None
    temperature: float = 0.7
    min_scenes: int = Field(default=4, ge=1)
    max_scenes: int = Field(default=8, ge=1, le=16)
    attempts: int = Field(default=3, ge=1)
    max_title_chars: int = Field(default=80, ge=1, le=120)
    max_sentence_chars: int = Field(default=MAX_SENTENCE, ge=10, le=MAX_SENTENCE)
    max_prompt_chars: int = Field(default=200, ge=10, le=200)
    max_new_tokens: int = 2048  # transformers backend only
    max_topic_chars: int = 20000


def make_backend(s: ScriptSettings, seed: int, models: dict[str, str] | None = None) -> Backend:
    if s.backend == "ollama":
        return OllamaBackend(s.url, s.model, s.temperature, seed)
    if s.backend == "openai":
        return OpenAIBackend(s.url, s.model, s.api_key, s.temperature, seed)
    from persona.models import locate

    return TransformersBackend(locate("llm", models=models), s.temperature, seed, s.max_new_tokens)


def read_topic(path: Path, max_chars: int) -> str:
    try:
        topic = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise PersonaError("topic file not found", file=path, fix="give a text file describing the video") from None
    except UnicodeDecodeError:
        raise PersonaError("topic file is not UTF-8 text", file=path, fix="save it as plain UTF-8 text") from None
    if not topic:
        raise PersonaError("topic file is empty", file=path, fix="write a few sentences about what the video explains")
    if len(topic) > max_chars:
        raise PersonaError(f"topic file has {len(topic)} characters (limit {max_chars})", file=path,
                           fix="shorten it to the gist: the LLM writes a 30-90 s script, not a summary of a book")
    return topic


def messages_for(system_prompt: str, topic: str, person: str, s: ScriptSettings) -> list[dict[str, str]]:
    # Plain replacement, not str.format: users may put JSON examples with braces in the prompt file.
    system = system_prompt
    for key, value in {"person": person, "min_scenes": s.min_scenes, "max_scenes": s.max_scenes}.items():
        system = system.replace("{" + key + "}", str(value))
    return [{"role": "system", "content": system}, {"role": "user", "content": f"Topic:\n{topic}"}]


def write_script(backend: Backend, messages: list[dict[str, str]], s: ScriptSettings) -> tuple[Script, int]:
    """Ask until the reply validates (feeding each error back); returns the script and attempts used."""
    schema = script_schema(s)
    messages = list(messages)
    error = ""
    for attempt in range(1, s.attempts + 1):
        raw = backend.complete(messages, schema)
        try:
            script = Script.model_validate_json(raw)
            if not s.min_scenes <= len(script.scenes) <= s.max_scenes:
                raise ValueError(f"the script has {len(script.scenes)} scenes; write {s.min_scenes} to {s.max_scenes}")
            return script, attempt
        except (ValidationError, ValueError) as e:
            error = str(e)
            warn(f"script attempt {attempt} was invalid: {error.splitlines()[0][:200]}")
            messages += [{"role": "assistant", "content": raw},
                         {"role": "user", "content": "That reply does not match the required JSON schema:\n"
                                                     f"{error}\nReply again with the whole corrected JSON only."}]
    raise PersonaError(f"the {backend.name} LLM gave no valid script in {s.attempts} attempts (last error: "
                       f"{error.splitlines()[0][:200]})",
                       fix="try a stronger model, raise script.attempts, or write script.json yourself and pass --script")
