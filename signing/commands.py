"""Handlers of `dagseal sign`, `attest`, `keygen` and `policy export`.

`sign` reads the image from any store, runs the pre-flight (the signer must be listed for the
image's team; the image's team and bundle must agree with the org), signs the team statement and
attaches the bundle as an OCI referrer. Nothing is attached unless every check passed and every
signature was made.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

from bundler.output import Output
from registry.errors import BadInput, Refused
from registry.model import Descriptor, Index, RawContent
from registry.ref import Reference, parse_reference
from signing.preflight import ImageFacts, check_bundle, check_signer, image_facts, parse_expires, predicate_for
from signing.signers.base import Signer
from signing.statement import PREDICATE_TYPE, BundlePredicate, make_statement


# -- signers ---------------------------------------------------------------------------------------
def make_signer(args: argparse.Namespace) -> Signer:
    if getattr(args, "key", None):
        from signing.signers.keyfile import KeyFileSigner

        return KeyFileSigner.from_file(args.key)
    if getattr(args, "kms", None):
        from signing.signers.kms import KmsSigner

        return KmsSigner(args.kms)
    from signing.signers.keyless import KeylessSigner

    return KeylessSigner(identity_token=_token(args), trust_config=getattr(args, "trust_config", None))


def _token(args: argparse.Namespace) -> str | None:
    value = getattr(args, "identity_token", None)
    if value and value.startswith("@"):  # @FILE reads the token from a file (keeps it out of argv)
        try:
            return Path(value[1:]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise BadInput(f"--identity-token {value}: cannot be read ({exc.strerror})") from None
    return value


# -- the image -------------------------------------------------------------------------------------
@dataclass
class Target:
    ref: Reference
    store: object
    content: RawContent
    facts: ImageFacts

    @property
    def subject(self) -> Descriptor:
        return self.content.descriptor()

    @property
    def digest(self) -> str:
        return self.content.digest


def open_target(text: str, *, plain_http: bool = False) -> Target:
    from registry.open import open_store

    ref = parse_reference(text)
    if not ref.reference:
        raise BadInput(f"reference {text!r} names no tag or digest", hint="append :TAG or @sha256:... to name the image")
    store = open_store(ref, plain_http=plain_http, create=False)
    try:
        content = store.get(ref.repository, ref.reference)
        if ref.digest and content.digest != ref.digest:
            raise Refused(f"{text}: store returned manifest {content.digest}", check="blob-digest")
        facts = image_facts(content, text)
        if isinstance(content.parsed, Index):
            check_platform_images(store, ref.repository, content)
        return Target(ref=ref, store=store, content=content, facts=facts)
    except BaseException:
        store.close()
        raise


def check_platform_images(store, repository: str, content: RawContent) -> None:
    """A multi-platform index is signed only if every image it lists is an image manifest carrying
    the index's dagseal annotations: the gate would refuse the others (signing.platforms), so CI
    learns it here instead of at every worker's start."""
    from signing.platforms import check_child

    assert isinstance(content.parsed, Index)
    for desc in content.parsed.manifests:
        check_child(content, desc, store.get_manifest(repository, desc.digest))


# -- pre-flight ------------------------------------------------------------------------------------
def preflight(args: argparse.Namespace, facts: ImageFacts, signer: Signer) -> None:
    if getattr(args, "policy", None):
        from signing.trust import load_policy

        policy = load_policy(args.policy)
        source = f"policy {args.policy}"
        if facts.team not in policy.teams:
            raise Refused(f"image team {facts.team!r} is not in {source}", check="team",
                          hint="sign only images of teams the org declares")
        check_bundle(facts, policy.team_of(facts.bundle), source)
        check_signer(signer.identity, facts.team, policy.signers_for(facts.team), source)
        return
    from bundler.specs import load_organisation
    from signing.policy_export import compile_team

    specs = getattr(args, "specs", None) or "specs"
    org = load_organisation(specs)
    source = f"{Path(specs) / 'org.toml'}"
    if facts.team not in org.org.teams:
        raise Refused(f"image team {facts.team!r} is not in {source}", check="team",
                      hint="sign only images of teams the org declares")
    owners = [b.team for b in org.bundles if b.name == facts.bundle]
    check_bundle(facts, owners[0] if owners else None, source)
    check_signer(signer.identity, facts.team, compile_team(org, facts.team).signers, source)


