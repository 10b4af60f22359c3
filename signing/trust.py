"""The runtime trust policy: who may sign for which team, compiled from org.toml.

Runtime hosts have no `specs/`; `dagseal policy export --format json` writes everything they need
into one versioned JSON file (public key PEMs embedded, keyless identities, the Sigstore trusted
root of a private instance). `load_policy` treats the file as hostile input: unknown keys, a wrong
version, a malformed key or an unknown signer kind are bad input (exit 2) naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from registry.errors import BadInput
from registry.model import canonical_json, load_json

POLICY_VERSION = 1
MAX_POLICY_BYTES = 16 * 1024 * 1024
TEAM_PATTERN = r"^[a-zA-Z0-9_-]{3,50}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeySignerEntry(_Strict):
    """An ECDSA P-256 public key (from a key file or AWS KMS); `key_id` is hex sha256 of its SPKI DER."""

    kind: Literal["key"] = "key"
    key_id: Annotated[str, StringConstraints(pattern=r"^[a-f0-9]{64}$")]
    public_key_pem: Annotated[str, StringConstraints(min_length=1, max_length=16384)]
    source: str | None = None  # where org.toml named it (keys/team_a.pub, awskms:///...), for messages

    @model_validator(mode="after")
    def _key_matches_id(self) -> "KeySignerEntry":
        from signing.sigbundle import key_id_from_pem

        if key_id_from_pem(self.public_key_pem.encode()) != self.key_id:
            raise ValueError("key_id is not the sha256 of public_key_pem's SubjectPublicKeyInfo")
        return self


PublicKeyEntry = KeySignerEntry


class KeylessSignerEntry(_Strict):
    """A Sigstore keyless identity: certificate SAN `identity` issued for OIDC `issuer`."""

    kind: Literal["keyless"] = "keyless"
    issuer: Annotated[str, StringConstraints(pattern=r"^https?://\S+$")]
    identity: Annotated[str, StringConstraints(min_length=1)]


SignerEntry = Annotated[Union[KeySignerEntry, KeylessSignerEntry], Field(discriminator="kind")]


BUNDLE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,99}$"  # as bundler.specs: bundle names become paths and env names


class TeamPolicy(_Strict):
    signers: list[SignerEntry] = Field(min_length=1)
    bundles: list[Annotated[str, StringConstraints(pattern=BUNDLE_PATTERN)]] = Field(default_factory=list)


class TrustPolicy(_Strict):
    """Version 1 of the runtime policy (`schema()` gives its JSON Schema)."""

    version: Literal[1]
    org: Annotated[str, StringConstraints(min_length=1)]
    teams: dict[Annotated[str, StringConstraints(pattern=TEAM_PATTERN)], TeamPolicy]
    trusted_root: dict[str, Any] | None = None
    offline_grace_seconds: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _bundle_in_one_team(self) -> "TrustPolicy":
        owner: dict[str, str] = {}
        for team, spec in self.teams.items():
            for bundle in spec.bundles:
                if bundle in owner:
                    raise ValueError(f"bundle {bundle!r} is listed for teams {owner[bundle]!r} and {team!r}")
                owner[bundle] = team
        return self

    def signers_for(self, team: str) -> list[KeySignerEntry | KeylessSignerEntry]:
        spec = self.teams.get(team)
        return list(spec.signers) if spec else []

    def keys_for(self, team: str) -> list[KeySignerEntry]:
        return [s for s in self.signers_for(team) if isinstance(s, KeySignerEntry)]

    def identities_for(self, team: str) -> list[KeylessSignerEntry]:
        return [s for s in self.signers_for(team) if isinstance(s, KeylessSignerEntry)]

    def team_of(self, bundle: str) -> str | None:
        for team, spec in self.teams.items():
            if bundle in spec.bundles:
                return team
        return None

    def to_json(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))

    @classmethod
    def schema(cls) -> dict[str, Any]:
        doc = cls.model_json_schema()
        doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        doc["$id"] = "https://dagseal.dev/schema/policy/v1.json"
        return doc


def parse_policy(data: bytes, *, what: str = "policy") -> TrustPolicy:
    """Validate policy bytes; BadInput (exit 2) naming the field and the fix."""
    fix = "re-export it with `dagseal policy export --format json --out FILE`"
    try:
        doc = load_json(data, what=what, limit=MAX_POLICY_BYTES)
    except Exception as exc:
        raise BadInput(f"{what}: {getattr(exc, 'message', exc)}", hint=fix) from None
    if not isinstance(doc, dict):
        raise BadInput(f"{what}: not a JSON object", hint=fix)
    if doc.get("version") != POLICY_VERSION:
        raise BadInput(f"{what}: version: {doc.get('version')!r} is not supported (this dagseal reads version {POLICY_VERSION})",
                       hint=fix)
    try:
        return TrustPolicy.model_validate(doc)
    except ValidationError as exc:
        details = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            details.append(f"{what}: {loc}: {err['msg']}")
        raise BadInput(f"{what} is not a valid dagseal trust policy", details=details, hint=fix) from None


def load_policy(path: str | Path) -> TrustPolicy:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"policy file {path}: cannot be read ({exc.strerror})",
                       hint="pass --policy with the file `dagseal policy export` wrote") from None
    return parse_policy(data, what=str(path))
