"""Area 6 end to end: `dagseal build` of a bundle with `system_packages` on a real Debian base.

The environment layer comes from buildah (cached by base digest + packages); the dependency, DAG
and metadata layers from the native builder on top. skopeo and umoci read the result.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bundler.environment import LOG_NAME, _timestamp, environment_key
from registry.layout import LayoutStore
from tests.fixtures.build import run_build
from tests.fixtures.debian import make_env_org
from tests.fixtures.tools import require_tool

pytestmark = pytest.mark.xdist_group("environment")

LIBPQ = "usr/lib/x86_64-linux-gnu/libpq.so.5"
DAG = "opt/airflow/bundles/warehouse/dags/warehouse_dag.py"


def buildah_runs(cache: Path) -> int:
    log = cache / "environments" / LOG_NAME
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if json.loads(line)["argv"][0] == "run")


def store_tags(store: Path) -> list[str]:
    if not (store / "index.json").exists():
        return []
    return LayoutStore(store, create=False).tags("team_db/warehouse")


def build(specs: Path, root: Path, wheelhouse: Path, cache: Path | None = None) -> tuple[int, list[dict], str]:
    """(exit code, the built images' JSON lines, stderr plus any JSON error lines as text)."""
    code, lines, err = run_build(specs, "--to", f"oci:{root / 'store'}", "--cache-dir", cache or root / "cache",
                                 "--find-links", wheelhouse, "--offline")
    errors = [line for line in lines if "error" in line]
    return code, [line for line in lines if "digest" in line], err + "".join(json.dumps(e) for e in errors)


@pytest.fixture(scope="module")
def built_env(debian_base, libpq_environment, build_wheelhouse, tmp_path_factory):
    """warehouse (libpq5 + one wheel) built once through `dagseal build`, sharing the build cache
    (`--cache-dir`) in which the session's libpq5 environment already is."""
    root = tmp_path_factory.mktemp("envbuild")
    specs = make_env_org(root, base=debian_base.ref, packages=["libpq5"], dependencies=["dagseal_helper"],
                         wheelhouse=build_wheelhouse)
    code, results, err = build(specs, root, build_wheelhouse, cache=libpq_environment.cache)
    assert code == 0, err
    return root, specs, results[0], libpq_environment


def test_build_puts_libpq_under_the_bundle_layers(built_env, tmp_path):
    root, _, result, environment = built_env
    assert result["team"] == "team_db" and result["bundle"] == "warehouse"
    assert result["ref"].endswith("team_db/warehouse:2026.11.1")
    assert buildah_runs(environment.cache) == 1  # the session's environment, reused
    manifest = LayoutStore(root / "store", create=False).get_manifest("team_db/warehouse", result["digest"]).parsed
    assert manifest.layers[:2] == environment.env.layers
    skopeo, umoci = require_tool("skopeo"), require_tool("umoci")
    layout = f"{root / 'store'}:team_db/warehouse:2026.11.1"
    inspect = subprocess.run([skopeo, "inspect", f"oci:{layout}"], capture_output=True, text=True, check=True)
    info = json.loads(inspect.stdout)
    assert info["Digest"] == result["digest"]
    assert len(info["Layers"]) == 5  # debian, environment, dependencies, DAGs, metadata
    subprocess.run([umoci, "unpack", "--rootless", "--image", layout, str(tmp_path / "b")],
                   capture_output=True, text=True, check=True)
    rootfs = tmp_path / "b" / "rootfs"
    assert (rootfs / LIBPQ).exists()
    assert (rootfs / DAG).read_text().startswith("# DAG of warehouse")
    assert (rootfs / "opt/airflow/bundles/warehouse/site-packages/dagseal_helper.py").exists()
    meta = json.loads((rootfs / "opt/airflow/bundles/warehouse/bundle.json").read_text())
    assert meta["spec"]["system_packages"] == ["libpq5"]


def test_rebuild_is_identical_and_a_dag_change_does_not_run_buildah(built_env, build_wheelhouse):
    root, specs, first, environment = built_env
    code, again, err = build(specs, root, build_wheelhouse, cache=environment.cache)
    assert code == 0, err
    assert again[0]["digest"] == first["digest"]
    dag = specs / "teams" / "team_db" / "warehouse" / "dags" / "warehouse_dag.py"
    dag.write_text(dag.read_text() + "# changed\n")
    code, changed, err = build(specs, root, build_wheelhouse, cache=environment.cache)
    assert code == 0, err
    assert changed[0]["digest"] != first["digest"]
    assert buildah_runs(environment.cache) == 1  # the environment came from the cache both times
    store = LayoutStore(root / "store", create=False)
    old = store.get_manifest("team_db/warehouse", first["digest"]).parsed
    new = store.get_manifest("team_db/warehouse", changed[0]["digest"]).parsed
    assert new.layers[:3] == old.layers[:3] and new.layers[3] != old.layers[3]


def test_fresh_cache_rebuild_gives_the_same_digest(built_env, debian_base, build_wheelhouse, tmp_path):
    """A second machine (empty cache, buildah runs again) gets the same image: --timestamp plus
    removing apt's and dpkg's logs makes buildah's layer reproducible while the mirror is unchanged."""
    _, _, first, _ = built_env
    specs = make_env_org(tmp_path, base=debian_base.ref, packages=["libpq5"], dependencies=["dagseal_helper"],
                         wheelhouse=build_wheelhouse)
    damaged = tmp_path / "cache" / "environments" / environment_key(debian_base.digest, ["libpq5"], _timestamp())
    (damaged / "blobs" / "sha256").mkdir(parents=True)  # e.g. a half-done copy by hand: no index.json
    (damaged / "blobs" / "sha256" / "junk").write_bytes(b"partial")
    code, results, err = build(specs, tmp_path, build_wheelhouse)
    assert code == 0, err
    assert buildah_runs(tmp_path / "cache") == 1
    assert results[0]["digest"] == first["digest"]
    assert not (damaged / "blobs" / "sha256" / "junk").exists()


def assert_refused(code: int, err: str, root: Path, *needles: str) -> None:
    assert code == 2, err
    for needle in needles:
        assert needle in err, err
    assert store_tags(root / "store") == []
    work = root / "cache" / "environments" / ".work"
    assert not work.exists() or list(work.iterdir()) == []


def test_unknown_package_exits_2_and_builds_nothing(debian_base, build_wheelhouse, tmp_path):
    specs = make_env_org(tmp_path, base=debian_base.ref, packages=["libpq5", "dagseal-no-such-package"],
                         wheelhouse=build_wheelhouse)
    code, results, err = build(specs, tmp_path, build_wheelhouse)
    assert results == []
    assert_refused(code, err, tmp_path, "warehouse.toml: bundle.system_packages", "dagseal-no-such-package",
                   "fix the name")
    assert "libpq5" not in err
    assert buildah_runs(tmp_path / "cache") == 1  # apt ran and said no; nothing was committed


def test_base_without_apt_exits_2_and_builds_nothing(no_apt_base, build_wheelhouse, tmp_path):
    specs = make_env_org(tmp_path, base=no_apt_base.ref, packages=["libpq5"], wheelhouse=build_wheelhouse)
    code, results, err = build(specs, tmp_path, build_wheelhouse)
    assert results == []
    assert_refused(code, err, tmp_path, "warehouse.toml: bundle.base", "no package manager", "/usr/bin/apt-get")
    assert buildah_runs(tmp_path / "cache") == 0  # refused after `buildah from`, before apt


def test_scratch_with_system_packages_exits_2(build_wheelhouse, tmp_path):
    specs = make_env_org(tmp_path, base="scratch", packages=["libpq5"], wheelhouse=build_wheelhouse)
    code, results, err = build(specs, tmp_path, build_wheelhouse)
    assert results == []
    assert_refused(code, err, tmp_path, "warehouse.toml: bundle.base", "'scratch' has no package manager")
    assert not (tmp_path / "cache" / "environments" / LOG_NAME).exists()  # buildah never started


def test_base_outside_the_allow_list_exits_2(debian_base, build_wheelhouse, tmp_path):
    specs = make_env_org(tmp_path, base=debian_base.ref, packages=["libpq5"], allowed=["scratch"],
                         wheelhouse=build_wheelhouse)
    code, results, err = build(specs, tmp_path, build_wheelhouse)
    assert results == []
    assert_refused(code, err, tmp_path, "warehouse.toml", "bundle.base", "allowed_bases")
    assert buildah_runs(tmp_path / "cache") == 0
