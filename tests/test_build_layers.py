"""The layer writer and the install normaliser, on their own (real files, no uv)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import tarfile
from pathlib import Path

import pytest

from bundler.install import normalise
from bundler.layers import listing_digest, scan_tree, write_layer
from registry.errors import BadInput


def _tree(root: Path) -> Path:
    rnd = random.Random(1)
    (root / "pkg" / "sub").mkdir(parents=True)
    for i in range(40):
        (root / "pkg" / f"m{i:02d}.py").write_text(f"X = {i}\n" * (i * 50))
    (root / "pkg" / "sub" / "blob.bin").write_bytes(rnd.randbytes(3 << 20))  # several 1 MiB blocks
    (root / "pkg" / "sub" / "text.txt").write_bytes(b"abc" * (1 << 20))
    return root


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_compressed_bytes_do_not_depend_on_thread_count(tmp_path, codec):
    entries = scan_tree(_tree(tmp_path / "src"), "opt/x")
    one = write_layer(entries, tmp_path / "out", codec=codec, threads=1)
    many = write_layer(entries, tmp_path / "out", codec=codec, threads=3)
    assert one.path.read_bytes() == many.path.read_bytes()
    assert (one.descriptor, one.diff_id) == (many.descriptor, many.diff_id)
    assert one.descriptor.digest == "sha256:" + hashlib.sha256(one.path.read_bytes()).hexdigest()
    assert one.descriptor.size == one.path.stat().st_size


def test_gzip_layer_is_one_valid_stream_with_fixed_header(tmp_path):
    entries = scan_tree(_tree(tmp_path / "src"), "opt/x")
    layer = write_layer(entries, tmp_path / "out", codec="gzip", epoch=123)
    raw = layer.path.read_bytes()
    assert raw[:10] == bytes.fromhex("1f8b08000000000000ff")
    plain = gzip.decompress(raw)
    assert layer.diff_id == "sha256:" + hashlib.sha256(plain).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
        members = tf.getmembers()
        assert tf.extractfile("opt/x/pkg/sub/blob.bin").read() == (tmp_path / "src/pkg/sub/blob.bin").read_bytes()
    assert {m.mtime for m in members} == {123}
    assert [m.name for m in members][:3] == ["opt", "opt/x", "opt/x/pkg"]


def test_listing_digest_sees_content_and_mode_but_not_mtime_or_owner(tmp_path):
    src = _tree(tmp_path / "src")
    base = listing_digest(scan_tree(src, "p"))
    os.utime(src / "pkg" / "m01.py", (1, 1))
    if os.geteuid() == 0:
        os.chown(src / "pkg" / "m01.py", 4242, 4242)
    assert listing_digest(scan_tree(src, "p")) == base
    (src / "pkg" / "m01.py").chmod(0o755)
    assert listing_digest(scan_tree(src, "p")) != base
    (src / "pkg" / "m01.py").chmod(0o644)
    (src / "pkg" / "m01.py").write_text("changed\n")
    assert listing_digest(scan_tree(src, "p")) != base


def test_dangling_symlink_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "gone.py").symlink_to("missing.py")
    with pytest.raises(BadInput) as exc:
        scan_tree(src, "p", what="bundle.source")
    assert "gone.py" in exc.value.message and exc.value.exit_code == 2


def test_a_file_that_grows_while_written_is_refused_and_leaves_no_temp_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")
    entries = scan_tree(src, "p")
    (src / "a.py").write_text("x = 1  # longer now\n")
    with pytest.raises(BadInput) as exc:
        write_layer(entries, tmp_path / "out")
    assert "changed size" in exc.value.message and str(src / "a.py") in exc.value.message
    assert list((tmp_path / "out").iterdir()) == []


def test_normalise_never_writes_through_hard_links(tmp_path):
    """uv hard-links files from its cache: rewriting a shebang must not change the cache's copy."""
    cache_copy = tmp_path / "uv-cache-file"
    cache_copy.write_bytes(b"#!/root/.pyenv/versions/3.11.7/bin/python\nimport x\n")
    target = tmp_path / "site"
    (target / "bin").mkdir(parents=True)
    os.link(cache_copy, target / "bin" / "tool")
    dist = target / "x-1.dist-info"
    dist.mkdir()
    (dist / "uv_cache.json").write_text('{"timestamp": 1}')
    (dist / "RECORD").write_text("bin/tool,sha256=old,40\nx-1.dist-info/uv_cache.json,sha256=y,16\nx-1.dist-info/RECORD,,\n")
    (target / ".lock").write_text("")
    normalise(target, python="3.12")
    assert cache_copy.read_bytes().startswith(b"#!/root/.pyenv")
    assert (target / "bin" / "tool").read_bytes() == b"#!/usr/bin/env python3.12\nimport x\n"
    record = (dist / "RECORD").read_text()
    assert "uv_cache.json" not in record and "bin/tool,sha256=old" not in record and "bin/tool,sha256=" in record
    assert not (dist / "uv_cache.json").exists() and not (target / ".lock").exists()
