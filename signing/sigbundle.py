"""Sigstore bundle v0.3 JSON around a DSSE envelope, for key-based and keyless signatures.

Keyless bundles are written by sigstore-python (certificate + one transparency-log entry) and
verified by its `Verifier`. Key-based and KMS bundles carry `verificationMaterial.publicKey.hint`
(hex sha256 of the key's SubjectPublicKeyInfo DER) and no log entry; sigstore-python refuses
certificate-less bundles, so they are verified here with `cryptography` over the DSSE PAE.

Everything read here is hostile: size-capped, duplicate JSON keys refused, the bundle kind decided
by what the bundle carries, never by a hint alone. Imports of `cryptography` and `sigstore` are
lazy so the start-time gate pays for them only when it verifies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from registry.errors import Refused
from registry.model import SIGSTORE_BUNDLE, canonical_json, load_json_object
from signing.checked import SchemaError
from signing.dsse import PAYLOAD_TYPE, Envelope

if TYPE_CHECKING:
    from signing.trust import KeylessSignerEntry, KeySignerEntry

MAX_BUNDLE_BYTES = 1024 * 1024
BUNDLE_MEDIA_TYPES = (SIGSTORE_BUNDLE, "application/vnd.dev.sigstore.bundle+json;version=0.3")


def key_id_from_pem(pem: bytes) -> str:
    """Hex sha256 of the SubjectPublicKeyInfo DER of a PEM public key (the bundle's key hint)."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from None
    return key_id_of(key)


def key_id_of(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class ParsedBundle:
    """The parts of a bundle dagseal reads; `doc` is the whole JSON object."""

    doc: dict[str, Any]
    envelope: Envelope
    key_hint: str | None
    keyless: bool

    @property
    def payload(self) -> bytes:
        return self.envelope.payload_bytes


def build_key_bundle(envelope: Envelope, key_id: str) -> bytes:
    """A v0.3 bundle for a key or KMS signature: public-key hint, no log entries."""
    return canonical_json({
        "mediaType": SIGSTORE_BUNDLE,
        "verificationMaterial": {"publicKey": {"hint": key_id}, "tlogEntries": []},
        "dsseEnvelope": envelope.to_json_dict(),
    })


def parse_bundle(bundle_json: bytes) -> ParsedBundle:
    """Parse a Sigstore bundle v0.3 holding a DSSE envelope; Refused(check="signature") if malformed."""
    doc = load_json_object(bundle_json, what="signature bundle", limit=MAX_BUNDLE_BYTES, check="signature")
    if doc.get("mediaType") not in BUNDLE_MEDIA_TYPES:
        raise Refused(f"signature bundle has mediaType {doc.get('mediaType')!r}, expected {SIGSTORE_BUNDLE!r}",
                      check="signature", hint="sign with `dagseal sign` (Sigstore bundle v0.3)")
    material = doc.get("verificationMaterial")
    if not isinstance(material, dict):
        raise Refused("signature bundle has no verificationMaterial", check="signature")
    raw_env = doc.get("dsseEnvelope")
    if not isinstance(raw_env, dict):
        raise Refused("signature bundle holds no DSSE envelope (message signatures are not accepted)", check="signature")
    try:
        envelope = Envelope.from_dict(raw_env)
    except SchemaError as exc:
        raise Refused(f"signature bundle's DSSE envelope is malformed at {exc.where}: {exc.msg}",
                      check="signature") from None
    keyless = "certificate" in material or "x509CertificateChain" in material
    hint = None
    if not keyless:
        pk = material.get("publicKey")
        if not isinstance(pk, dict) or not isinstance(pk.get("hint", ""), str):
            raise Refused("signature bundle has neither a certificate nor a public-key hint", check="signature")
        hint = pk.get("hint") or None
    return ParsedBundle(doc=doc, envelope=envelope, key_hint=hint, keyless=keyless)


def _check_payload_type(envelope: Envelope) -> None:
    if envelope.payload_type != PAYLOAD_TYPE:
        raise Refused(f"DSSE payload type is {envelope.payload_type!r}, expected {PAYLOAD_TYPE!r}", check="signature")


def _verify_ecdsa(pem: str, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


def verify_key_bundle(bundle_json: bytes, public_keys: Sequence["KeySignerEntry"]) -> tuple[str, bytes]:
    """Verify a key/KMS bundle against the team's keys; returns (key_id, statement payload).

    Refused(check="signature") when the bundle is keyless or malformed, names a key that is not
    one of `public_keys`, or its signature does not verify over PAE(payloadType, payload).
    """
    parsed = parse_bundle(bundle_json)
    if parsed.keyless:
        raise Refused("signature bundle carries a certificate (keyless); no keyless identity is trusted here",
                      check="signature")
    envelope = parsed.envelope
    _check_payload_type(envelope)
    if not public_keys:
        raise Refused("no public keys are trusted for this team", check="signature",
                      hint="list the team's key in org.toml and re-export the policy")
    candidates = list(public_keys)
    if parsed.key_hint is not None:
        candidates = [k for k in public_keys if k.key_id == parsed.key_hint]
        if not candidates:
            raise Refused(f"signed with key {parsed.key_hint}, which is not one of the team's keys "
                          f"({', '.join(k.key_id[:12] for k in public_keys)})", check="signature",
                          hint="sign with a key listed for the team in org.toml")
    message = envelope.pae()
    for sig in envelope.signatures:
        raw = sig.raw
        for key in candidates:
            if _verify_ecdsa(key.public_key_pem, raw, message):
                return key.key_id, envelope.payload_bytes
    raise Refused("DSSE signature does not verify with the team's key: the statement or signature was altered, "
                  "or it was made with another key", check="signature")


def _trusted_root(trusted_root_json: Any):
    from sigstore.models import TrustedRoot

    if trusted_root_json is None:
        from sigstore.models import ClientTrustConfig

        return ClientTrustConfig.production(offline=True).trusted_root
    from sigstore_models.trustroot import v1 as trustroot_v1

    raw = trusted_root_json
    if isinstance(raw, dict):
        raw = canonical_json(raw)
    return TrustedRoot(trustroot_v1.TrustedRoot.from_json(raw))


def verify_keyless_bundle(bundle_json: bytes, identities: Iterable["KeylessSignerEntry"],
                          trusted_root_json: dict[str, Any] | str | bytes | None) -> tuple[str, bytes]:
    """Verify a keyless bundle with sigstore-python's Verifier; returns (identity, payload).

    `identities` are the (issuer, identity) pairs allowed; `trusted_root_json` the private
    instance's trusted root (None: sigstore's bundled public-good root, offline). Any failure is
    Refused(check="signature") with sigstore's reason.
    """
    identities = list(identities)
    parsed = parse_bundle(bundle_json)
    if not parsed.keyless:
        raise Refused(f"signature bundle is key-based (key {parsed.key_hint}); no key is trusted here",
                      check="signature")
    _check_payload_type(parsed.envelope)
    if not identities:
        raise Refused("no keyless identities are trusted for this team", check="signature")
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import Bundle
    from sigstore.verify import Verifier
    from sigstore.verify.policy import AnyOf, Identity

    try:
        bundle = Bundle.from_json(bundle_json)
        verifier = Verifier(trusted_root=_trusted_root(trusted_root_json))
    except (SigstoreError, ValueError, TypeError, KeyError) as exc:
        raise Refused(f"keyless signature bundle cannot be used: {exc}", check="signature") from None
    policy = AnyOf([Identity(identity=i.identity, issuer=i.issuer) for i in identities])
    try:
        payload_type, payload = verifier.verify_dsse(bundle, policy)
    except (SigstoreError, ValueError) as exc:
        allowed = ", ".join(f"{i.identity} ({i.issuer})" for i in identities)
        raise Refused(f"keyless signature refused: {exc}", check="signature",
                      hint=f"the team accepts: {allowed}") from None
    if payload_type != PAYLOAD_TYPE:
        raise Refused(f"DSSE payload type is {payload_type!r}, expected {PAYLOAD_TYPE!r}", check="signature")
    return _identity_of(bundle, identities), payload


def _identity_of(bundle, identities: list["KeylessSignerEntry"]) -> str:
    """The SAN of the verified certificate that matched one of `identities`."""
    from cryptography import x509

    cert = bundle.signing_certificate
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*san.get_values_for_type(x509.RFC822Name), *san.get_values_for_type(x509.UniformResourceIdentifier)]
    except x509.ExtensionNotFound:
        names = []
    for i in identities:
        if i.identity in names:
            return i.identity
    return names[0] if names else ""
