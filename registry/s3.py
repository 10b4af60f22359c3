"""`S3Store`: the OCI image layout of `registry.layout` kept in a bucket (`s3://BUCKET/PREFIX`).

Keys under PREFIX: `oci-layout`, `index.json`, `blobs/sha256/<hex>`; tags are index entries
annotated `org.opencontainers.image.ref.name` = `<repository>:<tag>`, as in the folder layout, so
`aws s3 sync` of a layout folder and this store hold the same thing.

Guards:
- blobs first, the index last: `put_manifest` refuses unless every blob it names is in the
  bucket, and `index.json` is written only after the manifest, so a reader never sees a tag
  whose blobs are missing;
- no partial or wrong blob is ever visible: uploads stream through a VerifyingReader, which
  raises before the last byte is handed to boto3, so the single PUT is never sent or the
  multipart upload is aborted (S3 makes an object visible only on completion);
- `index.json` is updated with a conditional write (If-Match the ETag read, or If-None-Match: *
  when creating it) and retried on 412, so two writers never lose each other's tags;
- reads are verified against digests and size-capped.

The endpoint comes from boto3's own configuration (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3,
profiles, credentials chain). Service errors are StorageError (exit 4) with the service's own
message; a missing bucket or key is NotFound with the fix.
"""

from __future__ import annotations

import contextlib
import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Iterator

from registry.digest import VerifyingReader, hex_of, is_digest, parse_digest
from registry import layout_index
from registry.errors import NotFound, Refused, StorageError
from registry.model import (
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    Descriptor,
    RawContent,
    canonical_json,
    load_json,
    parse_content,
)
from registry.ref import Reference
from registry.streams import ErrorMappingReader
from registry.store import Store, iter_children

LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'
MAX_INDEX_BYTES = 64 * 1024 * 1024
INDEX_TRIES = 10
PART_SIZE = 16 * 1024 * 1024


