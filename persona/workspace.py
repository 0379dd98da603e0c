"""The workspace (a folder holding persona.toml) and the persona pack manifest it describes.

persona.toml is edited by people and by the stages (ingest fills [datasets], training fills [lora]
and [voice]), so it is read and written with tomlkit, which keeps the user's comments and layout,
and validated with pydantic on every load and before every write.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from pathlib import Path
from typing import Any

import tomlkit
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from persona.errors import ConsentMissing, PersonaError, WorkspaceNotFound
from persona.files import write_text
from persona.lock import workspace_lock

MANIFEST = "persona.toml"
UPDATE_WAIT = 10.0  # seconds an update outside a verb waits for another process's update

# Common English words a person's name may also be; a trigger token equal to one of them would
# tie the likeness to a concept the text encoders already know (e.g. "Will", "Rose", "Young").
_COMMON_WORDS = frozenset(
    """a an the and or of to in on at by for with from man woman person people boy girl child
    young old king queen rose will may june april august mark frank grant hunter mason page
    stone wood green white black brown gray grey young little bell hope joy faith grace rich
    ray sky star sun moon river lake hill field ford park baker cook smith taylor miller
    carter cooper fisher archer walker turner knight bishop dean love lucky happy sunny
    """.split()
)

_TOKEN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{3,39}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Consent(_Section):
    """Who agreed to what. Training and rendering refuse a workspace without it."""

    person: str = Field(min_length=1, description="the person whose likeness this is")
    granted_by: str = Field(min_length=1, description="who gave consent (the person, or a legal guardian)")
    date: dt.date
    scope: str = Field(min_length=1, description="what the likeness may be used for")
    reference: str | None = Field(default=None, description="where the signed record is kept (file, URL, id)")

    def summary(self) -> str:
        ref = f"; record: {self.reference}" if self.reference else ""
        return f"consent of {self.person} granted by {self.granted_by} on {self.date.isoformat()} for {self.scope}{ref}"


def consent_from(person: str | None, granted_by: str | None, scope: str | None, date: dt.date | None = None,
                 reference: str | None = None) -> Consent:
    """The consent record of `persona init` (and the studio's form): who granted it and for what are required."""
    if not (granted_by or "").strip() or not (scope or "").strip() or not (person or "").strip():
        raise PersonaError(
            "consent is required: who granted it and for what",
            fix='pass --granted-by "NAME" --scope "WHAT FOR" (or run in a terminal to be asked, or --no-consent)',
        )
    return Consent(person=person.strip(), granted_by=granted_by.strip(), scope=scope.strip(),
                   date=date or dt.date.today(), reference=(reference or "").strip() or None)


class Datasets(_Section):
    images: str | None = None
    voice: str | None = None
    presenter: str | None = None  # presenter clips (only recorded when ingest found some)


class LoraSection(_Section):
    path: str
    base: str = "black-forest-labs/FLUX.1-dev"
    # 0 turns the likeness off and 1 is the strength it was trained at; past ~1.5 FLUX LoRAs burn the
    # image, and negative values push away from the person, which no explainer video wants.
    strength: float = Field(1.0, ge=0.0, le=2.0)
    rank: int | None = Field(None, ge=1, le=1024)  # LoRA ranks are powers of two up to a few hundred
    alpha: float | None = Field(None, gt=0)  # alpha / rank scales the update: zero or negative is no LoRA
    steps: int | None = Field(None, ge=1)
    backend: str | None = None


class VoiceSection(_Section):
    checkpoint: str
    vocab: str
    reference_audio: str
    reference_text: str = Field(min_length=1)
    base: str | None = None


class Pack(_Section):
    """The persona pack manifest: persona.toml."""

    name: str = Field(min_length=1)
    token: str
    consent: Consent | None = None
    datasets: Datasets = Field(default_factory=Datasets)
    lora: LoraSection | None = None
    voice: VoiceSection | None = None
    models: dict[str, str] = Field(default_factory=dict)

    @field_validator("token")
    @classmethod
    def _token_is_rare(cls, token: str) -> str:
        problem = token_problem(token)
        if problem:
            raise ValueError(problem)
        return token


def token_problem(token: str) -> str | None:
    if not _TOKEN_RE.match(token):
        return "must be one word of 4-40 letters or digits, starting with a letter (e.g. MichaelPound)"
    if token.lower() in _COMMON_WORDS or (token.isalpha() and token.islower()):
        return f"'{token}' reads as an ordinary word; use a rare one-word token such as a CamelCase full name"
    return None


def token_from_name(name: str) -> str:
    """'Michael Pound' -> 'MichaelPound'; a single or common name gets a suffix so it stays rare."""
    words = re.findall(r"[A-Za-z0-9]+", name)
    if not words:
        raise PersonaError(f"cannot derive a trigger token from the name {name!r}", fix="pass --token, e.g. --token JaneDoe")
    token = "".join(w[:1].upper() + w[1:] for w in words)
    if not token[0].isalpha():
        token = "P" + token
    if len(words) == 1 or token_problem(token):
        token = token + "Persona"
    return token[:40]


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "persona"


_FIXES = {
    "missing": "add it",
    "date_from_datetime_parsing": "write the date as YYYY-MM-DD",
    "date_parsing": "write the date as YYYY-MM-DD",
    "date_type": "write the date as YYYY-MM-DD",
    "extra_forbidden": "remove it or check its spelling",
    "string_too_short": "give it a non-empty value",
    "string_type": "give it a quoted string value",
    "float_parsing": "give it a number",
    "int_parsing": "give it a whole number",
    "greater_than_equal": "give it a value in range",
    "less_than_equal": "give it a value in range",
    "greater_than": "give it a value in range",
}

# Every file and folder the pack names, and what it must be: the pack is someone else's file, so
# its paths must stay inside the workspace and be the kind of file the stage that reads it expects.
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg")
PACK_PATHS: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("datasets", "images"): ("folder", ()),
    ("datasets", "voice"): ("folder", ()),
    ("lora", "path"): ("file", (".safetensors",)),
    ("voice", "checkpoint"): ("file", (".safetensors", ".pt")),
    ("voice", "vocab"): ("file", (".txt",)),
    ("voice", "reference_audio"): ("file", AUDIO_SUFFIXES),
}


