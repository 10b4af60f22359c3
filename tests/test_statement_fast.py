"""signing/statement.py and signing/dsse.py without pydantic: the plain records refuse exactly what
their pydantic twins (`_schema_models()`, the models they replaced) refuse, at the same field path
with the same message, and `make_statement` writes the same signed bytes it wrote before. If the
records and the twins drift apart, a test here fails."""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from registry.errors import Refused
from signing import dsse, statement
from signing.checked import SchemaError
from signing.dsse import PAYLOAD_TYPE, Envelope, Signature, pae
from signing.sigbundle import parse_bundle
from signing.statement import (PREDICATE_TYPE, Builder, BundlePredicate, Source, make_statement, parse_statement)

REPO = Path(__file__).resolve().parent.parent
A, B, C = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64

# What make_statement wrote with the pydantic models (captured before the rewrite): the signed bytes
# must not change, or every existing signature's statement would read differently.
GOLDEN_FULL = (
    b'{"_type":"https://in-toto.io/Statement/v1","predicate":{"builder":{"id":"https://ci.test/b"},'
    b'"built_at":"2026-11-25T12:00:00Z","bundle":"a_one","expires":"2027-01-02T03:04:05.123456+02:00",'
    b'"lock_digest":"' + B.encode() + b'","source":{"revision":"abc","uri":"https://git.test/r"},'
    b'"spec_digest":"' + A.encode() + b'","team":"team_a","version":"1.2.3"},'
    b'"predicateType":"https://dagseal.dev/attestation/bundle/v1",'
    b'"subject":[{"digest":{"sha256":"' + b"c" * 64 + b'"},"name":"reg.test/team_a/a_one"}]}')
GOLDEN_MINIMAL = (
    b'{"_type":"https://in-toto.io/Statement/v1","predicate":{"builder":{"id":"x"},"built_at":"2026-01-01T00:00:00Z",'
    b'"bundle":"b","lock_digest":"' + B.encode() + b'","source":{"revision":"","uri":""},'
    b'"spec_digest":"' + A.encode() + b'","team":"t\xc3\xa9am","version":"v"},'
    b'"predicateType":"https://dagseal.dev/attestation/bundle/v1",'
    b'"subject":[{"digest":{"sha256":"' + b"d" * 64 + b'"},"name":"r"}]}')


def test_make_statement_writes_the_same_bytes_as_before():
    full = BundlePredicate(team="team_a", bundle="a_one", version="1.2.3", spec_digest=A, lock_digest=B,
                           source=Source(uri="https://git.test/r", revision="abc"),
                           built_at=datetime(2026, 11, 25, 12, tzinfo=timezone.utc),
                           expires=datetime(2027, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2))),
                           builder=Builder(id="https://ci.test/b"))
    minimal = BundlePredicate(team="téam", bundle="b", version="v", spec_digest=A, lock_digest=B,
                              built_at=datetime(2026, 1, 1, tzinfo=timezone.utc), builder=Builder(id="x"))
    assert make_statement("reg.test/team_a/a_one", C, full) == GOLDEN_FULL
    assert make_statement("r", "sha256:" + "d" * 64, minimal) == GOLDEN_MINIMAL
    assert parse_statement(GOLDEN_FULL).bundle_predicate() == full


def predicate() -> dict:
    return {"team": "team_a", "bundle": "a_one", "version": "1", "spec_digest": A, "lock_digest": B,
            "source": {"uri": "u", "revision": "r"}, "built_at": "2026-11-25T12:00:00Z",
            "expires": "2027-11-25T12:00:00+01:00", "builder": {"id": "ci"}}


