"""Every parser of hostile JSON (manifests, signed statements, signature bundles) refuses the same
malformed inputs, each under its own check name, through one entry point (load_json_object)."""

import pytest

from registry.errors import Refused
from registry.model import parse_content
from signing.sigbundle import parse_bundle
from signing.statement import parse_statement

PARSERS = [(parse_content, "manifest-format"), (parse_statement, "statement"), (parse_bundle, "signature")]
BAD = [
    (b"{", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"a": 1, "a": 2}', "duplicate JSON key"),
    (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    (b" " * (8 * 1024 * 1024) + b"{}", "more than the"),
]


@pytest.mark.parametrize("parse,check", PARSERS, ids=[c for _, c in PARSERS])
@pytest.mark.parametrize("data,words", BAD, ids=["invalid", "not-object", "duplicate-key", "deep", "oversized"])
def test_malformed_json_is_refused_with_the_parsers_own_check(parse, check, data, words):
    with pytest.raises(Refused) as exc:
        parse(data)
    assert exc.value.check == check
    assert words in exc.value.message
