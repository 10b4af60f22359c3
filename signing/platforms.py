"""From a signed multi-platform index to the one image manifest this runtime starts.

`dagseal build` makes, for an org with several platforms, an OCI image index listing one image
manifest per platform; the index is what is tagged and signed. The gate verifies the index
(signing.verify, rules 1-5 on the index digest and annotations), then uses this module to pick and
check the platform manifest. Guards against:
- running code built for another machine: only a manifest whose `platform` is exactly the
  runtime's os/architecture is started; none is a refusal (check "platform") naming what the
  index offers;
- child substitution: the child is fetched by the digest listed in the signed index and re-hashed
  against it (a store serving other bytes, or a tag moved to an unsigned index with another child,
  never reaches extraction);
- mixed-up children: the child's dagseal annotations (team, bundle, version, spec and lock
  digests) must equal the index's, so a signed index cannot smuggle in another team's or bundle's
  image; the child must be an image manifest (no nested index).
"""

from __future__ import annotations

import platform as _host
import re
from dataclasses import dataclass

from registry.errors import BadInput, Refused
from registry.model import (
    ANN_BUNDLE,
    ANN_LOCK_DIGEST,
    ANN_SPEC_DIGEST,
    ANN_TEAM,
    ANN_VERSION,
    INDEX_TYPES,
    Descriptor,
    Index,
    Manifest,
    RawContent,
)

_MACHINES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_PLATFORM = re.compile(r"^([a-z0-9]+)/([a-z0-9_]+)(?:/([a-z0-9]+))?$")
# annotation -> the check a disagreement fails (what it would let through)
_SAME = ((ANN_TEAM, "team"), (ANN_BUNDLE, "bundle"), (ANN_VERSION, "bundle"), (ANN_SPEC_DIGEST, "bundle"),
         (ANN_LOCK_DIGEST, "bundle"))


@dataclass(frozen=True)
class Target:
    """A runtime platform: os/architecture[/variant]."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def host_platform() -> Target:
    """linux/<arch> of this machine (x86_64 -> amd64, aarch64 -> arm64)."""
    machine = _host.machine().lower()
    return Target("linux", _MACHINES.get(machine, machine))


def parse_platform(text: str | None) -> Target:
    """`--platform` (None: the host's); BadInput (exit 2) when it is not os/arch[/variant]."""
    if not text:
        return host_platform()
    m = _PLATFORM.match(text.strip())
    if not m:
        raise BadInput(f"--platform {text!r} is not os/architecture[/variant]",
                       hint="write e.g. linux/amd64 or linux/arm64 (default: this machine's platform)")
    return Target(m.group(1), m.group(2), m.group(3))


def _name(desc: Descriptor) -> str:
    p = desc.platform
    if p is None:
        return "no-platform"
    return f"{p.os}/{p.architecture}" + (f"/{p.variant}" if p.variant else "")


def select_manifest(content: RawContent, target: Target) -> Descriptor:
    """The descriptor of `target`'s manifest in the (verified) index `content`."""
    index = content.parsed
    assert isinstance(index, Index)
    offered = [d for d in index.manifests if d.platform is not None]
    if not offered:
        raise Refused(f"{content.digest} is an index, not an image manifest, and lists no platform manifests",
                      check="manifest-format", hint="reference an image built by `dagseal build`")
    for desc in offered:
        p = desc.platform
        assert p is not None
        if (p.os, p.architecture) == (target.os, target.architecture) and (
                target.variant is None or p.variant == target.variant):
            return desc
    names = ", ".join(sorted({_name(d) for d in offered}))
    raise Refused(f"index {content.digest} has no image for platform {target}; it has {names}", check="platform",
                  hint=f"start it on a machine of one of those platforms (or pass --platform), or add {target} to "
                       "org.platforms, lock and build again")


def check_child(index: RawContent, desc: Descriptor, child: RawContent) -> None:
    """The platform manifest fetched for `desc` is the one the signed index lists, is an image
    manifest, and carries the index's dagseal annotations."""
    if child.digest != desc.digest or len(child.raw) != desc.size:
        raise Refused(f"the store served {child.digest} ({len(child.raw)} bytes) for {desc.digest} "
                      f"({desc.size} bytes) listed in index {index.digest}", check="blob-digest",
                      hint="copy the image again from a trusted source")
    if desc.media_type in INDEX_TYPES or not isinstance(child.parsed, Manifest):
        raise Refused(f"{desc.digest} (listed for {_name(desc)} in index {index.digest}) is an index, not an image "
                      "manifest", check="manifest-format", hint="rebuild the bundle with `dagseal build`")
    want = index.parsed.annotations or {}
    got = child.parsed.annotations or {}
    for key, check in _SAME:
        if got.get(key) != want.get(key):
            raise Refused(f"the {_name(desc)} image {desc.digest} has {key} {got.get(key)!r}, but the signed index "
                          f"{index.digest} says {want.get(key)!r}", check=check,
                          hint="rebuild the bundle with `dagseal build` and sign the new index")