PREDICATE_SAMPLES = [
    ("valid", lambda d: None),
    ("no_source_no_expires", lambda d: (d.pop("source"), d.pop("expires"))),
    ("expires_null", lambda d: d.update(expires=None)),
    ("offset_zero_spelled_out", lambda d: d.update(built_at="2026-11-25T12:00:00+00:00")),
    ("microseconds", lambda d: d.update(built_at="2026-11-25T12:00:00.5Z")),
    ("extra", lambda d: d.update(extra=1)),
    ("team_missing", lambda d: d.pop("team")),
    ("team_empty", lambda d: d.update(team="")),
    ("team_int", lambda d: d.update(team=5)),
    ("team_too_long", lambda d: d.update(team="x" * 4097)),
    ("version_list", lambda d: d.update(version=["1"])),
    ("spec_digest_bad", lambda d: d.update(spec_digest="sha256:xyz")),
    ("spec_digest_newline", lambda d: d.update(spec_digest=A + "\n")),
    ("lock_digest_int", lambda d: d.update(lock_digest=1)),
    ("source_null", lambda d: d.update(source=None)),
    ("source_string", lambda d: d.update(source="git")),
    ("source_extra", lambda d: d["source"].update(branch="main")),
    ("source_uri_int", lambda d: d["source"].update(uri=1)),
    ("builder_missing", lambda d: d.pop("builder")),
    ("builder_empty_id", lambda d: d.update(builder={"id": ""})),
    ("builder_extra", lambda d: d.update(builder={"id": "x", "y": 1})),
    ("builder_list", lambda d: d.update(builder=[])),
    ("built_at_missing", lambda d: d.pop("built_at")),
    ("built_at_naive", lambda d: d.update(built_at="2026-11-25T12:00:00")),
    ("expires_naive", lambda d: d.update(expires="2027-11-25T12:00:00")),
    ("several", lambda d: d.update(team="", extra=1, builder=None)),
    ("missing_and_bad", lambda d: (d.pop("team"), d.update(bundle=3))),
]
# Where the records are deliberately stricter or word a message differently, and why.
TIME_SAMPLES = [  # pydantic's message names its own parser's complaint; the records name ISO 8601
    ("built_at_garbage", lambda d: d.update(built_at="yesterday")),
    ("expires_list", lambda d: d.update(expires=[])),
    ("built_at_bool", lambda d: d.update(built_at=True)),
]
TIMESTAMP_SAMPLES = [  # pydantic read a bare number as a Unix time; a signed time is an ISO 8601 string
    ("built_at_int", lambda d: d.update(built_at=1764072000)),
    ("expires_float", lambda d: d.update(expires=1764072000.5)),
]


def mutated(base, mutate) -> dict:
    doc = copy.deepcopy(base)
    mutate(doc)
    return doc


def first_error(parse, doc):
    """(loc, msg) of the first problem, or the parsed value."""
    try:
        return parse(doc)
    except (SchemaError, ValidationError) as exc:
        first = exc.errors()[0]
        return tuple(first["loc"]), first["msg"]


def as_json(value):
    return value.to_json_dict() if isinstance(value, BundlePredicate) else value.model_dump(mode="json",
                                                                                           exclude_none=True)


@pytest.mark.parametrize("name, mutate", PREDICATE_SAMPLES, ids=[s[0] for s in PREDICATE_SAMPLES])
def test_predicate_records_and_twin_agree(name, mutate):
    doc = mutated(predicate(), mutate)
    fast = first_error(BundlePredicate.from_dict, doc)
    twin = first_error(statement._schema_models()["BundlePredicate"].model_validate, doc)
    if isinstance(twin, tuple):
        assert fast == twin
    else:
        assert as_json(fast) == as_json(twin)
        assert make_statement("r", C, fast) == make_statement("r", C, twin.model_dump(mode="json", exclude_none=True))


@pytest.mark.parametrize("name, mutate", TIME_SAMPLES + TIMESTAMP_SAMPLES,
                         ids=[s[0] for s in TIME_SAMPLES + TIMESTAMP_SAMPLES])
