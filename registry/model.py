"""The OCI content model shared by every store: descriptors, manifests, indexes, image configs.

Stores move bytes; this module gives those bytes meaning. Manifests are always kept as the exact
bytes that were hashed (`Manifest.raw`), never re-serialised, so digests survive every copy.
Parsing treats input as hostile: size-capped, strict JSON, digests and sizes validated.
"""

from __future__ import annotations

import json
from typing import Any, Callable, ClassVar, Union

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


class ModelError(ValueError):
    """Content that does not fit the model: `loc` is the path to the bad field (aliases, list indexes)."""

    def __init__(self, loc: tuple[str | int, ...], msg: str):
        super().__init__(f"{'.'.join(str(p) for p in loc)}: {msg}")
        self.loc, self.msg = loc, msg

    def errors(self) -> list[dict[str, Any]]:
        """The first (and only) error, in the shape pydantic's ValidationError.errors() has."""
        return [{"loc": self.loc, "msg": self.msg}]


Check = Callable[[Any, tuple], Any]  # (value, loc) -> validated value, or raise ModelError


def _str(v: Any, loc: tuple) -> str:
    if not isinstance(v, str):
        raise ModelError(loc, "Input should be a valid string")
    return v


def _size(v: Any, loc: tuple) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ModelError(loc, "Input should be a valid integer")
    if v < 0:
        raise ModelError(loc, "Input should be greater than or equal to 0")
    return v


def _digest(v: Any, loc: tuple) -> str:
    if not is_digest(_str(v, loc)):
        raise ModelError(loc, f"Value error, {v!r} is not a sha256 digest")
    return v


def _schema_version(v: Any, loc: tuple) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v != 2:
        raise ModelError(loc, "Input should be 2")
    return v


def _dict(v: Any, loc: tuple) -> dict:
    if not isinstance(v, dict):
        raise ModelError(loc, "Input should be a valid dictionary")
    return v


def _str_dict(v: Any, loc: tuple) -> dict[str, str]:
    for key, value in _dict(v, loc).items():
        _str(key, loc + (key,))
        _str(value, loc + (key,))
    return v


def _optional(check: Check) -> Check:
    return lambda v, loc: None if v is None else check(v, loc)


def _list(check: Check) -> Check:
    def validate(v: Any, loc: tuple) -> list:
        if not isinstance(v, list):
            raise ModelError(loc, "Input should be a valid list")
        return [check(item, loc + (i,)) for i, item in enumerate(v)]
    return validate


def _model(name: str) -> Check:
    """A nested model, named lazily (classes below refer to each other)."""
    def validate(v: Any, loc: tuple) -> Any:
        return globals()[name]._validate(v, loc)
    return validate


def _bytes(v: Any, loc: tuple) -> bytes:
    if not isinstance(v, bytes):
        raise ModelError(loc, "Input should be a valid bytes")
    return v


def _content(v: Any, loc: tuple) -> "Manifest | Index":
    if not isinstance(v, (Manifest, Index)):
        raise ModelError(loc, "Input should be a Manifest or an Index")
    return v


_REQUIRED = object()


class _Field:
    __slots__ = ("name", "alias", "check", "default")

    def __init__(self, name: str, check: Check, default: Any = _REQUIRED, alias: str | None = None):
        self.name, self.check, self.default, self.alias = name, check, default, alias or name


class _Model:
    """A frozen record validated field by field (a small, import-cheap stand-in for pydantic).

    Guards against hostile content: wrong types, negative sizes, malformed digests are refused with
    the path of the field; unknown keys are ignored; nothing is coerced (no "5" for 5, no True for 1).
    Accepts field names or their JSON aliases, like the pydantic models it replaces.
    """

    _fields: ClassVar[tuple[_Field, ...]] = ()

    def __init__(self, **data: Any):
        self._fill(data, ())

    def _fill(self, data: dict, loc: tuple) -> None:
        for f in self._fields:
            if f.alias in data:
                value = f.check(data[f.alias], loc + (f.alias,))
            elif f.name in data:
                value = f.check(data[f.name], loc + (f.alias,))
            elif f.default is _REQUIRED:
                raise ModelError(loc + (f.alias,), "Field required")
            else:
                value = f.default() if callable(f.default) else f.default
            object.__setattr__(self, f.name, value)

    @classmethod
    def _validate(cls, obj: Any, loc: tuple) -> Any:
        if isinstance(obj, cls):
            return obj
        if not isinstance(obj, dict):
            raise ModelError(loc, f"Input should be a valid dictionary or instance of {cls.__name__}")
        new = cls.__new__(cls)
        new._fill(obj, loc)
        return new

    @classmethod
    def model_validate(cls, obj: Any) -> Any:
        return cls._validate(obj, ())

    def model_copy(self, *, update: dict[str, Any] | None = None) -> Any:
        """A copy with `update` (by field name) applied, without validation, as pydantic does."""
        new = self.__class__.__new__(self.__class__)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(update or {})
        return new

    def model_dump(self, *, by_alias: bool = False, exclude_none: bool = False, mode: str = "python") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self._fields:
            value = getattr(self, f.name)
            if value is None and exclude_none:
                continue
            out[f.alias if by_alias else f.name] = _dump(value, by_alias, exclude_none, mode)
        return out

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError(f"{self.__class__.__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    def __hash__(self) -> int:
        return hash((type(self).__name__, canonical_json(_dump(self, True, False, "json"))))

    def __repr__(self) -> str:
        body = " ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self._fields)
        return f"{self.__class__.__name__}({body})"


def _dump(value: Any, by_alias: bool, exclude_none: bool, mode: str) -> Any:
    if isinstance(value, _Model):
        return value.model_dump(by_alias=by_alias, exclude_none=exclude_none, mode=mode)
    if isinstance(value, list):
        return [_dump(v, by_alias, exclude_none, mode) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v, by_alias, exclude_none, mode) for k, v in value.items()}
    return value


