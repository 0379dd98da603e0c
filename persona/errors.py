"""One exception type for everything a user can fix, rendered as one line by the CLI."""

from __future__ import annotations

from pathlib import Path


class PersonaError(Exception):
    """A problem the user can act on: what went wrong, in which file, and what to do about it."""

    def __init__(self, message: str, *, file: str | Path | None = None, fix: str | None = None):
        self.message = message
        self.file = Path(file) if file is not None else None
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file is not None else ""
        todo = f" — {self.fix}" if self.fix else ""
        return f"{where}{self.message}{todo}"


class ConsentMissing(PersonaError):
    """Training and rendering a likeness needs the person's recorded consent."""


class WorkspaceNotFound(PersonaError):
    """No persona.toml where one was looked for."""
