"""`dagseal validate`, `schema` and `codeowners`: every spec rule refuses with file, field and fix
(exit 2), all problems are reported in one run, and the committed example files stay generated."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import tomllib

from bundler import codeowners, schema
from bundler.specs import load_organisation
from registry.errors import SpecError
from tests.fixtures.wheelhouse import default_bundles

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "specs"


def _bundles(**changes):
    """The default bundles with per-bundle changes: {"team_a_analytics": {"base": "x"}}."""
    out = []
    for b in default_bundles():
        b = {**b, **changes.get(b["name"], {})}
        out.append({k: v for k, v in b.items() if v is not None})
    return out


def _errors(dagseal, specs: Path) -> list[dict]:
    result = dagseal("validate", "--specs", specs, "--json")
    assert result.code == 2, result.stdout + result.stderr
    return result.json_lines


# ---------------------------------------------------------------- valid organisations


def test_example_specs_are_valid(dagseal):
    result = dagseal("validate", "--specs", EXAMPLE, "--json")
    assert result.code == 0, result.stdout + result.stderr
    [summary] = result.json_lines
    assert summary["teams"] == ["team_a", "team_b"]
    assert summary["bundles"] == ["team_a_analytics", "team_b_reports"]
    assert summary["unlocked"] == []


def test_test_org_is_valid_and_summarised(dagseal, test_org):
    result = dagseal("validate", "--specs", test_org.specs)
    assert result.code == 0, result.stderr
    assert "2 team(s) (team_a, team_b), 2 bundle(s) (team_a_analytics, team_b_reports)" in result.stdout
    org = test_org.org
    a = org.select(bundle="team_a_analytics")[0]
    assert (a.team, a.repository, a.lock_path.name) == ("team_a", "team_a/team_a_analytics", "team_a_analytics.lock")
    assert a.source_dir == (test_org.specs / "teams/team_a/team_a_analytics/dags").resolve()
    assert a.spec_digest.startswith("sha256:") and len(a.spec_digest) == 71


def test_spec_digest_follows_the_spec(make_org):
    one = make_org().org.select(bundle="team_a_analytics")[0]
    same = make_org().org.select(bundle="team_a_analytics")[0]
    other = make_org(bundles=_bundles(team_a_analytics={"version": "2026.11.2"})).org.select(bundle="team_a_analytics")[0]
    assert one.spec_digest == same.spec_digest != other.spec_digest


def test_missing_lock_is_only_a_warning(dagseal, make_org):
    fx = make_org()
    result = dagseal("validate", "--specs", fx.specs, "--json")
    assert result.code == 0
    assert result.json_lines[0]["unlocked"] == ["team_a_analytics", "team_b_reports"]
    assert "dagseal lock --bundle team_a_analytics" in result.stderr


# ---------------------------------------------------------------- one refusal per rule


RULES = {
    # name: (make_org kwargs, file suffix, field, words the message must hold)
    "team not in org": (dict(bundles=_bundles(team_b_reports={"team": "team_c"}),
                             paths={"team_b_reports": "teams/team_c/team_b_reports.toml"}),
                        "teams/team_c/team_b_reports.toml", "bundle.team", ["'team_c' is not in org.toml", "[teams.team_c]"]),
    "team file declares another team": (dict(bundles=_bundles(team_b_reports={"team": "team_a"}),
                                             paths={"team_b_reports": "teams/team_b/team_b_reports.toml"}),
                                        "teams/team_b/team_b_reports.toml", "bundle.team",
                                        ["folder of team 'team_b'", "set team = 'team_b'"]),
    "unknown key": (dict(bundles=_bundles(team_a_analytics={"dependancies": ["x"]})),
                    "teams/team_a/team_a_analytics.toml", "bundle.dependancies", ["unknown key 'dependancies'", "remove it"]),
    "missing source folder": (dict(no_source=("team_a_analytics",)),
                              "teams/team_a/team_a_analytics.toml", "bundle.source", ["does not exist", "create it"]),
    "source folder without DAG files": (dict(dags={"team_a_analytics": 0}),
                                        "teams/team_a/team_a_analytics.toml", "bundle.source", ["holds no .py files", "DAG files"]),
    "source outside the team folder": (dict(bundles=_bundles(team_a_analytics={"source": "../team_b/team_b_reports/dags"})),
                                       "teams/team_a/team_a_analytics.toml", "bundle.source", ["leaves the team's folder", "keep DAG code under"]),
    "base outside allow-list": (dict(bundles=_bundles(team_a_analytics={"base": "docker.io/library/python:3.12"})),
                                "teams/team_a/team_a_analytics.toml", "bundle.base",
                                ["not in org.allowed_bases (scratch)", "ask the platform team"]),
    "dependency not PEP 508": (dict(bundles=_bundles(team_a_analytics={"dependencies": ["tinyfmt>=0.3", "requests >>= 2"]})),
                               "teams/team_a/team_a_analytics.toml", "bundle.dependencies[1]",
                               ["not a PEP 508 requirement", "requests>=2.31"]),
    "dependency by URL": (dict(bundles=_bundles(team_a_analytics={"dependencies": ["x @ https://example.com/x.whl"]})),
                          "teams/team_a/team_a_analytics.toml", "bundle.dependencies[0]", ["direct URL", "publish it"]),
    "dependency twice": (dict(bundles=_bundles(team_a_analytics={"dependencies": ["Tiny_Fmt>=0.3", "tiny-fmt<1"]})),
                         "teams/team_a/team_a_analytics.toml", "bundle.dependencies", ["listed twice: tiny-fmt", "merge"]),
    "version not PEP 440": (dict(bundles=_bundles(team_a_analytics={"version": "next-week"})),
                            "teams/team_a/team_a_analytics.toml", "bundle.version", ["not a PEP 440 version", "CalVer"]),
    "version of wrong type": (dict(bundles=_bundles(team_a_analytics={"version": 2026})),
                              "teams/team_a/team_a_analytics.toml", "bundle.version", ["expected string, got int 2026", 'quote it: version = "2026"']),
    "file named after another bundle": (dict(paths={"team_a_analytics": "teams/team_a/analytics.toml"}),
                                        "teams/team_a/analytics.toml", "bundle.name",
                                        ["declared in analytics.toml", "team_a_analytics.toml"]),
    "queue shared across teams": (dict(bundles=_bundles(team_b_reports={"queues": ["team_a"]})),
                                  "teams/team_b/team_b_reports.toml", "bundle.queues", ["also used by team 'team_a'", "your own"]),
    "missing [org] section": (dict(files={"org.toml": '[teams.team_a]\nowners = ["@x/y"]\nsigners = [{ key = "keys/team_a.pub" }]\n'}),
                              "org.toml", "org", ["[org] section is missing", "add it"]),
    "team names clash across case": (dict(teams={"team_a": None, "Team_A": None, "team_b": None}),
                                      "org.toml", "teams.Team_A", ["clashes with teams.team_a once lowercased", "rename"]),
    "bad team name": (dict(teams={"team_a": None, "team_b": None, "t!": None}),
                      "org.toml", "teams.t!", ["not a valid Airflow team name", "3-50 letters"]),
    "signer of neither form": (dict(teams={"team_a": {"owners": ["@o/a"], "signers": [{"issuer": "https://x", "key": "k"}]},
                                           "team_b": None}),
                               "org.toml", "teams.team_a.signers[0]", ["not a signer", "issuer", "key"]),
    "missing key file": (dict(teams={"team_a": {"owners": ["@o/a"], "signers": [{"key": "keys/nobody.pub"}]}, "team_b": None}),
                         "org.toml", "teams.team_a.signers[0].key", ["does not exist", "dagseal keygen"]),
    "owner not a GitHub handle": (dict(teams={"team_a": {"owners": ["team a"], "signers": [{"key": "keys/team_a.pub"}]}, "team_b": None}),
                                  "org.toml", "teams.team_a.owners[0]", ["'team a' does not match", "@org/team"]),
    "team without signers": (dict(teams={"team_a": {"owners": ["@o/a"], "signers": []}, "team_b": None}),
                             "org.toml", "teams.team_a.signers", ["is empty", "at least one"]),
    "KMS key URI without a key": (dict(teams={"team_a": {"owners": ["@o/a"], "signers": [{"key": "awskms://"}]}, "team_b": None}),
                                  "org.toml", "teams.team_a.signers[0].key", ["not a KMS key URI", "awskms:///<key id"]),
    "private key as signer": (dict(teams={"team_a": {"owners": ["@o/a"], "signers": [{"key": "../private-keys/team_a.key"}]},
                                          "team_b": None}),
                              "org.toml", "teams.team_a.signers[0].key", ["PRIVATE key", "commit only the public key"]),
    "org registry with a tag": (dict(org={"registry": "registry.acme.io/airflow:latest"}),
                                "org.toml", "org.registry", ["names a tag or digest", "drop the"]),
    "unknown platform": (dict(org={"platforms": ["linux/amd64", "windows/amd64"]}),
                         "org.toml", "org.platforms[1]", ["linux/amd64", "linux/arm64"]),
}


def _team_spec(name):
    return {"owners": [f"@o/{name.lower()}"], "signers": [{"key": f"keys/{name}.pub"}]}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rule_refuses_with_file_field_and_fix(rule, dagseal, make_org):
    kwargs, file, field, words = RULES[rule]
    if "teams" in kwargs:
        kwargs = {**kwargs, "teams": {k: v or _team_spec(k) for k, v in kwargs["teams"].items()}}
    fx = make_org(**kwargs)
    errors = _errors(dagseal, fx.specs)
    matching = [e for e in errors if e["file"] == str(fx.specs / file) and e["field"] == field]
    assert len(matching) == 1, errors
    for word in words:
        assert word in matching[0]["message"], matching[0]
    assert set(matching[0]) == {"file", "field", "message"}


def test_duplicate_bundle_name_across_teams(dagseal, make_org):
    dup = {**_bundles()[0], "team": "team_b", "queues": ["team_b"]}
    fx = make_org(bundles=_bundles() + [dup])
    errors = _errors(dagseal, fx.specs)
    [e] = [e for e in errors if e["field"] == "bundle.name"]
    assert e["file"] == str(fx.specs / "teams/team_b/team_a_analytics.toml")
    assert f"already declared in {fx.specs / 'teams/team_a/team_a_analytics.toml'}" in e["message"]
    assert "rename one" in e["message"]


def test_signer_of_neither_form_is_one_line(dagseal, make_org):
    teams = {"team_a": {"owners": ["@o/a"], "signers": [{"identity": "me", "key": "k"}, "keys/team_a.pub"]},
             "team_b": _team_spec("team_b")}
    errors = _errors(dagseal, make_org(teams=teams).specs)
    assert [e["field"] for e in errors] == ["teams.team_a.signers[0]", "teams.team_a.signers[1]"]


def test_keyless_signer_missing_identity_names_the_field(dagseal, make_org):
    teams = {"team_a": {"owners": ["@o/a"], "signers": [{"issuer": "https://token.actions.githubusercontent.com"}]},
             "team_b": _team_spec("team_b")}
    [e] = _errors(dagseal, make_org(teams=teams).specs)
    assert e["field"] == "teams.team_a.signers[0].identity" and "add identity" in e["message"]


def test_every_problem_is_reported_at_once(dagseal, make_org):
    bundles = _bundles(team_a_analytics={"base": "ubuntu", "colour": "blue"}, team_b_reports={"team": "team_a"})
    fx = make_org(bundles=bundles, org={"python": "2.7"},
                  paths={"team_b_reports": "teams/team_b/team_b_reports.toml"}, no_source=("team_b_reports",))
    errors = _errors(dagseal, fx.specs)
    fields = sorted((Path(e["file"]).name, e["field"]) for e in errors)
    assert fields == [("org.toml", "org.python"), ("team_a_analytics.toml", "bundle.colour"),
                      ("team_b_reports.toml", "bundle.source"), ("team_b_reports.toml", "bundle.team")]


def test_human_lines_are_file_field_problem_fix(dagseal, make_org):
    fx = make_org(bundles=_bundles(team_a_analytics={"base": "ubuntu"}))
    result = dagseal("validate", "--specs", fx.specs)
    assert result.code == 2
    assert result.stdout.splitlines() == [
        f"{fx.specs}/teams/team_a/team_a_analytics.toml: bundle.base: base 'ubuntu' is not in org.allowed_bases "
        "(scratch); use an allowed base or ask the platform team to add it"]
    assert "1 problem(s)" in result.stderr


def test_not_toml_and_missing_folder(dagseal, make_org, tmp_path):
    fx = make_org(files={"teams/team_a/broken.toml": "[bundle\nname = 1\n", "teams/loose.toml": "[bundle]\n",
                         "teams/team_b/huge.toml": "# " + "x" * (1 << 20) + "\n"})
    errors = _errors(dagseal, fx.specs)
    by_file = {Path(e["file"]).name: e for e in errors}
    assert "larger than 1048576 bytes" in by_file["huge.toml"]["message"]
    assert "not valid TOML" in by_file["broken.toml"]["message"]
    assert "outside a team folder" in by_file["loose.toml"]["message"]
    [e] = _errors(dagseal, tmp_path / "nowhere")
    assert "does not exist" in e["message"] and "--specs" in e["message"]


def test_load_organisation_raises_spec_error_with_every_line(make_org):
    fx = make_org(bundles=_bundles(team_a_analytics={"base": "ubuntu"}, team_b_reports={"queues": ["team_a"]}))
    with pytest.raises(SpecError) as exc:
        load_organisation(fx.specs)
    assert exc.value.exit_code == 2 and len(exc.value.details) == 2
    assert all(": bundle." in d for d in exc.value.details)


# ---------------------------------------------------------------- schema


def test_committed_schema_files_are_generated(dagseal):
    for name, text in schema.render().items():
        assert (EXAMPLE / name).read_text(encoding="utf-8") == text, f"run `dagseal schema` ({name} is stale)"
    assert dagseal("schema", "--specs", EXAMPLE, "--check").code == 0


def test_schema_check_refuses_stale_files_and_write_fixes_them(dagseal, tmp_path):
    (tmp_path / "org.schema.json").write_text("{}\n")
    result = dagseal("schema", "--specs", tmp_path, "--check")
    assert result.code == 2 and "out of date" in result.stderr and "dagseal schema --specs" in result.stderr
    assert dagseal("schema", "--specs", tmp_path).code == 0
    assert dagseal("schema", "--specs", tmp_path, "--check").code == 0


def test_example_specs_satisfy_the_schema():
    org = tomllib.loads((EXAMPLE / "org.toml").read_text())
    jsonschema.validate(org, json.loads((EXAMPLE / "org.schema.json").read_text()))
    bundle_schema = json.loads((EXAMPLE / "bundle.schema.json").read_text())
    for path in sorted(EXAMPLE.glob("teams/*/*.toml")):
        jsonschema.validate(tomllib.loads(path.read_text()), bundle_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"bundle": {"name": "x", "team": "team_a", "version": "1", "source": "d", "extra": 1}},
                            bundle_schema)


# ---------------------------------------------------------------- CODEOWNERS


def test_committed_codeowners_is_generated():
    org = load_organisation(EXAMPLE)
    assert (EXAMPLE / "CODEOWNERS").read_text() == codeowners.render(org)


def test_codeowners_gives_each_team_its_folder(dagseal, test_org, tmp_path):
    (test_org.root / ".git").mkdir()
    out = tmp_path / "CODEOWNERS"
    result = dagseal("codeowners", "--specs", test_org.specs, "--out", out, "--json")
    assert result.code == 0 and result.json_lines == [{"file": str(out), "teams": ["team_a", "team_b"]}]
    lines = [line for line in out.read_text().splitlines() if not line.startswith("#")]
    assert lines == ["/specs/ @testorg/platform", "/specs/teams/team_a/ @testorg/team-a-dms",
                     "/specs/teams/team_b/ @testorg/team-b-dms"]


def test_codeowners_without_org_owners_says_how_to_add_them(dagseal, make_org):
    fx = make_org(org={"owners": None})
    result = dagseal("codeowners", "--specs", fx.specs)
    assert result.code == 0
    assert "add `owners = [" in result.stdout and "/teams/team_a/ @testorg/team-a-dms" in result.stdout


def test_codeowners_refuses_invalid_specs(dagseal, make_org):
    fx = make_org(bundles=_bundles(team_a_analytics={"base": "ubuntu"}))
    result = dagseal("codeowners", "--specs", fx.specs)
    assert result.code == 2 and "bundle.base" in result.stderr
