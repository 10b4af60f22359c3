"""Team environments with OS packages: buildah installs `system_packages` on top of a base image.

Only the OS part goes through buildah (a subprocess; there is no Python binding). The native builder
then puts the dependency, DAG and metadata layers on top of the `BaseImage` returned here.

How one environment is made (`build_environment`):

1. key = sha256(base manifest digest, sorted packages, timestamp, BACKEND_VERSION). A finished
   environment is an OCI layout at `<cache_dir>/environments/<key>/` tagged `env`; if it exists,
   buildah is not run at all (a DAG or dependency change never reruns it).
2. Else, in a fresh work folder under `<cache_dir>/environments/.work/`: export the base into an OCI
   layout buildah reads (`oci:DIR:base`), and run buildah with its own `--root`/`--runroot` there
   (vfs storage, chroot isolation: it works on machines without a container engine):
   `from` -> check the rootfs has `apt-get` and `sh` -> `run` apt-get update + install
   --no-install-recommends, then clean apt's lists, caches and logs -> `commit --timestamp`.
3. buildah commits uncompressed layers; the new (last) layer is gzipped here (isal, no name or
   time) and written with the base's own layers, a config derived from the base's, and a
   manifest into the work folder, which is then renamed into place. A failure leaves nothing:
   the work folder, with buildah's storage and its containers and images, is deleted.

Reproducibility: `buildah commit --timestamp` fixes the mtimes in the layer, and apt's and dpkg's
logs (which hold wall-clock times) are removed before the commit, so two fresh builds from the same
base against the same mirror state give the same digest (tested). When the mirror has moved on
(a security update), a fresh build differs: the cache is what keeps rebuilds of a spec
bit-identical, and a DAG or dependency change never reruns buildah.

Every buildah invocation is appended to `<cache_dir>/environments/buildah.log` (one JSON line),
so a test or an operator can see whether buildah ran.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock

from bundler.base import BaseImage
from bundler.output import Output
from registry.digest import CHUNK
from registry.errors import BadInput, DagsealError, ToolError
from registry.layout import LayoutStore
from registry.model import (
    MAX_CONFIG_BYTES,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    canonical_json,
    encode,
    load_json,
)
from registry.store import Store

BACKEND_VERSION = "dagseal-environment/1 buildah+apt"
ENV_TAG = "env"
LOG_NAME = "buildah.log"
RUN_TIMEOUT = 1800  # seconds for one buildah step (apt-get over a slow mirror)
_APT_SCRIPT = (
    'set -e; export DEBIAN_FRONTEND=noninteractive; '
    'apt-get update -q; '
    'apt-get install -y -q --no-install-recommends "$@"; '
    'apt-get clean; '
    'rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log '
    '/var/log/alternatives.log /var/cache/ldconfig/aux-cache /var/cache/debconf/*-old /var/lib/dpkg/*-old'
)
_POLICY = b'{"default":[{"type":"insecureAcceptAnything"}]}'


# -- layout helpers (shared with the tests' base-image fixtures) -----------------------------------
class _HashingWriter:
    """A write-only file that hashes and counts what passes through (no `name`: gzip stores none)."""

    def __init__(self, raw: BinaryIO):
        self._raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()


def gzip_layer(tar_stream: BinaryIO, store: LayoutStore) -> tuple[Descriptor, str]:
    """Gzip (isal, mtime 0, no file name) a tar stream into `store`; return (layer, diff_id).

    Both digests are computed in the one pass over the bytes; the blob appears in the store only
    once complete (temp file in the layout, then rename)."""
    from isal import igzip

    tmp_dir = store.root / ".tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix="layer-")
    try:
        diff = hashlib.sha256()
        with os.fdopen(fd, "wb") as raw:
            out = _HashingWriter(raw)
            with igzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=2) as gz:
                while chunk := tar_stream.read(CHUNK):
                    diff.update(chunk)
                    gz.write(chunk)
            raw.flush()
            os.fsync(raw.fileno())
        desc = Descriptor(mediaType=OCI_LAYER_GZIP, digest="sha256:" + out.hash.hexdigest(), size=out.size)
        store.adopt_file(Path(tmp), desc)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return desc, "sha256:" + diff.hexdigest()


def write_image(store: LayoutStore, repository: str, tag: str, layers: list[Descriptor], config: dict) -> str:
    """Write config and manifest for `layers` (already in `store`), tag it; return the manifest digest."""
    config_bytes = canonical_json(config)
    config_desc = Descriptor(mediaType=OCI_CONFIG, digest="sha256:" + hashlib.sha256(config_bytes).hexdigest(),
                             size=len(config_bytes))
    store.put_blob_bytes(config_desc, config_bytes)
    content = encode(Manifest(schemaVersion=2, mediaType=OCI_MANIFEST, config=config_desc, layers=layers))
    return store.put_manifest(repository, content, tag=tag).digest


def _copy_blob(src: BaseImage, dst: LayoutStore, desc: Descriptor) -> None:
    """Hard-link from a layout base (same file system), else stream through digest verification."""
    if dst.has_blob("", desc):
        return
    if isinstance(src.store, LayoutStore):
        dst.blob_path(desc.digest).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.link(src.store.blob_path(desc.digest), dst.blob_path(desc.digest))
            return
    assert src.store is not None
    with src.store.open_blob(src.repository, desc) as stream:
        dst.put_blob("", desc, stream)


# -- keys and the cache ----------------------------------------------------------------------------
def normalise_packages(packages: list[str]) -> list[str]:
    """Sorted, deduplicated package names: the order in the spec does not change the environment."""
    return sorted(set(packages))


def _timestamp() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not raw.isdigit():
        raise BadInput(f"SOURCE_DATE_EPOCH={raw!r} is not a number of seconds",
                       hint="unset it or set it to an integer such as $(git log -1 --format=%ct)")
    return int(raw)


def environment_key(base_digest: str, packages: list[str], timestamp: int = 0) -> str:
    """Hex key of an environment: what a cached environment must have been built from."""
    doc = {"backend": BACKEND_VERSION, "base": base_digest, "packages": normalise_packages(packages),
           "timestamp": timestamp}
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def image_from_store(store: Store, repository: str, reference: str, name: str) -> BaseImage:
    """The BaseImage of an image manifest in any store (tag or digest), config read and checked."""
    desc = store.resolve(repository, reference)
    manifest = store.get_manifest(repository, desc.digest).parsed
    if not isinstance(manifest, Manifest):
        raise BadInput(f"{name!r} is an index, not an image manifest",
                       hint="pin the base to the digest of its linux/amd64 image manifest")
    if manifest.config.size > MAX_CONFIG_BYTES:
        raise BadInput(f"{name!r}: config is {manifest.config.size} bytes, more than {MAX_CONFIG_BYTES}",
                       hint="use a normal image as base")
    with store.open_blob(repository, manifest.config) as fh:
        config = load_json(fh.read(), what=f"config of {name}", limit=MAX_CONFIG_BYTES)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(manifest.layers):
        raise BadInput(f"{name!r}: its config lists {len(diff_ids or [])} diff_ids for {len(manifest.layers)} layers",
                       hint="rebuild the base image; its config and manifest disagree")
    return BaseImage(name=name, layers=list(manifest.layers), diff_ids=list(diff_ids), config=config,
                     store=store, repository=repository, digest=desc.digest)


def load_environment(path: Path, name: str) -> BaseImage:
    """The BaseImage of a finished environment layout (`<key>/`, tag `env`)."""
    return image_from_store(LayoutStore(path, create=False), "", ENV_TAG, name)


# -- buildah ---------------------------------------------------------------------------------------
@dataclass
class Buildah:
    """buildah with storage of its own (vfs under `root`): nothing is shared with other builds.

    It runs in `root`, and `oci:` references are relative to it: buildah derives an image name from
    the layout's path and refuses paths that are not lowercase.

    Every call is logged to `log` (argv and exit code) before its result is used."""

    root: Path
    log: Path
    key: str

    def __post_init__(self) -> None:
        self.exe = shutil.which("buildah")
        if not self.exe:
            raise ToolError("buildah is not installed; system_packages need it",
                            hint="apt-get install buildah (or run `make setup`)")
        self.policy = self.root / "policy.json"
        self.policy.write_bytes(_POLICY)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        argv = [self.exe or "buildah", "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
                "--storage-driver", "vfs", *args]
        start = time.monotonic()
        try:
            proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=self.root,
                                  env={**os.environ, "BUILDAH_ISOLATION": "chroot"})
        except subprocess.TimeoutExpired:
            self._record(args, None, time.monotonic() - start)
            raise ToolError(f"buildah {args[0]} did not finish within {RUN_TIMEOUT} s",
                            hint="check the Debian mirror is reachable from this machine") from None
        self._record(args, proc.returncode, time.monotonic() - start)
        return proc

    def _record(self, args: tuple[str, ...], code: int | None, seconds: float) -> None:
        line = json.dumps({"key": self.key, "argv": list(args), "exit": code, "seconds": round(seconds, 3)},
                          sort_keys=True)
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def check(self, *args: str) -> str:
        """Run; raise ToolError with buildah's own error text on failure; return stdout."""
        proc = self.run(*args)
        if proc.returncode != 0:
            raise ToolError(f"buildah {args[0]} failed (exit {proc.returncode}): {_tail(proc.stderr or proc.stdout)}")
        return proc.stdout.strip()


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _exists_in_root(root: Path, path: str, hops: int = 40) -> bool:
    """Does `path` exist inside the rootfs at `root`, resolving symlinks as a chroot would?

    Absolute link targets are taken relative to `root`, never the host, so a hostile base cannot
    make the host's /usr/bin/apt-get look like its own."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current: list[str] = []
    while parts:
        part = parts.pop(0)
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = root.joinpath(*current, part)
        if candidate.is_symlink():
            hops -= 1
            if hops < 0:
                return False
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        if not os.path.lexists(candidate):
            return False
        current.append(part)
    return True


_NOT_FOUND = [
    (re.compile(r"Unable to locate package (\S+)"), "does not exist in the base's package lists"),
    (re.compile(r"Package '?([^' ]+)'? has no installation candidate"), "has no installation candidate"),
    (re.compile(r"Version '[^']*' for '([^']+)' was not found"), "has no such version"),
]


def _apt_error(output: str, base: BaseImage) -> DagsealError:
    """A spec problem (unknown package or version) is BadInput; anything else is a tool failure."""
    for pattern, why in _NOT_FOUND:
        found = pattern.findall(output)
        if found:
            names = ", ".join(sorted(set(found)))
            return BadInput(f"bundle.system_packages: {names} {why} (base {base.name})",
                            hint="fix the name in bundle.system_packages (check it with `apt-cache search` on "
                                 "the base's Debian release) or remove it")
    return ToolError(f"apt-get in a container of base {base.name} failed: {_tail(output)}",
                     hint="check the base's /etc/apt/sources.list mirror is reachable from this machine")


# -- the build -------------------------------------------------------------------------------------
def build_environment(base: BaseImage, packages: list[str], *, cache_dir: Path, out: Output,
                      spec: Path | None = None) -> BaseImage:
    """`base` plus one layer with `packages` installed by apt-get in a buildah container.

    Raises BadInput (exit 2) for a spec problem: a base without a package manager (scratch, or no
    apt-get/sh in its filesystem) or a package apt cannot find; ToolError for buildah failures.
    `spec` (the bundle's .toml) is named in those messages."""
    packages = normalise_packages(packages)
    if not packages:
        return base
    timestamp = _timestamp()
    try:
        return _environment(base, packages, timestamp, Path(cache_dir), out)
    except BadInput as exc:
        if spec is None:
            raise
        raise BadInput(f"{spec}: {exc.message}", hint=exc.hint, details=exc.details) from None


def _environment(base: BaseImage, packages: list[str], timestamp: int, cache_dir: Path, out: Output) -> BaseImage:
    if base.store is None or base.digest is None:
        raise BadInput(f"bundle.base: {base.name!r} has no package manager, so bundle.system_packages "
                       f"({', '.join(packages)}) cannot be installed",
                       hint="use a Debian-based base from org.allowed_bases, or remove system_packages")
    _require_runnable_here(base)
    key = environment_key(base.digest, packages, timestamp)
    envs = Path(cache_dir) / "environments"
    envs.mkdir(parents=True, exist_ok=True)
    final = envs / key
    with FileLock(str(envs / f"{key}.lock")):
        if (final / "index.json").is_file():
            out.info(f"environment {key[:12]} ({' '.join(packages)} on {base.name}): cached, buildah not run")
            return load_environment(final, base.name)
        if final.exists():  # an interrupted copy by hand or a damaged cache: rebuild it
            shutil.rmtree(final)
        out.info(f"environment {key[:12]}: installing {' '.join(packages)} on {base.name} with buildah")
        (envs / ".work").mkdir(exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{key[:12]}-", dir=envs / ".work"))
        try:
            _build(base, packages, timestamp, work, Buildah(root=work, log=envs / LOG_NAME, key=key))
            os.replace(work / "result", final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return load_environment(final, base.name)


def _build(base: BaseImage, packages: list[str], timestamp: int, work: Path, buildah: Buildah) -> None:
    _export_base(base, work / "base")
    container = buildah.check("from", "--quiet", "--signature-policy", str(buildah.policy),
                              "--name", f"dagseal-env-{buildah.key[:12]}", "oci:base:base")
    try:
        _require_package_manager(Path(buildah.check("mount", container)), base)
        proc = buildah.run("run", "--isolation", "chroot", container, "--", "/bin/sh", "-c", _APT_SCRIPT,
                           "sh", *packages)
        if proc.returncode != 0:
            raise _apt_error(proc.stdout + "\n" + proc.stderr, base)
        buildah.check("commit", "--quiet", "--format", "oci", "--timestamp", str(timestamp),
                      "--signature-policy", str(buildah.policy), container, f"oci:committed:{ENV_TAG}")
    finally:
        buildah.run("rm", container)
    _assemble(base, packages, timestamp, LayoutStore(work / "committed", create=False), work / "result")


def _export_base(base: BaseImage, dest: Path) -> None:
    """The base's manifest, config and layers as a one-image layout tagged `base` (buildah's input)."""
    assert base.store is not None and base.digest is not None
    content = base.store.get_manifest(base.repository, base.digest)
    manifest = content.parsed
    if not isinstance(manifest, Manifest):
        raise BadInput(f"bundle.base: {base.name!r} is an index, not an image manifest",
                       hint="pin the base to the digest of its linux/amd64 image manifest")
    store = LayoutStore(dest)
    for desc in [manifest.config, *manifest.layers]:
        _copy_blob(base, store, desc)
    store.put_manifest("", content, tag="base")


_HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def _require_runnable_here(base: BaseImage) -> None:
    """apt-get runs inside the base, so its binaries must be for this machine's architecture."""
    import platform

    host = _HOST_ARCH.get(platform.machine(), platform.machine())
    arch = base.config.get("architecture") if isinstance(base.config, dict) else None
    if arch and arch != host:
        raise ToolError(f"base {base.name!r} is built for linux/{arch}; this machine ({host}) cannot run its apt-get "
                        "to install bundle.system_packages",
                        hint=f"build this bundle on a linux/{arch} machine (or register qemu-user-static binfmt)")


def _require_package_manager(rootfs: Path, base: BaseImage) -> None:
    missing = [p for p in ("bin/sh", "usr/bin/apt-get") if not _exists_in_root(rootfs, p)]
    if missing:
        raise BadInput(f"bundle.base: {base.name!r} has no package manager ({', '.join('/' + m for m in missing)} "
                       f"not found in its filesystem), so bundle.system_packages cannot be installed",
                       hint="system_packages need a Debian-based base with apt-get from org.allowed_bases; "
                            "or remove system_packages")


def _assemble(base: BaseImage, packages: list[str], timestamp: int, committed: LayoutStore, dest: Path) -> None:
    """Base layers (as they were) + buildah's new layer, gzipped here, + a config derived from the base's."""
    desc = committed.resolve("", ENV_TAG)
    manifest = committed.get_manifest("", desc.digest).parsed
    assert isinstance(manifest, Manifest)
    with committed.open_blob("", manifest.config) as fh:
        built = load_json(fh.read(), what="config committed by buildah")
    built_diffs = list(built.get("rootfs", {}).get("diff_ids", []))
    if len(manifest.layers) != len(base.layers) + 1 or built_diffs[:-1] != list(base.diff_ids):
        raise ToolError(f"buildah committed {len(manifest.layers)} layers with diff_ids {built_diffs}; expected the "
                        f"base's {len(base.layers)} layers unchanged plus one",
                        hint="report this with `buildah --version`; the environment backend needs that layout")
    layer = manifest.layers[-1]
    if layer.media_type != OCI_LAYER_TAR:
        raise ToolError(f"buildah committed a {layer.media_type} layer; expected an uncompressed tar")
    store = LayoutStore(dest)
    with committed.open_blob("", layer) as stream:
        env_layer, env_diff = gzip_layer(stream, store)
    for base_layer in base.layers:
        _copy_blob(base, store, base_layer)
    write_image(store, "", ENV_TAG, [*base.layers, env_layer],
                environment_config(base, built, env_diff, packages, timestamp))


def environment_config(base: BaseImage, built: dict, env_diff: str, packages: list[str], timestamp: int) -> dict:
    """The base's config with the new layer's diff_id, buildah's extra Env entries, a label and history."""
    from datetime import datetime

    config = copy.deepcopy(base.config) or {"architecture": "amd64", "os": "linux"}
    created = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    section = config.setdefault("config", {}) or {}
    config["config"] = section
    env = list(section.get("Env") or [])
    names = {e.split("=", 1)[0] for e in env}
    env += [e for e in (built.get("config", {}) or {}).get("Env") or [] if e.split("=", 1)[0] not in names]
    if env:
        section["Env"] = env
    section["Labels"] = {**(section.get("Labels") or {}), "io.dagseal.environment.packages": " ".join(packages)}
    config["rootfs"] = {"type": "layers", "diff_ids": [*base.diff_ids, env_diff]}
    config["created"] = created
    step = {"created": created, "created_by": "apt-get install --no-install-recommends " + " ".join(packages),
            "comment": BACKEND_VERSION}
    if config.get("history"):  # history, when there is one, has an entry per layer: keep it so
        config["history"] = [*(config.get("history") or []), step]
    return config
