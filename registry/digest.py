"""Digests: parsing, and hashing bytes exactly once while they stream past.

A `Digest` is the `algorithm:hex` string of the OCI spec; only sha256 is accepted (it is what every
store here writes, and accepting others would widen what an attacker can feed the verifier).
"""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO, Iterator

from registry.errors import BadInput, Refused

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
CHUNK = 1 << 20


def parse_digest(value: str, *, what: str = "digest") -> str:
    """Return `value` if it is a well-formed sha256 digest, else raise BadInput naming `what`."""
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise BadInput(f"{what} {value!r} is not a sha256 digest", hint="use the form sha256:<64 lowercase hex>")
    return value


def is_digest(value: str) -> bool:
    return isinstance(value, str) and bool(_DIGEST.match(value))


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hex_of(digest: str) -> str:
    return parse_digest(digest).split(":", 1)[1]


class VerifyingReader:
    """Wraps a stream; hashes what is read and checks size and digest at EOF.

    Reading past `size` or reaching EOF with another digest raises `Refused(check="blob-digest")`,
    so a hostile store cannot hand over more or other bytes than the descriptor promised.
    """

    def __init__(self, raw: BinaryIO, digest: str, size: int, *, what: str = "blob"):
        self._raw = raw
        self._digest = parse_digest(digest)
        self._size = size
        self._hash = hashlib.sha256()
        self._read = 0
        self._what = what
        self._done = False

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        want = self._size - self._read + 1 if n is None or n < 0 else min(n, self._size - self._read + 1)
        chunk = self._raw.read(want) if want > 0 else b""
        if chunk:
            self._read += len(chunk)
            if self._read > self._size:
                raise Refused(f"{self._what} {self._digest} is larger than its descriptor's size {self._size}",
                              check="blob-digest")
            self._hash.update(chunk)
            if self._read == self._size:
                self._check_digest()  # verified before the last byte reaches the caller
            return chunk
        self._finish()
        return b""

    def _finish(self) -> None:
        self._done = True
        if self._read != self._size:
            raise Refused(f"{self._what} {self._digest} ended after {self._read} bytes, descriptor says {self._size}",
                          check="blob-digest")
        self._check_digest()

    def _check_digest(self) -> None:
        got = "sha256:" + self._hash.hexdigest()
        if got != self._digest:
            raise Refused(f"{self._what} content hashes to {got}, descriptor says {self._digest}", check="blob-digest")

    def readinto(self, b) -> int:  # lets io.BufferedReader / tarfile wrap it
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        close = getattr(self._raw, "close", None)
        if close:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def iter_chunks(stream: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while True:
        chunk = stream.read(size)
        if not chunk:
            return
        yield chunk
