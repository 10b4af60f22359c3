"""The base an image is built on: nothing (`scratch`) or another image's layers and config.

`BaseImage` is the hand-over between base sources (an OCI layout folder, a registry reference
pinned by digest, or the buildah environment backend of `bundler.environment`) and the native
builder, which puts the dependency, DAG and metadata layers on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from registry.errors import BadInput, NotFound
from registry.model import (
    DOCKER_LAYER_GZIP,
    LAYER_TYPES,
    MAX_CONFIG_BYTES,
    OCI_LAYER_GZIP,
    Descriptor,
    Index,
    Manifest,
    RawContent,
    load_json,
)
from registry.store import Store


@dataclass(frozen=True)
class BaseImage:
    """Layers (in order, with their uncompressed diff_ids) and config of a base image.

    `store`/`repository` say where the layer blobs can be read from; `None` for scratch.
    `digest` is the base manifest's digest (`None` for scratch), recorded in bundle.json.
    """

    name: str  # as written in the spec's `base` (e.g. "scratch", "oci:bases/debian@sha256:...")
    layers: list[Descriptor] = field(default_factory=list)
    diff_ids: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # the base's image config JSON
    store: Store | None = None
    repository: str = ""
    digest: str | None = None


SCRATCH = BaseImage(name="scratch")


MAX_BASE_LAYERS = 127  # overlayfs and most runtimes stop well before this


def load_base(org, bundle, *, plain_http: bool = False, platform: str | None = None) -> BaseImage:
    """The base a bundle names: `scratch`, `oci:DIR:name` / `oci:DIR@digest` (DIR relative to the
    repository root, the parent of the specs folder), or a registry reference pinned by digest.

    Guards against: a base outside `org.allowed_bases` (checked again here, not only by validate),
    an unpinned registry base (its content could change under the same name), an image for another
    platform, and a config whose diff_ids do not match its layers. All refusals are BadInput (2)."""
    name = bundle.spec.base
    where = f"{bundle.path}: bundle.base"
    allowed = org.org.org.allowed_bases
    if name not in allowed:
        raise BadInput(f"{where}: {name!r} is not in org.allowed_bases ({', '.join(allowed)})",
                       hint="use an allowed base, or ask the platform team to add it to org.toml")
    if name == "scratch":
        return SCRATCH
    ref = _base_reference(name, where, org.root.parent)
    from registry.open import open_store

    store = open_store(ref, plain_http=plain_http, create=False)
    try:
        content = store.get(ref.repository, ref.reference or "")
    except NotFound as exc:
        raise BadInput(f"{where}: base {name!r} was not found: {exc.message}",
                       hint="build or copy the base image there first, or fix the reference") from None
    platform = platform or org.org.org.platforms[0]
    content = _pick_platform(store, ref.repository, content, platform, where)
    manifest = content.parsed
    config = _read_config(store, ref.repository, manifest.config, where)
    arch_os = f"{config.get('os')}/{config.get('architecture')}"
    if arch_os != platform:
        raise BadInput(f"{where}: base {name!r} is built for {arch_os}, the org builds for {platform}",
                       hint="use a base image of the org's platform")
    diff_ids = list((config.get("rootfs") or {}).get("diff_ids") or [])
    if len(diff_ids) != len(manifest.layers) or len(diff_ids) > MAX_BASE_LAYERS:
        raise BadInput(f"{where}: base {name!r} has {len(manifest.layers)} layers but {len(diff_ids)} diff_ids "
                       f"(at most {MAX_BASE_LAYERS} layers are accepted)", hint="rebuild the base image")
    return BaseImage(name=name, layers=_oci_layers(manifest.layers, where, name), diff_ids=diff_ids, config=config,
                     store=store, repository=ref.repository, digest=content.digest)


def _oci_layers(layers: list[Descriptor], where: str, name: str) -> list[Descriptor]:
    """Base layers as OCI descriptors: Docker's gzip type is the same bytes under another name;
    anything else (foreign or non-distributable layers, artifacts) is refused."""
    out = []
    for desc in layers:
        if desc.media_type == DOCKER_LAYER_GZIP:
            desc = desc.model_copy(update={"media_type": OCI_LAYER_GZIP})
        if desc.media_type not in LAYER_TYPES or desc.urls:
            raise BadInput(f"{where}: base {name!r} has a layer of type {desc.media_type!r} ({desc.digest}) "
                           "that dagseal cannot copy", hint="use a base image made of plain tar/gzip/zstd layers")
        out.append(desc)
    return out


def _base_reference(name: str, where: str, repo_root: Path):
    from registry.ref import parse_reference

    try:
        ref = parse_reference(name)
    except BadInput as exc:
        raise BadInput(f"{where}: {exc.message}", hint=exc.hint) from None
    if ref.kind == "oci" and not Path(ref.location).is_absolute():
        ref = replace(ref, location=str(repo_root / ref.location))
    if ref.kind != "oci" and not ref.digest:
        raise BadInput(f"{where}: base {name!r} is not pinned by digest",
                       hint=f"write it as {name.split('@')[0]}@sha256:<digest> (see `skopeo inspect`)")
    if not ref.reference:
        raise BadInput(f"{where}: base {name!r} names no image in the layout",
                       hint="write oci:DIR:NAME or oci:DIR@sha256:<digest>")
    return ref


def _pick_platform(store: Store, repository: str, content: RawContent, platform: str, where: str) -> RawContent:
    if not isinstance(content.parsed, Index):
        return content
    os_, _, arch = platform.partition("/")
    for desc in content.parsed.manifests:
        if desc.platform and desc.platform.os == os_ and desc.platform.architecture == arch:
            picked = store.get_manifest(repository, desc.digest)
            if isinstance(picked.parsed, Manifest):
                return picked
    raise BadInput(f"{where}: the base image index has no manifest for {platform}",
                   hint="use a base image built for the org's platform")


def _read_config(store: Store, repository: str, desc: Descriptor, where: str) -> dict[str, Any]:
    if desc.size > MAX_CONFIG_BYTES:
        raise BadInput(f"{where}: base config {desc.digest} is {desc.size} bytes, more than {MAX_CONFIG_BYTES}",
                       hint="use a normal image as base")
    with store.open_blob(repository, desc) as fh:
        data = fh.read(desc.size + 1)
    doc = load_json(data, what=f"base config {desc.digest}", limit=MAX_CONFIG_BYTES)
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: base config {desc.digest} is not a JSON object", hint="use a normal image as base")
    return doc
