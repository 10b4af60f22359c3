"""Handlers of `dagseal validate`, `codeowners`, `schema` and `lock` (specs and locks).

Each handler takes the parsed arguments and an `Output`, prints its results and returns an exit
code or raises a `DagsealError`; `bundler.cli` maps those to exit codes.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bundler.output import Output
from bundler.specs import Problem, check_organisation, load_organisation
from registry.errors import BadInput, DagsealError


def validate(args: argparse.Namespace, out: Output) -> int:
    """Every problem of every spec at once (and stale locks); exit 2 if any, else a summary."""
    from bundler.lock import lock_problem

    org, problems = check_organisation(args.specs)
    unlocked: list[str] = []
    if org is not None:
        for bundle in org.bundles:
            if not bundle.lock_path.exists():
                unlocked.append(bundle.name)
            elif (problem := lock_problem(org, bundle)) is not None:
                text, _, fix = problem.partition("; ")
                problems.append(Problem(str(bundle.path), "bundle.dependencies", text, fix))
    if problems:
        for p in problems:
            out.result(p.to_json(), text=str(p))
        out.info(f"{len(problems)} problem(s); fix each line above, then run `dagseal validate` again")
        return 2
    assert org is not None
    for name in unlocked:
        out.warn(f"bundle {name} has no lock yet; run `dagseal lock --bundle {name}` before building")
    teams = sorted(org.org.teams)
    bundles = [b.name for b in org.bundles]
    out.result({"valid": True, "specs": str(org.root), "teams": teams, "bundles": bundles, "unlocked": unlocked},
               text=f"{org.root}: valid: {len(teams)} team(s) ({', '.join(teams)}), "
                    f"{len(bundles)} bundle(s) ({', '.join(bundles) or 'none'})")
    return 0


def codeowners(args: argparse.Namespace, out: Output) -> int:
    """Print or write (`--out F`) CODEOWNERS generated from org.toml."""
    from bundler.codeowners import render
    from bundler.lock import write_atomic

    org = load_organisation(args.specs)
    text = render(org)
    if args.out:
        write_atomic(Path(args.out), text.encode())
        out.result({"file": args.out, "teams": sorted(org.org.teams)}, text=f"wrote {args.out}")
    else:
        out.result({"codeowners": text}, text=text.rstrip("\n"))
    return 0


def schema(args: argparse.Namespace, out: Output) -> int:
    """Write the JSON Schema files into the specs folder, or with --check refuse stale ones (exit 2)."""
    from bundler import schema as schemas

    folder = Path(args.specs)
    if not folder.is_dir():
        raise BadInput(f"specs folder {folder} does not exist", hint="pass --specs DIR (the folder holding org.toml)")
    if args.check:
        stale = schemas.stale(folder)
        if stale:
            raise BadInput(f"JSON Schema file(s) out of date with the spec models: {', '.join(map(str, stale))}",
                           hint=f"run `dagseal schema --specs {folder}` and commit the result")
        out.result({"schemas": sorted(str(folder / n) for n in schemas.FILES), "up_to_date": True},
                   text=f"{folder}: schema files are up to date")
        return 0
    for path in schemas.write(folder):
        out.result({"schema": str(path)}, text=f"wrote {path}")
    return 0


def lock(args: argparse.Namespace, out: Output) -> int:
    """Lock the selected bundles (in parallel); print one result per bundle, in spec order."""
    from bundler.lock import lock_bundle

    org = load_organisation(args.specs)
    bundles = org.select(args.team, args.bundle)
    if not bundles:
        known = ", ".join(f"{b.team}/{b.name}" for b in org.bundles) or "none"
        raise BadInput(f"no bundle matches --team {args.team or '*'} --bundle {args.bundle or '*'} under {org.root}",
                       hint=f"known bundles (team/bundle): {known}")

    def one(bundle):
        try:
            return lock_bundle(org, bundle, find_links=args.find_links, offline=args.offline,
                               upgrade=getattr(args, "upgrade", False))
        except DagsealError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(4, len(bundles))) as pool:
        results = list(pool.map(one, bundles))
    errors = [r for r in results if isinstance(r, DagsealError)]
    for bundle, result in zip(bundles, results):
        if not isinstance(result, DagsealError):
            out.result({"team": bundle.team, "bundle": bundle.name, "lock": str(result.path), "digest": result.digest,
                        "inputs_digest": result.inputs_digest, "requirements": result.requirements},
                       text=f"{bundle.team}/{bundle.name}: wrote {result.path} ({len(result.requirements)} package(s))")
    if errors:
        first = errors[0]
        first.details.extend(e.message for e in errors[1:])
        raise first
    return 0
