"""The OCI content model shared by every store: descriptors, manifests, indexes, image configs.

Stores move bytes; this module gives those bytes meaning. Manifests are always kept as the exact
bytes that were hashed (`Manifest.raw`), never re-serialised, so digests survive every copy.
Parsing treats input as hostile: size-capped, strict JSON, digests and sizes validated.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from registry.digest import is_digest, sha256_digest
from registry.errors import Refused

# Media types
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
SIGSTORE_BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY_JSON = b"{}"
EMPTY_DIGEST = sha256_digest(EMPTY_JSON)

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
LAYER_TYPES = (OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_TAR, DOCKER_LAYER_GZIP)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the distribution default; larger manifests are refused
MAX_CONFIG_BYTES = 8 * 1024 * 1024

# Annotations
ANN_VERSION = "org.opencontainers.image.version"
ANN_CREATED = "org.opencontainers.image.created"
ANN_SOURCE = "org.opencontainers.image.source"
ANN_REVISION = "org.opencontainers.image.revision"
ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_TEAM = "io.dagseal.team"
ANN_BUNDLE = "io.dagseal.bundle"
ANN_SPEC_DIGEST = "io.dagseal.spec.digest"
ANN_LOCK_DIGEST = "io.dagseal.lock.digest"


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Platform(_Model):
    architecture: str
    os: str
    variant: str | None = None


class Descriptor(_Model):
    media_type: str = Field(alias="mediaType")
    digest: str
    size: Annotated[int, Field(ge=0)]
    annotations: dict[str, str] | None = None
    artifact_type: str | None = Field(default=None, alias="artifactType")
    platform: Platform | None = None
    urls: list[str] | None = None

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str) -> str:
        if not is_digest(v):
            raise ValueError(f"{v!r} is not a sha256 digest")
        return v

    def with_annotations(self, annotations: dict[str, str] | None) -> "Descriptor":
        return self.model_copy(update={"annotations": annotations or None})


class Manifest(_Model):
    schema_version: Literal[2] = Field(alias="schemaVersion")
    media_type: str = Field(default=OCI_MANIFEST, alias="mediaType")
    artifact_type: str | None = Field(default=None, alias="artifactType")
    config: Descriptor
    layers: list[Descriptor]
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class Index(_Model):
    schema_version: Literal[2] = Field(alias="schemaVersion")
    media_type: str = Field(default=OCI_INDEX, alias="mediaType")
    artifact_type: str | None = Field(default=None, alias="artifactType")
    manifests: list[Descriptor]
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class RawContent(_Model):
    """A manifest or index with the exact bytes it was read from (or will be written as)."""

    raw: bytes
    media_type: str
    parsed: Union[Manifest, Index]

    @property
    def digest(self) -> str:
        return sha256_digest(self.raw)

    def descriptor(self, annotations: dict[str, str] | None = None) -> Descriptor:
        return Descriptor(mediaType=self.media_type, digest=self.digest, size=len(self.raw),
                          annotations=annotations or None, artifactType=self.parsed.artifact_type)


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces): the form dagseal writes everything in."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def encode(content: Manifest | Index) -> RawContent:
    """Serialise a manifest or index once; the returned bytes are what gets hashed and stored."""
    raw = canonical_json(content.to_json_dict())
    return RawContent(raw=raw, media_type=content.media_type, parsed=content)


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def load_json(data: bytes, *, what: str, limit: int = MAX_MANIFEST_BYTES) -> Any:
    """Parse untrusted JSON bytes: size-capped, duplicate keys refused (they hide fields from one parser)."""
    if len(data) > limit:
        raise Refused(f"{what} is {len(data)} bytes, more than the {limit} allowed", check="manifest-format",
                      hint="the store is serving something that is not a dagseal manifest")
    try:
        return json.loads(data, object_pairs_hook=_reject_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(f"{what} is not valid JSON: {exc}", check="manifest-format") from None


def parse_content(data: bytes, *, media_type: str | None = None, what: str = "manifest") -> RawContent:
    """Parse manifest or index bytes from any store; refuses malformed or oversized content."""
    doc = load_json(data, what=what)
    if not isinstance(doc, dict):
        raise Refused(f"{what} is not a JSON object", check="manifest-format")
    declared = doc.get("mediaType") or media_type
    if declared is None:
        declared = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type and doc.get("mediaType") and doc["mediaType"] != media_type:
        raise Refused(f"{what} says mediaType {doc['mediaType']!r} but was served as {media_type!r}",
                      check="manifest-format")
    try:
        if declared in INDEX_TYPES:
            parsed: Manifest | Index = Index.model_validate({**doc, "mediaType": declared})
        elif declared in MANIFEST_TYPES:
            parsed = Manifest.model_validate({**doc, "mediaType": declared})
        else:
            raise Refused(f"{what} has unsupported mediaType {declared!r}", check="manifest-format")
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise Refused(f"{what} is malformed at {loc}: {first['msg']}", check="manifest-format") from None
    return RawContent(raw=data, media_type=declared, parsed=parsed)


class ImageConfig(_Model):
    """The parts of an OCI image config dagseal reads and writes."""

    architecture: str = "amd64"
    os: str = "linux"
    created: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    rootfs: dict[str, Any] = Field(default_factory=lambda: {"type": "layers", "diff_ids": []})
    history: list[dict[str, Any]] | None = None