def test_times_are_iso_strings_at_the_same_field(name, mutate):
    doc = mutated(predicate(), mutate)
    loc, msg = first_error(BundlePredicate.from_dict, doc)
    twin = first_error(statement._schema_models()["BundlePredicate"].model_validate, doc)
    if (name, mutate) in TIME_SAMPLES:
        assert twin[0] == loc
    else:
        assert not isinstance(twin, tuple), "pydantic took a number for a time"
    assert msg.startswith("Input should be a valid datetime")


def statement_doc() -> dict:
    return {"_type": "https://in-toto.io/Statement/v1", "subject": [{"name": "r", "digest": {"sha256": "c" * 64}}],
            "predicateType": PREDICATE_TYPE, "predicate": predicate()}


STATEMENT_SAMPLES = [
    ("valid", lambda d: None),
    ("extra_ignored", lambda d: d.update(extra=1)),
    ("by_field_names", lambda d: d.update(type=d.pop("_type"), predicate_type=d.pop("predicateType"))),
    ("type_missing", lambda d: d.pop("_type")),
    ("type_int", lambda d: d.update(_type=1)),
    ("subject_missing", lambda d: d.pop("subject")),
    ("subject_empty", lambda d: d.update(subject=[])),
    ("subject_object", lambda d: d.update(subject={})),
    ("subject_string_item", lambda d: d["subject"].append("x")),
    ("subject_no_name", lambda d: d["subject"][0].pop("name")),
    ("subject_extra_ignored", lambda d: d["subject"][0].update(uri="x")),
    ("digest_list", lambda d: d["subject"][0].update(digest=[])),
    ("digest_value_int", lambda d: d["subject"][0]["digest"].update(sha512=5)),
    ("predicate_type_missing", lambda d: d.pop("predicateType")),
    ("predicate_list", lambda d: d.update(predicate=[])),
    ("predicate_null", lambda d: d.update(predicate=None)),
]


def statement_json(value) -> dict:
    return {"type": value.type, "predicate_type": value.predicate_type, "predicate": value.predicate,
            "subject": [{"name": s.name, "digest": s.digest} for s in value.subject]}


@pytest.mark.parametrize("name, mutate", STATEMENT_SAMPLES, ids=[s[0] for s in STATEMENT_SAMPLES])
def test_statement_records_and_twin_agree(name, mutate):
    doc = mutated(statement_doc(), mutate)
    fast = first_error(statement.Statement.from_dict, doc)
    twin = first_error(statement._schema_models()["Statement"].model_validate, doc)
    assert isinstance(fast, tuple) == isinstance(twin, tuple)
    assert fast == twin if isinstance(twin, tuple) else statement_json(fast) == statement_json(twin)


def envelope_doc() -> dict:
    return {"payload": base64.b64encode(b"{}").decode(), "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": "AA==", "keyid": "k"}]}


ENVELOPE_SAMPLES = [
    ("valid", lambda d: None),
    ("no_keyid", lambda d: d["signatures"][0].pop("keyid")),
    ("extra_ignored", lambda d: (d.update(x=1), d["signatures"][0].update(y=2))),
    ("by_field_name", lambda d: d.update(payload_type=d.pop("payloadType"))),
    ("payload_missing", lambda d: d.pop("payload")),
    ("payload_int", lambda d: d.update(payload=1)),
    ("payload_too_big", lambda d: d.update(payload="A" * (dsse.MAX_PAYLOAD_BYTES * 2 + 1))),
    ("type_null", lambda d: d.update(payloadType=None)),
    ("signatures_missing", lambda d: d.pop("signatures")),
    ("signatures_empty", lambda d: d.update(signatures=[])),
    ("signatures_object", lambda d: d.update(signatures={})),
    ("signatures_17", lambda d: d.update(signatures=[{"sig": "AA=="}] * 17)),
    ("signature_string", lambda d: d.update(signatures=["AA=="])),
    ("signature_no_sig", lambda d: d.update(signatures=[{"keyid": "k"}])),
    ("signature_sig_int", lambda d: d.update(signatures=[{"sig": 1}])),
    ("keyid_null", lambda d: d["signatures"][0].update(keyid=None)),
]


