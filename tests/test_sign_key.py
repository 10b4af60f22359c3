"""Key-file signing end to end: keygen, sign with pre-flight, referrer found again, verified by our code."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from registry.errors import Refused
from registry.layout import LayoutStore
from registry.ref import parse_reference
from registry.model import SIGSTORE_BUNDLE
from signing.attach import ANN_CONTENT, ANN_PREDICATE_TYPE, attach, find_bundles
from signing.sigbundle import verify_key_bundle
from signing.statement import PREDICATE_TYPE, parse_statement
from signing.trust import KeySignerEntry
from tests.fixtures.sigstore import make_image


def key_entry(path) -> KeySignerEntry:
    from signing.sigbundle import key_id_from_pem

    pem = path.read_text()
    return KeySignerEntry(key_id=key_id_from_pem(pem.encode()), public_key_pem=pem)


def bundles_of(ref: str, digest: str, predicate_type: str = PREDICATE_TYPE):
    r = parse_reference(ref)
    return find_bundles(LayoutStore(r.location), r.repository, digest, predicate_type)


def test_keygen_writes_private_key_0600_and_refuses_to_overwrite(dagseal, tmp_path):
    res = dagseal("keygen", "--out", tmp_path / "k", "--json")
    assert res.code == 0, res.stderr
    info = res.json_lines[0]
    assert stat.S_IMODE(os.stat(tmp_path / "k.key").st_mode) == 0o600
    assert (tmp_path / "k.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert key_entry(tmp_path / "k.pub").key_id == info["key_id"]
    again = dagseal("keygen", "--out", tmp_path / "k")
    assert again.code == 2 and "already exists" in again.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_encrypted_key_needs_the_password(dagseal, tmp_path, monkeypatch, signing_org, org_image):
    monkeypatch.setenv("DAGSEAL_KEY_PASSWORD", "s3cret")
    assert dagseal("keygen", "--out", tmp_path / "enc").code == 0
    assert "ENCRYPTED" in (tmp_path / "enc.key").read_text()
    monkeypatch.delenv("DAGSEAL_KEY_PASSWORD")
    ref, _ = org_image
    res = dagseal("sign", ref, "--key", tmp_path / "enc.key", "--specs", signing_org.specs)
    assert res.code == 2 and "DAGSEAL_KEY_PASSWORD" in res.stderr


def test_sign_with_key_round_trips(dagseal, signing_org, org_image):
    ref, digest = org_image
    res = dagseal("sign", ref, "--key", signing_org.key("team_a"), "--specs", signing_org.specs, "--expires", "90d", "--json")
    assert res.code == 0, res.stderr
    out = res.json_lines[0]
    assert out["digest"] == digest and out["team"] == "team_a"
    found = bundles_of(ref, digest)
    assert [d.digest for d, _ in found] == [out["signature"]]
    desc, bundle_json = found[0]
    assert desc.artifact_type == SIGSTORE_BUNDLE
    assert desc.annotations[ANN_CONTENT] == "dsse-envelope" and desc.annotations[ANN_PREDICATE_TYPE] == PREDICATE_TYPE
    key_id, payload = verify_key_bundle(bundle_json, [key_entry(signing_org.pub("team_b")), key_entry(signing_org.pub("team_a"))])
    assert key_id == key_entry(signing_org.pub("team_a")).key_id
    statement = parse_statement(payload)
    statement.require_subject(digest)
    pred = statement.bundle_predicate()
    assert (pred.team, pred.bundle, pred.version) == ("team_a", "team_a_analytics", "2026.11.1")
    assert pred.expires is not None and pred.expires > pred.built_at
    doc = json.loads(bundle_json)
    assert doc["mediaType"] == SIGSTORE_BUNDLE
    assert doc["verificationMaterial"]["publicKey"]["hint"] == key_id


def test_wrong_key_is_refused(dagseal, signing_org, org_image):
    ref, digest = org_image
    assert dagseal("sign", ref, "--key", signing_org.key("team_a"), "--specs", signing_org.specs).code == 0
    (_, bundle_json), = bundles_of(ref, digest)
    with pytest.raises(Refused) as exc:
        verify_key_bundle(bundle_json, [key_entry(signing_org.pub("team_b"))])
    assert exc.value.check == "signature" and "not one of the team's keys" in exc.value.message
    # the same key id but another key (a forged hint) does not verify either
    doc = json.loads(bundle_json)
    doc["verificationMaterial"]["publicKey"]["hint"] = key_entry(signing_org.pub("team_b")).key_id
    with pytest.raises(Refused) as exc:
        verify_key_bundle(json.dumps(doc).encode(), [key_entry(signing_org.pub("team_b"))])
    assert exc.value.check == "signature" and "does not verify" in exc.value.message


def test_statement_edited_after_signing_is_refused(dagseal, signing_org, org_image):
    ref, digest = org_image
    assert dagseal("sign", ref, "--key", signing_org.key("team_a"), "--specs", signing_org.specs).code == 0
    (_, bundle_json), = bundles_of(ref, digest)
    doc = json.loads(bundle_json)
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    statement["predicate"]["team"] = "team_b"
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    with pytest.raises(Refused) as exc:
        verify_key_bundle(json.dumps(doc).encode(), [key_entry(signing_org.pub("team_a"))])
    assert exc.value.check == "signature"


def test_signature_moved_onto_another_digest_is_refused(dagseal, signing_org, org_image):
    ref, digest = org_image
    assert dagseal("sign", ref, "--key", signing_org.key("team_a"), "--specs", signing_org.specs).code == 0
    (_, bundle_json), = bundles_of(ref, digest)
    other_ref, other = make_image(signing_org.store, "team_a", "team_a_analytics", "2026.11.2", extra=b"evil")
    r = parse_reference(other_ref)
    store = LayoutStore(r.location)
    attach(store, r.repository, store.get(r.repository, r.tag).descriptor(), bundle_json, PREDICATE_TYPE)
    (_, moved), = bundles_of(other_ref, other)
    _, payload = verify_key_bundle(moved, [key_entry(signing_org.pub("team_a"))])  # the signature itself is fine
    with pytest.raises(Refused) as exc:
        parse_statement(payload).require_subject(other)
    assert exc.value.check == "subject" and other in exc.value.message


@pytest.mark.parametrize("signer,check", [("stranger", "signer"), ("team_b", "signer")])
def test_preflight_refuses_a_signer_not_listed_for_the_team(dagseal, signing_org, org_image, signer, check):
    ref, digest = org_image
    res = dagseal("sign", ref, "--key", signing_org.key(signer), "--specs", signing_org.specs, "--json")
    assert res.code == 3
    err = res.json_lines[0]
    assert err["check"] == check and "team_a" in err["message"] and "org.toml" in err["message"]
    assert "hint" in err
    assert bundles_of(ref, digest) == []  # nothing was published


def test_preflight_refuses_an_image_whose_team_disagrees_with_the_spec(dagseal, signing_org):
    ref, digest = make_image(signing_org.store, "team_b", "team_a_analytics")
    res = dagseal("sign", ref, "--key", signing_org.key("team_b"), "--specs", signing_org.specs)
    assert res.code == 3 and "[team]" in res.stderr and "belongs to team 'team_a'" in res.stderr
    ref2, _ = make_image(signing_org.store, "team_a", "unknown_bundle")
    res2 = dagseal("sign", ref2, "--key", signing_org.key("team_a"), "--specs", signing_org.specs)
    assert res2.code == 3 and "[bundle]" in res2.stderr
    ref3, _ = make_image(signing_org.store, "team_x", "team_a_analytics")
    res3 = dagseal("sign", ref3, "--key", signing_org.key("team_a"), "--specs", signing_org.specs)
    assert res3.code == 3 and "team_x" in res3.stderr


def test_preflight_against_an_exported_policy(dagseal, signing_org, org_image, tmp_path):
    policy = tmp_path / "policy.json"
    assert dagseal("policy", "export", "--specs", signing_org.specs, "--out", policy).code == 0
    ref, digest = org_image
    assert dagseal("sign", ref, "--key", signing_org.key("stranger"), "--policy", policy).code == 3
    res = dagseal("sign", ref, "--key", signing_org.key("team_a"), "--policy", policy, "--json")
    assert res.code == 0, res.stderr
    assert len(bundles_of(ref, digest)) == 1


def test_sign_bad_inputs_exit_2(dagseal, signing_org, org_image, tmp_path):
    ref, _ = org_image
    res = dagseal("sign", ref, "--key", tmp_path / "missing.key", "--specs", signing_org.specs)
    assert res.code == 2 and "missing.key" in res.stderr
    res = dagseal("sign", ref, "--key", signing_org.key("team_a"), "--specs", signing_org.specs, "--expires", "soon")
    assert res.code == 2 and "--expires" in res.stderr
    res = dagseal("sign", ref, "--key", signing_org.key("team_a"), "--specs", signing_org.specs, "--expires", "2001-01-01T00:00:00Z")
    assert res.code == 2 and "past" in res.stderr
    (tmp_path / "rsa.key").write_text("not a key")
    res = dagseal("sign", ref, "--key", tmp_path / "rsa.key", "--specs", signing_org.specs)
    assert res.code == 2 and "PEM" in res.stderr
    res = dagseal("sign", f"oci:{signing_org.store}:team_a/team_a_analytics", "--key", signing_org.key("team_a"))
    assert res.code == 2 and "no tag or digest" in res.stderr


def test_sign_refuses_an_image_without_dagseal_annotations(dagseal, signing_org):
    from registry.model import Manifest, OCI_MANIFEST, encode
    from signing.attach import EMPTY_CONFIG

    store = LayoutStore(signing_org.store)
    store.put_blob_bytes(EMPTY_CONFIG, b"{}")
    store.put_manifest("team_a/plain", encode(Manifest(schemaVersion=2, mediaType=OCI_MANIFEST, config=EMPTY_CONFIG, layers=[])), tag="1")
    res = dagseal("sign", f"oci:{signing_org.store}:team_a/plain:1", "--key", signing_org.key("team_a"), "--specs", signing_org.specs)
    assert res.code == 2 and "io.dagseal.team" in res.stderr