# -- handlers --------------------------------------------------------------------------------------
def sign(args: argparse.Namespace, out: Output) -> int:
    from signing.attach import attach

    expires = parse_expires(args.expires)
    target = open_target(args.ref, plain_http=args.plain_http)
    try:
        signer = make_signer(args)
        preflight(args, target.facts, signer)
        predicate = predicate_for(target.facts, expires=expires)
        payloads = [(PREDICATE_TYPE, make_statement(target.ref.repository, target.digest, predicate))]
        if args.sbom:
            payloads += attestation_payloads(args, target, predicate)
        bundles = [(ptype, signer.sign_statement(payload)) for ptype, payload in payloads]
        attached = [attach(target.store, target.ref.repository, target.subject, bundle, ptype)
                    for ptype, bundle in bundles]
    finally:
        target.store.close()
    result = {"ref": str(target.ref), "digest": target.digest, "team": target.facts.team,
              "bundle": target.facts.bundle, "signer": str(signer.identity), "signature": attached[0].digest,
              "attestations": [d.digest for d in attached[1:]]}
    out.result(result, f"signed {target.ref} ({target.digest}) for team {target.facts.team} as {signer.identity}")
    return 0


def attest(args: argparse.Namespace, out: Output) -> int:
    from signing.attach import attach

    target = open_target(args.ref, plain_http=args.plain_http)
    try:
        signer = make_signer(args)
        preflight(args, target.facts, signer)
        predicate = predicate_for(target.facts)
        payloads = attestation_payloads(args, target, predicate)
        bundles = [(ptype, signer.sign_statement(payload)) for ptype, payload in payloads]
        attached = [attach(target.store, target.ref.repository, target.subject, bundle, ptype)
                    for ptype, bundle in bundles]
    finally:
        target.store.close()
    out.result({"ref": str(target.ref), "digest": target.digest, "attestations": [d.digest for d in attached]},
               f"attached SBOM and provenance to {target.ref}")
    return 0


def attestation_payloads(args: argparse.Namespace, target: Target, predicate: BundlePredicate) -> list[tuple[str, bytes]]:
    """Statements of the CycloneDX SBOM (from the bundle's lock) and the SLSA provenance."""
    from bundler.specs import load_organisation
    from signing.provenance import SLSA_PREDICATE_TYPE, slsa_provenance
    from signing.sbom import SBOM_PREDICATE_TYPE, cyclonedx, read_lock_pins

    specs = getattr(args, "specs", None) or "specs"
    org = load_organisation(specs)
    bundles = org.select(bundle=target.facts.bundle)
    if not bundles:
        raise BadInput(f"bundle {target.facts.bundle!r} has no spec under {specs}",
                       hint="pass --specs with the folder the image was built from")
    lock_path = bundles[0].lock_path
    from registry.digest import sha256_digest

    if lock_path.is_file() and sha256_digest(lock_path.read_bytes()) != predicate.lock_digest:
        raise Refused(f"{lock_path} does not match the image's lock digest {predicate.lock_digest}",
                      check="lock", hint="check out the commit the image was built from")
    pins = read_lock_pins(lock_path) if lock_path.is_file() else []
    bom = cyclonedx(predicate.bundle, predicate.version, target.digest, pins, created=predicate.built_at,
                    team=predicate.team)
    repo = target.ref.repository
    return [(SBOM_PREDICATE_TYPE, make_statement(repo, target.digest, bom, SBOM_PREDICATE_TYPE)),
            (SLSA_PREDICATE_TYPE, make_statement(repo, target.digest, slsa_provenance(predicate), SLSA_PREDICATE_TYPE))]


