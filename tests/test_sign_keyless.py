"""Keyless signing end to end, offline: sigstore-python's own signing client talks HTTP to a private
Fulcio/Rekor on loopback (tests/fixtures/sigstore_instance.py); sigstore-python's Verifier checks
the bundles against that instance's trusted root."""

from __future__ import annotations

import base64
import json

import pytest

from registry.errors import Refused
from registry.layout import LayoutStore
from registry.ref import parse_reference
from signing.attach import find_bundles
from signing.sigbundle import verify_key_bundle, verify_keyless_bundle
from signing.statement import PREDICATE_TYPE, parse_statement
from signing.trust import KeylessSignerEntry, load_policy
from tests.fixtures.sigstore import KEYLESS_ISSUER, TEAM_A_IDENTITY, TEAM_B_IDENTITY

TEAM_A = [KeylessSignerEntry(issuer=KEYLESS_ISSUER, identity=TEAM_A_IDENTITY)]
TEAM_B = [KeylessSignerEntry(issuer=KEYLESS_ISSUER, identity=TEAM_B_IDENTITY)]


def signed_bundle(ref: str, digest: str) -> bytes:
    r = parse_reference(ref)
    (_, bundle_json), = find_bundles(LayoutStore(r.location), r.repository, digest, PREDICATE_TYPE)
    return bundle_json


def sign_keyless(dagseal, ref, token, trust_config, specs, *extra):
    return dagseal("sign", ref, "--keyless", "--identity-token", token, "--trust-config", trust_config,
                   "--specs", specs, "--json", *extra)


@pytest.fixture
def keyless_signed(dagseal, signing_org, org_image, sigstore_instance, trust_config, tmp_path):
    """The org image signed keyless as team_a's publish workflow (token passed as @FILE)."""
    ref, digest = org_image
    token_file = tmp_path / "token"
    token_file.write_text(sigstore_instance.mint_token(TEAM_A_IDENTITY))
    res = sign_keyless(dagseal, ref, f"@{token_file}", trust_config, signing_org.specs)
    assert res.code == 0, res.stderr
    assert res.json_lines[0]["signer"] == f"{TEAM_A_IDENTITY} (issuer {KEYLESS_ISSUER})"
    return ref, digest, signed_bundle(ref, digest)


def test_keyless_bundle_verifies_for_the_right_identity(keyless_signed, sigstore_instance):
    _, digest, bundle_json = keyless_signed
    doc = json.loads(bundle_json)
    assert "certificate" in doc["verificationMaterial"] and len(doc["verificationMaterial"]["tlogEntries"]) == 1
    identity, payload = verify_keyless_bundle(bundle_json, TEAM_B + TEAM_A, sigstore_instance.trusted_root())
    assert identity == TEAM_A_IDENTITY
    statement = parse_statement(payload)
    statement.require_subject(digest)
    assert statement.bundle_predicate().team == "team_a"


def test_keyless_bundle_refused_for_another_teams_identity(keyless_signed, sigstore_instance):
    _, _, bundle_json = keyless_signed
    with pytest.raises(Refused) as exc:
        verify_keyless_bundle(bundle_json, TEAM_B, sigstore_instance.trusted_root())
    assert exc.value.check == "signature" and TEAM_B_IDENTITY in exc.value.hint


def test_keyless_bundle_refused_for_another_issuer(keyless_signed, sigstore_instance):
    _, _, bundle_json = keyless_signed
    with pytest.raises(Refused) as exc:
        verify_keyless_bundle(bundle_json, [KeylessSignerEntry(issuer="https://token.actions.githubusercontent.com",
                                                               identity=TEAM_A_IDENTITY)], sigstore_instance.trusted_root())
    assert exc.value.check == "signature"


def test_keyless_tampered_payload_is_refused(keyless_signed, sigstore_instance):
    _, _, bundle_json = keyless_signed
    doc = json.loads(bundle_json)
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    statement["predicate"]["team"] = "team_b"
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    with pytest.raises(Refused) as exc:
        verify_keyless_bundle(json.dumps(doc).encode(), TEAM_A, sigstore_instance.trusted_root())
    assert exc.value.check == "signature"


def test_bundle_from_another_trust_root_is_refused(dagseal, signing_org, org_image, sigstore_instance,
                                                   other_sigstore_instance, tmp_path):
    ref, digest = org_image
    other_config = other_sigstore_instance.write_trust_config(tmp_path / "other.json")
    res = sign_keyless(dagseal, ref, other_sigstore_instance.mint_token(TEAM_A_IDENTITY), other_config, signing_org.specs)
    assert res.code == 0, res.stderr  # same identity and issuer name, but another instance
    bundle_json = signed_bundle(ref, digest)
    assert verify_keyless_bundle(bundle_json, TEAM_A, other_sigstore_instance.trusted_root())[0] == TEAM_A_IDENTITY
    with pytest.raises(Refused) as exc:
        verify_keyless_bundle(bundle_json, TEAM_A, sigstore_instance.trusted_root())
    assert exc.value.check == "signature"


def test_preflight_refuses_another_teams_keyless_identity(dagseal, signing_org, org_image, sigstore_instance, trust_config):
    ref, digest = org_image
    res = sign_keyless(dagseal, ref, sigstore_instance.mint_token(TEAM_B_IDENTITY), trust_config, signing_org.specs)
    assert res.code == 3
    err = res.json_lines[0]
    assert err["check"] == "signer" and TEAM_B_IDENTITY in err["message"] and "team_a" in err["message"]
    r = parse_reference(ref)
    assert find_bundles(LayoutStore(r.location), r.repository, digest) == []
    # the same identity from another issuer is not team_a's signer either
    res = sign_keyless(dagseal, ref, sigstore_instance.mint_token(TEAM_A_IDENTITY, issuer="https://evil.test"),
                       trust_config, signing_org.specs)
    assert res.code == 3 and res.json_lines[0]["check"] == "signer"


