"""`make demo` keeps working: the demo runs end to end and shows the three decisions of DESIGN.md.

It builds the example organisation of specs/ (real wheels from the committed locks, through uv's
cache), signs, publishes and verifies; team_a's bundle is accepted, team_b's and an unsigned one
are refused with their checks. Runs in a copy of the repository so the developer's .dagseal/ is
left alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.xdist_group("demo")
def test_demo_accepts_team_a_and_refuses_team_b_and_unsigned(tmp_path):
    copy = tmp_path / "repo"
    for folder in ("bundler", "registry", "signing", "specs"):  # what the demo reads; nothing else
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "bundler.demo"], cwd=copy, env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "team_a's bundle" in out and "accepted" in out
    assert '"decision": "refused"' in out
    assert '"check": "signer"' in out, "team_b's bundle is refused for team_a: its signer is team_b's"
    assert '"check": "signature"' in out, "the unsigned build is refused: no signature"
    assert "verified DAGs in" in out and "daily_events.py" in out, "dagseal run exec'd the component"
