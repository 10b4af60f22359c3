"""The build cache: finished layers, content-addressed by what they were built from.

Guards against redoing work: a dependency layer is keyed by (lock digest, python, platform,
codec, epoch), a DAG layer by the digest of its (path, mode, content hash) listing; a hit hands
back the compressed file and its descriptor, so uv does not run and nothing is recompressed.
Entries are written atomically (layer file renamed first, its JSON record last, both via temp
files), so a crash leaves either a whole entry or none; a record whose file is missing or has the
wrong size is treated as a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from registry.model import Descriptor, canonical_json
from bundler.layers import LayerFile
from registry.fsutil import atomic_write

FORMAT = 1  # bump when the layer writer changes what it writes


def cache_key(**parts: object) -> str:
    """A stable hex key of named parts (sorted, canonical JSON)."""
    return hashlib.sha256(canonical_json({"format": FORMAT, **parts})).hexdigest()


class LayerCache:
    """Layers under `root/layers/<key>.{layer,json}`; `tmp_dir` is where new layers are written."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.layers = self.root / "layers"
        self.tmp_dir = self.root / "tmp"

    def prepare(self) -> None:
        self.layers.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> LayerFile | None:
        record = self.layers / f"{key}.json"
        blob = self.layers / f"{key}.layer"
        try:
            doc = json.loads(record.read_bytes())
            desc = Descriptor.model_validate(doc["descriptor"])
            diff_id = doc["diff_id"]
            if blob.stat().st_size != desc.size or not isinstance(diff_id, str):
                return None
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        return LayerFile(blob, desc, diff_id)

    def put(self, key: str, layer: LayerFile) -> LayerFile:
        """Move a freshly written layer file (from `tmp_dir`) into the cache; returns the cached entry."""
        self.prepare()
        blob = self.layers / f"{key}.layer"
        os.replace(layer.path, blob)
        record = canonical_json({"descriptor": layer.descriptor.to_json_dict(), "diff_id": layer.diff_id})
        atomic_write(self.layers / f"{key}.json", record, tmp_dir=self.tmp_dir)
        return LayerFile(blob, layer.descriptor, layer.diff_id)
