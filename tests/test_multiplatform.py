"""Multi-platform bundles: an org with several platforms gets one image per platform under one
tag (an OCI image index); the index is signed; the gate verifies the index, then starts the
manifest of the runtime's platform, fetched by the digest the signed index lists."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.layout import LayoutStore
from registry.model import ANN_TEAM, OCI_INDEX, Index, RawContent, encode
from tests.fixtures.tools import require_tool
from tests.fixtures.wheelhouse import OrgFixture, create_org

TEAM = "team_a"
BUNDLE = "team_a_analytics"
NAME = f"{TEAM}/{BUNDLE}:2026.11.1"
PLATFORMS = ["linux/amd64", "linux/arm64"]


@dataclass
class Built:
    org: OrgFixture
    store: Path
    cache: Path
    result: dict
    policy: Path

    @property
    def ref(self) -> str:
        return f"oci:{self.store}:{NAME}"


def _build(dagseal, org: OrgFixture, to: str, cache: Path, *extra) -> list[dict]:
    result = dagseal("build", "--specs", org.specs, "--to", to, "--cache-dir", cache, "--find-links",
                     org.wheelhouse, "--offline", "--json", *extra)
    assert result.code == 0, result.stdout + result.stderr
    return result.json_lines


@pytest.fixture(scope="module")
def built(tmp_path_factory, wheelhouse) -> Built:
    """team_a_analytics built for linux/amd64 and linux/arm64, signed with team_a's key."""
    from bundler.cli import run
    from bundler.output import Output

    root = tmp_path_factory.mktemp("multiplatform")
    org = create_org(root / "acme", wheelhouse, org={"platforms": PLATFORMS}, lock=True)
    policy = root / "policy.json"
    store, cache = root / "store", root / "cache"

    def cli(*argv) -> tuple[int, list[dict]]:
        stdout, stderr = io.StringIO(), io.StringIO()
        code = run([str(a) for a in argv], Output(json_mode=True, stdout=stdout, stderr=stderr))
        assert code == 0, stdout.getvalue() + stderr.getvalue()
        return code, [json.loads(line) for line in stdout.getvalue().splitlines() if line.startswith("{")]

    _, lines = cli("build", "--specs", org.specs, "--bundle", BUNDLE, "--to", f"oci:{store}", "--cache-dir", cache,
                   "--find-links", org.wheelhouse, "--offline", "--json")
    cli("policy", "export", "--specs", org.specs, "--out", policy, "--json")
    cli("sign", f"oci:{store}:{NAME}", "--key", org.private_keys[TEAM], "--specs", org.specs, "--json")
    return Built(org, store, cache, lines[0], policy)


def _gate(dagseal, built: Built, verb: str, ref: str, state: Path, *extra) -> tuple[int, dict]:
    result = dagseal(verb, ref, "--team", TEAM, "--policy", built.policy, "--state-dir", state, "--json", *extra)
    assert result.json_lines, result.stdout + result.stderr
    return result.code, result.json_lines[0]


def _index(built: Built) -> RawContent:
    layout = LayoutStore(built.store, create=False)
    return layout.get(TEAM + "/" + BUNDLE, "2026.11.1")


# -- build -----------------------------------------------------------------------------------------

def test_build_makes_an_index_of_one_manifest_per_platform(built):
    layout = LayoutStore(built.store, create=False)
    index = _index(built)
    assert index.digest == built.result["digest"] and index.media_type == OCI_INDEX
    assert isinstance(index.parsed, Index)
    listed = {f"{d.platform.os}/{d.platform.architecture}": d.digest for d in index.parsed.manifests}
    assert listed == built.result["platforms"] and sorted(listed) == PLATFORMS
    for platform, digest in listed.items():
        child = layout.get_manifest("", digest).parsed
        assert child.annotations == index.parsed.annotations and child.annotations[ANN_TEAM] == TEAM
        with layout.open_blob("", child.config) as fh:
            config = json.loads(fh.read())
        assert f"{config['os']}/{config['architecture']}" == platform
    amd, arm = (layout.get_manifest("", listed[p]).parsed for p in PLATFORMS)
    assert amd.layers[1] == arm.layers[1]  # one DAG layer, shared
    assert amd.layers[2] != arm.layers[2]  # bundle.json names the platform


