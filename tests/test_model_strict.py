"""registry/model.py without pydantic: same bytes and behaviour as before, stricter on hostile input.

The model was rewritten to keep pydantic off the push/copy start-up path (about 100 ms of the
whole-process time of an unchanged re-push). These tests pin what the rewrite must keep: the
canonical bytes (so digests of images built before and after agree), the field paths in refusals,
alias/name construction, frozen records; and what it tightened: no type coercion of sizes or
schema versions (pydantic's lax mode accepted "5" and true as sizes)."""

from __future__ import annotations

import json

import pytest

from registry.errors import Refused
from registry.model import (EMPTY_DIGEST, OCI_INDEX, OCI_MANIFEST, Descriptor, ImageConfig, Index, Manifest,
                            ModelError, Platform, encode, parse_content)

CFG = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": EMPTY_DIGEST, "size": 2}


def _manifest(**over) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": dict(CFG), "layers": []}
    doc.update(over)
    return json.dumps(doc).encode()


def test_canonical_bytes_are_unchanged():
    """Golden bytes produced by the former pydantic model for the same content."""
    layer = Descriptor(mediaType="b", digest=EMPTY_DIGEST, size=3, annotations={"x": "y"},
                       platform=Platform(architecture="amd64", os="linux"))
    m = Manifest(schemaVersion=2, config=Descriptor.model_validate(CFG), layers=[layer], annotations={"k": "v"})
    raw = encode(m).raw
    assert raw == (b'{"annotations":{"k":"v"},"config":{"digest":"' + EMPTY_DIGEST.encode()
                   + b'","mediaType":"application/vnd.oci.image.config.v1+json","size":2},"layers":[{"annotations":'
                   b'{"x":"y"},"digest":"' + EMPTY_DIGEST.encode() + b'","mediaType":"b","platform":{"architecture":'
                   b'"amd64","os":"linux"},"size":3}],"mediaType":"application/vnd.oci.image.manifest.v1+json",'
                   b'"schemaVersion":2}')
    parsed = parse_content(raw)
    assert parsed.parsed == m and parsed.digest == encode(m).digest


def test_index_round_trip_and_unknown_keys_ignored():
    raw = json.dumps({"schemaVersion": 2, "manifests": [dict(CFG, artifactType="t", future=1)],
                      "subject": CFG, "extra": {"x": 1}}).encode()
    content = parse_content(raw)
    assert isinstance(content.parsed, Index) and content.media_type == OCI_INDEX
    assert content.parsed.manifests[0].artifact_type == "t"
    assert content.raw == raw  # the exact bytes are kept, never re-serialised
    assert Index.model_validate(content.parsed.to_json_dict()) == content.parsed


@pytest.mark.parametrize("size, message", [
    ("2", "config.size: Input should be a valid integer"),
    (True, "config.size: Input should be a valid integer"),
    (2.0, "config.size: Input should be a valid integer"),
    (-1, "config.size: Input should be greater than or equal to 0"),
])
def test_size_is_not_coerced(size, message):
    with pytest.raises(Refused) as exc:
        parse_content(_manifest(config=dict(CFG, size=size)))
    assert exc.value.check == "manifest-format" and exc.value.exit_code == 3
    assert message in exc.value.message


@pytest.mark.parametrize("over, where", [
    ({"schemaVersion": "2"}, "schemaVersion: Input should be 2"),
    ({"layers": [dict(CFG, digest="sha256:zz")]}, "layers.0.digest: Value error, 'sha256:zz' is not a sha256 digest"),
    ({"layers": [dict(CFG, annotations={"a": 1})]}, "layers.0.annotations.a: Input should be a valid string"),
    ({"layers": [dict(CFG, urls=[1])]}, "layers.0.urls.0: Input should be a valid string"),
    ({"layers": [7]}, "layers.0: Input should be a valid dictionary"),
    ({"layers": None}, "layers: Input should be a valid list"),
    ({"config": dict(CFG, platform={"os": "linux"})}, "config.platform.architecture: Field required"),
])
def test_refusals_name_the_field(over, where):
    with pytest.raises(Refused) as exc:
        parse_content(_manifest(**over))
    assert exc.value.check == "manifest-format"
    assert f"manifest is malformed at {where}" in exc.value.message


def test_records_are_frozen_hashable_and_accept_names_or_aliases():
    a = Descriptor(mediaType="x", digest=EMPTY_DIGEST, size=1)
    b = Descriptor(media_type="x", digest=EMPTY_DIGEST, size=1)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(TypeError):
        a.size = 5  # type: ignore[misc]
    c = a.model_copy(update={"annotations": {"k": "v"}})
    assert a.annotations is None and c.annotations == {"k": "v"} and c != a
    assert a.with_annotations({}).annotations is None
    with pytest.raises(ModelError) as exc:
        Descriptor(mediaType="x", digest="sha256:nope", size=1)
    assert exc.value.errors()[0]["loc"] == ("digest",)


def test_image_config_defaults_are_fresh_per_instance():
    one, two = ImageConfig(), ImageConfig()
    one.rootfs["diff_ids"].append("sha256:" + "0" * 64)
    assert two.rootfs == {"type": "layers", "diff_ids": []}
    assert ImageConfig(config={"Env": None}).to_json_dict()["config"] == {"Env": None}  # only fields drop None
