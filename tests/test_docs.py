"""The documented protocol (tables and message examples) matches what the server and
clients use."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from tidings import Settings
from tidings.codes import CLOSE_CODES, ERROR_CODES
from tidings.schema import CLIENT_MESSAGES, CUSTOM_PREFIX, SERVER_MESSAGES, strict_schema

PROTOCOL_MD = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()


def test_every_close_code_is_documented_with_its_name_and_advice() -> None:
    for code, info in CLOSE_CODES.items():
        row = re.search(rf"^\| {int(code)} \| (\w+) \|.*\| (yes|no) \|$", PROTOCOL_MD, re.M)
        assert row, f"close code {int(code)} missing from docs/protocol.md"
        assert row.group(1) == info.name
        assert row.group(2) == ("yes" if info.reconnect else "no")


def test_every_error_code_is_documented() -> None:
    for code in ERROR_CODES:
        assert re.search(rf"^\| `{code}` \|", PROTOCOL_MD, re.M), code


def examples() -> list[dict[str, Any]]:
    """Every JSON example of docs/protocol.md (each must parse)."""
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", PROTOCOL_MD, re.S)]


def test_every_message_is_shown_with_every_field() -> None:
    """Each message type of the schema has an example, the examples of a type show all its
    fields between them, and no example shows a field the schema does not declare (``"…"``
    stands for fields left out). Examples that leave nothing out must be valid messages."""
    schema = strict_schema()
    defs = schema["$defs"]
    mapping = {
        kind: ref
        for union in ("ServerMessage", "ClientMessage")
        for kind, ref in defs[union]["discriminator"]["mapping"].items()
    }
    assert set(mapping) == set(SERVER_MESSAGES) | set(CLIENT_MESSAGES)
    mapping[CUSTOM] = "#/$defs/CustomMessage"  # the family of published types
    shown: dict[str, set[str]] = {}
    for example in examples():
        kind = example.get("type")
        if isinstance(kind, str) and kind.startswith(CUSTOM_PREFIX):
            kind = CUSTOM
        assert kind in mapping, f"an example of an undeclared message type: {example}"
        _declared(example, _definition(defs, mapping[kind]), defs, kind)
        shown.setdefault(kind, set()).update(example)
        if not _elides(example):
            check = jsonschema.Draft202012Validator({**schema, "$ref": mapping[kind]})
            assert not [e.message for e in check.iter_errors(example)], example
    for kind, ref in mapping.items():
        assert kind in shown, f"docs/protocol.md has no example of {kind}"
        missing = set(_definition(defs, ref)["properties"]) - shown[kind]
        assert not missing, f"no example of {kind} shows {sorted(missing)}"


def _definition(defs: dict[str, Any], ref: str) -> dict[str, Any]:
    return dict(defs[ref.removeprefix("#/$defs/")])


def _declared(
    value: dict[str, Any], definition: dict[str, Any], defs: dict[str, Any], at: str
) -> None:
    properties = definition["properties"]
    for key, item in value.items():
        if key == ELIDED:
            continue
        assert key in properties, f"{at}.{key} is shown but not declared"
        declared = properties[key]
        if "$ref" in declared.get("items", {}) and isinstance(item, list):
            nested = _definition(defs, declared["items"]["$ref"])
            for entry in item:
                _declared(entry, nested, defs, f"{at}.{key}[]")
        if "$ref" in declared and isinstance(item, dict):
            nested = _definition(defs, declared["$ref"])
            _declared(item, nested, defs, f"{at}.{key}")


def _elides(value: Any) -> bool:
    if isinstance(value, dict):
        return ELIDED in value or any(_elides(v) for v in value.values())
    if isinstance(value, list):
        return any(_elides(v) for v in value)
    return False


ELIDED = "…"
CUSTOM = "custom.*"


def test_every_setting_is_in_the_readme() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    missing = [name for name in Settings.model_fields if f"`TIDINGS_{name.upper()}`" not in readme]
    assert not missing, f"settings missing from the README's table: {missing}"
