"""A SLSA provenance v1 predicate for a bundle image: what was built, from which inputs, by whom.

External parameters are exactly the digests the build used (spec, lock, source revision), so a
verifier can tie the image back to a reviewed spec and commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from signing.statement import BundlePredicate

SLSA_PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://dagseal.dev/build/v1"


def slsa_provenance(predicate: BundlePredicate, *, finished_on: datetime | None = None) -> dict[str, Any]:
    """The SLSA v1 `predicate` (buildDefinition + runDetails) of one bundle image."""
    deps: list[dict[str, Any]] = []
    if predicate.source.uri:
        dep: dict[str, Any] = {"uri": predicate.source.uri}
        if predicate.source.revision:
            dep["digest"] = {"gitCommit": predicate.source.revision}
        deps.append(dep)
    deps.append({"name": "lock", "digest": {"sha256": predicate.lock_digest.split(":", 1)[1]}})
    deps.append({"name": "spec", "digest": {"sha256": predicate.spec_digest.split(":", 1)[1]}})
    metadata: dict[str, Any] = {"startedOn": predicate.built_at.isoformat().replace("+00:00", "Z")}
    if finished_on:
        metadata["finishedOn"] = finished_on.isoformat().replace("+00:00", "Z")
    return {
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": {"team": predicate.team, "bundle": predicate.bundle, "version": predicate.version,
                                   "spec_digest": predicate.spec_digest, "lock_digest": predicate.lock_digest},
            "internalParameters": {},
            "resolvedDependencies": deps,
        },
        "runDetails": {"builder": {"id": predicate.builder.id}, "metadata": metadata},
    }
