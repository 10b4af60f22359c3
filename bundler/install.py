"""Install a bundle's locked wheels into a folder with uv, for the target Python and platform.

Files are hard-linked from uv's cache (`--link-mode hardlink`; uv copies by itself when the cache
is on another filesystem): copying 300 MB costs more than the rest of a build. The builder only
reads them, and `normalise` never writes through a link (new file, then rename), so uv's cache
cannot be changed by a build.

Guards against: sdists and unhashed downloads (binary wheels only, `--require-hashes`, no
dependency resolution: the lock is the whole set), bytecode built by the wrong interpreter, and
the host leaking into the tree. uv's output is identical between two installs except for what
names the host or the moment: console scripts in `bin/` carry the interpreter path that ran uv in
their shebang, wheels from local folders get a `*.dist-info/uv_cache.json` holding the install
time, and a `.lock` file is left at the top. `normalise` rewrites those shebangs to
`#!/usr/bin/env pythonX.Y`, deletes the cache records and the lock file, and fixes RECORD to match.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import subprocess
from pathlib import Path

from registry.errors import BadInput, ToolError
from registry.fsutil import atomic_write

from bundler.lock import PYTHON_PLATFORMS as UV_PLATFORMS  # the lock and the install must agree


def uv_platform(platform: str) -> str:
    try:
        return UV_PLATFORMS[platform]
    except KeyError:
        raise BadInput(f"platform {platform!r} is not supported", hint=f"use one of {', '.join(UV_PLATFORMS)}") from None


def uv_binary() -> str:
    """uv from the `uv` package this distribution depends on (falls back to PATH)."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return "uv"


def install_wheels(requirements: Path, target: Path, *, python: str, platform: str,
                   find_links: list[str] | None = None, offline: bool = False) -> None:
    """`uv pip install --target` the hashed requirements file; raises ToolError with uv's message."""
    cmd = [uv_binary(), "pip", "install", "--quiet", "--target", str(target),
           "--require-hashes", "--only-binary", ":all:", "--no-deps", "--no-compile-bytecode",
           "--link-mode", "hardlink", "--python-version", python, "--python-platform", uv_platform(platform),
           "-r", str(requirements)]
    for link in find_links or []:
        cmd += ["--find-links", str(link)]
    if offline:
        cmd.append("--offline")
    env = dict(os.environ, UV_NO_PROGRESS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ToolError(f"uv could not install the locked wheels of {requirements}: {proc.stderr.strip()[-2000:]}",
                        hint="check the lock is current (`dagseal lock`), the wheels exist for the org's python and "
                             "platform, and with --offline that they are in uv's cache or --find-links")
    normalise(target, python=python)


def normalise(target: Path, *, python: str) -> None:
    """Remove what makes two installs on different hosts or at different times differ."""
    lock = target / ".lock"
    if lock.is_file() or lock.is_symlink():
        lock.unlink()
    removed: set[str] = set()
    for record in sorted(target.glob("*.dist-info/uv_cache.json")):
        removed.add(record.relative_to(target).as_posix())
        record.unlink()
    fixed: dict[str, bytes] = {}
    bindir = target / "bin"
    for script in sorted(bindir.iterdir()) if bindir.is_dir() else []:
        if script.is_file() and not script.is_symlink():
            data = script.read_bytes()
            if data.startswith(b"#!"):
                rest = data.split(b"\n", 1)[1] if b"\n" in data else b""
                new = f"#!/usr/bin/env python{python}\n".encode() + rest
                if new != data:
                    replace_file(script, new)
                    fixed[f"bin/{script.name}"] = new
    if fixed or removed:
        _fix_records(target, fixed, removed)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _fix_records(target: Path, fixed: dict[str, bytes], removed: set[str]) -> None:
    for record in sorted(target.glob("*.dist-info/RECORD")):
        rows = list(csv.reader(io.StringIO(record.read_text(encoding="utf-8"))))
        kept = [row for row in rows if not (row and row[0] in removed)]
        changed = len(kept) != len(rows)
        rows = kept
        for row in rows:
            if row and row[0] in fixed and len(row) >= 3:
                row[1], row[2] = _record_hash(fixed[row[0]]), str(len(fixed[row[0]]))
                changed = True
        if changed:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(rows)
            replace_file(record, buf.getvalue().encode("utf-8"))


def replace_file(path: Path, data: bytes) -> None:
    """Write a new file in place of `path` (never through it: it may be a hard link into uv's cache)."""
    atomic_write(path, data, mode=path.stat().st_mode & 0o777, durable=False)
