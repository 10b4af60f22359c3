"""The store interface every location serves: OCI layout folder, remote registry, S3 bucket.

Like go-containerregistry's `remote`/`layout` packages serving one `Image` interface, each store
here moves the same content model (`registry.model`) and nothing else; copying, signing and
verification are written once against this interface.

Invariants every store keeps:
- `put_blob` verifies the digest of what it writes and never exposes a partial blob;
- `put_manifest` refuses unless every blob the manifest names is present (blobs first, manifest
  and tag last), so no reader ever sees a tag whose blobs are missing;
- `open_blob` and `get_manifest` verify digests and sizes of what they hand out (stores are hostile).

Referrers (signatures, SBOMs) use the OCI 1.1 tag-schema fallback everywhere: an index tagged
`sha256-<subject hex>` in the subject's repository lists them. Stores with a native referrers API
(`RemoteStore`) override `referrers` to ask it first.
"""

from __future__ import annotations

import abc
import contextlib
from typing import BinaryIO, Iterator

from registry.digest import hex_of, is_digest
from registry.errors import NotFound
from registry.model import (
    INDEX_TYPES,
    OCI_INDEX,
    Descriptor,
    Index,
    Manifest,
    RawContent,
    encode,
)


def fallback_tag(subject_digest: str) -> str:
    """The tag-schema fallback tag for a subject's referrers index: `sha256-<hex>`."""
    return "sha256-" + hex_of(subject_digest)


class Store(abc.ABC):
    """One location holding repositories of OCI content."""

    # -- blobs ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def has_blob(self, repository: str, desc: Descriptor) -> bool:
        """True if the blob exists (same digest and size); used to skip transfers."""

    @abc.abstractmethod
    def open_blob(self, repository: str, desc: Descriptor) -> contextlib.AbstractContextManager[BinaryIO]:
        """A stream of the blob that verifies size and digest as it is read (see VerifyingReader)."""

    @abc.abstractmethod
    def put_blob(self, repository: str, desc: Descriptor, stream: BinaryIO) -> None:
        """Write a blob from a stream, verifying its digest; a no-op if it is already there."""

    # -- manifests and tags ---------------------------------------------------------------------
    @abc.abstractmethod
    def resolve(self, repository: str, reference: str) -> Descriptor:
        """Tag or digest -> descriptor of the manifest (raises NotFound)."""

    @abc.abstractmethod
    def get_manifest(self, repository: str, digest: str) -> RawContent:
        """The manifest or index with that digest, verified against it."""

    @abc.abstractmethod
    def put_manifest(self, repository: str, content: RawContent, tag: str | None = None) -> Descriptor:
        """Store a manifest or index (its blobs must already be present), optionally tagged."""

    @abc.abstractmethod
    def tags(self, repository: str) -> list[str]:
        """Tags of a repository (empty if it does not exist)."""

    def close(self) -> None:
        """Release connections; stores are also context managers."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- derived operations (shared by all stores) ----------------------------------------------
    def get(self, repository: str, reference: str) -> RawContent:
        """Resolve then fetch; a digest reference is never trusted to a tag lookup."""
        digest = reference if is_digest(reference) else self.resolve(repository, reference).digest
        return self.get_manifest(repository, digest)

    def referrers(self, repository: str, subject_digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        """Descriptors of manifests whose `subject` is `subject_digest` (tag-schema fallback)."""
        index = self._fallback_index(repository, subject_digest)
        found = list(index.manifests) if index else []
        if artifact_type:
            found = [d for d in found if d.artifact_type == artifact_type]
        return found

    def add_referrer(self, repository: str, content: RawContent) -> Descriptor:
        """Store a referrer manifest (its blobs must be present) and list it in the fallback index."""
        subject = content.parsed.subject
        if subject is None:
            raise ValueError("a referrer manifest needs a subject")
        desc = self.put_manifest(repository, content)
        self._list_in_fallback(repository, subject.digest, content, desc)
        return desc

    def _fallback_index(self, repository: str, subject_digest: str) -> Index | None:
        try:
            content = self.get(repository, fallback_tag(subject_digest))
        except NotFound:
            return None
        return content.parsed if content.media_type in INDEX_TYPES else None  # type: ignore[return-value]

    def _list_in_fallback(self, repository: str, subject_digest: str, content: RawContent, desc: Descriptor) -> None:
        index = self._fallback_index(repository, subject_digest)
        entries = [d for d in (index.manifests if index else []) if d.digest != desc.digest]
        parsed = content.parsed
        annotations = parsed.annotations if isinstance(parsed, Manifest) else None
        entry = Descriptor(mediaType=content.media_type, digest=desc.digest, size=desc.size,
                           artifactType=parsed.artifact_type or (parsed.config.media_type if isinstance(parsed, Manifest) else None),
                           annotations=annotations)
        new = encode(Index(schemaVersion=2, mediaType=OCI_INDEX, manifests=entries + [entry]))
        self.put_manifest(repository, new, tag=fallback_tag(subject_digest))


def iter_children(content: RawContent) -> Iterator[Descriptor]:
    """Blobs a manifest names (config then layers), or the manifests an index lists."""
    parsed = content.parsed
    if isinstance(parsed, Manifest):
        yield parsed.config
        yield from parsed.layers
    else:
        yield from parsed.manifests
