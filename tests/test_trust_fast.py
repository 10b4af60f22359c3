"""signing/trust.py without pydantic: the plain records refuse exactly what the pydantic twin that
generates signing/policy.schema.json refuses, with the same field paths and messages, and never
coerce. If the records and the twin (or the schema) drift apart, a test here fails."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from registry.errors import BadInput
from signing.sigbundle import key_id_from_pem
from signing.trust import (KeylessSignerEntry, KeySignerEntry, PolicyError, TeamPolicy, TrustPolicy, _schema_models,
                           load_policy, parse_policy)

REPO = Path(__file__).resolve().parent.parent
PEM = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
KID = key_id_from_pem(PEM.encode())
ISSUER = "https://issuer.test"


def valid() -> dict:
    return {"version": 1, "org": "acme", "teams": {
        "team_a": {"signers": [{"kind": "key", "key_id": KID, "public_key_pem": PEM, "source": "keys/team_a.pub"},
                               {"kind": "keyless", "issuer": ISSUER, "identity": "a@acme.test"}],
                   "bundles": ["a_one", "a_two"]},
        "team_b": {"signers": [{"kind": "keyless", "issuer": ISSUER, "identity": "b@acme.test"}]}}}


def _signers(d: dict) -> list:
    return d["teams"]["team_a"]["signers"]


# (name, mutation, the JSON Schema refuses it too). The schema cannot say "the key id is this key's",
# "a bundle belongs to one team", "team names match" (teams has only patternProperties), and its
# patterns are searched with Python's `$`, which lets one trailing newline through.
SAMPLES = [
    ("valid", lambda d: None, False),
    ("grace_and_root", lambda d: d.update(offline_grace_seconds=0, trusted_root={"mediaType": "x"}), False),
    ("explicit_nulls", lambda d: d.update(offline_grace_seconds=None, trusted_root=None), False),
    ("extra_top", lambda d: d.update(extra=1), True),
    ("missing_org", lambda d: d.pop("org"), True),
    ("missing_teams", lambda d: d.pop("teams"), True),
    ("org_empty", lambda d: d.update(org=""), True),
    ("org_int", lambda d: d.update(org=5), True),
    ("teams_list", lambda d: d.update(teams=[]), True),
    ("team_name_bad", lambda d: d["teams"].update(x=d["teams"]["team_b"]), False),
    ("team_name_newline", lambda d: d["teams"].update({"team_c\n": d["teams"]["team_b"]}), False),
    ("team_not_object", lambda d: d["teams"].update(team_c=3), True),
    ("team_extra", lambda d: d["teams"]["team_b"].update(x=1), True),
    ("signers_empty", lambda d: d["teams"]["team_b"].update(signers=[]), True),
    ("signers_missing", lambda d: d["teams"]["team_b"].pop("signers"), True),
    ("signers_object", lambda d: d["teams"]["team_b"].update(signers={}), True),
    ("signer_string", lambda d: _signers(d).append("x"), True),
    ("signer_no_kind", lambda d: _signers(d)[1].pop("kind"), False),  # the schema's oneOf ignores the discriminator
    ("signer_kind_magic", lambda d: _signers(d).append({"kind": "magic"}), True),
    ("signer_kind_int", lambda d: _signers(d).append({"kind": 1}), True),
    ("signer_kind_list", lambda d: _signers(d).append({"kind": ["key"]}), True),
    ("key_id_not_the_keys", lambda d: _signers(d)[0].update(key_id="0" * 64), False),
    ("key_id_upper", lambda d: _signers(d)[0].update(key_id=KID.upper()), True),
    ("key_id_newline", lambda d: _signers(d)[0].update(key_id=KID + "\n"), False),
    ("pem_empty", lambda d: _signers(d)[0].update(public_key_pem=""), True),
    ("pem_too_big", lambda d: _signers(d)[0].update(public_key_pem="x" * 16385), True),
    ("pem_junk", lambda d: _signers(d)[0].update(public_key_pem="junk"), False),
    ("source_int", lambda d: _signers(d)[0].update(source=1), True),
    ("key_with_issuer", lambda d: _signers(d)[0].update(issuer=ISSUER), True),
    ("key_without_id", lambda d: _signers(d)[0].pop("key_id"), True),
    ("issuer_ftp", lambda d: _signers(d)[1].update(issuer="ftp://x"), True),
    ("issuer_space", lambda d: _signers(d)[1].update(issuer="https://x y"), True),
    ("issuer_newline", lambda d: _signers(d)[1].update(issuer="https://x\n"), False),
    ("identity_empty", lambda d: _signers(d)[1].update(identity=""), True),
    ("keyless_with_key_id", lambda d: _signers(d)[1].update(key_id="a"), True),
    ("bundle_in_two_teams", lambda d: d["teams"]["team_b"].update(bundles=["a_one"]), False),
    ("bundle_twice", lambda d: d["teams"]["team_a"]["bundles"].append("a_one"), False),
    ("bundle_path", lambda d: d["teams"]["team_a"]["bundles"].append("../x"), True),
    ("bundle_upper", lambda d: d["teams"]["team_a"]["bundles"].append("A"), True),
    ("bundle_int", lambda d: d["teams"]["team_a"]["bundles"].append(1), True),
    ("bundles_string", lambda d: d["teams"]["team_a"].update(bundles="a_one"), True),
    ("grace_negative", lambda d: d.update(offline_grace_seconds=-1), True),
    ("grace_string", lambda d: d.update(offline_grace_seconds="5"), True),
    ("grace_fraction", lambda d: d.update(offline_grace_seconds=5.5), True),
    ("grace_bool", lambda d: d.update(offline_grace_seconds=True), True),
    ("root_list", lambda d: d.update(trusted_root=[]), True),
    ("version_bool", lambda d: d.update(version=True), True),
    ("limits", lambda d: d.update(limits={"max_bundle_bytes": 512 << 20, "max_entries": 20_000}), False),
    ("limits_partial", lambda d: d.update(limits={"max_entries": 1}), False),
    ("limits_null", lambda d: d.update(limits=None), False),
    ("limits_inner_nulls", lambda d: d.update(limits={"max_bundle_bytes": None, "max_entries": None}), False),
    ("limits_zero_bytes", lambda d: d.update(limits={"max_bundle_bytes": 0}), True),
    ("limits_negative_entries", lambda d: d.update(limits={"max_entries": -1}), True),
    ("limits_size_string", lambda d: d.update(limits={"max_bundle_bytes": "512MiB"}), True),
    ("limits_bool", lambda d: d.update(limits={"max_entries": True}), True),
    ("limits_fraction", lambda d: d.update(limits={"max_bundle_bytes": 1.5}), True),
    ("limits_extra", lambda d: d.update(limits={"max_ratio": 10}), True),
    ("limits_list", lambda d: d.update(limits=[]), True),
    ("limits_int", lambda d: d.update(limits=1 << 30), True),
    ("several", lambda d: (d.update(org="", extra=1), _signers(d)[1].update(identity="")), True),
]


VALID = {"valid", "grace_and_root", "explicit_nulls", "limits", "limits_partial", "limits_null", "limits_inner_nulls"}


def sample(mutate) -> dict:
    doc = copy.deepcopy(valid())
    mutate(doc)
    return doc


def fast_errors(doc) -> list[tuple[str, str]] | None:
    try:
        TrustPolicy.model_validate(doc)
        return None
    except PolicyError as exc:
        return [(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]


def twin_errors(doc) -> list[tuple[str, str]] | None:
    try:
        _schema_models().model_validate(doc)
        return None
    except ValidationError as exc:
        return [(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads((REPO / "signing" / "policy.schema.json").read_text())


@pytest.mark.parametrize("name, mutate, schema_refuses", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_records_and_pydantic_twin_give_the_same_verdict_and_errors(name, mutate, schema_refuses, schema):
    doc = sample(mutate)
    fast = fast_errors(doc)
    assert fast == twin_errors(doc)
    assert (fast is None) == (name in VALID)
    if fast is None or schema_refuses:  # what the records accept the schema accepts; the reverse where it can say so
        schema_ok = jsonschema.Draft202012Validator(schema).is_valid(doc)
        assert schema_ok == (fast is None), (name, fast)


def test_twin_generates_the_committed_schema(schema):
    assert json.loads(json.dumps(TrustPolicy.schema(), sort_keys=True)) == schema


@pytest.mark.parametrize("field, value, msg", [
    ("offline_grace_seconds", "5", "Input should be a valid integer"),
    ("offline_grace_seconds", True, "Input should be a valid integer"),
    ("offline_grace_seconds", 5.0, "Input should be a valid integer"),
    ("version", True, "Input should be 1"),
])
def test_numbers_are_never_coerced(tmp_path, field, value, msg):
    """pydantic's lax mode read "5" as 5 and true as 1; the policy is hostile input and the schema says integer."""
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(dict(valid(), **{field: value})))
    with pytest.raises(BadInput) as exc:
        load_policy(path)
    assert exc.value.exit_code == 2 and str(path) in str(exc.value)
    assert exc.value.details == [f"{path}: {field}: {msg}"]
    assert "dagseal policy export" in exc.value.hint


