"""Grid management (网格化管理): events counted per grid, at any prefix of the grid path.

``GET /api/grid/summary?prefix=fangshan/xilu`` gives, for each next-level child of the prefix (street →
communities → unit grids), the events by type and pipeline state (open/update/closed) and by disposition, and
how many are *open too long*: still going on (state not closed), not resolved or marked false alarm, and
started more than ``older_than_s`` ago. ``open_too_long`` also lists each full grid path with such events.
Everything is within the caller's scope (cameras and grid prefixes): other grids are not even named.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import func, or_, select

from api.errors import Unprocessable
from api.runtime import RuntimeDep
from api.store import _scope_clauses, events_t

from .common import Staff

router = APIRouter(prefix="/api", tags=["grid"])
GRID_PREFIX = r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$"
HERE = "."  # events placed exactly at the prefix (not in a child grid)
NO_GRID = "-"  # events without a grid (only at the top level)
UNFINISHED = ("new", "acknowledged", "dispatched")


class GridCounts(BaseModel):
    grid: str  # the child's full path ("." = the prefix itself, "-" = no grid)
    total: int = 0
    by_type: dict[str, dict[str, int]] = {}  # type -> state -> count
    by_disposition: dict[str, int] = {}
    open_too_long: int = 0


class OpenTooLong(BaseModel):
    grid: str
    count: int


class GridSummary(BaseModel):
    prefix: str
    since: datetime | None
    until: datetime | None
    older_than_s: float
    total: GridCounts
    children: list[GridCounts]
    open_too_long: list[OpenTooLong]


def child_of(prefix: str, grid: str | None) -> str:
    if grid is None:
        return NO_GRID
    if not prefix:
        return grid.split("/", 1)[0]
    if grid == prefix:
        return HERE
    return prefix + "/" + grid[len(prefix) + 1 :].split("/", 1)[0]


def _add(into: GridCounts, type_: str, state: str, disposition: str, n: int) -> None:
    into.total += n
    states = into.by_type.setdefault(type_, {})
    states[state] = states.get(state, 0) + n
    into.by_disposition[disposition] = into.by_disposition.get(disposition, 0) + n


@router.get("/grid/summary", response_model=GridSummary)
def grid_summary(
    who: Staff,
    rt: RuntimeDep,
    prefix: Annotated[str, Query(max_length=520, pattern=GRID_PREFIX)] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    older_than_s: Annotated[float, Query(gt=0, le=365 * 86400)] = 3600.0,
) -> GridSummary:
    for name, v in (("since", since), ("until", until)):
        if v is not None and v.tzinfo is None:
            raise Unprocessable(f"{name} needs a time zone (use Z or +08:00)")
    t = events_t
    where = _scope_clauses(who.scope)
    p = prefix or ""
    if p:
        where.append(or_(t.c.grid == p, t.c.grid.startswith(p + "/", autoescape=True)))
    if since is not None:
        where.append(t.c.started_at >= since)
    if until is not None:
        where.append(t.c.started_at < until)
    n = func.count().label("n")
    counts_q = select(t.c.grid, t.c.type, t.c.state, t.c.disposition, n).where(*where)
    counts_q = counts_q.group_by(t.c.grid, t.c.type, t.c.state, t.c.disposition)
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    late_q = (
        select(t.c.grid, n)
        .where(*where, t.c.state != "closed", t.c.disposition.in_(UNFINISHED), t.c.started_at < cutoff)
        .group_by(t.c.grid)
    )
    with rt.store._read() as c:
        counts = list(c.execute(counts_q))
        late = list(c.execute(late_q))
    total = GridCounts(grid=p or HERE)
    children: dict[str, GridCounts] = {}
    for r in counts:
        key = child_of(p, r.grid)
        child = children.setdefault(key, GridCounts(grid=key))
        _add(child, r.type, r.state, r.disposition, r.n)
        _add(total, r.type, r.state, r.disposition, r.n)
    for r in late:
        key = child_of(p, r.grid)
        children.setdefault(key, GridCounts(grid=key)).open_too_long += r.n
        total.open_too_long += r.n
    return GridSummary(
        prefix=p,
        since=since,
        until=until,
        older_than_s=older_than_s,
        total=total,
        children=[children[k] for k in sorted(children)],
        open_too_long=sorted(
            (OpenTooLong(grid=r.grid or NO_GRID, count=r.n) for r in late), key=lambda o: (-o.count, o.grid)
        ),
    )
