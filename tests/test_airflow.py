"""Real apache-airflow 3.3 (in .venv-airflow, made by `make airflow-env`) loading
signing.airflow.OciDagBundle by classpath from dag_bundle_config_list, with multi-team on.

- The DAG processor (`airflow dag-processor -n 1 -B ...`) parses the DAGs of a verified team_a
  bundle, refuses a bundle signed for team_b that a team_a entry points at, refuses entries with no
  or a contradicting team, and never verifies bundles it was not asked to process (-B).
- A refused refresh (tag moved to an unsigned image) keeps the version accepted before.
- Workers (`DagBundlesManager().get_bundle(name, version)` then `initialize()`) get exactly the
  digest asked for, verified again; unsigned, other-signer, missing and malformed versions are
  refused.

Every test copies one migrated sqlite database made once per session (fixture airflow_template).
"""

from __future__ import annotations

import json
import sqlite3
import textwrap

import pytest

from registry.digest import hex_of, sha256_digest
from tests.fixtures.airflow import (
    BUNDLE_A,
    BUNDLE_B,
    TEAM_A,
    TEAM_B,
    bundle_entry,
    make_image,
    oci_ref,
    sign_image,
)

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.xdist_group("airflow")]


# Each (name, version) is looked up the way a task worker does it (task_runner.parse).
WORKER = textwrap.dedent('''
    import json, sys
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    out = []
    for name, version in json.loads(sys.argv[1]):
        try:
            bundle = DagBundlesManager().get_bundle(name, version=version)
        except Exception as exc:
            out.append({"refused": getattr(exc, "check", type(exc).__name__), "error": str(exc), "at": "get_bundle"})
            continue
        try:
            bundle.initialize()
            current = bundle.get_current_version()
            out.append({"path": str(bundle.path), "version": current.version, "data": current.data,
                        "files": sorted(p.name for p in bundle.path.iterdir())})
        except Exception as exc:
            out.append({"refused": getattr(exc, "check", type(exc).__name__), "error": str(exc),
                        "at": "initialize", "exists": bundle.path.exists()})
    print(json.dumps(out))
''')

# The DAG processor's refresh after the tag moved to an unsigned image.
REFRESH = textwrap.dedent('''
    import json, sys
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from registry.layout import LayoutStore
    name, root, repo, tag = sys.argv[1:5]
    bundle = DagBundlesManager().get_bundle(name)
    bundle.initialize()
    before = [bundle.get_current_version().version, str(bundle.path)]
    store = LayoutStore(root)
    store.put_manifest(repo, store.get(repo, "moved"), tag=tag)  # the tag moves to an unsigned image
    try:
        bundle.refresh()
        check = None
    except Exception as exc:
        check = getattr(exc, "check", type(exc).__name__)
    print(json.dumps({"before": before, "after": [bundle.get_current_version().version, str(bundle.path)],
                      "check": check}))
''')


def _dagseal_lines(log: str, needle: str) -> list[str]:
    return [line for line in log.splitlines() if "dagseal" in line and needle in line]


def test_dag_processor_parses_verified_bundle_and_refuses_the_rest(airflow_home, gate_layout, gate_keys,
                                                                   gate_policy, tmp_path):
    team_a = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(team_a, gate_keys)
    team_b = make_image(gate_layout, TEAM_B, BUNDLE_B, "2026.11.1")
    sign_image(team_b, gate_keys, "team_b")
    make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.2", dags={"u.py": b"# unsigned\n"}, tag="moved")
    config = [
        bundle_entry(BUNDLE_A, oci_ref(team_a), gate_policy, TEAM_A),
        bundle_entry("smuggled", oci_ref(team_b), gate_policy, TEAM_A),
        bundle_entry("no_team", oci_ref(team_a), gate_policy, None),
        bundle_entry("contradicts", oci_ref(team_a), gate_policy, TEAM_A, team=TEAM_B),
        # not selected with -B: must never be fetched (its store does not even exist)
        bundle_entry("unselected", f"oci:{tmp_path}/nowhere:team_b/{BUNDLE_B}:1", gate_policy, TEAM_B),
    ]
    proc = airflow_home.airflow(config, "dag-processor", "-n", "1", "-B", BUNDLE_A, "-B", "smuggled")
    log = proc.stdout + proc.stderr

    with sqlite3.connect(airflow_home.home / "airflow.db") as db:
        dags = db.execute("select dag_id, bundle_name from dag").fetchall()
        bundles = dict(db.execute("select name, version from dag_bundle").fetchall())
        owners = set(db.execute("select dag_bundle_name, team_name from dag_bundle_team").fetchall())
        version_data = db.execute("select bundle_version, version_data from dag_version").fetchall()
    assert dags == [(f"{BUNDLE_A}_dag", BUNDLE_A)], log[-4000:]
    assert bundles[BUNDLE_A] == team_a.digest  # versioning by manifest digest
    assert (BUNDLE_A, TEAM_A) in owners
    assert [v for v, _ in version_data] == [team_a.digest]
    assert '"bundle_version": "2026.11.1"' in version_data[0][1] and '"team": "team_a"' in version_data[0][1]
    assert bundles.get("smuggled") is None and "no_team" not in bundles and "contradicts" not in bundles

    assert _dagseal_lines(log, "REFUSED bundle smuggled") and "[signer]" in log and "listed for team_b" in log
    no_team = "\n".join(_dagseal_lines(log, "REFUSED bundle no_team"))
    assert "[team]" in no_team and "has no team_name" in log and 'add "team_name": "<team>" to the entry of no_team' in log
    assert _dagseal_lines(log, "REFUSED bundle contradicts")
    assert "kwargs team 'team_b' contradicts the entry's team_name 'team_a'" in log
    assert 'remove "team" from the kwargs of contradicts' in log
    assert not _dagseal_lines(log, "bundle unselected"), "a bundle outside -B was verified"
    assert not _dagseal_lines(log, f"bundle {BUNDLE_B}")

    # the DAG processor refreshes after the tag moved to an unsigned image: refused, and the
    # version accepted before keeps being served
    seen, out = airflow_home.script(config, REFRESH, BUNDLE_A, str(gate_layout.root), team_a.repository, team_a.tag)
    assert seen["check"] == "signature"
    assert seen["after"] == seen["before"] and seen["before"][0] == team_a.digest
    assert _dagseal_lines(out, f"REFUSED bundle {BUNDLE_A}")


