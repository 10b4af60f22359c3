"""AWS KMS signer: an ECC_NIST_P256 key signing ECDSA_SHA_256 over the DSSE PAE.

MessageType RAW for messages up to 4096 bytes (KMS hashes them), DIGEST (our sha256) above. Every
signature KMS returns is checked against the key's public key before it is used, so a KMS (or an
emulator) that signs something else never yields a published, unverifiable bundle.

`awskms:///alias/NAME`, `awskms:///KEY-ID` or `awskms:///arn:...`; `awskms://HOST:PORT/...` names a
KMS endpoint (cosign's form, used for private endpoints and tests). The key's spec is checked
before signing, so a wrong key type fails with a clear message instead of an unverifiable bundle.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from registry.errors import BadInput, StorageError
from signing.dsse import PAYLOAD_TYPE, Envelope, pae
from signing.sigbundle import build_key_bundle, key_id_from_pem
from signing.signers.base import Signer, SignerIdentity

RAW_LIMIT = 4096  # KMS accepts at most 4096 bytes with MessageType RAW


@dataclass(frozen=True)
class KmsUri:
    key_id: str
    endpoint: str | None = None


def parse_kms_uri(uri: str) -> KmsUri:
    if not uri.startswith("awskms://"):
        raise BadInput(f"--kms {uri!r} is not an AWS KMS key URI", hint="write awskms:///alias/NAME or awskms:///KEY-ID")
    rest = uri[len("awskms://"):]
    host, _, key = rest.partition("/")
    if not key:
        raise BadInput(f"--kms {uri!r} names no key", hint="write awskms:///alias/NAME or awskms:///KEY-ID")
    endpoint = None
    if host:
        scheme = "http" if host.split(":")[0] in ("127.0.0.1", "localhost", "[::1]") else "https"
        endpoint = f"{scheme}://{host}"
    return KmsUri(key_id=key, endpoint=endpoint)


def kms_client(endpoint: str | None = None):
    import boto3

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("kms", region_name=region, endpoint_url=endpoint or os.environ.get("AWS_ENDPOINT_URL_KMS")
                        or os.environ.get("AWS_ENDPOINT_URL"))


def _call(uri: str, fn, **kwargs):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NotFoundException", "InvalidKeyUsageException", "DisabledException", "KMSInvalidStateException",
                    "AccessDeniedException", "ValidationException"):
            raise BadInput(f"--kms {uri}: {code}: {exc.response['Error'].get('Message', '')}",
                           hint="check the key id or alias, its state and your permissions") from None
        raise StorageError(f"--kms {uri}: KMS call failed: {exc}") from None
    except BotoCoreError as exc:
        raise StorageError(f"--kms {uri}: cannot reach KMS: {exc}",
                           hint="check AWS_REGION, credentials and network") from None


def kms_public_key_pem(uri: str, client=None) -> str:
    """The SubjectPublicKeyInfo PEM of a KMS key (used by policy export and the signer)."""
    from cryptography.hazmat.primitives import serialization

    parsed = parse_kms_uri(uri)
    client = client or kms_client(parsed.endpoint)
    resp = _call(uri, client.get_public_key, KeyId=parsed.key_id)
    spec = resp.get("KeySpec") or resp.get("CustomerMasterKeySpec")
    if spec != "ECC_NIST_P256" or "ECDSA_SHA_256" not in resp.get("SigningAlgorithms", []):
        raise BadInput(f"--kms {uri}: key spec is {spec}, dagseal signs with ECC_NIST_P256 / ECDSA_SHA_256",
                       hint="create the key with --key-spec ECC_NIST_P256 --key-usage SIGN_VERIFY")
    key = serialization.load_der_public_key(resp["PublicKey"])
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class KmsSigner(Signer):
    """Signs through AWS KMS; the private key never leaves KMS."""

    def __init__(self, uri: str, *, client=None, message_type: str = "auto") -> None:
        if message_type not in ("auto", "RAW", "DIGEST"):
            raise ValueError("message_type is auto, RAW or DIGEST")
        self.uri = uri
        self._parsed = parse_kms_uri(uri)
        self._client = client or kms_client(self._parsed.endpoint)
        self._message_type = message_type
        self.public_key_pem = kms_public_key_pem(uri, self._client)
        self._key_id = key_id_from_pem(self.public_key_pem.encode())

    @property
    def identity(self) -> SignerIdentity:
        return SignerIdentity(kind="key", key_id=self._key_id)

    def sign_statement(self, payload: bytes) -> bytes:
        from signing.sigbundle import _verify_ecdsa

        message = pae(PAYLOAD_TYPE, payload)
        raw = self._message_type == "RAW" or (self._message_type == "auto" and len(message) <= RAW_LIMIT)
        if raw and len(message) > RAW_LIMIT:
            raise BadInput(f"--kms {self.uri}: the statement is {len(message)} bytes, more than KMS signs RAW ({RAW_LIMIT})")
        resp = _call(self.uri, self._client.sign, KeyId=self._parsed.key_id,
                     Message=message if raw else hashlib.sha256(message).digest(),
                     MessageType="RAW" if raw else "DIGEST", SigningAlgorithm="ECDSA_SHA_256")
        signature = resp["Signature"]
        # never publish what the verifier would refuse: check KMS signed exactly PAE(payload)
        if not _verify_ecdsa(self.public_key_pem, signature, message):
            raise StorageError(f"--kms {self.uri}: KMS returned a signature that does not verify over the statement "
                               f"(MessageType {'RAW' if raw else 'DIGEST'})",
                               hint="the KMS endpoint may not implement MessageType DIGEST; keep statements under 4 KiB")
        return build_key_bundle(Envelope.create(payload, signature, keyid=self._key_id), self._key_id)
