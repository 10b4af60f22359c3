"""The signed statement: an in-toto Statement v1 naming the image digest and its team.

This is the contract between `dagseal sign` (which writes it) and the runtime verifier (which
reads it from hostile bytes). `parse_statement` guards against malformed, oversized, duplicate-key
or type-confused payloads; `Statement.bundle_predicate()` guards against a statement of another
predicate type being taken for ours (e.g. an SBOM attestation presented as the bundle signature).

The records are plain checked dataclasses, not pydantic models: a statement is parsed on every
`dagseal run` and importing pydantic cost most of a warm start. They refuse what the pydantic
twins in `_schema_models()` refuse, with the same field paths and messages (never coercing: 5 is
not "5"); tests/test_statement_fast.py runs hostile samples through both so they cannot drift.
Times are ISO 8601 strings read with `datetime.fromisoformat` and must carry a timezone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from registry.digest import hex_of, is_digest
from registry.errors import Refused
from registry.model import canonical_json, load_json_object
from signing.checked import (HAS_DEFAULT, Field, SchemaError, json_object, list_of, optional, read_fields, recheck,
                             str_dict, text)

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://dagseal.dev/attestation/bundle/v1"
MAX_STATEMENT_BYTES = 1024 * 1024
MAX_TEXT = 4096
_AWARE = "Value error, time must carry a timezone (use UTC, e.g. 2026-11-25T12:00:00Z)"
_any_text = text()
_short_text = text(min_length=1, max_length=MAX_TEXT)


def _digest(v: Any, loc: tuple) -> str:
    if not is_digest(_any_text(v, loc)):
        raise SchemaError(loc, f"Value error, {v!r} is not a sha256 digest")
    return v


def _time(v: Any, loc: tuple) -> datetime:
    """An aware datetime from a datetime or an ISO 8601 string; refuses numbers and naive times."""
    if isinstance(v, str):
        try:
            v = datetime.fromisoformat(v)
        except ValueError:
            raise SchemaError(loc, "Input should be a valid datetime (ISO 8601 with a timezone)") from None
    if not isinstance(v, datetime):
        raise SchemaError(loc, "Input should be a valid datetime")
    if v.utcoffset() is None:
        raise SchemaError(loc, _AWARE)
    return v


def _time_json(v: datetime) -> str:
    """As pydantic wrote it (the signed bytes must not change): a zero offset is `Z`."""
    iso = v.isoformat()
    return iso[:-6] + "Z" if iso.endswith("+00:00") else iso


def _record(cls: type) -> Any:
    """A nested record's check: an instance passes, an object is read as one."""
    return lambda v, loc: v if isinstance(v, cls) else cls.from_dict(v, loc)


@dataclass(frozen=True, kw_only=True)
class Source:
    uri: str = ""
    revision: str = ""

    def __post_init__(self) -> None:
        recheck(self, _SOURCE)

    @classmethod
    def from_dict(cls, doc: Any, loc: tuple = ()) -> "Source":
        return cls(**read_fields(doc, _SOURCE, loc, "Source", forbid_extra=True))


@dataclass(frozen=True, kw_only=True)
class Builder:
    id: str

    def __post_init__(self) -> None:
        recheck(self, _BUILDER)

    @classmethod
    def from_dict(cls, doc: Any, loc: tuple = ()) -> "Builder":
        return cls(**read_fields(doc, _BUILDER, loc, "Builder", forbid_extra=True))


_SOURCE = (Field("uri", _any_text, ""), Field("revision", _any_text, ""))
_BUILDER = (Field("id", _short_text),)


@dataclass(frozen=True, kw_only=True)
class BundlePredicate:
    """What the signer vouches for: this image is `bundle` `version` of `team`."""

    team: str
    bundle: str
    version: str
    spec_digest: str
    lock_digest: str
    source: Source = field(default_factory=Source)
    built_at: datetime
    expires: datetime | None = None
    builder: Builder

    def __post_init__(self) -> None:
        recheck(self, _PREDICATE)

    @classmethod
    def from_dict(cls, doc: Any, loc: tuple = ()) -> "BundlePredicate":
        """Check a hostile predicate object field by field, in declaration order (the first error wins)."""
        return cls(**read_fields(doc, _PREDICATE, loc, "BundlePredicate", forbid_extra=True))

    def to_json_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"team": self.team, "bundle": self.bundle, "version": self.version,
                                "spec_digest": self.spec_digest, "lock_digest": self.lock_digest,
                                "source": {"uri": self.source.uri, "revision": self.source.revision},
                                "built_at": _time_json(self.built_at)}
        if self.expires is not None:
            body["expires"] = _time_json(self.expires)
        body["builder"] = {"id": self.builder.id}
        return body


_PREDICATE = (Field("team", _short_text), Field("bundle", _short_text), Field("version", _short_text),
              Field("spec_digest", _digest), Field("lock_digest", _digest),
              Field("source", _record(Source), HAS_DEFAULT), Field("built_at", _time),
              Field("expires", optional(_time), None), Field("builder", _record(Builder)))


