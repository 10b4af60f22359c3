"""DSSE envelopes (Dead Simple Signing Envelope v1) carrying in-toto statements.

Signatures are over PAE(payloadType, payload), never over the raw payload, so a signature cannot be
replayed on the same bytes presented under another payload type. `Envelope.from_dict` treats
its input as hostile (strict base64, bounded sizes). The records are plain checked dataclasses (no
pydantic on the `dagseal run` path); `_schema_models()` holds the pydantic twins the drift test in
tests/test_statement_fast.py compares them with.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from registry.errors import Refused
from signing.checked import Field, list_of, read_fields, recheck, text

PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_SIGNATURES = 16

__all__ = ["PAYLOAD_TYPE", "MAX_PAYLOAD_BYTES", "Envelope", "Signature", "b64decode_strict", "pae"]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: `DSSEv1 SP len(type) SP type SP len(body) SP body`."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def b64decode_strict(value: str, *, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise Refused(f"{what} is not valid base64", check="signature") from None


@dataclass(frozen=True, kw_only=True)
class Signature:
    sig: str
    keyid: str = ""

    def __post_init__(self) -> None:
        recheck(self, _SIGNATURE)

    @classmethod
    def from_dict(cls, doc: Any, loc: tuple = ()) -> "Signature":
        return cls(**read_fields(doc, _SIGNATURE, loc, "Signature", forbid_extra=False))

    @property
    def raw(self) -> bytes:
        return b64decode_strict(self.sig, what="DSSE signature")


_SIGNATURE = (Field("sig", text()), Field("keyid", text(), ""))


def _signature(v: Any, loc: tuple) -> Signature:
    return v if isinstance(v, Signature) else Signature.from_dict(v, loc)


@dataclass(frozen=True, kw_only=True)
class Envelope:
    payload: str
    payload_type: str
    signatures: list[Signature]

    def __post_init__(self) -> None:
        recheck(self, _ENVELOPE)

    @classmethod
    def from_dict(cls, doc: Any, loc: tuple = ()) -> "Envelope":
        """Check a hostile envelope object; raises SchemaError naming the first bad field."""
        return cls(**read_fields(doc, _ENVELOPE, loc, "Envelope", forbid_extra=False))

    @property
    def payload_bytes(self) -> bytes:
        return b64decode_strict(self.payload, what="DSSE payload")

    def pae(self) -> bytes:
        return pae(self.payload_type, self.payload_bytes)

    def to_json_dict(self) -> dict[str, Any]:
        return {"payload": self.payload, "payloadType": self.payload_type,
                "signatures": [{"sig": s.sig, "keyid": s.keyid} for s in self.signatures]}

    @classmethod
    def create(cls, payload: bytes, signature: bytes, keyid: str = "", payload_type: str = PAYLOAD_TYPE) -> "Envelope":
        return cls(payload=base64.b64encode(payload).decode(), payload_type=payload_type,
                   signatures=[Signature(sig=base64.b64encode(signature).decode(), keyid=keyid)])


_ENVELOPE = (Field("payload", text(max_length=MAX_PAYLOAD_BYTES * 2)),
             Field("payload_type", text(), alias="payloadType"),
             Field("signatures", list_of(_signature, min_length=1, max_length=MAX_SIGNATURES)))


def _schema_models() -> dict[str, Any]:
    """The pydantic twins of these records (imported only here, for the drift test)."""
    from pydantic import BaseModel, ConfigDict
    from pydantic import Field as PField

    class Signature(BaseModel):
        model_config = ConfigDict(extra="ignore", frozen=True)
        sig: str
        keyid: str = ""

    class Envelope(BaseModel):
        model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
        payload: str = PField(max_length=MAX_PAYLOAD_BYTES * 2)
        payload_type: str = PField(alias="payloadType")
        signatures: list[Signature] = PField(min_length=1, max_length=MAX_SIGNATURES)

    return {"Envelope": Envelope, "Signature": Signature}
