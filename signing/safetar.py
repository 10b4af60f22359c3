"""Safe extraction of hostile OCI layer tarballs into one bundle tree.

A layer is attacker-controlled bytes until proven otherwise. This module extracts only the entries
below the bundle's prefix (`opt/airflow/bundles/<bundle>/`) and refuses, with
`Refused(check="tar-entry")`, any entry that could write outside the tree or smuggle privilege:

- absolute names and `..` components (path traversal, "zip slip");
- symlinks whose target is absolute or resolves outside the tree, and hardlinks to anything
  outside the tree or not yet extracted (link-based escapes, including chains of links: every
  write checks the real path of its parent after resolving links);
- device files, FIFOs and other special types (a tree must hold nothing a process could open as
  a device);
- setuid / setgid bits (privilege escalation of whoever runs the bundle's code).

Entries outside the prefix (a base image's OS files, which may legitimately hold setuid programs,
device nodes and absolute symlinks) are never written to the host, but their names are still
checked, so an absolute name or a traversal anywhere in a layer refuses the image.

Resource limits (`Refused(check="tar-limits")`) stop decompression bombs and inode exhaustion:
total uncompressed bytes, entry count, and the ratio of uncompressed to compressed bytes (checked
continuously while streaming, so a bomb is stopped after `ratio_floor` bytes, not at its end).
Files are created read-only (0444 / 0555), folders end 0555 (`seal`), owners are never applied.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import queue
import shutil
import stat
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NoReturn

from registry.errors import Refused
from registry.model import DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD

CHUNK = 1 << 20
TAR_BUFSIZE = 64 << 10  # tarfile's stream mode re-copies its whole buffer on every read: keep it small
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass(frozen=True)
class TarLimits:
    """Bounds for one image (all its layers together)."""

    max_total_bytes: int = 16 << 30
    max_entries: int = 500_000
    max_ratio: int = 200
    ratio_floor: int = 32 << 20  # the ratio is enforced once this many bytes were decompressed
    max_name_bytes: int = 4096


@dataclass
class Budget:
    """What the layers of one image consumed so far (shared across layers)."""

    limits: TarLimits = field(default_factory=TarLimits)
    entries: int = 0
    bytes_out: int = 0

    def add_entry(self, name: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise Refused(f"image has more than {self.limits.max_entries} tar entries (at {name!r})",
                          check="tar-limits", hint="the bundle is far larger than any DAG bundle; refuse it")

    def add_bytes(self, n: int) -> None:
        self.bytes_out += n
        if self.bytes_out > self.limits.max_total_bytes:
            raise Refused(f"image unpacks to more than {self.limits.max_total_bytes} bytes",
                          check="tar-limits", hint="the bundle is far larger than any DAG bundle; refuse it")


class _Counting:
    """Counts compressed bytes read from the (digest-verifying) layer stream."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class _Bounded:
    """The decompressed stream; refuses once the output outgrows the ratio or the total budget."""

    def __init__(self, inner: BinaryIO, counting: _Counting, budget: Budget, what: str):
        self.inner = inner
        self.counting = counting
        self.budget = budget
        self.what = what
        self.out = 0
        self.hash = hashlib.sha256()  # the layer's diff_id, checked against the image config

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n if n and n > 0 else CHUNK)
        self.hash.update(data)
        self.out += len(data)
        self.budget.add_bytes(len(data))
        limits = self.budget.limits
        if self.out > limits.ratio_floor and self.out > limits.max_ratio * max(self.counting.count, 1):
            raise Refused(f"{self.what} decompresses to more than {limits.max_ratio}x its size "
                          f"({self.out} bytes from {self.counting.count}): a decompression bomb",
                          check="tar-limits", hint="rebuild the image with dagseal build")
        return data


