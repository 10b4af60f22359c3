"""The runtime trust policy: who may sign for which team, compiled from org.toml.

Runtime hosts have no `specs/`; `dagseal policy export --format json` writes everything they need
into one versioned JSON file (public key PEMs embedded, keyless identities, the Sigstore trusted
root of a private instance). `load_policy` treats the file as hostile input: unknown keys, a wrong
version, a malformed key or an unknown signer kind are bad input (exit 2) naming the field.

The records here are plain checked classes, not pydantic models: the policy is loaded on every
`dagseal run`, and importing pydantic and building models cost most of a warm start. They report
errors in pydantic's shape (`loc`, `msg`, every error at once) and never coerce ("5" is not 5, true
is not 1). The JSON Schema still comes from pydantic (`TrustPolicy.schema()`, imported only there,
from `_schema_models`); tests/test_trust_fast.py validates the same samples with both so the two
cannot drift.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from registry.errors import BadInput
from registry.model import canonical_json, load_json

if TYPE_CHECKING:
    from signing.safetar import TarLimits

POLICY_VERSION = 1
MAX_POLICY_BYTES = 16 * 1024 * 1024
TEAM_PATTERN = r"^[a-zA-Z0-9_-]{3,50}$"
BUNDLE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,99}$"  # as bundler.specs: bundle names become paths and env names
KEY_ID_PATTERN = r"^[a-f0-9]{64}$"
ISSUER_PATTERN = r"^https?://\S+$"
MAX_PEM_CHARS = 16384

Errors = list[tuple[tuple, str]]
_BAD = object()  # a value that failed its check (its error is already in the list)
_REQUIRED = object()


class PolicyError(ValueError):
    """Every problem found in one policy document; `errors()` has pydantic's ValidationError shape."""

    def __init__(self, errors: Errors):
        self._errors = list(errors)
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in self._errors))

    def errors(self) -> list[dict[str, Any]]:
        return [{"loc": loc, "msg": msg} for loc, msg in self._errors]


# -- field checks: (value, loc, errors) -> value, or _BAD after appending the error --------------------
Check = Callable[[Any, tuple, Errors], Any]


def _pattern(pattern: str) -> Callable[[str], bool]:
    """Whole-string match, as pydantic's (Rust) regex does with ^...$: no trailing newline slips through."""
    compiled = re.compile(pattern[1:-1])
    return lambda s: compiled.fullmatch(s) is not None


def _text(*, pattern: str | None = None, min_length: int = 0, max_length: int | None = None) -> Check:
    matches = _pattern(pattern) if pattern else None

    def check(v: Any, loc: tuple, errors: Errors) -> Any:
        if not isinstance(v, str):
            errors.append((loc, "Input should be a valid string"))
        elif len(v) < min_length:
            errors.append((loc, f"String should have at least {min_length} character{'s' if min_length > 1 else ''}"))
        elif max_length is not None and len(v) > max_length:
            errors.append((loc, f"String should have at most {max_length} characters"))
        elif matches is not None and not matches(v):
            errors.append((loc, f"String should match pattern '{pattern}'"))
        else:
            return v
        return _BAD
    return check


def _const(value: Any) -> Check:
    def check(v: Any, loc: tuple, errors: Errors) -> Any:
        if type(v) is type(value) and v == value:
            return v
        errors.append((loc, f"Input should be {value!r}"))
        return _BAD
    return check


def _optional(inner: Check) -> Check:
    return lambda v, loc, errors: None if v is None else inner(v, loc, errors)


def _non_negative_int(v: Any, loc: tuple, errors: Errors) -> Any:
    if type(v) is not int:  # no bool, no float, no "5"
        errors.append((loc, "Input should be a valid integer"))
    elif v < 0:
        errors.append((loc, "Input should be greater than or equal to 0"))
    else:
        return v
    return _BAD


def _positive_int(v: Any, loc: tuple, errors: Errors) -> Any:
    if type(v) is not int:  # no bool, no float, no "5"
        errors.append((loc, "Input should be a valid integer"))
    elif v <= 0:
        errors.append((loc, "Input should be greater than 0"))
    else:
        return v
    return _BAD