@dataclass(frozen=True, kw_only=True)
class Subject:
    name: str
    digest: dict[str, str]

    def __post_init__(self) -> None:
        recheck(self, _SUBJECT)

    @classmethod
    def from_dict(cls, doc: Any, loc: tuple = ()) -> "Subject":
        return cls(**read_fields(doc, _SUBJECT, loc, "Subject", forbid_extra=False))


_SUBJECT = (Field("name", _any_text), Field("digest", str_dict))


@dataclass(frozen=True, kw_only=True)
class Statement:
    """An in-toto Statement v1; `predicate` stays a plain object until its type is checked."""

    type: str
    subject: list[Subject]
    predicate_type: str
    predicate: dict[str, Any]

    def __post_init__(self) -> None:
        recheck(self, _STATEMENT)

    @classmethod
    def from_dict(cls, doc: Any, loc: tuple = ()) -> "Statement":
        return cls(**read_fields(doc, _STATEMENT, loc, "Statement", forbid_extra=False))

    def subject_digests(self) -> list[str]:
        """Every `sha256:<hex>` the statement is about."""
        return [f"sha256:{s.digest['sha256']}" for s in self.subject if "sha256" in s.digest]

    def covers(self, manifest_digest: str) -> bool:
        return manifest_digest in self.subject_digests()

    def require_subject(self, manifest_digest: str) -> None:
        """Refused(check="subject") unless the statement is about `manifest_digest` (a signature
        copied onto another image verifies, but names the other image's digest)."""
        if not self.covers(manifest_digest):
            raise Refused(f"signed statement is about {', '.join(self.subject_digests()) or 'no sha256 subject'}, "
                          f"not manifest {manifest_digest}", check="subject",
                          hint="the signature belongs to another image; sign this image")

    def bundle_predicate(self) -> BundlePredicate:
        """The dagseal predicate; refuses another predicate type or a malformed predicate."""
        if self.predicate_type != PREDICATE_TYPE:
            raise Refused(f"statement predicate type is {self.predicate_type!r}, expected {PREDICATE_TYPE!r}",
                          check="predicate-type", hint="sign the image with `dagseal sign`")
        try:
            return BundlePredicate.from_dict(self.predicate)
        except SchemaError as exc:
            raise Refused(f"statement predicate is malformed at predicate.{exc.where}: {exc.msg}",
                          check="statement", hint="re-sign the image with a current `dagseal sign`") from None


_STATEMENT = (Field("type", _any_text, alias="_type"), Field("subject", list_of(_record(Subject), min_length=1)),
              Field("predicate_type", _any_text, alias="predicateType"), Field("predicate", json_object))


def make_statement(repository: str, manifest_digest: str, predicate: BundlePredicate | dict[str, Any],
                   predicate_type: str = PREDICATE_TYPE) -> bytes:
    """Canonical JSON bytes of the statement about `manifest_digest` (what gets signed)."""
    body = predicate.to_json_dict() if isinstance(predicate, BundlePredicate) else predicate
    return canonical_json({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": repository, "digest": {"sha256": hex_of(manifest_digest)}}],
        "predicateType": predicate_type,
        "predicate": body,
    })


def parse_statement(payload: bytes) -> Statement:
    """Parse a statement from hostile bytes; raises Refused(check="statement") naming the problem."""
    doc = load_json_object(payload, what="signed statement", limit=MAX_STATEMENT_BYTES, check="statement")
    try:
        statement = Statement.from_dict(doc)
    except SchemaError as exc:
        raise Refused(f"signed statement is malformed at {exc.where}: {exc.msg}", check="statement") from None
    if statement.type != STATEMENT_TYPE:
        raise Refused(f"statement _type is {statement.type!r}, expected {STATEMENT_TYPE!r}", check="statement")
    return statement


def _schema_models() -> dict[str, Any]:
    """The pydantic twins of these records (imported only here, for the drift test)."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, StringConstraints, field_validator
    from pydantic import Field as PField

    text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)]  # noqa: F841 (used in string annotations below)

    class _Strict(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    class Source(_Strict):
        uri: str = ""
        revision: str = ""

    class Builder(_Strict):
        id: text

    class BundlePredicate(_Strict):
        team: text
        bundle: text
        version: text
        spec_digest: str
        lock_digest: str
        source: Source = PField(default_factory=Source)
        built_at: datetime
        expires: datetime | None = None
        builder: Builder

        @field_validator("spec_digest", "lock_digest")
        @classmethod
        def _digest(cls, v: str) -> str:
            if not is_digest(v):
                raise ValueError(f"{v!r} is not a sha256 digest")
            return v

        @field_validator("built_at", "expires")
        @classmethod
        def _aware(cls, v: datetime | None) -> datetime | None:
            if v is not None and v.tzinfo is None:
                raise ValueError("time must carry a timezone (use UTC, e.g. 2026-11-25T12:00:00Z)")
            return v

    class Subject(BaseModel):
        model_config = ConfigDict(extra="ignore", frozen=True)
        name: str
        digest: dict[str, str]

    class Statement(BaseModel):
        model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
        type: str = PField(alias="_type")
        subject: list[Subject] = PField(min_length=1)
        predicate_type: str = PField(alias="predicateType")
        predicate: dict[str, Any]

    return {"BundlePredicate": BundlePredicate, "Statement": Statement}
