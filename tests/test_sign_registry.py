"""Signatures in real stores: signed in or pushed to a docker-registry (no referrers API, so the
tag-schema fallback index), found again there, and carried by `dagseal copy` to another registry
and to S3 with digests unchanged; they still verify at every destination."""

from __future__ import annotations

import os

from registry.digest import sha256_digest
from registry.open import open_store
from registry.ref import parse_reference
from registry.store import fallback_tag
from signing.attach import find_bundles
from signing.sigbundle import verify_key_bundle, verify_keyless_bundle
from signing.statement import PREDICATE_TYPE, parse_statement
from signing.trust import KeylessSignerEntry
from tests.fixtures.sigstore import KEYLESS_ISSUER, TEAM_A_IDENTITY, make_image
from tests.test_sign_key import key_entry


def unique_image(signing_org):
    """A team_a image with unique content (the session registry is shared between tests)."""
    lock = signing_org.lock("team_a", "team_a_analytics")
    return make_image(signing_org.store, "team_a", "team_a_analytics", lock_digest=sha256_digest(lock.read_bytes()),
                      extra=os.urandom(16))


def bundles_at(ref: str, digest: str):
    r = parse_reference(ref)
    with open_store(r) as store:
        return find_bundles(store, r.repository, digest, PREDICATE_TYPE)


def test_sign_in_registry_uses_the_fallback_index(dagseal, signing_org, registry_server):
    src, digest = unique_image(signing_org)
    dst = registry_server.ref("team_a/team_a_analytics:2026.11.1")
    assert dagseal("push", src, dst).code == 0
    res = dagseal("sign", dst, "--key", signing_org.key("team_a"), "--specs", signing_org.specs, "--json")
    assert res.code == 0, res.stderr
    with open_store(parse_reference(dst)) as store:
        assert fallback_tag(digest) in store.tags("team_a/team_a_analytics")
    (desc, bundle_json), = bundles_at(dst, digest)
    assert desc.digest == res.json_lines[0]["signature"]
    _, payload = verify_key_bundle(bundle_json, [key_entry(signing_org.pub("team_a"))])
    parse_statement(payload).require_subject(digest)


def test_signatures_survive_copy_to_another_registry_and_s3(dagseal, signing_org, registry_server, registry_factory,
                                                           s3_bucket, sigstore_instance, trust_config):
    src, digest = unique_image(signing_org)
    assert dagseal("sign", src, "--key", signing_org.key("team_a"), "--specs", signing_org.specs).code == 0
    res = dagseal("sign", src, "--keyless", "--identity-token", sigstore_instance.mint_token(TEAM_A_IDENTITY),
                  "--trust-config", trust_config, "--specs", signing_org.specs)
    assert res.code == 0, res.stderr
    first = registry_server.ref("team_a/team_a_analytics:2026.11.1")
    other = registry_factory().ref("team_a/team_a_analytics:2026.11.1")
    s3 = f"s3://{s3_bucket}/store:team_a/team_a_analytics:2026.11.1"
    hops = [(src, first), (first, other), (other, s3)]
    for a, b in hops:
        out = dagseal("copy", a, b, "--json")
        assert out.code == 0, out.stderr
        assert out.json_lines[0]["digest"] == digest and out.json_lines[0]["referrers"] >= 2
    identities = [KeylessSignerEntry(issuer=KEYLESS_ISSUER, identity=TEAM_A_IDENTITY)]
    key = [key_entry(signing_org.pub("team_a"))]
    for ref in (first, other, s3):
        found = bundles_at(ref, digest)
        assert len(found) == 2, ref
        kinds = set()
        for _, bundle_json in found:
            if b'"certificate"' in bundle_json:
                _, payload = verify_keyless_bundle(bundle_json, identities, sigstore_instance.trusted_root())
                kinds.add("keyless")
            else:
                _, payload = verify_key_bundle(bundle_json, key)
                kinds.add("key")
            parse_statement(payload).require_subject(digest)
        assert kinds == {"key", "keyless"}
