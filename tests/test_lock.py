"""`dagseal lock` with real uv against the offline wheelhouse: hashed, deterministic, atomic locks;
`read_lock` refuses missing, stale and tampered locks naming bundle, lock and fix (exit 2)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.lock import INPUTS_PREFIX, PYTHON_PLATFORMS, inputs_digest, lock_bundle, read_lock, uv_bin
from registry.errors import BadInput
from tests.fixtures.wheelhouse import build_wheel, default_bundles

REPO = Path(__file__).resolve().parents[1]


def _lock_cli(dagseal, fx, *extra):
    return dagseal("lock", "--specs", fx.specs, "--find-links", fx.wheelhouse, "--offline", "--json", *extra)


def _bundle(org, name):
    [bundle] = org.select(bundle=name)
    return bundle


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_lock_pins_every_package_with_the_wheel_hashes(test_org):
    org = test_org.org
    bundle = _bundle(org, "team_a_analytics")
    lock = read_lock(org, bundle)
    assert lock.requirements == ["tinyclock==1.1.0", "tinyfmt==0.3.0"]
    assert lock.path == bundle.lock_path and lock.digest == _sha256(bundle.lock_path)
    assert lock.inputs_digest == inputs_digest(org, bundle)
    text = bundle.lock_path.read_text()
    assert [line for line in text.splitlines() if line.startswith(INPUTS_PREFIX)] == [INPUTS_PREFIX + lock.inputs_digest]
    for wheel in ("tinyclock-1.1.0-py3-none-any.whl", "tinyfmt-0.3.0-py3-none-any.whl"):
        assert f"--hash={_sha256(test_org.wheelhouse / wheel)}" in text
    assert "tinyclock-1.0.0" not in text and _sha256(test_org.wheelhouse / "tinyclock-1.0.0-py3-none-any.whl") not in text


def test_lock_cli_is_deterministic_and_reports_each_bundle(dagseal, test_org):
    before = {b.name: b.lock_path.read_bytes() for b in test_org.org.bundles}
    for b in test_org.org.bundles:
        b.lock_path.unlink()
    result = _lock_cli(dagseal, test_org)
    assert result.code == 0, result.stderr
    assert [(r["team"], r["bundle"], r["requirements"]) for r in result.json_lines] == [
        ("team_a", "team_a_analytics", ["tinyclock==1.1.0", "tinyfmt==0.3.0"]),
        ("team_b", "team_b_reports", ["tinyjson==2.0.0"])]
    after = {b.name: b.lock_path.read_bytes() for b in test_org.org.bundles}
    assert after == before
    assert [r["digest"] for r in result.json_lines] == [_sha256(b.lock_path) for b in test_org.org.bundles]


def test_lock_selects_by_team_and_refuses_an_unknown_bundle(dagseal, test_org):
    result = _lock_cli(dagseal, test_org, "--team", "team_b")
    assert result.code == 0 and [r["bundle"] for r in result.json_lines] == ["team_b_reports"]
    result = dagseal("lock", "--specs", test_org.specs, "--bundle", "nope")
    assert result.code == 2
    assert "no bundle matches --team * --bundle nope" in result.stderr and "team_a/team_a_analytics" in result.stderr


def test_changed_dependencies_make_the_lock_stale(dagseal, test_org):
    spec = test_org.specs / "teams/team_a/team_a_analytics.toml"
    spec.write_text(spec.read_text().replace('"tinyfmt>=0.3"', '"tinyfmt>=0.3", "tinyjson"'))
    org = test_org.reload()
    bundle = _bundle(org, "team_a_analytics")
    with pytest.raises(BadInput) as exc:
        read_lock(org, bundle)
    err = exc.value
    assert err.exit_code == 2
    assert "team_a_analytics" in err.message and str(bundle.lock_path) in err.message and "no longer matches" in err.message
    assert f"dagseal lock --specs {test_org.specs} --team team_a --bundle team_a_analytics" in err.hint
    [problem] = dagseal("validate", "--specs", test_org.specs, "--json").json_lines
    assert problem["file"] == str(spec) and problem["field"] == "bundle.dependencies"
    assert "no longer matches" in problem["message"] and "dagseal lock" in problem["message"]
    assert _lock_cli(dagseal, test_org, "--bundle", "team_a_analytics").code == 0
    assert read_lock(org, bundle).requirements == ["tinyclock==1.1.0", "tinyfmt==0.3.0", "tinyjson==2.0.0"]


def test_changed_org_python_or_platforms_make_locks_stale(test_org):
    org_toml = test_org.specs / "org.toml"
    original = org_toml.read_text()
    for change in (('"3.12"', '"3.13"'), ('["linux/amd64"]', '["linux/amd64", "linux/arm64"]')):
        org_toml.write_text(original.replace(*change))
        org = test_org.reload()
        for bundle in org.bundles:
            with pytest.raises(BadInput, match="no longer matches"):
                read_lock(org, bundle)


def test_two_platforms_lock_merges_hashes(test_org):
    org_toml = test_org.specs / "org.toml"
    org_toml.write_text(org_toml.read_text().replace('["linux/amd64"]', '["linux/arm64", "linux/amd64"]'))
    org = test_org.reload()
    bundle = _bundle(org, "team_a_analytics")
    lock = lock_bundle(org, bundle, find_links=[str(test_org.wheelhouse)], offline=True)
    assert lock.requirements == ["tinyclock==1.1.0", "tinyfmt==0.3.0"]
    assert "platform_machine" not in lock.path.read_text()  # same pure wheels on both: no markers
    assert "platforms linux/amd64, linux/arm64" in lock.path.read_text()
    assert read_lock(org, bundle) == lock


def test_missing_and_tampered_locks_are_refused(test_org):
    org = test_org.org
    bundle = _bundle(org, "team_a_analytics")
    text = bundle.lock_path.read_text()
    bundle.lock_path.unlink()
    with pytest.raises(BadInput) as exc:
        read_lock(org, bundle)
    assert "has no lock" in exc.value.message and "--bundle team_a_analytics" in exc.value.hint
    unhashed = "\n".join(line for line in text.splitlines() if "tinyclock" not in line and "--hash" not in line) + "\n"
    bundle.lock_path.write_text(unhashed.replace("tinyfmt==0.3.0 \\", "tinyfmt==0.3.0"))
    with pytest.raises(BadInput, match="tinyfmt==0.3.0 has no --hash lines"):
        read_lock(org, bundle)
    bundle.lock_path.write_text(text + INPUTS_PREFIX + "sha256:" + "0" * 64 + "\n")
    with pytest.raises(BadInput, match="has 2 '# dagseal-lock-inputs:' lines"):
        read_lock(org, bundle)
    bundle.lock_path.write_text(text.replace("tinyfmt==0.3.0", "tinyfmt>=0.3.0"))
    with pytest.raises(BadInput, match="malformed"):
        read_lock(org, bundle)


def test_unresolvable_requirement_exits_2_with_uvs_message_and_keeps_the_old_lock(dagseal, test_org):
    spec = test_org.specs / "teams/team_b/team_b_reports.toml"
    old = (test_org.specs / "teams/team_b/team_b_reports.lock").read_bytes()
    spec.write_text(spec.read_text().replace('"tinyjson==2.0.0"', '"tinyjson>=3"'))
    result = dagseal("lock", "--specs", test_org.specs, "--bundle", "team_b_reports",
                     "--find-links", test_org.wheelhouse, "--offline")
    assert result.code == 2
    assert "uv cannot resolve the dependencies of bundle team_b_reports" in result.stderr
    assert str(spec) in result.stderr and "No solution found" in result.stderr
    assert "tinyjson" in result.stderr and "fix bundle.dependencies" in result.stderr
    assert (test_org.specs / "teams/team_b/team_b_reports.lock").read_bytes() == old
    assert sorted(p.name for p in spec.parent.iterdir()) == ["team_b_reports", "team_b_reports.lock", "team_b_reports.toml"]


def test_unknown_package_exits_2(dagseal, make_org):
    bundles = default_bundles()
    bundles[1]["dependencies"] = ["no-such-package-anywhere"]
    fx = make_org(bundles=bundles)
    result = dagseal("lock", "--specs", fx.specs, "--team", "team_b", "--find-links", fx.wheelhouse, "--offline", "--json")
    assert result.code == 2
    [err] = result.json_lines
    assert err["error"] == "BadInput" and "no-such-package-anywhere" in err["message"]


def test_bundle_without_dependencies_gets_a_header_only_lock(make_org):
    bundles = default_bundles()
    bundles[1]["dependencies"] = []
    fx = make_org(bundles=bundles)
    org = fx.reload()
    bundle = _bundle(org, "team_b_reports")
    lock = lock_bundle(org, bundle)  # no uv run, no network
    lines = bundle.lock_path.read_text().splitlines()
    assert lines and all(line.startswith("# ") for line in lines)
    assert lock.requirements == [] and read_lock(org, bundle) == lock


def test_example_locks_match_the_example_specs():
    from bundler.specs import load_organisation

    org = load_organisation(REPO / "specs")
    for bundle in org.bundles:
        lock = read_lock(org, bundle)
        assert lock.requirements, bundle.name
    names = {r.split("==")[0] for r in read_lock(org, _bundle(org, "team_a_analytics")).requirements}
    assert {"pendulum", "requests"} <= names


def _pin_tinyclock_1_0(fx):
    """Rewrite team_a's lock to the older tinyclock 1.0.0 (as if it had been locked before 1.1.0 existed)."""
    lock = fx.specs / "teams/team_a/team_a_analytics.lock"
    old_hash = _sha256(fx.wheelhouse / "tinyclock-1.1.0-py3-none-any.whl")
    new_hash = _sha256(fx.wheelhouse / "tinyclock-1.0.0-py3-none-any.whl")
    lock.write_text(lock.read_text().replace("tinyclock==1.1.0", "tinyclock==1.0.0").replace(old_hash, new_hash))


