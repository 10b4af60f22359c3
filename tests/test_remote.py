"""RemoteStore against a real docker-registry (distribution 2.8.2) on loopback."""

import io
import os

import pytest

from registry.copy import copy_image
from registry.digest import sha256_digest
from registry.errors import NotFound, Refused, StorageError
from registry.http import RetryPolicy
from registry.layout import LayoutStore
from registry.model import OCI_LAYER_TAR, Descriptor, Manifest, encode
from registry.remote import RemoteStore
from tests.fixtures.registry import add_referrer, make_image, put_bytes

FAST = RetryPolicy(tries=3, base=0.01, cap=0.05)


def _remote(server, **kw) -> RemoteStore:
    kw.setdefault("retry", FAST)
    return RemoteStore(server.host, plain_http=True, **kw)


def test_round_trip_keeps_digests_and_recursive_referrers(registry_server, tmp_path):
    src = LayoutStore(tmp_path / "src")
    image = make_image(src, "team_a/rt", "1.0", [b"deps" * 1000, b"dags"])
    sig = add_referrer(src, "team_a/rt", image, b'{"signature": 1}')
    sig_of_sig = add_referrer(src, "team_a/rt", sig, b'{"countersignature": 1}')
    with _remote(registry_server) as remote:
        pushed = copy_image(src, "team_a/rt", "1.0", remote, "team_a/rt", "1.0")
        assert pushed.digest == image.digest
        assert pushed.referrers == 2
        assert remote.resolve("team_a/rt", "1.0").digest == image.digest
        assert [d.digest for d in remote.referrers("team_a/rt", image.digest)] == [sig.digest]
        assert [d.digest for d in remote.referrers("team_a/rt", sig.digest)] == [sig_of_sig.digest]
        back = LayoutStore(tmp_path / "back")
        pulled = copy_image(remote, "team_a/rt", "1.0", back, "team_a/rt", "1.0")
    assert pulled.digest == image.digest and pulled.referrers == 2
    assert back.get("team_a/rt", "1.0").raw == image.raw
    assert back.get_manifest("team_a/rt", sig_of_sig.digest).raw == sig_of_sig.raw


def test_unchanged_repush_skips_every_blob(registry_server, tmp_path):
    src = LayoutStore(tmp_path / "src")
    make_image(src, "team_a/again", "1", [b"a" * 5000, b"b" * 7000])
    with _remote(registry_server) as remote:
        first = copy_image(src, "team_a/again", "1", remote, "team_a/again", "1")
        second = copy_image(src, "team_a/again", "1", remote, "team_a/again", "1")
    assert first.blobs_copied == 3 and first.blobs_skipped == 0
    assert second.blobs_copied == 0 and second.blobs_skipped == 3 and second.bytes_copied == 0


def test_chunked_upload_of_a_large_blob_reads_back_verified(registry_server):
    data = os.urandom(300_000)
    desc = Descriptor(mediaType=OCI_LAYER_TAR, digest=sha256_digest(data), size=len(data))
    with _remote(registry_server, chunk_size=64 * 1024) as remote:
        remote.put_blob("team_a/chunks", desc, io.BytesIO(data))
        assert remote.stats["uploaded_bytes"] == len(data)
        assert remote.has_blob("team_a/chunks", desc)
        with remote.open_blob("team_a/chunks", desc) as stream:
            assert stream.read() == data


def test_blob_whose_bytes_do_not_match_is_refused_and_not_committed(registry_server):
    desc = Descriptor(mediaType=OCI_LAYER_TAR, digest=sha256_digest(b"good bytes"), size=10)
    with _remote(registry_server) as remote:
        with pytest.raises(Refused) as info:
            remote.put_blob("team_a/evil", desc, io.BytesIO(b"evil bytes"))
        assert info.value.check == "blob-digest"
        assert not remote.has_blob("team_a/evil", desc)


def test_cross_repository_copy_mounts_blobs(registry_server, tmp_path):
    src = LayoutStore(tmp_path / "src")
    make_image(src, "team_a/m", "1", [b"mount me" * 100])
    with _remote(registry_server) as remote:
        copy_image(src, "team_a/m", "1", remote, "team_a/m", "1")
        moved = copy_image(remote, "team_a/m", "1", remote, "team_a/m-copy", "1")
        assert moved.blobs_mounted == 2 and moved.bytes_copied == 0
        assert remote.resolve("team_a/m-copy", "1").digest == moved.digest


