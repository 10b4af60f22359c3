"""Bit-reproducible layer tarballs, compressed and hashed in one pass while they are written.

What this guards against: two builds of the same inputs on different machines, in different
folders, with different file mtimes, owners or umask, giving different layer digests. Every entry
is written from a normalised `Entry` (sorted, parent folders emitted, mtime = the build epoch,
uid/gid 0, no user/group names, modes 0755/0644), in PAX format; the gzip header carries no name
and no time, OS byte fixed (`1f8b 0800 00000000 00ff`). The uncompressed stream is
hashed (diff_id) and the compressed stream hashed (digest) as the bytes go by; nothing is re-read.
Source trees are treated as hostile: special files are refused and symlinks may only point inside
the tree they belong to.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal

from registry.errors import BadInput
from registry.model import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor

Codec = Literal["gzip", "zstd"]
BLOCK = 512
BUFFER = 1 << 20  # bytes collected before one compress call (few large calls are fastest)
GZIP_LEVEL = 1  # isal level 1: ~1 GB/s on this machine, ratio close to zlib -6
ZSTD_LEVEL = 3
THREADS = 2  # compression threads; the output is the same for any count (see _HashingSink)
MEDIA_TYPES = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}


@dataclass(frozen=True)
class Entry:
    """One normalised tar entry. `source` is the file to read for regular files."""

    name: str  # path inside the image, no leading slash, no trailing slash
    kind: Literal["dir", "file", "symlink"]
    mode: int = 0o644
    size: int = 0
    source: Path | None = None
    data: bytes | None = None  # in-memory content (metadata files)
    linkname: str = ""


@dataclass(frozen=True)
class LayerFile:
    """A finished layer: the compressed file on disk, its descriptor and its diff_id."""

    path: Path
    descriptor: Descriptor
    diff_id: str


def normal_mode(st_mode: int, kind: str) -> int:
    """Folders 0755; files 0755 if any execute bit is set, else 0644; links 0777."""
    if kind == "dir":
        return 0o755
    if kind == "symlink":
        return 0o777
    return 0o755 if st_mode & 0o111 else 0o644


def _sort_key(name: str) -> tuple[str, ...]:
    return tuple(name.split("/"))


def parent_dirs(prefix: str) -> list[Entry]:
    """Folder entries for `a/b/c` -> `a`, `a/b`, `a/b/c` (so extractors get fixed modes)."""
    parts = [p for p in prefix.strip("/").split("/") if p]
    return [Entry("/".join(parts[: i + 1]), "dir", 0o755) for i in range(len(parts))]


def scan_tree(root: Path, prefix: str, *, what: str = "tree",
              skip: Callable[[str], bool] | None = None) -> list[Entry]:
    """Normalised entries for every file under `root`, placed under `prefix` (with its parents).

    Refuses (BadInput) sockets, fifos and devices, and symlinks that leave `root` or dangle,
    naming the file: they would smuggle host state into a bundle."""
    root = Path(root)
    prefix = prefix.strip("/")
    entries = parent_dirs(prefix)
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if skip and skip(rel):
                if name in dirnames:
                    dirnames.remove(name)
                continue
            full = Path(dirpath) / name
            entries.append(_entry_for(full, f"{prefix}/{rel}", real_root, what))
            if name in dirnames and full.is_symlink():
                dirnames.remove(name)  # os.walk does not follow links; keep it that way
    entries.sort(key=lambda e: _sort_key(e.name))
    return entries


def _entry_for(full: Path, name: str, real_root: Path, what: str) -> Entry:
    st = full.lstat()
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(full)
        resolved = (full.parent / target).resolve()
        if os.path.isabs(target) or not resolved.is_relative_to(real_root) or not resolved.exists():
            raise BadInput(f"{what}: {full} is a symlink to {target!r}, which leaves the folder or does not exist",
                           hint="replace the link with the file itself, or point it inside the folder")
        return Entry(name, "symlink", 0o777, linkname=target)
    if stat.S_ISDIR(st.st_mode):
        return Entry(name, "dir", 0o755)
    if stat.S_ISREG(st.st_mode):
        return Entry(name, "file", normal_mode(st.st_mode, "file"), st.st_size, source=full)
    raise BadInput(f"{what}: {full} is not a regular file, folder or symlink (socket, fifo or device)",
                   hint="remove it from the folder; bundles hold only files")


def listing_digest(entries: Iterable[Entry], *, extra: str = "") -> str:
    """A digest of (name, kind, mode, content hash) of every entry: the DAG layer's cache key.

    Reading and hashing the files is all an unchanged DAG folder costs."""
    h = hashlib.sha256(extra.encode())
    for e in entries:
        if e.kind == "file":
            content = _hash_file(e.source) if e.source else hashlib.sha256(e.data or b"").hexdigest()
        else:
            content = e.linkname
        h.update(f"{e.name}\0{e.kind}\0{e.mode:o}\0{content}\n".encode())
    return "sha256:" + h.hexdigest()


def _hash_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# ID1 ID2 CM=deflate FLG=0 (no name, no comment) MTIME=0 XFL=0 OS=255 (unknown): same on every host
GZIP_HEADER = bytes.fromhex("1f8b08000000000000ff")


class _DigestWriter:
    """Hashes and counts the compressed bytes on their way to the file (called by one thread).

    With `fix_gzip_header`, the first write (the 10-byte gzip header) is replaced by GZIP_HEADER:
    isal 1.9's threaded writer packs OS before XFL (`1f8b0800 00000000 ff00`), i.e. claims a FAT
    file system; we write the header of the gzip spec ourselves."""

    def __init__(self, fh, *, fix_gzip_header: bool = False):
        self._fh = fh
        self.digest = hashlib.sha256()
        self.size = 0
        self._fix_header = fix_gzip_header

    def write(self, data) -> int:
        if self._fix_header:
            self._fix_header = False
            if len(data) != len(GZIP_HEADER) or bytes(data[:4]) != GZIP_HEADER[:4]:
                raise RuntimeError(f"unexpected gzip header from isal: {bytes(data[:16]).hex()}")
            data = GZIP_HEADER
        self.digest.update(data)
        self.size += len(data)
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()


class _HashingSink:
    """File-like target: hashes what is written (diff_id), compresses in parallel, hashes the result.

    Data is handed to the compressor in blocks of exactly BUFFER bytes, so the output depends only
    on the content: isal's threaded gzip compresses each block with the previous 32 KiB as its
    dictionary and zstd's multi-threaded mode cuts jobs by size, and both give the same bytes for
    any thread count (a test checks this), so a build on 2 cores and on 64 cores agree."""

    def __init__(self, fh, codec: Codec, threads: int = 0):
        threads = threads or THREADS
        self._out = _DigestWriter(fh, fix_gzip_header=codec == "gzip")
        self.diff = hashlib.sha256()
        self._buf = bytearray()
        if codec == "gzip":
            from isal import igzip_threaded

            self._comp = igzip_threaded.open(self._out, "wb", compresslevel=GZIP_LEVEL, threads=threads,
                                             block_size=BUFFER)
        else:
            import zstandard

            self._comp = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, threads=threads) \
                .stream_writer(self._out, closefd=False)

    @property
    def digest(self):
        return self._out.digest

    @property
    def size(self) -> int:
        return self._out.size

    def write(self, data) -> None:
        self._buf += data
        if len(self._buf) >= BUFFER:
            self._push(whole_blocks=True)

    def _push(self, *, whole_blocks: bool) -> None:
        end = len(self._buf) - len(self._buf) % BUFFER if whole_blocks else len(self._buf)
        view = memoryview(self._buf)
        for start in range(0, end, BUFFER):
            chunk = bytes(view[start:min(start + BUFFER, end)])
            self.diff.update(chunk)
            self._comp.write(chunk)
        view.release()
        del self._buf[:end]

    def finish(self) -> None:
        self._push(whole_blocks=False)
        self._comp.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._comp.close()


def _header(e: Entry, epoch: int) -> bytes:
    info = tarfile.TarInfo(e.name + ("/" if e.kind == "dir" else ""))
    info.mtime = epoch
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = e.mode
    if e.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif e.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = e.linkname
    else:
        info.type = tarfile.REGTYPE
        info.size = e.size
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _write_file(sink: _HashingSink, e: Entry) -> None:
    if e.data is not None:
        data = e.data
    else:
        assert e.source is not None
        with open(e.source, "rb") as fh:
            data = fh.read(e.size + 1)
    if len(data) != e.size:
        raise BadInput(f"{e.source} changed size while the layer was written ({e.size} -> {len(data)} bytes)",
                       hint="do not modify the folder during a build; run it again")
    sink.write(data)
    pad = -e.size % BLOCK
    if pad:
        sink.write(b"\0" * pad)


def write_layer(entries: list[Entry], out_dir: Path, *, codec: Codec = "gzip", epoch: int = 0,
                progress: Callable[[int], None] | None = None, threads: int = 0) -> LayerFile:
    """Write `entries` (already sorted) as one compressed tar layer into a temp file in `out_dir`.

    The file is complete (flushed and fsynced) before it is returned; on any failure it is removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix="layer-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            sink = _HashingSink(fh, codec, threads)
            try:
                for e in entries:
                    sink.write(_header(e, epoch))
                    if e.kind == "file":
                        _write_file(sink, e)
                        if progress:
                            progress(e.size)
                sink.write(b"\0" * (2 * BLOCK))
            except BaseException:
                sink.abort()  # stops the compression threads
                raise
            sink.finish()
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    desc = Descriptor(mediaType=MEDIA_TYPES[codec], digest="sha256:" + sink.digest.hexdigest(), size=sink.size)
    return LayerFile(Path(tmp), desc, "sha256:" + sink.diff.hexdigest())


def file_entry(name: str, data: bytes, mode: int = 0o644) -> Entry:
    """An in-memory file entry (e.g. bundle.json)."""
    return Entry(name.strip("/"), "file", mode, len(data), data=data)
