"""The embedded OCI layout store: verified blobs, atomic tags, no dangling tags, fallback referrers."""

import io
import json

import pytest

from registry.digest import sha256_digest
from registry.errors import NotFound, Refused, StorageError
from registry.layout import LayoutStore
from registry.model import EMPTY_DIGEST, OCI_EMPTY, OCI_LAYER_TAR, SIGSTORE_BUNDLE, Descriptor, Manifest, encode

EMPTY = Descriptor(mediaType=OCI_EMPTY, digest=EMPTY_DIGEST, size=2)


def _blob(store, data: bytes) -> Descriptor:
    desc = Descriptor(mediaType=OCI_LAYER_TAR, digest=sha256_digest(data), size=len(data))
    store.put_blob("", desc, io.BytesIO(data))
    return desc


def _image(store, data=b"layer"):
    store.put_blob("", EMPTY, io.BytesIO(b"{}"))
    layer = _blob(store, data)
    return encode(Manifest(schemaVersion=2, config=EMPTY, layers=[layer]))


def test_tag_resolve_and_read_back(tmp_path):
    store = LayoutStore(tmp_path / "s")
    content = _image(store)
    desc = store.put_manifest("team_a/x", content, tag="1.0")
    assert store.resolve("team_a/x", "1.0").digest == desc.digest == content.digest
    assert store.get("team_a/x", "1.0").raw == content.raw
    assert store.tags("team_a/x") == ["1.0"]
    index = json.loads((tmp_path / "s" / "index.json").read_bytes())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "team_a/x:1.0"


def test_retag_moves_the_tag(tmp_path):
    store = LayoutStore(tmp_path / "s")
    store.put_manifest("r/x", _image(store, b"one"), tag="1")
    second = _image(store, b"two")
    store.put_manifest("r/x", second, tag="1")
    assert store.resolve("r/x", "1").digest == second.digest
    assert store.tags("r/x") == ["1"]


def test_blob_with_wrong_digest_is_refused_and_not_stored(tmp_path):
    store = LayoutStore(tmp_path / "s")
    desc = Descriptor(mediaType=OCI_LAYER_TAR, digest=sha256_digest(b"good"), size=4)
    with pytest.raises(Refused):
        store.put_blob("", desc, io.BytesIO(b"evil"))
    assert not store.has_blob("", desc)
    assert list((tmp_path / "s" / ".tmp").glob("tmp*")) == []


def test_manifest_with_missing_blobs_is_never_tagged(tmp_path):
    store = LayoutStore(tmp_path / "s")
    missing = Descriptor(mediaType=OCI_LAYER_TAR, digest=sha256_digest(b"absent"), size=6)
    store.put_blob("", EMPTY, io.BytesIO(b"{}"))
    content = encode(Manifest(schemaVersion=2, config=EMPTY, layers=[missing]))
    with pytest.raises(StorageError):
        store.put_manifest("r/x", content, tag="1")
    with pytest.raises(NotFound):
        store.resolve("r/x", "1")


def test_tampered_blob_on_disk_is_caught_on_read(tmp_path):
    store = LayoutStore(tmp_path / "s")
    desc = _blob(store, b"original")
    path = store.blob_path(desc.digest)
    path.chmod(0o644)
    path.write_bytes(b"modified")
    with pytest.raises(Refused):
        with store.open_blob("", desc) as fh:
            fh.read()


def test_referrers_through_fallback_index(tmp_path):
    store = LayoutStore(tmp_path / "s")
    image = _image(store)
    store.put_manifest("r/x", image, tag="1")
    sig = encode(Manifest(schemaVersion=2, artifactType=SIGSTORE_BUNDLE, config=EMPTY,
                          layers=[_blob(store, b"sig")], subject=image.descriptor()))
    store.add_referrer("r/x", sig)
    store.add_referrer("r/x", sig)  # idempotent
    found = store.referrers("r/x", image.digest)
    assert [d.digest for d in found] == [sig.digest]
    assert found[0].artifact_type == SIGSTORE_BUNDLE
    assert store.referrers("r/x", image.digest, artifact_type="other") == []
