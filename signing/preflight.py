"""Before signing: read what the image says about itself and check the org would accept the signer.

Guards against CI publishing a signature the runtime verifier would refuse anyway (a signer not
listed for the image's team, an image whose team or bundle disagrees with the specs), and against
signing something that is not a dagseal bundle image (missing annotations, an index).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from registry.errors import BadInput, Refused
from registry.model import (
    ANN_BUNDLE,
    ANN_CREATED,
    ANN_LOCK_DIGEST,
    ANN_REVISION,
    ANN_SOURCE,
    ANN_SPEC_DIGEST,
    ANN_TEAM,
    ANN_VERSION,
    Manifest,
    RawContent,
)
from signing.signers.base import SignerIdentity
from signing.statement import Builder, BundlePredicate, Source
from signing.trust import KeylessSignerEntry, KeySignerEntry

REQUIRED = (ANN_TEAM, ANN_BUNDLE, ANN_VERSION, ANN_SPEC_DIGEST, ANN_LOCK_DIGEST)
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class ImageFacts:
    """The dagseal annotations of a bundle image's manifest."""

    team: str
    bundle: str
    annotations: dict[str, str]


def image_facts(content: RawContent, ref: str) -> ImageFacts:
    """The facts of an image manifest, or of a multi-platform bundle's index (the build puts the
    same dagseal annotations on the index and on every platform manifest; the gate checks that the
    manifest it starts agrees with the signed index)."""
    ann = dict(content.parsed.annotations or {})
    missing = [k for k in REQUIRED if not ann.get(k)]
    if missing and not isinstance(content.parsed, Manifest):
        raise BadInput(f"{ref} is an index without the dagseal annotations {', '.join(missing)}, not a bundle "
                       "image", hint="sign the index `dagseal build` made for a multi-platform org, or pin the "
                                     "digest of an image manifest")
    if missing:
        raise BadInput(f"{ref} is not a dagseal bundle image: annotations {', '.join(missing)} are missing",
                       hint="build it with `dagseal build`")
    return ImageFacts(team=ann[ANN_TEAM], bundle=ann[ANN_BUNDLE], annotations=ann)


def parse_expires(value: str | None, *, now: datetime | None = None) -> datetime | None:
    """`--expires`: an ISO 8601 time with a zone, or a duration like 90d / 12h / 30m from now."""
    if not value:
        return None
    now = now or datetime.now(timezone.utc)
    m = _DURATION.match(value.strip())
    if m:
        return now + timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"--expires {value!r} is neither an ISO 8601 time nor a duration",
                       hint="write e.g. 90d, 12h or 2027-01-31T00:00:00Z") from None
    if when.tzinfo is None:
        raise BadInput(f"--expires {value!r} has no time zone", hint="append Z for UTC")
    if when <= now:
        raise BadInput(f"--expires {value!r} is in the past", hint="give a future time or a duration like 90d")
    return when


def builder_id() -> str:
    """Who built/signed: DAGSEAL_BUILDER_ID, else the CI workflow, else the dagseal CLI."""
    if os.environ.get("DAGSEAL_BUILDER_ID"):
        return os.environ["DAGSEAL_BUILDER_ID"]
    if os.environ.get("GITHUB_WORKFLOW_REF"):
        server = os.environ.get("GITHUB_SERVER_URL", "https://github.com")
        return f"{server}/{os.environ['GITHUB_WORKFLOW_REF']}"
    return "https://dagseal.dev/cli"


def predicate_for(facts: ImageFacts, *, expires: datetime | None = None, now: datetime | None = None) -> BundlePredicate:
    ann = facts.annotations
    built = ann.get(ANN_CREATED)
    try:
        built_at = datetime.fromisoformat(built.replace("Z", "+00:00")) if built else None
    except ValueError:
        built_at = None
    if built_at is None or built_at.tzinfo is None:
        built_at = now or datetime.now(timezone.utc)
    try:
        return BundlePredicate(team=facts.team, bundle=facts.bundle, version=ann[ANN_VERSION],
                               spec_digest=ann[ANN_SPEC_DIGEST], lock_digest=ann[ANN_LOCK_DIGEST],
                               source=Source(uri=ann.get(ANN_SOURCE, ""), revision=ann.get(ANN_REVISION, "")),
                               built_at=built_at, expires=expires, builder=Builder(id=builder_id()))
    except ValueError as exc:
        raise BadInput(f"image annotations cannot form a statement: {exc}", hint="rebuild with `dagseal build`") from None


def check_signer(identity: SignerIdentity, team: str, allowed: list[KeySignerEntry | KeylessSignerEntry],
                 source: str) -> None:
    """Refused (exit 3) unless `identity` is one of the team's signers."""
    if any(identity.matches(entry) for entry in allowed):
        return
    listed = [f"key {e.key_id[:16]}… ({e.source or 'key'})" if isinstance(e, KeySignerEntry)
              else f"{e.identity} (issuer {e.issuer})" for e in allowed]
    raise Refused(f"signer {identity} is not allowed to sign for team {team!r} in {source}",
                  check="signer", details=[f"allowed: {x}" for x in listed] or ["no signers listed"],
                  hint=f"sign with one of the team's signers, or ask the platform team to add this signer to "
                       f"[teams.{team}] signers in org.toml")


def check_bundle(facts: ImageFacts, owner: str | None, source: str) -> None:
    """Refused unless the org gives the image's bundle to the image's team."""
    if owner is None:
        raise Refused(f"image bundle {facts.bundle!r} is not declared for any team in {source}",
                      check="bundle", hint="sign an image built from the org's specs, or add the bundle spec")
    if owner != facts.team:
        raise Refused(f"image says team {facts.team!r} but bundle {facts.bundle!r} belongs to team {owner!r} in {source}",
                      check="team", hint="rebuild the image from its spec; a bundle belongs to exactly one team")
