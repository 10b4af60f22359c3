"""The signed statement: an in-toto Statement v1 naming the image digest and its team.

This is the contract between `dagseal sign` (which writes it) and the runtime verifier (which
reads it from hostile bytes). `parse_statement` guards against malformed, oversized, duplicate-key
or type-confused payloads; `Statement.bundle_predicate()` guards against a statement of another
predicate type being taken for ours (e.g. an SBOM attestation presented as the bundle signature).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator


from registry.digest import hex_of, is_digest
from registry.errors import Refused
from registry.model import canonical_json, load_json

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://dagseal.dev/attestation/bundle/v1"
MAX_STATEMENT_BYTES = 1024 * 1024

_Text = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Source(_Strict):
    uri: str = ""
    revision: str = ""


class Builder(_Strict):
    id: _Text


class BundlePredicate(_Strict):
    """What the signer vouches for: this image is `bundle` `version` of `team`."""

    team: _Text
    bundle: _Text
    version: _Text
    spec_digest: str
    lock_digest: str
    source: Source = Field(default_factory=Source)
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

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class Subject(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    name: str
    digest: dict[str, str]


class Statement(BaseModel):
    """An in-toto Statement v1; `predicate` stays a plain object until its type is checked."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
    type: str = Field(alias="_type")
    subject: list[Subject] = Field(min_length=1)
    predicate_type: str = Field(alias="predicateType")
    predicate: dict[str, Any]

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
            return BundlePredicate.model_validate(self.predicate)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise Refused(f"statement predicate is malformed at predicate.{loc}: {first['msg']}",
                          check="statement", hint="re-sign the image with a current `dagseal sign`") from None


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
    try:
        doc = load_json(payload, what="signed statement", limit=MAX_STATEMENT_BYTES)
    except Refused as exc:
        raise Refused(exc.message, check="statement") from None
    if not isinstance(doc, dict):
        raise Refused("signed statement is not a JSON object", check="statement")
    try:
        statement = Statement.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise Refused(f"signed statement is malformed at {loc}: {first['msg']}", check="statement") from None
    if statement.type != STATEMENT_TYPE:
        raise Refused(f"statement _type is {statement.type!r}, expected {STATEMENT_TYPE!r}", check="statement")
    return statement
