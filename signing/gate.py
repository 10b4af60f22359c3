"""The start-time gate: `dagseal verify`, `dagseal fetch`, `dagseal run`.

One path (`admit`) serves all three and the Airflow bundle class:

1. resolve the reference once (tag -> digest); from then on everything is by digest, so a tag
   moved mid-start cannot swap content under the verifier;
2. read the manifest (from the cache entry, re-hashed, or from the store, verified);
3. verify the signatures (cached ones first, then the store's referrers) with signing.verify;
4. refuse rollbacks and version reuse (signing.state) before downloading anything big;
5. materialise into the digest-keyed cache (signing.materialise: blob digests, safe tar); for a
   multi-platform bundle (an index: steps 2-4 ran on the index, which is what is signed and what
   the rollback memory records) the image of `--platform` (default this machine's) is picked,
   fetched by the digest the signed index lists and checked against it (signing.platforms), and
   its tree is cached under its own manifest digest;
6. record the accepted version (fetch and run; `verify` is a dry run that records nothing).

When the registry is unreachable, a tag may start as the digest it resolved to at its last online
verification only if the policy's `offline_grace_seconds` allows it, and the output says so.
A digest-pinned reference whose tree and signature are cached needs no registry at all.

Top-level imports stay minimal: `dagseal run` on a warm cache must not import sigstore, oras,
boto3 or requests.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from registry.errors import BadInput, NotFound, Refused, StorageError
from registry.ref import Reference, parse_reference
from signing.state import Freshness, HostState, state_dir

if TYPE_CHECKING:
    import argparse

    from bundler.output import Output
    from registry.model import RawContent
    from registry.store import Store
    from signing.materialise import Cache, Entry
    from signing.trust import TrustPolicy
    from signing.verify import Verified


@dataclass
class Options:
    """How one runtime admits bundles."""

    team: str
    policy: "TrustPolicy"
    state: HostState
    allow_downgrade: bool = False
    plain_http: bool = False
    materialise: bool = True
    record: bool = True
    opener: "Callable[[Reference], Store] | None" = None  # how to open a reference's store (default open_store)
    platform: str | None = None  # os/arch picked from a multi-platform index (default: this machine's)


@dataclass
class Admitted:
    """The outcome of an accepted start."""

    ref: Reference
    verified: "Verified"
    entry: "Entry | None"
    offline: bool = False
    materialised: bool = False  # True if this start extracted the tree (False: cache hit)
    notes: list[str] = field(default_factory=list)
    platform: str | None = None  # a multi-platform bundle: the platform started ...
    manifest: str | None = None  # ... and its image manifest's digest (`verified.digest` is the index's)

    def decision(self) -> dict[str, Any]:
        v = self.verified
        out: dict[str, Any] = {"decision": "accepted", "check": None, "reason": "all checks passed",
                               "team": v.team, "bundle": v.bundle, "version": v.version, "digest": v.digest,
                               "signer": v.signer, "ref": str(self.ref), "offline": self.offline,
                               "materialised": self.materialised}
        if self.manifest is not None:
            out["platform"], out["manifest"] = self.platform, self.manifest
        if self.entry is not None:
            out["path"] = str(self.entry.tree)
            out["dags"] = str(self.entry.dags)
        if self.notes:
            out["notes"] = self.notes
        return out


class _LazyStore:
    """Opens the reference's store only when something must come from it."""

    def __init__(self, ref: Reference, plain_http: bool, opener: "Callable[[Reference], Store] | None" = None):
        self.ref = ref
        self.plain_http = plain_http
        self.opener = opener
        self._store: "Store | None" = None

    def get(self) -> "Store":
        if self._store is None:
            if self.opener is not None:
                self._store = self.opener(self.ref)
            else:
                from registry.open import open_store

                self._store = open_store(self.ref, plain_http=self.plain_http, create=False)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _bundle_of(ref: Reference) -> str:
    return ref.repository.rsplit("/", 1)[-1]


def admit(ref_text: str, opts: Options, *, expected_bundle: str | None = None) -> Admitted:
    """Resolve, verify, check freshness, materialise and record one bundle; raises Refused (exit 3),
    StorageError (exit 4) or BadInput (exit 2)."""
    ref = parse_reference(ref_text)
    if not ref.repository or not ref.reference:
        raise BadInput(f"reference {ref_text!r} names no repository and tag or digest",
                       hint="use e.g. registry.acme.io/airflow/team_a/team_a_analytics:2026.11.1 or ...@sha256:<hex>")
    expected = expected_bundle or _bundle_of(ref)
    store = _LazyStore(ref, opts.plain_http, opts.opener)
    context: dict[str, Any] = {"bundle": expected}
    try:
        return _admit(ref, expected, store, opts, context)
    except Refused as exc:
        exc.context = context  # type: ignore[attr-defined]  (what was known when it was refused)
        raise
    finally:
        store.close()


