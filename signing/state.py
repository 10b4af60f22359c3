"""What this host remembers between starts: accepted versions, resolved tags, cached signatures.

Guards against:
- rollback / freeze: an attacker who controls the registry (or a tag) serving an older, validly
  signed version with a known bug. The newest accepted version of each bundle is remembered and
  anything older (PEP 440 order) is refused unless pinned by digest with --allow-downgrade;
- version reuse: the same version number re-signed over other content (a second, different
  "2026.11.1") is refused, so a version names one digest forever on this host;
- torn state: every file is written to a temp file, fsynced and renamed, under a per-bundle file
  lock, so concurrent starts and killed processes never leave a half-written record.

Layout of the state dir (--state-dir, $DAGSEAL_HOME, else ~/.cache/dagseal):
  accepted/<team>/<bundle>.json   the record of one bundle (BundleRecord)
  signatures/<manifest hex>/<bundle sha256 hex>.json   signature bundles seen for a digest
  cache/...                       materialised trees (signing.materialise)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from registry.digest import hex_of
from registry import fsutil
from registry.errors import BadInput, Refused, StorageError

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,99}$")
MAX_RECORD_BYTES = 4 * 1024 * 1024


def state_dir(explicit: str | os.PathLike | None = None) -> Path:
    """--state-dir, else $DAGSEAL_HOME, else ~/.cache/dagseal."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("DAGSEAL_HOME")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "dagseal"


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` via a fsynced temp file and a rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fsutil.atomic_write(path, data, mode=mode)


def _safe_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise Refused(f"{what} {value!r} is not a valid name", check="statement",
                      hint="team and bundle names are letters, digits, '_', '-', '.'")
    return value


def _version_key(version: str):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version)
    except InvalidVersion:
        raise Refused(f"version {version!r} is not a PEP 440 version", check="statement",
                      hint="bundle versions must be PEP 440 (CalVer like 2026.11.1 recommended)") from None


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`. filelock opens it with O_NOFOLLOW, so a symlink planted there
    cannot make dagseal truncate its target; the ELOOP (or EACCES) it then raises becomes a
    storage failure naming the file instead of a traceback."""
    from filelock import FileLock

    lock = FileLock(str(path))
    try:
        lock.acquire()
    except OSError as exc:
        raise StorageError(f"cannot lock {path}: {exc.strerror or exc}",
                           hint=f"remove {path} (it is not a lock dagseal made) and keep the state dir private "
                                "to the user running dagseal") from None
    try:
        yield
    finally:
        lock.release()


@dataclass
class RefRecord:
    """The digest a tag reference resolved to, and when it was last verified online."""

    digest: str
    verified_at: float


@dataclass
class BundleRecord:
    """Everything the host remembers about one bundle of one team."""

    team: str
    bundle: str
    newest_version: str | None = None
    newest_digest: str | None = None
    versions: dict[str, str] = field(default_factory=dict)  # version -> digest
    refs: dict[str, RefRecord] = field(default_factory=dict)  # tag reference -> last resolution

    @classmethod
    def from_json(cls, data: bytes, team: str, bundle: str) -> "BundleRecord":
        """Parse a record; a field of the wrong type is a ValueError (a tampered record must fail
        closed, never crash the gate or silently reset the rollback memory)."""
        doc = json.loads(data)
        refs = {k: RefRecord(digest=v["digest"], verified_at=float(v["verified_at"])) for k, v in doc.get("refs", {}).items()}
        record = cls(team=team, bundle=bundle, newest_version=doc.get("newest_version"),
                     newest_digest=doc.get("newest_digest"), versions=dict(doc.get("versions", {})), refs=refs)
        _check_types(record)
        return record

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode()


def _check_types(record: BundleRecord) -> None:
    for name in ("newest_version", "newest_digest"):
        if not isinstance(getattr(record, name), (str, type(None))):
            raise ValueError(f"{name} is not a string")
    if not isinstance(record.versions, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                        for k, v in record.versions.items()):
        raise ValueError("versions is not an object of version -> digest strings")
    if not all(isinstance(r.digest, str) for r in record.refs.values()):
        raise ValueError("refs holds a digest that is not a string")


def _recorded(record: BundleRecord, version) -> dict[str, str]:
    """Every digest recorded for a version PEP 440-equal to `version` ("1.0", "1.0.0" and "v1.0"
    are one version: a string lookup would let the same version name a second image)."""
    from packaging.version import InvalidVersion, Version

    out = {}
    for text, digest in record.versions.items():
        try:
            if Version(text) == version:
                out[text] = digest
        except InvalidVersion:
            continue
    return out


@dataclass(frozen=True)
class Freshness:
    """The inputs of the rollback check for one candidate."""

    version: str
    digest: str
    pinned_by_digest: bool
    allow_downgrade: bool


class HostState:
    """The state dir of one host (see the module docstring for its layout)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # -- paths ----------------------------------------------------------------------------------
    def record_path(self, team: str, bundle: str) -> Path:
        return self.root / "accepted" / _safe_name(team, "team") / f"{_safe_name(bundle, 'bundle')}.json"

    def lock(self, team: str, bundle: str):
        path = self.record_path(team, bundle).with_suffix(".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        return file_lock(path)

    def cache_root(self) -> Path:
        return self.root / "cache"

    # -- records --------------------------------------------------------------------------------
    def load(self, team: str, bundle: str) -> BundleRecord:
        path = self.record_path(team, bundle)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return BundleRecord(team=team, bundle=bundle)
        if len(data) > MAX_RECORD_BYTES:
            raise BadInput(f"state file {path} is {len(data)} bytes; it is not a dagseal record",
                           hint=f"delete {path} (the next start re-verifies and re-creates it)")
        try:
            return BundleRecord.from_json(data, team, bundle)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise BadInput(f"state file {path} is corrupt: {exc}",
                           hint=f"delete {path} (you lose the rollback memory of {bundle}) or restore it") from None

    def check_freshness(self, record: BundleRecord, cand: Freshness) -> None:
        """Rule 5: no version reuse (PEP 440 equality, not string equality); no version older than the
        newest accepted one unless pinned by digest and either explicitly allowed or already accepted
        here before (an Airflow worker running the DAG version a run started with). A tag moved back to
        an older image accepted before is a rollback like any other."""
        version = _version_key(cand.version)  # before anything is recorded: "latest" must never become newest
        recorded = _recorded(record, version)
        reused = next(((t, d) for t, d in recorded.items() if d != cand.digest), None)
        if reused is not None:
            same = "" if reused[0] == cand.version else f" (the same PEP 440 version as {reused[0]})"
            raise Refused(f"{record.bundle} version {cand.version}{same} was already accepted on this host as {reused[1]}; "
                          f"{cand.digest} reuses that version for other content", check="version-reuse",
                          hint="publish a new version number; a version must always name the same image")
        if record.newest_version is None:
            return
        if version < _version_key(record.newest_version):
            if cand.pinned_by_digest and (cand.allow_downgrade or cand.digest in recorded.values()):
                return  # asked for by digest: the registry cannot substitute it (a tag moved back can)
            how = ("pass the reference pinned by digest (REF@sha256:...) together with --allow-downgrade"
                   if not cand.pinned_by_digest else "add --allow-downgrade to accept an older version on purpose")
            raise Refused(f"{record.bundle} version {cand.version} is older than {record.newest_version}, "
                          f"already accepted on this host (rollback)", check="rollback", hint=how)

    def accept(self, team: str, bundle: str, cand: Freshness, ref: str | None, now: float | None = None) -> BundleRecord:
        """Re-check freshness under the lock, then record the version (and the tag's resolution)."""
        now = time.time() if now is None else now
        with self.lock(team, bundle):
            record = self.load(team, bundle)
            self.check_freshness(record, cand)
            record.versions[cand.version] = cand.digest
            if record.newest_version is None or _version_key(cand.version) > _version_key(record.newest_version):
                record.newest_version, record.newest_digest = cand.version, cand.digest
            if ref:
                record.refs[ref] = RefRecord(digest=cand.digest, verified_at=now)
            atomic_write(self.record_path(team, bundle), record.to_json())
            return record

    def last_resolution(self, team: str, bundle: str, ref: str) -> RefRecord | None:
        return self.load(team, bundle).refs.get(ref)

    def find_resolution(self, team: str, ref: str) -> tuple[str, RefRecord] | None:
        """(bundle, record) of the last online resolution of `ref` by `team` on this host."""
        folder = self.root / "accepted" / _safe_name(team, "team")
        if not folder.is_dir():
            return None
        best: tuple[str, RefRecord] | None = None
        for path in folder.glob("*.json"):
            bundle = path.stem
            try:
                rec = self.load(team, bundle).refs.get(ref)
            except (BadInput, Refused):
                continue
            if rec and (best is None or rec.verified_at > best[1].verified_at):
                best = (bundle, rec)
        return best

    # -- cached signatures ----------------------------------------------------------------------
    def signature_dir(self, digest: str) -> Path:
        return self.root / "signatures" / hex_of(digest)

    def save_signature(self, digest: str, bundle_json: bytes) -> None:
        path = self.signature_dir(digest) / (hashlib.sha256(bundle_json).hexdigest() + ".json")
        if not path.exists():
            atomic_write(path, bundle_json)

    def cached_signatures(self, digest: str) -> list[bytes]:
        folder = self.signature_dir(digest)
        if not folder.is_dir():
            return []
        out = []
        for path in sorted(folder.glob("*.json")):
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == path.stem:  # a corrupted cache entry is ignored
                out.append(data)
        return out