def test_manifest_naming_missing_blobs_is_refused_by_the_registry_and_untagged(registry_server):
    absent = Descriptor(mediaType=OCI_LAYER_TAR, digest=sha256_digest(b"never uploaded"), size=14)
    with _remote(registry_server) as remote:
        config = put_bytes(remote, "team_a/holes", b"{}")
        content = encode(Manifest(schemaVersion=2, config=config, layers=[absent]))
        with pytest.raises(StorageError) as info:
            remote.put_manifest("team_a/holes", content, tag="1")
        assert "MANIFEST_BLOB_UNKNOWN" in info.value.message
        with pytest.raises(NotFound):
            remote.resolve("team_a/holes", "1")


def test_missing_tag_is_not_found_with_the_registry_message(registry_server):
    with _remote(registry_server) as remote:
        with pytest.raises(NotFound) as info:
            remote.resolve("team_a/nothing-here", "9.9")
    assert "MANIFEST_UNKNOWN" in info.value.message or "NAME_UNKNOWN" in info.value.message
    assert "team_a/nothing-here:9.9" in info.value.message


def _tamper(server, digest: str, data: bytes) -> None:
    """Overwrite what the registry stores for `digest` (as a compromised registry would)."""
    hexd = digest.split(":")[1]
    path = server.data_dir / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
    path.write_bytes(data)


def test_a_registry_serving_other_bytes_for_a_digest_is_refused(registry_server, tmp_path):
    """What we read is hashed by us: tampered blobs and manifests in the registry are refused."""
    src = LayoutStore(tmp_path / "src")
    unique = os.urandom(16)
    image = make_image(src, "team_a/h", "1", [b"layer" + unique])
    with _remote(registry_server) as remote:
        copy_image(src, "team_a/h", "1", remote, "team_a/h", "1")
        layer = image.parsed.layers[0]
        _tamper(registry_server, layer.digest, b"LAYER" + unique)
        with pytest.raises(Refused) as blob_info:
            with remote.open_blob("team_a/h", layer) as stream:
                while stream.read(1024):
                    pass
        assert blob_info.value.check == "blob-digest"
        _tamper(registry_server, image.digest, image.raw.replace(b'"schemaVersion":2', b'"schemaVersion": 2'))
        with pytest.raises(Refused):
            remote.get_manifest("team_a/h", image.digest)


def test_tags_lists_pushed_tags_and_empty_for_unknown_repository(registry_server, tmp_path):
    src = LayoutStore(tmp_path / "src")
    make_image(src, "team_a/tags", "1", [b"t"])
    with _remote(registry_server) as remote:
        copy_image(src, "team_a/tags", "1", remote, "team_a/tags", "1")
        copy_image(src, "team_a/tags", "1", remote, "team_a/tags", "2")
        assert remote.tags("team_a/tags") == ["1", "2"]
        assert remote.tags("team_a/unknown-repo") == []


def test_https_to_a_plain_http_registry_fails_at_once_with_the_fix(registry_server):
    with RemoteStore(registry_server.host, plain_http=False, retry=FAST) as remote:
        with pytest.raises(StorageError) as info:
            remote.tags("team_a/x")
    assert "TLS with" in info.value.message and "--plain-http" in info.value.hint


def test_an_index_and_its_child_manifests_round_trip(registry_server, tmp_path):
    from registry.model import OCI_INDEX, Index, Platform

    src = LayoutStore(tmp_path / "src")
    amd = make_image(src, "team_a/multi", None, [b"amd64 layer"])
    arm = make_image(src, "team_a/multi", None, [b"arm64 layer"])
    index = encode(Index(schemaVersion=2, mediaType=OCI_INDEX, manifests=[
        amd.descriptor().model_copy(update={"platform": Platform(architecture="amd64", os="linux")}),
        arm.descriptor().model_copy(update={"platform": Platform(architecture="arm64", os="linux")})]))
    src.put_manifest("team_a/multi", index, tag="1")
    with _remote(registry_server) as remote:
        pushed = copy_image(src, "team_a/multi", "1", remote, "team_a/multi", "1")
        assert pushed.digest == index.digest and pushed.blobs_copied == 3  # one config, two layers
        got = remote.get("team_a/multi", "1")
        assert got.media_type == OCI_INDEX and got.raw == index.raw
        assert remote.get_manifest("team_a/multi", arm.digest).raw == arm.raw
        back = LayoutStore(tmp_path / "back")
        copy_image(remote, "team_a/multi", "1", back, "team_a/multi", "1")
    assert back.get_manifest("team_a/multi", amd.digest).raw == amd.raw
