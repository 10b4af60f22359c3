"""Bases: an OCI layout folder (by tag or digest) and a registry pinned by digest; their layers come
first, their blobs are copied, wrong ones are refused with exit 2."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from registry.layout import LayoutStore
from registry.model import OCI_CONFIG, Descriptor, Manifest, canonical_json, encode
from tests.fixtures.build import assert_store_consistent, copy_org, edit_text, run_build
from tests.fixtures.tools import require_tool


def _build(specs: Path, store: Path, wheelhouse: Path, *extra) -> tuple[int, list[dict], str]:
    return run_build(specs, "--to", f"oci:{store}", "--cache-dir", store.parent / "cache",
                     "--find-links", wheelhouse, "--offline", *extra)


def _error(lines: list[dict]) -> dict:
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def org_dir(tmp_path, locked_org_template) -> Path:
    return copy_org(locked_org_template, tmp_path / "repo")


# -- bases from an OCI layout ----------------------------------------------------------------


def _use_base(org_dir: Path, base: str) -> None:
    edit_text(org_dir / "org.toml", 'allowed_bases = ["scratch"]', f'allowed_bases = ["scratch", "{base}"]')
    edit_text(org_dir / "teams/team_a/team_a_analytics.toml", 'base = "scratch"', f'base = "{base}"')


def test_oci_layout_base_layers_come_first_and_are_copied(org_dir, tmp_path, build_wheelhouse, built_org):
    shutil.copytree(built_org.store, org_dir.parent / "bases")  # relative to the repo root
    base_digest = built_org.result("team_b_reports")["digest"]
    _use_base(org_dir, "oci:bases:team_b/team_b_reports:2026.11.1")
    store = tmp_path / "store"
    code, lines, err = _build(org_dir, store, build_wheelhouse, "--bundle", "team_a_analytics")
    assert code == 0, err
    layout = LayoutStore(store)
    manifest = layout.get_manifest("", lines[0]["digest"]).parsed
    base = LayoutStore(built_org.store).get_manifest("", base_digest).parsed
    assert manifest.layers[:3] == base.layers and len(manifest.layers) == 6
    assert all(layout.has_blob("", d) for d in manifest.layers)
    with layout.open_blob("", manifest.config) as fh:
        config = json.loads(fh.read())
    assert config["config"]["Env"] == ["PYTHONPATH=/opt/airflow/bundles/team_a_analytics/site-packages:"
                                       "/opt/airflow/bundles/team_b_reports/site-packages"]
    assert len(config["rootfs"]["diff_ids"]) == 6 and len(config["history"]) == 6
    assert set(assert_store_consistent(store)) == {"team_a/team_a_analytics:2026.11.1"}


def test_oci_base_pinned_by_digest_works_and_missing_tag_is_refused(org_dir, tmp_path, build_wheelhouse, built_org):
    shutil.copytree(built_org.store, org_dir.parent / "bases")
    digest = built_org.result("team_b_reports")["digest"]
    other = copy_org(org_dir, tmp_path / "other")
    _use_base(org_dir, f"oci:bases@{digest}")
    code, _, err = _build(org_dir, tmp_path / "store", build_wheelhouse, "--bundle", "team_a_analytics")
    assert code == 0, err
    shutil.copytree(built_org.store, other.parent / "bases")
    _use_base(other, "oci:bases:team_b/nothing:1")
    code, lines, _ = _build(other, tmp_path / "store2", build_wheelhouse, "--bundle", "team_a_analytics")
    err = _error(lines)
    assert code == 2 and "bundle.base" in err["message"] and "was not found" in err["message"] and err["hint"]
    assert not (tmp_path / "store2").exists()


def test_base_for_another_platform_is_refused(org_dir, tmp_path, build_wheelhouse, built_org):
    bases = org_dir.parent / "bases"
    shutil.copytree(built_org.store, bases)
    layout = LayoutStore(bases)
    src = layout.get("team_b/team_b_reports", "2026.11.1").parsed
    with layout.open_blob("", src.config) as fh:
        config = json.loads(fh.read())
    config["architecture"] = "arm64"
    raw = canonical_json(config)
    desc = Descriptor(mediaType=OCI_CONFIG, digest="sha256:" + hashlib.sha256(raw).hexdigest(), size=len(raw))
    layout.put_blob_bytes(desc, raw)
    arm = encode(Manifest(schemaVersion=2, config=desc, layers=src.layers))
    layout.put_manifest("team_b/arm", arm, tag="1")
    _use_base(org_dir, "oci:bases:team_b/arm:1")
    code, lines, _ = _build(org_dir, tmp_path / "store", build_wheelhouse, "--bundle", "team_a_analytics")
    err = _error(lines)
    assert code == 2 and "linux/arm64" in err["message"] and "linux/amd64" in err["message"]


def test_registry_base_pinned_by_digest(org_dir, tmp_path, build_wheelhouse, built_org, registry_server):
    digest = built_org.result("team_b_reports")["digest"]
    subprocess.run([require_tool("skopeo"), "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                    f"oci:{built_org.store}:team_b/team_b_reports:2026.11.1",
                    f"docker://{registry_server.host}/bases/reports:1"], check=True, capture_output=True)
    _use_base(org_dir, f"{registry_server.host}/bases/reports@{digest}")
    store = tmp_path / "store"
    code, lines, err = _build(org_dir, store, build_wheelhouse, "--bundle", "team_a_analytics")
    assert code == 0, err
    layout = LayoutStore(store)
    manifest = layout.get_manifest("", lines[0]["digest"]).parsed
    base = LayoutStore(built_org.store).get_manifest("", digest).parsed
    assert manifest.layers[:3] == base.layers
    assert set(assert_store_consistent(store)) == {"team_a/team_a_analytics:2026.11.1"}
