"""Red-team findings against the runtime gate: each test is an attack that worked before its fix.

Every case goes through the real command line (`dagseal fetch/verify`) with real ECDSA signatures,
real OCI layouts and the real state dir; the attacker controls the registry (tags, blobs,
referrers) or local files the gate reads, never the team's private key.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from registry.digest import sha256_digest
from registry.layout import LayoutStore
from registry.model import ANN_REF_NAME, OCI_LAYER_TAR, OCI_MANIFEST, Manifest, encode
from tests.fixtures.airflow import (
    assert_refused,
    BUNDLE_A,
    TEAM_A,
    Image,
    gzip_bytes,
    make_image,
    make_tar,
    oci_ref,
    put_blob,
    sign_image,
    tar_entry,
)

PREFIX = f"opt/airflow/bundles/{BUNDLE_A}/"


def accepted(result, decision) -> dict:
    assert result.code == 0, result.stdout + result.stderr
    assert decision["decision"] == "accepted", decision
    return decision


def _retag(store: LayoutStore, image: Image, tag: str) -> None:
    """The attacker (who controls the registry) points `tag` at `image`'s manifest."""
    store.put_manifest(image.repository, image.content, tag=tag)


# -- rule 5: rollback and version reuse ------------------------------------------------------------

def test_tag_moved_back_to_an_already_accepted_older_version_is_a_rollback(gate, gate_layout, gate_keys):
    """Before: a version accepted once stayed startable forever, so a registry could roll a host
    back from 2.0 to the (known-vulnerable) 1.0 it ran before just by moving the tag."""
    old = make_image(gate_layout, TEAM_A, BUNDLE_A, "1.0")
    sign_image(old, gate_keys)
    new = make_image(gate_layout, TEAM_A, BUNDLE_A, "2.0")
    sign_image(new, gate_keys)
    accepted(*gate("fetch", oci_ref(old)))
    accepted(*gate("fetch", oci_ref(new)))
    _retag(gate_layout, old, "2.0")
    result, d = gate("fetch", oci_ref(new))
    assert_refused(result, d, "rollback", "version 1.0 is older than 2.0", "pinned by digest")
    record = json.loads((gate.state / "accepted" / TEAM_A / f"{BUNDLE_A}.json").read_text())
    assert record["newest_version"] == "2.0"
    assert record["refs"][oci_ref(new)]["digest"] == new.digest  # the tag's memory was not moved back
    # an explicit digest pin of the version accepted before still starts (Airflow workers run the
    # DAG version a run started with): the registry cannot substitute content for a digest
    accepted(*gate("fetch", oci_ref(old, pinned=True)))


@pytest.mark.parametrize("alias", ["2026.11.01", "v2026.11.1", "2026.11.1.0"])
def test_pep440_equal_version_over_other_content_is_version_reuse(alias, gate, gate_layout, gate_keys):
    """Before: version reuse compared the strings, so "2026.11.01" (== 2026.11.1 in PEP 440) named
    a second, different image of an accepted version, and neither check refused it."""
    first = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(first, gate_keys)
    accepted(*gate("fetch", oci_ref(first)))
    other = make_image(gate_layout, TEAM_A, BUNDLE_A, alias, site_packages={"helperlib/__init__.py": b"VALUE = 666\n"})
    sign_image(other, gate_keys)
    result, d = gate("fetch", oci_ref(other))
    assert_refused(result, d, "version-reuse", "2026.11.1", first.digest, "new version number")


def test_non_pep440_version_is_refused_before_it_poisons_the_memory(gate, gate_layout, gate_keys):
    """Before: the first version of a bundle on a host was recorded unchecked, so a signed "latest"
    became the newest version and every later (valid) version was refused forever."""
    bad = make_image(gate_layout, TEAM_A, BUNDLE_A, "latest")
    sign_image(bad, gate_keys)
    result, d = gate("fetch", oci_ref(bad))
    assert_refused(result, d, "statement", "'latest' is not a PEP 440 version")
    assert not (gate.state / "accepted" / TEAM_A / f"{BUNDLE_A}.json").exists()
    good = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(good, gate_keys)
    accepted(*gate("fetch", oci_ref(good)))


# -- hostile JSON: refused with a check, never a traceback -----------------------------------------

DEEP = b"[" * 200_000 + b"]" * 200_000


