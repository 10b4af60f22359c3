"""What `dagseal build` writes is valid OCI for independent tools: skopeo, umoci and buildah."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

from tests.fixtures.build import MODEL_BYTES
from tests.fixtures.tools import require_tool


def _run(*cmd: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return proc


def _name(result: dict) -> str:
    return f"{result['team']}/{result['bundle']}:2026.11.1"


def test_skopeo_inspects_every_image(built_org):
    skopeo = require_tool("skopeo")
    for r in built_org.results:
        info = json.loads(_run(skopeo, "inspect", f"oci:{built_org.store}:{_name(r)}").stdout)
        assert info["Digest"] == r["digest"]
        assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
        assert len(info["Layers"]) == 3
        raw = json.loads(_run(skopeo, "inspect", "--raw", f"oci:{built_org.store}:{_name(r)}").stdout)
        assert raw["annotations"]["io.dagseal.team"] == r["team"]


def test_umoci_unpacks_every_image_with_dags_and_site_packages(built_org, tmp_path):
    umoci = require_tool("umoci")
    for r in built_org.results:
        out = tmp_path / r["bundle"]
        _run(umoci, "unpack", "--rootless", "--image", f"{built_org.store}:{_name(r)}", str(out))
        tree = out / "rootfs" / "opt" / "airflow" / "bundles" / r["bundle"]
        assert (tree / "dags" / f"{r['bundle']}_dag.py").read_text().startswith(f"# DAG of {r['bundle']}")
        assert (tree / "dags" / "sub" / "helpers.py").is_file()
        assert (tree / "site-packages" / "dagseal_helper.py").is_file()
        assert json.loads((tree / "bundle.json").read_text())["bundle"] == r["bundle"]
        assert (tree / "dags" / "run.sh").stat().st_mode & 0o111
        model = tree / "dags" / "data" / "model.bin"
        assert model.read_bytes() == random.Random(r["bundle"]).randbytes(MODEL_BYTES)  # a multi-block layer
    team_a = tmp_path / "team_a_analytics" / "rootfs" / "opt/airflow/bundles/team_a_analytics"
    assert (team_a / "site-packages" / "dagseal_testdep" / "__init__.py").read_text().startswith("VALUE = 42")


def test_buildah_accepts_every_image(built_org, tmp_path):
    buildah = require_tool("buildah")
    base = [buildah, "--root", str(tmp_path / "root"), "--runroot", str(tmp_path / "runroot"), "--storage-driver", "vfs"]
    try:
        for i, r in enumerate(built_org.results):
            container = f"c{i}"
            _run(*base, "from", "--name", container, f"oci:{built_org.store}:{_name(r)}")
            mount = _run(*base, "mount", container).stdout.strip()
            tree = Path(mount) / "opt/airflow/bundles" / r["bundle"]
            assert (tree / "dags" / f"{r['bundle']}_dag.py").is_file()
            assert (tree / "site-packages" / "dagseal_helper.py").is_file()
            env = json.loads(_run(*base, "inspect", "--type", "container", container).stdout)["OCIv1"]["config"]["Env"]
            assert f"PYTHONPATH=/opt/airflow/bundles/{r['bundle']}/site-packages" in env
    finally:
        subprocess.run([*base, "rm", "--all"], capture_output=True)
        subprocess.run([*base, "rmi", "--all", "--force"], capture_output=True)


def test_zstd_images_are_read_by_skopeo_and_buildah(built_org, tmp_path):
    """`--zstd` layers (umoci 0.4.7 cannot unpack zstd at all, so it is not asked here)."""
    from tests.fixtures.build import copy_org, run_build

    skopeo, buildah = require_tool("skopeo"), require_tool("buildah")
    specs = copy_org(built_org.specs, tmp_path / "repo")
    store = tmp_path / "zstd"
    code, lines, err = run_build(specs, "--to", f"oci:{store}", "--cache-dir", tmp_path / "cache", "--zstd",
                                 "--find-links", built_org.wheelhouse, "--offline", "--bundle", "team_b_reports")
    assert code == 0, err
    name = f"oci:{store}:team_b/team_b_reports:2026.11.1"
    raw = json.loads(_run(skopeo, "inspect", "--raw", name).stdout)
    assert {layer["mediaType"] for layer in raw["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    base = [buildah, "--root", str(tmp_path / "root"), "--runroot", str(tmp_path / "runroot"), "--storage-driver", "vfs"]
    try:
        _run(*base, "from", "--name", "z", name)
        mount = Path(_run(*base, "mount", "z").stdout.strip())
        assert (mount / "opt/airflow/bundles/team_b_reports/site-packages/dagseal_helper.py").is_file()
        model = mount / "opt/airflow/bundles/team_b_reports/dags/data/model.bin"
        assert model.read_bytes() == random.Random("team_b_reports").randbytes(MODEL_BYTES)
    finally:
        subprocess.run([*base, "rm", "--all"], capture_output=True)
        subprocess.run([*base, "rmi", "--all", "--force"], capture_output=True)
