"""A CycloneDX 1.5 SBOM of a bundle image, generated from its hashed lock.

The lock is the exact input of the dependency layer (uv installs `--require-hashes` from it), so
every pinned wheel appears with its purl and every allowed sha256. Parsing guards against a lock
that is not what `dagseal lock` writes: an unpinned or unhashed requirement is refused rather than
silently missing from the SBOM.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from registry.errors import BadInput

SBOM_PREDICATE_TYPE = "https://cyclonedx.org/bom"
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)\s*(?:;\s*(?P<marker>.+?))?$")
_HASH = re.compile(r"^--hash=sha256:(?P<hex>[0-9a-f]{64})$")


@dataclass
class Pin:
    name: str
    version: str
    markers: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)

    @property
    def normalized(self) -> str:
        return re.sub(r"[-_.]+", "-", self.name).lower()

    @property
    def purl(self) -> str:
        return f"pkg:pypi/{self.normalized}@{self.version}"


def _logical_lines(text: str) -> list[str]:
    """Join backslash continuations and drop comments: one requirement with its options per line."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if stripped.endswith("\\"):
            current += stripped[:-1].strip() + " "
            continue
        current += stripped.strip()
        if current.strip():
            out.append(current.strip())
        current = ""
    if current.strip():
        out.append(current.strip())
    return out


def parse_lock(text: str, *, where: str = "lock") -> list[Pin]:
    """Pins of a hashed uv requirements lock; BadInput naming the line that is not pinned and hashed."""
    pins: dict[tuple[str, str], Pin] = {}
    for line in _logical_lines(text):
        tokens = line.split()
        opts = [t for t in tokens if t.startswith("--hash=")]
        req = " ".join(t for t in tokens if not t.startswith("--hash="))
        match = _PIN.match(req)
        if not match or not opts:
            raise BadInput(f"{where}: {line[:120]!r} is not a pinned, hashed requirement",
                           hint="regenerate it with `dagseal lock`")
        hashes = []
        for opt in opts:
            h = _HASH.match(opt)
            if not h:
                raise BadInput(f"{where}: {opt!r} is not a sha256 hash option", hint="regenerate it with `dagseal lock`")
            hashes.append(h.group("hex"))
        key = (match.group("name").lower(), match.group("version"))
        pin = pins.setdefault(key, Pin(match.group("name"), match.group("version")))
        if match.group("marker"):
            pin.markers.append(match.group("marker").strip())
        pin.hashes.extend(h for h in hashes if h not in pin.hashes)
    return list(pins.values())


def cyclonedx(bundle: str, version: str, manifest_digest: str, pins: list[Pin], *, created: datetime,
              team: str) -> dict[str, Any]:
    """The CycloneDX 1.5 JSON document; serialNumber is derived from the digest so it is reproducible."""
    components = []
    for pin in sorted(pins, key=lambda p: (p.normalized, p.version)):
        comp: dict[str, Any] = {"type": "library", "bom-ref": pin.purl, "name": pin.normalized, "version": pin.version,
                                "purl": pin.purl,
                                "hashes": [{"alg": "SHA-256", "content": h} for h in sorted(pin.hashes)]}
        if pin.markers:
            comp["properties"] = [{"name": "python:marker", "value": m} for m in pin.markers]
        components.append(comp)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'dagseal:' + manifest_digest)}",
        "version": 1,
        "metadata": {
            "timestamp": created.isoformat().replace("+00:00", "Z"),
            "tools": {"components": [{"type": "application", "name": "dagseal"}]},
            "component": {"type": "application", "bom-ref": f"bundle:{bundle}", "name": bundle, "version": version,
                          "properties": [{"name": "dagseal:team", "value": team},
                                         {"name": "dagseal:manifest-digest", "value": manifest_digest}]},
        },
        "components": components,
        "dependencies": [{"ref": f"bundle:{bundle}", "dependsOn": [c["bom-ref"] for c in components]}],
    }


def read_lock_pins(path: Path) -> list[Pin]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"lock {path}: cannot be read ({exc.strerror})", hint="run `dagseal lock` first") from None
    return parse_lock(text, where=str(path))
