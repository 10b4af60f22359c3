"""Hostile bytes at the signing contract: statements, envelopes, bundles and referrers from a
store are refused with a named check, never crash or get half-trusted."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import pytest

from registry.digest import sha256_digest
from registry.errors import Refused
from registry.layout import LayoutStore
from registry.model import OCI_MANIFEST, SIGSTORE_BUNDLE, Descriptor, Manifest, encode
from signing.attach import ANN_PREDICATE_TYPE, EMPTY_CONFIG, MAX_BUNDLE_BYTES, attach, find_bundles
from signing.dsse import PAYLOAD_TYPE, pae
from signing.sigbundle import parse_bundle, verify_key_bundle
from signing.statement import PREDICATE_TYPE, make_statement, parse_statement
from tests.fixtures.sigstore import make_image

DIGEST = "sha256:" + "d" * 64
PREDICATE = {"team": "team_a", "bundle": "b", "version": "1", "spec_digest": DIGEST, "lock_digest": DIGEST,
             "source": {"uri": "", "revision": ""}, "built_at": "2026-11-25T12:00:00Z", "builder": {"id": "x"}}


def test_pae_matches_the_dsse_spec_example():
    assert pae("http://example.com/HelloWorld", b"hello world") == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_statement_round_trip_is_canonical():
    payload = make_statement("team_a/b", DIGEST, PREDICATE)
    assert payload == json.dumps(json.loads(payload), sort_keys=True, separators=(",", ":")).encode()
    st = parse_statement(payload)
    assert st.covers(DIGEST) and st.bundle_predicate().team == "team_a"


@pytest.mark.parametrize("payload,check", [
    (b"not json", "statement"),
    (b"[]", "statement"),
    (b'{"_type":"x","_type":"y"}', "statement"),
    (json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "subject": [{"name": "x", "digest": {"sha256": "d" * 64}}],
                 "predicateType": PREDICATE_TYPE, "predicate": {}}).encode(), "statement"),
    (json.dumps({"_type": "https://in-toto.io/Statement/v1", "subject": [], "predicateType": PREDICATE_TYPE,
                 "predicate": {}}).encode(), "statement"),
    (b" " * (1024 * 1024 + 1), "statement"),
])
def test_malformed_statements_are_refused(payload, check):
    with pytest.raises(Refused) as exc:
        parse_statement(payload)
    assert exc.value.check == check


@pytest.mark.parametrize("mutate,check", [
    (lambda p: p.update(team=""), "statement"),
    (lambda p: p.update(spec_digest="md5:abc"), "statement"),
    (lambda p: p.update(built_at="2026-11-25T12:00:00"), "statement"),  # no zone
    (lambda p: p.update(extra="x"), "statement"),
    (lambda p: p.pop("builder"), "statement"),
])
def test_malformed_predicates_are_refused(mutate, check):
    predicate = json.loads(json.dumps(PREDICATE))
    mutate(predicate)
    with pytest.raises(Refused) as exc:
        parse_statement(make_statement("team_a/b", DIGEST, predicate)).bundle_predicate()
    assert exc.value.check == check and "predicate." in exc.value.message


def _bundle(**over) -> bytes:
    doc = {"mediaType": SIGSTORE_BUNDLE, "verificationMaterial": {"publicKey": {"hint": "ab"}, "tlogEntries": []},
           "dsseEnvelope": {"payload": base64.b64encode(b"{}").decode(), "payloadType": PAYLOAD_TYPE,
                            "signatures": [{"sig": base64.b64encode(b"x").decode(), "keyid": ""}]}}
    doc.update(over)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("data,needle", [
    (b"{", "not valid JSON"),
    (_bundle(mediaType="application/json"), "mediaType"),
    (_bundle(verificationMaterial=None), "verificationMaterial"),
    (_bundle(dsseEnvelope=None), "DSSE envelope"),
    (_bundle(messageSignature={"x": 1}, dsseEnvelope=None), "DSSE envelope"),
    (_bundle(dsseEnvelope={"payload": "!!", "payloadType": PAYLOAD_TYPE, "signatures": []}), "signatures"),
    (_bundle(verificationMaterial={"tlogEntries": []}), "neither a certificate nor a public-key hint"),
])
def test_malformed_bundles_are_refused(data, needle):
    with pytest.raises(Refused) as exc:
        parse_bundle(data)
    assert exc.value.check == "signature" and needle in exc.value.message


def test_bad_base64_and_wrong_payload_type_are_refused(signing_org):
    from tests.test_sign_key import key_entry

    keys = [key_entry(signing_org.pub("team_a"))]
    bad_b64 = _bundle(dsseEnvelope={"payload": "%%%", "payloadType": PAYLOAD_TYPE, "signatures": [{"sig": "AA=="}]})
    doc = json.loads(bad_b64)
    doc["verificationMaterial"]["publicKey"]["hint"] = keys[0].key_id
    with pytest.raises(Refused, match="base64"):
        verify_key_bundle(json.dumps(doc).encode(), keys)
    with pytest.raises(Refused, match="payload type"):
        verify_key_bundle(_bundle(dsseEnvelope={"payload": "e30=", "payloadType": "text/plain", "signatures": [{"sig": "AA=="}]}), keys)
    with pytest.raises(Refused, match="no public keys"):
        verify_key_bundle(_bundle(), [])


def _referrer(store: LayoutStore, repo: str, subject: Descriptor, layer: Descriptor, data: bytes | None):
    if data is not None:
        store.put_blob_bytes(layer, data)
    store.put_blob_bytes(EMPTY_CONFIG, b"{}")
    m = Manifest(schemaVersion=2, mediaType=OCI_MANIFEST, artifactType=SIGSTORE_BUNDLE, config=EMPTY_CONFIG,
                 layers=[layer], subject=subject, annotations={ANN_PREDICATE_TYPE: PREDICATE_TYPE})
    return store.add_referrer(repo, encode(m))


def test_find_bundles_skips_foreign_referrers_and_caps_sizes(tmp_path):
    ref, digest = make_image(tmp_path / "s", "team_a", "b")
    store = LayoutStore(tmp_path / "s")
    repo = "team_a/b"
    subject = store.get(repo, digest).descriptor()
    attach(store, repo, subject, b'{"real":1}', PREDICATE_TYPE)
    attach(store, repo, subject, b'{"sbom":1}', "https://cyclonedx.org/bom")
    # a referrer of another artifact type is ignored
    other = b'{"other":1}'
    store.put_blob_bytes(Descriptor(mediaType="application/json", digest=sha256_digest(other), size=len(other)), other)
    store.put_blob_bytes(EMPTY_CONFIG, b"{}")
    m = Manifest(schemaVersion=2, mediaType=OCI_MANIFEST, artifactType="application/vnd.example", config=EMPTY_CONFIG,
                 layers=[Descriptor(mediaType="application/json", digest=sha256_digest(other), size=len(other))], subject=subject)
    store.add_referrer(repo, encode(m))
    found = find_bundles(store, repo, digest, PREDICATE_TYPE)
    assert [b for _, b in found] == [b'{"real":1}']
    assert len(find_bundles(store, repo, digest)) == 2
    # a bundle layer claiming more than 1 MiB is refused before it is read
    big = Descriptor(mediaType=SIGSTORE_BUNDLE, digest=sha256_digest(b"x"), size=MAX_BUNDLE_BYTES + 1)
    store.put_blob("", big.model_copy(update={"size": 1}), io.BytesIO(b"x"))
    _referrer(store, repo, subject, big, None)
    with pytest.raises(Refused) as exc:
        find_bundles(store, repo, digest, PREDICATE_TYPE)
    assert exc.value.check == "signature" and "1048576" in exc.value.message


def test_find_bundles_refuses_a_tampered_bundle_blob(tmp_path):
    _, digest = make_image(tmp_path / "s", "team_a", "b")
    store = LayoutStore(tmp_path / "s")
    subject = store.get("team_a/b", digest).descriptor()
    desc = attach(store, "team_a/b", subject, b'{"real":1}', PREDICATE_TYPE)
    layer = store.get_manifest("team_a/b", desc.digest).parsed.layers[0]
    path = store.blob_path(layer.digest)
    path.chmod(0o644)
    path.write_bytes(b'{"fake":1}')
    with pytest.raises(Refused) as exc:
        find_bundles(store, "team_a/b", digest)
    assert exc.value.check == "blob-digest"


def test_verify_path_modules_do_not_import_heavy_dependencies():
    code = ("import sys, signing.statement, signing.dsse, signing.sigbundle, signing.trust, signing.attach;"
            "heavy = [m for m in ('sigstore', 'boto3', 'oras', 'botocore') if m in sys.modules];"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
