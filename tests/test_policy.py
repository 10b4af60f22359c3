"""`dagseal policy export`: the runtime policy (JSON, versioned, schema) and the admission policies
(Kyverno ClusterPolicy, policy-controller ClusterImagePolicy) name exactly the org's signers."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from registry.errors import BadInput
from signing.statement import PREDICATE_TYPE
from signing.trust import KeylessSignerEntry, KeySignerEntry, TrustPolicy, load_policy, parse_policy
from tests.fixtures.sigstore import KEYLESS_ISSUER, TEAM_A_IDENTITY, TEAM_B_IDENTITY

SCHEMAS = Path("/work/shared/schemas")
REPO = Path(__file__).resolve().parent.parent


def export(dagseal, specs, fmt, *extra):
    res = dagseal("policy", "export", "--specs", specs, "--format", fmt, *extra)
    assert res.code == 0, res.stderr
    return res.stdout


def key_ids(signing_org, *names):
    from signing.sigbundle import key_id_from_pem

    return {key_id_from_pem(signing_org.pub(n).read_bytes()) for n in names}


def test_json_policy_is_versioned_and_matches_its_schema(dagseal, signing_org):
    doc = json.loads(export(dagseal, signing_org.specs, "json", "--offline-grace", "24h"))
    schema = json.loads((REPO / "signing" / "policy.schema.json").read_text())
    assert schema == json.loads(json.dumps(TrustPolicy.schema(), sort_keys=True)), "regenerate signing/policy.schema.json"
    jsonschema.validate(doc, schema)
    assert doc["version"] == 1 and doc["org"] == "acme" and doc["offline_grace_seconds"] == 86400
    assert doc["trusted_root"] is None
    policy = parse_policy(json.dumps(doc).encode())
    assert policy.team_of("team_a_analytics") == "team_a" and policy.team_of("nope") is None
    assert {k.key_id for k in policy.keys_for("team_a")} == key_ids(signing_org, "team_a")
    assert [(i.issuer, i.identity) for i in policy.identities_for("team_b")] == [(KEYLESS_ISSUER, TEAM_B_IDENTITY)]
    assert policy.signers_for("team_c") == []


def test_export_writes_the_file_atomically(dagseal, signing_org, tmp_path):
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "policy.json"
    res = dagseal("policy", "export", "--specs", signing_org.specs, "--out", out, "--json")
    assert res.code == 0 and res.json_lines[0]["teams"] == ["team_a", "team_b"]
    assert load_policy(out).org == "acme"
    assert [p.name for p in out.parent.iterdir()] == ["policy.json"]


def test_json_mode_prints_one_line(dagseal, signing_org):
    res = dagseal("policy", "export", "--specs", signing_org.specs, "--json")
    assert res.code == 0 and len(res.stdout.splitlines()) == 1 and res.json_lines[0]["version"] == 1
    res = dagseal("policy", "export", "--specs", signing_org.specs, "--format", "kyverno", "--json")
    assert res.json_lines[0]["format"] == "kyverno" and "ClusterPolicy" in res.json_lines[0]["content"]


def test_bad_offline_grace_and_trust_config_are_bad_input(dagseal, signing_org, tmp_path):
    res = dagseal("policy", "export", "--specs", signing_org.specs, "--offline-grace", "soon")
    assert res.code == 2 and "--offline-grace" in res.stderr
    (tmp_path / "tc.json").write_text('{"mediaType": "nope"}')
    res = dagseal("policy", "export", "--specs", signing_org.specs, "--trust-config", tmp_path / "tc.json")
    assert res.code == 2 and "tc.json" in res.stderr


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(version=2), "version"),
    (lambda d: d.update(extra=1), "extra"),
    (lambda d: d["teams"]["team_a"]["signers"][0].update(key_id="0" * 64), "teams.team_a.signers.0"),
    (lambda d: d["teams"]["team_a"]["signers"].append({"kind": "magic"}), "teams.team_a.signers.2"),
    (lambda d: d["teams"]["team_b"]["bundles"].append("team_a_analytics"), "team_a_analytics"),
    (lambda d: d["teams"].update({"x": d["teams"]["team_a"]}), "teams.x"),
    (lambda d: d.update(offline_grace_seconds=-1), "offline_grace_seconds"),
])
def test_hostile_policy_is_bad_input_naming_the_field(dagseal, signing_org, tmp_path, mutate, needle):
    doc = json.loads(export(dagseal, signing_org.specs, "json"))
    mutate(doc)
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(BadInput) as exc:
        load_policy(path)
    assert exc.value.exit_code == 2 and needle in str(exc.value) and str(path) in str(exc.value)
    assert "dagseal policy export" in exc.value.hint


@pytest.mark.parametrize("data", [b"", b"[]", b'{"version": 1, "version": 1}', b"\xff", b"{" * 10])
def test_malformed_policy_bytes_are_bad_input(data):
    with pytest.raises(BadInput):
        parse_policy(data)


def test_missing_policy_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="cannot be read"):
        load_policy(tmp_path / "nope.json")


def test_bad_public_key_in_org_is_bad_input(dagseal, signing_org):
    (signing_org.specs / "keys" / "team_b.pub").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    res = dagseal("policy", "export", "--specs", signing_org.specs)
    assert res.code == 2 and "teams.team_b.signers[0].key" in res.stderr and "team_b.pub" in res.stderr


# -- admission policies -----------------------------------------------------------------------------
def strict(schema, root: bool = True):
    """Kubernetes prunes unknown fields silently; make the CRD schema refuse them instead
    (below the root, which leaves apiVersion/kind/metadata to Kubernetes)."""
    if isinstance(schema, dict):
        out = {k: strict(v, False) for k, v in schema.items()}
        if not root and out.get("type") == "object" and "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v, False) for v in schema]
    return schema


def crd_schema(path: Path, version: str) -> dict:
    if not path.is_file():
        pytest.skip(f"{path} is missing (see /work/shared/schemas/README.md)")
    crd = yaml.safe_load(path.read_text())
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return strict(v["schema"]["openAPIV3Schema"])


def test_kyverno_policy_validates_and_names_exactly_the_teams_signers(dagseal, signing_org):
    doc = yaml.safe_load(export(dagseal, signing_org.specs, "kyverno"))
    jsonschema.validate(doc, crd_schema(SCHEMAS / "kyverno" / "kyverno.io_clusterpolicies.yaml", "v1"))
    assert doc["kind"] == "ClusterPolicy" and doc["apiVersion"] == "kyverno.io/v1"
    rules = {r["name"]: r for r in doc["spec"]["rules"]}
    assert set(rules) == {"dagseal-team-a", "dagseal-team-b"}
    for team, identity, key in (("team_a", TEAM_A_IDENTITY, "team_a"), ("team_b", TEAM_B_IDENTITY, "team_b")):
        (vi,) = rules[f"dagseal-{team.replace('_', '-')}"]["verifyImages"]
        assert vi["imageReferences"] == [f"registry.acme.io/airflow/{team}/*"]
        (att,) = vi["attestations"]
        assert att["type"] == PREDICATE_TYPE
        assert att["conditions"] == [{"all": [{"key": "{{ team }}", "operator": "Equals", "value": team,
                                               "message": f"the signed statement must name team {team}"}]}]
        entries = att["attestors"][0]["entries"]
        keyless = [(e["keyless"]["issuer"], e["keyless"]["subject"]) for e in entries if "keyless" in e]
        assert keyless == [(KEYLESS_ISSUER, identity)]
        assert [e["keys"]["publicKeys"] for e in entries if "keys" in e] == [signing_org.pub(key).read_text()]


def test_policy_controller_policies_validate_one_per_team(dagseal, signing_org):
    docs = list(yaml.safe_load_all(export(dagseal, signing_org.specs, "policy-controller")))
    schema = crd_schema(SCHEMAS / "policy-controller" / "clusterimagepolicy.yaml", "v1beta1")
    assert [d["metadata"]["name"] for d in docs] == ["dagseal-acme-team-a", "dagseal-acme-team-b"]
    for doc, team, identity in zip(docs, ("team_a", "team_b"), (TEAM_A_IDENTITY, TEAM_B_IDENTITY)):
        jsonschema.validate(doc, schema)
        assert doc["spec"]["images"] == [{"glob": f"registry.acme.io/airflow/{team}/**"}]
        auths = doc["spec"]["authorities"]
        assert [a["keyless"]["identities"] for a in auths if "keyless" in a] == [[{"issuer": KEYLESS_ISSUER, "subject": identity}]]
        assert [a["key"]["data"] for a in auths if "key" in a] == [signing_org.pub(team).read_text()]
        for a in auths:
            (att,) = a["attestations"]
            assert att["predicateType"] == PREDICATE_TYPE and f'predicate: team: "{team}"' in att["policy"]["data"]


def test_admission_policies_use_the_private_instance(dagseal, signing_org, sigstore_instance, trust_config):
    docs = list(yaml.safe_load_all(export(dagseal, signing_org.specs, "policy-controller", "--trust-config", trust_config)))
    keyless = [a for a in docs[0]["spec"]["authorities"] if "keyless" in a]
    assert keyless[0]["keyless"]["url"] == sigstore_instance.url and keyless[0]["ctlog"]["url"] == sigstore_instance.url


def test_signer_entries_are_typed():
    with pytest.raises(ValueError):
        KeySignerEntry(key_id="a" * 64, public_key_pem="nope")
    assert KeylessSignerEntry(issuer=KEYLESS_ISSUER, identity="x").kind == "keyless"