def keygen(args: argparse.Namespace, out: Output) -> int:
    from signing.signers.keyfile import generate_keypair

    key, pub, key_id = generate_keypair(args.out)
    out.result({"private_key": str(key), "public_key": str(pub), "key_id": key_id},
               f"wrote {key} (mode 0600) and {pub}; key id {key_id}\n"
               f"add {{ key = \"{pub}\" }} (relative to org.toml) to the team's signers")
    return 0


_GRACE = re.compile(r"^(\d+)([smhd]?)$")


def _grace_seconds(value: str | None) -> int | None:
    if not value:
        return None
    m = _GRACE.match(value.strip())
    if not m:
        raise BadInput(f"--offline-grace {value!r} is not a duration", hint="write e.g. 3600, 90m, 24h or 7d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


_SIZE = re.compile(r"^([0-9]{1,20})\s*(B|KiB|MiB|GiB|TiB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def _size_bytes(value: str | None) -> int | None:
    """--max-bundle-size: bytes or a binary size (512MiB, 4GiB); a zero or unreadable size is bad input."""
    if value is None:
        return None
    m = _SIZE.match(value.strip())
    size = int(m.group(1)) * _SIZE_UNITS[m.group(2)] if m else 0
    if size <= 0:
        raise BadInput(f"--max-bundle-size {value!r} is not a size above 0",
                       hint="write bytes or a binary size, e.g. 1073741824, 512MiB or 4GiB")
    return size


def _entry_count(value: str | None) -> int | None:
    """--max-entries: a whole number of tar entries above 0."""
    if value is None:
        return None
    if not re.fullmatch(r"[0-9]{1,20}", value.strip()) or int(value) <= 0:
        raise BadInput(f"--max-entries {value!r} is not a whole number above 0", hint="write e.g. --max-entries 50000")
    return int(value)


def _limits(args: argparse.Namespace) -> dict | None:
    """The policy's `limits` from --max-bundle-size/--max-entries; None (dagseal's defaults) if neither."""
    size = _size_bytes(getattr(args, "max_bundle_size", None))
    entries = _entry_count(getattr(args, "max_entries", None))
    if size is None and entries is None:
        return None
    return {"max_bundle_bytes": size, "max_entries": entries}


def _trusted_root(path: str | None) -> dict | None:
    if not path:
        return None
    from signing.signers.keyless import load_trust_config

    load_trust_config(path)  # validates it
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    root = doc.get("trustedRoot")
    if not isinstance(root, dict):
        raise BadInput(f"--trust-config {path}: no trustedRoot object")
    return root


def policy(args: argparse.Namespace, out: Output) -> int:
    from bundler.specs import load_organisation
    from signing.policy_export import compile_policy, render

    limits = _limits(args)  # bad sizes exit 2 before specs are read
    org = load_organisation(args.specs)
    compiled = compile_policy(org, trusted_root=_trusted_root(getattr(args, "trust_config", None)),
                              offline_grace_seconds=_grace_seconds(args.offline_grace), limits=limits)
    text = render(org, compiled, args.format)
    if args.out:
        _write_atomic(Path(args.out), text.encode())
        out.result({"format": args.format, "out": args.out, "teams": sorted(compiled.teams)},
                   f"wrote {args.format} policy for {len(compiled.teams)} team(s) to {args.out}")
    elif out.json_mode:  # one JSON object on one line, like every other command's --json
        doc = compiled.model_dump(mode="json") if args.format == "json" else {"format": args.format, "content": text}
        out.result(doc)
    else:
        out.stdout.write(text)
    return 0


def _write_atomic(path: Path, data: bytes) -> None:
    from registry.fsutil import atomic_write

    atomic_write(path.absolute(), data)
