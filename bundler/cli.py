"""The `dagseal` command line: parses arguments, runs one command, maps errors to exit codes.

Exit codes (DESIGN.md), decided here and nowhere else: 0 success; 2 bad input (spec, flag,
reference); 3 refused by verification; 4 registry or storage failure after retries; 1 anything
else. Each command's implementation lives in the module named in `COMMANDS` and is imported only
when that command runs, so `dagseal run` (the start-time gate) pays for no unrelated imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from bundler.output import Output
from registry.errors import BadInput, DagsealError

# command -> "module:function"; each function takes (args, out) and returns an exit code or None.
COMMANDS: dict[str, str] = {
    "validate": "bundler.commands:validate",
    "codeowners": "bundler.commands:codeowners",
    "schema": "bundler.commands:schema",
    "lock": "bundler.commands:lock",
    "build": "bundler.build:command",
    "push": "registry.commands:push",
    "copy": "registry.commands:copy",
    "sign": "signing.commands:sign",
    "attest": "signing.commands:attest",
    "keygen": "signing.commands:keygen",
    "policy": "signing.commands:policy",
    "verify": "signing.gate:verify_command",
    "fetch": "signing.gate:fetch_command",
    "run": "signing.gate:run_command",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 already; keep its message, add usage
        raise BadInput(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object per result on stdout")


def _specs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--specs", default="specs", help="folder holding org.toml and teams/ (default: specs)")


def _select(p: argparse.ArgumentParser) -> None:
    p.add_argument("--team", help="only this team's bundles")
    p.add_argument("--bundle", help="only this bundle")


def _policy_args(p: argparse.ArgumentParser, *, team_required: bool = True) -> None:
    p.add_argument("--team", required=team_required, help="the team this runtime serves (Airflow team name)")
    p.add_argument("--policy", required=True, help="runtime trust policy JSON (from `dagseal policy export`)")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="accept a version older than the newest already accepted (only with a digest-pinned reference)")
    p.add_argument("--state-dir", help="where accepted versions and the bundle cache live (default: $DAGSEAL_HOME or ~/.cache/dagseal)")
    p.add_argument("--plain-http", action="store_true", help="allow plain HTTP to a non-loopback registry")
    p.add_argument("--platform", help="os/arch to start from a multi-platform bundle (default: this machine's, e.g. linux/amd64)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dagseal", description="Reproducible, signed OCI images of team DAG bundles for multi-team Airflow.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("validate", help="check every spec; list every error with file and field")
    _specs(p); _common(p)

    p = sub.add_parser("codeowners", help="write CODEOWNERS from the owners in org.toml")
    _specs(p); _common(p)
    p.add_argument("--out", help="file to write (default: print)")

    p = sub.add_parser("schema", help="write the JSON Schema of org.toml and bundle specs into the specs folder")
    _specs(p); _common(p)
    p.add_argument("--check", action="store_true", help="exit 2 if the files on disk are out of date")

    p = sub.add_parser("lock", help="resolve each bundle's dependencies into a hashed <bundle>.lock (uv)")
    _specs(p); _select(p); _common(p)
    p.add_argument("--find-links", action="append", default=[], help="extra wheel folder for uv (offline wheelhouses)")
    p.add_argument("--offline", action="store_true", help="resolve from uv's cache and --find-links only")
    p.add_argument("--upgrade", action="store_true", help="re-resolve to the newest allowed versions instead of keeping the pins of the current lock")

    p = sub.add_parser("build", help="build each bundle into an OCI image in the org's store (or --to)")
    _specs(p); _select(p); _common(p)
    p.add_argument("--to", help="store reference: oci:DIR, s3://BUCKET/PREFIX or a registry")
    p.add_argument("--zstd", action="store_true", help="write zstd layers instead of gzip")
    p.add_argument("--cache-dir", help="build cache (default: .dagseal/cache beside the specs' parent)")
    p.add_argument("--find-links", action="append", default=[], help="extra wheel folder for uv")
    p.add_argument("--offline", action="store_true", help="install from uv's cache and --find-links only")
    p.add_argument("--plain-http", action="store_true", help="allow plain HTTP to a non-loopback registry")

    for name, helptext in (("push", "move an image with its referrers; digests unchanged"),
                           ("copy", "same as push")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("src"); p.add_argument("dst"); _common(p)
        p.add_argument("--plain-http", action="store_true", help="allow plain HTTP to a non-loopback registry")
        p.add_argument("--no-referrers", action="store_true", help="copy the image only")
        p.add_argument("--jobs", type=int, default=4, help="parallel blob transfers (default 4)")

    p = sub.add_parser("sign", help="pre-flight against the org policy, then sign the image with its team statement")
    p.add_argument("ref"); _common(p)
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--key", help="ECDSA P-256 private key (PEM)")
    key.add_argument("--kms", help="AWS KMS key: awskms:///<key id or alias>")
    key.add_argument("--keyless", action="store_true", help="Sigstore keyless signing with the ambient OIDC identity")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--specs", default=None, help="specs folder for the pre-flight (default: specs)")
    src.add_argument("--policy", help="runtime policy JSON for the pre-flight instead of specs")
    p.add_argument("--trust-config", help="Sigstore ClientTrustConfig JSON (private instance)")
    p.add_argument("--identity-token", help="OIDC token for --keyless (default: ambient CI credentials)")
    p.add_argument("--expires", help="statement expiry (ISO 8601 time or a duration like 90d)")
    p.add_argument("--sbom", action="store_true", help="also attach a signed CycloneDX SBOM and SLSA provenance")
    p.add_argument("--plain-http", action="store_true", help="allow plain HTTP to a non-loopback registry")

    p = sub.add_parser("attest", help="attach signed SBOM and SLSA provenance referrers to an image")
    p.add_argument("ref"); _common(p)
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--key"); key.add_argument("--kms"); key.add_argument("--keyless", action="store_true")
    p.add_argument("--specs", default="specs")
    p.add_argument("--trust-config"); p.add_argument("--identity-token")
    p.add_argument("--plain-http", action="store_true")

    p = sub.add_parser("keygen", help="write an ECDSA P-256 key pair: PREFIX.key (0600) and PREFIX.pub")
    p.add_argument("--out", required=True, help="path prefix"); _common(p)

    p = sub.add_parser("policy", help="trust policy commands")
    psub = p.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", parser_class=_Parser)
    psub.required = True
    pe = psub.add_parser("export", help="compile org.toml into the runtime policy or admission policies")
    _specs(pe); _common(pe)
    pe.add_argument("--format", choices=["json", "kyverno", "policy-controller"], default="json")
    pe.add_argument("--out", help="file to write (default: stdout)")
    pe.add_argument("--offline-grace", help="let a verified bundle start while its registry is down for this long (e.g. 24h)")
    pe.add_argument("--trust-config", help="Sigstore ClientTrustConfig JSON of a private instance: its trusted root is embedded")
    pe.add_argument("--max-bundle-size", metavar="SIZE",
                    help="refuse a bundle that unpacks to more than SIZE (bytes, or e.g. 512MiB, 4GiB; default 16GiB)")
    pe.add_argument("--max-entries", metavar="N", help="refuse a bundle with more than N files and folders (default 500000)")

    p = sub.add_parser("verify", help="verify an image for a team; print the decision")
    p.add_argument("ref"); _policy_args(p); _common(p)

    p = sub.add_parser("fetch", help="verify and materialise a bundle into DIR")
    p.add_argument("ref"); _policy_args(p); _common(p)
    p.add_argument("--dest", required=True, help="folder to materialise the bundle tree into")

    p = sub.add_parser("run", help="verify and materialise every bundle, then exec CMD")
    _policy_args(p); _common(p)
    p.add_argument("--bundle", action="append", required=True, dest="bundles", metavar="REF", help="bundle reference (repeatable)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return parser


def _handler(command: str) -> Callable[[argparse.Namespace, Output], int | None]:
    module, _, func = COMMANDS[command].partition(":")
    return getattr(importlib.import_module(module), func)


def run(argv: Sequence[str] | None = None, out: Output | None = None) -> int:
    """Run one command; returns its exit code (never raises for a DagsealError)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = out or Output(json_mode="--json" in argv)
    try:
        args = build_parser().parse_args(argv)
        out.json_mode = bool(getattr(args, "json", False))
        return int(_handler(args.command)(args, out) or 0)
    except DagsealError as exc:
        return report(exc, out)
    except KeyboardInterrupt:
        out.stderr.write("interrupted\n")
        return 130


def report(exc: DagsealError, out: Output) -> int:
    """Print an error the way the mode asks and return its exit code."""
    if out.json_mode:
        out.result(exc.to_json())
    else:
        check = getattr(exc, "check", None)
        prefix = f"refused [{check}]" if check else "error"
        out.stderr.write(f"dagseal: {prefix}: {exc}\n")
    return exc.exit_code


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