def check_pack_paths(pack: "Pack", root: Path, manifest: Path) -> None:
    """Refuse a path the pack names that leaves the workspace (`..`, an absolute path, a link out)
    or that is the wrong kind of file. Missing files are the stages' to report: a pack being built
    names some before they exist."""
    from persona.models import REGISTRY

    for (section, key), (kind, suffixes) in PACK_PATHS.items():
        table = getattr(pack, section)
        raw = getattr(table, key) if table is not None else None
        if raw is None:
            continue
        field = f"[{section}] {key}"
        path = (root / Path(raw).expanduser()).resolve()
        if not path.is_relative_to(root):
            raise PersonaError(f"field {field} = {raw!r} points outside the workspace", file=manifest,
                               fix="keep the pack's files inside the workspace, as paths relative to persona.toml")
        if suffixes and path.suffix.lower() not in suffixes:
            raise PersonaError(f"field {field} = {raw!r} must be a {' or '.join(suffixes)} file", file=manifest,
                               fix="point it at the file the stage that writes it made")
        if path.exists() and (path.is_dir() if kind == "file" else not path.is_dir()):
            raise PersonaError(f"field {field} = {raw!r} must be a {kind}", file=manifest,
                               fix="point it at the file the stage that writes it made")
    unknown = sorted(set(pack.models) - set(REGISTRY))
    if unknown:
        raise PersonaError(f"[models] has unknown keys: {', '.join(unknown)}", file=manifest,
                           fix=f"use keys from: {', '.join(REGISTRY)}")


def _validation_error(err: ValidationError, file: Path) -> PersonaError:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    field = ".".join(loc) if loc else "(top level)"
    if loc and len(loc) > 1:
        field = f"[{'.'.join(loc[:-1])}] {loc[-1]}"
    fix = _FIXES.get(first["type"], "correct the value")
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return PersonaError(f"field {field}: {first['msg']}{more}", file=file, fix=fix)


