"""Open the store a reference names: `oci:` -> LayoutStore, `s3://` -> S3Store, else RemoteStore."""

from __future__ import annotations

from registry.errors import BadInput
from registry.ref import Reference, parse_reference
from registry.store import Store


def open_store(ref: Reference | str, *, plain_http: bool = False, create: bool = True) -> Store:
    """The store behind `ref` (its location only; repository, tag and digest are the caller's).

    Plain HTTP is allowed only for loopback registries or with `plain_http=True` (`--plain-http`).
    """
    if isinstance(ref, str):
        ref = parse_reference(ref)
    if ref.kind == "oci":
        from registry.layout import LayoutStore

        return LayoutStore(ref.location, create=create)
    if ref.kind == "s3":
        from registry.s3 import S3Store  # noqa: F401  (provided by registry/s3.py)

        return S3Store.from_reference(ref)
    if ref.kind == "registry":
        from registry.remote import RemoteStore  # noqa: F401  (provided by registry/remote.py)

        return RemoteStore.from_reference(ref, plain_http=plain_http or ref.is_loopback)
    raise BadInput(f"unsupported reference kind {ref.kind!r}")
