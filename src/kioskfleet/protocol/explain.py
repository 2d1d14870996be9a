"""One line out of a pydantic ``ValidationError``: where, which key, what is allowed.

The agent's configuration, the controller's settings and the firmware profiles are pydantic
models. Whoever fixes a file needs one line that names the file (or environment variable), the
key and what it accepts, not a traceback (CONTRACT §2: such errors exit with code 2):

    agent.toml: telemetry_interval: must be a number from 0.1 to 86400 (got 'fast')

What is allowed comes from the model's JSON schema at the key (its type, range, choices,
pattern), so a new field explains itself; a field can say it in words with
``json_schema_extra={"allowed": ...}``, and a validator's own ``ValueError`` message is used
as it is. Secrets (``SecretStr``) and URL passwords are never echoed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from pydantic import BaseModel, ValidationError
from pydantic.errors import PydanticUserError

from kioskfleet.protocol.devices import DEVICE_KINDS, SLOT_PATTERN
from kioskfleet.protocol.stations import STATION_ID_PATTERN

Loc = tuple[int | str, ...]
#: where the input came from: a fixed name (a file), or one chosen by the key's location
Source = str | Callable[[Loc], str]

#: patterns people know by a name
PATTERN_NAMES: Final[dict[str, str]] = {
    SLOT_PATTERN: f"a slot name: {', '.join(DEVICE_KINDS)} (a second one: printer_2, …)",
    STATION_ID_PATTERN: "a station id: [a-z0-9][a-z0-9-]{2,63}",
}
_PREFIXES: Final = ("Value error, ", "Assertion failed, ")
#: parts of a location pydantic adds for its own schema steps (``function-after[...]``)
_SCHEMA_STEP: Final = re.compile(r"^[a-z][a-z-]*\[.*\]$")
_URL_PASSWORD: Final = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*):[^\s@/]+@", re.IGNORECASE)
_MAX_SHOWN: Final = 80


def explain(
    err: ValidationError,
    *,
    source: Source,
    model: type[BaseModel] | None = None,
    prefix: Loc = (),
    rename: Callable[[Loc], Loc] | None = None,
) -> str:
    """One line for the first problem in ``err`` (and how many more there are).

    Args:
        err: what pydantic found.
        source: the file or variable the input came from, or a function of the key's location
            (``prefix`` included) that names it.
        model: the model that was validated; its schema says what a key allows.
        prefix: the location of the validated input inside its file (``("quirks",)``).
        rename: turns a location in the validated input into one in the file, where they
            differ (a list built from a file's tables: index → table name).
    """
    problems = err.errors(include_url=False)
    first = problems[0]
    raw_loc = tuple(part for part in first["loc"] if not _is_schema_step(part))
    schema = _Schema(model)
    loc = tuple(part for part in raw_loc if part != "[key]")
    loc = prefix + (rename(loc) if rename is not None else loc)
    where = source(loc) if callable(source) else source
    key = _dotted(loc)
    text = f"{where}: {key}: " if key else f"{where}: "
    text += _problem(first, raw_loc, schema)
    if len(problems) > 1:
        more = len(problems) - 1
        text += f" (and {more} more problem{'s' if more > 1 else ''})"
    return one_line(text)


def one_line(text: str) -> str:
    """``text`` on one line, URL passwords masked."""
    return _URL_PASSWORD.sub(r"\1:***@", " ".join(text.split()))


def dotted(loc: Sequence[int | str]) -> str:
    """A location as people write it: ``devices.printer.baudrate``, ``required_devices[1]``."""
    return _dotted(tuple(loc))


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _is_schema_step(part: int | str) -> bool:
    return isinstance(part, str) and part != "[key]" and _SCHEMA_STEP.match(part) is not None


def _problem(error: Mapping[str, Any], loc: Loc, schema: _Schema) -> str:
    kind = error["type"]
    here = schema.at(loc)
    if kind == "missing":
        allowed = _allowed(here)
        return f"missing (required: {allowed})" if allowed else "missing (required)"
    if kind == "extra_forbidden":
        keys = schema.keys(loc[:-1])
        return f"unknown key (allowed: {', '.join(keys)})" if keys else "unknown key"
    # no echo of a secret, nor of the whole input when the problem is not one key's
    got = "" if _is_secret(here) or not loc else f" (got {_show(error.get('input'))})"
    message = str(error["msg"])
    if kind in ("value_error", "assertion_error"):
        for start in _PREFIXES:
            message = message.removeprefix(start)
        return f"{message}{got}"
    allowed = _allowed(here)
    if allowed:
        return f"must be {allowed}{got}"
    return f"{message[:1].lower()}{message[1:]}{got}"


def _show(value: Any) -> str:
    """A value as the file would spell it, shortened."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table" if value else "an empty table"
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def _is_secret(schema: Mapping[str, Any] | None) -> bool:
    return schema is not None and any(
        s.get("format") == "password" or s.get("writeOnly") for s in _branches(schema)
    )


def _branches(schema: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The alternatives of a schema, null left out (TOML has no null)."""
    options = schema.get("anyOf") or schema.get("oneOf")
    if options is None:
        return [schema]
    return [s for s in options if s.get("type") != "null"]


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _allowed(schema: Mapping[str, Any] | None) -> str | None:
    """What a schema accepts, in words (None: nothing useful to say)."""
    if schema is None:
        return None
    if "allowed" in schema:
        return str(schema["allowed"])
    branches = _branches(schema)
    if len(branches) != 1 or branches[0] is not schema:
        words = [w for w in (_allowed(b) for b in branches) if w]
        return " or ".join(dict.fromkeys(words)) or None
    if "enum" in schema:
        return "one of " + ", ".join(_show(v) for v in schema["enum"])
    if "const" in schema:
        return _show(schema["const"])
    kind = schema.get("type")
    if kind in ("integer", "number"):
        noun = "a whole number" if kind == "integer" else "a number"
        return noun + _range(schema)
    if kind == "boolean":
        return "true or false"
    if kind == "string":
        return _string(schema)
    if kind == "object":
        return "a table"
    if kind == "array":
        return "a list"
    return None


def _range(schema: Mapping[str, Any]) -> str:
    low, high = schema.get("minimum"), schema.get("maximum")
    above, below = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if low is not None and high is not None:
        return f" from {_number(low)} to {_number(high)}"
    parts = []
    if low is not None:
        parts.append(f"at least {_number(low)}")
    if above is not None:
        parts.append(f"greater than {_number(above)}")
    if high is not None:
        parts.append(f"at most {_number(high)}")
    if below is not None:
        parts.append(f"less than {_number(below)}")
    return " " + " and ".join(parts) if parts else ""


def _string(schema: Mapping[str, Any]) -> str:
    pattern = schema.get("pattern")
    if pattern is not None:
        return PATTERN_NAMES.get(pattern, f"text matching {pattern}")
    if schema.get("format") == "path":
        return "a path"
    shortest, longest = schema.get("minLength"), schema.get("maxLength")
    noun = "a non-empty string" if shortest == 1 else "a string"
    if shortest is not None and shortest > 1:
        noun += f" of at least {shortest} characters"
    if longest is not None:
        noun += f" of at most {longest} characters"
    return noun


class _Schema:
    """A model's JSON schema, walked by an error's location."""

    def __init__(self, model: type[BaseModel] | None) -> None:
        self.root: Mapping[str, Any] | None = None
        if model is not None:
            try:
                self.root = model.model_json_schema(mode="validation")
            except PydanticUserError:  # a type without a JSON schema: nothing to say then
                self.root = None
        self.defs: Mapping[str, Any] = (self.root or {}).get("$defs", {})

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        while True:
            ref = schema.get("$ref")
            if ref is None and len(schema.get("allOf", ())) == 1:
                ref = schema["allOf"][0].get("$ref")
            if ref is None:
                return schema
            # keep what the field adds beside the reference (its own "allowed")
            extra = {k: v for k, v in schema.items() if k not in ("$ref", "allOf")}
            schema = {**self.defs.get(ref.rsplit("/", 1)[-1], {}), **extra}

    def at(self, loc: Loc) -> Mapping[str, Any] | None:
        schema = self.root
        # (…, KEY, "[key]"): the problem is the key itself, not its value
        steps = [p for i, p in enumerate(loc) if loc[i + 1 : i + 2] != ("[key]",)]
        for part in steps:
            if schema is None:
                return None
            schema = self._step(schema, part)
        if schema is None:
            return None
        schema = self.resolve(schema)
        if "anyOf" in schema:
            schema = {**schema, "anyOf": [self.resolve(b) for b in schema["anyOf"]]}
        return schema

    def _step(self, schema: Mapping[str, Any], part: int | str) -> Mapping[str, Any] | None:
        schema = self.resolve(schema)
        branches = [self.resolve(b) for b in _branches(schema)]
        for branch in branches:
            if part == "[key]":
                patterns = branch.get("patternProperties") or {}
                if patterns:
                    return {"type": "string", "pattern": next(iter(patterns))}
                names = branch.get("propertyNames")
                if names is not None:
                    return dict(names)
                continue
            properties = branch.get("properties") or {}
            if isinstance(part, str) and part in properties:
                return dict(properties[part])
            if isinstance(part, int) and isinstance(branch.get("items"), Mapping):
                return dict(branch["items"])
            if isinstance(part, int) and part < len(branch.get("prefixItems") or ()):
                return dict(branch["prefixItems"][part])
            patterns = branch.get("patternProperties") or {}
            if patterns:
                return dict(next(iter(patterns.values())))
            if isinstance(branch.get("additionalProperties"), Mapping):
                return dict(branch["additionalProperties"])
        return None

    def keys(self, loc: Loc) -> list[str]:
        """The keys the table at ``loc`` allows."""
        schema = self.at(loc)
        if schema is None:
            return []
        keys: list[str] = []
        for branch in _branches(schema):
            properties = self.resolve(branch).get("properties") or {}
            # a read-only field is not written as a key (a device's slot is its table's name)
            keys += [name for name, field in properties.items() if not field.get("readOnly")]
        return sorted(dict.fromkeys(keys))
