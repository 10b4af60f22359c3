"""`dagseal push SRC DST` and `dagseal copy SRC DST`: move an image with its referrers.

Output (one JSON line with --json): {src, dst, digest, referrers, blobs_copied, blobs_skipped,
blobs_mounted, bytes_copied}. A reference that does not parse, or a source without a tag or
digest, is bad input (exit 2); a missing tag or repository, a refused login and a registry that
keeps failing are storage errors (exit 4) carrying the registry's own message.
"""

from __future__ import annotations

import argparse

from bundler.output import Output
from registry.errors import BadInput
from registry.ref import Reference, parse_reference


def _names(src: Reference, dst: Reference) -> tuple[str, str, str | None]:
    """(source reference to resolve, destination repository, destination tag)."""
    reference = src.reference
    if not reference:
        raise BadInput(f"source {src} names no tag or digest",
                       hint="write SRC as oci:DIR:repo:tag, s3://BUCKET/PREFIX:repo:tag or host/repo:tag (or @sha256:...)")
    dst_repo = dst.repository or src.repository
    if dst.kind == "registry" and not dst_repo:
        raise BadInput(f"destination {dst} names no repository", hint="write DST as host/repo[:tag]")
    dst_tag = dst.tag if dst.tag else (src.tag if not dst.digest else None)
    return reference, dst_repo, dst_tag


def _transfer(args: argparse.Namespace, out: Output) -> int:
    from registry.copy import copy_image
    from registry.open import open_store

    if args.jobs < 1 or args.jobs > 64:
        raise BadInput(f"--jobs {args.jobs} is out of range", hint="use 1 to 64 parallel transfers")
    src, dst = parse_reference(args.src), parse_reference(args.dst)
    reference, dst_repo, dst_tag = _names(src, dst)
    with open_store(src, plain_http=args.plain_http, create=False) as src_store, \
            open_store(dst, plain_http=args.plain_http) as dst_store, out.progress() as bar:
        task = bar.add_task(f"{args.command} {dst}", total=None)

        def advance(desc, how: str) -> None:  # called from the transfer threads, once per blob
            bar.update(task, description=f"{args.command} {dst}: {desc.digest[7:19]} {how}")

        result = copy_image(src_store, src.repository, reference, dst_store, dst_repo, dst_tag,
                            referrers=not args.no_referrers, jobs=args.jobs, progress=advance)
    if dst.digest and dst.digest != result.digest:
        raise BadInput(f"destination {dst} pins {dst.digest} but the source is {result.digest}",
                       hint="drop the digest from DST or pin the same one")
    result.src = str(src)
    result.dst = str(dst.with_name(dst_repo, dst_tag, None if dst_tag else result.digest))
    obj = result.to_json()
    out.result(obj, f"{result.dst} {result.digest} (referrers {result.referrers}, blobs copied "
                    f"{result.blobs_copied}, skipped {result.blobs_skipped})")
    return 0


def push(args: argparse.Namespace, out: Output) -> int:
    """Push SRC (typically the embedded store) to DST (a registry or bucket)."""
    return _transfer(args, out)


def copy(args: argparse.Namespace, out: Output) -> int:
    """Copy between any two stores; the same operation as push."""
    return _transfer(args, out)
