"""SBOM (CycloneDX 1.5 from the lock) and SLSA provenance v1: signed like the bundle statement and
attached as further referrers (`dagseal sign --sbom`, `dagseal attest`)."""

from __future__ import annotations

import json

import pytest

from registry.errors import BadInput
from registry.layout import LayoutStore
from registry.ref import parse_reference
from signing.attach import find_bundles
from signing.provenance import SLSA_PREDICATE_TYPE
from signing.sbom import SBOM_PREDICATE_TYPE, parse_lock
from signing.sigbundle import verify_key_bundle
from signing.statement import PREDICATE_TYPE, parse_statement
from tests.fixtures.sigstore import make_image
from tests.test_sign_key import key_entry


def attached(ref, digest, ptype):
    r = parse_reference(ref)
    return find_bundles(LayoutStore(r.location), r.repository, digest, ptype)


def test_sign_with_sbom_attaches_three_signed_referrers(dagseal, signing_org, org_image):
    ref, digest = org_image
    res = dagseal("sign", ref, "--key", signing_org.key("team_a"), "--specs", signing_org.specs, "--sbom", "--json")
    assert res.code == 0, res.stderr
    assert len(res.json_lines[0]["attestations"]) == 2
    keys = [key_entry(signing_org.pub("team_a"))]
    statements = {}
    for ptype in (PREDICATE_TYPE, SBOM_PREDICATE_TYPE, SLSA_PREDICATE_TYPE):
        (desc, bundle_json), = attached(ref, digest, ptype)
        _, payload = verify_key_bundle(bundle_json, keys)
        statement = parse_statement(payload)
        statement.require_subject(digest)
        assert statement.predicate_type == ptype
        statements[ptype] = statement.predicate
    bom = statements[SBOM_PREDICATE_TYPE]
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5"
    comps = {c["name"]: c for c in bom["components"]}
    assert comps["pendulum"]["purl"] == "pkg:pypi/pendulum@3.0.0"
    assert [h["content"] for h in comps["pendulum"]["hashes"]] == ["1" * 64, "2" * 64]
    assert comps["tzdata"]["properties"] == [{"name": "python:marker", "value": 'sys_platform == "win32"'}]
    prov = statements[SLSA_PREDICATE_TYPE]
    params = prov["buildDefinition"]["externalParameters"]
    assert params["team"] == "team_a" and params["lock_digest"].startswith("sha256:")
    assert prov["buildDefinition"]["resolvedDependencies"][0] == {"uri": "https://github.com/acme/dags",
                                                                 "digest": {"gitCommit": "a" * 40}}
    # an SBOM statement is never taken for the bundle statement
    from registry.errors import Refused

    (_, sbom_bundle), = attached(ref, digest, SBOM_PREDICATE_TYPE)
    with pytest.raises(Refused) as exc:
        parse_statement(verify_key_bundle(sbom_bundle, keys)[1]).bundle_predicate()
    assert exc.value.check == "predicate-type"


def test_attest_alone_and_lock_mismatch(dagseal, signing_org, org_image):
    ref, digest = org_image
    res = dagseal("attest", ref, "--key", signing_org.key("team_a"), "--specs", signing_org.specs, "--json")
    assert res.code == 0, res.stderr
    assert attached(ref, digest, PREDICATE_TYPE) == [] and len(attached(ref, digest, SBOM_PREDICATE_TYPE)) == 1
    # an image whose lock digest is not the lock on disk: the SBOM would describe something else
    other, _ = make_image(signing_org.store, "team_a", "team_a_analytics", "2026.11.3")
    res = dagseal("attest", other, "--key", signing_org.key("team_a"), "--specs", signing_org.specs)
    assert res.code == 3 and "[lock]" in res.stderr
    res = dagseal("attest", ref, "--key", signing_org.key("stranger"), "--specs", signing_org.specs)
    assert res.code == 3 and "[signer]" in res.stderr


@pytest.mark.parametrize("text", ["requests>=2\n", "requests==2.0\n", "requests==2.0 --hash=md5:abc\n"])
def test_unpinned_or_unhashed_lock_lines_are_refused(text):
    with pytest.raises(BadInput, match="lock"):
        parse_lock(text, where="x.lock")


def test_lock_parsing_merges_platform_duplicates():
    text = ("# header\nnumpy==2.0.0 ; platform_machine == 'x86_64' \\\n    --hash=sha256:" + "a" * 64 + "\n"
            "numpy==2.0.0 ; platform_machine == 'aarch64' \\\n    --hash=sha256:" + "b" * 64 + "\n")
    (pin,) = parse_lock(text)
    assert pin.hashes == ["a" * 64, "b" * 64] and len(pin.markers) == 2


def test_sbom_validates_against_the_cyclonedx_1_5_schema(dagseal, signing_org, org_image):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    ref, digest = org_image
    assert dagseal("attest", ref, "--key", signing_org.key("team_a"), "--specs", signing_org.specs).code == 0
    (_, bundle_json), = attached(ref, digest, SBOM_PREDICATE_TYPE)
    bom = parse_statement(verify_key_bundle(bundle_json, [key_entry(signing_org.pub("team_a"))])[1]).predicate
    error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(bom))
    assert error is None, error
    bom["components"][0]["hashes"][0]["alg"] = "SHA-999"  # the validator is not a no-op
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(bom)) is not None
