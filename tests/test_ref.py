"""Store references parse into the right kind and round-trip; bad ones are refused with exit 2."""

import pytest

from registry.errors import BadInput
from registry.ref import parse_reference

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize("text,kind,location,repo,tag,digest", [
    ("oci:.dagseal/store:team_a/team_a_analytics:2026.11.1", "oci", ".dagseal/store", "team_a/team_a_analytics", "2026.11.1", None),
    ("oci:/tmp/x", "oci", "/tmp/x", "", None, None),
    (f"oci:/tmp/x@{DIGEST}", "oci", "/tmp/x", "", None, DIGEST),
    (f"oci:d:team_a/x@{DIGEST}", "oci", "d", "team_a/x", None, DIGEST),
    ("s3://bucket/pre/fix:team_a/b:1.0", "s3", "bucket/pre/fix", "team_a/b", "1.0", None),
    ("127.0.0.1:5000/team_a/b:1.0", "registry", "127.0.0.1:5000", "team_a/b", "1.0", None),
    (f"localhost:5000/a/b@{DIGEST}", "registry", "localhost:5000", "a/b", None, DIGEST),
    ("registry.acme.io/airflow/team_a/x", "registry", "registry.acme.io", "airflow/team_a/x", None, None),
])
def test_parse_and_round_trip(text, kind, location, repo, tag, digest):
    ref = parse_reference(text)
    assert (ref.kind, ref.location, ref.repository, ref.tag, ref.digest) == (kind, location, repo, tag, digest)
    assert str(ref) == text


@pytest.mark.parametrize("text", ["", "foo", "oci:", "ftp://x/y", "127.0.0.1:5000/Team/b",
                                  "oci:x:a/b:t@sha256:zz", "s3://A_B/x", "host.io/repo:bad tag", "host.io/r:" + "t" * 200])
def test_bad_references_are_bad_input(text):
    with pytest.raises(BadInput) as exc:
        parse_reference(text)
    assert exc.value.exit_code == 2


def test_for_bundle_joins_registry_prefix():
    assert str(parse_reference("registry.acme.io/airflow").for_bundle("team_a/x", "1.0")) == "registry.acme.io/airflow/team_a/x:1.0"
    assert str(parse_reference("oci:.dagseal/store").for_bundle("team_a/x", "1.0")) == "oci:.dagseal/store:team_a/x:1.0"


def test_loopback_detection():
    assert parse_reference("127.0.0.1:5000/a/b").is_loopback
    assert parse_reference("localhost:5000/a/b").is_loopback
    assert not parse_reference("registry.acme.io/a/b").is_loopback
