"""DSSE envelopes (Dead Simple Signing Envelope v1) carrying in-toto statements.

Signatures are over PAE(payloadType, payload), never over the raw payload, so a signature cannot be
replayed on the same bytes presented under another payload type. `Envelope.from_json_dict` treats
its input as hostile (strict base64, bounded sizes).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from registry.errors import Refused

PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_PAYLOAD_BYTES = 1024 * 1024


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: `DSSEv1 SP len(type) SP type SP len(body) SP body`."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def b64decode_strict(value: str, *, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise Refused(f"{what} is not valid base64", check="signature") from None


class Signature(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    sig: str
    keyid: str = ""

    @property
    def raw(self) -> bytes:
        return b64decode_strict(self.sig, what="DSSE signature")


class Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
    payload: str = Field(max_length=MAX_PAYLOAD_BYTES * 2)
    payload_type: str = Field(alias="payloadType")
    signatures: list[Signature] = Field(min_length=1, max_length=16)

    @property
    def payload_bytes(self) -> bytes:
        return b64decode_strict(self.payload, what="DSSE payload")

    def pae(self) -> bytes:
        return pae(self.payload_type, self.payload_bytes)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")

    @classmethod
    def create(cls, payload: bytes, signature: bytes, keyid: str = "", payload_type: str = PAYLOAD_TYPE) -> "Envelope":
        return cls(payload=base64.b64encode(payload).decode(), payloadType=payload_type,
                   signatures=[Signature(sig=base64.b64encode(signature).decode(), keyid=keyid)])
