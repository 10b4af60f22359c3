"""Spec models for `specs/org.toml` (platform team) and `specs/teams/<team>/<bundle>.toml` (a team).

Strict pydantic v2 models: unknown keys are errors, no type coercion, team names follow Airflow's
`^[a-zA-Z0-9_-]{3,50}$`, dependencies are PEP 508 requirements. `check_organisation` reads every
file and returns every problem (never just the first) as a `Problem` with file, field and fix;
`load_organisation` raises them as one `SpecError` (exit 2).

Ownership rules (DESIGN.md) guarded here: a file under `teams/<team>/` declares only that team and
is named after its bundle; the team exists in org.toml; bundle names are unique across the
organisation; the base is in `org.allowed_bases`; the DAG source stays inside the team's folder;
a queue belongs to one team (a shared queue would let one team's workers run another team's tasks).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag,
                      ValidationError, field_validator)

TEAM_PATTERN = r"^[a-zA-Z0-9_-]{3,50}$"
BUNDLE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,99}$"
OWNER_PATTERN = r"^@[\w.-]+(/[\w.-]+)?$|^[^@\s]+@[^@\s]+$"
QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"
DEBIAN_PACKAGE_PATTERN = r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+:~-]+)?$"
Component = Literal["dag-processor", "triggerer", "worker"]
Platform = Literal["linux/amd64", "linux/arm64"]
TeamName = Annotated[str, StringConstraints(pattern=TEAM_PATTERN)]
Owner = Annotated[str, StringConstraints(pattern=OWNER_PATTERN)]
SCHEMA_HINT = {"org": "org.schema.json", "bundle": "bundle.schema.json"}


class _Strict(BaseModel):
    """Refuses unknown keys and coercion (a TOML integer is not a version string)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# ---------------------------------------------------------------- org.toml


class KeylessSigner(_Strict):
    """A Sigstore keyless identity: the OIDC issuer and the certificate's subject (SAN)."""

    issuer: Annotated[str, StringConstraints(pattern=r"^https://\S+$")] = Field(
        description="OIDC issuer URL, e.g. https://token.actions.githubusercontent.com")
    identity: Annotated[str, StringConstraints(min_length=1, pattern=r"^\S+$")] = Field(
        description="certificate identity (SAN), e.g. a workflow URL or an e-mail address")


def _key_reference(value: str) -> str:
    if value.startswith("awskms:"):
        if not value.startswith("awskms:///") or len(value) <= len("awskms:///"):
            raise ValueError(f"{value!r} is not a KMS key URI; write awskms:///<key id, ARN or alias/NAME>")
    elif not value.strip() or value != value.strip():
        raise ValueError("empty or padded key path; write a PEM file path relative to org.toml")
    return value


class KeySigner(_Strict):
    """A public key (PEM file relative to org.toml, ECDSA P-256) or an AWS KMS key URI."""

    key: Annotated[str, AfterValidator(_key_reference)] = Field(
        description="ECDSA P-256 public key PEM (path relative to org.toml) or awskms:///<key id or alias>")


def _signer_kind(value: Any) -> str | None:
    """Pick the signer model by its keys, so a wrong signer gives one error, not one per model."""
    if isinstance(value, KeylessSigner):
        return "keyless-signer"
    if isinstance(value, KeySigner):
        return "key-signer"
    if not isinstance(value, dict):
        return None
    keyless, key = bool({"issuer", "identity"} & set(value)), "key" in value
    if keyless and not key:
        return "keyless-signer"
    if key and not keyless:
        return "key-signer"
    return None


SIGNER_FORMS = "a signer is either { issuer = \"https://...\", identity = \"...\" } (keyless) or { key = \"keys/T.pub\" }"
Signer = Annotated[
    Union[Annotated[KeylessSigner, Tag("keyless-signer")], Annotated[KeySigner, Tag("key-signer")]],
    Discriminator(_signer_kind, custom_error_type="signer", custom_error_message=SIGNER_FORMS),
]
_UNION_TAGS = {"keyless-signer", "key-signer"}  # dropped from error locations (the discriminator's tags)


