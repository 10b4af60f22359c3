"""`RemoteStore`: the Store interface served by an OCI distribution registry (`host[:port]/repo`).

Built on the distribution HTTP API through `registry.http.Transport` (retries, auth). Extensions
over oras-py 0.2.43, each closing an upstream gap:
- streamed, chunked blob uploads: a blob is read from its stream in bounded chunks (PATCH with
  Content-Range, then PUT ?digest= with the last chunk); oras-py reads whole blobs into memory;
- HEAD before upload, so blobs the registry has are skipped; cross-repository mount
  (`POST .../blobs/uploads/?mount=<digest>&from=<repo>`) for blobs it has in another repository;
- resumable chunks: after a failed PATCH the upload's status (`GET <location>`, `Range`) says how
  many bytes arrived, and only the rest is sent, so a dropped connection never duplicates bytes;
- manifests and indexes uploaded with their own Content-Type (oras-py always sends the image
  manifest type), size-capped and hashed by us on read (the registry's Docker-Content-Digest is
  never trusted over our own hash);
- the OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`) with the tag-schema fallback
  (`sha256-<hex>` index) when the registry has no such API (distribution 2.8.2 answers 404), and
  referrer pushes that update the fallback index unless the registry answered `OCI-Subject`.

The fallback index is read-modify-written; two concurrent writers for the same subject can lose
one entry (the OCI spec's known race); sign steps of one image run sequentially in CI.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import BinaryIO, Iterator
from urllib.parse import urljoin

from registry.auth import Credentials, lookup_credentials
from registry.digest import VerifyingReader, is_digest, parse_digest
from registry.errors import Refused, StorageError
from registry.http import RetryPolicy, Transport, registry_error_text
from registry.streams import ErrorMappingReader, TransferInterrupted
from registry.model import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    RawContent,
    load_json,
    parse_content,
)
from registry.ref import Reference
from registry.store import Store

MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
UPLOAD_CHUNK = 32 * 1024 * 1024  # bytes held in memory per upload; blobs up to this size take 2 requests
CHUNK_TRIES = 5


RESTARTS = 2  # whole-blob restarts of a seekable stream after the registry dropped the upload


class UploadLost(TransferInterrupted):
    """The registry no longer knows an upload session; the blob has to be sent from its start."""


def _seekable(stream) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _already_verified(stream, desc: Descriptor) -> bool:
    """True for a VerifyingReader checking this very digest and size: it raises before handing
    out the last byte of wrong content, so the bytes need not be hashed a second time here."""
    return (isinstance(stream, VerifyingReader) and getattr(stream, "_digest", None) == desc.digest
            and getattr(stream, "_size", None) == desc.size)


def _pull(repo: str) -> str:
    return f"repository:{repo}:pull"


def _push(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def _read_full(stream: BinaryIO, n: int) -> bytes:
    """Read exactly `n` bytes unless the stream ends first."""
    parts, got = [], 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class RemoteStore(Store):
    """A registry at `host` (HTTPS, or plain HTTP when allowed)."""

    def __init__(self, host: str, *, plain_http: bool = False, credentials: Credentials | None = None,
                 retry: RetryPolicy | None = None, pool: int = 16, chunk_size: int = UPLOAD_CHUNK):
        self.host = host
        self.plain_http = plain_http
        self.chunk_size = chunk_size
        base = f"{'http' if plain_http else 'https'}://{host}"
        self.http = Transport(host, base, credentials, retry or RetryPolicy(), pool)
        self._referrers_api: bool | None = None  # learnt from the first referrers call
        self.stats = {"uploaded_bytes": 0, "mounted": 0}

    @classmethod
    def from_reference(cls, ref: Reference, *, plain_http: bool = False, **kw) -> "RemoteStore":
        """The registry of `ref`, with credentials from the docker config / helpers / ECR."""
        if "credentials" not in kw:
            kw["credentials"] = lookup_credentials(ref.location)
        return cls(ref.location, plain_http=plain_http, **kw)

    def close(self) -> None:
        self.http.close()

    def __repr__(self) -> str:
        return f"RemoteStore({self.host!r})"

    # -- blobs ----------------------------------------------------------------------------------
    def has_blob(self, repository: str, desc: Descriptor, *, scope: str | None = None) -> bool:
        resp = self.http.request("HEAD", f"/v2/{repository}/blobs/{parse_digest(desc.digest)}",
                                 scope=scope or _pull(repository), what=f"checking blob {desc.digest} in {repository}")
        resp.close()
        if resp.status_code == 404:
            return False
        length = resp.headers.get("Content-Length")
        return length is None or int(length) == desc.size

    @contextlib.contextmanager
    def open_blob(self, repository: str, desc: Descriptor) -> Iterator[BinaryIO]:
        resp = self.http.request("GET", f"/v2/{repository}/blobs/{parse_digest(desc.digest)}", scope=_pull(repository),
                                 stream=True, what=f"reading blob {desc.digest} of {repository}")
        if resp.status_code == 404:
            resp.close()
            raise self.http.not_found(resp, f"blob {desc.digest} of {self.host}/{repository}")
        try:
            raw = ErrorMappingReader(resp.raw, f"reading blob {desc.digest} from {self.host}/{repository}")
            with VerifyingReader(raw, desc.digest, desc.size) as reader:
                yield reader  # type: ignore[misc]
        finally:
            resp.close()

    def put_blob(self, repository: str, desc: Descriptor, stream: BinaryIO) -> None:
        if self.has_blob(repository, desc, scope=_push(repository)):
            return
        start = stream.tell() if _seekable(stream) else None
        for attempt in range(RESTARTS + 1):
            location = self._start_upload(repository)
            try:
                return self._upload(repository, location, desc, stream)
            except UploadLost:
                if start is None or attempt == RESTARTS:
                    raise  # copy_image reopens its source and retries the blob
                stream.seek(start)

    def mount_blob(self, repository: str, desc: Descriptor, from_repository: str) -> bool:
        """Ask the registry to link a blob it holds in `from_repository`; False if it would not."""
        scope = f"{_push(repository)} {_pull(from_repository)}"
        resp = self.http.request("POST", f"/v2/{repository}/blobs/uploads/", scope=scope, ok=(201, 202),
                                 params={"mount": parse_digest(desc.digest), "from": from_repository},
                                 what=f"mounting blob {desc.digest} from {from_repository} into {repository}")
        resp.close()
        if resp.status_code == 201:
            self.stats["mounted"] += 1
            return True
        if resp.status_code == 202 and resp.headers.get("Location"):  # not mounted: drop the upload it opened
            with contextlib.suppress(StorageError):
                self.http.request("DELETE", self._location(resp), scope=scope, ok=(204, 202, 200)).close()
        return False

    def _location(self, resp) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise StorageError(f"registry {self.host} started an upload without a Location header")
        return urljoin(self.http.base_url + "/", location)

    def _start_upload(self, repository: str) -> str:
        resp = self.http.request("POST", f"/v2/{repository}/blobs/uploads/", scope=_push(repository), ok=(202,),
                                 what=f"starting a blob upload to {self.host}/{repository}")
        resp.close()
        if resp.status_code == 404:
            raise self.http.not_found(resp, f"starting a blob upload to {self.host}/{repository}")
        return self._location(resp)

    def _upload(self, repository: str, location: str, desc: Descriptor, stream: BinaryIO) -> None:
        """PATCH bounded chunks, then PUT the last one with the digest; our hash is checked first."""
        h = None if _already_verified(stream, desc) else hashlib.sha256()
        sent = 0
        scope = _push(repository)
        while True:
            chunk = _read_full(stream, min(self.chunk_size, desc.size - sent))
            if h is not None:
                h.update(chunk)
            last = sent + len(chunk) >= desc.size
            if not last and not chunk:
                self._abort(location, scope)
                raise Refused(f"blob {desc.digest} ended after {sent} bytes, descriptor says {desc.size}",
                              check="blob-digest")
            if last:
                if stream.read(1) or (h is not None and "sha256:" + h.hexdigest() != desc.digest):
                    self._abort(location, scope)
                    raise Refused(f"blob for {desc.digest} does not hash to its digest (or is larger than "
                                  f"{desc.size} bytes); nothing was committed to {self.host}", check="blob-digest")
                self._finish(repository, location, desc, chunk)
                self.stats["uploaded_bytes"] += len(chunk)
                return
            location = self._patch(location, scope, chunk, sent, desc)
            sent += len(chunk)
            self.stats["uploaded_bytes"] += len(chunk)

    def _patch(self, location: str, scope: str, chunk: bytes, start: int, desc: Descriptor) -> str:
        """Send one chunk at offset `start`; after a failure resume from what the registry has."""
        offset = start
        for attempt in range(CHUNK_TRIES):
            body = chunk[offset - start:]
            if not body:
                return location
            try:
                resp = self.http.request("PATCH", location, scope=scope, ok=(202,), data=body, retry=False,
                                         headers={"Content-Type": "application/octet-stream",
                                                  "Content-Range": f"{offset}-{offset + len(body) - 1}"},
                                         what=f"uploading blob {desc.digest}")
                resp.close()
                if resp.status_code == 202:
                    return self._location(resp)
                error = self.http.not_found(resp, f"the upload of blob {desc.digest} vanished")
            except StorageError as exc:
                error = exc
            time.sleep(self.http.retry.delay(attempt + 1))
            offset = self._upload_offset(location, scope, error)
        raise StorageError(f"uploading blob {desc.digest} to {self.host} failed after {CHUNK_TRIES} tries",
                           hint="check the registry's health and retry the push")

    def _upload_offset(self, location: str, scope: str, error: Exception) -> int:
        """How many bytes of the upload the registry holds (`Range: 0-<last>`)."""
        resp = self.http.request("GET", location, scope=scope, ok=(204,), what="checking an upload's progress")
        resp.close()
        if resp.status_code == 404:
            # distribution 2.x cancels an upload whose stored size differs from the offset in its
            # `_state` token, i.e. after any partly received PATCH: the blob must start again
            raise UploadLost(f"{error}; and the upload session is gone on {self.host}",
                             hint="retry the push; it restarts the blob") from None
        rng = resp.headers.get("Range", "0-0")
        end = int(rng.rsplit("-", 1)[-1])
        return end + 1 if end > 0 or rng != "0-0" else 0

    def _finish(self, repository: str, location: str, desc: Descriptor, chunk: bytes) -> None:
        try:
            resp = self.http.request("PUT", location, scope=_push(repository), ok=(201, 204), data=chunk,
                                     params={"digest": desc.digest},
                                     headers={"Content-Type": "application/octet-stream"},
                                     what=f"committing blob {desc.digest} to {repository}")
            resp.close()
            if resp.status_code == 404 and not self.has_blob(repository, desc, scope=_push(repository)):
                raise UploadLost(f"committing blob {desc.digest} to {self.host}/{repository}: the registry no longer "
                                 f"knows the upload ({registry_error_text(resp)})", hint="retry the push; it restarts the blob")
        except StorageError:
            if self.has_blob(repository, desc, scope=_push(repository)):  # committed before the connection broke
                return
            raise

    def _abort(self, location: str, scope: str) -> None:
        with contextlib.suppress(StorageError):
            self.http.request("DELETE", location, scope=scope, ok=(204, 202, 200)).close()

    # -- manifests ------------------------------------------------------------------------------
    def _fetch(self, repository: str, reference: str) -> RawContent:
        """GET a manifest by tag or digest; size-capped, hashed by us, parsed as hostile."""
        where = f"{self.host}/{repository}{'@' if is_digest(reference) else ':'}{reference}"
        resp = self.http.request("GET", f"/v2/{repository}/manifests/{reference}", scope=_pull(repository),
                                 headers={"Accept": MANIFEST_ACCEPT}, stream=True, what=f"reading manifest {where}")
        try:
            if resp.status_code == 404:
                raise self.http.not_found(resp, f"manifest {where}",
                                          hint=f"check the repository and tag (tags: {self.host}/v2/{repository}/tags/list)")
            data = resp.raw.read(MAX_MANIFEST_BYTES + 1)
            media_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        finally:
            resp.close()
        if len(data) > MAX_MANIFEST_BYTES:
            raise Refused(f"manifest {where} is larger than {MAX_MANIFEST_BYTES} bytes", check="manifest-format")
        if is_digest(reference):
            reader = VerifyingReader(__import__("io").BytesIO(data), reference, len(data), what=f"manifest {where}")
            reader.read()
            reader.read()
        known = media_type if media_type in MANIFEST_TYPES + INDEX_TYPES else None
        return parse_content(data, media_type=known, what=f"manifest {where}")

    def get(self, repository: str, reference: str) -> RawContent:
        return self._fetch(repository, reference)  # one request; digests verified inside

    def resolve(self, repository: str, reference: str) -> Descriptor:
        return self._fetch(repository, reference).descriptor()

    def get_manifest(self, repository: str, digest: str) -> RawContent:
        return self._fetch(repository, parse_digest(digest))

    def put_manifest(self, repository: str, content: RawContent, tag: str | None = None) -> Descriptor:
        return self._put_manifest(repository, content, tag)[0]

    def _put_manifest(self, repository: str, content: RawContent, tag: str | None) -> tuple[Descriptor, bool]:
        """PUT with the content's own media type; returns (descriptor, registry handles referrers)."""
        reference = tag or content.digest
        resp = self.http.request("PUT", f"/v2/{repository}/manifests/{reference}", scope=_push(repository),
                                 ok=(201, 200), data=content.raw, headers={"Content-Type": content.media_type},
                                 what=f"writing manifest {content.digest} to {self.host}/{repository}")
        resp.close()
        if resp.status_code == 404:
            raise self.http.not_found(resp, f"writing manifest {content.digest} to {self.host}/{repository}")
        said = resp.headers.get("Docker-Content-Digest")
        if said and said != content.digest:
            raise StorageError(f"registry {self.host} stored manifest {content.digest} as {said}: it rewrote the bytes",
                               hint="use a registry that stores manifests byte for byte")
        return content.descriptor(), bool(resp.headers.get("OCI-Subject"))

    def tags(self, repository: str) -> list[str]:
        out: list[str] = []
        url = f"/v2/{repository}/tags/list"
        for _ in range(1000):  # bounded pagination
            resp = self.http.request("GET", url, scope=_pull(repository), what=f"listing tags of {repository}")
            if resp.status_code == 404:
                return []
            doc = load_json(resp.content, what=f"tag list of {self.host}/{repository}")
            out += [t for t in (doc.get("tags") or []) if isinstance(t, str)] if isinstance(doc, dict) else []
            link = resp.next_link
            if not link:
                break
            url = urljoin(self.http.base_url + "/", link)
        return sorted(set(out))

    # -- referrers ------------------------------------------------------------------------------
    def referrers(self, repository: str, subject_digest: str, artifact_type: str | None = None) -> list[Descriptor]:
        if self._referrers_api is not False:
            resp = self.http.request("GET", f"/v2/{repository}/referrers/{parse_digest(subject_digest)}",
                                     scope=_pull(repository), ok=(200, 400, 405),
                                     headers={"Accept": OCI_INDEX}, what=f"listing referrers of {subject_digest}")
            if resp.status_code == 200:
                self._referrers_api = True
                index = parse_content(resp.content, what=f"referrers of {subject_digest} in {self.host}/{repository}")
                found = list(getattr(index.parsed, "manifests", []))
                if artifact_type:
                    found = [d for d in found if d.artifact_type == artifact_type]
                return found
            self._referrers_api = False
        return super().referrers(repository, subject_digest, artifact_type)

    def add_referrer(self, repository: str, content: RawContent) -> Descriptor:
        subject = content.parsed.subject
        if subject is None:
            raise ValueError("a referrer manifest needs a subject")
        desc, native = self._put_manifest(repository, content, None)
        if not native:
            self._list_in_fallback(repository, subject.digest, content, desc)
        return desc


def describe_http_error(resp) -> str:  # re-exported for callers that hold a raw response
    return registry_error_text(resp)
