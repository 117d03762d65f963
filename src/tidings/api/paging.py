"""Pages of a listing (``GET …/files``, ``GET …/processes``, ``GET …/events``): the same
query parameters, and offset pages answered alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Query
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.models import Base

Row = TypeVar("Row", bound=Base)

Limit = Annotated[int, Query(ge=1, le=1000)]
"""The ``limit`` query parameter: items a page holds at most (default it to 100)."""
Offset = Annotated[int, Query(ge=0)]
"""The ``offset`` query parameter: items before the page (default it to 0)."""


async def page(
    session: AsyncSession,
    model: type[Row],
    where: Sequence[ColumnElement[bool]],
    order_by: Sequence[Any],
    limit: int,
    offset: int,
    out: Callable[[Row], dict[str, Any]],
) -> dict[str, Any]:
    """The rows of ``model`` matching ``where``, in ``order_by`` order, from ``offset``:
    ``items`` (each through ``out``), the ``total`` that match, and ``next_offset`` (None
    on the last page). ``order_by`` must make the order total, or pages may overlap."""
    total = await session.scalar(select(func.count()).select_from(model).where(*where)) or 0
    rows = await session.scalars(
        select(model).where(*where).order_by(*order_by).limit(limit).offset(offset)
    )
    items = [out(row) for row in rows]
    next_offset = offset + len(items) if offset + len(items) < total else None
    return {"items": items, "total": total, "next_offset": next_offset}
