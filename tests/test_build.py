"""`dagseal build`: the image format, reproducibility, the cache and store writes (real uv, real files)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from registry.layout import LayoutStore
from registry.model import (
    ANN_BUNDLE,
    ANN_CREATED,
    ANN_LOCK_DIGEST,
    ANN_REVISION,
    ANN_SOURCE,
    ANN_SPEC_DIGEST,
    ANN_TEAM,
    ANN_VERSION,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
)
from tests.fixtures.build import BUILD_VARIABLES, copy_org, run_build

ROOT = Path(__file__).resolve().parent.parent


def _blob(store: Path, digest: str) -> bytes:
    return (store / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def _manifest(store: Path, digest: str) -> dict:
    return json.loads(_blob(store, digest))


def _layer_members(store: Path, desc: dict) -> list[tarfile.TarInfo]:
    data = _blob(store, desc["digest"])
    if desc["mediaType"] == OCI_LAYER_ZSTD:
        import zstandard

        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    else:
        data = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getmembers()


def _build(specs: Path, store: Path, cache: Path, wheelhouse: Path, *extra) -> tuple[int, list[dict], str]:
    return run_build(specs, "--to", f"oci:{store}", "--cache-dir", cache, "--find-links", wheelhouse, "--offline", *extra)


@pytest.fixture
def org_dir(tmp_path, locked_org_template) -> Path:
    """A fresh, locked copy of the test organisation; returns its specs folder."""
    return copy_org(locked_org_template, tmp_path / "repo")


# -- the image format ------------------------------------------------------------------------


def test_build_json_lines_name_each_image(built_org):
    assert {(r["team"], r["bundle"]) for r in built_org.results} == {("team_a", "team_a_analytics"), ("team_b", "team_b_reports")}
    for r in built_org.results:
        assert set(r) == {"team", "bundle", "ref", "digest"}
        assert r["ref"] == f"oci:{built_org.store}:{r['team']}/{r['bundle']}:2026.11.1"
        assert LayoutStore(built_org.store).resolve(f"{r['team']}/{r['bundle']}", "2026.11.1").digest == r["digest"]


def test_manifest_config_and_layers_follow_design(built_org):
    r = built_org.result("team_a_analytics")
    bundle = next(b for b in built_org.org.bundles if b.name == "team_a_analytics")
    manifest = _manifest(built_org.store, r["digest"])
    ann = manifest["annotations"]
    assert set(ann) == {ANN_VERSION, ANN_CREATED, ANN_SOURCE, ANN_REVISION, ANN_TEAM, ANN_BUNDLE, ANN_SPEC_DIGEST, ANN_LOCK_DIGEST}
    assert ann[ANN_TEAM] == "team_a" and ann[ANN_BUNDLE] == "team_a_analytics" and ann[ANN_VERSION] == "2026.11.1"
    assert ann[ANN_SPEC_DIGEST] == bundle.spec_digest
    assert ann[ANN_LOCK_DIGEST] == "sha256:" + hashlib.sha256(bundle.lock_path.read_bytes()).hexdigest()
    assert ann[ANN_CREATED] == "1970-01-01T00:00:00Z"
    config = json.loads(_blob(built_org.store, manifest["config"]["digest"]))
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["config"]["Env"] == ["PYTHONPATH=/opt/airflow/bundles/team_a_analytics/site-packages"]
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"]) == 3
    prefix = "opt/airflow/bundles/team_a_analytics"
    deps, dags, meta = (_layer_members(built_org.store, d) for d in manifest["layers"])
    assert f"{prefix}/site-packages/dagseal_testdep/__init__.py" in {m.name for m in deps}
    assert all(m.name.startswith(f"{prefix}/site-packages") or prefix.startswith(m.name.rstrip("/")) for m in deps)
    assert {f"{prefix}/dags/team_a_analytics_dag.py", f"{prefix}/dags/sub/helpers.py"} <= {m.name for m in dags}
    assert [m.name for m in meta if m.isfile()] == [f"{prefix}/bundle.json"]


def test_bundle_json_records_spec_lock_versions_and_base(built_org):
    r = built_org.result("team_a_analytics")
    meta_desc = _manifest(built_org.store, r["digest"])["layers"][2]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(_blob(built_org.store, meta_desc["digest"])))) as tf:
        doc = json.loads(tf.extractfile("opt/airflow/bundles/team_a_analytics/bundle.json").read())
    assert doc["team"] == "team_a" and doc["bundle"] == "team_a_analytics" and doc["version"] == "2026.11.1"
    assert doc["packages"] == {"dagseal-helper": "2.1.0", "dagseal-testdep": "1.0.0"}
    assert doc["base"] == {"name": "scratch", "digest": None}
    assert doc["spec"]["dependencies"] == ["dagseal_testdep==1.0.0", "dagseal_helper>=2"]
    assert doc["lock_digest"] == _manifest(built_org.store, r["digest"])["annotations"][ANN_LOCK_DIGEST]


def test_layers_are_normalised_tar_with_fixed_gzip_header(built_org):
    manifest = _manifest(built_org.store, built_org.result("team_a_analytics")["digest"])
    config = json.loads(_blob(built_org.store, manifest["config"]["digest"]))
    for desc, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        assert desc["mediaType"] == OCI_LAYER_GZIP
        raw = _blob(built_org.store, desc["digest"])
        # magic, deflate, no flags (no name), mtime 0, xfl 0, OS fixed at 255 (unknown)
        assert raw[:10] == bytes.fromhex("1f8b08000000000000ff")
        assert "sha256:" + hashlib.sha256(gzip.decompress(raw)).hexdigest() == diff_id
        members = _layer_members(built_org.store, desc)
        names = [m.name for m in members]
        assert names == sorted(names, key=lambda n: n.split("/"))
        assert {"opt", "opt/airflow", "opt/airflow/bundles"} <= set(names)  # parents emitted
        for m in members:
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 0)
            assert m.mode == (0o755 if m.isdir() else m.mode)
            assert m.isdir() or m.mode in (0o644, 0o755)
    dags = {m.name: m for m in _layer_members(built_org.store, manifest["layers"][1])}
    assert dags["opt/airflow/bundles/team_a_analytics/dags/run.sh"].mode == 0o755


def test_console_script_shebang_and_record_do_not_name_the_host(built_org):
    manifest = _manifest(built_org.store, built_org.result("team_a_analytics")["digest"])
    data = gzip.decompress(_blob(built_org.store, manifest["layers"][0]["digest"]))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        site = "opt/airflow/bundles/team_a_analytics/site-packages"
        script = tf.extractfile(f"{site}/bin/dagseal-testdep").read()
        record = tf.extractfile(f"{site}/dagseal_testdep-1.0.0.dist-info/RECORD").read().decode()
        names = tf.getnames()
    assert script.startswith(b"#!/usr/bin/env python3.12\n")
    import base64

    want = base64.urlsafe_b64encode(hashlib.sha256(script).digest()).rstrip(b"=").decode()
    assert f"bin/dagseal-testdep,sha256={want},{len(script)}" in record
    assert "uv_cache.json" not in record and not any(n.endswith(("uv_cache.json", "/.lock")) for n in names)


# -- reproducibility -------------------------------------------------------------------------


def _scramble(tree: Path, seed: int) -> None:
    """Different mtimes and owners for every file and folder of `tree`."""
    for i, path in enumerate(sorted(tree.rglob("*"))):
        os.utime(path, (1_600_000_000 + seed * 1000 + i, 1_600_000_000 + seed * 7777 + i), follow_symlinks=False)
        if os.geteuid() == 0:  # only root may give files away (make test runs as root for buildah)
            os.chown(path, 1000 + seed, 2000 + seed, follow_symlinks=False)


def test_two_builds_in_different_folders_give_identical_digests(tmp_path, build_wheelhouse, locked_org_template):
    one = copy_org(locked_org_template, tmp_path / "one" / "checkout")
    two_root = tmp_path / "elsewhere" / "deeper" / "repo"
    shutil.copytree(one.parent, two_root, symlinks=True)
    _scramble(one.parent, 1)
    _scramble(two_root, 2)
    code, first, err = _build(one, tmp_path / "one" / "store", tmp_path / "one" / "cache", build_wheelhouse)
    assert code == 0, err
    # second build: another process, another folder and cwd, umask 077 (uv and our temp files differ in mode)
    cmd = [sys.executable, "-m", "bundler.cli", "build", "--json", "--specs", str(two_root / "specs"),
           "--to", f"oci:{tmp_path / 'two-store'}", "--cache-dir", str(tmp_path / "two-cache"),
           "--find-links", str(build_wheelhouse), "--offline"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=two_root, capture_output=True, text=True, env=env, preexec_fn=lambda: os.umask(0o077))
    assert proc.returncode == 0, proc.stderr
    second = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["bundle"], r["digest"]) for r in first] == [(r["bundle"], r["digest"]) for r in second]


def test_source_date_epoch_sets_every_time(org_dir, tmp_path, build_wheelhouse, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")  # 2026-01-01
    code, results, err = _build(org_dir, tmp_path / "store", tmp_path / "cache", build_wheelhouse, "--bundle", "team_b_reports")
    assert code == 0, err
    manifest = _manifest(tmp_path / "store", results[0]["digest"])
    assert manifest["annotations"][ANN_CREATED] == "2026-01-01T00:00:00Z"
    assert {m.mtime for d in manifest["layers"] for m in _layer_members(tmp_path / "store", d)} == {1767225600}


def test_bad_source_date_epoch_is_refused(org_dir, tmp_path, build_wheelhouse, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    code, lines, _ = _build(org_dir, tmp_path / "store", tmp_path / "cache", build_wheelhouse)
    assert code == 2 and "SOURCE_DATE_EPOCH" in lines[0]["message"] and lines[0]["hint"]
    assert not (tmp_path / "store").exists()


# -- the cache -------------------------------------------------------------------------------


def _cache_state(cache: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (cache / "layers").iterdir()}


def test_unchanged_rebuild_neither_installs_nor_recompresses(org_dir, tmp_path, build_wheelhouse, monkeypatch):
    store, cache = tmp_path / "store", tmp_path / "cache"
    code, first, err = _build(org_dir, store, cache, build_wheelhouse)
    assert code == 0, err
    before = _cache_state(cache)
    # uv now has nothing to install from: an empty cache, no wheelhouse, offline. Running it would fail.
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "empty-uv-cache"))
    code, second, err = run_build(org_dir, "--to", f"oci:{store}", "--cache-dir", cache, "--offline")
    assert code == 0, err
    assert [r["digest"] for r in second] == [r["digest"] for r in first]
    assert _cache_state(cache) == before  # no layer file replaced: nothing recompressed


def test_changing_one_dag_file_rebuilds_only_the_dag_layer(org_dir, tmp_path, build_wheelhouse, monkeypatch):
    store, cache = tmp_path / "store", tmp_path / "cache"
    code, first, err = _build(org_dir, store, cache, build_wheelhouse, "--bundle", "team_a_analytics")
    assert code == 0, err
    (org_dir / "teams/team_a/team_a_analytics/dags/sub/helpers.py").write_text("X = 2\n")
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "empty-uv-cache"))
    code, second, err = run_build(org_dir, "--to", f"oci:{store}", "--cache-dir", cache, "--offline", "--bundle", "team_a_analytics")
    assert code == 0, err
    old, new = (_manifest(store, r[0]["digest"])["layers"] for r in (first, second))
    assert old[0] == new[0] and old[1] != new[1]
    assert LayoutStore(store).resolve("team_a/team_a_analytics", "2026.11.1").digest == second[0]["digest"]


def test_corrupt_cache_record_is_a_miss_not_a_bad_image(org_dir, tmp_path, build_wheelhouse):
    store, cache = tmp_path / "store", tmp_path / "cache"
    code, first, err = _build(org_dir, store, cache, build_wheelhouse)
    assert code == 0, err
    for record in (cache / "layers").glob("*.json"):
        record.write_text("{not json")
    code, second, err = _build(org_dir, tmp_path / "store2", cache, build_wheelhouse)
    assert code == 0, err
    assert [r["digest"] for r in second] == [r["digest"] for r in first]


# -- zstd ------------------------------------------------------------------------------------


def test_zstd_layers_are_zstd_and_hash_to_their_diff_ids(org_dir, tmp_path, build_wheelhouse):
    import zstandard

    store = tmp_path / "store"
    code, results, err = _build(org_dir, store, tmp_path / "cache", build_wheelhouse, "--zstd", "--bundle", "team_b_reports")
    assert code == 0, err
    manifest = _manifest(store, results[0]["digest"])
    config = json.loads(_blob(store, manifest["config"]["digest"]))
    for desc, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        assert desc["mediaType"] == OCI_LAYER_ZSTD
        raw = _blob(store, desc["digest"])
        assert raw[:4] == b"\x28\xb5\x2f\xfd"
        plain = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
        assert "sha256:" + hashlib.sha256(plain).hexdigest() == diff_id
    gz = _build(org_dir, tmp_path / "gz", tmp_path / "cache", build_wheelhouse, "--bundle", "team_b_reports")[1]
    assert gz[0]["digest"] != results[0]["digest"]  # the codec is part of the cache key


def test_default_store_is_the_orgs_embedded_layout_beside_the_specs(org_dir, build_wheelhouse, monkeypatch):
    monkeypatch.chdir(org_dir.parent)
    code, results, err = run_build(Path("specs"), "--find-links", build_wheelhouse, "--offline", "--team", "team_b")
    assert code == 0, err
    assert results == [{"team": "team_b", "bundle": "team_b_reports", "digest": results[0]["digest"],
                        "ref": "oci:.dagseal/store:team_b/team_b_reports:2026.11.1"}]
    assert LayoutStore(org_dir.parent / ".dagseal/store").tags("team_b/team_b_reports") == ["2026.11.1"]
    assert list((org_dir.parent / ".dagseal/cache/layers").glob("*.layer"))


def test_human_output_names_each_image(org_dir, tmp_path, build_wheelhouse, dagseal):
    result = dagseal("build", "--specs", org_dir, "--to", f"oci:{tmp_path / 'store'}", "--cache-dir", tmp_path / "cache",
                     "--find-links", build_wheelhouse, "--offline", "--bundle", "team_b_reports")
    assert result.code == 0, result.stderr
    assert result.stdout.startswith(f"oci:{tmp_path / 'store'}:team_b/team_b_reports:2026.11.1@sha256:")


def test_bundle_without_dependencies_gets_an_empty_site_packages_layer(org_dir, tmp_path, build_wheelhouse):
    from bundler.specs import load_organisation
    from bundler.lock import lock_bundle

    spec = org_dir / "teams/team_b/team_b_reports.toml"
    spec.write_text(spec.read_text().replace('dependencies = ["dagseal_helper"]', "dependencies = []"))
    org = load_organisation(org_dir)
    lock_bundle(org, org.select(bundle="team_b_reports")[0])
    code, results, err = _build(org_dir, tmp_path / "store", tmp_path / "cache", build_wheelhouse, "--bundle", "team_b_reports")
    assert code == 0, err
    deps = _manifest(tmp_path / "store", results[0]["digest"])["layers"][0]
    names = [m.name for m in _layer_members(tmp_path / "store", deps)]
    assert names[-1] == "opt/airflow/bundles/team_b_reports/site-packages" and all(m.isdir() for m in _layer_members(tmp_path / "store", deps))


def test_source_and_revision_come_from_git_without_credentials(org_dir, tmp_path, build_wheelhouse, monkeypatch):
    for name in BUILD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    repo = org_dir.parent
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "remote", "add", "origin", "https://user:s3cret@git.example.com/acme/dags.git"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "specs"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    code, results, err = _build(org_dir, tmp_path / "store", tmp_path / "cache", build_wheelhouse, "--bundle", "team_b_reports")
    assert code == 0, err
    ann = _manifest(tmp_path / "store", results[0]["digest"])["annotations"]
    assert (ann[ANN_SOURCE], ann[ANN_REVISION]) == ("https://git.example.com/acme/dags.git", head)


def test_source_and_revision_from_ci_variables_win(org_dir, tmp_path, build_wheelhouse, monkeypatch):
    for name in BUILD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/team-b-dags")
    monkeypatch.setenv("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567")
    code, results, err = _build(org_dir, tmp_path / "store", tmp_path / "cache", build_wheelhouse, "--bundle", "team_b_reports")
    assert code == 0, err
    ann = _manifest(tmp_path / "store", results[0]["digest"])["annotations"]
    assert ann[ANN_SOURCE] == "https://github.com/acme/team-b-dags"
    assert ann[ANN_REVISION] == "0123456789abcdef0123456789abcdef01234567"