def _point_tag_at_blob(store: LayoutStore, repository: str, tag: str, data: bytes) -> str:
    """Raw bytes as a blob and `repository:tag` pointing at them (a hostile store)."""
    path = store.blob_path(sha256_digest(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    index = json.loads((store.root / "index.json").read_text())
    index["manifests"].append({"mediaType": OCI_MANIFEST, "digest": sha256_digest(data), "size": len(data),
                               "annotations": {ANN_REF_NAME: f"{repository}:{tag}"}})
    (store.root / "index.json").write_text(json.dumps(index))
    return f"oci:{store.root}:{repository}:{tag}"


def test_deeply_nested_manifest_is_refused_not_a_crash(gate, gate_layout):
    """Before: json.loads raised RecursionError (not a ValueError): exit 1 with a traceback."""
    make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    ref = _point_tag_at_blob(gate_layout, f"{TEAM_A}/{BUNDLE_A}", "deep", b'{"schemaVersion":2,"x":' + DEEP + b"}")
    result, d = gate("verify", ref)
    assert_refused(result, d, "manifest-format", "nests too deeply")


def test_deeply_nested_signature_bundle_is_refused_not_a_crash(gate, gate_layout):
    from signing.attach import attach
    from signing.statement import PREDICATE_TYPE

    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    attach(gate_layout, image.repository, image.descriptor, b'{"mediaType":' + DEEP[:400_000] + b"}", PREDICATE_TYPE)
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "signature", "nests too deeply")


def test_deeply_nested_statement_and_policy_are_refused_not_crashes(gate, gate_layout, tmp_path):
    from registry.errors import Refused
    from signing.statement import parse_statement

    with pytest.raises(Refused) as exc:
        parse_statement(b'{"_type":' + DEEP[:600_000] + b"}")
    assert exc.value.check == "statement" and "nests too deeply" in exc.value.message
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    policy = tmp_path / "deep-policy.json"
    policy.write_bytes(b'{"version":1,"teams":' + DEEP + b"}")
    result, _ = gate("verify", oci_ref(image), policy=policy)
    assert result.code == 2, result.stdout + result.stderr
    assert str(policy) in result.json_lines[0]["message"] and "nests too deeply" in result.json_lines[0]["message"]


# -- local attackers: the state dir and the cache ----------------------------------------------------

@pytest.mark.parametrize("planted_by", ["world-writable", "other-user"])
def test_cache_entry_planted_by_another_local_user_is_refused(planted_by, gate, gate_layout, gate_keys):
    """Before: a start trusted any folder named after the digest with the right manifest.json
    (public bytes), so whoever could write into the cache folder ran their own DAG code."""
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    entry = gate.state / "cache" / image.digest.split(":")[1]
    (entry / "tree" / "dags").mkdir(parents=True)
    (entry / "manifest.json").write_bytes(image.content.raw)
    (entry / "tree" / "dags" / "evil.py").write_text("import os; os.system('id')\n")
    if planted_by == "world-writable":
        os.chmod(entry, 0o777)
    else:
        if os.geteuid() != 0:
            pytest.fail("this case chowns a folder to another user: run the tests as root (as make test does)")
        for path in (entry, entry / "tree", entry / "manifest.json"):
            os.chown(path, 65534, 65534)
    result, d = gate("fetch", oci_ref(image))
    assert_refused(result, d, "cache", str(entry), "delete")
    assert not list(Path(gate.state.parent).glob("dest*"))


def test_committed_cache_entries_are_not_writable_by_others(gate, gate_layout, gate_keys):
    """The entry folder itself is sealed like its tree, whatever the umask."""
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    old = os.umask(0o002)
    try:
        accepted(*gate("fetch", oci_ref(image)))
    finally:
        os.umask(old)
    entry = gate.state / "cache" / image.digest.split(":")[1]
    assert os.stat(entry).st_mode & 0o777 == 0o555
    accepted(*gate("fetch", oci_ref(image)))  # and a second start reads it back


@pytest.mark.parametrize("record", [
    {"newest_version": 5, "versions": {}},
    {"newest_version": "1.0", "versions": ["1.0"]},
    {"newest_version": "1.0", "versions": {"1.0": 7}},
    {"versions": {}, "refs": {"r": "sha256:x"}},
    [1, 2],
])
def test_tampered_state_record_is_bad_input_not_a_reset_or_crash(record, gate, gate_layout, gate_keys):
    """A record of the wrong shape fails closed (exit 2 naming the file); the rollback memory is
    never silently reset and nothing is started."""
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    path = gate.state / "accepted" / TEAM_A / f"{BUNDLE_A}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    result, _ = gate("fetch", oci_ref(image))
    assert result.code == 2, result.stdout + result.stderr
    message = result.json_lines[0]["message"]
    assert str(path) in message and "corrupt" in message
    assert not list(Path(gate.state.parent).glob("dest*"))


# -- rule 6: the image config must not lie about its layers -----------------------------------------

def _with_config(store: LayoutStore, image: Image, config: dict, tag: str) -> Image:
    from registry.model import OCI_CONFIG, canonical_json

    m = image.content.parsed
    desc = put_blob(store, image.repository, canonical_json(config), OCI_CONFIG)
    content = encode(Manifest(schemaVersion=2, mediaType=OCI_MANIFEST, config=desc, layers=m.layers,
                              annotations=m.annotations))
    store.put_manifest(image.repository, content, tag=tag)
    return Image(store, image.repository, content, tag)


@pytest.mark.parametrize("case", ["wrong-diff-id", "missing-diff-id", "no-rootfs"])
def test_config_diff_ids_that_do_not_match_the_layers_are_refused(case, gate, gate_layout, gate_keys):
    """Before: diff_ids were never compared with the layers, so a signed image could carry a config
    that describes other content than it unpacks to (what docker/containerd would run differs from
    what dagseal verified and extracted)."""
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1", tag=None)
    with gate_layout.open_blob(image.repository, image.content.parsed.config) as stream:
        config = json.loads(stream.read())
    diff_ids = config["rootfs"]["diff_ids"]
    if case == "wrong-diff-id":
        diff_ids[1] = sha256_digest(b"other dags")
    elif case == "missing-diff-id":
        del diff_ids[2]
    else:
        del config["rootfs"]
    liar = _with_config(gate_layout, image, config, "2026.11.1")
    sign_image(liar, gate_keys)
    result, d = gate("fetch", oci_ref(liar))
    if case == "wrong-diff-id":
        assert_refused(result, d, "blob-digest", "layer 1", "diff_ids[1]", diff_ids[1])
    else:
        assert_refused(result, d, "manifest-format", "diff_ids", "3 layers")
    assert not list(Path(gate.state.parent).glob("dest*"))
    assert [p.name for p in (gate.state / "cache").iterdir() if not p.name.startswith(".")] == []


def test_uncompressed_layers_have_checked_diff_ids(gate, gate_layout, gate_keys):
    """The diff_id is the digest of the tar stream whatever the compression (tar: the blob itself)."""
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1", layer_media_type=OCI_LAYER_TAR)
    sign_image(image, gate_keys)
    accepted(*gate("fetch", oci_ref(image)))


# -- tar metadata: memory ----------------------------------------------------------------------------

@pytest.mark.parametrize("type_", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK])
def test_huge_pax_or_gnu_long_name_record_is_refused_before_it_is_read(type_, tmp_path):
    """Before: tarfile read a PAX/GNU-long-name record whole, whatever size it claimed (a 200 MiB
    record cost 400 MiB RSS). The header here claims 1 GiB and the stream then ends: refusing with
    tar-limits (not a truncated-stream error) shows the size was refused before any read."""
    import io

    from registry.errors import Refused
    from signing.safetar import Budget, LayerExtractor

    info = tarfile.TarInfo("././@LongRecord")
    info.type, info.size = type_, 1 << 30
    data = info.tobuf(format=tarfile.USTAR_FORMAT) + b"a" * 4096
    with pytest.raises(Refused) as exc:
        LayerExtractor(tmp_path / "tree", PREFIX, Budget()).extract(io.BytesIO(gzip_bytes(data)),
                                                                     "application/vnd.oci.image.layer.v1.tar+gzip")
    assert exc.value.check == "tar-limits" and f"{1 << 30} bytes" in exc.value.message
    assert list((tmp_path / "tree").iterdir()) == []


