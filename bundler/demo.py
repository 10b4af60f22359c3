"""`make demo`: the example organisation in `specs/`, end to end, on the embedded store.

Runs the real `dagseal` command line, printing each command before its output, the way a platform
engineer would type them:

1. validate the specs and build every bundle into `.dagseal/store` (the org's embedded store);
2. make a signing key per team (the committed `specs/keys/*.pub` have no private half, so the demo
   works on a copy of the specs whose key files are the freshly generated public keys) and export
   the runtime trust policy from that copy;
3. sign each team's image with its team's key (the pre-flight checks the signer against org.toml);
4. publish: copy each image with its signature into `.dagseal/registry`, a second layout standing
   in for the organisation's registry;
5. verify as team_a's runtime: team_a's bundle is accepted, team_b's bundle is refused (made for
   another team), and an unsigned build of team_a's bundle is refused (no signature);
6. start a "component" with `dagseal run`, which verifies, materialises and execs it.

Everything lives under `.dagseal/` and is recreated on each run (the build cache is kept).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".dagseal"
DEMO = WORK / "demo"
STORE = "oci:.dagseal/store"
PUBLISHED = "oci:.dagseal/registry"
console = Console(highlight=False)


def dagseal(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    """Run one dagseal command as a user would, show it and its output, check its exit code."""
    exe = Path(sys.executable).with_name("dagseal")
    console.print(f"\n[bold cyan]$ dagseal {shlex.join(args)}[/]")
    proc = subprocess.run([str(exe), *args], cwd=ROOT, text=True, capture_output=True)
    for stream in (proc.stdout, proc.stderr):
        if stream.strip():
            console.print(stream.rstrip(), markup=False, highlight=False, soft_wrap=True)
    if proc.returncode != expect:
        console.print(f"[bold red]expected exit {expect}, got {proc.returncode}[/]")
        sys.exit(1)
    console.print(f"[dim]exit {proc.returncode}[/]")
    return proc


def json_lines(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip().startswith("{")]


def fresh() -> None:
    for name in ("store", "registry", "demo", "home"):
        shutil.rmtree(WORK / name, ignore_errors=True)
    DEMO.mkdir(parents=True)


def demo_specs() -> Path:
    """A copy of specs/ whose team key files are the demo's own generated public keys."""
    specs = DEMO / "specs"
    (DEMO / "keys").mkdir()
    shutil.copytree(ROOT / "specs", specs)
    for team in ("team_a", "team_b"):
        dagseal("keygen", "--out", str(DEMO / "keys" / team))
        shutil.copy(DEMO / "keys" / f"{team}.pub", specs / "keys" / f"{team}.pub")
    return specs


def main() -> int:
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")
    os.environ["DAGSEAL_HOME"] = str(WORK / "home")
    fresh()
    console.rule("[bold]1. validate and build the example organisation")
    dagseal("validate", "--specs", "specs")
    built = {r["team"]: r for r in json_lines(dagseal("build", "--specs", "specs", "--json"))}

    console.rule("[bold]2. signing keys and the runtime trust policy")
    specs = demo_specs()
    policy = DEMO / "policy.json"
    dagseal("policy", "export", "--specs", str(specs), "--format", "json", "--out", str(policy))

    console.rule("[bold]3. CI signs each image for its team")
    for team, result in built.items():
        dagseal("sign", result["ref"], "--key", str(DEMO / "keys" / f"{team}.key"), "--specs", str(specs))

    console.rule("[bold]4. publish, with signatures, to the organisation's registry")
    published = {}
    for team, result in built.items():
        repo_tag = result["ref"].split(":", 2)[2]
        published[team] = f"{PUBLISHED}:{repo_tag}"
        dagseal("push", result["ref"], published[team])

    console.rule("[bold]5. team_a's runtime verifies what it is given")
    decisions = []
    ok = json_lines(dagseal("verify", published["team_a"], "--team", "team_a", "--policy", str(policy), "--json"))
    decisions.append(("team_a's bundle", ok[-1]))
    other = json_lines(dagseal("verify", published["team_b"], "--team", "team_a", "--policy", str(policy), "--json", expect=3))
    decisions.append(("team_b's bundle", other[-1]))
    unsigned = unsigned_build(specs)
    refused = json_lines(dagseal("verify", unsigned, "--team", "team_a", "--policy", str(policy), "--json", expect=3))
    decisions.append(("unsigned team_a build", refused[-1]))

    console.rule("[bold]6. a team_a component starts only on verified code")
    dagseal("run", "--team", "team_a", "--policy", str(policy), "--bundle", published["team_a"], "--",
            sys.executable, "-c",
            "import os; p = os.environ['DAGSEAL_BUNDLE_TEAM_A_ANALYTICS_PATH']; "
            "print('verified DAGs in', p); print(sorted(os.listdir(p)))")
    summary(decisions)
    return 0


def unsigned_build(specs: Path) -> str:
    """Build team_a's bundle again with a bumped version and never sign it."""
    spec = specs / "teams" / "team_a" / "team_a_analytics.toml"
    spec.write_text(spec.read_text().replace('version = "2026.11.1"', 'version = "2026.11.2"'))
    dagseal("lock", "--specs", str(specs), "--team", "team_a", "--offline")
    result = json_lines(dagseal("build", "--specs", str(specs), "--team", "team_a", "--to", PUBLISHED, "--json"))
    return result[-1]["ref"]


def summary(decisions: list[tuple[str, dict]]) -> None:
    table = Table(title="team_a runtime decisions")
    for col in ("bundle", "decision", "check", "reason"):
        table.add_column(col)
    for name, d in decisions:
        decision = d.get("decision") or ("refused" if d.get("exit_code") == 3 else "?")
        colour = "green" if decision == "accepted" else "red"
        table.add_row(name, f"[{colour}]{decision}[/]", str(d.get("check") or "-"),
                      str(d.get("reason") or d.get("message") or d.get("signer") or ""))
    console.print()
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
