"""`dagseal build`: each bundle spec -> one reproducible OCI image in the org's store (or `--to`).

The image is the base's layers, then dependencies, DAG code and metadata layers (DESIGN.md, "The
image of a bundle"). Guards against:
- a half-written image: every bundle is planned first (lock current, base allowed and readable,
  source present) before anything is built; layers are finished in the cache before the store is
  touched; the store receives blobs first, the manifest and its tag last, so a failure or a kill at
  any point leaves no tag pointing at missing content;
- irreproducibility: layers from `bundler.layers`, config and manifest in canonical JSON, times
  from SOURCE_DATE_EPOCH (else 0), source/revision annotations from CI variables or git, else a
  fixed value;
- wasted work: layers are cached by what they are made of (`bundler.cache`), blobs the destination
  already has are skipped, the dependency and DAG layers are built in parallel.

Platforms: an org with one platform gets one image manifest (the tag points at it). An org with
several gets, per platform, its own dependency layer (uv installs the lock for that platform), the
shared DAG layer, a metadata layer naming the platform, a config with that os/architecture and a
manifest with the dagseal annotations; then an OCI image index listing those manifests with their
`platform`, carrying the same annotations. The tag points at the index (what `dagseal sign` signs);
the children are stored by digest before it, so no tag ever names a missing child.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from bundler.base import BaseImage, load_base
from bundler.cache import LayerCache, cache_key
from bundler.layers import Codec, LayerFile, file_entry, listing_digest, parent_dirs, scan_tree, write_layer
from bundler.output import Output
from bundler.specs import Bundle, Organisation, load_organisation
from registry.errors import BadInput, StorageError
from registry.model import (
    ANN_BUNDLE,
    ANN_CREATED,
    ANN_LOCK_DIGEST,
    ANN_REVISION,
    ANN_SOURCE,
    ANN_SPEC_DIGEST,
    ANN_TEAM,
    ANN_VERSION,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    Platform,
    RawContent,
    canonical_json,
    encode,
)
from registry.ref import Reference, parse_reference
from registry.store import Store

BUNDLES_ROOT = "opt/airflow/bundles"
UNKNOWN = "unknown"  # source/revision when neither CI variables nor git say (keeps builds reproducible)


def bundle_prefix(bundle_name: str) -> str:
    return f"{BUNDLES_ROOT}/{bundle_name}"


# -- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildOptions:
    codec: Codec = "gzip"
    cache_dir: Path | None = None
    find_links: tuple[str, ...] = ()
    offline: bool = False
    plain_http: bool = False
    epoch: int = 0
    source: str = UNKNOWN
    revision: str = UNKNOWN


@dataclass(frozen=True)
class Lock:
    """What the builder needs of a bundle's lock (area 1's `bundler.lock.LockFile` or the adapter)."""

    path: Path
    digest: str
    requirements: str  # the hashed requirements text uv installs from


@dataclass(frozen=True)
class Plan:
    bundle: Bundle
    lock: Lock
    base: BaseImage
    platform: str
    python: str


@dataclass(frozen=True)
class BuildResult:
    team: str
    bundle: str
    ref: str
    digest: str

    platforms: dict[str, str] | None = None  # several platforms: platform -> child manifest digest

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"team": self.team, "bundle": self.bundle, "ref": self.ref, "digest": self.digest}
        if self.platforms:
            out["platforms"] = dict(self.platforms)
        return out


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH as an int (0 when unset); BadInput when it is not a non-negative integer."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise BadInput(f"SOURCE_DATE_EPOCH={raw!r} is not a number of seconds since 1970",
                       hint="set it to an integer like $(git log -1 --format=%ct), or unset it")
    return int(raw)


def _git(root: Path, *args: str) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _strip_userinfo(url: str) -> str:
    return re.sub(r"^(\w+://)[^/@]+@", r"\1", url)


def source_and_revision(specs_root: Path) -> tuple[str, str]:
    """From DAGSEAL_SOURCE/DAGSEAL_REVISION, GitHub or GitLab CI variables, else git, else 'unknown'."""
    env = os.environ
    source = env.get("DAGSEAL_SOURCE") or ""
    revision = env.get("DAGSEAL_REVISION") or ""
    if not source and env.get("GITHUB_REPOSITORY"):
        source = f"{env.get('GITHUB_SERVER_URL', 'https://github.com')}/{env['GITHUB_REPOSITORY']}"
    revision = revision or env.get("GITHUB_SHA", "") or env.get("CI_COMMIT_SHA", "")
    source = source or env.get("CI_PROJECT_URL", "")
    if (not source or not revision) and specs_root.is_dir():
        source = source or _strip_userinfo(_git(specs_root, "config", "--get", "remote.origin.url"))
        revision = revision or _git(specs_root, "rev-parse", "HEAD")
    return _strip_userinfo(source) or UNKNOWN, revision or UNKNOWN


def read_lock(org: Organisation, bundle: Bundle) -> Lock:
    """The bundle's lock via area 1's `bundler.lock.read_lock` (which refuses missing or stale locks),
    with the exact bytes whose digest goes into the image (re-checked: the file may change under us)."""
    from bundler.lock import read_lock as checked_lock

    lock = checked_lock(org, bundle)
    data = Path(lock.path).read_bytes()
    if "sha256:" + hashlib.sha256(data).hexdigest() != lock.digest:
        raise BadInput(f"lock {lock.path} of bundle {bundle.name} changed while the build read it",
                       hint="do not edit locks during a build; run it again")
    return Lock(Path(lock.path), lock.digest, data.decode("utf-8"))


def locked_packages(requirements: str) -> dict[str, str]:
    """`name==version` pins of a hashed requirements file (for bundle.json)."""
    out = {}
    for line in requirements.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line.strip())
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return dict(sorted(out.items()))


def plan_bundle(org: Organisation, bundle: Bundle, opts: BuildOptions, out: Output) -> list[Plan]:
    """Everything a build needs, checked before anything is written: source, lock, and per org
    platform a base (with the team's OS packages installed by `bundler.environment` when the spec
    lists system_packages). One plan per platform, in the org's order."""
    if not bundle.source_dir.is_dir():
        raise BadInput(f"{bundle.path}: bundle.source: folder {bundle.source_dir} does not exist",
                       hint="create it or fix the path in the spec")
    lock = read_lock(org, bundle)
    return [Plan(bundle, lock, _platform_base(org, bundle, platform, opts, out), platform, org.org.org.python)
            for platform in org.org.org.platforms]


