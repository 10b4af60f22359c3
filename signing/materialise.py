"""Materialisation: verified image -> read-only bundle tree in a cache keyed by manifest digest.

Guards against:
- tampered blobs: every layer and the config are read through the store's verifying stream, so a
  byte that does not match its digest refuses the image (rule 6), and the tree that got that far
  is thrown away;
- hostile tar entries and bombs: extraction goes through `signing.safetar`;
- half-written trees: layers are extracted into `cache/.tmp-<hex>-<pid>-<rand>/`, the filesystem
  is synced, the tree is made read-only and only then renamed to `cache/<hex>/`. The rename is
  the commit: a process killed at any earlier point leaves only a `.tmp-*` folder, which no start
  ever reads (it is deleted by the next materialisation of that digest);
- duplicate work and races: concurrent starts of one digest on one host take a per-digest file
  lock; the second one finds the committed tree and does nothing.

A multi-platform bundle's tree is keyed by its platform manifest's digest; the verified index's
bytes are kept in `cache/indexes/<hex>.json` (re-hashed on every read) so a pinned or offline
start needs no registry.

An entry holds `manifest.json` (the exact manifest bytes; a start re-hashes them against the
entry's name) and `tree/` = the image's `opt/airflow/bundles/<bundle>/` (dags/, site-packages/,
bundle.json). The cache never vouches for a signature: every start re-verifies (signing.verify).
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from registry.digest import hex_of, sha256_digest
from registry.errors import Refused, StorageError
from registry.model import MAX_CONFIG_BYTES, Manifest, RawContent, load_json, parse_content
from registry.store import Store
from signing.safetar import Budget, LayerExtractor, TarLimits, remove_tree

TREE = "tree"
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file-size limit: storage failures
EARLY_FLUSH_BYTES = 16 << 20
MANIFEST = "manifest.json"
INDEXES = "indexes"  # kept bytes of verified multi-platform indexes (their trees are keyed by child digest)


def bundle_prefix(bundle: str) -> str:
    return f"opt/airflow/bundles/{bundle}/"


@dataclass(frozen=True)
class Entry:
    """A committed cache entry."""

    root: Path
    digest: str
    bundle: str

    @property
    def tree(self) -> Path:
        return self.root / TREE

    @property
    def dags(self) -> Path:
        return self.tree / "dags"

    @property
    def site_packages(self) -> Path:
        return self.tree / "site-packages"


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding `path` once (cheaper than an fsync per extracted file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Cache:
    """The materialised trees of one host (`<state dir>/cache`)."""

    def __init__(self, root: str | os.PathLike, limits: TarLimits | None = None):
        self.root = Path(root)
        self.limits = limits or TarLimits()

    def entry_path(self, digest: str) -> Path:
        return self.root / hex_of(digest)

    def lookup(self, digest: str, bundle: str) -> tuple[Entry, RawContent] | None:
        """The committed entry of `digest` with its manifest re-hashed and parsed, or None."""
        path = self.entry_path(digest)
        try:
            raw = (path / MANIFEST).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if sha256_digest(raw) != digest:
            raise Refused(f"cached manifest in {path} does not hash to {digest}: the cache was tampered with",
                          check="blob-digest", hint=f"delete {path}; the next start materialises it again")
        _check_ours(path)
        if not os.path.lexists(path / TREE):
            return None
        _check_ours(path / TREE)
        return Entry(path, digest, bundle), parse_content(raw, what=f"cached manifest {digest}")

    def index_path(self, digest: str) -> Path:
        return self.root / INDEXES / f"{hex_of(digest)}.json"

    def lookup_index(self, digest: str) -> RawContent | None:
        """The kept bytes of a multi-platform index (re-hashed and parsed), or None. Only the
        bytes are kept: every start re-verifies the index's signature like a manifest's."""
        path = self.index_path(digest)
        try:
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if sha256_digest(raw) != digest:
            raise Refused(f"cached index {path} does not hash to {digest}: the cache was tampered with",
                          check="blob-digest", hint=f"delete {path}; the next online start keeps it again")
        return parse_content(raw, what=f"cached index {digest}")

    def keep_index(self, content: RawContent) -> None:
        """Keep a verified index's bytes, so a pinned or offline start of its platform's cached tree
        needs no registry (written to a temp file and renamed: never half-written)."""
        from registry.fsutil import atomic_write

        path = self.index_path(content.digest)
        if path.is_file():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, content.raw, mode=0o444)

    def materialise(self, store: Store, repository: str, content: RawContent, bundle: str) -> tuple[Entry, bool]:
        """The entry of `content`, extracting it once (under the per-digest lock) if absent;
        the flag says whether this call extracted it (False: another start already had)."""
        from signing.state import file_lock

        digest = content.digest
        found = self.lookup(digest, bundle)
        if found:
            return found[0], False
        self.root.mkdir(parents=True, exist_ok=True)
        with file_lock(self.root / f".{hex_of(digest)}.lock"):
            found = self.lookup(digest, bundle)
            if found:
                return found[0], False
            for stale in self.root.glob(f".tmp-{hex_of(digest)}-*"):
                remove_tree(stale)  # a killed process's leftovers; never read
            tmp = self.root / f".tmp-{hex_of(digest)}-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                self._extract(store, repository, content, bundle, tmp).seal()
                (tmp / MANIFEST).write_bytes(content.raw)
                os.chmod(tmp, 0o555)  # sealed like its tree, whatever the umask (see _check_ours)
                _syncfs(tmp)
                remove_tree(self.entry_path(digest))  # an incomplete entry (tampered cache) is replaced
                os.rename(tmp, self.entry_path(digest))
                _fsync_dir(self.root)
            except BaseException as exc:
                remove_tree(tmp)
                if isinstance(exc, OSError) and exc.errno in _FULL:
                    raise StorageError(f"cannot materialise {digest} into {self.root}: {exc.strerror}",
                                       hint="free space in the state dir (or raise its quota / file-size limit); "
                                            "nothing was half-written") from None
                raise
        return Entry(self.entry_path(digest), digest, bundle), True

    def _extract(self, store: Store, repository: str, content: RawContent, bundle: str, tmp: Path) -> LayerExtractor:
        manifest = content.parsed
        if not isinstance(manifest, Manifest):
            raise Refused(f"{content.digest} is an index, not an image manifest", check="manifest-format",
                          hint="reference the platform's image manifest, not the index")
        diff_ids = _check_config(store, repository, manifest)
        extractor = LayerExtractor(tmp / TREE, bundle_prefix(bundle), Budget(self.limits))
        flushes: list[threading.Thread] = []
        try:
            for i, layer in enumerate(manifest.layers):
                with store.open_blob(repository, layer) as stream:
                    diff_id = extractor.extract(stream, layer.media_type, what=f"layer {i} ({layer.digest})")
                _check_diff_id(i, layer.digest, diff_id, diff_ids[i])
                if i < len(manifest.layers) - 1 and layer.size > EARLY_FLUSH_BYTES:
                    # start flushing a big layer while the next ones extract; the final syncfs
                    # (before the commit) then has little left to write
                    flushes.append(threading.Thread(target=_syncfs, args=(tmp,), daemon=True))
                    flushes[-1].start()
            extractor.finish()
        finally:
            for thread in flushes:
                thread.join()
        if not (tmp / TREE / "dags").is_dir():
            raise Refused(f"image {content.digest} has no opt/airflow/bundles/{bundle}/dags folder",
                          check="bundle", hint="the image was not built by dagseal build for this bundle")
        return extractor


def _check_ours(path: Path) -> None:
    """Stops a tree planted by another local user: the manifest bytes are public, so a folder named
    after the digest holding them proves nothing about the tree beside it. A cache entry counts
    only if it is a real folder owned by this user and writable by nobody else."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022:
        return
    why = ("is not a folder" if not stat.S_ISDIR(st.st_mode) else
           f"is owned by uid {st.st_uid}, not by this user ({os.geteuid()})" if st.st_uid != os.geteuid() else
           f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})")
    raise Refused(f"cache entry {path} {why}: it may have been planted, so its files are not used", check="cache",
                  hint=f"delete {path} and keep the state dir writable only by the user running dagseal")


