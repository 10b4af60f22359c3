"""The host's rollback memory (signing.state): PEP 440 order, version reuse, downgrade rules,
atomic records, a corrupt record refused as bad input naming the file, cached signatures."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from registry.errors import BadInput, Refused
from signing.state import Freshness, HostState, state_dir

D1, D2, D3 = (f"sha256:{c * 64}" for c in "123")


def cand(version: str, digest: str, pinned: bool = False, allow: bool = False) -> Freshness:
    return Freshness(version=version, digest=digest, pinned_by_digest=pinned, allow_downgrade=allow)


def test_pep440_order_not_string_order(tmp_path):
    state = HostState(tmp_path)
    state.accept("team_a", "b", cand("2026.11.9", D1), ref=None)
    state.accept("team_a", "b", cand("2026.11.10", D2), ref=None)  # newer, though "10" < "9" as text
    record = state.load("team_a", "b")
    assert (record.newest_version, record.newest_digest) == ("2026.11.10", D2)
    with pytest.raises(Refused) as exc:
        state.check_freshness(record, cand("2026.11.9rc1", D3))
    assert exc.value.check == "rollback"


def test_same_version_same_digest_is_fine_and_reuse_is_not(tmp_path):
    state = HostState(tmp_path)
    state.accept("team_a", "b", cand("1.0", D1), ref="r:1.0")
    state.accept("team_a", "b", cand("1.0", D1), ref="r:1.0")
    with pytest.raises(Refused) as exc:
        state.accept("team_a", "b", cand("1.0", D2), ref=None)
    assert exc.value.check == "version-reuse" and D1 in exc.value.message
    assert state.load("team_a", "b").versions == {"1.0": D1}


def test_downgrade_needs_pin_and_flag(tmp_path):
    state = HostState(tmp_path)
    state.accept("team_a", "b", cand("2.0", D2), ref=None)
    for pinned, allow in ((False, False), (False, True), (True, False)):
        with pytest.raises(Refused) as exc:
            state.accept("team_a", "b", cand("1.0", D1, pinned, allow), ref=None)
        assert exc.value.check == "rollback"
    state.accept("team_a", "b", cand("1.0", D1, True, True), ref=None)
    assert state.load("team_a", "b").newest_version == "2.0"


def test_invalid_version_is_refused(tmp_path):
    state = HostState(tmp_path)
    state.accept("team_a", "b", cand("1.0", D1), ref=None)
    with pytest.raises(Refused) as exc:
        state.accept("team_a", "b", cand("not a version", D2), ref=None)
    assert exc.value.check == "statement" and "PEP 440" in exc.value.message


def test_names_cannot_escape_the_state_dir(tmp_path):
    with pytest.raises(Refused):
        HostState(tmp_path).record_path("team_a", "../../etc/passwd")


def test_corrupt_record_is_bad_input_naming_the_file(tmp_path):
    state = HostState(tmp_path)
    path = state.record_path("team_a", "b")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(BadInput) as exc:
        state.load("team_a", "b")
    assert str(path) in exc.value.message and "delete" in exc.value.hint


def test_records_are_written_atomically(tmp_path):
    state = HostState(tmp_path)
    state.accept("team_a", "b", cand("1.0", D1), ref="reg/x:1.0", now=100.0)
    folder = state.record_path("team_a", "b").parent
    assert sorted(p.name for p in folder.iterdir()) == ["b.json", "b.lock"]  # no temp file left
    doc = json.loads(state.record_path("team_a", "b").read_text())
    assert doc["refs"] == {"reg/x:1.0": {"digest": D1, "verified_at": 100.0}}
    assert state.find_resolution("team_a", "reg/x:1.0")[1].digest == D1
    assert state.find_resolution("team_b", "reg/x:1.0") is None


def test_cached_signatures_ignore_corrupted_files(tmp_path):
    state = HostState(tmp_path)
    state.save_signature(D1, b'{"a": 1}')
    state.save_signature(D1, b'{"b": 2}')
    victim = sorted(state.signature_dir(D1).iterdir())[0]
    victim.write_bytes(b"tampered")
    assert len(state.cached_signatures(D1)) == 1


def _accept(root: str, version: str, digest: str) -> None:
    HostState(root).accept("team_a", "b", cand(version, digest), ref=None)


def test_concurrent_accepts_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    versions = [(f"1.{i}", f"sha256:{i:064x}") for i in range(6)]
    procs = [ctx.Process(target=_accept, args=(str(tmp_path), v, d)) for v, d in versions]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    record = HostState(tmp_path).load("team_a", "b")
    succeeded = {v for (v, _d), p in zip(versions, procs, strict=True) if p.exitcode == 0}
    # no lost update: every start that succeeded is recorded; the rest were refused as rollbacks
    assert set(record.versions) == succeeded
    assert record.newest_version == "1.5"
    assert record.versions == {v: d for v, d in versions if v in succeeded}


def test_state_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSEAL_HOME", str(tmp_path / "home"))
    assert state_dir(tmp_path / "x") == tmp_path / "x"
    assert state_dir(None) == tmp_path / "home"
    monkeypatch.delenv("DAGSEAL_HOME")
    assert state_dir(None) == type(tmp_path).home() / ".cache" / "dagseal"