class Platform(_Model):
    architecture: str
    os: str
    variant: str | None
    _fields = (_Field("architecture", _str), _Field("os", _str), _Field("variant", _optional(_str), None))


class Descriptor(_Model):
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None
    artifact_type: str | None
    platform: Platform | None
    urls: list[str] | None
    _fields = (
        _Field("media_type", _str, alias="mediaType"),
        _Field("digest", _digest),
        _Field("size", _size),
        _Field("annotations", _optional(_str_dict), None),
        _Field("artifact_type", _optional(_str), None, alias="artifactType"),
        _Field("platform", _optional(_model("Platform")), None),
        _Field("urls", _optional(_list(_str)), None),
    )

    def with_annotations(self, annotations: dict[str, str] | None) -> "Descriptor":
        return self.model_copy(update={"annotations": annotations or None})


class Manifest(_Model):
    schema_version: int
    media_type: str
    artifact_type: str | None
    config: Descriptor
    layers: list[Descriptor]
    subject: Descriptor | None
    annotations: dict[str, str] | None
    _fields = (
        _Field("schema_version", _schema_version, alias="schemaVersion"),
        _Field("media_type", _str, OCI_MANIFEST, alias="mediaType"),
        _Field("artifact_type", _optional(_str), None, alias="artifactType"),
        _Field("config", _model("Descriptor")),
        _Field("layers", _list(_model("Descriptor"))),
        _Field("subject", _optional(_model("Descriptor")), None),
        _Field("annotations", _optional(_str_dict), None),
    )


class Index(_Model):
    schema_version: int
    media_type: str
    artifact_type: str | None
    manifests: list[Descriptor]
    subject: Descriptor | None
    annotations: dict[str, str] | None
    _fields = (
        _Field("schema_version", _schema_version, alias="schemaVersion"),
        _Field("media_type", _str, OCI_INDEX, alias="mediaType"),
        _Field("artifact_type", _optional(_str), None, alias="artifactType"),
        _Field("manifests", _list(_model("Descriptor"))),
        _Field("subject", _optional(_model("Descriptor")), None),
        _Field("annotations", _optional(_str_dict), None),
    )


class RawContent(_Model):
    """A manifest or index with the exact bytes it was read from (or will be written as)."""

    raw: bytes
    media_type: str
    parsed: Union[Manifest, Index]
    _fields = (_Field("raw", _bytes), _Field("media_type", _str), _Field("parsed", _content))

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


def load_json(data: bytes, *, what: str, limit: int = MAX_MANIFEST_BYTES, check: str = "manifest-format") -> Any:
    """Parse untrusted JSON bytes: size-capped, duplicate keys refused (they hide fields from one parser).

    Refusals carry `check`, so each caller's refusal names its own check (a manifest, a signed
    statement, a signature bundle)."""
    if len(data) > limit:
        raise Refused(f"{what} is {len(data)} bytes, more than the {limit} allowed", check=check,
                      hint="the store is serving something that is not a dagseal document")
    try:
        return json.loads(data, object_pairs_hook=_reject_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(f"{what} is not valid JSON: {exc}", check=check) from None
    except RecursionError:  # `[[[[...` a few thousand deep: not a ValueError, would be a traceback
        raise Refused(f"{what} nests too deeply to be a dagseal document", check=check) from None


def load_json_object(data: bytes, *, what: str, limit: int = MAX_MANIFEST_BYTES,
                     check: str = "manifest-format") -> dict[str, Any]:
    """`load_json` for documents that must be a JSON object."""
    doc = load_json(data, what=what, limit=limit, check=check)
    if not isinstance(doc, dict):
        raise Refused(f"{what} is not a JSON object", check=check)
    return doc


def parse_content(data: bytes, *, media_type: str | None = None, what: str = "manifest") -> RawContent:
    """Parse manifest or index bytes from any store; refuses malformed or oversized content."""
    doc = load_json_object(data, what=what)
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
    except ModelError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise Refused(f"{what} is malformed at {loc}: {first['msg']}", check="manifest-format") from None
    return RawContent(raw=data, media_type=declared, parsed=parsed)


class ImageConfig(_Model):
    """The parts of an OCI image config dagseal reads and writes."""

    architecture: str
    os: str
    created: str | None
    config: dict[str, Any]
    rootfs: dict[str, Any]
    history: list[dict[str, Any]] | None
    _fields = (
        _Field("architecture", _str, "amd64"),
        _Field("os", _str, "linux"),
        _Field("created", _optional(_str), None),
        _Field("config", _dict, dict),
        _Field("rootfs", _dict, lambda: {"type": "layers", "diff_ids": []}),
        _Field("history", _optional(_list(_dict)), None),
    )
