"""ECDSA P-256 key files, cosign-compatible: PKCS8 PEM private key, SubjectPublicKeyInfo PEM public key.

The private key is written with mode 0600 from creation (never world-readable for an instant), via
a temp file renamed into place so a failed keygen leaves nothing half-written. It is encrypted when
DAGSEAL_KEY_PASSWORD (or COSIGN_PASSWORD) is set.
"""

from __future__ import annotations

import os
from pathlib import Path

from registry.errors import BadInput
from registry.fsutil import atomic_write
from signing.dsse import Envelope
from signing.sigbundle import build_key_bundle, key_id_of
from signing.signers.base import Signer, SignerIdentity

PASSWORD_VARS = ("DAGSEAL_KEY_PASSWORD", "COSIGN_PASSWORD")


def _password() -> bytes | None:
    for var in PASSWORD_VARS:
        value = os.environ.get(var)
        if value:
            return value.encode()
    return None


def _write_private(path: Path, data: bytes, mode: int) -> None:
    atomic_write(path, data, mode=mode)  # the temp file is 0600 from creation


def generate_keypair(prefix: str | Path, *, force: bool = False) -> tuple[Path, Path, str]:
    """Write PREFIX.key (0600) and PREFIX.pub; returns (key path, pub path, key id)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    prefix = Path(prefix)
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    if not force:
        for path in (key_path, pub_path):
            if path.exists():
                raise BadInput(f"{path} already exists; keygen never overwrites a key",
                               hint="choose another --out prefix or remove the old pair deliberately")
    if not key_path.parent.is_dir():
        raise BadInput(f"--out {prefix}: folder {key_path.parent} does not exist", hint="create it first")
    key = ec.generate_private_key(ec.SECP256R1())
    password = _password()
    encryption = (serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption())
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_private(key_path, private_pem, 0o600)
    _write_private(pub_path, public_pem, 0o644)
    return key_path, pub_path, key_id_of(key.public_key())


def load_private_key(path: str | Path):
    """Load a PEM private key; BadInput naming the file when it is missing, encrypted or not P-256."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"--key {path}: cannot be read ({exc.strerror})", hint="pass the .key file `dagseal keygen` wrote") from None
    try:
        key = serialization.load_pem_private_key(data, password=_password())
    except TypeError:
        raise BadInput(f"--key {path}: the key is encrypted and no password is set",
                       hint="set DAGSEAL_KEY_PASSWORD (or COSIGN_PASSWORD)") from None
    except ValueError as exc:
        raise BadInput(f"--key {path}: not a readable PEM private key ({exc})",
                       hint="check DAGSEAL_KEY_PASSWORD, or pass the .key file `dagseal keygen` wrote") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise BadInput(f"--key {path}: not an ECDSA P-256 key", hint="generate one with `dagseal keygen --out PREFIX`")
    return key


class KeyFileSigner(Signer):
    """Signs with a local ECDSA P-256 private key."""

    def __init__(self, private_key) -> None:
        self._key = private_key
        self._key_id = key_id_of(private_key.public_key())

    @classmethod
    def from_file(cls, path: str | Path) -> "KeyFileSigner":
        return cls(load_private_key(path))

    @property
    def identity(self) -> SignerIdentity:
        return SignerIdentity(kind="key", key_id=self._key_id)

    def public_key_pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign_statement(self, payload: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        from signing.dsse import pae, PAYLOAD_TYPE

        signature = self._key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
        return build_key_bundle(Envelope.create(payload, signature, keyid=self._key_id), self._key_id)
