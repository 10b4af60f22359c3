"""`dagseal push` / `dagseal copy` between every kind of store, and skopeo as an independent reader
and writer of what is in the registry."""

import json
import os
import subprocess

import pytest

from registry.layout import LayoutStore
from registry.remote import RemoteStore
from tests.fixtures.registry import add_referrer, make_image
from tests.fixtures.tools import require_tool

KEYS = {"src", "dst", "digest", "referrers", "blobs_copied", "blobs_skipped"}


def _signed_image(tmp_path, repo="team_a/cp", tag="1.0"):
    src = LayoutStore(tmp_path / "src")
    image = make_image(src, repo, tag, [os.urandom(3000), b"dags"])
    sig = add_referrer(src, repo, image, b'{"signature":1}')
    add_referrer(src, repo, sig, b'{"signature-of-signature":1}')
    return f"oci:{tmp_path / 'src'}:{repo}:{tag}", image


def _ok(result):
    assert result.code == 0, result.stdout + result.stderr
    line = result.json_lines[0]
    assert KEYS <= set(line)
    return line


def test_layout_registry_s3_layout_carries_digest_and_referrers(registry_server, s3_bucket, dagseal, tmp_path):
    src, image = _signed_image(tmp_path)
    reg = registry_server.ref("team_a/cp:1.0")
    first = _ok(dagseal("push", src, reg, "--json"))
    assert first == {**first, "digest": image.digest, "referrers": 2, "blobs_copied": 6, "blobs_skipped": 0,
                     "src": src, "dst": reg}
    s3 = f"s3://{s3_bucket}/store:team_a/cp:1.0"
    assert _ok(dagseal("copy", reg, s3, "--json"))["referrers"] == 2
    back = f"oci:{tmp_path / 'back'}:team_a/cp:1.0"
    assert _ok(dagseal("copy", s3, back, "--json"))["digest"] == image.digest
    # and the other way round: s3 -> a fresh registry repository -> layout
    reg2 = registry_server.ref("team_a/cp-from-s3:1.0")
    assert _ok(dagseal("copy", s3, reg2, "--json"))["referrers"] == 2
    with RemoteStore(registry_server.host, plain_http=True) as remote:
        sigs = remote.referrers("team_a/cp-from-s3", image.digest)
        assert len(sigs) == 1 and len(remote.referrers("team_a/cp-from-s3", sigs[0].digest)) == 1
    store = LayoutStore(tmp_path / "back")
    assert store.get("team_a/cp", "1.0").raw == image.raw
    assert len(store.referrers("team_a/cp", image.digest)) == 1


def test_repush_unchanged_copies_nothing(registry_server, dagseal, tmp_path):
    src, _ = _signed_image(tmp_path, repo="team_a/cp-again")
    reg = registry_server.ref("team_a/cp-again:1.0")
    _ok(dagseal("push", src, reg, "--json"))
    again = _ok(dagseal("push", src, reg, "--json"))
    assert again["blobs_copied"] == 0 and again["blobs_skipped"] == 3 and again["referrers"] == 2


def test_no_referrers_copies_the_image_only(registry_server, dagseal, tmp_path):
    src, image = _signed_image(tmp_path, repo="team_a/cp-bare")
    line = _ok(dagseal("push", src, registry_server.ref("team_a/cp-bare:1.0"), "--json", "--no-referrers"))
    assert line["referrers"] == 0
    with RemoteStore(registry_server.host, plain_http=True) as remote:
        assert remote.referrers("team_a/cp-bare", image.digest) == []


def test_push_by_digest_and_tag_defaults(registry_server, dagseal, tmp_path):
    _, image = _signed_image(tmp_path, repo="team_a/cp-digest")
    line = _ok(dagseal("push", f"oci:{tmp_path / 'src'}:team_a/cp-digest@{image.digest}",
                       registry_server.ref("team_a/cp-digest:pinned"), "--json"))
    assert line["digest"] == image.digest
    # DST without a tag takes the source's tag
    line = _ok(dagseal("push", f"oci:{tmp_path / 'src'}:team_a/cp-digest:1.0", registry_server.ref("team_a/cp-digest"), "--json"))
    assert line["dst"].endswith("team_a/cp-digest:1.0")


@pytest.mark.parametrize("src,dst,needle", [
    ("oci:DIR:team_a/x:1", "Bad Host/x:1", "white space"),
    ("oci:DIR:team_a/x:1", "ftp://host/x:1", "unsupported scheme"),
    ("oci:DIR:team_a/x", "127.0.0.1:1/x:1", "names no tag or digest"),
    ("oci:DIR:team_a/x:1", "127.0.0.1:1/UPPER:1", "repository 'UPPER' is not valid"),
])
def test_bad_references_exit_2_naming_the_reference(dagseal, tmp_path, src, dst, needle):
    result = dagseal("push", src.replace("DIR", str(tmp_path)), dst, "--json")
    assert result.code == 2
    assert needle in result.json_lines[0]["message"] and result.json_lines[0]["hint"]


def test_jobs_out_of_range_is_bad_input(dagseal, tmp_path):
    result = dagseal("copy", f"oci:{tmp_path}:a/b:1", f"oci:{tmp_path}/x", "--jobs", "0")
    assert result.code == 2 and "--jobs" in result.stderr


