"""Plain checked records for hostile JSON on the `dagseal run` path, without importing pydantic.

Statements and DSSE envelopes are parsed on every start; pydantic's import and model building
cost most of a warm start. These helpers check a JSON object field by field in declaration order
and raise the first problem in pydantic's shape (`loc`, `msg`, the same messages), never coercing
(5 is not "5", true is not 1). The drift tests run the same samples through pydantic twins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

Check = Callable[[Any, tuple], Any]
_MISSING = object()
HAS_DEFAULT = object()  # the field may be absent; the record's own default applies


class SchemaError(ValueError):
    """The first problem found in a hostile object; `errors()` has pydantic's ValidationError shape."""

    def __init__(self, loc: tuple, msg: str):
        self.loc, self.msg = tuple(loc), msg
        super().__init__(f"{self.where}: {msg}")

    @property
    def where(self) -> str:
        return ".".join(map(str, self.loc))

    def errors(self) -> list[dict[str, Any]]:
        return [{"loc": self.loc, "msg": self.msg}]


@dataclass(frozen=True)
class Field:
    """One field: its name, the JSON key it is read from (the name is accepted too), its check."""

    name: str
    check: Check
    default: Any = _MISSING
    alias: str | None = None

    @property
    def key(self) -> str:
        return self.alias or self.name


def text(*, min_length: int = 0, max_length: int | None = None) -> Check:
    def check(v: Any, loc: tuple) -> str:
        if not isinstance(v, str):
            raise SchemaError(loc, "Input should be a valid string")
        if len(v) < min_length:
            raise SchemaError(loc, f"String should have at least {min_length} character{'s' if min_length > 1 else ''}")
        if max_length is not None and len(v) > max_length:
            raise SchemaError(loc, f"String should have at most {max_length} characters")
        return v
    return check


def optional(inner: Check) -> Check:
    return lambda v, loc: None if v is None else inner(v, loc)


def json_object(v: Any, loc: tuple) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise SchemaError(loc, "Input should be a valid dictionary")
    return v


def str_dict(v: Any, loc: tuple) -> dict[str, str]:
    """dict[str, str]: every value a string (JSON keys always are)."""
    for key, value in json_object(v, loc).items():
        if not isinstance(value, str):
            raise SchemaError(loc + (key,), "Input should be a valid string")
    return dict(v)


def list_of(item: Check, *, min_length: int = 0, max_length: int | None = None) -> Check:
    def check(v: Any, loc: tuple) -> list[Any]:
        if not isinstance(v, list):
            raise SchemaError(loc, "Input should be a valid list")
        if max_length is not None and len(v) > max_length:
            raise SchemaError(loc, f"List should have at most {max_length} item{'s' if max_length > 1 else ''} "
                                   f"after validation, not {len(v)}")
        items = [item(x, loc + (i,)) for i, x in enumerate(v)]
        if len(items) < min_length:
            raise SchemaError(loc, f"List should have at least {min_length} item{'s' if min_length > 1 else ''} "
                                   f"after validation, not {len(items)}")
        return items
    return check


def read_fields(doc: Any, fields: tuple[Field, ...], loc: tuple, model: str, *, forbid_extra: bool) -> dict[str, Any]:
    """The checked values of `doc` by field name; unknown keys are refused or ignored."""
    if not isinstance(doc, dict):
        raise SchemaError(loc, f"Input should be a valid dictionary or instance of {model}")
    values: dict[str, Any] = {}
    for f in fields:
        key = f.key if f.key in doc else f.name
        raw = doc.get(key, _MISSING)
        if raw is _MISSING:
            if f.default is _MISSING:
                raise SchemaError(loc + (f.key,), "Field required")
            continue
        values[f.name] = f.check(raw, loc + (key,))
    if forbid_extra:
        known = {f.key for f in fields} | {f.name for f in fields}
        for key in doc:
            if key not in known:
                raise SchemaError(loc + (key,), "Extra inputs are not permitted")
    return values


def recheck(obj: Any, fields: tuple[Field, ...]) -> None:
    """Check a record built in Python (as pydantic did on construction), storing converted values."""
    for f in fields:
        value = getattr(obj, f.name)
        if value is None and f.default is None:
            continue
        object.__setattr__(obj, f.name, f.check(value, (f.key,)))