def test_worker_gets_exactly_the_version_it_asks_for(airflow_home, gate_layout, gate_keys, gate_policy):
    v1 = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1", dags={"v1.py": b"# one\n"})
    sign_image(v1, gate_keys)
    v2 = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.2", dags={"v2.py": b"# two\n"})
    sign_image(v2, gate_keys)
    unsigned = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.3", dags={"u.py": b"#\n"}, tag="unsigned")
    other = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.4", dags={"o.py": b"#\n"}, tag="other")
    sign_image(other, gate_keys, "team_b")  # a real signature, by a key the policy gives to team_b only
    missing = sha256_digest(b"no such manifest")
    config = [bundle_entry(BUNDLE_A, oci_ref(v2), gate_policy, TEAM_A),
              bundle_entry("strict", oci_ref(v2), gate_policy, TEAM_A, allow_versioned_downgrade=False)]
    asks = [[BUNDLE_A, None], ["strict", v1.digest], [BUNDLE_A, v1.digest], [BUNDLE_A, v2.digest],
            [BUNDLE_A, unsigned.digest], [BUNDLE_A, other.digest], [BUNDLE_A, missing],
            [BUNDLE_A, "2026.11.1"], [BUNDLE_A, "sha256:../../../etc"]]
    seen, log = airflow_home.script(config, WORKER, json.dumps(asks))
    tag, strict, pin1, pin2, unsigned_, other_, missing_, semver, traversal = seen

    assert tag["version"] == v2.digest and tag["files"] == ["v2.py"]
    assert tag["data"]["bundle_version"] == "2026.11.2" and tag["data"]["team"] == TEAM_A
    # an older pinned digest: refused where downgrades are off, else exactly that digest's tree
    assert strict["refused"] == "rollback" and strict["exists"] is False
    assert pin1["version"] == v1.digest and pin1["files"] == ["v1.py"]
    assert pin1["path"].endswith(f"/{hex_of(v1.digest)}/tree/dags")
    assert pin2["version"] == v2.digest and pin2["files"] == ["v2.py"]
    assert unsigned_ == {"refused": "signature", "error": unsigned_["error"], "at": "initialize", "exists": False}
    assert other_["refused"] == "signer" and other_["exists"] is False
    assert missing_["refused"] == "NotFound" and missing_["exists"] is False
    for bad, text in ((semver, "'2026.11.1'"), (traversal, "'sha256:../../../etc'")):
        assert bad["refused"] == "BadInput" and bad["exists"] is False
        assert f"bundle {BUNDLE_A}: version {text} is not a manifest digest" in bad["error"]
        assert "fix: OciDagBundle versions are the digests Airflow recorded" in bad["error"]
    assert _dagseal_lines(log, f"REFUSED bundle {BUNDLE_A} (oci:")


def test_team_refusals_reach_the_worker_and_single_team_mode(airflow_home, gate_layout, gate_keys, gate_policy):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    sign_image(image, gate_keys)
    ref = oci_ref(image)
    multi = [bundle_entry("no_team", ref, gate_policy, None),
             bundle_entry("contradicts", ref, gate_policy, TEAM_A, team=TEAM_B),
             bundle_entry("agrees", ref, gate_policy, TEAM_A, team=TEAM_A)]
    seen, _log = airflow_home.script(multi, WORKER, '[["no_team", null], ["contradicts", null], ["agrees", null]]')
    no_team, contradicts, agrees = seen
    assert no_team["refused"] == "team" and no_team["at"] == "get_bundle"
    assert "bundle no_team: its dag_bundle_config_list entry has no team_name" in no_team["error"]
    assert "fix: add \"team_name\"" in no_team["error"]
    assert contradicts["refused"] == "team" and contradicts["at"] == "get_bundle"
    assert "fix: remove \"team\" from the kwargs of contradicts" in contradicts["error"]
    assert agrees["version"] == image.digest

    # multi_team off: Airflow forbids team_name, so the team comes from kwargs, and is required
    single = [bundle_entry("no_team", ref, gate_policy, None),
              bundle_entry("kwarg_team", ref, gate_policy, None, team=TEAM_A)]
    seen, _log = airflow_home.script(single, WORKER, '[["no_team", null], ["kwarg_team", null]]',
                                     extra={"AIRFLOW__CORE__MULTI_TEAM": "False"})
    no_team, kwarg_team = seen
    assert no_team["refused"] == "team" and "[core] multi_team is off" in no_team["error"]
    assert 'fix: add "team": "<team>" to the kwargs of no_team' in no_team["error"]
    assert kwarg_team["version"] == image.digest and kwarg_team["data"]["team"] == TEAM_A