def test_relocking_keeps_current_pins_unless_upgrade(dagseal, test_org):
    _pin_tinyclock_1_0(test_org)
    spec = test_org.specs / "teams/team_a/team_a_analytics.toml"
    spec.write_text(spec.read_text().replace('"tinyfmt>=0.3"', '"tinyfmt>=0.3", "tinyjson"'))
    [result] = _lock_cli(dagseal, test_org, "--bundle", "team_a_analytics").json_lines
    assert result["requirements"] == ["tinyclock==1.0.0", "tinyfmt==0.3.0", "tinyjson==2.0.0"]
    [result] = _lock_cli(dagseal, test_org, "--bundle", "team_a_analytics", "--upgrade").json_lines
    assert result["requirements"] == ["tinyclock==1.1.0", "tinyfmt==0.3.0", "tinyjson==2.0.0"]


def test_a_garbled_lock_is_not_used_as_preferences(test_org):
    org = test_org.org
    bundle = _bundle(org, "team_a_analytics")
    bundle.lock_path.write_text("this is not a lock\n")
    lock = lock_bundle(org, bundle, find_links=[str(test_org.wheelhouse)], offline=True)
    assert lock.requirements == ["tinyclock==1.1.0", "tinyfmt==0.3.0"]


def test_a_dependency_string_never_becomes_a_uv_option(test_org):
    from bundler.specs import Bundle

    org = test_org.org
    bundle = _bundle(org, "team_b_reports")
    forged = Bundle(spec=bundle.spec.model_copy(update={"dependencies": ["tinyjson\n--index-url http://evil.test"]}),
                    path=bundle.path)  # model_copy skips validation, as a hand-built Bundle would
    before = bundle.lock_path.read_bytes()
    with pytest.raises(BadInput, match="is not a requirement"):
        lock_bundle(org, forged, find_links=[str(test_org.wheelhouse)], offline=True)
    assert bundle.lock_path.read_bytes() == before