class TeamSpec(_Strict):
    """One Airflow team: who owns its spec folder and who may sign its bundles."""

    owners: list[Owner] = Field(min_length=1, description="CODEOWNERS owners of specs/teams/<team>/")
    signers: list[Signer] = Field(min_length=1, description="identities allowed to sign this team's bundles")


def _unique(values: list, what: str) -> list:
    dupes = sorted({str(v) for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"{what} listed twice: {', '.join(dupes)}; list each once")
    return values


def _registry(value: str) -> str:
    from registry.errors import BadInput
    from registry.ref import parse_reference

    try:
        ref = parse_reference(value)
    except BadInput as exc:
        raise ValueError(f"{exc.message}; {exc.hint or 'write oci:DIR, s3://BUCKET/PREFIX or host/prefix'}") from None
    if ref.tag or ref.digest:
        raise ValueError(f"{value!r} names a tag or digest; the org registry is a location, drop the :tag/@digest")
    return value


def _python(value: str) -> str:
    if Version(value) < Version("3.9"):
        raise ValueError(f"python {value} is older than Airflow 3 supports; use 3.9 or newer")
    return value


class OrgSection(_Strict):
    """The `[org]` table: where images go, the Python and platforms they are for, allowed bases."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    registry: Annotated[str, AfterValidator(_registry)] = Field(
        "oci:.dagseal/store", description="store for built images: oci:DIR, s3://BUCKET/PREFIX or host[:port]/prefix")
    python: Annotated[str, StringConstraints(pattern=r"^3\.[0-9]{1,2}$"), AfterValidator(_python)] = "3.12"
    platforms: Annotated[list[Platform], AfterValidator(lambda v: _unique(v, "platform"))] = Field(
        default_factory=lambda: ["linux/amd64"], min_length=1)
    allowed_bases: Annotated[list[Annotated[str, StringConstraints(min_length=1, pattern=r"^\S+$")]],
                             AfterValidator(lambda v: _unique(v, "base"))] = Field(
        default_factory=lambda: ["scratch"], min_length=1)
    owners: list[Owner] = Field(default_factory=list,
                                description="CODEOWNERS owners of org.toml and the specs folder (the platform team)")


class OrgSpec(_Strict):
    org: OrgSection
    teams: dict[TeamName, TeamSpec] = Field(min_length=1)


# ---------------------------------------------------------------- teams/<team>/<bundle>.toml


def _requirement(value: str) -> str:
    try:
        req = Requirement(value)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0].rstrip(": ")
        raise ValueError(f"{value!r} is not a PEP 508 requirement ({reason}); write e.g. \"requests>=2.31\"") from None
    if req.url:
        raise ValueError(f"{value!r} is a direct URL; only index packages can be locked with hashes, "
                         "publish it to your index and write name>=version")
    return value


def _unique_requirements(values: list[str]) -> list[str]:
    reqs = [Requirement(v) for v in values]
    names = [canonicalize_name(r.name) for r in reqs if not r.marker]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"package listed twice: {', '.join(dupes)}; merge the specifiers into one entry")
    return values


def _source(value: str) -> str:
    if value.startswith("/") or "\\" in value:
        raise ValueError(f"{value!r} is not a relative path; write the DAG folder relative to this file")
    return value


class BundleSection(_Strict):
    """The `[bundle]` table: one Airflow DAG bundle owned by one team."""

    name: Annotated[str, StringConstraints(pattern=BUNDLE_PATTERN)] = Field(
        description="Airflow bundle name, unique in the organisation; the file is named <name>.toml")
    team: TeamName = Field(description="must equal the folder name and exist in org.toml")
    version: str = Field(description="PEP 440 version; CalVer recommended")
    source: Annotated[str, StringConstraints(min_length=1), AfterValidator(_source)] = Field(
        description="folder of DAG files, relative to this file, inside the team's folder")
    dependencies: Annotated[list[Annotated[str, AfterValidator(_requirement)]],
                            AfterValidator(_unique_requirements)] = Field(default_factory=list)
    base: Annotated[str, StringConstraints(min_length=1)] = "scratch"
    system_packages: Annotated[list[Annotated[str, StringConstraints(pattern=DEBIAN_PACKAGE_PATTERN)]],
                               AfterValidator(lambda v: _unique(v, "package"))] = Field(default_factory=list)
    components: Annotated[list[Component], AfterValidator(lambda v: _unique(v, "component"))] = Field(
        default_factory=lambda: ["dag-processor", "triggerer", "worker"], min_length=1)
    queues: Annotated[list[Annotated[str, StringConstraints(pattern=QUEUE_PATTERN)]],
                      AfterValidator(lambda v: _unique(v, "queue"))] = Field(default_factory=list)

    @field_validator("version")
    @classmethod
    def _pep440(cls, v: str) -> str:
        try:
            Version(v)
        except InvalidVersion:
            raise ValueError(f"{v!r} is not a PEP 440 version; use CalVer like 2026.11.1") from None
        return v


class BundleSpec(_Strict):
    bundle: BundleSection


# ---------------------------------------------------------------- loaded organisation


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

    @property
    def org_path(self) -> Path:
        return self.root / "org.toml"

    def team_bundles(self, team: str) -> list[Bundle]:
        return [b for b in self.bundles if b.team == team]

    def select(self, team: str | None = None, bundle: str | None = None) -> list[Bundle]:
        return [b for b in self.bundles if (team is None or b.team == team) and (bundle is None or b.name == bundle)]

    def key_path(self, signer: KeySigner) -> Path:
        """Where a key signer's PEM file is (relative paths are relative to org.toml)."""
        return (self.root / signer.key).resolve()


@dataclass(frozen=True)
class Problem:
    """One spec error: the file, the field (dotted, `[i]` for list items), what is wrong and the fix."""

    file: str
    field: str
    problem: str
    fix: str

    @property
    def message(self) -> str:
        return f"{self.problem}; {self.fix}" if self.fix else self.problem

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "field": self.field, "message": self.message}

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


