"""SLA escalation: an event still ``new`` (unacknowledged) longer than its type's limit is escalated.

Config (cameras.yaml, under ``api``)::

    sla:
      illegal_parking: {ack_within_s: 300}
      bin_overflow: {ack_within_s: 1800}

A background task of the app (every ``sla_check_s``) marks such events once: ``events.escalated_at`` is set,
an audit entry (actor ``sla``, action ``escalate``) is written, and the event is pushed on the live feed
(``event: escalation``, ``{event, sla, entry}``) and so on MQTT (``<prefix>/escalations`` and an ``update`` on
``<prefix>/events``). The clock starts when the API first stored the event, or at its last reopen.
An escalated event keeps its mark (and badge) whatever happens to it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from starlette.concurrency import run_in_threadpool

from api.routers.common import audit_public, event_meta, event_public
from api.runtime import Runtime
from api.store import EventView, audit_t, events_t

log = logging.getLogger("pingan.api.sla")
ACTOR = "sla"
BATCH = 200


@dataclass(frozen=True)
class Escalation:
    view: EventView
    ack_within_s: float
    entry: dict[str, Any]


def escalate_due(rt: Runtime, now: datetime | None = None) -> list[Escalation]:
    """Escalate every event past its limit (at most ``BATCH`` per type and round). Safe for several replicas:
    an event is marked by one update that only matches while it is unmarked and still new."""
    now = now or datetime.now(UTC)
    out: list[Escalation] = []
    store = rt.store
    for type_, rule in sorted(rt.settings.sla.items()):
        cutoff = now - timedelta(seconds=rule.ack_within_s)
        since = func.coalesce(events_t.c.disposition_at, events_t.c.created_at)
        q = (
            select(events_t.c.id)
            .where(
                events_t.c.type == type_,
                events_t.c.disposition == "new",
                events_t.c.escalated_at.is_(None),
                since < cutoff,
            )
            .order_by(events_t.c.created_at)
            .limit(BATCH)
        )
        with store._read() as c:
            ids = [r.id for r in c.execute(q)]
        for eid in ids:
            with store._write() as c:
                done = c.execute(
                    update(events_t)
                    .where(
                        events_t.c.id == eid,
                        events_t.c.disposition == "new",
                        events_t.c.escalated_at.is_(None),
                    )
                    .values(escalated_at=now)
                )
                if done.rowcount != 1:
                    continue  # acknowledged (or escalated by another replica) meanwhile
                entry: dict[str, Any] = {
                    "at": now,
                    "actor": ACTOR,
                    "role": "system",
                    "action": "escalate",
                    "target_type": "event",
                    "target_id": eid,
                    "from_state": "new",
                    "to_state": "escalated",
                    "remark": f"unacknowledged for more than {rule.ack_within_s:g} s",
                }
                entry["id"] = c.execute(insert(audit_t).values(**entry).returning(audit_t.c.id)).scalar_one()
                view = store._view(c, eid)
            if view is not None:
                out.append(Escalation(view, rule.ack_within_s, entry))
    return out


def announce(rt: Runtime, esc: Escalation) -> None:
    """Push one escalation on the live feed (and, through it, on MQTT)."""
    pub = event_public(esc.view, rt)
    data = {
        "event": pub.model_dump(mode="json"),
        "sla": {"ack_within_s": esc.ack_within_s, "escalated_at": esc.entry["at"].isoformat()},
        "entry": audit_public(esc.entry).model_dump(mode="json"),
    }
    rt.broadcaster.publish("escalation", data, event_meta(pub))


async def run(rt: Runtime, stopping: asyncio.Event) -> None:
    """The app's background check (started by the lifespan when ``sla`` has rules)."""
    while not stopping.is_set():
        try:
            for esc in await run_in_threadpool(escalate_due, rt):
                log.info("sla: event %s escalated (%s)", esc.view.id, esc.entry["remark"])
                announce(rt, esc)
        except Exception as err:  # keep checking; the next round retries
            log.warning("sla check failed: %s", type(err).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), rt.settings.sla_check_s)