def test_long_names_below_the_cap_still_extract(tmp_path):
    import io

    from signing.safetar import Budget, LayerExtractor

    name = PREFIX + "dags/" + "d" * 200 + "/" + "f" * 200 + ".py"
    layer = make_tar([(tar_entry(name, b"x = 1\n"), b"x = 1\n")])  # PAX format: a path record
    LayerExtractor(tmp_path / "tree", PREFIX, Budget()).extract(io.BytesIO(layer), OCI_LAYER_TAR)
    assert (tmp_path / "tree" / name[len(PREFIX):]).read_bytes() == b"x = 1\n"


# -- referrers: the cap must not hide the valid signature -------------------------------------------

@pytest.mark.parametrize("noise", ["attestations", "expired-signatures"])
def test_valid_signature_after_many_other_referrers_is_found(noise, gate, gate_layout, gate_keys):
    """Before: only the first 64 referrers of any predicate type were read, so an image with many
    SBOM/provenance attestations, or one re-signed daily with --expires, was refused although a
    valid signature was attached (the newest, listed last)."""
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    for _ in range(70):
        if noise == "attestations":
            sign_image(image, gate_keys, predicate_type="https://cyclonedx.org/bom")
        else:
            sign_image(image, gate_keys, expires="2020-01-01T00:00:00Z")
    sign_image(image, gate_keys)
    accepted(*gate("fetch", oci_ref(image)))


