"""Area 6: OS-package environments built with buildah on a real Debian base.

Every test here uses real tools: debootstrap (cached base), buildah (vfs, chroot isolation), apt
against this machine's Debian mirror, and skopeo/umoci as independent readers of the result.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from bundler.base import SCRATCH
from bundler.environment import (
    LOG_NAME,
    _exists_in_root,
    build_environment,
    environment_key,
    image_from_store,
)
from bundler.output import Output
from registry.errors import BadInput
from registry.layout import LayoutStore
from tests.fixtures.tools import require_tool

pytestmark = pytest.mark.xdist_group("environment")

LIBPQ = "usr/lib/x86_64-linux-gnu/libpq.so.5"


def base_image(test_base):
    repo, _, tag = test_base.name.rpartition(":")
    return image_from_store(LayoutStore(test_base.layout, create=False), repo, tag, test_base.ref)


def buildah_calls(cache_dir: Path, verb: str | None = None) -> list[list[str]]:
    log = cache_dir / "environments" / LOG_NAME
    if not log.exists():
        return []
    calls = [json.loads(line)["argv"] for line in log.read_text().splitlines()]
    return [c for c in calls if verb is None or c[0] == verb]


def assert_nothing_left(cache_dir: Path) -> None:
    """No environment, no work folder (so no buildah storage, containers or images) after a failure."""
    envs = cache_dir / "environments"
    leftovers = [p.name for p in envs.iterdir() if p.name not in (".work", LOG_NAME) and not p.name.endswith(".lock")]
    assert leftovers == []
    assert list((envs / ".work").iterdir()) == []


class Captured(Output):
    def __init__(self):
        import io

        super().__init__(json_mode=False, stdout=io.StringIO(), stderr=io.StringIO())

    @property
    def text(self) -> str:
        return self.stderr.getvalue()


@pytest.fixture
def libpq_env(libpq_environment):
    return libpq_environment.env, libpq_environment.cache, libpq_environment.log


def test_environment_is_the_base_plus_one_layer(debian_base, libpq_env):
    base = base_image(debian_base)
    env, cache, out = libpq_env
    assert env.layers[:-1] == base.layers and len(env.layers) == 2
    assert env.diff_ids[:-1] == base.diff_ids and len(env.diff_ids) == 2
    assert env.digest != base.digest
    assert env.config["config"]["Env"] == base.config["config"]["Env"]
    assert env.config["config"]["Labels"]["io.dagseal.environment.packages"] == "libpq5"
    assert env.config["rootfs"]["diff_ids"] == env.diff_ids
    assert "installing libpq5" in out
    assert len(buildah_calls(cache, "run")) == 1
    assert_nothing_left_but(cache, env)


def assert_nothing_left_but(cache: Path, env) -> None:
    envs = cache / "environments"
    assert list((envs / ".work").iterdir()) == []  # buildah's storage went with the work folder
    assert [p for p in envs.iterdir() if p.is_dir() and p.name != ".work"] == [env.store.root]


def test_skopeo_and_umoci_read_the_environment_and_find_libpq(libpq_env, tmp_path):
    env, _, _ = libpq_env
    skopeo, umoci = require_tool("skopeo"), require_tool("umoci")
    layout = env.store.root
    inspect = subprocess.run([skopeo, "inspect", f"oci:{layout}:env"], capture_output=True, text=True, check=True)
    assert json.loads(inspect.stdout)["Digest"] == env.digest
    subprocess.run([umoci, "unpack", "--rootless", "--image", f"{layout}:env", str(tmp_path / "bundle")],
                   capture_output=True, text=True, check=True)
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / LIBPQ).exists()
    assert (rootfs / "usr/bin/apt-get").exists()  # the base's files are there too
    assert not [p for p in (rootfs / "var/lib/apt/lists").iterdir() if p.name != "partial"]  # apt lists cleaned


def test_same_inputs_hit_the_cache_without_running_buildah(debian_base, libpq_env):
    env, cache, _ = libpq_env
    before = buildah_calls(cache)
    out = Captured()
    again = build_environment(base_image(debian_base), ["libpq5", "libpq5"], cache_dir=cache, out=out)
    assert again.digest == env.digest and again.layers == env.layers
    assert "cached, buildah not run" in out.text
    assert buildah_calls(cache) == before


def test_base_without_package_manager_is_bad_input_and_leaves_nothing(no_apt_base, tmp_path):
    with pytest.raises(BadInput) as exc:
        build_environment(base_image(no_apt_base), ["libpq5"], cache_dir=tmp_path, out=Captured())
    assert exc.value.exit_code == 2
    assert "bundle.base" in exc.value.message and "no package manager" in exc.value.message
    assert "/usr/bin/apt-get" in exc.value.message
    assert "apt-get" in (exc.value.hint or "")
    assert "run" not in [c[0] for c in buildah_calls(tmp_path)]  # refused before apt ran
    assert_nothing_left(tmp_path)


def test_base_for_another_architecture_is_refused_before_buildah(tmp_path):
    from registry.errors import ToolError
    from tests.fixtures.debian import build_file_only_base

    build_file_only_base(tmp_path / "arm", "armbase:1", architecture="s390x")
    base = image_from_store(LayoutStore(tmp_path / "arm", create=False), "armbase", "1", "oci:arm:armbase:1")
    with pytest.raises(ToolError) as exc:
        build_environment(base, ["libpq5"], cache_dir=tmp_path / "cache", out=Captured())
    assert "linux/s390x" in exc.value.message and "system_packages" in exc.value.message
    assert "linux/s390x machine" in (exc.value.hint or "")
    assert buildah_calls(tmp_path / "cache") == []


def test_scratch_cannot_take_system_packages(tmp_path):
    with pytest.raises(BadInput) as exc:
        build_environment(SCRATCH, ["libpq5"], cache_dir=tmp_path, out=Captured())
    assert exc.value.exit_code == 2 and "'scratch' has no package manager" in exc.value.message
    assert buildah_calls(tmp_path) == []


def test_no_packages_returns_the_base_untouched(debian_base, tmp_path):
    base = base_image(debian_base)
    assert build_environment(base, [], cache_dir=tmp_path, out=Captured()) is base
    assert buildah_calls(tmp_path) == []


def test_key_ignores_package_order_and_follows_base_and_packages():
    base = "sha256:" + "1" * 64
    assert environment_key(base, ["b", "a"]) == environment_key(base, ["a", "b", "a"])
    assert environment_key(base, ["a"]) != environment_key(base, ["a", "b"])
    assert environment_key(base, ["a"]) != environment_key("sha256:" + "2" * 64, ["a"])
    assert environment_key(base, ["a"], 0) != environment_key(base, ["a"], 1700000000)


def test_package_manager_lookup_stays_inside_the_rootfs(tmp_path):
    """A base whose /usr/bin is an absolute link must not borrow the host's apt-get."""
    hostile = tmp_path / "hostile"
    (hostile / "usr").mkdir(parents=True)
    os.symlink("/usr/bin", hostile / "usr" / "bin")  # on the host, /usr/bin/apt-get exists
    os.symlink("/bin", hostile / "bin")
    assert Path("/usr/bin/apt-get").exists()
    assert not _exists_in_root(hostile, "usr/bin/apt-get")
    assert not _exists_in_root(hostile, "bin/sh")

    merged = tmp_path / "merged"  # Debian's merged /usr: bin -> usr/bin, relative or absolute
    (merged / "usr" / "bin").mkdir(parents=True)
    (merged / "usr" / "bin" / "apt-get").write_text("")
    (merged / "usr" / "bin" / "dash").write_text("")
    os.symlink("dash", merged / "usr" / "bin" / "sh")
    os.symlink("/usr/bin", merged / "bin")
    assert _exists_in_root(merged, "usr/bin/apt-get")
    assert _exists_in_root(merged, "bin/sh")

    looping = tmp_path / "loop"
    looping.mkdir()
    os.symlink("b", looping / "a")
    os.symlink("a", looping / "b")
    assert not _exists_in_root(looping, "a/sh")


def test_base_from_a_registry_pinned_by_digest(debian_base, libpq_env, registry_server, tmp_path):
    """A registry base streams (digest-verified) into buildah's input; same digest, same environment."""
    from bundler.environment import _export_base
    from registry.open import open_store

    skopeo = require_tool("skopeo")
    subprocess.run([skopeo, "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                    f"oci:{debian_base.layout}:{debian_base.name}", f"docker://{registry_server.ref('bases/debian:bookworm')}"],
                   capture_output=True, text=True, check=True)
    pinned = registry_server.ref(f"bases/debian@{debian_base.digest}")
    with open_store(pinned) as store:
        remote = image_from_store(store, "bases/debian", debian_base.digest, pinned)
        assert remote.digest == debian_base.digest
        _export_base(remote, tmp_path / "export")
        exported = LayoutStore(tmp_path / "export", create=False)
        assert exported.resolve("", "base").digest == debian_base.digest
        env, cache, _ = libpq_env
        before = buildah_calls(cache)
        from_registry = build_environment(remote, ["libpq5"], cache_dir=cache, out=Captured())
    assert from_registry.digest == env.digest  # keyed by the base's digest, not where it came from
    assert buildah_calls(cache) == before