def test_keyless_bad_inputs(dagseal, signing_org, org_image, sigstore_instance, trust_config, tmp_path):
    ref, _ = org_image
    res = sign_keyless(dagseal, ref, "not-a-jwt", trust_config, signing_org.specs)
    assert res.code == 2 and "identity token" in res.json_lines[0]["message"]
    expired = sigstore_instance.mint_token(TEAM_A_IDENTITY, lifetime=-60)
    assert sign_keyless(dagseal, ref, expired, trust_config, signing_org.specs).code == 2
    (tmp_path / "bad.json").write_text("{}")
    res = sign_keyless(dagseal, ref, sigstore_instance.mint_token(TEAM_A_IDENTITY), tmp_path / "bad.json", signing_org.specs)
    assert res.code == 2 and "bad.json" in res.json_lines[0]["message"]


def test_key_and_keyless_bundles_are_not_interchangeable(keyless_signed, sigstore_instance, dagseal, signing_org, tmp_path):
    ref, digest, keyless_json = keyless_signed
    from tests.test_sign_key import key_entry

    with pytest.raises(Refused, match="carries a certificate"):
        verify_key_bundle(keyless_json, [key_entry(signing_org.pub("team_a"))])
    assert dagseal("sign", ref, "--key", signing_org.key("team_a"), "--specs", signing_org.specs).code == 0
    r = parse_reference(ref)
    key_json = next(b for _, b in find_bundles(LayoutStore(r.location), r.repository, digest) if b != keyless_json)
    with pytest.raises(Refused, match="key-based"):
        verify_keyless_bundle(key_json, TEAM_A, sigstore_instance.trusted_root())


def test_policy_embeds_the_private_trusted_root(dagseal, signing_org, keyless_signed, trust_config, tmp_path):
    _, digest, bundle_json = keyless_signed
    out = tmp_path / "policy.json"
    res = dagseal("policy", "export", "--specs", signing_org.specs, "--trust-config", trust_config, "--out", out)
    assert res.code == 0, res.stderr
    policy = load_policy(out)
    assert policy.trusted_root is not None
    identity, payload = verify_keyless_bundle(bundle_json, policy.identities_for("team_a"), policy.trusted_root)
    assert identity == TEAM_A_IDENTITY and parse_statement(payload).covers(digest)
    with pytest.raises(Refused):
        verify_keyless_bundle(bundle_json, policy.identities_for("team_b"), policy.trusted_root)


def test_github_actions_identity_signs_a_built_image(dagseal, built_org, sigstore_instance, trust_config, tmp_path):
    """A real `dagseal build` output, signed as GitHub Actions would: the token's sub is the repo,
    Fulcio certifies the workflow URL, which is what org.toml lists."""
    import shutil

    from tests.fixtures.sigstore_instance import GITHUB_ISSUER

    store = tmp_path / "store"
    shutil.copytree(built_org.store, store)
    result = built_org.result("team_a_analytics")
    ref = f"oci:{store}:team_a/team_a_analytics:2026.11.1"
    token = sigstore_instance.mint_token("repo:acme/a:ref:refs/heads/main", issuer=GITHUB_ISSUER,
                                         job_workflow_ref="acme/a/.github/workflows/publish.yml@refs/heads/main")
    res = sign_keyless(dagseal, ref, token, trust_config, built_org.specs, "--sbom")
    assert res.code == 0, res.stderr
    assert res.json_lines[0]["digest"] == result["digest"]
    bundle_json = signed_bundle(ref, result["digest"])
    identity = "https://github.com/acme/a/.github/workflows/publish.yml@refs/heads/main"
    got, payload = verify_keyless_bundle(bundle_json, [KeylessSignerEntry(issuer=GITHUB_ISSUER, identity=identity)],
                                         sigstore_instance.trusted_root())
    assert got == identity
    predicate = parse_statement(payload).bundle_predicate()
    assert (predicate.team, predicate.bundle) == ("team_a", "team_a_analytics")
    # team_b's workflow may not sign team_a's bundle
    token_b = sigstore_instance.mint_token("repo:acme/b:ref:refs/heads/main", issuer=GITHUB_ISSUER,
                                           job_workflow_ref="acme/b/.github/workflows/publish.yml@refs/heads/main")
    res = sign_keyless(dagseal, ref, token_b, trust_config, built_org.specs)
    assert res.code == 3 and res.json_lines[0]["check"] == "signer"


def test_certificate_for_another_identity_is_never_attached(dagseal, signing_org, org_image, sigstore_instance, trust_config):
    ref, digest = org_image
    sigstore_instance.certify_as = TEAM_B_IDENTITY
    try:
        res = sign_keyless(dagseal, ref, sigstore_instance.mint_token(TEAM_A_IDENTITY), trust_config, signing_org.specs)
    finally:
        sigstore_instance.certify_as = None
    assert res.code == 3 and res.json_lines[0]["check"] == "signer" and TEAM_B_IDENTITY in res.json_lines[0]["message"]
    r = parse_reference(ref)
    assert find_bundles(LayoutStore(r.location), r.repository, digest) == []


def test_without_a_private_root_the_bundled_public_good_root_is_used_offline(keyless_signed):
    """A policy with trusted_root null verifies against sigstore's bundled public-good root (no
    network): a bundle of the private instance does not chain to it."""
    _, _, bundle_json = keyless_signed
    with pytest.raises(Refused) as exc:
        verify_keyless_bundle(bundle_json, TEAM_A, None)
    assert exc.value.check == "signature" and "chain" in exc.value.message