def test_fetch_dest_that_cannot_be_linked_is_bad_input_not_a_traceback(dagseal, gate_policy, gate_layout, gate_keys,
                                                                        tmp_path):
    """Before: an OSError from the symlink swap (read-only or special folder) escaped as exit 1."""
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    result = dagseal("fetch", oci_ref(image), "--team", TEAM_A, "--policy", gate_policy, "--state-dir",
                     tmp_path / "state", "--dest", "/proc/dagseal-redteam", "--json")
    assert result.code == 2, result.stdout + result.stderr
    assert "--dest /proc/dagseal-redteam" in result.json_lines[-1]["message"]
    assert not [p for p in os.listdir("/proc") if "dagseal" in p]


# -- policy and run ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bundle", ["../../etc", "team_a/analytics", "Team_A_Analytics", ""])
def test_policy_bundle_names_that_are_not_bundle_names_are_bad_input(bundle, dagseal, gate_keys, gate_layout,
                                                                     tmp_path):
    """Bundle names become the extraction prefix, state file names and environment names: the
    runtime policy accepts only what org.toml accepts (bundler.specs)."""
    from tests.fixtures.airflow import policy_doc

    doc = policy_doc(gate_keys)
    doc["teams"][TEAM_A]["bundles"].append(bundle)
    policy = tmp_path / "odd.json"
    policy.write_text(json.dumps(doc))
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    result = dagseal("verify", oci_ref(image), "--team", TEAM_A, "--policy", policy, "--json")
    assert result.code == 2, result.stdout + result.stderr
    line = result.json_lines[-1]
    assert str(policy) in line["message"] and f"teams.{TEAM_A}.bundles.2" in " ".join(line.get("details", []))


def test_run_refuses_two_bundles_that_share_an_environment_name(tmp_path):
    """Before: "team_a-x" and "team_a_x" both became DAGSEAL_BUNDLE_TEAM_A_X_PATH and the second
    silently replaced the first in the command's environment."""
    from registry.errors import BadInput
    from signing.gate import Admitted, bundle_env
    from signing.materialise import Entry
    from signing.verify import Verified

    def admitted(bundle: str, digest: str) -> Admitted:
        v = Verified(team=TEAM_A, bundle=bundle, version="1.0", digest=digest, signer="key:x", predicate=None,  # type: ignore[arg-type]
                     bundle_json=b"{}")
        return Admitted(ref=None, verified=v, entry=Entry(tmp_path / digest[-4:], digest, bundle))  # type: ignore[arg-type]

    one, two = admitted("team_a-x", "sha256:" + "1" * 64), admitted("team_a_x", "sha256:" + "2" * 64)
    with pytest.raises(BadInput) as exc:
        bundle_env([one, two], {})
    assert "team_a-x and team_a_x" in exc.value.message and "DAGSEAL_BUNDLE_TEAM_A_X_PATH" in exc.value.message
    env = bundle_env([one, admitted("team_a_y", "sha256:" + "3" * 64)], {})
    assert env["DAGSEAL_BUNDLE_TEAM_A_X_DIGEST"] == one.verified.digest