@pytest.mark.parametrize("name, mutate", ENVELOPE_SAMPLES, ids=[s[0] for s in ENVELOPE_SAMPLES])
def test_envelope_records_and_twin_agree(name, mutate):
    doc = mutated(envelope_doc(), mutate)
    fast = first_error(Envelope.from_dict, doc)
    twin = first_error(dsse._schema_models()["Envelope"].model_validate, doc)
    assert isinstance(fast, tuple) == isinstance(twin, tuple)
    assert fast == twin if isinstance(twin, tuple) else fast.to_json_dict() == twin.model_dump(by_alias=True,
                                                                                                mode="json")


def test_records_built_in_python_check_like_parsed_ones():
    """preflight builds a predicate in Python; a bad value there is refused as it was by pydantic."""
    good = dict(team="t", bundle="b", version="v", spec_digest=A, lock_digest=B,
                built_at=datetime(2026, 1, 1, tzinfo=timezone.utc), builder=Builder(id="x"))
    assert BundlePredicate(**good).source == Source()
    for field, value, where in [("spec_digest", "md5:x", "spec_digest"), ("team", "", "team"),
                                ("built_at", datetime(2026, 1, 1), "built_at"), ("builder", "x", "builder")]:
        with pytest.raises(ValueError, match=where):
            BundlePredicate(**{**good, field: value})
    with pytest.raises(ValueError, match="signatures"):
        Envelope(payload="", payload_type=PAYLOAD_TYPE, signatures=[])
    with pytest.raises(ValueError, match="sig"):
        Signature(sig=b"AA==")


def test_envelope_round_trips_and_pae_is_over_the_type():
    env = Envelope.create(b'{"a":1}', b"\x01\x02", keyid="k")
    again = Envelope.from_dict(env.to_json_dict())
    assert again == env and again.payload_bytes == b'{"a":1}' and again.signatures[0].raw == b"\x01\x02"
    assert again.pae() == pae(PAYLOAD_TYPE, b'{"a":1}') == b"DSSEv1 28 application/vnd.in-toto+json 7 {\"a\":1}"


@pytest.mark.parametrize("mutate, detail", [
    (lambda p: p.update(built_at=1764072000), "predicate.built_at: Input should be a valid datetime"),
    (lambda p: p.update(expires="2027-01-01T00:00:00"), "predicate.expires: Value error, time must carry a timezone"),
    (lambda p: p["source"].update(branch="x"), "predicate.source.branch: Extra inputs are not permitted"),
])
def test_verifier_refuses_malformed_predicates_naming_the_field(mutate, detail):
    doc = statement_doc()
    mutate(doc["predicate"])
    parsed = parse_statement(json.dumps(doc).encode())
    with pytest.raises(Refused) as exc:
        parsed.bundle_predicate()
    assert exc.value.check == "statement" and detail in exc.value.message


def test_sigbundle_refuses_a_malformed_envelope_naming_the_field():
    doc = {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": {"publicKey": {}},
           "dsseEnvelope": {**envelope_doc(), "signatures": [{"sig": 7}]}}
    with pytest.raises(Refused) as exc:
        parse_bundle(json.dumps(doc).encode())
    assert exc.value.check == "signature" and "DSSE envelope is malformed at signatures.0.sig" in exc.value.message


def test_parsing_and_checking_a_statement_imports_no_pydantic():
    code = ("import sys, json\n"
            "from signing.statement import parse_statement\n"
            "from signing.sigbundle import parse_bundle\n"
            f"s = parse_statement(json.dumps({statement_doc()!r}).encode())\n"
            "print(s.bundle_predicate().team, sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["team_a", "[]"]
