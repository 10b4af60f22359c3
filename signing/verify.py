"""The checks of DESIGN.md "Trust policy and verification", one function per check.

Read top to bottom like python-tuf's ngclient: each step names the attack it stops and refuses
with `Refused(check=<name>)` (exit 3) and a reason naming what was found, what was expected and
the fix. The steps only read what they are given (manifest bytes already verified against their
digest, signature bundle bytes, the policy), so they work offline from cached signatures and a
pinned trust root; fetching and the rollback memory live in `signing.gate` and `signing.state`.

Check names: signature, signer, subject, predicate-type, statement, team, bundle, expiry, rollback,
version-reuse (signing.state), platform (signing.platforms), blob-digest, manifest-format, tar-entry, tar-limits
(registry.digest, registry.model, signing.safetar, signing.materialise), cache (a cache entry this
user does not own, signing.materialise).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Sequence

from registry.errors import Refused
from registry.model import ANN_BUNDLE, ANN_TEAM, ANN_VERSION, Index, Manifest, RawContent

if TYPE_CHECKING:
    from signing.statement import BundlePredicate, Statement
    from signing.trust import TrustPolicy


@dataclass(frozen=True)
class Verified:
    """What the signature checks established about one manifest digest."""

    team: str
    bundle: str
    version: str
    digest: str
    signer: str
    predicate: "BundlePredicate"
    bundle_json: bytes


# -- rule 1: a valid signature by a signer listed for the team ------------------------------------

def check_signer_listed(bundle_json: bytes, policy: "TrustPolicy", team: str) -> None:
    """Stops a signature made with a key the policy does not give to this team (an outsider's
    key, or another team's key used to sign for this team). Keyless identities are matched by
    sigstore's Verifier in `check_signature`."""
    from signing.sigbundle import parse_bundle

    parsed = parse_bundle(bundle_json)
    if parsed.keyless or parsed.key_hint is None:
        return
    if any(k.key_id == parsed.key_hint for k in policy.keys_for(team)):
        return
    owners = [t for t in policy.teams if any(k.key_id == parsed.key_hint for k in policy.keys_for(t))]
    where = f"it is listed for {', '.join(owners)}" if owners else "no team lists it"
    raise Refused(f"signed with key {parsed.key_hint[:16]}…, which the policy does not list for team {team} ({where})",
                  check="signer", hint=f"sign with one of team {team}'s keys from org.toml, or add the key there "
                                       "and re-export the policy")


def check_signature(bundle_json: bytes, policy: "TrustPolicy", team: str) -> tuple[str, bytes]:
    """Stops forged or altered statements: the DSSE signature must verify (cryptography for
    key/KMS signatures, sigstore's Verifier with the pinned trusted root for keyless ones, which
    also checks issuer and identity). Returns (signer, payload)."""
    from signing.sigbundle import parse_bundle, verify_key_bundle, verify_keyless_bundle

    check_signer_listed(bundle_json, policy, team)
    if parse_bundle(bundle_json).keyless:
        identities = policy.identities_for(team)
        if not identities:
            raise Refused(f"signed keylessly, but the policy lists no keyless identity for team {team}",
                          check="signer", hint=f"sign with one of team {team}'s keys")
        identity, payload = verify_keyless_bundle(bundle_json, identities, policy.trusted_root)
        return identity, payload
    key_id, payload = verify_key_bundle(bundle_json, policy.keys_for(team))
    return f"key:{key_id}", payload


# -- rule 2: the statement is about this manifest, and is ours ------------------------------------

def check_subject(statement: "Statement", digest: str) -> None:
    """Stops a valid signature copied from another image (a replay onto other content): the
    statement's subject must be exactly the manifest digest being started."""
    if not statement.covers(digest):
        named = ", ".join(statement.subject_digests()) or "no sha256 digest"
        raise Refused(f"the signed statement is about {named}, not about {digest}: a signature copied from "
                      "another image", check="subject", hint="sign this image with `dagseal sign`")


def check_predicate_type(statement: "Statement") -> "BundlePredicate":
    """Stops another signed attestation (an SBOM, provenance, someone else's predicate) from
    being taken for the bundle statement; also validates the predicate's fields."""
    return statement.bundle_predicate()


# -- rule 3 and 4: team and bundle -----------------------------------------------------------------

def check_team(predicate: "BundlePredicate", manifest: Manifest | Index, team: str) -> None:
    """Stops cross-team use: a bundle made (and signed) for one team run by another team's
    components, and an image (or multi-platform index) whose annotation claims another team than
    its statement."""
    if predicate.team != team:
        raise Refused(f"the statement was signed for team {predicate.team}, this runtime serves team {team}",
                      check="team", hint=f"run {predicate.team}'s bundles only on {predicate.team}'s components")
    annotated = (manifest.annotations or {}).get(ANN_TEAM)
    if annotated != team:
        raise Refused(f"the image's {ANN_TEAM} annotation is {annotated!r}, the statement and runtime say {team!r}",
                      check="team", hint="rebuild the image for this team with dagseal build and sign it again")


def check_bundle(predicate: "BundlePredicate", manifest: Manifest | Index, policy: "TrustPolicy", team: str,
                 expected: str | None) -> None:
    """Stops bundle substitution: a team's validly signed bundle X served where bundle Y was asked
    for, a bundle the org policy gives to another team, and an image whose bundle or version
    annotations disagree with what was signed."""
    if expected is not None and predicate.bundle != expected:
        raise Refused(f"the statement is for bundle {predicate.bundle}, but {expected} was asked for",
                      check="bundle", hint="reference the right repository (<team>/<bundle>)")
    owner = policy.team_of(predicate.bundle)
    if owner != team:
        who = f"team {owner}" if owner else "no team"
        raise Refused(f"the org policy gives bundle {predicate.bundle} to {who}, not to team {team}",
                      check="bundle", hint="declare the bundle under specs/teams/<team>/ and re-export the policy")
    annotations = manifest.annotations or {}
    if annotations.get(ANN_BUNDLE) != predicate.bundle:
        raise Refused(f"the image's {ANN_BUNDLE} annotation is {annotations.get(ANN_BUNDLE)!r}, the statement says "
                      f"{predicate.bundle!r}", check="bundle", hint="rebuild and re-sign the image")
    if ANN_VERSION in annotations and annotations[ANN_VERSION] != predicate.version:
        raise Refused(f"the image's version annotation is {annotations[ANN_VERSION]!r}, the statement says "
                      f"{predicate.version!r}", check="bundle", hint="rebuild and re-sign the image")


# -- rule 5 (first half): expiry -------------------------------------------------------------------

def check_expiry(predicate: "BundlePredicate", now: datetime | None = None) -> None:
    """Stops indefinite replay of an old statement: a statement past its `expires` is refused
    (freeze attacks are also stopped by the host's rollback memory, signing.state)."""
    now = now or datetime.now(timezone.utc)
    if predicate.expires is not None and predicate.expires <= now:
        raise Refused(f"the statement expired at {predicate.expires.isoformat()}", check="expiry",
                      hint="re-sign the image (dagseal sign --expires ...) or publish a new version")


# -- all signature-level checks over every candidate signature -------------------------------------

_ORDER = ["signature", "statement", "signer", "subject", "predicate-type", "team", "bundle", "expiry"]


def _verify_one(bundle_json: bytes, content: RawContent, policy: "TrustPolicy", team: str,
                expected_bundle: str | None, now: datetime | None) -> Verified:
    from signing.statement import parse_statement

    signer, payload = check_signature(bundle_json, policy, team)
    statement = parse_statement(payload)
    check_subject(statement, content.digest)
    predicate = check_predicate_type(statement)
    manifest = content.parsed  # an index (multi-platform bundle): its platform manifest is checked by the gate
    check_team(predicate, manifest, team)
    check_bundle(predicate, manifest, policy, team, expected_bundle)
    check_expiry(predicate, now)
    return Verified(team=team, bundle=predicate.bundle, version=predicate.version, digest=content.digest,
                    signer=signer, predicate=predicate, bundle_json=bundle_json)


def verify_statements(content: RawContent, bundles: Sequence[bytes], policy: "TrustPolicy", team: str,
                      expected_bundle: str | None = None, now: datetime | None = None) -> Verified:
    """Rules 1-5a over every signature bundle found for the manifest; the first that passes all
    wins. If none does, the refusal of the candidate that got furthest is raised (so an attacker
    adding junk signatures cannot hide the real reason)."""
    if not bundles:
        raise Refused(f"no signature found for {content.digest}", check="signature",
                      hint="sign the image with `dagseal sign` (the signature is stored as an OCI referrer)")
    best: Refused | None = None
    for bundle_json in bundles:
        try:
            return _verify_one(bundle_json, content, policy, team, expected_bundle, now)
        except Refused as exc:
            if best is None or _rank(exc) > _rank(best):
                best = exc
    assert best is not None
    if len(bundles) > 1:
        best.details.append(f"{len(bundles)} signatures were tried; none passed every check")
    raise best


def _rank(exc: Refused) -> int:
    return _ORDER.index(exc.check) if exc.check in _ORDER else -1
