"""Hashed dependency locks: `<bundle>.lock` beside each bundle spec, resolved by uv.

Format (other areas depend on it): a uv requirements file (`--generate-hashes`, binary wheels
only, every pin `name==version` followed by its `--hash=sha256:` lines) preceded by comment lines,
exactly one of which is `# dagseal-lock-inputs: sha256:<hex>`. That digest covers the canonical
JSON of the sorted dependencies, the org's python and its sorted platforms, so `read_lock` can
tell that a lock no longer matches its spec without resolving anything.

Resolution: one `uv pip compile` per org platform (`--python-platform x86_64-manylinux_2_28` /
`aarch64-manylinux_2_28`, `--python-version <org.python>`, `--only-binary :all:`). With several
platforms the results are merged: a pin resolved identically everywhere is written once with the
union of its hashes; a pin that differs between platforms is written once per platform with a
`platform_machine` marker. (uv's `--universal` would also cover Windows and macOS forks, which no
team component runs on.) No interpreter of the org's Python version is needed.

Guards against: a lock silently drifting from its spec (inputs digest), unhashed or hand-edited
pins (every pin must be `==` with hashes), half-written locks (temp file then rename), uv picking
up a stray `uv.toml`/`pyproject.toml` (`--no-config`) or downloading interpreters.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from bundler.specs import Bundle, Organisation
from registry.errors import BadInput, StorageError, ToolError
from registry.fsutil import atomic_write as write_atomic

INPUTS_PREFIX = "# dagseal-lock-inputs: "
PYTHON_PLATFORMS = {"linux/amd64": "x86_64-manylinux_2_28", "linux/arm64": "aarch64-manylinux_2_28"}
MACHINES = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$")
_HASH = re.compile(r"^\s+--hash=(sha256:[0-9a-f]{64})\s*\\?$")
_NETWORK = ("error sending request", "dns error", "connection refused", "timed out", "failed to fetch")


@dataclass(frozen=True)
class LockFile:
    """A lock on disk: `digest` is the sha256 of its bytes (the `io.dagseal.lock.digest` annotation)."""

    path: Path
    digest: str
    inputs_digest: str
    requirements: list[str] = field(default_factory=list)  # "name==version", in file order


@dataclass
class _Pin:
    name: str
    version: str
    hashes: set[str]
    platforms: set[str]


def inputs_digest(org: Organisation, bundle: Bundle) -> str:
    """sha256 over what a lock depends on: sorted dependencies, org python, sorted org platforms."""
    inputs = {"dependencies": sorted(bundle.spec.dependencies), "python": org.org.org.python,
              "platforms": sorted(org.org.org.platforms)}
    return "sha256:" + hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def fix_command(org: Organisation, bundle: Bundle) -> str:
    specs = "" if org.root == Path("specs") else f" --specs {org.root}"
    return f"dagseal lock{specs} --team {bundle.team} --bundle {bundle.name}"


def uv_bin() -> str:
    """uv from the `uv` package installed next to this interpreter."""
    import uv

    return uv.find_uv_bin()


# ---------------------------------------------------------------- writing


def lock_bundle(org: Organisation, bundle: Bundle, *, find_links: Sequence[str] = (), offline: bool = False,
                upgrade: bool = False) -> LockFile:
    """Resolve `bundle`'s dependencies with uv and write `<bundle>.lock` atomically.

    The pins of an existing lock are kept where they still satisfy the spec (uv's preferences from
    the output file), so re-locking after adding a dependency does not move the others; `upgrade`
    re-resolves everything to the newest allowed versions."""
    digest = inputs_digest(org, bundle)
    for dep in bundle.spec.dependencies:  # never let a spec string become a uv option line
        if "\n" in dep or "\r" in dep or dep.lstrip().startswith("-"):
            raise BadInput(f"{bundle.path}: bundle.dependencies: {dep!r} is not a requirement",
                           hint="write PEP 508 requirements such as \"requests>=2.31\"")
    pins: dict[tuple[str, str], _Pin] = {}
    if bundle.spec.dependencies:
        for platform in org.org.org.platforms:
            for name, version, hashes in _parse_pins(_compile(org, bundle, platform, find_links, offline, upgrade)):
                pin = pins.setdefault((name, version), _Pin(name, version, set(), set()))
                pin.hashes |= hashes
                pin.platforms.add(platform)
    text = _header(org, bundle, digest) + _render(pins.values(), org.org.org.platforms)
    data = text.encode()
    write_atomic(bundle.lock_path, data)
    return LockFile(path=bundle.lock_path, digest="sha256:" + hashlib.sha256(data).hexdigest(),
                    inputs_digest=digest, requirements=[f"{p.name}=={p.version}" for p in _ordered(pins.values())])


def _compile(org: Organisation, bundle: Bundle, platform: str, find_links: Sequence[str], offline: bool,
             upgrade: bool) -> str:
    with tempfile.TemporaryDirectory(prefix="dagseal-lock-") as tmp:
        req_in, req_out = Path(tmp) / "requirements.in", Path(tmp) / "requirements.txt"
        req_in.write_text("".join(f"{d}\n" for d in sorted(bundle.spec.dependencies)), encoding="utf-8")
        if not upgrade and (previous := _previous_pins(bundle)) is not None:
            req_out.write_text(previous, encoding="utf-8")  # uv keeps the pins of its output file
        cmd = [uv_bin(), "pip", "compile", "--quiet", "--no-config", "--no-python-downloads", "--generate-hashes",
               "--no-header", "--no-annotate", "--only-binary", ":all:", "--python-version", org.org.org.python,
               "--python-platform", PYTHON_PLATFORMS[platform], "--python", sys.executable,  # skips interpreter discovery
               str(req_in), "-o", str(req_out)]
        if find_links:
            cmd += ["--no-index"] + [arg for link in find_links for arg in ("--find-links", str(link))]
        if offline:
            cmd.append("--offline")
        env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "NO_COLOR": "1"}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ToolError(f"could not run uv for bundle {bundle.name}: {exc}") from None
        if proc.returncode != 0:
            raise _uv_error(bundle, platform, proc.stderr)
        return req_out.read_text(encoding="utf-8")


def _previous_pins(bundle: Bundle) -> str | None:
    """The current lock's text if it is a well-formed lock (used as uv's preferences), else None."""
    try:
        text = bundle.lock_path.read_text(encoding="utf-8")
        _parse_pins(text)
    except (OSError, UnicodeDecodeError, ToolError):
        return None
    return text


def _uv_error(bundle: Bundle, platform: str, stderr: str) -> Exception:
    message = "\n".join(line for line in stderr.strip().splitlines()
                        if not line.startswith("warning: The requested Python version")).strip()
    where = f"bundle {bundle.name} ({bundle.path}), platform {platform}"
    if any(word in message.lower() for word in _NETWORK):
        return StorageError(f"uv could not reach the package index while locking {where}: {message}",
                            hint="check network access to the index, or pass --find-links DIR --offline")
    return BadInput(f"uv cannot resolve the dependencies of {where}: {message}",
                    hint=f"fix bundle.dependencies in {bundle.path} (every package needs a binary wheel for the "
                         "org's python and platforms), then run `dagseal lock` again")


def _parse_pins(text: str) -> Iterable[tuple[str, str, set[str]]]:
    """(name, version, hashes) for each pin uv wrote; refuses anything unpinned or unhashed."""
    entries: list[tuple[str, str, set[str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if (m := _HASH.match(line)) and entries:
            entries[-1][2].add(m.group(1))
        elif m := _PIN.match(line):
            entries.append((m.group("name"), m.group("version"), set()))
        else:
            raise ToolError(f"unexpected line {line!r} (only name==version pins followed by --hash lines belong here)")
    for name, version, hashes in entries:
        if not hashes:
            raise ToolError(f"{name}=={version} has no --hash lines")
    return entries


def _ordered(pins: Iterable[_Pin]) -> list[_Pin]:
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    return sorted(pins, key=lambda p: (canonicalize_name(p.name), Version(p.version)))


def _render(pins: Iterable[_Pin], platforms: list[str]) -> str:
    out = []
    for pin in _ordered(pins):
        marker = ""
        if set(platforms) - pin.platforms:
            marker = " ; " + " or ".join(f"platform_machine == '{MACHINES[p]}'" for p in sorted(pin.platforms))
        lines = [f"{pin.name}=={pin.version}{marker}"] + [f"    --hash={h}" for h in sorted(pin.hashes)]
        out.append(" \\\n".join(lines) + "\n")
    return "".join(out)


def _header(org: Organisation, bundle: Bundle, digest: str) -> str:
    o = org.org.org
    return (f"# dagseal lock of bundle {bundle.name} (team {bundle.team}); written by `dagseal lock`, do not edit.\n"
            f"# Refresh with: dagseal lock --team {bundle.team} --bundle {bundle.name}\n"
            f"# python {o.python}; platforms {', '.join(sorted(o.platforms))}; binary wheels only, hash-pinned.\n"
            f"{INPUTS_PREFIX}{digest}\n")


# ---------------------------------------------------------------- reading


def read_lock(org: Organisation, bundle: Bundle) -> LockFile:
    """The bundle's lock if it matches the spec; BadInput naming bundle, lock and fix otherwise."""
    path, fix = bundle.lock_path, f"run `{fix_command(org, bundle)}`"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"bundle {bundle.name} (team {bundle.team}) has no lock: {path} does not exist", hint=fix) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"lock {path} of bundle {bundle.name} is not UTF-8 text", hint=fix) from None
    inputs = [line[len(INPUTS_PREFIX):].strip() for line in text.splitlines() if line.startswith(INPUTS_PREFIX)]
    if len(inputs) != 1:
        raise BadInput(f"lock {path} of bundle {bundle.name} has {len(inputs)} '{INPUTS_PREFIX.strip()}' lines "
                       "(expected exactly one); it was not written by `dagseal lock`", hint=fix)
    if inputs[0] != inputs_digest(org, bundle):
        raise BadInput(f"lock {path} of bundle {bundle.name} (team {bundle.team}) no longer matches its spec "
                       "(dependencies, org python or platforms changed since it was written)", hint=fix)
    try:
        pins = _parse_pins(text)
    except ToolError as exc:
        raise BadInput(f"lock {path} of bundle {bundle.name} is malformed: {exc.message}", hint=fix) from None
    return LockFile(path=path, digest="sha256:" + hashlib.sha256(data).hexdigest(), inputs_digest=inputs[0],
                    requirements=[f"{name}=={version}" for name, version, _ in pins])


def lock_problem(org: Organisation, bundle: Bundle) -> str | None:
    """Why the bundle's lock is unusable (missing, stale, malformed), or None; for `dagseal validate`."""
    try:
        read_lock(org, bundle)
    except BadInput as exc:
        return f"{exc.message}; {exc.hint}"
    return None
