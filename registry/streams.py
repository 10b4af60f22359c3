"""Stream adapters shared by the network stores."""

from __future__ import annotations

from registry.errors import StorageError


class TransferInterrupted(StorageError):
    """A transfer broke off half-way (connection lost mid-stream, upload session dropped): the
    registry or bucket was reached, so sending or fetching the blob again from its start may work."""


class ErrorMappingReader:
    """A stream whose transport errors (reset, truncated body, timeout) become StorageError, so a
    connection lost mid-blob is reported (exit 4) and retried by copy_image, not a traceback."""

    def __init__(self, raw, what: str):
        self._raw = raw
        self._what = what

    def read(self, n: int = -1) -> bytes:
        try:
            return self._raw.read(n)
        except (OSError, ValueError) as exc:  # urllib3/botocore errors derive from these or wrap them
            raise TransferInterrupted(f"{self._what}: the connection failed mid-stream: {exc}") from None
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in ("urllib3", "requests", "botocore", "http"):
                raise TransferInterrupted(f"{self._what}: the connection failed mid-stream: {exc}") from None
            raise

    def close(self) -> None:
        close = getattr(self._raw, "close", None)
        if close:
            close()
