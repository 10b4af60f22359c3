"""Typed errors of dagseal, each carrying its exit code.

Every failure a user can see is raised as one of these; `bundler.cli` maps them to the exit codes
of DESIGN.md in one place (0 ok, 2 bad input, 3 refused by verification, 4 registry or storage
failure after retries, 1 anything else). Messages name the file, field, reference or check that
failed and say what would fix it.
"""

from __future__ import annotations


class DagsealError(Exception):
    """Base of all dagseal errors; `exit_code` is what the command line exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = list(details or [])

    def to_json(self) -> dict:
        out = {"error": type(self).__name__, "message": self.message, "exit_code": self.exit_code}
        if self.hint:
            out["hint"] = self.hint
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        text = self.message
        if self.details:
            text += "\n" + "\n".join(f"  - {d}" for d in self.details)
        if self.hint:
            text += f"\n  fix: {self.hint}"
        return text


class BadInput(DagsealError):
    """A spec, flag or reference is wrong (exit 2)."""

    exit_code = 2


class SpecError(BadInput):
    """One or more spec files are invalid; `details` lists every problem with file and field."""


class ReferenceError_(BadInput):
    """A store reference cannot be parsed or names nothing that exists."""


class Refused(DagsealError):
    """Verification refused the bundle (exit 3); `check` names the failed check."""

    exit_code = 3

    def __init__(self, message: str, *, check: str, hint: str | None = None, details: list[str] | None = None):
        super().__init__(message, hint=hint, details=details)
        self.check = check

    def to_json(self) -> dict:
        out = super().to_json()
        out["check"] = self.check
        return out


class StorageError(DagsealError):
    """A registry or storage operation failed after retries (exit 4)."""

    exit_code = 4


class NotFound(StorageError):
    """The store answered, and the blob, manifest, tag or repository does not exist."""


class ToolError(DagsealError):
    """An external tool (uv, buildah) failed; the message carries its own error text (exit 1)."""