# ---------------------------------------------------------------- pydantic errors -> problems


_PATTERN_FIXES = {
    "owners": "write a GitHub @user, @org/team or an e-mail address",
    "name": "use lowercase letters, digits, '_' or '-', starting with a letter or digit",
    "team": "use 3-50 letters, digits, '_' or '-' (Airflow's team name rule)",
    "issuer": "write the OIDC issuer's https:// URL",
    "python": "write major.minor, e.g. \"3.12\"",
    "queues": "use letters, digits, '_', '.', ':' or '-'",
    "system_packages": "write a Debian package name, optionally =version",
}


def _location(loc: tuple) -> str:
    out = ""
    for part in loc:
        if part in _UNION_TAGS or part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"


def _problem(path: Path, kind: str, err: dict) -> Problem:
    loc, typ, msg = err["loc"], err["type"], err["msg"]
    where = _location(loc)
    schema = f"see specs/{SCHEMA_HINT[kind]}"
    if typ == "extra_forbidden":
        return Problem(str(path), where, f"unknown key {str(loc[-1])!r}", f"remove it or fix its spelling ({schema})")
    if typ == "missing":
        if len(loc) == 1 and loc[0] in ("org", "bundle", "teams"):
            table = f"[{loc[0]}]" if loc[0] != "teams" else "[teams.<name>]"
            return Problem(str(path), where, f"the {table} section is missing", f"add it ({schema})")
        return Problem(str(path), where, "required key is missing", f"add {loc[-1]} = ... ({schema})")
    if typ == "signer":
        return Problem(str(path), where, f"not a signer: {err.get('input')!r}", SIGNER_FORMS)
    if typ == "string_pattern_mismatch" and "[key]" in loc:
        return Problem(str(path), where, f"team name {loc[-2]!r} is not a valid Airflow team name",
                       "use 3-50 letters, digits, '_' or '-'")
    if typ == "string_pattern_mismatch":
        pattern = err.get("ctx", {}).get("pattern", "")
        field = next((str(p) for p in reversed(loc) if isinstance(p, str) and p not in _UNION_TAGS), "")
        return Problem(str(path), where, f"{err.get('input')!r} does not match {pattern}",
                       _PATTERN_FIXES.get(field, f"fix the value ({schema})"))
    if typ == "too_short":
        return Problem(str(path), where, "is empty", f"list at least one entry ({schema})")
    if typ == "value_error":
        text = msg.removeprefix("Value error, ")
        problem, _, fix = text.partition("; ")
        return Problem(str(path), where, problem, fix or f"fix the value ({schema})")
    if typ.endswith("_type"):
        value = err.get("input")
        expected = msg.removeprefix("Input should be ").removeprefix("a valid ").removeprefix("an ")
        fix = (f"quote it: {loc[-1]} = \"{value}\"" if typ == "string_type" and isinstance(value, (int, float))
               else f"write it with the right TOML type ({schema})")
        return Problem(str(path), where, f"expected {expected}, got {type(value).__name__} {value!r}", fix)
    return Problem(str(path), where, msg, f"fix the value ({schema})")


