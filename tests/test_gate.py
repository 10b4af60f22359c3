"""`dagseal run` / `fetch` / `verify` end to end: exec with the bundle environment, never exec after
a refusal, a real loopback registry (tag resolved once, referrers via the tag-schema fallback),
the offline grace period, and a warm start that imports no sigstore/oras/boto3/requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


from registry.open import open_store
from tests.fixtures.airflow import (
    BUNDLE_A,
    TEAM_A,
    TEAM_B,
    make_image,
    oci_ref,
    policy_doc,
    sign_image,
)

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SHOW_ENV = ("import json, os, helperlib; print(json.dumps({'dags': os.environ['DAGSEAL_BUNDLE_TEAM_A_ANALYTICS_PATH'], "
            "'team': os.environ['DAGSEAL_TEAM'], 'helper': helperlib.VALUE, 'pythonpath': os.environ['PYTHONPATH']}))")


def run_cli(*argv, env: dict | None = None, importtime: bool = False) -> subprocess.CompletedProcess:
    cmd = [PY, *(["-X", "importtime"] if importtime else []), "-m", "bundler.cli", *map(str, argv)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


def _signed(gate_layout, keys, version="2026.11.1"):
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, version)
    sign_image(image, keys)
    return image


def test_run_exports_bundle_paths_and_execs(gate_layout, gate_keys, gate_policy, tmp_path):
    image = _signed(gate_layout, gate_keys)
    proc = run_cli("run", "--team", TEAM_A, "--policy", gate_policy, "--state-dir", tmp_path / "state",
                   "--bundle", oci_ref(image), "--", PY, "-c", SHOW_ENV, env={"PYTHONPATH": "/already/there"})
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout.splitlines()[-1])
    entry = tmp_path / "state" / "cache" / image.digest.split(":")[1] / "tree"
    assert shown == {"dags": str(entry / "dags"), "team": TEAM_A, "helper": 42,
                     "pythonpath": f"{entry / 'site-packages'}{os.pathsep}/already/there"}
    assert "accepted" in proc.stdout and image.digest in proc.stdout


def test_run_never_execs_after_a_refusal(gate_layout, gate_keys, gate_policy, tmp_path):
    good = _signed(gate_layout, gate_keys)
    unsigned = make_image(gate_layout, TEAM_A, "team_a_other", "1.0")
    marker = tmp_path / "ran"
    proc = run_cli("run", "--team", TEAM_A, "--policy", gate_policy, "--state-dir", tmp_path / "state", "--json",
                   "--bundle", oci_ref(good), "--bundle", oci_ref(unsigned), "--", "touch", marker)
    assert proc.returncode == 3, proc.stderr
    decision = json.loads(proc.stdout.splitlines()[-1])
    assert decision["decision"] == "refused" and decision["check"] == "signature"
    assert decision["ref"] == oci_ref(unsigned)
    assert not marker.exists()


def test_run_needs_a_command(dagseal, gate_layout, gate_keys, gate_policy, tmp_path):
    image = _signed(gate_layout, gate_keys)
    result = dagseal("run", "--team", TEAM_A, "--policy", gate_policy, "--bundle", oci_ref(image), "--json")
    assert result.code == 2 and "needs a command" in result.json_lines[0]["message"]


def test_verify_is_a_dry_run(dagseal, gate_layout, gate_keys, gate_policy, tmp_path):
    new = _signed(gate_layout, gate_keys, "2026.11.2")
    old = _signed(gate_layout, gate_keys, "2026.11.1")
    state = tmp_path / "state"
    for image in (new, old):  # verify records nothing, so the older one is not a rollback here
        result = dagseal("verify", oci_ref(image), "--team", TEAM_A, "--policy", gate_policy, "--state-dir", state,
                         "--json")
        assert result.code == 0 and result.json_lines[0]["decision"] == "accepted"
    assert not (state / "accepted").exists()
    result = dagseal("verify", oci_ref(new), "--team", TEAM_B, "--policy", gate_policy, "--state-dir", state, "--json")
    d = result.json_lines[0]
    assert result.code == 3
    assert {k: d[k] for k in ("decision", "check", "team", "bundle", "digest")} == \
        {"decision": "refused", "check": "signer", "team": TEAM_B, "bundle": BUNDLE_A, "digest": new.digest}


def test_warm_start_imports_no_heavy_modules(gate_layout, gate_keys, gate_policy, tmp_path):
    image = _signed(gate_layout, gate_keys)
    state = tmp_path / "state"
    args = ["run", "--team", TEAM_A, "--policy", gate_policy, "--state-dir", state, "--bundle"]
    cold = run_cli(*args, oci_ref(image, pinned=True), "--", "true")
    assert cold.returncode == 0, cold.stderr
    for ref in (oci_ref(image, pinned=True), oci_ref(image)):
        warm = run_cli(*args, ref, "--", "true", importtime=True)
        assert warm.returncode == 0, warm.stderr
        imported = {line.split("|")[-1].strip().split(".")[0] for line in warm.stderr.splitlines() if "|" in line}
        assert "signing" in imported and "cryptography" in imported  # it did verify
        assert not imported & {"sigstore", "oras", "boto3", "botocore", "requests", "rich", "pydantic"}, imported


# -- a real registry --------------------------------------------------------------------------------

def _remote_image(server, keys, version="2026.11.1"):
    store = open_store(server.ref(f"{TEAM_A}/{BUNDLE_A}"))
    image = make_image(store, TEAM_A, BUNDLE_A, version)
    sign_image(image, keys)
    return image, f"{server.host}/{TEAM_A}/{BUNDLE_A}:{version}"


def test_fetch_from_registry_and_moved_tag(dagseal, registry_server, gate_keys, gate_policy, tmp_path):
    image, ref = _remote_image(registry_server, gate_keys, "2026.12.1")
    state = tmp_path / "state"
    args = ["--team", TEAM_A, "--policy", gate_policy, "--state-dir", state, "--json"]
    result = dagseal("fetch", ref, *args, "--dest", tmp_path / "d1")
    assert result.code == 0, result.stdout + result.stderr
    assert result.json_lines[0]["digest"] == image.digest
    assert (tmp_path / "d1" / "dags" / f"{BUNDLE_A}_dag.py").is_file()
    # the tag is moved to an unsigned image on the registry: the next start resolves it again
    moved = make_image(image.store, TEAM_A, BUNDLE_A, "2026.12.1", dags={"x.py": b"# moved\n"})
    result = dagseal("fetch", ref, *args, "--dest", tmp_path / "d2")
    assert result.code == 3 and result.json_lines[0]["check"] == "signature"
    assert result.json_lines[0]["digest"] == moved.digest


def test_offline_grace(dagseal, registry_factory, gate_keys, tmp_path):
    server = registry_factory()
    image, ref = _remote_image(server, gate_keys)
    graced, strict = tmp_path / "graced.json", tmp_path / "strict.json"
    graced.write_text(json.dumps(policy_doc(gate_keys, offline_grace_seconds=3600)))
    strict.write_text(json.dumps(policy_doc(gate_keys)))
    state = tmp_path / "state"
    assert dagseal("fetch", ref, "--team", TEAM_A, "--policy", graced, "--state-dir", state,
                   "--dest", tmp_path / "d1").code == 0
    server.stop()
    result = dagseal("fetch", ref, "--team", TEAM_A, "--policy", strict, "--state-dir", state,
                     "--dest", tmp_path / "d2", "--json")
    assert result.code == 4 and "allows no offline start" in result.json_lines[0]["message"]
    assert not os.path.lexists(tmp_path / "d2")
    result = dagseal("fetch", ref, "--team", TEAM_A, "--policy", graced, "--state-dir", state,
                     "--dest", tmp_path / "d3")
    assert result.code == 0, result.stderr
    assert "OFFLINE" in result.stdout and "offline grace 3600s" in result.stderr
    assert (tmp_path / "d3" / "dags" / f"{BUNDLE_A}_dag.py").is_file()
    # beyond the grace period: the last online verification is too old
    record_path = state / "accepted" / TEAM_A / f"{BUNDLE_A}.json"
    record = json.loads(record_path.read_text())
    record["refs"][ref]["verified_at"] -= 7200
    record_path.write_text(json.dumps(record))
    result = dagseal("fetch", ref, "--team", TEAM_A, "--policy", graced, "--state-dir", state,
                     "--dest", tmp_path / "d5", "--json")
    assert result.code == 4 and "beyond the policy's offline grace of 3600s" in result.json_lines[0]["message"]
    never = ref.replace("2026.11.1", "2026.11.5")
    result = dagseal("fetch", never, "--team", TEAM_A, "--policy", graced, "--state-dir", state,
                     "--dest", tmp_path / "d4", "--json")
    assert result.code == 4 and "never verified online" in result.json_lines[0]["message"]


# -- keyless (a private Sigstore instance on loopback, pinned trusted root in the policy) ----------

def test_keyless_signed_bundle_with_pinned_trust_root(dagseal, gate_layout, gate_keys, sigstore_instance, trust_config,
                                                      other_sigstore_instance, tmp_path):
    from tests.fixtures.sigstore import KEYLESS_ISSUER, TEAM_A_IDENTITY, TEAM_B_IDENTITY

    doc = policy_doc(gate_keys)
    doc["teams"][TEAM_A]["signers"] = [{"kind": "keyless", "issuer": KEYLESS_ISSUER, "identity": TEAM_A_IDENTITY}]
    doc["trusted_root"] = sigstore_instance.trusted_root()
    policy = tmp_path / "keyless.json"
    policy.write_text(json.dumps(doc))
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1")
    signed = dagseal("sign", oci_ref(image), "--keyless", "--identity-token", sigstore_instance.mint_token(TEAM_A_IDENTITY),
                     "--trust-config", trust_config, "--policy", policy, "--json")
    assert signed.code == 0, signed.stdout + signed.stderr
    state = tmp_path / "state"
    result = dagseal("fetch", oci_ref(image), "--team", TEAM_A, "--policy", policy, "--state-dir", state,
                     "--dest", tmp_path / "d", "--json")
    assert result.code == 0, result.stdout + result.stderr
    assert result.json_lines[0]["signer"] == TEAM_A_IDENTITY

    # the same bundle is refused when the identity is not team_a's, or the root is another instance's
    doc["teams"][TEAM_A]["signers"] = [{"kind": "keyless", "issuer": KEYLESS_ISSUER, "identity": TEAM_B_IDENTITY}]
    policy.write_text(json.dumps(doc))
    result = dagseal("verify", oci_ref(image, pinned=True), "--team", TEAM_A, "--policy", policy, "--state-dir", state,
                     "--json")
    assert result.code == 3 and result.json_lines[0]["check"] == "signature"
    doc["teams"][TEAM_A]["signers"] = [{"kind": "keyless", "issuer": KEYLESS_ISSUER, "identity": TEAM_A_IDENTITY}]
    doc["trusted_root"] = other_sigstore_instance.trusted_root()
    policy.write_text(json.dumps(doc))
    result = dagseal("verify", oci_ref(image, pinned=True), "--team", TEAM_A, "--policy", policy, "--state-dir", state,
                     "--json")
    assert result.code == 3 and result.json_lines[0]["check"] == "signature"


def test_fetch_from_s3_after_copy_with_referrers(dagseal, gate_layout, gate_keys, gate_policy, s3_bucket, tmp_path):
    """The verifier works against any Store: the signed image copied (with its signature) to S3."""
    image = _signed(gate_layout, gate_keys)
    dst = f"s3://{s3_bucket}/org:{image.repository}:{image.tag}"
    copied = dagseal("copy", oci_ref(image), dst, "--json")
    assert copied.code == 0, copied.stdout + copied.stderr
    result = dagseal("fetch", dst, "--team", TEAM_A, "--policy", gate_policy, "--state-dir", tmp_path / "state",
                     "--dest", tmp_path / "d", "--json")
    assert result.code == 0, result.stdout + result.stderr
    assert result.json_lines[0]["digest"] == image.digest
    unsigned = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.3")
    dst2 = f"s3://{s3_bucket}/org:{unsigned.repository}:{unsigned.tag}"
    assert dagseal("copy", oci_ref(unsigned), dst2).code == 0
    result = dagseal("fetch", dst2, "--team", TEAM_A, "--policy", gate_policy, "--state-dir", tmp_path / "state",
                     "--dest", tmp_path / "d2", "--json")
    assert result.code == 3 and result.json_lines[0]["check"] == "signature"


def test_run_of_a_missing_command_is_bad_input(dagseal, gate_layout, gate_keys, gate_policy, tmp_path):
    image = _signed(gate_layout, gate_keys)
    result = dagseal("run", "--team", TEAM_A, "--policy", gate_policy, "--state-dir", tmp_path / "s", "--json",
                     "--bundle", oci_ref(image), "--", "dagseal-no-such-command-xyz")
    assert result.code == 2 and "cannot run 'dagseal-no-such-command-xyz'" in result.json_lines[-1]["message"]
