"""The OCI 1.1 referrers API path of RemoteStore.

Debian's distribution 2.8.2 has no referrers API, so the registry tests exercise the tag-schema
fallback. Here a faithful stand-in for an OCI 1.1 registry is served on loopback: an HTTP front
for the real docker-registry that forwards every request, and adds what the distribution spec
1.1 adds: `OCI-Subject` on a manifest PUT with a subject, and `GET /v2/<name>/referrers/<digest>`
(with the `artifactType` filter and `OCI-Filters-Applied`). The client must then use the API and
write no fallback tag; copying from it to a 2.8 registry must still carry the referrers.
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from registry.copy import copy_image
from registry.model import OCI_INDEX, canonical_json
from registry.open import open_store
from registry.store import fallback_tag
from tests.fixtures.registry import add_referrer, make_image

SIG_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
SBOM_TYPE = "application/vnd.cyclonedx+json"


class ReferrersFront:
    """Forwards to a real registry; implements the referrers API and OCI-Subject itself."""

    def __init__(self, target: str):
        self.target = target
        self.referrers: dict[tuple[str, str], list[dict]] = {}
        self.api_calls = 0
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _forward(self):
                body = self._body()
                conn = http.client.HTTPConnection(front.target, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                extra = {}
                if self.command == "PUT" and "/manifests/" in self.path and resp.status == 201:
                    extra = front._record(self.path, body, resp.getheader("Docker-Content-Digest"))
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def do_GET(self):
                parts = urlsplit(self.path)
                if "/referrers/" in parts.path:
                    return front._serve_referrers(self, parts)
                self._forward()

            do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def _record(self, path: str, body: bytes, digest: str | None) -> dict:
        doc = json.loads(body)
        subject = doc.get("subject")
        if not subject or not digest:
            return {}
        name = path.split("/v2/", 1)[1].split("/manifests/", 1)[0]
        entry = {"mediaType": doc.get("mediaType"), "digest": digest, "size": len(body),
                 "artifactType": doc.get("artifactType") or doc["config"]["mediaType"]}
        if doc.get("annotations"):
            entry["annotations"] = doc["annotations"]
        self.referrers.setdefault((name, subject["digest"]), []).append(entry)
        return {"OCI-Subject": subject["digest"]}

    def _serve_referrers(self, handler: BaseHTTPRequestHandler, parts) -> None:
        self.api_calls += 1
        name, digest = parts.path.split("/v2/", 1)[1].split("/referrers/", 1)
        found = list(self.referrers.get((name, digest), []))
        headers = {"Content-Type": OCI_INDEX}
        wanted = parse_qs(parts.query).get("artifactType")
        if wanted:
            found = [d for d in found if d["artifactType"] in wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        data = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found})
        handler.send_response(200)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def oci11_registry(registry_server):
    front = ReferrersFront(registry_server.host)
    yield front
    front.close()


def test_referrers_go_through_the_api_and_write_no_fallback_tag(oci11_registry, registry_server):
    store = open_store(f"{oci11_registry.host}/api/img")
    image = make_image(store, "api/img", "1", [b"layer one"])
    sig = add_referrer(store, "api/img", image, b'{"sig": 1}', SIG_TYPE)
    sbom = add_referrer(store, "api/img", image, b'{"sbom": 1}', SBOM_TYPE)

    assert {d.digest for d in store.referrers("api/img", image.digest)} == {sig.digest, sbom.digest}
    assert [d.digest for d in store.referrers("api/img", image.digest, artifact_type=SIG_TYPE)] == [sig.digest]
    assert oci11_registry.api_calls >= 2
    behind = open_store(f"{registry_server.host}/api/img")
    assert fallback_tag(image.digest) not in behind.tags("api/img"), "the API registry needs no fallback index"


def test_copy_from_an_api_registry_to_a_fallback_registry_keeps_referrers(oci11_registry, registry_factory):
    src = open_store(f"{oci11_registry.host}/api/copy")
    image = make_image(src, "api/copy", "1", [b"payload"])
    sig = add_referrer(src, "api/copy", image, b'{"sig": 2}', SIG_TYPE)

    plain = registry_factory()
    dst = open_store(f"{plain.host}/api/copy")
    copy_image(src, "api/copy", "1", dst, "api/copy", "1")

    assert dst.resolve("api/copy", "1").digest == image.digest
    assert [d.digest for d in dst.referrers("api/copy", image.digest)] == [sig.digest]
    assert fallback_tag(image.digest) in dst.tags("api/copy"), "2.8 has no API: the fallback index carries them"
