"""The embedded store: an OCI image layout folder (`oci:DIR`), one folder for every repository.

Tags are `org.opencontainers.image.ref.name` = `<repository>:<tag>` entries of `index.json`
(skopeo and umoci read the same names). Writes are crash-safe: a blob is streamed to `DIR/.tmp/`,
hashed on the way, fsynced and renamed into `blobs/sha256/`; `index.json` is rewritten to a temp
file and renamed, under a file lock, and only after every blob it names is in place. A crash at
any point leaves the previous index, so no tag ever points at missing content.
"""

from __future__ import annotations

import contextlib
import io
import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

from registry.digest import CHUNK, VerifyingReader, hex_of, is_digest, parse_digest
from registry import layout_index
from registry.errors import BadInput, NotFound, Refused, StorageError
from registry.fsutil import atomic_write
from registry.model import (
    OCI_INDEX,
    Descriptor,
    RawContent,
    canonical_json,
    load_json,
    parse_content,
)
from registry.store import Store, iter_children

if TYPE_CHECKING:
    from filelock import FileLock

LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'
LOCK_NAME = ".dagseal.lock"
TMP_NAME = ".tmp"
MAX_INDEX_BYTES = 64 * 1024 * 1024


class LayoutStore(Store):
    """An OCI image layout folder; created on first write."""

    def __init__(self, root: str | os.PathLike, *, create: bool = True):
        self.root = Path(root)
        self._create = create
        if not create and not (self.root / "index.json").is_file():
            raise NotFound(f"{self.root} is not an OCI image layout (no index.json)",
                           hint="build into it first (dagseal build) or check the path")

    # -- paths ----------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / hex_of(digest)

    def _ensure(self) -> None:
        if (self.root / "oci-layout").is_file():
            return
        if not self._create:
            raise NotFound(f"{self.root} is not an OCI image layout")
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / TMP_NAME).mkdir(exist_ok=True)
        from filelock import FileLock  # lazily: ~10 ms of import that a read-only open never needs

        with FileLock(str(self.root / TMP_NAME / LOCK_NAME)):  # two first writers must not clobber an index
            if not (self.root / "index.json").exists():
                self._write_index([])
            if not (self.root / "oci-layout").exists():
                self._atomic_write(self.root / "oci-layout", LAYOUT_FILE)

    def _atomic_write(self, path: Path, data: bytes) -> None:
        atomic_write(path, data, tmp_dir=self.root / TMP_NAME)

    def _lock(self) -> FileLock:
        from filelock import FileLock

        self._ensure()
        return FileLock(str(self.root / TMP_NAME / LOCK_NAME))

    # -- index ----------------------------------------------------------------------------------
    def _read_index(self) -> list[dict]:
        path = self.root / "index.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return []
        doc = load_json(data, what=f"{path}", limit=MAX_INDEX_BYTES)
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests", []), list):
            raise Refused(f"{path} is not an OCI index", check="manifest-format")
        return [m for m in doc.get("manifests", []) if isinstance(m, dict)]

    def _write_index(self, manifests: list[dict]) -> None:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        self._atomic_write(self.root / "index.json", canonical_json(doc))

    def entries(self) -> Iterator[tuple[str | None, Descriptor]]:
        """(ref name or None, descriptor) for every manifest listed in index.json."""
        return layout_index.entries(self._read_index())

    # -- blobs ----------------------------------------------------------------------------------
    def has_blob(self, repository: str, desc: Descriptor) -> bool:
        try:
            return self.blob_path(desc.digest).stat().st_size == desc.size
        except FileNotFoundError:
            return False

    @contextlib.contextmanager
    def open_blob(self, repository: str, desc: Descriptor) -> Iterator[BinaryIO]:
        try:
            raw = open(self.blob_path(desc.digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {desc.digest} is not in {self.root}") from None
        with VerifyingReader(raw, desc.digest, desc.size) as reader:
            yield reader  # type: ignore[misc]

    def put_blob(self, repository: str, desc: Descriptor, stream: BinaryIO) -> None:
        if self.has_blob(repository, desc):
            return
        self._ensure()
        fd, tmp = tempfile.mkstemp(dir=self.root / TMP_NAME)
        try:
            h = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as fh:
                while chunk := stream.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    if size > desc.size:
                        break
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            got = "sha256:" + h.hexdigest()
            if size != desc.size or got != desc.digest:
                raise Refused(f"blob written to {self.root} hashes to {got} ({size} bytes), "
                              f"descriptor says {desc.digest} ({desc.size} bytes)", check="blob-digest")
            os.chmod(tmp, 0o444)
            os.replace(tmp, self.blob_path(desc.digest))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_blob_bytes(self, desc: Descriptor, data: bytes) -> None:
        import io

        self.put_blob("", desc, io.BytesIO(data))

    def adopt_file(self, path: Path, desc: Descriptor) -> None:
        """Move an already hashed file (e.g. a freshly built layer) into the store without copying.

        The caller computed `desc` while writing `path`; the file must be on the same filesystem."""
        if self.has_blob("", desc):
            os.unlink(path)
            return
        self._ensure()
        os.chmod(path, 0o444)
        os.replace(path, self.blob_path(desc.digest))

    # -- manifests ------------------------------------------------------------------------------
    def resolve(self, repository: str, reference: str) -> Descriptor:
        if is_digest(reference):
            path = self.blob_path(reference)
            if not path.is_file():
                raise NotFound(f"manifest {reference} is not in {self.root}")
            content = self.get_manifest(repository, reference)
            return content.descriptor()
        found = layout_index.find(self._read_index(), repository, reference)
        if found is not None:
            return found
        raise NotFound(f"no tag {layout_index.ref_name(repository, reference)!r} in oci:{self.root}",
                       hint=f"list what is there with `skopeo inspect oci:{self.root}:NAME` or build it first")

    def get_manifest(self, repository: str, digest: str) -> RawContent:
        parse_digest(digest)
        path = self.blob_path(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise NotFound(f"manifest {digest} is not in {self.root}") from None
        with open(path, "rb") as fh:
            reader = VerifyingReader(fh, digest, size, what="manifest")
            data = reader.read(8 * 1024 * 1024)
            reader.read()
        return parse_content(data, what=f"manifest {digest} in {self.root}")

    def put_manifest(self, repository: str, content: RawContent, tag: str | None = None) -> Descriptor:
        missing = [d.digest for d in iter_children(content) if not self.blob_path(d.digest).is_file()]
        if missing:
            raise StorageError(f"refusing to write manifest {content.digest} to {self.root}: "
                               f"blobs {', '.join(missing)} are missing", hint="copy the blobs first")
        desc = content.descriptor()
        self.put_blob(repository, desc, io.BytesIO(content.raw))
        with self._lock():
            updated = layout_index.with_manifest(self._read_index(), desc, repository, tag)
            if updated is not None:
                self._write_index(updated)
        return desc

    def tags(self, repository: str) -> list[str]:
        return layout_index.tags(self._read_index(), repository)

    def repositories(self) -> list[str]:
        return layout_index.repositories(self._read_index())


def open_layout(location: str, *, create: bool = True) -> LayoutStore:
    if not location:
        raise BadInput("an oci: reference needs a folder")
    return LayoutStore(location, create=create)
