"""AWS KMS signing against a moto server on loopback: the private key never leaves KMS, and the
bundles verify with the public key `dagseal policy export` fetched once."""

from __future__ import annotations

import pytest

from registry.errors import Refused
from registry.layout import LayoutStore
from registry.ref import parse_reference
from signing.attach import find_bundles
from signing.sigbundle import verify_key_bundle
from signing.signers.kms import KmsSigner
from signing.statement import PREDICATE_TYPE, make_statement, parse_statement
from signing.trust import load_policy
from tests.fixtures.sigstore import write_org


@pytest.fixture
def kms_key(moto_server, aws_env):
    """An ECC_NIST_P256 signing key in moto's KMS: (awskms URI by alias, key id)."""
    kms = moto_server.client("kms")
    key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    alias = f"alias/team-a-{key_id[:8]}"
    kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    return f"awskms:///{alias}", key_id


@pytest.fixture
def kms_org(tmp_path, kms_key):
    uri, _ = kms_key
    org = write_org(tmp_path, extra_team_a_signers=f'\n  {{ key = "{uri}" }},')
    from registry.digest import sha256_digest
    from tests.fixtures.sigstore import make_image

    lock = org.lock("team_a", "team_a_analytics")
    ref, digest = make_image(org.store, "team_a", "team_a_analytics", lock_digest=sha256_digest(lock.read_bytes()))
    policy = tmp_path / "policy.json"
    return org, ref, digest, policy


def test_kms_sign_round_trips(dagseal, kms_org, kms_key):
    org, ref, digest, policy_path = kms_org
    assert dagseal("policy", "export", "--specs", org.specs, "--out", policy_path).code == 0
    policy = load_policy(policy_path)
    kms_entries = [k for k in policy.keys_for("team_a") if k.source == kms_key[0]]
    assert len(kms_entries) == 1 and "BEGIN PUBLIC KEY" in kms_entries[0].public_key_pem
    res = dagseal("sign", ref, "--kms", kms_key[0], "--policy", policy_path, "--json")
    assert res.code == 0, res.stderr
    r = parse_reference(ref)
    (_, bundle_json), = find_bundles(LayoutStore(r.location), r.repository, digest, PREDICATE_TYPE)
    key_id, payload = verify_key_bundle(bundle_json, policy.keys_for("team_a"))
    assert key_id == kms_entries[0].key_id
    parse_statement(payload).require_subject(digest)
    with pytest.raises(Refused):
        verify_key_bundle(bundle_json, policy.keys_for("team_b"))


def test_kms_raw_message_type_and_key_id_uri(kms_key, aws_env):
    uri, key_id = kms_key
    raw = KmsSigner(f"awskms:///{key_id}", message_type="RAW")
    by_alias = KmsSigner(uri)  # auto: RAW below 4 KiB
    assert raw.identity == by_alias.identity
    from signing.trust import KeySignerEntry

    entry = KeySignerEntry(key_id=raw.identity.key_id, public_key_pem=raw.public_key_pem)
    payload = make_statement("team_a/x", "sha256:" + "b" * 64, {"team": "team_a"})
    for signer in (raw, by_alias):
        assert verify_key_bundle(signer.sign_statement(payload), [entry]) == (entry.key_id, payload)


def test_kms_key_not_listed_for_the_team_is_refused(dagseal, kms_org, moto_server):
    org, ref, digest, _ = kms_org
    kms = moto_server.client("kms")
    other = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    res = dagseal("sign", ref, "--kms", f"awskms:///{other}", "--specs", org.specs, "--json")
    assert res.code == 3 and res.json_lines[0]["check"] == "signer"
    r = parse_reference(ref)
    assert find_bundles(LayoutStore(r.location), r.repository, digest) == []


def test_kms_bad_keys_are_bad_input(dagseal, kms_org, moto_server):
    org, ref, _, _ = kms_org
    rsa = moto_server.client("kms").create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    res = dagseal("sign", ref, "--kms", f"awskms:///{rsa}", "--specs", org.specs)
    assert res.code == 2 and "ECC_NIST_P256" in res.stderr
    res = dagseal("sign", ref, "--kms", "awskms:///alias/does-not-exist", "--specs", org.specs)
    assert res.code == 2 and "alias/does-not-exist" in res.stderr
    res = dagseal("sign", ref, "--kms", "gcpkms://x", "--specs", org.specs)
    assert res.code == 2 and "awskms:///" in res.stderr


def test_kms_signature_over_something_else_is_never_published(kms_key, aws_env):
    """moto ignores MessageType DIGEST (signs the digest bytes as RAW): the self-check catches it."""
    from registry.errors import StorageError

    signer = KmsSigner(kms_key[0], message_type="DIGEST")
    with pytest.raises(StorageError, match="does not verify"):
        signer.sign_statement(make_statement("team_a/x", "sha256:" + "c" * 64, {"team": "team_a"}))
