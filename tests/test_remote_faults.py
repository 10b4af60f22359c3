"""Faults between dagseal and a real registry: injected 500s, dropped and cut connections, a
registry killed in the middle of a push. Retries must recover; what cannot be recovered exits 4
with the registry's own error text, and no tag ever points at a manifest whose blobs are missing."""

import io
import os

import pytest

from registry.copy import copy_image
from registry.digest import sha256_digest
from registry.errors import NotFound, StorageError
from registry.http import RetryPolicy
from registry.layout import LayoutStore
from registry.model import OCI_LAYER_TAR, Descriptor
from registry.remote import RemoteStore
from tests.fixtures.registry import make_image

FAST = RetryPolicy(tries=3, base=0.01, cap=0.05)


def _first(times: int, action: str, method: str, path_part: str):
    """A proxy rule: `action` for the first `times` requests matching method and path part."""
    left = {"n": times}

    def rule(m: str, path: str):
        if m == method and path_part in path and left["n"] > 0:
            left["n"] -= 1
            return action
        return None

    return rule


def test_injected_500s_on_uploads_are_retried(registry_server, fault_proxy, tmp_path):
    proxy = fault_proxy(registry_server.host, _first(2, "500", "PUT", "/blobs/uploads/"))
    src = LayoutStore(tmp_path / "src")
    image = make_image(src, "team_a/five-hundred", "1", [os.urandom(2000)])
    with RemoteStore(proxy.host, plain_http=True, retry=FAST) as remote:
        result = copy_image(src, "team_a/five-hundred", "1", remote, "team_a/five-hundred", "1")
        assert remote.resolve("team_a/five-hundred", "1").digest == image.digest == result.digest
    assert [a for _, _, a in proxy.seen].count("500") == 2


def test_persistent_500_exits_4_with_the_registry_text_and_leaves_no_tag(registry_server, fault_proxy, dagseal, tmp_path):
    proxy = fault_proxy(registry_server.host, _first(1000, "500", "PUT", "/manifests/"))
    src = LayoutStore(tmp_path / "src")
    make_image(src, "team_a/broken", "1", [os.urandom(100)])
    result = dagseal("push", f"oci:{tmp_path / 'src'}:team_a/broken:1", f"{proxy.host}/team_a/broken:1", "--json")
    assert result.code == 4
    error = result.json_lines[0]
    assert "injected failure from the test proxy" in error["message"] and "after 5 tries" in error["message"]
    with RemoteStore(registry_server.host, plain_http=True) as direct:
        with pytest.raises(NotFound):
            direct.resolve("team_a/broken", "1")


def test_dropped_connections_are_retried(registry_server, fault_proxy, tmp_path):
    proxy = fault_proxy(registry_server.host, _first(2, "drop", "HEAD", "/blobs/"))
    src = LayoutStore(tmp_path / "src")
    image = make_image(src, "team_a/dropped", "1", [os.urandom(100)])
    with RemoteStore(proxy.host, plain_http=True, retry=FAST) as remote:
        copy_image(src, "team_a/dropped", "1", remote, "team_a/dropped", "1", jobs=1)
        assert remote.get("team_a/dropped", "1").raw == image.raw


def test_a_chunk_cut_half_way_restarts_the_blob(registry_server, fault_proxy):
    """distribution drops an upload that received part of a PATCH; a seekable stream is sent again
    from its start and commits with the right digest (nothing duplicated, nothing partial)."""
    proxy = fault_proxy(registry_server.host, _first(1, "cut", "PATCH", "/blobs/uploads/"))
    data = os.urandom(600_000)
    desc = Descriptor(mediaType=OCI_LAYER_TAR, digest=sha256_digest(data), size=len(data))
    with RemoteStore(proxy.host, plain_http=True, retry=FAST, chunk_size=256 * 1024) as remote:
        remote.put_blob("team_a/cut", desc, io.BytesIO(data))
        with remote.open_blob("team_a/cut", desc) as stream:
            assert stream.read(len(data) + 1) == data
    assert ("PATCH", "cut") in [(m, a) for m, _, a in proxy.seen]


def test_a_cut_during_copy_reopens_the_source_blob(registry_server, fault_proxy, tmp_path):
    proxy = fault_proxy(registry_server.host, _first(1, "cut", "PATCH", "/blobs/uploads/"))
    src = LayoutStore(tmp_path / "src")
    image = make_image(src, "team_a/cut-copy", "1", [os.urandom(400_000)])
    with RemoteStore(proxy.host, plain_http=True, retry=FAST, chunk_size=128 * 1024) as remote:
        copy_image(src, "team_a/cut-copy", "1", remote, "team_a/cut-copy", "1")
        back = copy_image(remote, "team_a/cut-copy", "1", LayoutStore(tmp_path / "back"), "team_a/cut-copy", "1")
    assert back.digest == image.digest
    assert ("PATCH", "cut") in [(m, a) for m, _, a in proxy.seen]


def test_unreachable_registry_is_reported_after_retries(registry_factory):
    server = registry_factory()
    server.stop()
    with RemoteStore(server.host, plain_http=True, retry=FAST) as remote:
        with pytest.raises(StorageError) as info:
            remote.tags("team_a/x")
    assert "unreachable after 3 tries" in info.value.message and server.host in info.value.message


