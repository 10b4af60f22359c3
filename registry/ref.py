"""Store references: `oci:DIR[:NAME]`, `s3://BUCKET/PREFIX[:NAME]`, or `host[:port]/repo[:tag|@digest]`.

In the two layout kinds (a folder or a bucket holding an OCI image layout) NAME is the layout's
`org.opencontainers.image.ref.name`, which dagseal writes as `<repository>:<tag>` so that one layout
holds every team's bundles (`oci:.dagseal/store:team_a/team_a_analytics:2026.11.1`; skopeo reads the
same string). A digest may follow instead of or after NAME: `oci:DIR@sha256:...`,
`oci:DIR:team_a/x@sha256:...`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Literal

from registry.digest import is_digest
from registry.errors import BadInput

Kind = Literal["oci", "s3", "registry"]

_REPO_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_REPO = re.compile(rf"^{_REPO_COMPONENT}(?:/{_REPO_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

FIX = "write oci:DIR[:repo:tag], s3://BUCKET/PREFIX[:repo:tag] or host[:port]/repo[:tag|@sha256:...]"


@dataclass(frozen=True)
class Reference:
    """A parsed reference. `location` is the folder, `bucket/prefix` or `host[:port]`."""

    kind: Kind
    location: str
    repository: str = ""
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str | None:
        """What to resolve in the repository: the digest if pinned, else the tag."""
        return self.digest or self.tag

    def with_name(self, repository: str, tag: str | None = None, digest: str | None = None) -> "Reference":
        return replace(self, repository=repository, tag=tag, digest=digest)

    def for_bundle(self, repository: str, tag: str | None) -> "Reference":
        """The reference of a bundle's repository below this one: an org registry reference
        `registry.acme.io/airflow` gives `registry.acme.io/airflow/team_a/x:tag`; a layout gives
        `oci:DIR:team_a/x:tag`."""
        base = self.repository if self.kind == "registry" else ""
        return replace(self, repository=f"{base}/{repository}" if base else repository, tag=tag, digest=None)

    def pinned(self, digest: str) -> "Reference":
        return replace(self, digest=digest)

    def __str__(self) -> str:
        if self.kind == "registry":
            text = f"{self.location}/{self.repository}"
            if self.tag:
                text += f":{self.tag}"
        else:
            text = ("oci:" if self.kind == "oci" else "s3://") + self.location
            name = self.repository
            if self.tag:
                name = f"{name}:{self.tag}" if name else self.tag
            if name:
                text += f":{name}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def is_loopback(self) -> bool:
        if self.kind != "registry":
            return False
        host = self.location.rsplit(":", 1)[0] if not self.location.startswith("[") else self.location[1:].split("]")[0]
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def _split_digest(text: str, original: str) -> tuple[str, str | None]:
    if "@" not in text:
        return text, None
    head, digest = text.rsplit("@", 1)
    if not is_digest(digest):
        raise BadInput(f"reference {original!r}: {digest!r} is not a sha256 digest", hint=FIX)
    return head, digest


def _split_name(name: str, original: str) -> tuple[str, str | None]:
    """`repo:tag` -> (repo, tag); `tag` alone (a single-image layout) -> ("", tag)."""
    if not name:
        return "", None
    repo, _, tag = name.rpartition(":")
    if not repo and "/" in tag:
        repo, tag = tag, ""
    if repo and not _REPO.match(repo):
        raise BadInput(f"reference {original!r}: repository {repo!r} is not valid",
                       hint="repositories are lowercase path components like team_a/team_a_analytics")
    if tag and not _TAG.match(tag):
        raise BadInput(f"reference {original!r}: tag {tag!r} is not valid",
                       hint="tags are up to 128 characters of letters, digits, '_', '.', '-'")
    return repo, tag or None


def parse_reference(text: str) -> Reference:
    """Parse any store reference; raises BadInput (exit 2) naming the part that is wrong."""
    if not text or any(c.isspace() for c in text):
        raise BadInput(f"reference {text!r} is empty or contains white space", hint=FIX)
    if text.startswith("oci:"):
        rest, digest = _split_digest(text[4:], text)
        location, _, name = rest.partition(":")
        if not location:
            raise BadInput(f"reference {text!r} names no folder", hint=FIX)
        repo, tag = _split_name(name, text)
        return Reference("oci", location, repo, tag, digest)
    if text.startswith("s3://"):
        rest, digest = _split_digest(text[5:], text)
        location, _, name = rest.partition(":")
        bucket = location.split("/", 1)[0]
        if not _BUCKET.match(bucket):
            raise BadInput(f"reference {text!r}: {bucket!r} is not an S3 bucket name", hint=FIX)
        repo, tag = _split_name(name, text)
        return Reference("s3", location.rstrip("/"), repo, tag, digest)
    if "://" in text:
        raise BadInput(f"reference {text!r} has an unsupported scheme", hint=FIX)
    rest, digest = _split_digest(text, text)
    host, _, path = rest.partition("/")
    if not path or not _HOST.match(host) or not ("." in host or ":" in host or host == "localhost"):
        raise BadInput(f"reference {text!r} names no registry host", hint=FIX)
    repo, tag = path, None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = path.rsplit(":", 1)
    if not _REPO.match(repo):
        raise BadInput(f"reference {text!r}: repository {repo!r} is not valid",
                       hint="repositories are lowercase path components like team_a/team_a_analytics")
    if tag is not None and not _TAG.match(tag):
        raise BadInput(f"reference {text!r}: tag {tag!r} is not valid",
                       hint="tags are up to 128 characters of letters, digits, '_', '.', '-'")
    return Reference("registry", host, repo, tag, digest)