def test_offline_grace_is_not_extended_by_a_resolution_recorded_in_the_future(dagseal, registry_factory, gate_keys,
                                                                               tmp_path):
    """Before: a last online verification dated in the future (clock stepped back, tampered record)
    gave a negative age, which is always within the grace: offline starts for ever."""
    from registry.open import open_store
    from tests.fixtures.airflow import policy_doc

    server = registry_factory()
    store = open_store(server.ref(f"{TEAM_A}/{BUNDLE_A}"))
    sign_image(make_image(store, TEAM_A, BUNDLE_A, "2026.11.1"), gate_keys)
    ref = f"{server.host}/{TEAM_A}/{BUNDLE_A}:2026.11.1"
    policy = tmp_path / "graced.json"
    policy.write_text(json.dumps(policy_doc(gate_keys, offline_grace_seconds=3600)))
    state = tmp_path / "state"
    args = ["--team", TEAM_A, "--policy", policy, "--state-dir", state, "--json"]
    assert dagseal("fetch", ref, *args, "--dest", tmp_path / "d1").code == 0
    server.stop()
    record_path = state / "accepted" / TEAM_A / f"{BUNDLE_A}.json"
    record = json.loads(record_path.read_text())
    record["refs"][ref]["verified_at"] += 10 * 365 * 86400
    record_path.write_text(json.dumps(record))
    result = dagseal("fetch", ref, *args, "--dest", tmp_path / "d2")
    assert result.code == 4, result.stdout + result.stderr
    assert "in the future" in result.json_lines[-1]["message"]
    assert not os.path.lexists(tmp_path / "d2")


# -- signature bundles mixing key and keyless material (not holes: regression tests) ----------------

def test_bundles_mixing_key_hints_and_certificates_are_refused(dagseal, gate_layout, gate_keys, sigstore_instance,
                                                              trust_config, tmp_path):
    """A keyless bundle for team_b's identity given team_a's key hint, and team_a's valid key bundle
    given team_b's certificate: the kind is decided by the certificate, so neither borrows the
    other's trust."""
    from signing.attach import find_bundles
    from signing.trust import parse_policy
    from signing.verify import verify_statements
    from tests.fixtures.airflow import policy_doc
    from tests.fixtures.sigstore import KEYLESS_ISSUER, TEAM_A_IDENTITY, TEAM_B_IDENTITY

    doc = policy_doc(gate_keys)
    doc["trusted_root"] = sigstore_instance.trusted_root()
    doc["teams"][TEAM_A]["signers"].append({"kind": "keyless", "issuer": KEYLESS_ISSUER, "identity": TEAM_B_IDENTITY})
    signing_policy = tmp_path / "signing.json"
    signing_policy.write_text(json.dumps(doc))
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    signed = dagseal("sign", oci_ref(image), "--keyless", "--identity-token", sigstore_instance.mint_token(TEAM_B_IDENTITY),
                     "--trust-config", trust_config, "--policy", signing_policy, "--json")
    assert signed.code == 0, signed.stdout + signed.stderr
    (_, keyless), = find_bundles(gate_layout, image.repository, image.digest)
    key_bundle = sign_image(image, gate_keys)

    doc["teams"][TEAM_A]["signers"][-1]["identity"] = TEAM_A_IDENTITY  # the runtime trusts team_a's identity only
    runtime = parse_policy(json.dumps(doc).encode())
    assert verify_statements(image.content, [key_bundle], runtime, TEAM_A).signer.startswith("key:")

    hinted = json.loads(keyless)
    hinted["verificationMaterial"]["publicKey"] = {"hint": gate_keys.key_id("team_a")}
    certified = json.loads(key_bundle)
    certified["verificationMaterial"]["certificate"] = json.loads(keyless)["verificationMaterial"]["certificate"]
    from registry.errors import Refused

    for forged in (hinted, certified):
        with pytest.raises(Refused) as exc:
            verify_statements(image.content, [json.dumps(forged).encode()], runtime, TEAM_A)
        assert exc.value.check == "signature", exc.value.message


@pytest.mark.parametrize("planted", ["entry", "stale-temp"])
def test_symlink_planted_in_the_cache_never_makes_dagseal_touch_its_target(planted, gate, gate_layout, gate_keys,
                                                                           tmp_path):
    """Before: clearing an incomplete entry or a stale temp folder walked a planted symlink and
    chmod-ed every folder of its target to 0755 (as root: /etc/ssl/private readable by all)."""
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    victim = tmp_path / "victim"
    (victim / "private").mkdir(parents=True)
    (victim / "private" / "key.pem").write_text("secret")
    os.chmod(victim / "private", 0o700)
    cache = gate.state / "cache"
    cache.mkdir(parents=True)
    hex_ = image.digest.split(":")[1]
    os.symlink(victim, cache / (hex_ if planted == "entry" else f".tmp-{hex_}-1-deadbeef"))
    accepted(*gate("fetch", oci_ref(image)))
    assert os.stat(victim / "private").st_mode & 0o777 == 0o700
    assert (victim / "private" / "key.pem").read_text() == "secret"
    assert (cache / hex_).is_dir() and not (cache / hex_).is_symlink()


