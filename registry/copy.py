"""Copy an image and everything that refers to it between any two stores, digests unchanged.

Order (so a reader of the destination never sees a tag or referrer whose content is missing):
blobs (in parallel, skipping what the destination has, mounting within one registry), then child
manifests of an index, then the top manifest with its tag, then referrers (each referrer's blobs
first), recursively: referrers of referrers (e.g. a signature on an SBOM) are carried too.

Manifests move as their exact bytes, so every digest (and therefore every signature's subject)
is the same on both sides. Blob streams are verified against their digests on the way.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable

from registry.errors import Refused
from registry.model import Descriptor, Index, RawContent
from registry.store import Store, iter_children
from registry.streams import TransferInterrupted

MAX_REFERRER_DEPTH = 8
BLOB_TRIES = 2

Progress = Callable[[Descriptor, str], None]  # (blob, "copied" | "skipped" | "mounted")


@dataclass
class CopyResult:
    src: str = ""
    dst: str = ""
    digest: str = ""
    referrers: int = 0
    blobs_copied: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0
    manifests: list[str] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("manifests")
        return out


@dataclass
class _Copier:
    src: Store
    src_repo: str
    dst: Store
    dst_repo: str
    jobs: int
    progress: Progress | None
    result: CopyResult
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _done_blobs: set[str] = field(default_factory=set)

    # -- blobs ----------------------------------------------------------------------------------
    def _can_mount(self) -> bool:
        from registry.remote import RemoteStore

        return (isinstance(self.src, RemoteStore) and isinstance(self.dst, RemoteStore)
                and self.src.host == self.dst.host and self.src_repo != self.dst_repo)

    def _count(self, desc: Descriptor, how: str) -> None:
        with self._lock:
            if how == "skipped":
                self.result.blobs_skipped += 1
            else:
                self.result.blobs_copied += 1
                if how == "mounted":
                    self.result.blobs_mounted += 1
                else:
                    self.result.bytes_copied += desc.size
        if self.progress:
            self.progress(desc, how)

    def _copy_blob(self, desc: Descriptor) -> None:
        if self.dst.has_blob(self.dst_repo, desc):
            return self._count(desc, "skipped")
        if self._can_mount() and self.dst.mount_blob(self.dst_repo, desc, self.src_repo):  # type: ignore[attr-defined]
            return self._count(desc, "mounted")
        for attempt in range(BLOB_TRIES):
            try:
                with self.src.open_blob(self.src_repo, desc) as stream:
                    self.dst.put_blob(self.dst_repo, desc, stream)
                break
            except TransferInterrupted:  # cut off half-way (after the store's own retries): once more from the start
                if attempt + 1 == BLOB_TRIES:
                    raise
        self._count(desc, "copied")

    def copy_blobs(self, descs: list[Descriptor]) -> None:
        todo, seen = [], set()
        for d in descs:
            if d.digest not in seen and d.digest not in self._done_blobs:
                seen.add(d.digest)
                todo.append(d)
        if not todo:
            return
        workers = max(1, min(self.jobs, len(todo)))
        if workers == 1:
            for d in todo:
                self._copy_blob(d)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for future in [pool.submit(self._copy_blob, d) for d in todo]:
                    future.result()
        self._done_blobs.update(seen)

    # -- manifests ------------------------------------------------------------------------------
    def _children(self, content: RawContent) -> list[RawContent]:
        if not isinstance(content.parsed, Index):
            return []
        return [self.src.get_manifest(self.src_repo, d.digest) for d in content.parsed.manifests]

    def copy_content(self, content: RawContent, tag: str | None, *, referrer: bool = False) -> None:
        """Blobs of the content (and of its children), then children, then the content."""
        children = self._children(content)
        grandchildren = [gc for c in children for gc in self._children(c)]
        blobs = [d for c in [content, *children, *grandchildren] if not isinstance(c.parsed, Index)
                 for d in iter_children(c)]
        self.copy_blobs(blobs)
        for child in [*grandchildren, *children]:
            self.dst.put_manifest(self.dst_repo, child)
        if referrer and content.parsed.subject is not None:
            self.dst.add_referrer(self.dst_repo, content)
        else:
            self.dst.put_manifest(self.dst_repo, content, tag=tag)
        self.result.manifests.append(content.digest)

    def copy_referrers(self, subject: str, depth: int = 0, seen: set[str] | None = None) -> None:
        seen = seen if seen is not None else set()
        if depth >= MAX_REFERRER_DEPTH:
            return
        found = self.src.referrers(self.src_repo, subject)
        if not found:
            return
        there = {d.digest for d in self.dst.referrers(self.dst_repo, subject)}
        for desc in found:
            if desc.digest in seen:
                continue
            seen.add(desc.digest)
            if desc.digest not in there:
                content = self.src.get_manifest(self.src_repo, desc.digest)
                if content.parsed.subject is None or content.parsed.subject.digest != subject:
                    raise Refused(f"referrer {desc.digest} listed for {subject} in {self.src_repo} names another "
                                  f"subject", check="manifest-format")
                self.copy_content(content, None, referrer=True)
            self.result.referrers += 1
            self.copy_referrers(desc.digest, depth + 1, seen)


def copy_image(src_store: Store, src_repo: str, reference: str, dst_store: Store, dst_repo: str,
               dst_tag: str | None, *, referrers: bool = True, jobs: int = 4,
               progress: Progress | None = None) -> CopyResult:
    """Copy `src_repo`@`reference` (tag or digest) to `dst_repo` tagged `dst_tag` (None: by digest)."""
    result = CopyResult()
    copier = _Copier(src_store, src_repo, dst_store, dst_repo, max(1, jobs), progress, result)
    top = src_store.get(src_repo, reference)
    result.digest = top.digest
    copier.copy_content(top, dst_tag)
    if referrers:
        copier.copy_referrers(top.digest)
    return result