def _platform_base(org: Organisation, bundle: Bundle, platform: str, opts: BuildOptions, out: Output) -> BaseImage:
    base = load_base(org, bundle, plain_http=opts.plain_http, platform=platform)
    if bundle.spec.system_packages:
        from bundler.environment import build_environment

        assert opts.cache_dir is not None
        base = build_environment(base, list(bundle.spec.system_packages), cache_dir=opts.cache_dir, out=out,
                                 spec=bundle.path)
    return base


# -- layers ------------------------------------------------------------------------------------


def _skip_dag_file(rel: str) -> bool:
    """Bytecode left by local runs is host state, not DAG code."""
    name = rel.rsplit("/", 1)[-1]
    return name == "__pycache__" or name.endswith((".pyc", ".pyo"))


def deps_layer(plan: Plan, cache: LayerCache, opts: BuildOptions, out: Output) -> LayerFile:
    python = plan.python
    key = cache_key(kind="deps", bundle=plan.bundle.name, lock=plan.lock.digest, python=python,
                    platform=plan.platform, codec=opts.codec, epoch=opts.epoch)
    hit = cache.get(key)
    if hit:
        return hit
    cache.prepare()
    work = Path(tempfile.mkdtemp(dir=cache.tmp_dir, prefix="deps-"))
    try:
        target = work / "site-packages"
        target.mkdir()
        if locked_packages(plan.lock.requirements):
            from bundler.install import install_wheels

            reqs = work / "requirements.txt"
            reqs.write_text(plan.lock.requirements, encoding="utf-8")
            if not out.interactive:  # the progress display says it otherwise
                out.info(f"installing the locked wheels of {plan.bundle.name} (uv)")
            install_wheels(reqs, target, python=python, platform=plan.platform,
                           find_links=list(opts.find_links), offline=opts.offline)
        entries = scan_tree(target, f"{bundle_prefix(plan.bundle.name)}/site-packages", what="site-packages")
        layer = write_layer(entries, cache.tmp_dir, codec=opts.codec, epoch=opts.epoch)
        return cache.put(key, layer)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def dags_layer(plan: Plan, cache: LayerCache, opts: BuildOptions) -> LayerFile:
    src = plan.bundle.source_dir
    try:
        entries = scan_tree(src, f"{bundle_prefix(plan.bundle.name)}/dags", what=f"{plan.bundle.path}: bundle.source",
                            skip=_skip_dag_file)
        key = cache_key(kind="dags", listing=listing_digest(entries), codec=opts.codec, epoch=opts.epoch)
        hit = cache.get(key)
        if hit:
            return hit
        cache.prepare()
        return cache.put(key, write_layer(entries, cache.tmp_dir, codec=opts.codec, epoch=opts.epoch))
    except PermissionError as exc:
        raise BadInput(f"{plan.bundle.path}: bundle.source: cannot read {exc.filename}: {exc.strerror}",
                       hint="make every file in the DAG folder readable by the build user") from None


