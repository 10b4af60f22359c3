"""Materialisation: safe tar rules (property-based), the manifest reader (property-based), atomic
commit, crash leftovers, concurrent starts sharing one download, and the cache never being
trusted without re-verifying."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.errors import Refused
from registry.model import OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, parse_content
from signing.safetar import Budget, LayerExtractor, TarLimits
from tests.fixtures.airflow import (
    BUNDLE_A,
    TEAM_A,
    gzip_bytes,
    make_image,
    make_tar,
    oci_ref,
    policy_doc,
    sign_image,
    tar_entry,
)

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# -- property: the tar reader never writes outside its tree and fails only with Refused ----------

_segment = st.sampled_from(["a", "b", "..", ".", "", "p", "dags", "x.py", ".wh.a", ".wh..wh..opq", "/"])
_path = st.lists(_segment, min_size=1, max_size=5).map("/".join)
_entry = st.tuples(
    st.one_of(_path, _path.map(lambda p: "p/" + p)),
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                     tarfile.FIFOTYPE]),
    st.one_of(_path, _path.map(lambda p: "p/" + p), st.just("/etc/passwd")),
    st.sampled_from([0o644, 0o755, 0o4755, 0o2755, 0o1777, 0o000]),
)


def _snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_entry, min_size=1, max_size=8))
def test_tar_reader_never_escapes(entries):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "outside").mkdir()
        (base / "outside" / "keep").write_text("keep")
        before = _snapshot(base / "outside")
        infos = []
        for name, type_, link, mode in entries:
            data = b"data" if type_ == tarfile.REGTYPE else b""
            infos.append((tar_entry(name, data, type_=type_, mode=mode, linkname=link), data))
        try:
            raw = make_tar(infos)
        except (ValueError, tarfile.TarError):
            return  # tarfile itself cannot write this entry
        extractor = LayerExtractor(base / "tree", "p/", Budget(TarLimits()))
        try:
            extractor.extract(io.BytesIO(raw), OCI_LAYER_TAR)
            extractor.finish()
        except Refused as exc:
            assert exc.check in ("tar-entry", "tar-limits")
        assert _snapshot(base / "outside") == before
        assert sorted(p.name for p in base.iterdir()) == ["outside", "tree"]
        real_tree = os.path.realpath(base / "tree")
        for dirpath, dirnames, filenames in os.walk(base / "tree"):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                assert os.path.realpath(path).startswith(real_tree + os.sep) or not os.path.exists(path)
                st_ = os.lstat(path)
                assert not st_.st_mode & 0o6000
                assert not (st_.st_mode & 0o170000) in (0o020000, 0o060000, 0o010000)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from([OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_TAR]))
def test_garbage_layers_are_refused_not_crashes(data, media_type):
    with tempfile.TemporaryDirectory() as tmp:
        extractor = LayerExtractor(Path(tmp) / "tree", "p/", Budget(TarLimits()))
        try:
            extractor.extract(io.BytesIO(data), media_type)
        except Refused as exc:
            assert exc.check in ("tar-entry", "tar-limits")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                         st.sampled_from(["schemaVersion", "mediaType", "config", "layers", "digest", "size",
                                          "manifests", "subject", "annotations", "x"]), inner, max_size=6),
                     max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=512), _json.map(lambda v: json.dumps(v).encode())))
def test_manifest_reader_accepts_or_refuses(data):
    try:
        content = parse_content(data)
    except Refused as exc:
        assert exc.check == "manifest-format"
    else:
        assert content.raw == data


def test_limits_entry_count_and_total_size(tmp_path):
    entries = [(tar_entry(f"p/dags/f{i}.py", b"x" * 100), b"x" * 100) for i in range(20)]
    raw = make_tar(entries)
    small = TarLimits(max_entries=10)
    with pytest.raises(Refused) as exc:
        LayerExtractor(tmp_path / "a", "p/", Budget(small)).extract(io.BytesIO(raw), OCI_LAYER_TAR)
    assert exc.value.check == "tar-limits" and "more than 10 tar entries" in exc.value.message
    with pytest.raises(Refused) as exc:
        LayerExtractor(tmp_path / "b", "p/", Budget(TarLimits(max_total_bytes=4096))).extract(
            io.BytesIO(gzip_bytes(raw)), OCI_LAYER_GZIP)
    assert exc.value.check == "tar-limits" and "more than 4096 bytes" in exc.value.message


def test_whiteouts_and_overrides_apply_in_layer_order(tmp_path):
    ex = LayerExtractor(tmp_path / "t", "p/", Budget())
    ex.extract(io.BytesIO(make_tar([(tar_entry("p/dags/a.py", b"1"), b"1"), (tar_entry("p/dags/b.py", b"1"), b"1"),
                                    (tar_entry("p/sp/x/y.py", b"1"), b"1")])), OCI_LAYER_TAR)
    ex.extract(io.BytesIO(make_tar([(tar_entry("p/dags/.wh.a.py"), b""), (tar_entry("p/dags/b.py", b"2"), b"2"),
                                    (tar_entry("p/sp/.wh..wh..opq"), b""), (tar_entry("p/sp/z.py", b"3"), b"3")])),
               OCI_LAYER_TAR)
    assert _snapshot(tmp_path / "t") == ["dags", "dags/b.py", "sp", "sp/z.py"]
    assert (tmp_path / "t" / "dags" / "b.py").read_bytes() == b"2"


def test_modes_normalised_and_inside_links_kept(tmp_path):
    ex = LayerExtractor(tmp_path / "t", "p/", Budget())
    ex.extract(io.BytesIO(make_tar([(tar_entry("p/bin/tool", b"#!", mode=0o777), b"#!"),
                                    (tar_entry("p/dags/f.py", b"x", mode=0o666), b"x"),
                                    (tar_entry("p/dags/link.py", type_=tarfile.SYMTYPE, linkname="f.py"), b""),
                                    (tar_entry("p/dags/hard.py", type_=tarfile.LNKTYPE, linkname="p/dags/f.py"), b"")])),
               OCI_LAYER_TAR)
    ex.finish()
    t = tmp_path / "t"
    assert os.stat(t / "bin" / "tool").st_mode & 0o777 == 0o555  # created read-only, setuid never kept
    assert os.stat(t / "dags" / "f.py").st_mode & 0o777 == 0o444
    ex.seal()
    assert os.stat(t / "dags").st_mode & 0o777 == 0o555 and os.stat(t).st_mode & 0o777 == 0o555
    assert os.readlink(t / "dags" / "link.py") == "f.py"
    assert os.stat(t / "dags" / "hard.py").st_ino == os.stat(t / "dags" / "f.py").st_ino


# -- cache behaviour through the command line --------------------------------------------------------

def _fetch_args(ref: str, policy: Path, state: Path, dest: Path) -> list[str]:
    return ["fetch", ref, "--team", TEAM_A, "--policy", str(policy), "--state-dir", str(state),
            "--dest", str(dest), "--json"]


def test_cache_is_reverified_every_start(dagseal, gate_layout, gate_keys, gate_policy, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    state = tmp_path / "state"
    first = dagseal(*_fetch_args(oci_ref(image, pinned=True), gate_policy, state, tmp_path / "d1"))
    assert first.code == 0 and first.json_lines[0]["materialised"] is True
    again = dagseal(*_fetch_args(oci_ref(image, pinned=True), gate_policy, state, tmp_path / "d2"))
    assert again.code == 0 and again.json_lines[0]["materialised"] is False
    # the org revokes team_a's key: the cached tree and cached signature no longer start
    doc = policy_doc(gate_keys)
    doc["teams"][TEAM_A]["signers"] = [{"kind": "key", "key_id": gate_keys.key_id("outsider"),
                                        "public_key_pem": gate_keys.pem("outsider")}]
    revoked = tmp_path / "revoked.json"
    revoked.write_text(json.dumps(doc))
    result = dagseal(*_fetch_args(oci_ref(image, pinned=True), revoked, state, tmp_path / "d3"))
    assert result.code == 3 and result.json_lines[0]["check"] == "signer"
    assert not os.path.lexists(tmp_path / "d3")


def test_tampered_cache_entry_is_refused(dagseal, gate_layout, gate_keys, gate_policy, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    state = tmp_path / "state"
    assert dagseal(*_fetch_args(oci_ref(image), gate_policy, state, tmp_path / "d1")).code == 0
    cached = state / "cache" / image.digest.split(":")[1] / "manifest.json"
    cached.write_bytes(cached.read_bytes().replace(b"2026.11.1", b"2026.11.7"))
    result = dagseal(*_fetch_args(oci_ref(image), gate_policy, state, tmp_path / "d2"))
    assert result.code == 3 and result.json_lines[0]["check"] == "blob-digest"
    assert "cache was tampered with" in result.json_lines[0]["reason"]


def test_fetch_never_overwrites_a_real_folder(dagseal, gate_layout, gate_keys, gate_policy, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    (tmp_path / "mine").mkdir()
    result = dagseal(*_fetch_args(oci_ref(image), gate_policy, tmp_path / "state", tmp_path / "mine"))
    assert result.code == 2 and "is not a dagseal symlink" in result.json_lines[0]["message"]


CHILD = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from registry.layout import LayoutStore
    from signing import gate
    from signing.state import HostState
    from signing.trust import load_policy

    class StallingStore(LayoutStore):
        """Crash injection: signals, then hangs while the second layer is being read."""
        calls = 0
        def open_blob(self, repository, desc):
            StallingStore.calls += 1
            if StallingStore.calls == 3:  # config, layer 0, then layer 1
                Path({ready!r}).write_text("extracting")
                time.sleep(600)
            return super().open_blob(repository, desc)

    opts = gate.Options(team="team_a", policy=load_policy({policy!r}), state=HostState({state!r}),
                        opener=lambda ref: StallingStore(ref.location, create=False))
    gate.admit({ref!r}, opts)
''')


def test_killed_start_leaves_nothing_a_later_start_accepts(dagseal, gate_layout, gate_keys, gate_policy, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    state, ready = tmp_path / "state", tmp_path / "ready"
    script = CHILD.format(root=str(ROOT), ready=str(ready), policy=str(gate_policy), state=str(state),
                          ref=oci_ref(image))
    child = subprocess.Popen([PY, "-c", script], stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if ready.exists() or child.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), child.stderr.read().decode() if child.poll() is not None else "child never got there"
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    hexd = image.digest.split(":")[1]
    cache = state / "cache"
    assert not (cache / hexd).exists()  # nothing committed
    assert [p.name for p in cache.iterdir() if p.name.startswith(".tmp-")]  # only a temp leftover
    assert not (state / "accepted").exists() or not list((state / "accepted").rglob("*.json"))
    result = dagseal(*_fetch_args(oci_ref(image), gate_policy, state, tmp_path / "dest"))
    assert result.code == 0 and result.json_lines[0]["materialised"] is True
    assert [p.name for p in cache.iterdir() if p.name.startswith(".tmp-")] == []
    assert (tmp_path / "dest" / "dags" / f"{BUNDLE_A}_dag.py").is_file()


def test_concurrent_starts_share_one_download(gate_layout, gate_keys, gate_policy, tmp_path):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1",
                       site_packages={f"pkg/m{i}.py": os.urandom(20000) for i in range(300)})
    sign_image(image, gate_keys)
    state = tmp_path / "state"
    procs = [subprocess.Popen([PY, "-m", "bundler.cli", *_fetch_args(oci_ref(image), gate_policy, state,
                                                                      tmp_path / f"d{i}")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1].decode()[-2000:] for o in outs]
    decisions = [json.loads(o[0].decode().splitlines()[-1]) for o in outs]
    assert sum(d["materialised"] for d in decisions) == 1
    assert {d["path"] for d in decisions} == {str(state / "cache" / image.digest.split(":")[1] / "tree")}
    assert sorted(p.name for p in (state / "cache").iterdir() if not p.name.endswith(".lock")) == \
        [image.digest.split(":")[1]]


def test_base_image_files_outside_the_bundle_are_checked_not_written(tmp_path):
    """A Debian base layer holds setuid programs, device nodes and absolute symlinks: allowed,
    because nothing outside the bundle prefix reaches the host; traversal is refused anywhere."""
    base = make_tar([(tar_entry("usr/bin/passwd", b"elf", mode=0o4755), b"elf"),
                     (tar_entry("dev/null", type_=tarfile.CHRTYPE), b""),
                     (tar_entry("usr/bin/awk", type_=tarfile.SYMTYPE, linkname="/etc/alternatives/awk"), b""),
                     (tar_entry("p/dags/a.py", b"1"), b"1")])
    ex = LayerExtractor(tmp_path / "t", "p/", Budget())
    ex.extract(io.BytesIO(base), OCI_LAYER_TAR)
    ex.finish()
    assert _snapshot(tmp_path / "t") == ["dags", "dags/a.py"]
    evil = make_tar([(tar_entry("usr/../../etc/x", b"1"), b"1")])
    with pytest.raises(Refused) as exc:
        LayerExtractor(tmp_path / "u", "p/", Budget()).extract(io.BytesIO(evil), OCI_LAYER_TAR)
    assert exc.value.check == "tar-entry" and "'..'" in exc.value.message
