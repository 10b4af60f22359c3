"""S3Store against a moto server over HTTP on loopback: the OCI layout in a bucket."""

import io
import json
import os

import pytest

from registry.copy import copy_image
from registry.digest import sha256_digest
from registry.errors import Refused, StorageError
from registry.layout import LayoutStore
from registry.model import OCI_LAYER_TAR, Descriptor, Manifest, encode
from registry.s3 import PART_SIZE, S3Store
from tests.fixtures.registry import add_referrer, make_image, put_bytes


def test_layout_round_trip_through_a_bucket_keeps_digests_and_referrers(s3_bucket, moto_server, tmp_path):
    src = LayoutStore(tmp_path / "src")
    image = make_image(src, "team_a/s3", "1.0", [b"deps" * 100, b"dags"])
    sig = add_referrer(src, "team_a/s3", image, b'{"sig":1}')
    sbom_sig = add_referrer(src, "team_a/s3", sig, b'{"sig-of-sig":1}')
    bucket = S3Store(s3_bucket, "org/store")
    pushed = copy_image(src, "team_a/s3", "1.0", bucket, "team_a/s3", "1.0")
    assert pushed.digest == image.digest and pushed.referrers == 2
    keys = {o["Key"] for o in moto_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert {"org/store/oci-layout", "org/store/index.json", f"org/store/blobs/sha256/{image.digest[7:]}"} <= keys
    index = json.loads(moto_server.client().get_object(Bucket=s3_bucket, Key="org/store/index.json")["Body"].read())
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"] if m.get("annotations")]
    assert "team_a/s3:1.0" in names
    back = LayoutStore(tmp_path / "back")
    pulled = copy_image(bucket, "team_a/s3", "1.0", back, "team_a/s3", "1.0")
    assert pulled.digest == image.digest and pulled.referrers == 2
    assert back.get_manifest("team_a/s3", sbom_sig.digest).raw == sbom_sig.raw
    again = copy_image(src, "team_a/s3", "1.0", bucket, "team_a/s3", "1.0")
    assert again.blobs_copied == 0 and again.blobs_skipped == 3


def test_multipart_blob_streams_and_reads_back(s3_bucket):
    data = os.urandom(PART_SIZE + 1_000_000)
    desc = Descriptor(mediaType=OCI_LAYER_TAR, digest=sha256_digest(data), size=len(data))
    bucket = S3Store(s3_bucket, "big")
    bucket.put_blob("", desc, io.BytesIO(data))
    assert bucket.has_blob("", desc)
    with bucket.open_blob("", desc) as stream:
        assert stream.read(len(data) + 1) == data


@pytest.mark.parametrize("size", [10, PART_SIZE + 1000])
def test_wrong_bytes_are_refused_and_nothing_is_visible(s3_bucket, moto_server, size):
    good, evil = b"g" * size, b"e" * size
    desc = Descriptor(mediaType=OCI_LAYER_TAR, digest=sha256_digest(good), size=size)
    bucket = S3Store(s3_bucket, "p")
    with pytest.raises(Refused) as info:
        bucket.put_blob("", desc, io.BytesIO(evil))
    assert info.value.check == "blob-digest"
    assert not bucket.has_blob("", desc)
    s3 = moto_server.client()
    assert s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_manifest_with_missing_blobs_is_refused_and_the_index_is_untouched(s3_bucket):
    bucket = S3Store(s3_bucket, "holes")
    make_image(bucket, "team_a/ok", "1", [b"fine"])
    absent = Descriptor(mediaType=OCI_LAYER_TAR, digest=sha256_digest(b"never"), size=5)
    config = put_bytes(bucket, "team_a/h", b"{}")
    with pytest.raises(StorageError) as info:
        bucket.put_manifest("team_a/h", encode(Manifest(schemaVersion=2, config=config, layers=[absent])), tag="1")
    assert absent.digest in info.value.message and "copy the blobs first" in info.value.hint
    assert bucket.tags("team_a/h") == [] and bucket.tags("team_a/ok") == ["1"]


def test_a_stale_index_write_is_rejected_and_concurrent_tags_both_survive(s3_bucket):
    one, two = S3Store(s3_bucket, "race"), S3Store(s3_bucket, "race")
    make_image(one, "team_a/r", "1", [b"one"])
    manifests, stale = one._read_index()
    make_image(two, "team_a/r", "2", [b"two"])
    assert one._write_index(manifests, stale) is False  # someone wrote since: the write is refused
    make_image(one, "team_a/r", "3", [b"three"])
    assert one.tags("team_a/r") == ["1", "2", "3"]


def test_missing_bucket_and_missing_tag_are_not_found_with_the_fix(aws_env, dagseal, tmp_path):
    src = LayoutStore(tmp_path / "src")
    make_image(src, "team_a/nb", "1", [b"x"])
    result = dagseal("push", f"oci:{tmp_path / 'src'}:team_a/nb:1", "s3://no-such-bucket-here/p:team_a/nb:1", "--json")
    assert result.code == 4
    error = result.json_lines[0]
    assert error["error"] == "NotFound" and "no-such-bucket-here" in error["message"] and "aws s3 mb" in error["hint"]


def test_missing_tag_in_a_bucket_exits_4(s3_bucket, dagseal, tmp_path):
    bucket = S3Store(s3_bucket, "tags")
    make_image(bucket, "team_a/t", "1", [b"x"])
    result = dagseal("copy", f"s3://{s3_bucket}/tags:team_a/t:2", f"oci:{tmp_path / 'dst'}", "--json")
    assert result.code == 4
    assert "no tag 'team_a/t:2'" in result.json_lines[0]["message"]