def _check_config(store: Store, repository: str, manifest: Manifest) -> list[str]:
    """Rule 6 for the config blob: read it through the verifying stream (bounded), parse it, and
    return its diff_ids, one per layer (a config that lists other layers describes another image
    than the one dagseal extracts: docker or containerd would run something else)."""
    desc = manifest.config
    if desc.size > MAX_CONFIG_BYTES:
        raise Refused(f"image config is {desc.size} bytes, more than {MAX_CONFIG_BYTES}", check="manifest-format")
    with store.open_blob(repository, desc) as stream:
        data = b""
        while chunk := stream.read(desc.size + 1 - len(data)):
            data += chunk
        stream.read()
    config = load_json(data, what=f"image config {desc.digest}", limit=MAX_CONFIG_BYTES)
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if (not isinstance(diff_ids, list) or len(diff_ids) != len(manifest.layers)
            or not all(isinstance(d, str) for d in diff_ids)):
        found = f"{len(diff_ids)} diff_ids" if isinstance(diff_ids, list) else "no rootfs.diff_ids list"
        raise Refused(f"image config {desc.digest} has {found} for {len(manifest.layers)} layers",
                      check="manifest-format", hint="rebuild the image with dagseal build")
    return diff_ids


def _check_diff_id(i: int, layer_digest: str, got: str, expected: str) -> None:
    """Stops a config that lies about a layer's uncompressed content (rule 6)."""
    if got != expected:
        raise Refused(f"layer {i} ({layer_digest}) unpacks to {got}, but the image config's diff_ids[{i}] says "
                      f"{expected}", check="blob-digest", hint="rebuild the image with dagseal build")
