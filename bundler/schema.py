"""JSON Schema of the two spec files, generated from the pydantic models into the specs folder.

Editors and CI use `specs/org.schema.json` and `specs/bundle.schema.json` to check a spec before
dagseal sees it; `dagseal schema --check` (and a test) guards against the committed files drifting
from the models.
"""

from __future__ import annotations

import json
from pathlib import Path

from bundler.specs import BundleSpec, OrgSpec

DIALECT = "https://json-schema.org/draft/2020-12/schema"
FILES = {
    "org.schema.json": (OrgSpec, "dagseal organisation (specs/org.toml)",
                        "Owned by the platform team: registry, python, platforms, allowed bases, teams and their signers."),
    "bundle.schema.json": (BundleSpec, "dagseal bundle spec (specs/teams/<team>/<bundle>.toml)",
                           "Owned by a team's deployment manager: one Airflow DAG bundle, its dependencies and team."),
}


def render() -> dict[str, str]:
    """File name -> the schema text (stable: same models give the same bytes)."""
    out = {}
    for name, (model, title, description) in FILES.items():
        schema = model.model_json_schema()
        schema = {"$schema": DIALECT, "$id": f"https://dagseal.dev/schema/{name}", **schema,
                  "title": title, "description": description}
        out[name] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return out


def stale(specs_dir: Path) -> list[Path]:
    """Schema files under `specs_dir` that are missing or differ from the models."""
    result = []
    for name, text in render().items():
        path = specs_dir / name
        try:
            current = path.read_text(encoding="utf-8")
        except OSError:
            current = None
        if current != text:
            result.append(path)
    return result


def write(specs_dir: Path) -> list[Path]:
    """Write both schema files (atomically); returns their paths."""
    from bundler.lock import write_atomic

    paths = []
    for name, text in render().items():
        write_atomic(specs_dir / name, text.encode())
        paths.append(specs_dir / name)
    return paths