@pytest.mark.parametrize("mutate, detail", [
    (lambda d: _signers(d)[0].update(key_id=KID + "\n"), "teams.team_a.signers.0.key.key_id: String should match"),
    (lambda d: _signers(d)[1].update(issuer=ISSUER + "\n"), "teams.team_a.signers.1.keyless.issuer: String should match"),
    (lambda d: d["teams"].update({"team_c\n": d["teams"]["team_b"]}), "teams.team_c\n.[key]: String should match"),
    (lambda d: d["teams"]["team_a"]["bundles"].append("a_three\n"), "teams.team_a.bundles.2: String should match"),
])
def test_a_trailing_newline_does_not_pass_a_pattern(mutate, detail):
    with pytest.raises(BadInput) as exc:
        parse_policy(json.dumps(sample(mutate)).encode(), what="p.json")
    assert exc.value.exit_code == 2 and any(d.startswith(f"p.json: {detail}") for d in exc.value.details)


def test_every_error_is_reported_at_once():
    with pytest.raises(BadInput) as exc:
        parse_policy(json.dumps(sample(SAMPLES[-1][1])).encode(), what="p.json")
    assert exc.value.message == "p.json is not a valid dagseal trust policy"
    assert exc.value.details == ["p.json: org: String should have at least 1 character",
                                 "p.json: teams.team_a.signers.1.keyless.identity: String should have at least 1 character",
                                 "p.json: extra: Extra inputs are not permitted"]