class _Prefetch:
    """Decompresses (and, through the verifying stream below, hashes) on a thread of its own:
    isal, zstandard and hashlib release the GIL, so tar parsing in the caller runs alongside.
    At most `depth` chunks wait in the queue, so memory stays bounded; an error of the producer
    (a refusal of the digest, a bomb) is raised in the reader."""

    def __init__(self, inner: BinaryIO, depth: int = 8):
        self._queue: queue.Queue = queue.Queue(depth)
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(inner,), daemon=True, name="dagseal-decompress")
        self._thread.start()

    def _run(self, inner: BinaryIO) -> None:
        try:
            while not self._stop.is_set():
                data = inner.read(CHUNK)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # noqa: BLE001 (handed to the reader)
            self._put(exc)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1) -> bytes:
        want = n if n is not None and n >= 0 else 1 << 62
        out = []
        while want > 0 and not self._eof:
            if self._pos >= len(self._buf):
                item = self._queue.get()
                if isinstance(item, BaseException):
                    self._eof = True
                    raise item
                if not item:
                    self._eof = True
                    break
                self._buf, self._pos = item, 0
            take = self._buf[self._pos:self._pos + want]
            self._pos += len(take)
            want -= len(take)
            out.append(take)
        return b"".join(out)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


MAX_HEADER_BYTES = 1 << 20
_META_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
               tarfile.GNUTYPE_LONGLINK)


class _BoundedTarInfo(tarfile.TarInfo):
    """Stops memory exhaustion through tar metadata: tarfile reads a PAX extended header or a GNU
    long name/link record into memory whole, whatever size its header claims (a 200 MiB PAX record
    cost 400 MiB of RSS, and 200x compression makes that cheap to send). Such records above
    MAX_HEADER_BYTES are refused before tarfile reads them."""

    def _proc_member(self, tarfile_):  # type: ignore[override]
        if self.type in _META_TYPES and self.size > MAX_HEADER_BYTES:
            raise Refused(f"tar metadata record {self.name!r} (type {self.type!r}) is {self.size} bytes, more than "
                          f"the {MAX_HEADER_BYTES} allowed", check="tar-limits",
                          hint="the layer was not made by dagseal build; do not run it")
        return super()._proc_member(tarfile_)


def _decompressor(media_type: str, counting: _Counting) -> BinaryIO:
    if media_type in (OCI_LAYER_GZIP, DOCKER_LAYER_GZIP):
        from isal import igzip

        return igzip.IGzipFile(fileobj=counting, mode="rb")  # type: ignore[return-value]
    if media_type == OCI_LAYER_ZSTD:
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(counting, read_across_frames=True)  # type: ignore[return-value]
    if media_type == OCI_LAYER_TAR:
        return counting  # type: ignore[return-value]
    raise Refused(f"layer media type {media_type!r} is not one dagseal extracts", check="manifest-format",
                  hint="layers must be OCI tar, tar+gzip or tar+zstd")


def _refuse(name: str, why: str, what: str) -> Refused:
    return Refused(f"{what}: tar entry {name!r} {why}", check="tar-entry",
                   hint="the layer was not made by dagseal build; do not run it")


def clean_name(name: str, what: str, limits: TarLimits) -> str:
    """The entry's normalised relative name; refuses absolute names, `..` and NUL bytes."""
    if len(name.encode("utf-8", "surrogateescape")) > limits.max_name_bytes or "\x00" in name:
        raise _refuse(name[:200], "has an over-long or NUL-containing name", what)
    if name.startswith("/"):
        raise _refuse(name, "is an absolute path", what)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(name, "contains '..' (path traversal)", what)
    return "/".join(parts)