def test_registry_killed_mid_push_then_restarted(registry_factory, tmp_path):
    server = registry_factory()
    src = LayoutStore(tmp_path / "src")
    image = make_image(src, "team_a/killed", "1", [os.urandom(50_000), os.urandom(60_000), os.urandom(70_000)])

    def kill_after_first(desc, how):
        if how == "copied":
            server.stop()

    with RemoteStore(server.host, plain_http=True, retry=FAST) as remote:
        with pytest.raises(StorageError):
            copy_image(src, "team_a/killed", "1", remote, "team_a/killed", "1", jobs=1, progress=kill_after_first)
        server.start()
        with pytest.raises(NotFound):  # no tag: the manifest was never written
            remote.resolve("team_a/killed", "1")
        assert remote.tags("team_a/killed") == []
        again = copy_image(src, "team_a/killed", "1", remote, "team_a/killed", "1", jobs=1)
        assert again.digest == image.digest and again.blobs_skipped >= 1
        pulled = copy_image(remote, "team_a/killed", "1", LayoutStore(tmp_path / "back"), "team_a/killed", "1")
        assert pulled.blobs_copied == 4  # config and three layers, each verified against its digest


def test_429_with_retry_after_is_retried(registry_server, fault_proxy, tmp_path):
    proxy = fault_proxy(registry_server.host, _first(3, "429", "PUT", "/manifests/"))
    src = LayoutStore(tmp_path / "src")
    image = make_image(src, "team_a/throttled", "1", [os.urandom(100)])
    with RemoteStore(proxy.host, plain_http=True, retry=RetryPolicy(tries=5, base=5.0, cap=5.0)) as remote:
        copy_image(src, "team_a/throttled", "1", remote, "team_a/throttled", "1")  # Retry-After: 0, not 5 s backoff
        assert remote.resolve("team_a/throttled", "1").digest == image.digest
    assert [a for _, _, a in proxy.seen].count("429") == 3


def test_a_download_cut_half_way_is_fetched_again(registry_server, fault_proxy, tmp_path):
    src = LayoutStore(tmp_path / "src")
    image = make_image(src, "team_a/cut-pull", "1", [os.urandom(500_000)])
    with RemoteStore(registry_server.host, plain_http=True, retry=FAST) as direct:
        copy_image(src, "team_a/cut-pull", "1", direct, "team_a/cut-pull", "1")
    proxy = fault_proxy(registry_server.host, _first(1, "cut-response", "GET", "/blobs/" + image.parsed.layers[0].digest))
    with RemoteStore(proxy.host, plain_http=True, retry=FAST) as remote:
        back = LayoutStore(tmp_path / "back")
        copy_image(remote, "team_a/cut-pull", "1", back, "team_a/cut-pull", "1", jobs=1)
    assert back.get("team_a/cut-pull", "1").raw == image.raw
    assert list((tmp_path / "back" / ".tmp").glob("tmp*")) == []  # the cut attempt left nothing behind
    assert ("GET", "cut-response") in [(m, a) for m, _, a in proxy.seen]


def test_a_download_cut_every_time_exits_4(registry_server, fault_proxy, dagseal, tmp_path):
    src = LayoutStore(tmp_path / "src")
    make_image(src, "team_a/cut-always", "1", [os.urandom(300_000)])
    with RemoteStore(registry_server.host, plain_http=True, retry=FAST) as direct:
        copy_image(src, "team_a/cut-always", "1", direct, "team_a/cut-always", "1")
    proxy = fault_proxy(registry_server.host, _first(1000, "cut-response", "GET", "/blobs/sha256:"))
    result = dagseal("copy", f"{proxy.host}/team_a/cut-always:1", f"oci:{tmp_path / 'back'}:team_a/x:1", "--json")
    assert result.code == 4 and "failed mid-stream" in result.json_lines[0]["message"]
    assert LayoutStore(tmp_path / "back").tags("team_a/x") == []


def test_registry_killed_in_the_middle_of_a_blob_upload(registry_factory, fault_proxy, dagseal, tmp_path):
    """Killed after the first chunk of a layer went in: exit 4 with the cause; after a restart no
    tag exists, and the next push completes with every blob verified on the way back."""
    server = registry_factory()
    patches = {"n": 0}

    def kill_on_second_patch(method, path):
        if method == "PATCH":
            patches["n"] += 1
            if patches["n"] == 2:
                server.stop()
        return None

    proxy = fault_proxy(server.host, kill_on_second_patch)
    src = LayoutStore(tmp_path / "src")
    image = make_image(src, "team_a/mid-blob", "1", [os.urandom(3 * 1024 * 1024)])
    ref = f"oci:{tmp_path / 'src'}:team_a/mid-blob:1"
    with RemoteStore(proxy.host, plain_http=True, retry=FAST, chunk_size=1024 * 1024) as remote:
        with pytest.raises(StorageError):
            copy_image(src, "team_a/mid-blob", "1", remote, "team_a/mid-blob", "1", jobs=1)
    assert patches["n"] >= 2
    server.start()
    with RemoteStore(server.host, plain_http=True, retry=FAST) as direct:
        assert direct.tags("team_a/mid-blob") == []
    result = dagseal("push", ref, f"{server.host}/team_a/mid-blob:1", "--json")
    assert result.code == 0 and result.json_lines[0]["digest"] == image.digest
    pulled = dagseal("copy", f"{server.host}/team_a/mid-blob:1", f"oci:{tmp_path / 'back'}:team_a/mid-blob:1", "--json")
    assert pulled.code == 0 and pulled.json_lines[0]["digest"] == image.digest