def _admit(ref: Reference, expected: str, store: _LazyStore, opts: Options, context: dict[str, Any]) -> Admitted:
    from registry.model import Index
    from signing.materialise import Cache

    notes: list[str] = []
    digest, offline = _resolve(ref, store, opts, notes)
    context["digest"] = digest
    cache = Cache(opts.state.cache_root(), opts.policy.tar_limits())  # the org's bounds on what a start unpacks
    cached = cache.lookup(digest, expected)
    content = cached[1] if cached else (cache.lookup_index(digest) or _manifest(store, ref, digest, offline))
    verified = _verify(content, store, ref, opts, expected, offline)
    context.update(version=verified.version, signer=verified.signer)
    cand = Freshness(version=verified.version, digest=digest, pinned_by_digest=ref.digest is not None,
                     allow_downgrade=opts.allow_downgrade)
    opts.state.check_freshness(opts.state.load(opts.team, verified.bundle), cand)
    platform = None
    index = content
    if isinstance(content.parsed, Index):  # a multi-platform bundle: start this platform's manifest
        platform, cached, content = _platform_manifest(content, store, ref, cache, opts, expected, offline)
        context["manifest"] = content.digest
    entry = cached[0] if cached else None
    fresh = False
    if entry is None and opts.materialise:
        entry, fresh = _materialise(cache, store, ref, content, verified.bundle, opts)
    if platform and entry is not None:
        cache.keep_index(index)
    if opts.record:  # the rollback memory and signature cache are about what was signed (the index)
        opts.state.accept(opts.team, verified.bundle, cand, ref=None if (ref.digest or offline) else str(ref))
        opts.state.save_signature(digest, verified.bundle_json)
    return Admitted(ref=ref, verified=verified, entry=entry, offline=offline, materialised=fresh, notes=notes,
                    platform=platform, manifest=content.digest if platform else None)


def _materialise(cache: "Cache", store: _LazyStore, ref: Reference, content: "RawContent", bundle: str,
                 opts: Options) -> tuple["Entry", bool]:
    """Extract within the policy's limits; a tar-limits refusal under org-set limits says how to raise them."""
    try:
        return cache.materialise(store.get(), ref.repository, content, bundle)
    except Refused as exc:
        if exc.check == "tar-limits" and opts.policy.limits is not None:
            exc.hint = ("the org's trust policy bounds what a start unpacks (limits); if this bundle is genuine, "
                        "re-export the policy with a larger `dagseal policy export --max-bundle-size/--max-entries`")
        raise


def _platform_manifest(index: "RawContent", store: _LazyStore, ref: Reference, cache: "Cache", opts: Options,
                       expected: str, offline: bool) -> tuple[str, Any, "RawContent"]:
    """(platform, cache hit or None, manifest) of the runtime's platform in a verified index: the
    child is read by the digest the signed index lists (from the digest-keyed cache, re-hashed, or
    from the store, verified) and must agree with the index (signing.platforms)."""
    from signing.platforms import check_child, parse_platform, select_manifest

    target = parse_platform(opts.platform)
    desc = select_manifest(index, target)
    cached = cache.lookup(desc.digest, expected)
    child = cached[1] if cached else _manifest(store, ref, desc.digest, offline)
    check_child(index, desc, child)
    return str(target), cached, child


def _resolve(ref: Reference, store: _LazyStore, opts: Options, notes: list[str]) -> tuple[str, bool]:
    """Tag -> digest, once; falls back to the last online resolution within the offline grace."""
    if ref.digest:
        return ref.digest, False
    assert ref.tag is not None
    try:
        return store.get().resolve(ref.repository, ref.tag).digest, False
    except NotFound:
        raise
    except StorageError as exc:
        return _offline(ref, opts, exc, notes), True


