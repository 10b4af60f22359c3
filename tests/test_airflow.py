"""Real apache-airflow 3.3 (in .venv-airflow, made by `make airflow-env`) loading
signing.airflow.OciDagBundle by classpath from dag_bundle_config_list, with multi-team on.

The DAG processor (`airflow dag-processor -n 1`) parses the DAGs of a verified team_a bundle and
refuses, with a clear log line and no DAGs, a bundle signed for team_b that a team_a entry points
at. A worker-style lookup of a specific version (a digest) verifies exactly that digest.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import textwrap

import pytest

from tests.fixtures.airflow import (
    BUNDLE_A,
    BUNDLE_B,
    TEAM_A,
    TEAM_B,
    airflow_env,
    make_image,
    oci_ref,
    sign_image,
)

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


REFRESH = textwrap.dedent('''
    import json, sys
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from registry.layout import LayoutStore
    name, root, repo, tag = sys.argv[1:5]
    bundle = DagBundlesManager().get_bundle(name)
    bundle.initialize()
    before = [bundle.get_current_version(), str(bundle.path)]
    store = LayoutStore(root)
    store.put_manifest(repo, store.get(repo, "moved"), tag=tag)  # the tag moves to an unsigned image
    try:
        bundle.refresh()
        check = None
    except Exception as exc:
        check = getattr(exc, "check", type(exc).__name__)
    print(json.dumps({"before": before, "after": [bundle.get_current_version(), str(bundle.path)], "check": check}))
''')


def _airflow(python, env, *args, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(python), "-m", "airflow", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"airflow {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


WORKER = textwrap.dedent('''
    import json, sys
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    out = {}
    for name, version in json.loads(sys.argv[1]):
        bundle = DagBundlesManager().get_bundle(name, version=version)
        try:
            bundle.initialize()
            out[version] = {"path": str(bundle.path), "version": bundle.get_current_version(),
                            "files": sorted(p.name for p in bundle.path.iterdir())}
        except Exception as exc:
            out[version] = {"refused": getattr(exc, "check", type(exc).__name__), "exists": bundle.path.exists()}
    print(json.dumps(out))
''')


def test_dag_processor_parses_verified_bundle_and_refuses_team_b(airflow_python, gate_layout, gate_keys, gate_policy,
                                                                tmp_path):
    team_a = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(team_a, gate_keys)
    team_b = make_image(gate_layout, TEAM_B, BUNDLE_B, "2026.11.1")
    sign_image(team_b, gate_keys, "team_b")
    unsigned = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.2", dags={"u.py": b"# unsigned\n"}, tag="moved")
    config = [
        {"name": BUNDLE_A, "classpath": "signing.airflow.OciDagBundle",
         "kwargs": {"ref": oci_ref(team_a), "policy": str(gate_policy)}, "team_name": TEAM_A},
        {"name": "smuggled", "classpath": "signing.airflow.OciDagBundle",
         "kwargs": {"ref": oci_ref(team_b), "policy": str(gate_policy)}, "team_name": TEAM_A},
    ]
    home = tmp_path / "airflow"
    home.mkdir()
    env = airflow_env(home, {"AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(config),
                             "DAGSEAL_HOME": str(tmp_path / "dagseal")})
    _airflow(airflow_python, env, "db", "migrate")
    _airflow(airflow_python, env, "teams", "create", TEAM_A)
    proc = _airflow(airflow_python, env, "dag-processor", "-n", "1")
    log = proc.stdout + proc.stderr

    with sqlite3.connect(home / "airflow.db") as db:
        dags = db.execute("select dag_id, bundle_name from dag").fetchall()
        bundles = dict(db.execute("select name, version from dag_bundle").fetchall())
    assert dags == [(f"{BUNDLE_A}_dag", BUNDLE_A)], log[-4000:]
    assert bundles[BUNDLE_A] == team_a.digest  # versioning by manifest digest
    assert bundles.get("smuggled") is None
    assert "dagseal REFUSED bundle smuggled" in log and "[signer]" in log and "listed for team_b" in log

    # a worker asks for specific versions: the accepted digest, and an unsigned one
    worker = subprocess.run([str(airflow_python), "-c", WORKER,
                             json.dumps([[BUNDLE_A, team_a.digest], [BUNDLE_A, unsigned.digest]])],
                            env=env, capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr[-3000:]
    seen = json.loads(worker.stdout.splitlines()[-1])
    assert seen[team_a.digest]["version"] == team_a.digest
    assert seen[team_a.digest]["files"] == [f"{BUNDLE_A}_dag.py"]
    assert seen[team_a.digest]["path"].endswith("/tree/dags")
    assert seen[unsigned.digest] == {"refused": "signature", "exists": False}

    # the DAG processor refreshes after the tag moved to an unsigned image: refused, and the
    # version accepted before keeps being served
    refresh = subprocess.run([str(airflow_python), "-c", REFRESH, BUNDLE_A, str(gate_layout.root), team_a.repository,
                              team_a.tag], env=env, capture_output=True, text=True, timeout=300)
    assert refresh.returncode == 0, refresh.stderr[-3000:]
    seen = json.loads(refresh.stdout.splitlines()[-1])
    assert seen["check"] == "signature"
    assert seen["after"] == seen["before"] and seen["before"][0] == team_a.digest
    assert "dagseal REFUSED bundle team_a_analytics" in refresh.stdout + refresh.stderr