def test_missing_source_layout_and_missing_registry_tag_exit_4(registry_server, dagseal, tmp_path):
    result = dagseal("copy", f"oci:{tmp_path / 'nothing'}:team_a/x:1", f"oci:{tmp_path / 'dst'}", "--json")
    assert result.code == 4 and "not an OCI image layout" in result.json_lines[0]["message"]
    result = dagseal("copy", registry_server.ref("team_a/never-pushed:1"), f"oci:{tmp_path / 'dst'}", "--json")
    assert result.code == 4
    assert "NAME_UNKNOWN" in result.json_lines[0]["message"] or "MANIFEST_UNKNOWN" in result.json_lines[0]["message"]


def test_pinned_destination_digest_must_match(registry_server, dagseal, tmp_path):
    src, image = _signed_image(tmp_path, repo="team_a/cp-pin")
    other = "sha256:" + "0" * 64
    result = dagseal("push", src, registry_server.ref(f"team_a/cp-pin@{other}"), "--json")
    assert result.code == 2 and image.digest in result.json_lines[0]["message"]


# -- skopeo: an independent implementation reads what we push and writes what we read ---------
def _skopeo(*args: str) -> str:
    proc = subprocess.run([require_tool("skopeo"), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_skopeo_reads_what_we_push(registry_server, dagseal, tmp_path):
    src, image = _signed_image(tmp_path, repo="team_a/sk-read")
    _ok(dagseal("push", src, registry_server.ref("team_a/sk-read:1.0"), "--json"))
    info = json.loads(_skopeo("inspect", "--tls-verify=false", f"docker://{registry_server.ref('team_a/sk-read:1.0')}"))
    assert info["Digest"] == image.digest and len(info["Layers"]) == 2
    _skopeo("copy", "--preserve-digests", "--src-tls-verify=false", f"docker://{registry_server.ref('team_a/sk-read:1.0')}",
            f"oci:{tmp_path / 'skopeo-out'}:pulled")
    assert LayoutStore(tmp_path / "skopeo-out").resolve("", "pulled").digest == image.digest


def test_we_read_what_skopeo_pushes(registry_server, dagseal, tmp_path):
    src, image = _signed_image(tmp_path, repo="team_a/sk-write")
    _skopeo("copy", "--dest-tls-verify=false", src, f"docker://{registry_server.ref('team_a/sk-write:2.0')}")
    pushed = json.loads(_skopeo("inspect", "--tls-verify=false", f"docker://{registry_server.ref('team_a/sk-write:2.0')}"))
    line = _ok(dagseal("copy", registry_server.ref("team_a/sk-write:2.0"), f"oci:{tmp_path / 'ours'}:team_a/sk-write:2.0", "--json"))
    assert line["digest"] == pushed["Digest"]
    umoci = subprocess.run([require_tool("umoci"), "stat", "--image", f"{tmp_path / 'ours'}:team_a/sk-write:2.0"],
                           capture_output=True, text=True)
    assert umoci.returncode == 0, umoci.stderr


def test_tampered_source_blob_is_refused_exit_3_and_nothing_is_tagged(registry_server, dagseal, tmp_path):
    src, image = _signed_image(tmp_path, repo="team_a/cp-tampered")
    layer = image.parsed.layers[0]
    path = tmp_path / "src" / "blobs" / "sha256" / layer.digest.split(":")[1]
    path.chmod(0o644)
    path.write_bytes(b"X" + path.read_bytes()[1:])
    result = dagseal("push", src, registry_server.ref("team_a/cp-tampered:1.0"), "--json")
    assert result.code == 3
    assert result.json_lines[0]["check"] == "blob-digest" and layer.digest in result.json_lines[0]["message"]
    with RemoteStore(registry_server.host, plain_http=True) as remote:
        assert remote.tags("team_a/cp-tampered") == []
        assert not remote.has_blob("team_a/cp-tampered", layer)


def test_oras_py_reads_what_we_push_and_we_read_what_it_pushes(registry_server, dagseal, tmp_path, monkeypatch):
    import oras.client

    src, image = _signed_image(tmp_path, repo="team_a/oras")
    _ok(dagseal("push", src, registry_server.ref("team_a/oras:1.0"), "--json"))
    client = oras.client.OrasClient(hostname=registry_server.host, insecure=True)
    assert "1.0" in client.get_tags(registry_server.ref("team_a/oras"))
    assert client.get_manifest(registry_server.ref("team_a/oras:1.0")) == json.loads(image.raw)
    artifact = tmp_path / "notes.txt"
    artifact.write_text("pushed by oras-py\n")
    monkeypatch.chdir(tmp_path)  # oras-py names layers by their path relative to the working folder
    client.push(files=[artifact.name], target=registry_server.ref("team_a/oras-artifact:1"), disable_path_validation=True)
    pushed = client.get_manifest(registry_server.ref("team_a/oras-artifact:1"))
    line = _ok(dagseal("copy", registry_server.ref("team_a/oras-artifact:1"), f"oci:{tmp_path / 'from-oras'}:a/b:1", "--json"))
    store = LayoutStore(tmp_path / "from-oras")
    assert json.loads(store.get_manifest("a/b", line["digest"]).raw) == pushed
    layer = store.get("a/b", "1").parsed.layers[0]
    with store.open_blob("a/b", layer) as stream:
        assert stream.read(1000) == b"pushed by oras-py\n"
