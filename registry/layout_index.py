"""The `index.json` of an OCI image layout, as dagseal uses it, shared by the layout folder store
(`registry.layout`) and the bucket store (`registry.s3`): both hold the same layout and differ
only in how they read and write bytes.

Tags are entries annotated `org.opencontainers.image.ref.name` = `<repository>:<tag>` (a bare
`<tag>` for a single-image layout); untagged manifests (referrers, index children) are listed
without a name so that tools that walk the layout see them.
"""

from __future__ import annotations

from typing import Iterator

from registry.model import ANN_REF_NAME, Descriptor


def ref_name(repository: str, tag: str) -> str:
    return f"{repository}:{tag}" if repository else tag


def _name_of(entry: dict) -> str | None:
    return (entry.get("annotations") or {}).get(ANN_REF_NAME)


def entries(manifests: list[dict]) -> Iterator[tuple[str | None, Descriptor]]:
    """(ref name or None, descriptor) for every well-formed entry; malformed ones are skipped."""
    for entry in manifests:
        try:
            desc = Descriptor.model_validate(entry)
        except Exception:
            continue
        yield (desc.annotations or {}).get(ANN_REF_NAME), desc


def find(manifests: list[dict], repository: str, tag: str) -> Descriptor | None:
    name = ref_name(repository, tag)
    return next((desc for ref, desc in entries(manifests) if ref == name), None)


def with_manifest(manifests: list[dict], desc: Descriptor, repository: str, tag: str | None) -> list[dict] | None:
    """The entries after storing `desc` (tagged `tag`, or untagged); None when nothing changes.

    Tagging moves the name: the previous holder loses it, and an untagged entry of the same digest
    is replaced by the tagged one."""
    if tag is None:
        if any(m.get("digest") == desc.digest for m in manifests):
            return None
        return manifests + [desc.to_json_dict()]
    name = ref_name(repository, tag)
    kept = [m for m in manifests
            if _name_of(m) != name and (m.get("digest") != desc.digest or _name_of(m))]
    return kept + [desc.with_annotations({ANN_REF_NAME: name}).to_json_dict()]


def tags(manifests: list[dict], repository: str) -> list[str]:
    prefix = f"{repository}:" if repository else ""
    return sorted(ref[len(prefix):] for ref, _ in entries(manifests)
                  if ref and ref.startswith(prefix) and (repository or ":" not in ref))


def repositories(manifests: list[dict]) -> list[str]:
    return sorted({ref.rpartition(":")[0] for ref, _ in entries(manifests) if ref and ":" in ref})