def test_records_built_in_python_check_like_parsed_ones():
    key = KeySignerEntry(key_id=KID, public_key_pem=PEM, source="keys/a.pub")
    team = TeamPolicy(signers=[key, KeylessSignerEntry(issuer=ISSUER, identity="a")], bundles=["a_one"])
    policy = TrustPolicy(version=1, org="acme", teams={"team_a": team}, trusted_root={"k": 1}, offline_grace_seconds=60)
    assert policy.keys_for("team_a") == [key] and policy.team_of("a_one") == "team_a"
    assert parse_policy(policy.to_json()) == policy and hash(parse_policy(policy.to_json())) == hash(policy)
    assert json.loads(policy.to_json())["teams"]["team_a"]["signers"][0] == {
        "kind": "key", "key_id": KID, "public_key_pem": PEM, "source": "keys/a.pub"}
    with pytest.raises(PolicyError, match=r"trusted_root\.1\.\[key\]: Input should be a valid string"):
        TrustPolicy(version=1, org="acme", teams={"team_a": team}, trusted_root={1: "x"})
    with pytest.raises(PolicyError, match="kind: Input should be 'key'"):
        KeySignerEntry(kind="keyless", key_id=KID, public_key_pem=PEM)
    with pytest.raises(PolicyError, match=r"signers\.0: Input should be a valid dictionary or object"):
        TeamPolicy(signers=[object()])
    with pytest.raises(TypeError, match="frozen"):
        policy.org = "evil"  # type: ignore[misc]


def test_loading_a_policy_does_not_import_pydantic(tmp_path):
    """With a key signer too: its entry is checked with signing.sigbundle, which no longer imports pydantic."""
    doc = valid()
    assert {s["kind"] for s in _signers(doc)} == {"key", "keyless"}
    (tmp_path / "p.json").write_text(json.dumps(doc))
    code = ("import sys; from signing.trust import load_policy; p = load_policy(sys.argv[1]);"
            "print(p.team_of('a_one'), sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic'))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p.json")], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.split() == ["team_a", "[]"]
