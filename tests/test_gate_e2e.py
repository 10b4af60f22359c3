"""The whole chain with every area's real code: `dagseal build` (built_org), `dagseal copy`,
`dagseal keygen`, `dagseal sign --policy`, then `dagseal fetch` and `dagseal run` of the gate; the
same signature presented to team_b's runtime is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.airflow import BUNDLE_A, TEAM_A, TEAM_B

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_built_signed_bundle_runs_for_its_team_only(dagseal, built_org, tmp_path):
    from signing.sigbundle import key_id_from_pem

    built = next(r for r in built_org.results if r["bundle"] == BUNDLE_A)
    name = built["ref"].split(":", 2)[2]  # team_a/team_a_analytics:<version>
    store = tmp_path / "store"
    copied = dagseal("copy", built["ref"], f"oci:{store}:{name}", "--json")
    assert copied.code == 0, copied.stdout + copied.stderr

    assert dagseal("keygen", "--out", tmp_path / "ci", "--json").code == 0
    pem = (tmp_path / "ci.pub").read_text()
    signer = {"kind": "key", "key_id": key_id_from_pem(pem.encode()), "public_key_pem": pem}
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": 1, "org": "acme", "teams": {
        TEAM_A: {"signers": [signer], "bundles": [BUNDLE_A]},
        TEAM_B: {"signers": [signer], "bundles": ["team_b_reports"]}}}))
    ref = f"oci:{store}:{name}"
    signed = dagseal("sign", ref, "--key", tmp_path / "ci.key", "--policy", policy, "--json")
    assert signed.code == 0, signed.stdout + signed.stderr

    state = tmp_path / "state"
    fetched = dagseal("fetch", ref, "--team", TEAM_A, "--policy", policy, "--state-dir", state,
                      "--dest", tmp_path / "bundle", "--json")
    assert fetched.code == 0, fetched.stdout + fetched.stderr
    decision = fetched.json_lines[0]
    assert (decision["digest"], decision["team"], decision["bundle"]) == (built["digest"], TEAM_A, BUNDLE_A)
    tree = tmp_path / "bundle"
    assert sorted(p.name for p in tree.iterdir()) == ["bundle.json", "dags", "site-packages"]
    assert any(p.suffix == ".py" for p in (tree / "dags").rglob("*"))

    # team_b's runtime trusts the same key, but the statement names team_a
    other = dagseal("verify", ref, "--team", TEAM_B, "--policy", policy, "--state-dir", state, "--json")
    assert other.code == 3 and other.json_lines[0]["check"] == "team"

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    show = ("import os, sys; p = os.environ['DAGSEAL_BUNDLE_TEAM_A_ANALYTICS_PATH']; "
            "print(any(f.endswith('.py') for f in os.listdir(p)), sys.path[1] == os.environ['PYTHONPATH'].split(os.pathsep)[0])")
    proc = subprocess.run([sys.executable, "-m", "bundler.cli", "run", "--team", TEAM_A, "--policy", str(policy),
                           "--state-dir", str(state), "--bundle", ref, "--", sys.executable, "-c", show],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "True True"
