"""The base an image is built on: nothing (`scratch`) or another image's layers and config.

`BaseImage` is the hand-over between base sources (an OCI layout folder, a registry reference
pinned by digest, or the buildah environment backend of `bundler.environment`) and the native
builder, which puts the dependency, DAG and metadata layers on top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from registry.model import Descriptor
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