class S3Store(Store):
    """An OCI layout under `prefix` in `bucket`."""

    def __init__(self, bucket: str, prefix: str = "", *, client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client
        self._layout_written = False

    @classmethod
    def from_reference(cls, ref: Reference, **kw) -> "S3Store":
        bucket, _, prefix = ref.location.partition("/")
        return cls(bucket, prefix, **kw)

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix})"

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"},
                                                            max_pool_connections=32))
        return self._client

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else list(parts))

    def blob_key(self, digest: str) -> str:
        return self.key("blobs", "sha256", hex_of(digest))

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    # -- errors ---------------------------------------------------------------------------------
    def _error(self, exc: Exception, what: str) -> StorageError:
        """botocore errors -> NotFound / StorageError with the service's own message."""
        response = getattr(exc, "response", None) or {}
        err = response.get("Error", {}) if isinstance(response, dict) else {}
        code = str(err.get("Code", ""))
        message = err.get("Message") or str(exc)
        if code == "NoSuchBucket":
            return NotFound(f"{what}: bucket {self.bucket!r} does not exist ({message})",
                            hint=f"create it (aws s3 mb s3://{self.bucket}) or fix the reference")
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFound(f"{what}: not found in {self.where} ({message})")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return StorageError(f"{what}: {self.where} denied access: {code}: {message}",
                                hint="check the AWS credentials and the bucket policy")
        return StorageError(f"{what}: {self.where} failed: {code + ': ' if code else ''}{message}",
                            hint="check AWS_ENDPOINT_URL and that the service is reachable")

    def _call(self, what: str, fn, **kw):
        try:
            return fn(Bucket=self.bucket, **kw)
        except Exception as exc:  # botocore ClientError, EndpointConnectionError, ...
            if isinstance(exc, (Refused, StorageError)):
                raise
            raise self._error(exc, what) from None

    # -- blobs ----------------------------------------------------------------------------------
    def _size_of(self, key: str) -> int | None:
        try:
            return self._call(f"checking {key}", self.client.head_object, Key=key)["ContentLength"]
        except NotFound:
            return None

    def has_blob(self, repository: str, desc: Descriptor) -> bool:
        return self._size_of(self.blob_key(desc.digest)) == desc.size

    @contextlib.contextmanager
    def open_blob(self, repository: str, desc: Descriptor) -> Iterator[BinaryIO]:
        answer = self._call(f"reading blob {desc.digest}", self.client.get_object, Key=self.blob_key(desc.digest))
        body = ErrorMappingReader(answer["Body"], f"reading blob {desc.digest} from {self.where}")
        with VerifyingReader(body, desc.digest, desc.size) as reader:
            yield reader  # type: ignore[misc]

    def put_blob(self, repository: str, desc: Descriptor, stream: BinaryIO) -> None:
        if self.has_blob(repository, desc):
            return
        self._ensure_layout()
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=4)
        reader = VerifyingReader(stream, desc.digest, desc.size)
        try:
            self.client.upload_fileobj(_ReadOnly(reader), self.bucket, self.blob_key(desc.digest), Config=config,
                                       ExtraArgs={"ContentType": "application/octet-stream"})
        except Refused:
            raise
        except Exception as exc:
            cause = exc
            while cause.__cause__ is not None or cause.__context__ is not None:  # s3transfer wraps errors
                if isinstance(cause, Refused):
                    raise cause from None
                cause = cause.__cause__ or cause.__context__
            if isinstance(cause, Refused):
                raise cause from None
            raise self._error(exc, f"uploading blob {desc.digest}") from None

    def _ensure_layout(self) -> None:
        if self._layout_written:
            return
        key = self.key("oci-layout")
        if self._size_of(key) is None:
            self._call("writing oci-layout", self.client.put_object, Key=key, Body=LAYOUT_FILE)
        self._layout_written = True

    # -- index ----------------------------------------------------------------------------------
    def _read_index(self) -> tuple[list[dict], str | None]:
        """(manifest entries, ETag) of index.json; ([], None) if there is none yet."""
        try:
            answer = self._call("reading index.json", self.client.get_object, Key=self.key("index.json"))
        except NotFound as exc:
            if "bucket" in exc.message:
                raise
            return [], None
        data = answer["Body"].read(MAX_INDEX_BYTES + 1)
        doc = load_json(data, what=f"{self.where}/index.json", limit=MAX_INDEX_BYTES)
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests", []), list):
            raise Refused(f"{self.where}/index.json is not an OCI index", check="manifest-format")
        return [m for m in doc.get("manifests", []) if isinstance(m, dict)], answer.get("ETag")

    def _write_index(self, manifests: list[dict], etag: str | None) -> bool:
        """Conditional write; False if someone else changed index.json meanwhile."""
        body = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self._call("writing index.json", self.client.put_object, Key=self.key("index.json"), Body=body,
                       ContentType="application/json", **cond)
        except StorageError as exc:
            if "PreconditionFailed" in exc.message or "ConditionalRequestConflict" in exc.message:
                return False
            raise
        return True

    def entries(self) -> Iterator[tuple[str | None, Descriptor]]:
        return layout_index.entries(self._read_index()[0])

    # -- manifests ------------------------------------------------------------------------------
    def resolve(self, repository: str, reference: str) -> Descriptor:
        if is_digest(reference):
            return self.get_manifest(repository, reference).descriptor()
        found = layout_index.find(self._read_index()[0], repository, reference)
        if found is not None:
            return found
        raise NotFound(f"no tag {layout_index.ref_name(repository, reference)!r} in {self.where}", hint="push or build it there first, or check the reference")

    def get_manifest(self, repository: str, digest: str) -> RawContent:
        parse_digest(digest)
        answer = self._call(f"reading manifest {digest}", self.client.get_object, Key=self.blob_key(digest))
        data = answer["Body"].read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise Refused(f"manifest {digest} in {self.where} is larger than {MAX_MANIFEST_BYTES} bytes",
                          check="manifest-format")
        reader = VerifyingReader(io.BytesIO(data), digest, len(data), what=f"manifest {digest} in {self.where}")
        reader.read()
        reader.read()
        return parse_content(data, what=f"manifest {digest} in {self.where}")

    def put_manifest(self, repository: str, content: RawContent, tag: str | None = None) -> Descriptor:
        children = list(iter_children(content))
        with ThreadPoolExecutor(max_workers=8) as pool:
            present = list(pool.map(lambda d: self._size_of(self.blob_key(d.digest)) is not None, children))
        missing = [d.digest for d, ok in zip(children, present) if not ok]
        if missing:
            raise StorageError(f"refusing to write manifest {content.digest} to {self.where}: blobs "
                               f"{', '.join(missing)} are missing", hint="copy the blobs first")
        desc = content.descriptor()
        self.put_blob(repository, desc, io.BytesIO(content.raw))
        for _ in range(INDEX_TRIES):
            manifests, etag = self._read_index()
            updated = layout_index.with_manifest(manifests, desc, repository, tag)
            if updated is None or self._write_index(updated, etag):
                return desc
            time.sleep(0.05)
        raise StorageError(f"index.json in {self.where} kept changing under {INDEX_TRIES} conditional writes",
                           hint="another writer is busy on this prefix; retry")

    def tags(self, repository: str) -> list[str]:
        return layout_index.tags(self._read_index()[0], repository)


class _ReadOnly(io.RawIOBase):
    """A non-seekable file object over a reader, so boto3 streams it instead of seeking around."""

    def __init__(self, reader):
        self._reader = reader

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._reader.read(n)

    def readinto(self, b) -> int:
        data = self._reader.read(len(b))
        b[: len(data)] = data
        return len(data)
