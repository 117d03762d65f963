"""TypeScript declarations of every message, generated from the protocol's JSON Schema.

``static/tidings.d.ts`` holds them between two marker lines, after a hand-written header
and before the declarations of the browser client. ``make types`` (``python -m
tidings.typescript``) rewrites that region from :func:`tidings.schema.json_schema`; a test
fails while the file in the repository differs from what this would write.

Only the JSON Schema constructs that schema uses are translated; anything else raises, so
a new construct is noticed rather than typed ``unknown``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from tidings.schema import json_schema

DTS_PATH = Path(__file__).resolve().parent / "static" / "tidings.d.ts"
BEGIN = "// ---- BEGIN GENERATED from GET /api/protocol/schema (make types); do not edit ----"
END = "// ---- END GENERATED ----"
UNIONS = ("ServerMessage", "ClientMessage")
IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


def declarations(schema: dict[str, Any]) -> str:
    """Every ``$defs`` entry as an exported interface or type: the two message unions,
    their members in union order, then the rest by name."""
    defs: dict[str, Any] = schema["$defs"]
    order: list[str] = list(UNIONS)
    for union in UNIONS:
        order += [_ref_name(branch) for branch in defs[union]["oneOf"]]
    order.append("CustomMessage")
    order += sorted(name for name in defs if name not in order)
    return "\n".join(_declaration(name, defs[name]) for name in order)


def _declaration(name: str, schema: dict[str, Any]) -> str:
    doc = _doc(schema.get("description"), "")
    if "properties" in schema:
        return f"{doc}export interface {name} {_object(schema, '')}\n"
    branches = schema.get("oneOf")
    if branches and any("description" in b for b in branches):
        lines = [f"{doc}export type {name} ="]
        for branch in branches:
            about = ": ".join(x for x in (branch.get("title"), branch.get("description")) if x)
            lines.append(_doc(about, "  ") + f"  | {_type(branch)}")
        return "\n".join(lines) + ";\n"
    body = _type(schema)
    if len(body) > 80 and " | " in body and "{" not in body:
        members = "".join(f"\n  | {member}" for member in body.split(" | "))
        return f"{doc}export type {name} ={members};\n"
    return f"{doc}export type {name} = {body};\n"


def _object(schema: dict[str, Any], indent: str) -> str:
    required = set(schema.get("required", ()))
    inner = indent + "  "
    lines = ["{"]
    for prop, sub in schema["properties"].items():
        key = prop if IDENTIFIER.fullmatch(prop) else json.dumps(prop)
        optional = "" if prop in required else "?"
        lines.append(
            f"{_doc(sub.get('description'), inner)}{inner}{key}{optional}: {_type(sub, inner)};"
        )
    lines.append(indent + "}")
    return "\n".join(lines)


def _type(schema: dict[str, Any], indent: str = "") -> str:
    if "$ref" in schema:
        return _ref_name(schema)
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " | ".join(json.dumps(value) for value in schema["enum"])
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return _union([_type(branch, indent) for branch in schema[key]])
    kind = schema.get("type")
    if kind == "string" and "pattern" in schema:
        return _template(schema["pattern"])
    if isinstance(kind, list):
        return _union([_type({**schema, "type": k}, indent) for k in kind])
    if kind in _SCALARS:
        return _SCALARS[kind]
    if kind == "array":
        item = _type(schema.get("items", {}), indent)
        return f"({item})[]" if " " in item else f"{item}[]"
    if kind == "object":
        if "properties" in schema:
            return _object(schema, indent)
        values = schema.get("additionalProperties", True)
        return f"Record<string, {'unknown' if values is True else _type(values, indent)}>"
    if kind is None and not set(schema) - _ANNOTATIONS:
        return "unknown"  # any JSON value
    raise ValueError(f"no TypeScript translation for the schema {schema!r}")


_SCALARS = {
    "string": "string",
    "integer": "number",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
}
_ANNOTATIONS = {"description", "title", "default", "examples"}


PREFIXED = re.compile(r"\^([a-z]+)\\\.[^`$]*\$")


def _template(pattern: str) -> str:
    """A string pattern the schema uses: a fixed prefix and a dot, then a name
    (``^custom\\.…$``), as a template literal type; any other pattern is plain ``string``
    (TypeScript has no regular-expression types)."""
    match = PREFIXED.fullmatch(pattern)
    return f"`{match.group(1)}.${{string}}`" if match else "string"


def _union(members: list[str]) -> str:
    unique = list(dict.fromkeys(members))
    if "unknown" in unique:
        return "unknown"
    return " | ".join(unique)


def _ref_name(schema: dict[str, Any]) -> str:
    ref: str = schema["$ref"]
    if not ref.startswith("#/$defs/"):
        raise ValueError(f"only local references are supported, not {ref!r}")
    return ref.removeprefix("#/$defs/")


def _doc(text: str | None, indent: str) -> str:
    if not text:
        return ""
    lines = text.replace("*/", "*\\/").splitlines()
    if len(lines) == 1:
        return f"{indent}/** {lines[0]} */\n"
    body = "".join(f"{indent} * {line}".rstrip() + "\n" for line in lines)
    return f"{indent}/**\n{body}{indent} */\n"


def render(current: str, schema: dict[str, Any]) -> str:
    """``current`` (the text of a ``.d.ts``) with its generated region rewritten."""
    start = current.find(BEGIN)
    stop = current.find(END)
    if start < 0 or stop < start:
        raise ValueError(f"the markers {BEGIN!r} and {END!r} are missing")
    body = declarations(schema)
    return current[: start + len(BEGIN)] + "\n\n" + body + "\n" + current[stop:]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the generated region of ``tidings.d.ts`` (or of the file given)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DTS_PATH
    text = path.read_text()
    updated = render(text, json_schema())
    if updated != text:
        path.write_text(updated)
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
