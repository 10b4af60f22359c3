"""The attack corpus of the runtime gate: each case is refused with its own check and reason,
exit 3, and nothing is materialised (no cache entry, no --dest, no accepted-version record)."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from registry.digest import sha256_digest
from registry.layout import LayoutStore
from registry.model import ANN_REF_NAME, ANN_TEAM, OCI_MANIFEST
from tests.fixtures.airflow import (
    assert_refused,
    BUNDLE_A,
    BUNDLE_B,
    TEAM_A,
    TEAM_B,
    expires_in,
    gzip_bytes,
    make_image,
    make_tar,
    oci_ref,
    sign_image,
    tar_entry,
)

PREFIX = f"opt/airflow/bundles/{BUNDLE_A}/"


def assert_nothing_materialised(gate, tmp_path: Path) -> None:
    cache = gate.state / "cache"
    entries = [p.name for p in cache.iterdir()] if cache.is_dir() else []
    assert [e for e in entries if not e.startswith(".")] == [], entries
    assert [e for e in entries if e.startswith(".tmp-")] == [], entries
    assert not os.path.lexists(tmp_path / "dest")
    accepted = gate.state / "accepted"
    assert not accepted.is_dir() or not list(accepted.rglob("*.json"))


def test_signed_bundle_is_accepted_and_materialised(gate, gate_layout, gate_keys, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    result, d = gate("fetch", oci_ref(image))
    assert result.code == 0, result.stdout + result.stderr
    assert (d["decision"], d["team"], d["bundle"], d["version"], d["digest"]) == \
        ("accepted", TEAM_A, BUNDLE_A, "2026.11.1", image.digest)
    assert d["signer"] == f"key:{gate_keys.key_id('team_a')}"
    dest = tmp_path / "dest"
    assert (dest / "dags" / f"{BUNDLE_A}_dag.py").is_file()
    assert (dest / "site-packages" / "helperlib" / "__init__.py").read_bytes() == b"VALUE = 42\n"
    assert not os.stat(dest / "dags").st_mode & 0o222  # read-only after commit
    assert not os.stat(dest / "dags" / f"{BUNDLE_A}_dag.py").st_mode & 0o222


def test_no_signature(gate, gate_layout, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "signature", "no signature", image.digest, "dagseal sign")
    assert_nothing_materialised(gate, tmp_path)


def test_signature_by_unlisted_key(gate, gate_layout, gate_keys, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys, "outsider")
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "signer", "not list for team team_a", "no team lists it")
    assert_nothing_materialised(gate, tmp_path)


def test_team_b_signature_presented_to_team_a_runtime(gate, gate_layout, gate_keys, tmp_path):
    image = make_image(gate_layout, TEAM_B, BUNDLE_B, "2026.11.1")
    sign_image(image, gate_keys, "team_b")
    result, d = gate("fetch", oci_ref(image), team=TEAM_A)
    assert_refused(result, d, "signer", "listed for team_b")
    assert_nothing_materialised(gate, tmp_path)


def test_team_a_statement_on_image_annotated_team_b(gate, gate_layout, gate_keys, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1", annotations={ANN_TEAM: TEAM_B})
    sign_image(image, gate_keys, team=TEAM_A)
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "team", ANN_TEAM, "'team_b'")
    assert_nothing_materialised(gate, tmp_path)


def test_statement_signed_for_other_team_by_team_a_key(gate, gate_layout, gate_keys, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys, team=TEAM_B)
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "team", "signed for team team_b")
    assert_nothing_materialised(gate, tmp_path)


def test_bundle_of_other_name_or_not_owned(gate, gate_layout, gate_keys, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys, bundle="team_a_other")
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "bundle", "team_a_other", BUNDLE_A)
    stray = make_image(gate_layout, TEAM_A, "stray", "1.0")
    sign_image(stray, gate_keys)
    result, d = gate("fetch", oci_ref(stray))
    assert_refused(result, d, "bundle", "gives bundle stray to no team")
    assert_nothing_materialised(gate, tmp_path)


def test_signature_copied_from_another_digest(gate, gate_layout, gate_keys, tmp_path):
    signed = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    other = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.2", dags={"evil.py": b"import os\n"})
    sign_image(signed, gate_keys, attach_to=other)  # statement names `signed`, referrer of `other`
    result, d = gate("fetch", oci_ref(other))
    assert_refused(result, d, "subject", signed.digest, "copied")
    assert_nothing_materialised(gate, tmp_path)


def test_other_predicate_type_is_not_a_bundle_signature(gate, gate_layout, gate_keys, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys, predicate_type="https://cyclonedx.org/bom")
    result, d = gate("fetch", oci_ref(image))
    assert result.code == 3 and d["check"] in ("signature", "predicate-type")
    assert_nothing_materialised(gate, tmp_path)


def test_tag_moved_to_unsigned_image(gate, gate_layout, gate_keys, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    moved = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1", dags={"evil.py": b"import os\n"})
    assert moved.digest != image.digest
    result, d = gate("fetch", oci_ref(moved))
    assert_refused(result, d, "signature", moved.digest)
    assert d["digest"] == moved.digest
    assert_nothing_materialised(gate, tmp_path)


def _overwrite_blob(store: LayoutStore, digest: str, data: bytes) -> None:
    path = store.blob_path(digest)
    os.chmod(path, 0o644)
    path.write_bytes(data)


def test_tampered_layer(gate, gate_layout, gate_keys, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    layer = image.content.parsed.layers[1]
    evil = gzip_bytes(make_tar([(tar_entry(PREFIX + "dags/evil.py", b"import os\n"), b"import os\n")]))
    _overwrite_blob(gate_layout, layer.digest, evil)
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "blob-digest", layer.digest)
    assert_nothing_materialised(gate, tmp_path)


def test_tampered_config(gate, gate_layout, gate_keys, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    config = image.content.parsed.config
    _overwrite_blob(gate_layout, config.digest, b'{"config":{"Env":["LD_PRELOAD=/x"]}}'[: config.size].ljust(config.size))
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "blob-digest", config.digest)
    assert_nothing_materialised(gate, tmp_path)


def test_tampered_manifest(gate, gate_layout, gate_keys, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    raw = image.content.raw.replace(b'"2026.11.1"', b'"2026.11.9"')
    _overwrite_blob(gate_layout, image.digest, raw)
    result, d = gate("fetch", oci_ref(image))
    assert result.code == 3 and d["check"] in ("blob-digest", "manifest-format"), d
    assert_nothing_materialised(gate, tmp_path)


def test_rollback_refused_unless_pinned_and_allowed(gate, gate_layout, gate_keys, tmp_path):
    old = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    new = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.2", dags={"b.py": b"# two\n"})
    sign_image(old, gate_keys)
    sign_image(new, gate_keys)
    assert gate("fetch", oci_ref(new))[0].code == 0
    os.unlink(tmp_path / "dest")
    result, d = gate("fetch", oci_ref(old))
    assert_refused(result, d, "rollback", "2026.11.1 is older than 2026.11.2", "--allow-downgrade")
    result, d = gate("fetch", oci_ref(old), "--allow-downgrade")
    assert_refused(result, d, "rollback", "pinned by digest")
    result, d = gate("fetch", oci_ref(old, pinned=True))
    assert_refused(result, d, "rollback", "--allow-downgrade")
    assert not (gate.state / "cache" / old.digest.split(":")[1]).exists()
    result, d = gate("fetch", oci_ref(old, pinned=True), "--allow-downgrade")
    assert result.code == 0 and d["version"] == "2026.11.1", d
    # the downgrade is remembered as accepted but does not lower the newest version
    record = json.loads((gate.state / "accepted" / TEAM_A / f"{BUNDLE_A}.json").read_text())
    assert record["newest_version"] == "2026.11.2"


def test_version_reuse_with_other_digest(gate, gate_layout, gate_keys, tmp_path):
    first = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(first, gate_keys)
    assert gate("fetch", oci_ref(first))[0].code == 0
    os.unlink(tmp_path / "dest")
    again = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1", dags={"other.py": b"# other\n"})
    sign_image(again, gate_keys)
    result, d = gate("fetch", oci_ref(again))
    assert_refused(result, d, "version-reuse", first.digest, "new version number")


def test_expired_statement(gate, gate_layout, gate_keys, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys, expires="2026-01-01T00:00:00Z")
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "expiry", "expired at 2026-01-01")
    assert_nothing_materialised(gate, tmp_path)
    fresh = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.2")
    sign_image(fresh, gate_keys, expires=expires_in(3600))
    assert gate("fetch", oci_ref(fresh))[0].code == 0


def test_junk_signature_does_not_hide_the_real_reason(gate, gate_layout, gate_keys, tmp_path):
    from signing.attach import attach
    from signing.statement import PREDICATE_TYPE

    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    attach(gate_layout, image.repository, image.descriptor, b'{"not": "a bundle"}', PREDICATE_TYPE)
    sign_image(image, gate_keys, expires="2026-01-01T00:00:00Z")
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "expiry")
    assert "2 signatures were tried" in " ".join(d.get("details", []))


# -- hostile layers (signed, so only rule 6 can refuse them) ----------------------------------------

def _signed_with_layer(gate_layout, keys, entries) -> str:
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1", extra_layers=[make_tar(entries)])
    sign_image(image, keys)
    return oci_ref(image)


HOSTILE = {
    "dotdot": ([(tar_entry(PREFIX + "dags/../../../../../../tmp/pwned.py", b"x"), b"x")], "'..'"),
    "absolute": ([(tar_entry("/etc/pwned", b"x"), b"x")], "absolute path"),
    "symlink-out": ([(tar_entry(PREFIX + "dags/etc", type_=tarfile.SYMTYPE, linkname="../../../../../etc"), b"")],
                    "outside"),
    "symlink-absolute": ([(tar_entry(PREFIX + "dags/passwd", type_=tarfile.SYMTYPE, linkname="/etc/passwd"), b"")],
                         "absolute"),
    "hardlink-out": ([(tar_entry(PREFIX + "dags/shadow", type_=tarfile.LNKTYPE, linkname="etc/shadow"), b"")],
                     "outside the bundle tree"),
    "device": ([(tar_entry(PREFIX + "dags/null", type_=tarfile.CHRTYPE), b"")], "device"),
    "fifo": ([(tar_entry(PREFIX + "dags/pipe", type_=tarfile.FIFOTYPE), b"")], "device, FIFO"),
    "setuid": ([(tar_entry(PREFIX + "dags/run.sh", b"#!/bin/sh\n", mode=0o4755), b"#!/bin/sh\n")], "setuid"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tar_entries(case, gate, gate_layout, gate_keys, tmp_path):
    entries, words = HOSTILE[case]
    result, d = gate("fetch", _signed_with_layer(gate_layout, gate_keys, entries))
    assert_refused(result, d, "tar-entry", words, "tar entry")
    assert_nothing_materialised(gate, tmp_path)
    assert not Path("/tmp/pwned.py").exists()


def test_symlink_chain_escape(gate, gate_layout, gate_keys, tmp_path):
    """Each link looks inside on its own; together they would leave the tree."""
    entries = [
        (tar_entry(PREFIX + "dags/d1/", type_=tarfile.DIRTYPE, mode=0o755), b""),
        (tar_entry(PREFIX + "dags/d1/up", type_=tarfile.SYMTYPE, linkname="../.."), b""),
        (tar_entry(PREFIX + "dags/l1", type_=tarfile.SYMTYPE, linkname="d1/up"), b""),
        (tar_entry(PREFIX + "dags/l2", type_=tarfile.SYMTYPE, linkname="l1/.."), b""),
        (tar_entry(PREFIX + "dags/l2/escaped.py", b"x"), b"x"),
    ]
    result, d = gate("fetch", _signed_with_layer(gate_layout, gate_keys, entries))
    assert_refused(result, d, "tar-entry")
    assert_nothing_materialised(gate, tmp_path)


def test_gzip_bomb(gate, gate_layout, gate_keys, tmp_path):
    zeros = make_tar([(tar_entry(PREFIX + "dags/bomb.bin", b"\0" * (48 << 20)), b"\0" * (48 << 20))])
    bomb = gzip_bytes(zeros)
    assert len(zeros) / len(bomb) > 200
    from registry.model import OCI_LAYER_GZIP
    from tests.fixtures.airflow import put_blob

    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    # swap the dags layer for the bomb: a new manifest, signed (only the bomb itself is hostile)
    from registry.model import Manifest, encode

    m = image.content.parsed
    layer = put_blob(gate_layout, image.repository, bomb, OCI_LAYER_GZIP)
    content = encode(Manifest(schemaVersion=2, mediaType=OCI_MANIFEST, config=m.config,
                              layers=[m.layers[0], layer, m.layers[2]], annotations=m.annotations))
    gate_layout.put_manifest(image.repository, content, tag="bomb")
    image.content, image.tag = content, "bomb"
    sign_image(image, gate_keys)
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "tar-limits", "decompression bomb")
    assert_nothing_materialised(gate, tmp_path)


def _point_tag_at_blob(gate_layout: LayoutStore, repository: str, tag: str, data: bytes) -> str:
    """Store raw bytes as a blob and make `repository:tag` point at it (a hostile store)."""
    digest = sha256_digest(data)
    path = gate_layout.blob_path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    index = json.loads((gate_layout.root / "index.json").read_text())
    index["manifests"].append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(data),
                               "annotations": {ANN_REF_NAME: f"{repository}:{tag}"}})
    (gate_layout.root / "index.json").write_text(json.dumps(index))
    return f"oci:{gate_layout.root}:{repository}:{tag}"


def test_100mb_manifest(gate, gate_layout, tmp_path):
    make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    huge = b'{"schemaVersion":2,"annotations":{"x":"' + b"a" * (100 << 20) + b'"}}'
    ref = _point_tag_at_blob(gate_layout, f"{TEAM_A}/{BUNDLE_A}", "huge", huge)
    result, d = gate("fetch", ref)
    assert_refused(result, d, "manifest-format", "more than")
    assert_nothing_materialised(gate, tmp_path)


@pytest.mark.parametrize("raw", [b'{"schemaVersion": 2, "layers": [', b"\xff\xfe not json",
                                 b'{"schemaVersion":2,"schemaVersion":2,"config":{},"layers":[]}', b"[1, 2, 3]",
                                 b'{"schemaVersion": 2, "config": {"digest": "sha256:zz", "size": -1}, "layers": []}'])
def test_malformed_manifest_json(raw, gate, gate_layout, tmp_path):
    make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    ref = _point_tag_at_blob(gate_layout, f"{TEAM_A}/{BUNDLE_A}", "bad", raw)
    result, d = gate("fetch", ref)
    assert_refused(result, d, "manifest-format")
    assert_nothing_materialised(gate, tmp_path)


def test_malformed_signature_bundle(gate, gate_layout, tmp_path):
    from signing.attach import attach
    from signing.statement import PREDICATE_TYPE

    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    attach(gate_layout, image.repository, image.descriptor, b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",',
           PREDICATE_TYPE)
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "signature", "not valid JSON")
    assert_nothing_materialised(gate, tmp_path)


def test_human_output_names_the_check(dagseal, gate_policy, gate_layout, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    result = dagseal("verify", oci_ref(image), "--team", TEAM_A, "--policy", gate_policy,
                     "--state-dir", tmp_path / "s")
    assert result.code == 3
    assert "refused [signature]" in result.stderr and "fix: sign the image" in result.stderr


def test_bad_policy_and_team_are_bad_input(dagseal, gate_policy, gate_layout, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "org": "acme", "teams": {}, "extra": 1}')
    result = dagseal("verify", oci_ref(image), "--team", TEAM_A, "--policy", bad, "--json")
    assert result.code == 2 and "extra" in result.stdout
    result = dagseal("verify", oci_ref(image), "--team", "team_zz", "--policy", gate_policy, "--json")
    assert result.code == 2 and "--team team_zz" in result.json_lines[0]["message"]


def test_image_annotations_must_match_the_statement(gate, gate_layout, gate_keys, tmp_path):
    from registry.model import ANN_BUNDLE, ANN_VERSION

    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1", annotations={ANN_BUNDLE: "team_a_other"})
    sign_image(image, gate_keys, bundle=BUNDLE_A)
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "bundle", ANN_BUNDLE, "team_a_other")
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.2", annotations={ANN_VERSION: "9.9"}, tag="v")
    sign_image(image, gate_keys, version="2026.11.2")
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "bundle", "version annotation is '9.9'")
    assert_nothing_materialised(gate, tmp_path)


def test_signed_index_is_not_a_bundle_image(gate, gate_layout, gate_keys, tmp_path):
    from registry.model import Index, encode
    from tests.fixtures.airflow import Image

    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    index = encode(Index(schemaVersion=2, manifests=[image.descriptor], annotations=image.content.parsed.annotations))
    gate_layout.put_manifest(image.repository, index, tag="multi")
    sign_image(Image(gate_layout, image.repository, index, "multi"), gate_keys)
    result, d = gate("fetch", oci_ref(Image(gate_layout, image.repository, index, "multi")))
    assert_refused(result, d, "manifest-format", "index, not an image manifest")
    assert_nothing_materialised(gate, tmp_path)


def test_keyless_signature_when_team_lists_only_keys(gate, gate_layout, gate_keys, sigstore_instance, trust_config,
                                                     dagseal, tmp_path):
    from tests.fixtures.airflow import policy_doc
    from tests.fixtures.sigstore import KEYLESS_ISSUER, TEAM_A_IDENTITY

    doc = policy_doc(gate_keys)
    doc["teams"][TEAM_A]["signers"].append({"kind": "keyless", "issuer": KEYLESS_ISSUER, "identity": TEAM_A_IDENTITY})
    signing_policy = tmp_path / "signing.json"
    signing_policy.write_text(json.dumps(doc))
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    signed = dagseal("sign", oci_ref(image), "--keyless", "--identity-token", sigstore_instance.mint_token(TEAM_A_IDENTITY),
                     "--trust-config", trust_config, "--policy", signing_policy, "--json")
    assert signed.code == 0, signed.stdout
    result, d = gate("fetch", oci_ref(image))  # the runtime policy lists team_a's key only
    assert_refused(result, d, "signer", "no keyless identity for team team_a")
    assert_nothing_materialised(gate, tmp_path)
