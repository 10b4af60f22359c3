"""Store signature bundles as OCI referrers of an image, the way cosign's bundle format does.

A referrer is a manifest with `artifactType` = the Sigstore bundle media type, the empty config
`{}`, one layer holding the bundle JSON and `subject` = the image. `Store.add_referrer` lists it
in the tag-schema fallback index. `find_bundles` reads referrers from a hostile store: it skips
entries of other artifact types, caps sizes before reading, and verifies every digest.
"""

from __future__ import annotations

import io

from registry.errors import NotFound, Refused
from registry.model import (
    EMPTY_DIGEST,
    EMPTY_JSON,
    OCI_EMPTY,
    OCI_MANIFEST,
    SIGSTORE_BUNDLE,
    Descriptor,
    Manifest,
    encode,
)
from registry.digest import sha256_digest
from registry.store import Store

MAX_BUNDLE_BYTES = 1024 * 1024
MAX_REFERRERS = 64
ANN_CONTENT = "dev.sigstore.bundle.content"
ANN_PREDICATE_TYPE = "dev.sigstore.bundle.predicateType"
EMPTY_CONFIG = Descriptor(mediaType=OCI_EMPTY, digest=EMPTY_DIGEST, size=len(EMPTY_JSON))


def referrer_manifest(subject: Descriptor, bundle_json: bytes, predicate_type: str):
    """The encoded referrer manifest (RawContent) for one bundle about `subject`."""
    layer = Descriptor(mediaType=SIGSTORE_BUNDLE, digest=sha256_digest(bundle_json), size=len(bundle_json))
    subject_desc = Descriptor(mediaType=subject.media_type, digest=subject.digest, size=subject.size)
    manifest = Manifest(schemaVersion=2, mediaType=OCI_MANIFEST, artifactType=SIGSTORE_BUNDLE,
                        config=EMPTY_CONFIG, layers=[layer], subject=subject_desc,
                        annotations={ANN_CONTENT: "dsse-envelope", ANN_PREDICATE_TYPE: predicate_type})
    return encode(manifest)


def attach(store: Store, repository: str, subject: Descriptor, bundle_json: bytes, predicate_type: str) -> Descriptor:
    """Write the bundle blob, the empty config and the referrer manifest; returns its descriptor."""
    if len(bundle_json) > MAX_BUNDLE_BYTES:
        raise ValueError(f"signature bundle is {len(bundle_json)} bytes, more than {MAX_BUNDLE_BYTES}")
    content = referrer_manifest(subject, bundle_json, predicate_type)
    store.put_blob(repository, EMPTY_CONFIG, io.BytesIO(EMPTY_JSON))
    store.put_blob(repository, content.parsed.layers[0], io.BytesIO(bundle_json))
    return store.add_referrer(repository, content)


def find_bundles(store: Store, repository: str, subject_digest: str,
                 predicate_type: str | None = None) -> list[tuple[Descriptor, bytes]]:
    """(referrer descriptor, bundle JSON bytes) for every Sigstore bundle referring to the subject.

    Referrers that are not bundles, name another subject, or whose annotations declare another
    predicate type (when `predicate_type` is given) are skipped; a bundle layer larger than
    1 MiB or with a wrong digest raises Refused (the store is serving tampered content).
    """
    found: list[tuple[Descriptor, bytes]] = []
    descs = [d for d in store.referrers(repository, subject_digest, artifact_type=SIGSTORE_BUNDLE)
             if not predicate_type or (d.annotations or {}).get(ANN_PREDICATE_TYPE, predicate_type) == predicate_type]
    # the cap bounds the work a hostile store can cause; it applies after the cheap filter (so
    # attestations do not crowd out signatures) and keeps the newest (a fallback index lists
    # referrers in the order they were attached; re-signing with --expires appends)
    for desc in descs[-MAX_REFERRERS:]:
        try:
            content = store.get_manifest(repository, desc.digest)
        except NotFound:
            continue
        parsed = content.parsed
        if not isinstance(parsed, Manifest) or parsed.artifact_type != SIGSTORE_BUNDLE:
            continue
        if parsed.subject is None or parsed.subject.digest != subject_digest:
            continue
        if predicate_type and (parsed.annotations or {}).get(ANN_PREDICATE_TYPE, predicate_type) != predicate_type:
            continue
        layers = [l for l in parsed.layers if l.media_type == SIGSTORE_BUNDLE]
        if len(layers) != 1:
            continue
        layer = layers[0]
        if layer.size > MAX_BUNDLE_BYTES:
            raise Refused(f"signature bundle {layer.digest} in {repository} is {layer.size} bytes, "
                          f"more than the {MAX_BUNDLE_BYTES} allowed", check="signature")
        found.append((content.descriptor(parsed.annotations), _read_capped(store, repository, layer)))
    return found


def _read_capped(store: Store, repository: str, layer: Descriptor) -> bytes:
    """The whole blob, read through the store's verifying stream, never more than its size."""
    parts: list[bytes] = []
    total = 0
    with store.open_blob(repository, layer) as stream:
        while chunk := stream.read(layer.size + 1 - total):
            total += len(chunk)
            parts.append(chunk)
            if total > layer.size:
                raise Refused(f"signature bundle {layer.digest} is larger than its descriptor", check="blob-digest")
    return b"".join(parts)
