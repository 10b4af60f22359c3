"""Keyless Sigstore signing through sigstore-python's own client (Fulcio certificate + Rekor entry).

The identity token comes from `--identity-token` or the CI's ambient credentials
(`sigstore.oidc.detect_credential`); public-good Sigstore by default, a private instance through a
ClientTrustConfig JSON (`--trust-config`). sigstore is imported only here, never on the verify path.
"""

from __future__ import annotations

from pathlib import Path

from registry.errors import BadInput, Refused, StorageError
from signing.signers.base import Signer, SignerIdentity

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
EMAIL_ISSUERS = ("https://accounts.google.com", "https://oauth2.sigstore.dev/auth", "https://oauth2.sigstage.dev/auth")


def certificate_identity(claims: dict) -> SignerIdentity:
    """The (issuer, SAN) Fulcio will certify for these token claims, as the verifier will see it.

    GitHub Actions: the SAN is the workflow URL `https://github.com/<job_workflow_ref>` (what
    org.toml lists), not the token's `sub`; email issuers: the email; others: `sub`.
    """
    issuer = str(claims.get("iss", ""))
    if issuer == GITHUB_ISSUER and claims.get("job_workflow_ref"):
        return SignerIdentity(kind="keyless", issuer=issuer, identity=f"https://github.com/{claims['job_workflow_ref']}")
    if issuer in EMAIL_ISSUERS or claims.get("email"):
        return SignerIdentity(kind="keyless", issuer=issuer, identity=str(claims.get("email", claims.get("sub", ""))))
    return SignerIdentity(kind="keyless", issuer=issuer, identity=str(claims.get("sub", "")))


def _identity_in_certificate(cert) -> SignerIdentity:
    from cryptography import x509

    issuer = ""
    try:
        issuer = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")).value.value.decode()
    except x509.ExtensionNotFound:
        pass
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [*san.get_values_for_type(x509.UniformResourceIdentifier), *san.get_values_for_type(x509.RFC822Name)]
    return SignerIdentity(kind="keyless", issuer=issuer, identity=names[0] if names else "")


def load_trust_config(path: str | Path):
    """A ClientTrustConfig from a JSON file; BadInput naming the file when it is unusable."""
    from sigstore.models import ClientTrustConfig

    path = Path(path)
    try:
        return ClientTrustConfig.from_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BadInput(f"--trust-config {path}: cannot be read ({exc.strerror})") from None
    except Exception as exc:  # sigstore_models raises pydantic / ValueError variants
        raise BadInput(f"--trust-config {path}: not a Sigstore ClientTrustConfig ({str(exc).splitlines()[0]})",
                       hint="use a ClientTrustConfig v0.1 JSON (trustedRoot + signingConfig)") from None


class KeylessSigner(Signer):
    """Signs with an ephemeral key certified by Fulcio for the OIDC identity; logged in Rekor."""

    def __init__(self, *, identity_token: str | None = None, trust_config: str | Path | None = None) -> None:
        from sigstore.oidc import IdentityError, IdentityToken, detect_credential

        raw = identity_token
        if raw is None:
            try:
                raw = detect_credential()
            except Exception as exc:
                raise BadInput(f"--keyless: detecting ambient OIDC credentials failed: {exc}",
                               hint="run in CI with id-token permission or pass --identity-token") from None
        if not raw:
            raise BadInput("--keyless: no OIDC identity token found",
                           hint="run in CI with id-token permission (GitHub: permissions: id-token: write) "
                                "or pass --identity-token")
        try:
            self._token = IdentityToken(raw)
        except IdentityError as exc:
            raise BadInput(f"--keyless: the identity token is unusable: {exc}",
                           hint="use a fresh token whose audience is 'sigstore'") from None
        self._trust_config_path = trust_config
        import jwt

        self._identity = certificate_identity(jwt.decode(raw, options={"verify_signature": False}))

    def _context(self):
        from sigstore.models import ClientTrustConfig
        from sigstore.sign import SigningContext

        if self._trust_config_path:
            config = load_trust_config(self._trust_config_path)
        else:
            config = ClientTrustConfig.production()
        return SigningContext.from_trust_config(config)

    @property
    def identity(self) -> SignerIdentity:
        return self._identity

    def sign_statement(self, payload: bytes) -> bytes:
        from sigstore.dsse import Statement
        from sigstore.errors import Error as SigstoreError

        try:
            ctx = self._context()
            with ctx.signer(self._token) as signer:
                bundle = signer.sign_dsse(Statement(payload))
        except SigstoreError as exc:
            raise StorageError(f"keyless signing failed: {exc}",
                               hint="check the Fulcio/Rekor URLs of the trust config and the token") from None
        got = _identity_in_certificate(bundle.signing_certificate)
        if (got.issuer, got.identity) != (self._identity.issuer, self._identity.identity):
            raise Refused(f"Fulcio certified {got}, not the pre-flight identity {self._identity}; "
                          "the signature is not attached", check="signer",
                          hint="list the certified identity in org.toml if it is the CI's")
        return bundle.to_json().encode()
