"""What every request must be before a handler sees it, and how a refusal reads.

* Text that reaches the database or the event encoder is storable: no NUL (PostgreSQL
  refuses it in text) and no unpaired surrogate (``json.loads`` accepts ``"\\ud800"``,
  but neither UTF-8 nor orjson can encode it).
* JSON values are bounded: nesting at most :data:`MAX_DEPTH`, integers within signed 64
  bits (orjson and both databases' JSON refuse more), floats finite.
* Path ids are short URL-safe tokens.
* A refusal is 400 (the body is not JSON at all) or 422 (it is JSON but not acceptable),
  with a JSON ``detail`` that names where the problem is and never repeats the input.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator

MAX_DEPTH = 32
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# A loc part or message is shown up to this many characters (then "…").
SHOWN_CHARACTERS = 40
MAX_MESSAGE_CHARACTERS = 300

_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(value: str) -> str:
    """``value`` unchanged, or ValueError if it holds a NUL or an unpaired surrogate."""
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    # json.loads joins an escaped surrogate pair into one character: any left is unpaired.
    if not value.isascii() and _SURROGATE.search(value):
        raise ValueError("text must not contain unpaired surrogates")
    return value


class JsonProblem(ValueError):
    """A JSON value that cannot be stored; ``where`` is its place (``a.b[2]``), escaped."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where = where


def check_json(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`JsonProblem` unless ``value`` (as ``json.loads`` made it) is storable.

    Keys and strings pass :func:`check_text`, integers fit in signed 64 bits, floats are
    finite, and no container is nested more than ``max_depth`` deep. Iterative, so a
    hostile nesting cannot exhaust the stack here.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                raise JsonProblem(where, f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    place = f"{where}.{shown(key)}" if where else shown(key)
                    _check_text(key, place)
                    stack.append((child, place, depth + 1))
            else:
                stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))
        elif isinstance(item, str):
            _check_text(item, where)
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise JsonProblem(where, "integer outside the signed 64-bit range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise JsonProblem(where, "number must be finite")
        else:
            raise JsonProblem(where, "not a JSON value")


def _check_text(text: Any, where: str) -> None:
    if not isinstance(text, str):
        raise JsonProblem(where, "not a JSON value")
    try:
        check_text(text)
    except ValueError as exc:
        raise JsonProblem(where, str(exc)) from None


def shown(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """``text`` safe to print in an error: what is not printable (NUL, surrogates, control
    and format characters) escaped as ``repr`` would, and cut at ``limit`` characters."""
    head = text[: limit + 1]
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in head)
    return escaped if len(escaped) <= limit else escaped[:limit] + "…"


def safe_loc(part: str | int) -> str | int:
    """A part of an error's ``loc``: client-chosen keys are escaped and shortened."""
    return part if isinstance(part, int) else shown(part)


# -- path parameters ---------------------------------------------------------------------

Id = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="an id as the API returned it",
    ),
]
PathUsername = Annotated[str, Path(min_length=1, max_length=64), AfterValidator(check_text)]
PathFileName = Annotated[str, Path(min_length=1, max_length=255), AfterValidator(check_text)]


# -- answers -----------------------------------------------------------------------------


async def validation_failed(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's validation errors without ``input`` or ``ctx``: 400 for a body that is not
    JSON at all, otherwise 422 with each error's ``type``, escaped ``loc`` and ``msg``."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return JSONResponse(
            {"detail": "request body is not valid JSON"}, status.HTTP_400_BAD_REQUEST
        )
    detail = [
        {
            "type": str(error.get("type", "value_error")),
            "loc": [safe_loc(part) for part in error.get("loc", ())],
            "msg": shown(str(error.get("msg", "")), MAX_MESSAGE_CHARACTERS),
        }
        for error in errors
    ]
    return JSONResponse({"detail": detail}, status.HTTP_422_UNPROCESSABLE_CONTENT)


def install(app: FastAPI) -> None:
    """Answer every request validation error of ``app`` with :func:`validation_failed`."""
    app.add_exception_handler(RequestValidationError, validation_failed)