def test_skopeo_reads_the_index_and_picks_the_arm64_child(built):
    skopeo = require_tool("skopeo")
    raw = subprocess.run([skopeo, "inspect", "--raw", built.ref], capture_output=True, check=True).stdout
    assert json.loads(raw)["mediaType"] == OCI_INDEX
    out = subprocess.run([skopeo, "inspect", "--override-os", "linux", "--override-arch", "arm64", built.ref],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    arm = LayoutStore(built.store, create=False).get_manifest("", built.result["platforms"]["linux/arm64"]).parsed
    assert info["Digest"] == built.result["digest"]  # skopeo names the index it read ...
    assert info["Architecture"] == "arm64" and info["Layers"] == [d.digest for d in arm.layers]  # ... and the child


def test_two_builds_give_the_same_index(dagseal, built, tmp_path):
    lines = _build(dagseal, built.org, f"oci:{tmp_path / 'store'}", tmp_path / "cache", "--bundle", BUNDLE)
    assert lines[0]["digest"] == built.result["digest"]
    assert lines[0]["platforms"] == built.result["platforms"]


# -- the gate --------------------------------------------------------------------------------------

def test_signed_index_starts_on_this_host_and_for_arm64(dagseal, built, tmp_path):
    code, d = _gate(dagseal, built, "verify", built.ref, tmp_path / "state", "--platform", "linux/amd64")
    assert code == 0, d
    assert (d["digest"], d["platform"], d["manifest"]) == (built.result["digest"], "linux/amd64",
                                                          built.result["platforms"]["linux/amd64"])
    code, d = _gate(dagseal, built, "fetch", built.ref, tmp_path / "state", "--platform", "linux/arm64",
                    "--dest", tmp_path / "bundle")
    assert code == 0, d
    assert d["digest"] == built.result["digest"] and d["manifest"] == built.result["platforms"]["linux/arm64"]
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["platform"] == "linux/arm64"
    assert (tmp_path / "bundle" / "site-packages" / "tinyfmt").is_dir()
    # the cache is keyed by the child manifest, the rollback memory by the signed index
    assert Path(d["path"]).parent.name == built.result["platforms"]["linux/arm64"][7:]
    from signing.state import HostState

    record = HostState(tmp_path / "state").load(TEAM, BUNDLE)
    assert record.newest_digest == built.result["digest"] and record.versions == {"2026.11.1": built.result["digest"]}


def test_host_platform_is_the_default(dagseal, built, tmp_path):
    from signing.platforms import host_platform

    code, d = _gate(dagseal, built, "verify", built.ref, tmp_path / "state")
    host = str(host_platform())
    if host not in PLATFORMS:
        assert (code, d["check"]) == (3, "platform")
    else:
        assert code == 0 and d["platform"] == host and d["manifest"] == built.result["platforms"][host]


def test_platform_the_index_lacks_is_refused(dagseal, built, tmp_path):
    code, d = _gate(dagseal, built, "fetch", built.ref, tmp_path / "state", "--platform", "linux/s390x",
                    "--dest", tmp_path / "bundle")
    assert (code, d["check"], d["decision"]) == (3, "platform", "refused")
    assert "linux/s390x" in d["reason"] and "linux/amd64, linux/arm64" in d["reason"]
    assert "--platform" in d["hint"]
    assert not (tmp_path / "bundle").exists()


def test_malformed_platform_is_bad_input(dagseal, built, tmp_path):
    result = dagseal("verify", built.ref, "--team", TEAM, "--policy", built.policy, "--state-dir", tmp_path,
                     "--platform", "amd64", "--json")
    assert result.code == 2 and "--platform 'amd64'" in result.stdout


# -- tampering -------------------------------------------------------------------------------------

def _copy_store(built: Built, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(built.store, store)
    return store


def _retag(store: Path, index: Index) -> str:
    content = encode(index)
    LayoutStore(store).put_manifest(f"{TEAM}/{BUNDLE}", content, tag="2026.11.1")
    return content.digest


def _child(store: Path, digest: str, **annotations) -> RawContent:
    """A copy of a platform manifest with some annotations changed, stored by digest."""
    layout = LayoutStore(store)
    manifest = layout.get_manifest("", digest).parsed
    changed = encode(manifest.model_copy(update={"annotations": {**manifest.annotations, **annotations}}))
    layout.put_manifest(f"{TEAM}/{BUNDLE}", changed)
    return changed


def _sign_bypassing_preflight(built: Built, store: Path, ref: str) -> None:
    """Sign the index `ref` names with team_a's key without `dagseal sign`'s pre-flight."""
    from signing.attach import attach
    from signing.preflight import image_facts, predicate_for
    from signing.signers.keyfile import KeyFileSigner
    from signing.statement import PREDICATE_TYPE, make_statement

    layout = LayoutStore(store)
    content = layout.get(f"{TEAM}/{BUNDLE}", "2026.11.1")
    payload = make_statement(f"{TEAM}/{BUNDLE}", content.digest, predicate_for(image_facts(content, ref)))
    bundle_json = KeyFileSigner.from_file(built.org.private_keys[TEAM]).sign_statement(payload)
    attach(layout, f"{TEAM}/{BUNDLE}", content.descriptor(), bundle_json, PREDICATE_TYPE)


def test_tag_moved_to_an_unsigned_index_with_another_child_is_refused(dagseal, built, tmp_path):
    store = _copy_store(built, tmp_path)
    signed = _index(built).parsed
    arm = signed.manifests[1]
    other = _child(store, arm.digest, **{"org.opencontainers.image.source": "https://evil.example/x"})
    swapped = signed.model_copy(update={"manifests": [signed.manifests[0], arm.model_copy(
        update={"digest": other.digest, "size": len(other.raw)})]})
    moved = _retag(store, swapped)
    code, d = _gate(dagseal, built, "fetch", f"oci:{store}:{NAME}", tmp_path / "state", "--platform",
                    "linux/arm64", "--dest", tmp_path / "bundle")
    assert (code, d["check"], d["digest"]) == (3, "signature", moved)
    assert not (tmp_path / "bundle").exists()


def test_child_served_with_other_bytes_is_refused(dagseal, built, tmp_path):
    store = _copy_store(built, tmp_path)
    arm = built.result["platforms"]["linux/arm64"]
    other = _child(store, arm, **{"org.opencontainers.image.source": "https://evil.example/x"})
    blob = store / "blobs" / "sha256" / arm[7:]
    blob.chmod(0o644)
    blob.write_bytes(other.raw)  # the signed index is intact; the store swaps the child's bytes
    code, d = _gate(dagseal, built, "verify", f"oci:{store}:{NAME}", tmp_path / "state", "--platform", "linux/arm64")
    assert (code, d["check"]) == (3, "blob-digest"), d
    code, d = _gate(dagseal, built, "verify", f"oci:{store}:{NAME}", tmp_path / "state", "--platform", "linux/amd64")
    assert code == 0, d  # the other platform's child is untouched


@pytest.mark.parametrize("key,value,check", [(ANN_TEAM, "team_b", "team"),
                                             ("io.dagseal.bundle", "team_a_other", "bundle"),
                                             ("io.dagseal.lock.digest", "sha256:" + "0" * 64, "bundle")])
def test_signed_index_whose_child_disagrees_is_refused(dagseal, built, tmp_path, key, value, check):
    store = _copy_store(built, tmp_path)
    signed = _index(built).parsed
    arm = signed.manifests[1]
    other = _child(store, arm.digest, **{key: value})
    mixed = signed.model_copy(update={"manifests": [signed.manifests[0], arm.model_copy(
        update={"digest": other.digest, "size": len(other.raw)})]})
    _retag(store, mixed)
    ref = f"oci:{store}:{NAME}"
    refused = dagseal("sign", ref, "--key", built.org.private_keys[TEAM], "--specs", built.org.specs, "--json")
    assert refused.code == 3 and refused.json_lines[0]["check"] == check, refused.stdout
    assert key in refused.json_lines[0]["message"]
    _sign_bypassing_preflight(built, store, ref)  # a careless or hostile signer: the gate must still refuse
    code, d = _gate(dagseal, built, "fetch", ref, tmp_path / "state", "--platform", "linux/arm64",
                    "--dest", tmp_path / "bundle")
    assert (code, d["check"]) == (3, check), d
    assert key in d["reason"] and repr(value) in d["reason"]
    assert not (tmp_path / "bundle").exists()


def test_nested_index_child_is_refused(dagseal, built, tmp_path):
    store = _copy_store(built, tmp_path)
    signed = _index(built).parsed
    nested = encode(Index(schemaVersion=2, manifests=[signed.manifests[1]], annotations=signed.annotations))
    LayoutStore(store).put_manifest(f"{TEAM}/{BUNDLE}", nested)
    arm = signed.manifests[1]
    outer = signed.model_copy(update={"manifests": [signed.manifests[0], arm.model_copy(
        update={"digest": nested.digest, "size": len(nested.raw), "media_type": OCI_INDEX})]})
    _retag(store, outer)
    ref = f"oci:{store}:{NAME}"
    refused = dagseal("sign", ref, "--key", built.org.private_keys[TEAM], "--specs", built.org.specs, "--json")
    assert refused.code == 3 and refused.json_lines[0]["check"] == "manifest-format", refused.stdout
    _sign_bypassing_preflight(built, store, ref)
    code, d = _gate(dagseal, built, "verify", ref, tmp_path / "state", "--platform", "linux/arm64")
    assert (code, d["check"]) == (3, "manifest-format") and "nested" not in d["reason"] and "is an index" in d["reason"]


def test_copy_carries_the_index_children_and_signature(dagseal, built, tmp_path):
    dst = f"oci:{tmp_path / 'copy'}:{NAME}"
    result = dagseal("copy", built.ref, dst, "--json")
    assert result.code == 0, result.stdout + result.stderr
    for platform in PLATFORMS:
        code, d = _gate(dagseal, built, "verify", dst, tmp_path / "state", "--platform", platform)
        assert code == 0 and d["manifest"] == built.result["platforms"][platform], d


def test_pinned_index_starts_from_the_cache_without_the_store(dagseal, built, tmp_path):
    store = _copy_store(built, tmp_path)
    pinned = f"oci:{store}:{TEAM}/{BUNDLE}@{built.result['digest']}"
    state = tmp_path / "state"
    code, d = _gate(dagseal, built, "fetch", pinned, state, "--platform", "linux/arm64", "--dest", tmp_path / "b")
    assert code == 0, d
    shutil.rmtree(store)  # from now on every byte must come from the cache (index re-hashed, signature re-verified)
    code, d = _gate(dagseal, built, "verify", pinned, state, "--platform", "linux/arm64")
    assert code == 0 and d["manifest"] == built.result["platforms"]["linux/arm64"] and not d["materialised"], d
    kept = state / "cache" / "indexes" / f"{built.result['digest'][7:]}.json"
    kept.chmod(0o644)
    kept.write_bytes(kept.read_bytes() + b" ")
    code, d = _gate(dagseal, built, "verify", pinned, state, "--platform", "linux/arm64")
    assert (code, d["check"]) == (3, "blob-digest") and str(kept) in d["reason"]


@pytest.mark.airflow
@pytest.mark.slow
@pytest.mark.xdist_group("airflow")
def test_airflow_worker_gets_the_index_digest_as_version(airflow_home, built):
    from signing.platforms import host_platform
    from tests.fixtures.airflow import bundle_entry
    from tests.test_airflow import WORKER

    host = str(host_platform())
    if host not in PLATFORMS:
        pytest.skip(f"this machine is {host}")
    index = built.result["digest"]
    config = [bundle_entry(BUNDLE, built.ref, built.policy, TEAM)]
    seen, _log = airflow_home.script(config, WORKER, json.dumps([[BUNDLE, None], [BUNDLE, index]]))
    for got in seen:
        assert got.get("version") == index, got
        assert got["data"]["team"] == TEAM and got["data"]["bundle_version"] == "2026.11.1"
        assert got["path"].endswith(f"/{built.result['platforms'][host][7:]}/tree/dags")
        assert got["files"] and all(f.endswith(".py") for f in got["files"])


def test_build_to_a_registry_then_sign_and_start_arm64_there(dagseal, built, registry_server, tmp_path):
    lines = _build(dagseal, built.org, f"{registry_server.host}/mp-{os.urandom(4).hex()}", built.cache,
                   "--bundle", BUNDLE)
    assert lines[0]["digest"] == built.result["digest"]  # the same index whatever the store
    ref = lines[0]["ref"]
    signed = dagseal("sign", ref, "--key", built.org.private_keys[TEAM], "--specs", built.org.specs, "--json")
    assert signed.code == 0, signed.stdout + signed.stderr
    assert signed.json_lines[0]["digest"] == built.result["digest"]
    code, d = _gate(dagseal, built, "fetch", ref, tmp_path / "state", "--platform", "linux/arm64",
                    "--dest", tmp_path / "bundle")
    assert code == 0 and d["manifest"] == built.result["platforms"]["linux/arm64"], d
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["platform"] == "linux/arm64"
