"""The org's trust policy bounds what one start may unpack (`limits`): `dagseal policy export
--max-bundle-size/--max-entries` sets them, a signed bundle beyond them is refused with check
tar-limits before anything is materialised, the same bundle passes under the default policy, and
hostile limit values or CLI sizes are bad input (exit 2) naming the field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from signing.safetar import TarLimits
from signing.signers.keyfile import load_private_key
from signing.trust import parse_policy
from tests.fixtures.airflow import BUNDLE_A, TEAM_A, Keys, make_image, oci_ref, sign_image

BIG_DAG = os.urandom(1 << 20)  # 1 MiB that does not compress: the bundle unpacks to a little over 1 MiB


def export(dagseal, signing_org, out: Path, *flags: str) -> Path:
    res = dagseal("policy", "export", "--specs", signing_org.specs, "--out", out, *flags)
    assert res.code == 0, res.stderr
    return out


@pytest.fixture
def big_image(signing_org, gate_layout):
    """A team_a bundle (about 1 MiB unpacked, a handful of entries) signed with the org's team_a key."""
    image = make_image(gate_layout, TEAM_A, BUNDLE_A, "2026.11.1", dags={"big_dag.py": BIG_DAG})
    sign_image(image, Keys({"team_a": load_private_key(signing_org.key("team_a"))}))
    return image


def start(dagseal, image, policy: Path, state: Path):
    return dagseal("fetch", oci_ref(image), "--team", TEAM_A, "--policy", policy, "--state-dir", state,
                   "--dest", state.parent / f"{state.name}-dags", "--json")


def materialised(state: Path) -> list[str]:
    """Everything in the cache but the per-digest lock files (entries and temp folders alike)."""
    cache = state / "cache"
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.exists() else []


def test_export_writes_the_limits_into_the_policy(dagseal, signing_org, tmp_path):
    policy = parse_policy(export(dagseal, signing_org, tmp_path / "p.json", "--max-bundle-size", "512MiB",
                                 "--max-entries", "20000").read_bytes())
    assert policy.limits is not None and policy.limits.model_dump() == {"max_bundle_bytes": 512 << 20,
                                                                        "max_entries": 20000}
    assert policy.tar_limits() == TarLimits(max_total_bytes=512 << 20, max_entries=20000)
    only_size = parse_policy(export(dagseal, signing_org, tmp_path / "q.json", "--max-bundle-size", "4GiB").read_bytes())
    assert only_size.tar_limits() == TarLimits(max_total_bytes=4 << 30)
    plain = json.loads(export(dagseal, signing_org, tmp_path / "r.json").read_text())
    assert plain["limits"] is None and parse_policy(json.dumps(plain).encode()).tar_limits() == TarLimits()


@pytest.mark.parametrize("flags, field", [
    (("--max-bundle-size", "1MiB"), "1048576 bytes"),
    (("--max-entries", "3"), "3 tar entries"),
])
def test_a_bundle_beyond_the_policy_limits_is_refused_and_nothing_is_materialised(
        dagseal, signing_org, big_image, tmp_path, flags, field):
    policy = export(dagseal, signing_org, tmp_path / "limited.json", *flags)
    state = tmp_path / "state"
    res = start(dagseal, big_image, policy, state)
    assert res.code == 3, res.stderr
    decision = res.json_lines[-1]
    assert decision["decision"] == "refused" and decision["check"] == "tar-limits"
    assert field in decision["reason"]
    assert "--max-bundle-size" in decision["hint"] and "policy" in decision["hint"]
    assert materialised(state) == []
    assert not (tmp_path / "state-dags").exists()


def test_the_same_bundle_passes_under_the_default_policy(dagseal, signing_org, big_image, tmp_path):
    policy = export(dagseal, signing_org, tmp_path / "default.json")
    state = tmp_path / "state"
    res = start(dagseal, big_image, policy, state)
    assert res.code == 0, res.stderr
    assert res.json_lines[-1]["decision"] == "accepted"
    assert materialised(state) == [big_image.digest.split(":")[1]]
    assert (tmp_path / "state-dags" / "dags" / "big_dag.py").read_bytes() == BIG_DAG


@pytest.mark.parametrize("limits, detail", [
    ({"max_bundle_bytes": 0}, "limits.max_bundle_bytes: Input should be greater than 0"),
    ({"max_entries": -5}, "limits.max_entries: Input should be greater than 0"),
    ({"max_bundle_bytes": "512MiB"}, "limits.max_bundle_bytes: Input should be a valid integer"),
    ({"max_entries": True}, "limits.max_entries: Input should be a valid integer"),
    ({"max_bundle_bytes": 1e9}, "limits.max_bundle_bytes: Input should be a valid integer"),
    ({"max_ratio": 1}, "limits.max_ratio: Extra inputs are not permitted"),
    ("16GiB", "limits: Input should be a valid dictionary or instance of PolicyLimits"),
])
def test_hostile_limits_in_a_policy_file_exit_2_naming_the_field(dagseal, signing_org, big_image, tmp_path,
                                                                limits, detail):
    path = export(dagseal, signing_org, tmp_path / "p.json")
    doc = json.loads(path.read_text())
    doc["limits"] = limits
    path.write_text(json.dumps(doc))
    res = start(dagseal, big_image, path, tmp_path / "state")
    assert res.code == 2, res.stdout
    error = res.json_lines[-1]
    assert error["message"] == f"{path} is not a valid dagseal trust policy"
    assert error["details"] == [f"{path}: {detail}"] and "dagseal policy export" in error["hint"]
    assert materialised(tmp_path / "state") == []


@pytest.mark.parametrize("flag, value", [
    ("--max-bundle-size", "0"), ("--max-bundle-size", "-1"), ("--max-bundle-size", "5GB"),
    ("--max-bundle-size", "1.5GiB"), ("--max-bundle-size", "MiB"), ("--max-bundle-size", "0GiB"),
    ("--max-entries", "0"), ("--max-entries", "ten"), ("--max-entries", "1e6"), ("--max-entries", "-3"),
    ("--max-entries", "\u0665"),  # an Arabic-Indic five: int() would read it, the flag does not
])
def test_bad_cli_sizes_exit_2_naming_the_flag(dagseal, signing_org, tmp_path, flag, value):
    out = tmp_path / "p.json"
    res = dagseal("policy", "export", "--specs", signing_org.specs, "--out", out, f"{flag}={value}", "--json")
    assert res.code == 2
    assert res.json_lines[0]["message"].startswith(f"{flag} {value!r}")
    assert res.json_lines[0]["hint"]
    assert not out.exists()


@pytest.mark.parametrize("value, size", [("1048576", 1 << 20), ("512MiB", 512 << 20), ("4GiB", 4 << 30),
                                         ("64KiB", 64 << 10), ("2 TiB", 2 << 40), ("100B", 100)])
def test_cli_sizes_in_bytes_or_binary_units(dagseal, signing_org, tmp_path, value, size):
    res = dagseal("policy", "export", "--specs", signing_org.specs, "--max-bundle-size", value, "--json")
    assert res.code == 0, res.stderr
    assert res.json_lines[0]["limits"] == {"max_bundle_bytes": size, "max_entries": None}