class _Writer:
    """Writes small files on a few threads: creating thousands of files is bound by the latency of
    open() on a busy filesystem, not by bytes. Memory stays bounded (at most `max_inflight` bytes
    queued); a path with a pending write is settled before anything else touches it."""

    def __init__(self, workers: int = 8, max_inflight: int = 32 << 20):
        self.workers = workers
        self.max_inflight = max_inflight
        self.pending: dict[str, object] = {}
        self._pool = None
        self._cond = threading.Condition()
        self._inflight = 0

    def submit(self, dest: Path, data: bytes, mode: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.settle(dest)
        with self._cond:
            while self._inflight and self._inflight + len(data) > self.max_inflight:
                self._cond.wait()
            self._inflight += len(data)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dagseal-extract")
        self.pending[str(dest)] = self._pool.submit(self._write, dest, data, mode)
        if len(self.pending) >= 4096:
            self.drain()

    def _write(self, dest: Path, data: bytes, mode: int) -> None:
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
        finally:
            with self._cond:
                self._inflight -= len(data)
                self._cond.notify_all()

    def settle(self, path: Path) -> None:
        if str(path) in self.pending:
            self.drain()

    def drain(self) -> None:
        """Wait for every queued write; the first failure is raised."""
        pending, self.pending = self.pending, {}
        error: BaseException | None = None
        for fut in pending.values():
            try:
                fut.result()  # type: ignore[attr-defined]
            except BaseException as exc:  # noqa: BLE001 (re-raised below)
                error = error or exc
        if error is not None:
            raise error

    def close(self) -> None:
        try:
            self.drain()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


INLINE_MAX = 8 << 20  # files up to this size go through the writer threads; larger ones stream inline


def _read_member(tar: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    """The member's bytes straight from the stream (tarfile's file object adds three layers of
    Python per read); tarfile skips the padding when it reads the next header."""
    stream = tar.fileobj
    if stream is None or stream.tell() != m.offset_data:  # type: ignore[union-attr]
        src = tar.extractfile(m)
        return src.read() if src is not None else b""
    data = stream.read(m.size)
    if len(data) != m.size:
        raise tarfile.ReadError(f"unexpected end of data in {m.name!r}")
    return data


class LayerExtractor:
    """Applies layers, in order, to `root` (the bundle tree); only names below `prefix` are written."""

    def __init__(self, root: Path, prefix: str, budget: Budget):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.real_root = os.path.realpath(self.root)
        self.prefix = prefix.strip("/") + "/"
        self.budget = budget
        self.symlinks: list[str] = []
        self.writer = _Writer()
        self.root_s = str(self.root)
        self._made: set[str] = set()
        self._made_dirs: list[str] = []
        self._forget_dirs()
        if not os.listdir(self.root_s):
            self._fresh.add(self.root_s)

    # -- one layer --------------------------------------------------------------------------------
    def extract(self, stream: BinaryIO, media_type: str, what: str = "layer") -> str:
        """Apply one layer; returns its diff_id (sha256 of the whole uncompressed tar stream)."""
        counting = _Counting(stream)
        prefetch: _Prefetch | None = None
        try:
            bounded = _Bounded(_decompressor(media_type, counting), counting, self.budget, what)
            prefetch = _Prefetch(bounded)
            with tarfile.open(fileobj=prefetch, mode="r|", bufsize=TAR_BUFSIZE,  # type: ignore[call-overload]
                              tarinfo=_BoundedTarInfo) as tar:
                for member in tar:
                    self._member(tar, member, what)
            while prefetch.read(CHUNK):  # to EOF, so the verifying reader checks the digest
                pass
            prefetch.close()
            while counting.read(CHUNK):
                pass
            self.writer.drain()
            return "sha256:" + bounded.hash.hexdigest()
        except BaseException as exc:
            if prefetch is not None:
                prefetch.close()
            try:
                self.writer.close()  # no thread may write into the tree once we give up on it
            except BaseException:  # noqa: BLE001 (the first error is the one to report)
                pass
            self._translate(exc, what, media_type)

    @staticmethod
    def _translate(exc: BaseException, what: str, media_type: str) -> NoReturn:
        """Refused and our own I/O errors (disk full: errno set) pass through; anything the
        decompressor or tarfile raised about the bytes becomes a refusal of the layer."""
        if isinstance(exc, Refused) or not isinstance(exc, Exception):
            raise exc
        if isinstance(exc, OSError) and exc.errno is not None:
            raise exc
        raise Refused(f"{what} is not a readable {media_type} tar stream: {type(exc).__name__}: {exc}",
                      check="tar-entry", hint="the layer is corrupt or not a tar archive") from None

    def close(self) -> None:
        """Stop the writer threads (after waiting for their writes)."""
        self.writer.close()

    def finish(self) -> None:
        """After the last layer: every symlink must still resolve inside the tree."""
        self.writer.close()
        for rel in self.symlinks:
            path = self.root / rel
            if path.is_symlink() and not self._inside(os.path.realpath(path)):
                raise _refuse(rel, "is a symlink that resolves outside the bundle tree", "image")

    def seal(self) -> None:
        """Make the tree read-only: files were created 0444/0555; folders become 0555 last."""
        for d in sorted(set(self._made_dirs), reverse=True) + [self.root_s]:
            try:
                st = os.lstat(d)
            except FileNotFoundError:
                continue  # removed by a later layer
            if stat.S_ISDIR(st.st_mode):
                os.chmod(d, 0o555)

    # -- entries ----------------------------------------------------------------------------------
    def _member(self, tar: tarfile.TarFile, m: tarfile.TarInfo, what: str) -> None:
        name = clean_name(m.name, what, self.budget.limits)
        self.budget.add_entry(name)
        if not (name + "/").startswith(self.prefix):
            return  # outside the bundle (a base image's OS files): name checked, never written
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()) or m.issparse():
            raise _refuse(m.name, "is a device, FIFO or other special file", what)
        if m.mode & (stat.S_ISUID | stat.S_ISGID):
            raise _refuse(m.name, "has the setuid or setgid bit", what)
        if m.issym() or m.islnk():
            self._check_link_target(m, name, what)
        rel = name[len(self.prefix):]
        if not rel:
            return
        base = posixpath.basename(rel)
        if base.startswith(WHITEOUT):
            self._whiteout(rel, base, what)
            return
        dest = self._dest(rel, what)
        self.writer.settle(dest)
        if m.isdir():
            self._make_dir(dest)
        elif m.isreg():
            self._write_file(tar, m, dest)
        elif m.issym():
            self._symlink(m, dest, rel)
        else:
            self._hardlink(m, dest, what)

    def _check_link_target(self, m: tarfile.TarInfo, name: str, what: str) -> None:
        target = m.linkname
        if not target or "\x00" in target or target.startswith("/"):
            raise _refuse(m.name, f"links to an absolute or empty target {target!r}", what)
        if m.issym():
            joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        else:
            joined = posixpath.normpath(target)
        if joined == ".." or joined.startswith("../"):
            raise _refuse(m.name, f"links to {target!r}, outside the tree", what)
        inside = (joined + "/").startswith(self.prefix)
        if (name + "/").startswith(self.prefix) and not inside:
            raise _refuse(m.name, f"links to {target!r}, outside the bundle tree", what)

    def _inside(self, real: str) -> bool:
        return real == self.real_root or real.startswith(self.real_root + os.sep)

    # Bookkeeping that saves a syscall per path component on trees of thousands of files:
    # `_dirs` holds folders known to be real directories inside the tree (no symlink on the way),
    # `_fresh` the ones this extractor created (so it knows everything they contain: `_made`).
    # Removing any folder forgets both, so a later entry is checked against the disk again.

    def _forget_dirs(self) -> None:
        self._dirs = {self.root_s}
        self._fresh = set()

    def _dest(self, rel: str, what: str) -> str:
        """The path to write `rel` at, creating parent folders one by one; never follows a link
        out of the tree and never creates a folder before checking where it lands."""
        parent_rel, _, _name = rel.rpartition("/")
        parent = os.path.join(self.root_s, parent_rel) if parent_rel else self.root_s
        if parent in self._dirs:
            return os.path.join(self.root_s, rel)
        cur, through_link = self.root_s, False
        for part in parent_rel.split("/"):
            cur = os.path.join(cur, part)
            if cur in self._dirs:
                continue
            self.writer.settle(cur)
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                os.mkdir(cur, 0o755)
                self._made.add(cur)
                self._made_dirs.append(cur)
                if not through_link:
                    self._dirs.add(cur)
                    self._fresh.add(cur)
                continue
            if stat.S_ISDIR(st.st_mode):
                if not through_link:
                    self._dirs.add(cur)
                continue
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(cur)
                if self._inside(real) and os.path.isdir(real):
                    through_link = True
                    continue
                raise _refuse(rel, "would be written through a symlink that leaves the tree", what)
            raise _refuse(rel, f"is below {part!r}, which is not a folder", what)
        if through_link and not self._inside(os.path.realpath(cur)):
            raise _refuse(rel, "would be written through a symlink that leaves the tree", what)
        return os.path.join(self.root_s, rel)

    def _clear(self, dest: str) -> None:
        if os.path.dirname(dest) in self._fresh and dest not in self._made:
            return  # a folder we created holds only what we made: nothing there
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            self.writer.drain()
            shutil.rmtree(dest)
            self._forget_dirs()
        else:
            os.unlink(dest)
        self._made.discard(dest)

    def _make_dir(self, dest: str) -> None:
        if dest in self._dirs:
            return
        try:
            st = os.lstat(dest)
            if stat.S_ISDIR(st.st_mode):
                return
            os.unlink(dest)
        except FileNotFoundError:
            pass
        os.mkdir(dest, 0o755)
        self._made.add(dest)
        self._made_dirs.append(dest)
        if os.path.dirname(dest) in self._dirs:
            self._dirs.add(dest)
            self._fresh.add(dest)

    def _write_file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, dest: str) -> None:
        self._clear(dest)
        mode = 0o555 if m.mode & 0o111 else 0o444  # created read-only: the tree is immutable once committed
        self._made.add(dest)
        if m.size <= INLINE_MAX:
            self.writer.submit(dest, _read_member(tar, m), mode)
            return
        src = tar.extractfile(m)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "wb") as out:
            if src is not None:
                shutil.copyfileobj(src, out, CHUNK)
            os.fchmod(out.fileno(), mode)

    def _symlink(self, m: tarfile.TarInfo, dest: str, rel: str) -> None:
        self._clear(dest)
        os.symlink(m.linkname, dest)
        self._made.add(dest)
        self.symlinks.append(rel)

    def _hardlink(self, m: tarfile.TarInfo, dest: str, what: str) -> None:
        target_rel = posixpath.normpath(m.linkname)[len(self.prefix):]
        target = os.path.join(self.root_s, target_rel)
        self.writer.settle(target)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            raise _refuse(m.name, f"is a hardlink to {m.linkname!r}, which is not in the tree", what) from None
        if not stat.S_ISREG(st.st_mode) or not self._inside(os.path.realpath(os.path.dirname(target))):
            raise _refuse(m.name, f"is a hardlink to {m.linkname!r}, which is not a regular file in the tree", what)
        self._clear(dest)
        os.link(target, dest, follow_symlinks=False)
        self._made.add(dest)

    def _whiteout(self, rel: str, base: str, what: str) -> None:
        self.writer.drain()
        parent = posixpath.dirname(rel)
        folder = os.path.dirname(self._dest(posixpath.join(parent, "x"), what))
        if base == OPAQUE:
            for child in os.listdir(folder):
                self._clear(os.path.join(folder, child))
            return
        victim = base[len(WHITEOUT):]
        if victim in ("", ".", ".."):
            raise _refuse(rel, "is a malformed whiteout", what)
        self._clear(os.path.join(folder, victim))


def remove_tree(root: Path) -> None:
    """Delete a (possibly read-only) tree, e.g. a half-written temp folder of a killed process.

    A symlink or file at `root` is unlinked, never followed, and folders are made writable through
    O_NOFOLLOW descriptors: a link planted in the cache (`cache/<hex>` -> /etc) must not make
    dagseal chmod or delete anything outside the cache."""
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(root)
        return
    for dirpath, _dirs, _files in os.walk(root):  # followlinks=False: nested links are not entered
        try:
            fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            os.fchmod(fd, 0o755)
        except OSError:
            pass
        finally:
            os.close(fd)
    shutil.rmtree(root, ignore_errors=True)
