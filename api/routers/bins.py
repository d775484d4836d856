"""Bin statistics for the city-management office: per bin id, how often and how long it overflowed and how
long from an event's open to the station being clean again (the pipeline's auto-resolve), over a period.

An episode is one ``bin_overflow`` event whose station holds the bin (``bin_ids``); it counts in a period when
it overlaps it, and its overflow time is clipped to the period. Events marked false alarm are counted apart
and left out of the figures. ``opened_at`` is when the event opened (its first message), ``ended_at`` when
the station was clean again (``clear_s`` of clean observations).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import or_, select

from api.errors import Unprocessable
from api.runtime import RuntimeDep
from api.store import Scope, _scope_clauses, events_t, messages_t

from .common import Staff

router = APIRouter(prefix="/api", tags=["bins"])
BinId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^/\x00-\x1f]+$")]
MAX_PERIOD = timedelta(days=366)
CSV_COLUMNS = (
    "bin_id",
    "camera_id",
    "zone_id",
    "episodes",
    "open_now",
    "false_alarms",
    "overflow_s_total",
    "overflow_s_mean",
    "overflow_s_max",
    "open_to_cleared_s_mean",
    "open_to_cleared_s_max",
)


class Episode(BaseModel):
    event_id: str
    camera_id: str
    zone_id: str | None
    started_at: datetime
    opened_at: datetime
    ended_at: datetime | None
    overflow_s: float  # within the period
    open_to_cleared_s: float | None
    severity: int | None
    disposition: str


class BinStats(BaseModel):
    bin_id: str
    since: datetime
    until: datetime
    episodes: int
    open_now: int
    false_alarms: int
    overflow_s_total: float
    overflow_s_mean: float | None
    overflow_s_max: float | None
    open_to_cleared_s_mean: float | None
    open_to_cleared_s_max: float | None
    items: list[Episode]


@dataclass
class _Acc:
    episodes: list[Episode] = field(default_factory=list)
    false_alarms: int = 0


def _period(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    for name, v in (("since", since), ("until", until)):
        if v is not None and v.tzinfo is None:
            raise Unprocessable(f"{name} needs a time zone (use Z or +08:00)")
    until = until or datetime.now(UTC)
    since = since or until - timedelta(days=30)
    if since >= until or until - since > MAX_PERIOD:
        raise Unprocessable("since must be before until, at most 366 days apart")
    return since, until


def _ts(s: Any) -> datetime:
    return s if isinstance(s, datetime) else datetime.fromisoformat(str(s).replace("Z", "+00:00"))


def collect(rt: RuntimeDep, scope: Scope, since: datetime, until: datetime) -> dict[str, _Acc]:
    """bin id → its episodes overlapping [since, until), within ``scope``."""
    t, m = events_t, messages_t
    q = select(t.c.id, t.c.camera_id, t.c.zone_id, t.c.started_at, t.c.ended_at, t.c.payload, t.c.disposition)
    q = q.where(
        t.c.type == "bin_overflow",
        t.c.started_at < until,
        or_(t.c.ended_at.is_(None), t.c.ended_at > since),
        *_scope_clauses(scope),
    ).order_by(t.c.started_at, t.c.id)
    now = datetime.now(UTC)
    out: dict[str, _Acc] = {}
    with rt.store._read() as c:
        rows = list(c.execute(q))
        firsts: dict[str, Any] = {}
        ids = [r.id for r in rows]
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            mq = select(m.c.event_id, m.c.payload).where(m.c.event_id.in_(chunk), m.c.seq == 0)
            firsts.update({r.event_id: r.payload for r in c.execute(mq)})
    for r in rows:
        p = dict(r.payload)
        bins = set(p.get("bin_ids") or []) | ({p["bin_id"]} if p.get("bin_id") else set())
        if not bins:
            continue
        first = firsts.get(r.id)
        opened = _ts(first["updated_at"]) if first else r.started_at
        end = r.ended_at
        lo, hi = max(r.started_at, since), min(end or now, until)
        ep = Episode(
            event_id=r.id,
            camera_id=r.camera_id,
            zone_id=r.zone_id,
            started_at=r.started_at,
            opened_at=opened,
            ended_at=end,
            overflow_s=round(max(0.0, (hi - lo).total_seconds()), 1),
            open_to_cleared_s=round(max(0.0, (end - opened).total_seconds()), 1) if end else None,
            severity=p.get("severity"),
            disposition=r.disposition,
        )
        for b in bins:
            acc = out.setdefault(b, _Acc())
            if r.disposition == "false_alarm":
                acc.false_alarms += 1
            else:
                acc.episodes.append(ep)
    return out


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 1) if xs else None


def stats_of(bin_id: str, acc: _Acc, since: datetime, until: datetime) -> BinStats:
    eps = acc.episodes
    over = [e.overflow_s for e in eps]
    cleared = [e.open_to_cleared_s for e in eps if e.open_to_cleared_s is not None]
    return BinStats(
        bin_id=bin_id,
        since=since,
        until=until,
        episodes=len(eps),
        open_now=sum(1 for e in eps if e.ended_at is None),
        false_alarms=acc.false_alarms,
        overflow_s_total=round(sum(over), 1),
        overflow_s_mean=_mean(over),
        overflow_s_max=max(over) if over else None,
        open_to_cleared_s_mean=_mean(cleared),
        open_to_cleared_s_max=max(cleared) if cleared else None,
        items=eps,
    )


def _cell(v: object) -> str:
    s = "" if v is None else str(v)
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s  # no formulas in spreadsheets


def to_csv(stats: Iterable[BinStats]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for s in stats:
        cams = sorted({e.camera_id for e in s.items})
        zones = sorted({e.zone_id or "" for e in s.items})
        row = {**s.model_dump(), "camera_id": " ".join(cams), "zone_id": " ".join(zones)}
        w.writerow([_cell(row[k]) for k in CSV_COLUMNS])
    return buf.getvalue()


@router.get("/bins/stats.csv", response_class=Response)
def bins_csv(
    who: Staff, rt: RuntimeDep, since: datetime | None = None, until: datetime | None = None
) -> Response:
    lo, hi = _period(since, until)
    accs = collect(rt, who.scope, lo, hi)
    body = to_csv(stats_of(b, accs[b], lo, hi) for b in sorted(accs))
    name = f"bins-{lo:%Y%m%d}-{hi:%Y%m%d}.csv"
    return Response(
        "\ufeff" + body,  # BOM: spreadsheets open UTF-8 (Chinese ids) right
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


@router.get("/bins/{bin_id}/stats", response_model=BinStats)
def bin_stats(
    bin_id: BinId, who: Staff, rt: RuntimeDep, since: datetime | None = None, until: datetime | None = None
) -> BinStats:
    lo, hi = _period(since, until)
    acc = collect(rt, who.scope, lo, hi).get(bin_id, _Acc())
    return stats_of(bin_id, acc, lo, hi)