def metadata_layer(plan: Plan, cache: LayerCache, opts: BuildOptions) -> LayerFile:
    """bundle.json: spec, digests, pinned versions, base; small, so written every time."""
    b = plan.bundle
    doc = {
        "schemaVersion": 1,
        "team": b.team,
        "bundle": b.name,
        "version": b.spec.version,
        "repository": b.repository,
        "spec": b.spec.model_dump(mode="json"),
        "spec_digest": b.spec_digest,
        "lock_digest": plan.lock.digest,
        "python": plan.python,
        "platform": plan.platform,
        "packages": locked_packages(plan.lock.requirements),
        "base": {"name": plan.base.name, "digest": plan.base.digest},
        "builder": {"name": "dagseal", "version": _dagseal_version()},
    }
    prefix = bundle_prefix(b.name)
    entries = parent_dirs(prefix) + [file_entry(f"{prefix}/bundle.json", canonical_json(doc) + b"\n")]
    cache.prepare()
    return write_layer(entries, cache.tmp_dir, codec=opts.codec, epoch=opts.epoch)


def _dagseal_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dagseal")
    except PackageNotFoundError:
        return "0+unknown"


# -- config and manifest -----------------------------------------------------------------------


def iso_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_config(plan: Plan, diff_ids: list[str], created: str) -> dict[str, Any]:
    """The image config: the base's runtime settings, our PYTHONPATH, rootfs and history."""
    base_cfg = plan.base.config
    run_cfg = dict(base_cfg.get("config") or {})
    site = f"/{bundle_prefix(plan.bundle.name)}/site-packages"
    env = [e for e in (run_cfg.get("Env") or []) if isinstance(e, str)]
    old = [e.split("=", 1)[1] for e in env if e.startswith("PYTHONPATH=")]
    env = [e for e in env if not e.startswith("PYTHONPATH=")]
    env.append("PYTHONPATH=" + ":".join([site] + [o for o in old if o]))
    run_cfg["Env"] = env
    os_, _, arch = plan.platform.partition("/")
    config: dict[str, Any] = {"architecture": arch, "os": os_, "created": created, "config": run_cfg,
                              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    base_history = base_cfg.get("history")
    if not plan.base.layers or isinstance(base_history, list):
        ours = [{"created": created, "created_by": f"dagseal build: {what}"}
                for what in ("dependencies", "DAG code", "metadata")]
        config["history"] = list(base_history or []) + ours
    return config


def annotations(plan: Plan, opts: BuildOptions, created: str) -> dict[str, str]:
    b = plan.bundle
    return {ANN_VERSION: b.spec.version, ANN_CREATED: created, ANN_SOURCE: opts.source, ANN_REVISION: opts.revision,
            ANN_TEAM: b.team, ANN_BUNDLE: b.name, ANN_SPEC_DIGEST: b.spec_digest, ANN_LOCK_DIGEST: plan.lock.digest}


@dataclass(frozen=True)
class Image:
    """Everything to publish: new layer files, the config bytes and the encoded manifest."""

    layers: list[LayerFile]
    config: bytes
    config_desc: Descriptor
    manifest: RawContent


def assemble(plan: Plan, layers: list[LayerFile], opts: BuildOptions) -> Image:
    created = iso_time(opts.epoch)
    diff_ids = list(plan.base.diff_ids) + [layer.diff_id for layer in layers]
    config = canonical_json(image_config(plan, diff_ids, created))
    config_desc = Descriptor(mediaType=OCI_CONFIG, digest="sha256:" + hashlib.sha256(config).hexdigest(),
                             size=len(config))
    manifest = Manifest(schemaVersion=2, mediaType=OCI_MANIFEST, config=config_desc,
                        layers=list(plan.base.layers) + [layer.descriptor for layer in layers],
                        annotations=annotations(plan, opts, created))
    return Image(layers, config, config_desc, encode(manifest))


# -- publishing --------------------------------------------------------------------------------


def _put_layer_file(store: Store, repository: str, layer: LayerFile) -> None:
    """Hard-link a cached layer into a layout store (no copy, no re-hash); else stream it."""
    if store.has_blob(repository, layer.descriptor):
        return
    from registry.layout import TMP_NAME, LayoutStore

    if isinstance(store, LayoutStore):
        tmp_dir = store.root / TMP_NAME
        tmp_dir.mkdir(parents=True, exist_ok=True)
        link = tmp_dir / f"adopt-{os.getpid()}-{layer.descriptor.digest[7:23]}-{os.urandom(4).hex()}"
        try:
            os.link(layer.path, link)
        except OSError:
            pass  # another filesystem or no hard links: stream below
        else:
            try:
                store.adopt_file(link, layer.descriptor)
            finally:
                link.unlink(missing_ok=True)  # gone once adopted; removed if adopting failed
            return
    with open(layer.path, "rb") as fh:
        store.put_blob(repository, layer.descriptor, fh)


def _copy_base_blob(plan: Plan, store: Store, repository: str, desc: Descriptor) -> None:
    if store.has_blob(repository, desc):
        return
    assert plan.base.store is not None
    with plan.base.store.open_blob(plan.base.repository, desc) as fh:
        store.put_blob(repository, desc, fh)


def _put_image_blobs(plan: Plan, image: Image, store: Store, repository: str, pool: cf.Executor,
                     seen: set[str]) -> list[cf.Future]:
    """Jobs putting an image's base blobs and new layers (each digest once across images)."""
    jobs = []
    for d in plan.base.layers:
        if d.digest not in seen:
            seen.add(d.digest)
            jobs.append(pool.submit(_copy_base_blob, plan, store, repository, d))
    for layer in image.layers:
        if layer.descriptor.digest not in seen:
            seen.add(layer.descriptor.digest)
            jobs.append(pool.submit(_put_layer_file, store, repository, layer))
    return jobs


def _put_config(store: Store, repository: str, image: Image) -> None:
    if not store.has_blob(repository, image.config_desc):
        import io

        store.put_blob(repository, image.config_desc, io.BytesIO(image.config))


def publish(plans: list[Plan], images: list[Image], top: RawContent, store: Store, target: Reference) -> Reference:
    """Blobs first (in parallel, skipping what the store has), then the platform manifests of an
    index by digest, and the top manifest (or index) with its tag last."""
    b = plans[0].bundle
    ref = target.for_bundle(b.repository, b.spec.version)
    try:
        seen: set[str] = set()
        with cf.ThreadPoolExecutor(max_workers=4) as pool:
            jobs = [job for plan, image in zip(plans, images)
                    for job in _put_image_blobs(plan, image, store, ref.repository, pool, seen)]
            for job in jobs:
                job.result()
        for image in images:
            _put_config(store, ref.repository, image)
        for image in images:
            if image.manifest.digest != top.digest:
                store.put_manifest(ref.repository, image.manifest)
        store.put_manifest(ref.repository, top, tag=b.spec.version)
    except OSError as exc:
        raise StorageError(f"writing {b.name} to {target}: {exc}", hint="check the destination is writable and has space") from None
    return ref


def assemble_index(plans: list[Plan], images: list[Image], opts: BuildOptions) -> RawContent:
    """The image index of a multi-platform bundle: each platform's manifest with its `platform`,
    and the same dagseal annotations as the manifests (what `dagseal sign` reads and signs)."""
    manifests = []
    for plan, image in zip(plans, images):
        os_, _, arch = plan.platform.partition("/")
        desc = image.manifest.descriptor().model_copy(update={"platform": Platform(os=os_, architecture=arch)})
        manifests.append(desc)
    return encode(Index(schemaVersion=2, mediaType=OCI_INDEX, manifests=manifests,
                        annotations=annotations(plans[0], opts, iso_time(opts.epoch))))


# -- the command -------------------------------------------------------------------------------


def build_bundle(plans: list[Plan], store: Store, target: Reference, cache: LayerCache, opts: BuildOptions,
                 out: Output) -> BuildResult:
    """One bundle: dependency (per platform) and DAG layers in parallel, then metadata, config and
    manifest per platform, an index when there are several, publish."""
    plan = plans[0]
    name = plan.bundle.name
    several = len(plans) > 1
    with out.progress() as progress:
        def step(description: str) -> Any:
            task = progress.add_task(f"{name}: {description}", total=None)
            return lambda *_: progress.update(task, total=1, completed=1)

        with cf.ThreadPoolExecutor(max_workers=2) as pool:
            deps = []
            for p in plans:
                deps.append(pool.submit(deps_layer, p, cache, opts, out))
                deps[-1].add_done_callback(step(f"dependencies{f' for {p.platform}' if several else ''} "
                                                "(uv install, layer)"))
                if p is plan:
                    dags = pool.submit(dags_layer, plan, cache, opts)
                    dags.add_done_callback(step("DAG code layer"))
            layers = [[d.result(), dags.result()] for d in deps]
        done = step(f"publishing to {target}")
        metas: list[LayerFile] = []
        try:
            for p in plans:
                metas.append(metadata_layer(p, cache, opts))
            images = [assemble(p, own + [meta], opts) for p, own, meta in zip(plans, layers, metas)]
            top = assemble_index(plans, images, opts) if several else images[0].manifest
            ref = publish(plans, images, top, store, target)
        finally:
            for meta in metas:
                meta.path.unlink(missing_ok=True)  # adopted by hard link or streamed: the temp file goes
        done()
    children = {p.platform: image.manifest.digest for p, image in zip(plans, images)} if several else None
    return BuildResult(plan.bundle.team, name, str(ref), top.digest, children)


def target_reference(org: Organisation, to: str | None) -> Reference:
    """`--to` as given, else org.registry with a relative oci: folder taken from the repo root."""
    if to:
        return parse_reference(to)
    registry = org.org.org.registry
    try:
        ref = parse_reference(registry)
    except BadInput as exc:
        raise BadInput(f"{org.root / 'org.toml'}: org.registry: {exc.message}", hint=exc.hint) from None
    if ref.kind == "oci" and not Path(ref.location).is_absolute():
        from dataclasses import replace

        ref = replace(ref, location=str(org.root.parent / ref.location))
    return ref


def options(args: argparse.Namespace, org: Organisation) -> BuildOptions:
    source, revision = source_and_revision(org.root)
    cache_dir = Path(args.cache_dir) if getattr(args, "cache_dir", None) else org.root.parent / ".dagseal" / "cache"
    return BuildOptions(codec="zstd" if getattr(args, "zstd", False) else "gzip", cache_dir=cache_dir,
                        find_links=tuple(getattr(args, "find_links", None) or ()),
                        offline=bool(getattr(args, "offline", False)),
                        plain_http=bool(getattr(args, "plain_http", False)),
                        epoch=source_date_epoch(), source=source, revision=revision)


def build(org: Organisation, bundles: list[Bundle], target: Reference, opts: BuildOptions,
          out: Output) -> Iterator[BuildResult]:
    """Plan every bundle (nothing written if one is wrong), then build and publish each, yielding
    each result as soon as its image is in the store."""
    plans = [plan_bundle(org, b, opts, out) for b in bundles]
    assert opts.cache_dir is not None
    cache = LayerCache(opts.cache_dir)
    from registry.open import open_store

    with open_store(target, plain_http=opts.plain_http) as store:
        for plan in plans:
            yield build_bundle(plan, store, target, cache, opts, out)


def command(args: argparse.Namespace, out: Output) -> int:
    org = load_organisation(args.specs)
    bundles = org.select(args.team, args.bundle)
    if not bundles:
        raise BadInput(f"no bundle in {args.specs} matches --team {args.team or '*'} --bundle {args.bundle or '*'}",
                       hint="check the names with `dagseal validate`")
    target = target_reference(org, args.to)
    if target.tag or target.digest or (target.repository and target.kind != "registry"):
        given = f"--to {args.to}" if args.to else f"{org.root / 'org.toml'}: org.registry {org.org.org.registry!r}"
        raise BadInput(f"{given}: give the store only (oci:DIR, s3://BUCKET/PREFIX or host/path); "
                       "images are named <team>/<bundle>:<version> inside it", hint="drop the image name from it")
    for result in build(org, bundles, target, options(args, org), out):
        out.result(result.to_json(), f"{result.ref}@{result.digest}")
    return 0
