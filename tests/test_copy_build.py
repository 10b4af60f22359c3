"""`dagseal build --to REGISTRY` / `--to s3://...`: the builder writes through the Store interface,
so building straight into a registry or a bucket gives the same digests as the embedded store."""

import subprocess
import json

from registry.remote import RemoteStore
from registry.s3 import S3Store
from tests.fixtures.build import copy_org, run_build
from tests.fixtures.tools import require_tool


def _build(specs, root, wheelhouse, to):
    code, results, err = run_build(specs, "--to", to, "--cache-dir", root / "cache", "--find-links", wheelhouse, "--offline")
    assert code == 0, err
    return {r["bundle"]: r for r in results}


def test_build_straight_into_a_registry_and_a_bucket(registry_server, s3_bucket, built_org, tmp_path):
    specs = copy_org(built_org.specs, tmp_path)
    expected = {r["bundle"]: r["digest"] for r in built_org.results}
    into_registry = _build(specs, tmp_path, built_org.wheelhouse, f"{registry_server.host}/airflow")
    assert {b: r["digest"] for b, r in into_registry.items()} == expected
    with RemoteStore(registry_server.host, plain_http=True) as remote:
        for bundle, result in into_registry.items():
            repo = f"airflow/{result['team']}/{bundle}"
            assert result["ref"].startswith(f"{registry_server.host}/{repo}:")
            tag = result["ref"].rsplit(":", 1)[1]
            assert remote.resolve(repo, tag).digest == expected[bundle]
            info = json.loads(subprocess.run([require_tool("skopeo"), "inspect", "--tls-verify=false",
                                              f"docker://{result['ref']}"], capture_output=True, text=True, check=True).stdout)
            assert info["Digest"] == expected[bundle]
    into_bucket = _build(specs, tmp_path, built_org.wheelhouse, f"s3://{s3_bucket}/store")
    assert {b: r["digest"] for b, r in into_bucket.items()} == expected
    bucket = S3Store(s3_bucket, "store")
    for bundle, result in into_bucket.items():
        tag = result["ref"].rsplit(":", 1)[1]
        assert bucket.resolve(f"{result['team']}/{bundle}", tag).digest == expected[bundle]
