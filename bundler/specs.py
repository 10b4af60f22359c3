"""Spec models for `specs/org.toml` (platform team) and `specs/teams/<team>/<bundle>.toml` (a team).

Strict pydantic v2 models: unknown keys are errors, team names follow Airflow's
`^[a-zA-Z0-9_-]{3,50}$`. `load_organisation` reads every file, collects every problem (never just
the first) with file, field and fix, and raises one `SpecError` (exit 2) listing them all.
Ownership rules (DESIGN.md): a file under `teams/<team>/` declares only that team; the team exists
in org.toml; bundle names are unique across the organisation; the base is in `org.allowed_bases`.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Union

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

TEAM_PATTERN = r"^[a-zA-Z0-9_-]{3,50}$"
BUNDLE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,99}$"
Component = Literal["dag-processor", "triggerer", "worker"]
TeamName = Annotated[str, StringConstraints(pattern=TEAM_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class KeylessSigner(_Strict):
    """A Sigstore keyless identity: the OIDC issuer and the certificate's subject (SAN)."""

    issuer: Annotated[str, StringConstraints(pattern=r"^https://\S+$")]
    identity: Annotated[str, StringConstraints(min_length=1)]


class KeySigner(_Strict):
    """A public key (PEM file relative to org.toml, ECDSA P-256) or an AWS KMS key URI."""

    key: Annotated[str, StringConstraints(min_length=1)]


Signer = Union[KeylessSigner, KeySigner]


class TeamSpec(_Strict):
    owners: list[Annotated[str, StringConstraints(pattern=r"^@[\w.-]+(/[\w.-]+)?$|^[^@\s]+@[^@\s]+$")]] = Field(min_length=1)
    signers: list[Signer] = Field(min_length=1)


class OrgSection(_Strict):
    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    registry: str = "oci:.dagseal/store"
    python: Annotated[str, StringConstraints(pattern=r"^3\.[0-9]{1,2}$")] = "3.12"
    platforms: list[Literal["linux/amd64", "linux/arm64"]] = Field(default_factory=lambda: ["linux/amd64"], min_length=1)
    allowed_bases: list[str] = Field(default_factory=lambda: ["scratch"], min_length=1)


class OrgSpec(_Strict):
    org: OrgSection
    teams: dict[TeamName, TeamSpec] = Field(min_length=1)


class BundleSection(_Strict):
    name: Annotated[str, StringConstraints(pattern=BUNDLE_PATTERN)]
    team: TeamName
    version: str
    source: Annotated[str, StringConstraints(min_length=1)]
    dependencies: list[Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=list)
    base: str = "scratch"
    system_packages: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+:~-]+)?$")]] = Field(default_factory=list)
    components: list[Component] = Field(default_factory=lambda: ["dag-processor", "triggerer", "worker"], min_length=1)
    queues: list[Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=list)

    @field_validator("version")
    @classmethod
    def _pep440(cls, v: str) -> str:
        try:
            Version(v)
        except InvalidVersion:
            raise ValueError(f"{v!r} is not a PEP 440 version (use CalVer like 2026.11.1)") from None
        return v


class BundleSpec(_Strict):
    bundle: BundleSection


@dataclass(frozen=True)
class Bundle:
    """A validated bundle spec with where it came from."""

    spec: BundleSection
    path: Path  # the .toml file

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def team(self) -> str:
        return self.spec.team

    @property
    def repository(self) -> str:
        """`<team>/<bundle>`, lowercased because registries only accept lowercase repositories."""
        return f"{self.spec.team}/{self.spec.name}".lower()

    @property
    def source_dir(self) -> Path:
        return (self.path.parent / self.spec.source).resolve()

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def canonical(self) -> bytes:
        """The canonical JSON of the spec (sorted keys), hashed into `io.dagseal.spec.digest`."""
        return json.dumps(self.spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()

    @property
    def spec_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical()).hexdigest()


@dataclass(frozen=True)
class Organisation:
    """org.toml plus every team's bundle specs, all validated together."""

    root: Path
    org: OrgSpec
    bundles: list[Bundle] = field(default_factory=list)

    def team_bundles(self, team: str) -> list[Bundle]:
        return [b for b in self.bundles if b.team == team]

    def select(self, team: str | None = None, bundle: str | None = None) -> list[Bundle]:
        return [b for b in self.bundles if (team is None or b.team == team) and (bundle is None or b.name == bundle)]


