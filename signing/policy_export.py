"""Compile org.toml into the runtime trust policy and into admission policies (Kyverno, policy-controller).

One source of truth: every output is derived from the same per-team signer list, so the admission
controller and the start-time verifier accept exactly the same signers for exactly the same teams.
Public keys are read (and checked to be ECDSA P-256) at export time; KMS keys are asked for their
public key once, so runtime hosts never need specs/ or KMS access.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bundler.specs import KeylessSigner, KeySigner, Organisation
from registry.errors import BadInput
from registry.ref import parse_reference
from signing.sigbundle import key_id_from_pem
from signing.statement import PREDICATE_TYPE
from signing.trust import KeylessSignerEntry, KeySignerEntry, TeamPolicy, TrustPolicy

PUBLIC_GOOD_FULCIO = "https://fulcio.sigstore.dev"
PUBLIC_GOOD_REKOR = "https://rekor.sigstore.dev"


def _key_entry(org_toml: Path, team: str, index: int, signer: KeySigner, kms_client=None) -> KeySignerEntry:
    field = f"{org_toml}: teams.{team}.signers[{index}].key"
    if signer.key.startswith("awskms://"):
        from signing.signers.kms import kms_public_key_pem

        pem = kms_public_key_pem(signer.key, kms_client)
    else:
        path = org_toml.parent / signer.key
        try:
            pem = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"{field}: cannot read public key {path} ({exc})",
                           hint="commit the PREFIX.pub that `dagseal keygen` wrote") from None
    _check_p256(pem, field)
    return KeySignerEntry(key_id=key_id_from_pem(pem.encode()), public_key_pem=pem, source=signer.key)


def _check_p256(pem: str, field: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError as exc:
        raise BadInput(f"{field}: not a PEM public key ({exc})", hint="use the .pub file `dagseal keygen` wrote") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise BadInput(f"{field}: not an ECDSA P-256 public key", hint="dagseal signs and verifies with ECDSA P-256 only")


def compile_team(org: Organisation, team: str, *, kms_client=None) -> TeamPolicy:
    """The policy of one team (its signers and bundles); BadInput if the team is not in org.toml."""
    org_toml = org.root / "org.toml"
    spec = org.org.teams.get(team)
    if spec is None:
        raise BadInput(f"{org_toml}: team {team!r} is not in org.toml", hint=f"add [teams.{team}] or fix the name")
    signers: list[Any] = []
    for i, signer in enumerate(spec.signers):
        if isinstance(signer, KeylessSigner):
            signers.append(KeylessSignerEntry(issuer=signer.issuer, identity=signer.identity))
        else:
            signers.append(_key_entry(org_toml, team, i, signer, kms_client))
    return TeamPolicy(signers=signers, bundles=sorted(b.name for b in org.team_bundles(team)))


def compile_policy(org: Organisation, *, trusted_root: dict | None = None, offline_grace_seconds: int | None = None,
                   limits: dict | None = None, kms_client=None) -> TrustPolicy:
    """`limits` ({max_bundle_bytes, max_entries}, None: the defaults) bounds what one start may unpack."""
    teams = {team: compile_team(org, team, kms_client=kms_client) for team in sorted(org.org.teams)}
    return TrustPolicy(version=1, org=org.org.org.name, teams=teams, trusted_root=trusted_root,
                       offline_grace_seconds=offline_grace_seconds, limits=limits)


def image_glob(org: Organisation, team: str, *, suffix: str = "*") -> str:
    """Images of a team: `<org registry>/<team>/<suffix>`, or any registry when the org uses a layout store."""
    try:
        ref = parse_reference(org.org.org.registry)
    except BadInput:
        ref = None
    team_path = team.lower()
    if ref is not None and ref.kind == "registry":
        base = f"{ref.location}/{ref.repository}" if ref.repository else ref.location
        return f"{base}/{team_path}/{suffix}"
    return f"*/{team_path}/{suffix}"


def _urls(trusted_root: dict | None) -> tuple[str, str]:
    """Fulcio and Rekor URLs of the trusted root (public-good when none)."""
    fulcio, rekor = PUBLIC_GOOD_FULCIO, PUBLIC_GOOD_REKOR
    if trusted_root:
        cas = trusted_root.get("certificateAuthorities") or []
        tlogs = trusted_root.get("tlogs") or []
        if cas and cas[0].get("uri"):
            fulcio = cas[0]["uri"]
        if tlogs and tlogs[0].get("baseUrl"):
            rekor = tlogs[0]["baseUrl"]
    return fulcio, rekor


def k8s_name(*parts: str) -> str:
    """A Kubernetes object / rule name (DNS-1123 label: lowercase, digits, '-', at most 63)."""
    import re

    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return name[:63].rstrip("-")


def kyverno_policy(org: Organisation, policy: TrustPolicy) -> dict[str, Any]:
    """One Kyverno ClusterPolicy: per team, a verifyImages rule with the team's attestors and a
    condition that the signed predicate names that team."""
    _, rekor = _urls(policy.trusted_root)
    rules = []
    for team, spec in policy.teams.items():
        entries: list[dict[str, Any]] = []
        for signer in spec.signers:
            if isinstance(signer, KeySignerEntry):
                entries.append({"keys": {"publicKeys": signer.public_key_pem, "signatureAlgorithm": "sha256",
                                         "rekor": {"ignoreTlog": True}, "ctlog": {"ignoreSCT": True}}})
            else:
                entries.append({"keyless": {"issuer": signer.issuer, "subject": signer.identity,
                                            "rekor": {"url": rekor}}})
        rules.append({
            "name": k8s_name("dagseal", team),
            "match": {"any": [{"resources": {"kinds": ["Pod"]}}]},
            "verifyImages": [{
                "imageReferences": [image_glob(org, team)],
                "type": "SigstoreBundle",
                "failureAction": "Enforce",
                "mutateDigest": True,
                "verifyDigest": True,
                "required": True,
                "attestations": [{
                    "type": PREDICATE_TYPE,
                    "attestors": [{"count": 1, "entries": entries}],
                    "conditions": [{"all": [{
                        "key": "{{ team }}", "operator": "Equals", "value": team,
                        "message": f"the signed statement must name team {team}",
                    }]}],
                }],
            }],
        })
    return {
        "apiVersion": "kyverno.io/v1",
        "kind": "ClusterPolicy",
        "metadata": {"name": k8s_name("dagseal", policy.org), "annotations": {
            "policies.kyverno.io/title": f"dagseal team bundles of {policy.org}",
            "policies.kyverno.io/description": "generated by `dagseal policy export --format kyverno`; do not edit"}},
        "spec": {"validationFailureAction": "Enforce", "background": False, "webhookTimeoutSeconds": 30,
                 "rules": rules},
    }


def policy_controller_policies(org: Organisation, policy: TrustPolicy) -> list[dict[str, Any]]:
    """One Sigstore policy-controller ClusterImagePolicy per team."""
    fulcio, rekor = _urls(policy.trusted_root)
    docs = []
    for team, spec in policy.teams.items():
        cue = f'predicateType: "{PREDICATE_TYPE}"\npredicate: team: "{team}"\n'
        attestations = [{"name": "team", "predicateType": PREDICATE_TYPE, "policy": {"type": "cue", "data": cue}}]
        authorities = []
        for i, signer in enumerate(spec.signers):
            if isinstance(signer, KeySignerEntry):
                authorities.append({"name": f"key-{i}", "signatureFormat": "bundle",
                                    "key": {"data": signer.public_key_pem, "hashAlgorithm": "sha256"},
                                    "attestations": attestations})
            else:
                authorities.append({"name": f"keyless-{i}", "signatureFormat": "bundle",
                                    "keyless": {"url": fulcio,
                                                "identities": [{"issuer": signer.issuer, "subject": signer.identity}]},
                                    "ctlog": {"url": rekor},
                                    "attestations": attestations})
        docs.append({
            "apiVersion": "policy.sigstore.dev/v1beta1",
            "kind": "ClusterImagePolicy",
            "metadata": {"name": k8s_name("dagseal", policy.org, team)},
            "spec": {"mode": "enforce", "images": [{"glob": image_glob(org, team, suffix="**")}],
                     "authorities": authorities},
        })
    return docs


def render(org: Organisation, policy: TrustPolicy, fmt: str) -> str:
    """The text `dagseal policy export --format fmt` writes."""
    if fmt == "json":
        return json.dumps(policy.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    import yaml

    if fmt == "kyverno":
        return yaml.safe_dump(kyverno_policy(org, policy), sort_keys=False)
    if fmt == "policy-controller":
        return yaml.safe_dump_all(policy_controller_policies(org, policy), sort_keys=False)
    raise BadInput(f"--format {fmt!r} is not one of json, kyverno, policy-controller")
