"""`dagseal build` refusals and failures: each names file/field/reference and the fix, exits with the
documented code, and leaves the store untouched (or readable with no dangling tag)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from registry.layout import LayoutStore
from tests.fixtures.build import assert_store_consistent, copy_org, edit_text, run_build

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def org_dir(tmp_path, locked_org_template) -> Path:
    return copy_org(locked_org_template, tmp_path / "repo")


def _build(specs: Path, store: Path, wheelhouse: Path, *extra) -> tuple[int, list[dict], str]:
    return run_build(specs, "--to", f"oci:{store}", "--cache-dir", store.parent / "cache",
                     "--find-links", wheelhouse, "--offline", *extra)


def _error(lines: list[dict]) -> dict:
    assert len(lines) == 1, lines
    return lines[0]


# -- refused before anything is written ------------------------------------------------------


def test_stale_lock_is_refused_and_no_bundle_is_written(org_dir, tmp_path, build_wheelhouse):
    spec = org_dir / "teams/team_b/team_b_reports.toml"
    edit_text(spec, 'dependencies = ["dagseal_helper"]', 'dependencies = ["dagseal_helper", "dagseal_testdep"]')
    code, lines, _ = _build(org_dir, tmp_path / "store", build_wheelhouse)
    err = _error(lines)
    assert code == 2 and err["exit_code"] == 2
    assert "team_b_reports.lock" in err["message"] and "no longer matches" in err["message"]
    assert "dagseal lock" in err["hint"]
    assert not (tmp_path / "store").exists()  # team_a's bundle (fine) was not written either


def test_missing_lock_is_refused(org_dir, tmp_path, build_wheelhouse):
    (org_dir / "teams/team_a/team_a_analytics.lock").unlink()
    code, lines, _ = _build(org_dir, tmp_path / "store", build_wheelhouse)
    err = _error(lines)
    assert code == 2 and "team_a_analytics.lock does not exist" in err["message"] and "dagseal lock" in err["hint"]
    assert not (tmp_path / "store").exists()


def test_base_outside_allow_list_is_refused(org_dir, tmp_path, build_wheelhouse):
    edit_text(org_dir / "teams/team_a/team_a_analytics.toml", 'base = "scratch"', 'base = "oci:bases:debian:12"')
    code, lines, _ = _build(org_dir, tmp_path / "store", build_wheelhouse)
    text = json.dumps(_error(lines))
    assert code == 2 and "team_a_analytics.toml" in text and "bundle.base" in text and "allowed_bases" in text
    assert not (tmp_path / "store").exists()


def test_missing_source_folder_is_refused(org_dir, tmp_path, build_wheelhouse):
    shutil.rmtree(org_dir / "teams/team_a/team_a_analytics/dags")
    code, lines, _ = _build(org_dir, tmp_path / "store", build_wheelhouse)
    text = json.dumps(_error(lines))
    assert code == 2 and "bundle.source" in text and "does not exist" in text
    assert not (tmp_path / "store").exists()


def test_symlink_out_of_the_dag_folder_is_refused(org_dir, tmp_path, build_wheelhouse):
    link = org_dir / "teams/team_a/team_a_analytics/dags/secrets.py"
    link.symlink_to("/etc/passwd")
    code, lines, _ = _build(org_dir, tmp_path / "store", build_wheelhouse)
    err = _error(lines)
    assert code == 2 and str(link) in err["message"] and "leaves the folder" in err["message"] and err["hint"]
    assert not (tmp_path / "store").exists()


def test_symlink_inside_the_dag_folder_is_kept_as_a_link(org_dir, tmp_path, build_wheelhouse):
    (org_dir / "teams/team_a/team_a_analytics/dags/alias.py").symlink_to("sub/helpers.py")
    code, lines, err = _build(org_dir, tmp_path / "store", build_wheelhouse, "--bundle", "team_a_analytics")
    assert code == 0, err


def test_fifo_in_the_dag_folder_is_refused(org_dir, tmp_path, build_wheelhouse):
    fifo = org_dir / "teams/team_a/team_a_analytics/dags/pipe"
    os.mkfifo(fifo)
    code, lines, _ = _build(org_dir, tmp_path / "store", build_wheelhouse)
    err = _error(lines)
    assert code == 2 and str(fifo) in err["message"] and "remove it" in err["hint"]
    assert not (tmp_path / "store").exists()


def test_to_with_an_image_name_is_refused(org_dir, tmp_path, build_wheelhouse):
    code, lines, _ = _build(org_dir, tmp_path / "store", build_wheelhouse, "--to", f"oci:{tmp_path}/x:team_a/y:1")
    err = _error(lines)
    assert code == 2 and "--to" in err["message"] and "drop the image name" in err["hint"]


def test_no_matching_bundle_is_refused(org_dir, tmp_path, build_wheelhouse):
    code, lines, _ = _build(org_dir, tmp_path / "store", build_wheelhouse, "--team", "team_zzz")
    assert code == 2 and "team_zzz" in _error(lines)["message"]


def test_unpinned_registry_base_is_refused(org_dir, tmp_path, build_wheelhouse):
    edit_text(org_dir / "org.toml", 'allowed_bases = ["scratch"]', 'allowed_bases = ["scratch", "registry.example.com/base/debian:12"]')
    edit_text(org_dir / "teams/team_a/team_a_analytics.toml", 'base = "scratch"', 'base = "registry.example.com/base/debian:12"')
    code, lines, _ = _build(org_dir, tmp_path / "store", build_wheelhouse)
    err = _error(lines)
    assert code == 2 and "bundle.base" in err["message"] and "not pinned by digest" in err["message"]
    assert "@sha256:" in err["hint"]
    assert not (tmp_path / "store").exists()


def test_uv_failure_mid_build_writes_nothing(org_dir, tmp_path, build_wheelhouse, monkeypatch):
    partial = tmp_path / "partial-wheelhouse"
    partial.mkdir()
    for wheel in build_wheelhouse.glob("dagseal_helper-*.whl"):
        shutil.copy(wheel, partial)  # dagseal_testdep is missing
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "empty-uv-cache"))
    code, lines, _ = _build(org_dir, tmp_path / "store", partial, "--bundle", "team_a_analytics")
    err = _error(lines)
    assert code == 1 and err["error"] == "ToolError" and "dagseal-testdep" in err["message"].lower().replace("_", "-")
    assert not (tmp_path / "store").exists()
    assert not list((tmp_path / "cache" / "tmp").iterdir())  # the half-installed tree was removed


# -- failures while writing the store --------------------------------------------------------


def test_failed_store_write_leaves_previous_tags_and_no_dangling_tag(org_dir, tmp_path, build_wheelhouse):
    store = tmp_path / "store"
    code, first, err = _build(org_dir, store, build_wheelhouse, "--bundle", "team_a_analytics")
    assert code == 0, err
    edit_text(org_dir / "teams/team_a/team_a_analytics.toml", 'version = "2026.11.1"', 'version = "2026.11.2"')
    # learn the new manifest's digest from a build elsewhere (builds are reproducible) ...
    code, probe, err = _build(org_dir, tmp_path / "probe" / "store", build_wheelhouse, "--bundle", "team_a_analytics")
    assert code == 0, err
    # ... and make its blob path unwritable in the real store: a real write failure at the last step
    (store / "blobs" / "sha256" / probe[0]["digest"].split(":")[1]).mkdir()
    code, lines, _ = _build(org_dir, store, build_wheelhouse, "--bundle", "team_a_analytics")
    err = _error(lines)
    assert code == 4 and err["error"] == "StorageError" and str(store) in err["message"] and err["hint"]
    assert assert_store_consistent(store) == ["team_a/team_a_analytics:2026.11.1"]
    assert LayoutStore(store).resolve("team_a/team_a_analytics", "2026.11.1").digest == first[0]["digest"]


def test_build_killed_midway_leaves_the_store_readable(org_dir, tmp_path, build_wheelhouse):
    store, cache = tmp_path / "store", tmp_path / "cache"
    code, first, err = _build(org_dir, store, build_wheelhouse)  # a store with content to protect
    assert code == 0, err
    dags = org_dir / "teams/team_a/team_a_analytics/dags"
    (dags / "big.bin").write_bytes(random.Random(7).randbytes(48 << 20))  # slow enough to be caught mid-write
    edit_text(org_dir / "teams/team_a/team_a_analytics.toml", 'version = "2026.11.1"', 'version = "2026.11.2"')
    cmd = [sys.executable, "-m", "bundler.cli", "build", "--json", "--specs", str(org_dir), "--to", f"oci:{store}",
           "--cache-dir", str(cache), "--find-links", str(build_wheelhouse), "--offline"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not list((cache / "tmp").glob("layer-*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # it really was interrupted, not finished
    assert sorted(assert_store_consistent(store)) == ["team_a/team_a_analytics:2026.11.1", "team_b/team_b_reports:2026.11.1"]
    code, again, err = _build(org_dir, store, build_wheelhouse)  # and the next build completes
    assert code == 0, err
    assert "team_a/team_a_analytics:2026.11.2" in assert_store_consistent(store)


def test_two_concurrent_builds_share_store_and_cache_safely(org_dir, tmp_path, build_wheelhouse):
    store, cache = tmp_path / "store", tmp_path / "cache"
    cmd = [sys.executable, "-m", "bundler.cli", "build", "--json", "--specs", str(org_dir), "--to", f"oci:{store}",
           "--cache-dir", str(cache), "--find-links", str(build_wheelhouse), "--offline"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    digests = [sorted(json.loads(line)["digest"] for line in out.splitlines()) for out, _ in outputs]
    assert digests[0] == digests[1]
    assert sorted(assert_store_consistent(store)) == ["team_a/team_a_analytics:2026.11.1", "team_b/team_b_reports:2026.11.1"]


def test_several_platforms_build_an_index_of_one_image_each(org_dir, tmp_path, build_wheelhouse):
    from tests.fixtures.build import lock_all

    edit_text(org_dir / "org.toml", 'platforms = ["linux/amd64"]', 'platforms = ["linux/amd64", "linux/arm64"]')
    lock_all(org_dir, build_wheelhouse)
    code, lines, err = _build(org_dir, tmp_path / "store", build_wheelhouse, "--bundle", "team_b_reports")
    assert code == 0, err
    index = LayoutStore(tmp_path / "store").get_manifest("", lines[0]["digest"]).parsed
    assert [(d.platform.os, d.platform.architecture) for d in index.manifests] == [("linux", "amd64"), ("linux", "arm64")]
    for desc, arch in zip(index.manifests, ("amd64", "arm64")):
        manifest = LayoutStore(tmp_path / "store").get_manifest("", desc.digest).parsed
        with LayoutStore(tmp_path / "store").open_blob("", manifest.config) as fh:
            assert json.loads(fh.read())["architecture"] == arch