def _offline(ref: Reference, opts: Options, exc: StorageError, notes: list[str]) -> str:
    """The digest a tag resolved to at its last online verification, if the grace period allows."""
    grace = opts.policy.offline_grace_seconds or 0
    found = opts.state.find_resolution(opts.team, str(ref))
    if not grace:
        raise StorageError(f"{exc.message}; the policy allows no offline start",
                           hint="restore access to the registry, or export the policy with --offline-grace") from None
    if found is None:
        raise StorageError(f"{exc.message}; {ref} was never verified online on this host, so there is nothing "
                           "to start offline", hint="restore access to the registry") from None
    _bundle, rec = found
    age = time.time() - rec.verified_at
    if age < -60:  # recorded in the future (clock stepped back, or a tampered record): no grace from it
        raise StorageError(f"{exc.message}; {ref} was last verified online at a time {-age:.0f}s in the future of "
                           "this host's clock, so its age is unknown", hint="restore access to the registry and "
                           "check the host's clock") from None
    if age > grace:
        raise StorageError(f"{exc.message}; {ref} was last verified online {age:.0f}s ago, beyond the policy's "
                           f"offline grace of {grace}s", hint="restore access to the registry") from None
    notes.append(f"registry unreachable ({exc.message}); starting {ref} as {rec.digest}, last verified online "
                 f"{age:.0f}s ago (offline grace {grace}s)")
    return rec.digest


def _manifest(store: _LazyStore, ref: Reference, digest: str, offline: bool) -> "RawContent":
    if offline:
        raise StorageError(f"registry unreachable and {digest} is not materialised on this host",
                           hint="restore access to the registry")
    content = store.get().get_manifest(ref.repository, digest)
    if content.digest != digest:
        raise Refused(f"the store served {content.digest} for {digest}", check="blob-digest")
    return content


def _verify(content: "RawContent", store: _LazyStore, ref: Reference, opts: Options, expected: str,
            offline: bool) -> "Verified":
    """Cached signatures first (cheap, offline); the store's referrers if none of them passes."""
    from signing.verify import verify_statements

    cached = opts.state.cached_signatures(content.digest)
    if cached:
        try:
            return verify_statements(content, cached, opts.policy, opts.team, expected)
        except Refused:
            if offline:
                raise
    elif offline:
        raise Refused(f"no cached signature for {content.digest} and the registry is unreachable",
                      check="signature", hint="restore access to the registry")
    from signing.attach import find_bundles
    from signing.statement import PREDICATE_TYPE

    found = [bundle_json for _desc, bundle_json in find_bundles(store.get(), ref.repository, content.digest,
                                                                predicate_type=PREDICATE_TYPE)]
    return verify_statements(content, found, opts.policy, opts.team, expected)


# -- command handlers -------------------------------------------------------------------------------

def _options(args: "argparse.Namespace", *, materialise: bool, record: bool) -> Options:
    from signing.trust import load_policy

    policy = load_policy(args.policy)
    if args.team not in policy.teams:
        raise BadInput(f"--team {args.team}: the policy {args.policy} has no such team "
                       f"(it has {', '.join(sorted(policy.teams)) or 'none'})", hint="pass the Airflow team name this runtime serves")
    from signing.platforms import parse_platform

    platform = str(parse_platform(getattr(args, "platform", None)))  # a malformed --platform: exit 2 up front
    return Options(team=args.team, policy=policy, state=HostState(state_dir(args.state_dir)),
                   allow_downgrade=args.allow_downgrade, plain_http=args.plain_http,
                   materialise=materialise, record=record, platform=platform)


def refusal(exc: Refused, team: str, ref: str) -> dict[str, Any]:
    """The decision object of a refusal (same keys as an acceptance)."""
    out: dict[str, Any] = {"decision": "refused", "check": exc.check, "reason": exc.message, "team": team,
                           "ref": ref, "bundle": None, "version": None, "digest": None, "signer": None}
    out.update(getattr(exc, "context", None) or {})
    if exc.hint:
        out["hint"] = exc.hint
    if exc.details:
        out["details"] = exc.details
    return out


def _report_refusal(out: "Output", exc: Refused, team: str, ref: str) -> int:
    if out.json_mode:
        out.result(refusal(exc, team, ref))
    else:
        out.stderr.write(f"dagseal: refused [{exc.check}]: {ref}: {exc}\n")
    return exc.exit_code


def _report(out: "Output", admitted: Admitted, verb: str) -> None:
    d = admitted.decision()
    for note in admitted.notes:
        out.warn(note)
    text = (f"{verb} {d['ref']}: team {d['team']} bundle {d['bundle']} version {d['version']} "
            f"digest {d['digest']} signer {d['signer']}"
            + (f" platform {admitted.platform} manifest {admitted.manifest}" if admitted.manifest else "")
            + (" (OFFLINE, within grace)" if admitted.offline else ""))
    out.result(d, text)


