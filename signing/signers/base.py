"""The one interface every signer offers: sign a statement into a Sigstore bundle, and say who it is.

`identity` lets `dagseal sign` check, before anything is published, that the runtime would accept
this signer for the image's team (a signature the verifier would refuse is never pushed).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from signing.trust import KeylessSignerEntry, KeySignerEntry


@dataclass(frozen=True)
class SignerIdentity:
    """A key id (key and KMS signers) or an OIDC issuer + identity (keyless)."""

    kind: str  # "key" | "keyless"
    key_id: str | None = None
    issuer: str | None = None
    identity: str | None = None

    def matches(self, entry: KeySignerEntry | KeylessSignerEntry) -> bool:
        if self.kind == "key":
            return isinstance(entry, KeySignerEntry) and entry.key_id == self.key_id
        return (isinstance(entry, KeylessSignerEntry) and entry.issuer == self.issuer
                and entry.identity == self.identity)

    def __str__(self) -> str:
        if self.kind == "key":
            return f"key {self.key_id}"
        return f"{self.identity} (issuer {self.issuer})"


class Signer(abc.ABC):
    """Signs DSSE-wrapped in-toto statements; returns Sigstore bundle v0.3 JSON bytes."""

    @property
    @abc.abstractmethod
    def identity(self) -> SignerIdentity:
        """Who signs: checked against the team's signers in org policy before signing."""

    @abc.abstractmethod
    def sign_statement(self, payload: bytes) -> bytes:
        """Sign the statement bytes (unchanged) and return the bundle JSON."""