def _json_object(v: Any, loc: tuple, errors: Errors) -> Any:
    if not isinstance(v, dict):
        errors.append((loc, "Input should be a valid dictionary"))
        return _BAD
    bad = [k for k in v if not isinstance(k, str)]
    for k in bad:
        errors.append((loc + (k, "[key]"), "Input should be a valid string"))
    return _BAD if bad else v


def _list_of(item: Check, *, min_length: int = 0) -> Check:
    def check(v: Any, loc: tuple, errors: Errors) -> Any:
        if not isinstance(v, list):
            errors.append((loc, "Input should be a valid list"))
            return _BAD
        before = len(errors)
        out = [item(x, loc + (i,), errors) for i, x in enumerate(v)]
        if len(errors) > before:
            return _BAD
        if len(out) < min_length:
            errors.append((loc, f"List should have at least {min_length} item after validation, not {len(out)}"))
            return _BAD
        return out
    return check


def _dict_of(key: Check, value: Check) -> Check:
    def check(v: Any, loc: tuple, errors: Errors) -> Any:
        if not isinstance(v, dict):
            errors.append((loc, "Input should be a valid dictionary"))
            return _BAD
        before = len(errors)
        out = {}
        for k, x in v.items():
            key(k, loc + (k, "[key]"), errors)
            out[k] = value(x, loc + (k,), errors)
        return _BAD if len(errors) > before else out
    return check


def _record(name: str) -> Check:
    """A nested record, named lazily (the classes are defined below)."""
    return lambda v, loc, errors: globals()[name]._check(v, loc, errors)


def _signer(v: Any, loc: tuple, errors: Errors) -> Any:
    """The `kind`-tagged union of signer entries; the tag joins the error path as pydantic puts it."""
    if isinstance(v, (KeySignerEntry, KeylessSignerEntry)):
        return v
    if not isinstance(v, dict):
        errors.append((loc, "Input should be a valid dictionary or object to extract fields from"))
        return _BAD
    if "kind" not in v:
        errors.append((loc, "Unable to extract tag using discriminator 'kind'"))
        return _BAD
    kind = v["kind"]
    cls = {"key": KeySignerEntry, "keyless": KeylessSignerEntry}.get(kind) if isinstance(kind, str) else None
    if cls is None:
        errors.append((loc, f"Input tag '{kind}' found using 'kind' does not match any of the expected tags: "
                            "'key', 'keyless'"))
        return _BAD
    return cls._check(v, loc + (kind,), errors)


# -- rules across fields (shared with the pydantic twin) -------------------------------------------------
def _key_matches_id(key_id: str, public_key_pem: str) -> None:
    """A key entry whose id is not its key's would let one team's key pass for another's."""
    from signing.sigbundle import key_id_from_pem

    if key_id_from_pem(public_key_pem.encode()) != key_id:
        raise ValueError("key_id is not the sha256 of public_key_pem's SubjectPublicKeyInfo")


def _bundles_in_one_team(teams: dict[str, Any]) -> None:
    """A bundle listed for two teams would be accepted from either team's signers."""
    owner: dict[str, str] = {}
    for team, spec in teams.items():
        for bundle in spec.bundles:
            if bundle in owner:
                raise ValueError(f"bundle {bundle!r} is listed for teams {owner[bundle]!r} and {team!r}")
            owner[bundle] = team