def _validate(model: type[BaseModel], raw: dict, path: Path, kind: str, problems: list[Problem]):
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_problem(path, kind, err) for err in exc.errors())
        return None


MAX_SPEC_BYTES = 1 << 20  # a spec is a few hundred bytes; refuse to parse anything huge


def _read_toml(path: Path, problems: list[Problem]) -> dict | None:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
        if len(data) > MAX_SPEC_BYTES:
            problems.append(Problem(str(path), "(file)", f"larger than {MAX_SPEC_BYTES} bytes",
                                    "a spec is a short TOML file: check that this is the right file"))
            return None
        return tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        problems.append(Problem(str(path), "(file)", "file not found",
                                "create it (see DESIGN.md 'Spec files') or pass --specs DIR"))
    except IsADirectoryError:
        problems.append(Problem(str(path), "(file)", "is a folder, not a TOML file", "remove or rename it"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        problems.append(Problem(str(path), "(file)", f"not valid TOML: {exc}", "fix the syntax"))
    return None


# ---------------------------------------------------------------- loading


def check_organisation(specs_dir: str | Path) -> tuple[Organisation | None, list[Problem]]:
    """Read and validate every spec under `specs_dir`; return the organisation (None if any
    problem) and every problem found, in file order."""
    root = Path(specs_dir)
    problems: list[Problem] = []
    if not root.is_dir():
        return None, [Problem(str(root), "(folder)", "specs folder does not exist", "pass --specs DIR (the folder holding org.toml)")]
    org_path = root / "org.toml"
    raw = _read_toml(org_path, problems)
    org = _validate(OrgSpec, raw, org_path, "org", problems) if raw is not None else None
    if org is not None:
        problems.extend(_org_problems(org_path, org))
    bundles = _load_bundles(root, org, problems)
    if problems:
        return None, problems
    return Organisation(root=root, org=org, bundles=bundles), []


def load_organisation(specs_dir: str | Path) -> Organisation:
    """Load and validate every spec under `specs_dir`; raise SpecError (exit 2) listing every problem."""
    from registry.errors import SpecError

    org, problems = check_organisation(specs_dir)
    if problems:
        raise SpecError(f"{len(problems)} problem(s) in the specs under {specs_dir}",
                        details=[str(p) for p in problems],
                        hint="fix each line above, then run `dagseal validate` again")
    assert org is not None
    return org


def _load_bundles(root: Path, org: OrgSpec | None, problems: list[Problem]) -> list[Bundle]:
    teams = root / "teams"
    for stray in sorted(p for p in teams.glob("*.toml") if not p.name.startswith(".")):
        problems.append(Problem(str(stray), "(file)", "bundle spec outside a team folder",
                                f"move it to {teams}/<team>/{stray.name}"))
    bundles: list[Bundle] = []
    seen: dict[str, Path] = {}
    queues: dict[str, tuple[str, Path]] = {}
    for path in sorted(p for p in teams.glob("*/*.toml") if not p.name.startswith(".")):
        raw = _read_toml(path, problems)
        spec_model = _validate(BundleSpec, raw, path, "bundle", problems) if raw is not None else None
        if spec_model is None:
            continue
        spec = spec_model.bundle
        problems.extend(_bundle_problems(path, spec, org, seen, queues))
        seen.setdefault(spec.name, path)
        for q in spec.queues:
            queues.setdefault(q, (spec.team, path))
        bundles.append(Bundle(spec=spec, path=path))
    return bundles


def _bundle_problems(path: Path, spec: BundleSection, org: OrgSpec | None, seen: dict[str, Path],
                     queues: dict[str, tuple[str, Path]]) -> list[Problem]:
    file, out = str(path), []
    folder_team = path.parent.name
    if spec.team != folder_team:
        out.append(Problem(file, "bundle.team", f"team {spec.team!r} is declared in the folder of team {folder_team!r}",
                           f"a team's folder may declare only that team: set team = {folder_team!r} or move the file"))
    if org is not None and spec.team not in org.teams:
        out.append(Problem(file, "bundle.team", f"team {spec.team!r} is not in org.toml",
                           f"ask the platform team to add [teams.{spec.team}] to org.toml, or fix the name"))
    if path.stem != spec.name:
        out.append(Problem(file, "bundle.name", f"bundle {spec.name!r} is declared in {path.name}",
                           f"name the file {spec.name}.toml (its lock is <bundle>.lock beside it)"))
    if spec.name in seen:
        out.append(Problem(file, "bundle.name", f"bundle {spec.name!r} is already declared in {seen[spec.name]}",
                           "bundle names are unique in the organisation: rename one"))
    if org is not None and spec.base not in org.org.allowed_bases:
        out.append(Problem(file, "bundle.base", f"base {spec.base!r} is not in org.allowed_bases "
                           f"({', '.join(org.org.allowed_bases)})",
                           "use an allowed base or ask the platform team to add it"))
    for q in spec.queues:
        if q in queues and queues[q][0] != spec.team:
            out.append(Problem(file, "bundle.queues", f"queue {q!r} is also used by team {queues[q][0]!r} "
                               f"({queues[q][1]})", "queues route tasks to one team's workers: use a queue of your own"))
    out.extend(_source_problems(path, spec))
    return out


def _source_problems(path: Path, spec: BundleSection) -> list[Problem]:
    source = path.parent / spec.source
    if not source.is_dir():
        return [Problem(str(path), "bundle.source", f"folder {source} does not exist",
                        "create it with the bundle's DAG files or fix the path")]
    if not source.resolve().is_relative_to(path.parent.resolve()):
        return [Problem(str(path), "bundle.source", f"{spec.source!r} leaves the team's folder",
                        f"keep DAG code under {path.parent}")]
    if next(source.rglob("*.py"), None) is None:
        return [Problem(str(path), "bundle.source", f"folder {source} holds no .py files",
                        "put the bundle's DAG files there or fix the path")]
    return []


def _org_problems(path: Path, org: OrgSpec) -> list[Problem]:
    file, out = str(path), []
    lowered: dict[str, str] = {}
    for team, spec in org.teams.items():
        if team.lower() in lowered:
            out.append(Problem(file, f"teams.{team}", f"clashes with teams.{lowered[team.lower()]} once lowercased "
                               "(registry repositories are lowercase)", "rename one of the teams"))
        lowered.setdefault(team.lower(), team)
        for i, signer in enumerate(spec.signers):
            if isinstance(signer, KeySigner) and not signer.key.startswith("awskms:"):
                problem = _key_file_problem(path.parent / signer.key)
                if problem:
                    out.append(Problem(file, f"teams.{team}.signers[{i}].key", *problem))
    return out


def _key_file_problem(key: Path) -> tuple[str, str] | None:
    """Guards against a signer entry that names a missing file, a private key, or a key of the wrong
    kind (the verifier accepts ECDSA P-256 only)."""
    fix = "run `dagseal keygen --out PREFIX` and point key at PREFIX.pub"
    try:
        data = key.read_bytes()
    except OSError:
        return f"public key file {key} does not exist", fix
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if b"PRIVATE KEY" in data:
        return f"{key} holds a PRIVATE key", "commit only the public key (PREFIX.pub) and keep the .key secret"
    try:
        pub = load_pem_public_key(data)
    except ValueError:
        return f"{key} is not a PEM public key", fix
    if not (isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"):
        return f"{key} is not an ECDSA P-256 key", fix
    return None