class Workspace:
    """A folder with persona.toml; paths in the manifest are relative to it."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.manifest_path = self.root / MANIFEST
        self.pack = self._load()

    # ---- finding and creating -------------------------------------------------------------
    @classmethod
    def find(cls, explicit: str | Path | None = None, start: str | Path | None = None) -> "Workspace":
        """The workspace named by -w/--workspace, else the nearest folder upwards holding persona.toml."""
        if explicit is not None:
            root = Path(explicit)
            if not (root / MANIFEST).exists():
                raise WorkspaceNotFound(
                    "is not a persona workspace (no persona.toml)",
                    file=root,
                    fix='create one with `persona init "NAME"` or point -w at a folder holding persona.toml',
                )
            return cls(root)
        here = Path(start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / MANIFEST).exists():
                return cls(folder)
        raise WorkspaceNotFound(
            f"no persona.toml in {here} or any folder above it",
            fix='run `persona init "NAME"` first, or pass -w/--workspace DIR',
        )

    @classmethod
    def create(cls, root: str | Path, name: str, token: str | None = None, consent: Consent | None = None) -> "Workspace":
        root = Path(root)
        if (root / MANIFEST).exists():
            raise PersonaError("already holds a persona.toml", file=root, fix="pick another folder or edit the existing file")
        token = token or token_from_name(name)
        problem = token_problem(token)
        if problem:
            raise PersonaError(f"trigger token {problem}", fix="pass another --token")
        pack = Pack(name=name, token=token, consent=consent)
        root.mkdir(parents=True, exist_ok=True)
        with workspace_lock(_Root(root), "init"):
            if (root / MANIFEST).exists():  # another init won the race
                raise PersonaError("already holds a persona.toml", file=root,
                                   fix="pick another folder or edit the existing file")
            write_text(root / MANIFEST, _render_new_manifest(pack))
        return cls(root)

    # ---- reading and writing --------------------------------------------------------------
    def _read_document(self) -> tomlkit.TOMLDocument:
        try:
            text = self.manifest_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PersonaError("not found", file=self.manifest_path, fix='run `persona init "NAME"`') from None
        except UnicodeDecodeError as e:
            raise PersonaError(f"is not UTF-8 text (byte {e.start} cannot be read)", file=self.manifest_path,
                               fix="restore persona.toml from a copy; it is TOML text, saved as UTF-8") from None
        try:
            tomllib.loads(text)  # tomllib's messages carry line and column
            return tomlkit.parse(text)
        except tomllib.TOMLDecodeError as e:
            raise PersonaError(f"is not valid TOML ({e})", file=self.manifest_path, fix="fix the syntax at that line") from None

    def _load(self) -> Pack:
        return self._validate(self._read_document().unwrap())

    def _validate(self, data: dict[str, Any]) -> Pack:
        """The pack, validated, with its paths checked and [models] paths made absolute: a relative
        one is relative to the workspace (so -w, subfolders and unzipped packs work), never the cwd."""
        try:
            pack = Pack.model_validate(data)
        except ValidationError as e:
            raise _validation_error(e, self.manifest_path) from None
        check_pack_paths(pack, self.root, self.manifest_path)
        pack.models = {k: str(self.root / Path(v).expanduser()) for k, v in pack.models.items()}
        return pack

    def update(self, section: str, values: dict[str, Any] | str | None, replace: bool = False) -> Pack:
        """Set a top-level key, or keys of a [section] of persona.toml, keeping comments.

        With a dict, keys given as None are removed; `replace=True` drops the section's other keys.
        `values=None` removes the whole key or section. The result is validated before it is written.
        The file is read afresh and written under the workspace lock, so a section another process
        wrote since this one loaded the pack is kept.
        """
        with workspace_lock(self, "update persona.toml", wait=UPDATE_WAIT):
            return self._update(section, values, replace)

    def _update(self, section: str, values: dict[str, Any] | str | None, replace: bool) -> Pack:
        doc = self._read_document()
        if values is None:
            doc.pop(section, None)
        elif isinstance(values, dict):
            if replace or section not in doc or not isinstance(doc[section], dict):
                doc[section] = tomlkit.table()
            table = doc[section]
            for k, v in values.items():
                if v is None:
                    table.pop(k, None)
                else:
                    table[k] = v
        else:
            doc[section] = values
        pack = self._validate(doc.unwrap())
        write_text(self.manifest_path, tomlkit.dumps(doc))
        self.pack = pack
        return pack

    # ---- helpers for stages ---------------------------------------------------------------
    def path(self, relative: str | Path) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def relative(self, path: str | Path) -> str:
        p = Path(path).resolve()
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    def require_consent(self, action: str) -> Consent:
        if self.pack.consent is None:
            raise ConsentMissing(
                f"{action} a likeness needs the person's consent, and this workspace has no [consent] record",
                file=self.manifest_path,
                fix="add [consent] with person, granted_by, date (YYYY-MM-DD) and scope",
            )
        return self.pack.consent

    @property
    def name(self) -> str:
        return self.pack.name

    @property
    def token(self) -> str:
        return self.pack.token


class _Root:
    """The folder of a workspace being created (the lock needs only its root)."""

    def __init__(self, root: Path):
        self.root = root.resolve()


def _render_new_manifest(pack: Pack) -> str:
    doc = tomlkit.document()
    doc.add(tomlkit.comment("persona pack manifest (see `persona --help`); paths are relative to this folder."))
    doc.add(tomlkit.comment("[datasets] is written by `persona ingest`, [lora] by `persona train-lora`,"))
    doc.add(tomlkit.comment("[voice] by `persona train-voice`; [models] holds optional local model paths."))
    doc["name"] = pack.name
    doc["token"] = pack.token
    doc["token"].comment("unique trigger word used in captions and prompts")
    doc.add(tomlkit.nl())
    if pack.consent:
        consent = tomlkit.table()
        consent.add(tomlkit.comment("required before training or rendering"))
        for k, v in pack.consent.model_dump(exclude_none=True).items():
            consent[k] = v
        doc["consent"] = consent
    else:
        doc.add(tomlkit.comment("[consent] is required before training or rendering; add:"))
        doc.add(tomlkit.comment("[consent]"))
        doc.add(tomlkit.comment('person = "..."'))
        doc.add(tomlkit.comment('granted_by = "..."'))
        doc.add(tomlkit.comment("date = 2025-05-01"))
        doc.add(tomlkit.comment('scope = "..."'))
        doc.add(tomlkit.nl())
    doc["datasets"] = tomlkit.table()
    models = tomlkit.table()
    models.add(tomlkit.comment("local paths that override the Hugging Face cache, e.g."))
    models.add(tomlkit.comment('flux = "/models/FLUX.1-dev"'))
    doc["models"] = models
    return tomlkit.dumps(doc)