def verify_command(args: "argparse.Namespace", out: "Output") -> int:
    """`dagseal verify REF`: all checks (blobs included, into the cache); records nothing."""
    opts = _options(args, materialise=True, record=False)
    try:
        admitted = admit(args.ref, opts)
    except Refused as exc:
        return _report_refusal(out, exc, args.team, args.ref)
    _report(out, admitted, "accepted")
    return 0


def fetch_command(args: "argparse.Namespace", out: "Output") -> int:
    """`dagseal fetch REF --dest DIR`: verify, materialise, then DIR becomes a symlink to the
    read-only cache entry's bundle tree (dags/, site-packages/, bundle.json). The symlink is
    replaced atomically; an existing DIR that is not such a symlink is never overwritten."""
    opts = _options(args, materialise=True, record=True)
    try:
        admitted = admit(args.ref, opts)
    except Refused as exc:
        return _report_refusal(out, exc, args.team, args.ref)
    assert admitted.entry is not None
    link_dest(args.dest, admitted.entry.tree)
    _report(out, admitted, "fetched")
    return 0


def link_dest(dest: str, target: os.PathLike) -> None:
    """Point `dest` at `target` with a symlink swapped in by rename (never half-updated)."""
    path = os.path.abspath(dest)
    if os.path.lexists(path) and not os.path.islink(path):
        raise BadInput(f"--dest {dest} exists and is not a dagseal symlink; refusing to overwrite it",
                       hint="pass a new path (fetch makes DIR a symlink to the verified cache entry)")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise BadInput(f"--dest {dest}: folder {parent} does not exist", hint="create it first")
    # an unpredictable temp name: a planted file or folder there cannot make the swap fail
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(8)}")
    try:
        os.symlink(os.path.abspath(target), tmp)
        os.replace(tmp, path)  # rename(2) never replaces a folder that appeared meanwhile (EISDIR)
    except OSError as exc:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise BadInput(f"--dest {dest}: cannot point it at the verified tree {target}: {exc.strerror}",
                       hint="pass a path in a folder this user can write") from None


_ENV_NAME = re.compile(r"[^A-Za-z0-9]")


def bundle_env(admitted: list[Admitted], base: dict[str, str]) -> dict[str, str]:
    """DAGSEAL_BUNDLE_<NAME>_PATH = each dags folder; PYTHONPATH prepended with each site-packages."""
    env = dict(base)
    paths = []
    owners: dict[str, str] = {}
    for a in admitted:
        assert a.entry is not None
        name = _ENV_NAME.sub("_", a.verified.bundle).upper()
        if owners.setdefault(name, a.verified.bundle) != a.verified.bundle:
            # "team_a-x" and "team_a_x" would share one variable: the command would load the wrong tree
            raise BadInput(f"bundles {owners[name]} and {a.verified.bundle} would both be exported as "
                           f"DAGSEAL_BUNDLE_{name}_PATH", hint="run them in separate `dagseal run` commands")
        env[f"DAGSEAL_BUNDLE_{name}_PATH"] = str(a.entry.dags)
        env[f"DAGSEAL_BUNDLE_{name}_DIGEST"] = a.verified.digest
        if a.entry.site_packages.is_dir():
            paths.append(str(a.entry.site_packages))
    if base.get("PYTHONPATH"):
        paths.append(base["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_command(args: "argparse.Namespace", out: "Output") -> int:
    """`dagseal run --bundle REF... -- CMD`: admit every bundle, then exec CMD; never execs after
    a refusal or an error."""
    cmd = list(args.cmd or [])
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise BadInput("dagseal run needs a command after --", hint="dagseal run --team T --policy P --bundle REF -- airflow dag-processor")
    opts = _options(args, materialise=True, record=True)
    admitted: list[Admitted] = []
    for ref in args.bundles:
        try:
            admitted.append(admit(ref, opts))
        except Refused as exc:
            return _report_refusal(out, exc, args.team, ref)
    for a in admitted:
        _report(out, a, "accepted")
    env = bundle_env(admitted, dict(os.environ))
    env["DAGSEAL_TEAM"] = opts.team
    out.stdout.flush()
    out.stderr.flush()
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as exc:
        raise BadInput(f"cannot run {cmd[0]!r}: {exc.strerror}", hint="check the command after --") from None
    return 0  # pragma: no cover (exec does not return)