def test_pins_that_differ_between_platforms_get_markers(test_org, tmp_path):
    house = tmp_path / "house"
    house.mkdir()
    build_wheel(house, "tinyplat", "1.0.0", [], "X = 1\n", platform_tag="manylinux_2_28_x86_64")
    build_wheel(house, "tinyplat", "0.9.0", [], "X = 0\n")
    spec = test_org.specs / "teams/team_b/team_b_reports.toml"
    spec.write_text(spec.read_text().replace('"tinyjson==2.0.0"', '"tinyplat"'))
    org_toml = test_org.specs / "org.toml"
    org_toml.write_text(org_toml.read_text().replace('["linux/amd64"]', '["linux/amd64", "linux/arm64"]'))
    org = test_org.reload()
    bundle = _bundle(org, "team_b_reports")
    lock = lock_bundle(org, bundle, find_links=[str(house)], offline=True)
    assert lock.requirements == ["tinyplat==0.9.0", "tinyplat==1.0.0"]
    text = lock.path.read_text()
    assert "tinyplat==0.9.0 ; platform_machine == 'aarch64' \\\n" in text
    assert "tinyplat==1.0.0 ; platform_machine == 'x86_64' \\\n" in text
    assert read_lock(org, bundle) == lock
    for platform, version in (("linux/amd64", "1.0.0"), ("linux/arm64", "0.9.0")):
        target = tmp_path / platform.replace("/", "-")
        subprocess.run([uv_bin(), "pip", "install", "--quiet", "--no-config", "--python", sys.executable,
                        "--target", str(target), "--python-version", "3.12", "--python-platform", PYTHON_PLATFORMS[platform],
                        "--require-hashes", "--only-binary", ":all:", "--no-index", "--find-links", str(house),
                        "--offline", "-r", str(lock.path)], check=True, capture_output=True)
        assert (target / f"tinyplat-{version}.dist-info").is_dir()
