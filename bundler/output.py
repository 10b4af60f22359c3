"""What a command prints: one JSON object per result with `--json`, else human text and rich output.

Results go to stdout; progress, warnings and errors to stderr, so `--json` output stays parseable.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass
class Output:
    json_mode: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    def result(self, obj: dict[str, Any], text: str | None = None) -> None:
        """One result: a JSON line in --json mode, else `text` (or a key=value rendering)."""
        if self.json_mode:
            self.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        else:
            self.stdout.write((text if text is not None else " ".join(f"{k}={v}" for k, v in obj.items())) + "\n")
        self.stdout.flush()

    def info(self, text: str) -> None:
        """A human note on stderr (silent in --json mode)."""
        if not self.json_mode:
            self.stderr.write(text + "\n")

    def warn(self, text: str) -> None:
        self.stderr.write(f"warning: {text}\n")

    @property
    def interactive(self) -> bool:
        return not self.json_mode and self.stderr.isatty()

    def progress(self):
        """A rich Progress on stderr when interactive, else a no-op stand-in with the same calls."""
        if self.interactive:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            from rich.console import Console

            return Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                            console=Console(file=self.stderr), transient=True)
        return _NoProgress()


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        return 0

    def update(self, task: int, **_: Any) -> None:
        pass

    def advance(self, task: int, advance: float = 1) -> None:
        pass