def test_file_planted_at_the_entry_path_is_replaced_not_a_traceback(gate, gate_layout, gate_keys):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    cache = gate.state / "cache"
    cache.mkdir(parents=True)
    (cache / image.digest.split(":")[1]).write_text("junk")
    accepted(*gate("fetch", oci_ref(image)))


# -- a hostile registry's error and token answers ------------------------------------------------------

class _HostileRegistry:
    """A registry on loopback that answers every request with deeply nested JSON: as an error
    body (404) or, behind a bearer challenge, as the token service's answer."""

    def __init__(self, mode: str):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        deep = b"[" * 60_000 + b"]" * 60_000
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                if self.path.startswith("/token"):
                    return self._answer(200, deep)
                if mode == "token":
                    realm = f"http://127.0.0.1:{outer.port}/token"
                    return self._answer(401, b"{}", {"WWW-Authenticate": f'Bearer realm="{realm}",service="r"'})
                return self._answer(404, b'{"errors":' + deep + b"}")

            do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("mode", ["error-body", "token"])
def test_deeply_nested_registry_answers_are_clean_failures(mode, dagseal, gate_policy, tmp_path):
    """Before: json.loads of a registry's error body or token answer raised RecursionError: the
    gate died with a traceback (exit 1) instead of a storage failure naming the registry."""
    registry = _HostileRegistry(mode)
    try:
        result = dagseal("fetch", f"127.0.0.1:{registry.port}/{TEAM_A}/{BUNDLE_A}:2026.11.1", "--team", TEAM_A,
                         "--policy", gate_policy, "--state-dir", tmp_path / "state", "--dest", tmp_path / "d",
                         "--json")
    finally:
        registry.close()
    assert result.code == 4, result.stdout + result.stderr
    assert f"127.0.0.1:{registry.port}" in result.json_lines[-1]["message"]
    assert not os.path.lexists(tmp_path / "d")


@pytest.mark.parametrize("which", ["cache", "state"])
def test_symlink_planted_at_a_lock_file_is_a_storage_failure(which, gate, gate_layout, gate_keys, tmp_path):
    """A lock path planted as a symlink (to a file the attacker wants truncated) is never followed,
    and the gate says which file is wrong (before: a traceback, exit 1)."""
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    if which == "cache":
        lock = gate.state / "cache" / f".{image.digest.split(':')[1]}.lock"
    else:
        lock = gate.state / "accepted" / TEAM_A / f"{BUNDLE_A}.lock"
    lock.parent.mkdir(parents=True)
    os.symlink(victim, lock)
    result, _ = gate("fetch", oci_ref(image))
    assert result.code == 4, result.stdout + result.stderr
    assert str(lock) in result.json_lines[-1]["message"]
    assert victim.read_text() == "precious"
    assert not (gate.state / "accepted" / TEAM_A / f"{BUNDLE_A}.json").exists()


def test_a_full_disk_while_materialising_is_a_storage_failure(gate_layout, gate_keys, gate_policy, tmp_path):
    """Before: ENOSPC/EFBIG from the extractor escaped as a traceback (exit 1). Here the kernel's
    file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes writing the 2 MiB file fail with EFBIG,
    as a full disk would with ENOSPC; nothing half-written is left in the cache."""
    import resource
    import signal
    import subprocess
    import sys

    big = os.urandom(2 << 20)
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1", dags={"big.py": big})
    sign_image(image, gate_keys)
    state = tmp_path / "state"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "bundler.cli", "fetch", oci_ref(image), "--team", TEAM_A,
                           "--policy", str(gate_policy), "--state-dir", str(state), "--dest", str(tmp_path / "d"),
                           "--json"], check=False, cwd=root, capture_output=True, text=True, preexec_fn=limit,
                          timeout=120)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    line = json.loads(proc.stdout.splitlines()[-1])
    assert "cannot materialise" in line["message"] and str(state / "cache") in line["message"]
    assert [p.name for p in (state / "cache").iterdir() if not p.name.endswith(".lock")] == []
    assert not os.path.lexists(tmp_path / "d")