# -- records --------------------------------------------------------------------------------------------
class _Record:
    """A frozen record checked field by field: unknown keys refused, nothing coerced.

    Guards against hostile policy files the way the pydantic models it replaces did: every bad field
    is reported with its path; a record's own rule (`_after`) runs only once its fields are valid.
    """

    _fields: ClassVar[tuple[tuple[str, Check, Any], ...]] = ()  # (name, check, default or _REQUIRED)

    def __init__(self, **data: Any):
        errors: Errors = []
        self._fill(data, (), errors)
        if errors:
            raise PolicyError(errors)

    @classmethod
    def _check(cls, v: Any, loc: tuple, errors: Errors) -> Any:
        if isinstance(v, cls):
            return v
        if not isinstance(v, dict):
            errors.append((loc, f"Input should be a valid dictionary or instance of {cls.__name__}"))
            return _BAD
        new = cls.__new__(cls)
        return new if new._fill(v, loc, errors) else _BAD

    def _fill(self, data: dict, loc: tuple, errors: Errors) -> bool:
        before = len(errors)
        names = set()
        for name, check, default in self._fields:
            names.add(name)
            if name in data:
                value = check(data[name], loc + (name,), errors)
            elif default is _REQUIRED:
                errors.append((loc + (name,), "Field required"))
                continue
            else:
                value = default() if callable(default) else default
            object.__setattr__(self, name, value)
        for key in data:
            if key not in names:
                errors.append((loc + (key,), "Extra inputs are not permitted"))
        if len(errors) > before:
            return False
        try:
            self._after()
        except ValueError as exc:
            errors.append((loc, f"Value error, {exc}"))
            return False
        return True

    def _after(self) -> None:
        """A rule across fields; raise ValueError to refuse."""

    @classmethod
    def model_validate(cls, obj: Any) -> Any:
        errors: Errors = []
        out = cls._check(obj, (), errors)
        if errors:
            raise PolicyError(errors)
        return out

    def model_dump(self, *, mode: str = "python") -> dict[str, Any]:
        return {name: _dump(getattr(self, name)) for name, _, _ in self._fields}

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError(f"{self.__class__.__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    def __hash__(self) -> int:
        return hash((type(self).__name__, canonical_json(self.model_dump())))

    def __repr__(self) -> str:
        body = " ".join(f"{name}={getattr(self, name)!r}" for name, _, _ in self._fields)
        return f"{self.__class__.__name__}({body})"


def _dump(value: Any) -> Any:
    """Records become dicts; plain JSON (trusted_root) is returned as it is, never walked."""
    if isinstance(value, _Record):
        return value.model_dump()
    if isinstance(value, list) and any(isinstance(v, _Record) for v in value):
        return [_dump(v) for v in value]
    if isinstance(value, dict) and any(isinstance(v, _Record) for v in value.values()):
        return {k: _dump(v) for k, v in value.items()}
    return value


class KeySignerEntry(_Record):
    """An ECDSA P-256 public key (from a key file or AWS KMS); `key_id` is hex sha256 of its SPKI DER."""

    kind: str
    key_id: str
    public_key_pem: str
    source: str | None  # where org.toml named it (keys/team_a.pub, awskms:///...), for messages
    _fields = (
        ("kind", _const("key"), "key"),
        ("key_id", _text(pattern=KEY_ID_PATTERN), _REQUIRED),
        ("public_key_pem", _text(min_length=1, max_length=MAX_PEM_CHARS), _REQUIRED),
        ("source", _optional(_text()), None),
    )

    def _after(self) -> None:
        _key_matches_id(self.key_id, self.public_key_pem)


PublicKeyEntry = KeySignerEntry


class KeylessSignerEntry(_Record):
    """A Sigstore keyless identity: certificate SAN `identity` issued for OIDC `issuer`."""

    kind: str
    issuer: str
    identity: str
    _fields = (
        ("kind", _const("keyless"), "keyless"),
        ("issuer", _text(pattern=ISSUER_PATTERN), _REQUIRED),
        ("identity", _text(min_length=1), _REQUIRED),
    )


SignerEntry = KeySignerEntry | KeylessSignerEntry


class TeamPolicy(_Record):
    signers: list[SignerEntry]
    bundles: list[str]
    _fields = (
        ("signers", _list_of(_signer, min_length=1), _REQUIRED),
        ("bundles", _list_of(_text(pattern=BUNDLE_PATTERN)), list),
    )


class PolicyLimits(_Record):
    """Bounds on what one start may unpack, set by the platform team (null: dagseal's defaults).

    Guards against a registry attacker who serves a tampered layer: its digest is only known at the end
    of its stream, so until then the start writes into the cache's temp folder; these bound how much
    (bytes, files and folders) to the org's real bundle sizes instead of the 16 GiB / 500,000 defaults.
    """

    max_bundle_bytes: int | None
    max_entries: int | None
    _fields = (
        ("max_bundle_bytes", _optional(_positive_int), None),
        ("max_entries", _optional(_positive_int), None),
    )


def _tar_limits(cls: Any, limits: "PolicyLimits | None") -> Any:
    default = cls()
    if limits is None:
        return default
    return cls(max_total_bytes=limits.max_bundle_bytes or default.max_total_bytes,
               max_entries=limits.max_entries or default.max_entries)


class TrustPolicy(_Record):
    """Version 1 of the runtime policy (`schema()` gives its JSON Schema)."""

    version: int
    org: str
    teams: dict[str, TeamPolicy]
    trusted_root: dict[str, Any] | None
    offline_grace_seconds: int | None
    limits: PolicyLimits | None
    _fields = (
        ("version", _const(POLICY_VERSION), _REQUIRED),
        ("org", _text(min_length=1), _REQUIRED),
        ("teams", _dict_of(_text(pattern=TEAM_PATTERN), _record("TeamPolicy")), _REQUIRED),
        ("trusted_root", _optional(_json_object), None),
        ("offline_grace_seconds", _optional(_non_negative_int), None),
        ("limits", _optional(_record("PolicyLimits")), None),
    )

    def tar_limits(self) -> "TarLimits":
        """The extraction bounds of a start under this policy (the defaults where it sets none)."""
        from signing.safetar import TarLimits

        return _tar_limits(TarLimits, self.limits)

    def _after(self) -> None:
        _bundles_in_one_team(self.teams)

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
        doc = _schema_models().model_json_schema()
        doc["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        doc["$id"] = "https://dagseal.dev/schema/policy/v1.json"
        return doc


def _schema_models() -> Any:
    """The pydantic twin of the records above, for the JSON Schema only (imported lazily: pydantic
    costs ~40 ms). Strict, so it refuses exactly what the records refuse; tests/test_trust_fast.py
    runs both over the same valid and hostile samples."""
    from typing import Annotated, Literal, Union

    from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
    from pydantic_core import PydanticCustomError

    strict = ConfigDict(extra="forbid", frozen=True, strict=True)

    class KeySignerEntry(BaseModel):
        """An ECDSA P-256 public key (from a key file or AWS KMS); `key_id` is hex sha256 of its SPKI DER."""

        model_config = strict
        kind: Literal["key"] = "key"
        key_id: Annotated[str, StringConstraints(pattern=KEY_ID_PATTERN)]
        public_key_pem: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PEM_CHARS)]
        source: str | None = None

        @model_validator(mode="after")
        def _after(self) -> "KeySignerEntry":
            _key_matches_id(self.key_id, self.public_key_pem)
            return self

    class KeylessSignerEntry(BaseModel):
        """A Sigstore keyless identity: certificate SAN `identity` issued for OIDC `issuer`."""

        model_config = strict
        kind: Literal["keyless"] = "keyless"
        issuer: Annotated[str, StringConstraints(pattern=ISSUER_PATTERN)]
        identity: Annotated[str, StringConstraints(min_length=1)]

    class TeamPolicy(BaseModel):
        model_config = strict
        signers: list[Annotated[Union[KeySignerEntry, KeylessSignerEntry], Field(discriminator="kind")]] = \
            Field(min_length=1)
        bundles: list[Annotated[str, StringConstraints(pattern=BUNDLE_PATTERN)]] = Field(default_factory=list)

    class PolicyLimits(BaseModel):
        """Bounds on what one start may unpack, set by the platform team (null: dagseal's defaults)."""

        model_config = strict
        max_bundle_bytes: Annotated[int, Field(gt=0)] | None = None
        max_entries: Annotated[int, Field(gt=0)] | None = None

    class TrustPolicy(BaseModel):
        """Version 1 of the runtime policy (`schema()` gives its JSON Schema)."""

        model_config = strict
        version: Literal[1]
        org: Annotated[str, StringConstraints(min_length=1)]
        teams: dict[Annotated[str, StringConstraints(pattern=TEAM_PATTERN)], TeamPolicy]
        trusted_root: dict[str, Any] | None = None
        offline_grace_seconds: Annotated[int, Field(ge=0)] | None = None
        limits: PolicyLimits | None = None

        @field_validator("version", mode="before")
        @classmethod
        def _not_true(cls, v: Any) -> Any:  # Literal[1] lets True (== 1) through even in strict mode
            if type(v) is not int:
                raise PydanticCustomError("literal_error", "Input should be 1")
            return v

        @model_validator(mode="after")
        def _after(self) -> "TrustPolicy":
            _bundles_in_one_team(self.teams)
            return self

    return TrustPolicy


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
    except PolicyError as exc:
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