def _format_errors(path: Path, exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling against specs/*.schema.json"
        elif err["type"] == "missing":
            msg = "required key is missing; add it"
        out.append(f"{path}: {loc}: {msg}")
    return out


def _read_toml(path: Path, errors: list[str]) -> dict | None:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        errors.append(f"{path}: file not found; create it (see README, 'Spec files')")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        errors.append(f"{path}: not valid TOML: {exc}")
    return None


def load_organisation(specs_dir: str | Path) -> Organisation:
    """Load and validate every spec under `specs_dir`; raise SpecError listing every problem."""
    from registry.errors import SpecError

    root = Path(specs_dir)
    errors: list[str] = []
    org_path = root / "org.toml"
    org: OrgSpec | None = None
    raw = _read_toml(org_path, errors)
    if raw is not None:
        try:
            org = OrgSpec.model_validate(raw)
        except ValidationError as exc:
            errors.extend(_format_errors(org_path, exc))
    bundles: list[Bundle] = []
    seen: dict[str, Path] = {}
    for path in sorted((root / "teams").glob("*/*.toml")):
        raw = _read_toml(path, errors)
        if raw is None:
            continue
        try:
            spec = BundleSpec.model_validate(raw).bundle
        except ValidationError as exc:
            errors.extend(_format_errors(path, exc))
            continue
        errors.extend(_ownership_errors(path, spec, org, seen))
        seen.setdefault(spec.name, path)
        bundles.append(Bundle(spec=spec, path=path))
    if org is not None:
        errors.extend(_org_errors(org_path, org))
    if errors:
        raise SpecError(f"{len(errors)} problem(s) in the specs under {root}", details=errors,
                        hint="fix each line above, then run `dagseal validate` again")
    assert org is not None
    return Organisation(root=root, org=org, bundles=bundles)


def _ownership_errors(path: Path, spec: BundleSection, org: OrgSpec | None, seen: dict[str, Path]) -> list[str]:
    errors = []
    folder_team = path.parent.name
    if spec.team != folder_team:
        errors.append(f"{path}: bundle.team: {spec.team!r} is declared in the folder of team {folder_team!r}; "
                      f"a team's folder may declare only that team (set team = {folder_team!r} or move the file)")
    if org is not None and spec.team not in org.teams:
        errors.append(f"{path}: bundle.team: team {spec.team!r} is not in org.toml; "
                      f"add [teams.{spec.team}] to org.toml (platform team) or fix the name")
    if spec.name in seen:
        errors.append(f"{path}: bundle.name: {spec.name!r} is already declared in {seen[spec.name]}; "
                      "bundle names are unique in the organisation, rename one")
    if org is not None and spec.base not in org.org.allowed_bases:
        errors.append(f"{path}: bundle.base: {spec.base!r} is not in org.allowed_bases "
                      f"({', '.join(org.org.allowed_bases)}); use an allowed base or ask the platform team to add it")
    source = (path.parent / spec.source)
    if not source.is_dir():
        errors.append(f"{path}: bundle.source: folder {source} does not exist; create it or fix the path")
    elif not source.resolve().is_relative_to(path.parent.resolve()):
        errors.append(f"{path}: bundle.source: {spec.source!r} leaves the team's folder; keep DAG code under {path.parent}")
    return errors


def _org_errors(path: Path, org: OrgSpec) -> list[str]:
    errors = []
    lowered: dict[str, str] = {}
    for team, spec in org.teams.items():
        if team.lower() in lowered:
            errors.append(f"{path}: teams.{team}: clashes with teams.{lowered[team.lower()]} once lowercased "
                          "(registry repositories are lowercase); rename one")
        lowered[team.lower()] = team
        for i, signer in enumerate(spec.signers):
            if isinstance(signer, KeySigner) and not signer.key.startswith("awskms://"):
                if not (path.parent / signer.key).is_file():
                    errors.append(f"{path}: teams.{team}.signers.{i}.key: public key file {path.parent / signer.key} "
                                  "does not exist; run `dagseal keygen --out PREFIX` and commit PREFIX.pub")
    return errors
