"""Media retention: keep the evidence on disk under ``media_max_bytes`` without ever deleting what the police
have not had yet.

When stored evidence exceeds the cap, files are deleted (rows stay, marked not stored; events and the audit
log are kept; one audit entry per round) in this order, oldest event first within a class:

0. evidence of events that are not violations: ``bin_overflow``, ``camera_offline``, and ``illegal_parking``
   events an operator marked ``false_alarm``;
1. evidence of violations already delivered to the police: the event is closed and either its evidence pack
   was exported (``export`` in the audit log, ``GET /api/violations/{id}/pack``) or its closing message
   (the event's latest seq) was delivered by webhook (``webhook_deliveries.status = 'delivered'``).

Evidence of any other violation (open, or closed but not yet exported or pushed) is never deleted: if only
that is left the folder stays over the cap and each round logs a warning with how much is protected. (Webhook
log rows are pruned after 30 days; a violation pushed long ago but never exported is then protected again,
which errs on the side of keeping evidence.)
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, and_, case, exists, func, not_, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from api.models import WebhookDeliveryRow
from api.store import Store, audit_t, events_t, evidence_t

log = logging.getLogger("pingan.api.retention")
deliveries_t = cast(Table, WebhookDeliveryRow.__table__)


@dataclass(frozen=True)
class Pruned:
    files: int
    freed: int
    usage: int  # bytes of stored evidence after the round
    protected: int  # bytes of violation evidence that may not be deleted yet


def _delivered() -> ColumnElement[bool]:
    exported = exists().where(
        audit_t.c.action == "export", audit_t.c.target_type == "event", audit_t.c.target_id == events_t.c.id
    )
    pushed = exists().where(
        deliveries_t.c.event_id == events_t.c.id,
        deliveries_t.c.seq == events_t.c.seq,
        deliveries_t.c.status == "delivered",
    )
    return and_(events_t.c.state == "closed", or_(exported, pushed))


def _not_violation() -> ColumnElement[bool]:
    return or_(events_t.c.type != "illegal_parking", events_t.c.disposition == "false_alarm")


def deletable_class() -> ColumnElement[int]:
    """0: not a violation; 1: a violation the police already have; 2: protected."""
    return case((_not_violation(), 0), (_delivered(), 1), else_=2)


def prune(store: Store, max_bytes: int, batch: int = 200) -> Pruned:
    """One retention round (see the module doc)."""
    usage = store.media_usage()
    files = freed = 0
    cls = deletable_class()
    while usage > max_bytes:
        q = (
            select(evidence_t.c.event_id, evidence_t.c.name, evidence_t.c.size)
            .join(events_t, events_t.c.id == evidence_t.c.event_id)
            .where(evidence_t.c.stored_at.is_not(None), cls < 2)
            .order_by(cls, events_t.c.started_at, events_t.c.id, evidence_t.c.name)
            .limit(batch)
        )
        with store.engine.connect() as c, c.begin():
            rows = list(c.execute(q))
        if not rows:
            break
        for r in rows:
            if usage <= max_bytes:
                break
            path = store.evidence_path(r.event_id, r.name)
            with store.engine.connect() as c:
                c = c.execution_options(pingan_write=True)
                with c.begin():
                    c.execute(
                        update(evidence_t)
                        .where(evidence_t.c.event_id == r.event_id, evidence_t.c.name == r.name)
                        .values(stored_at=None, path=None)
                    )
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when empty
            size = int(r.size or 0)
            usage -= size
            freed += size
            files += 1
    protected = 0
    if usage > max_bytes:
        q = (
            select(func.coalesce(func.sum(evidence_t.c.size), 0))
            .join(events_t, events_t.c.id == evidence_t.c.event_id)
            .where(evidence_t.c.stored_at.is_not(None), not_(cls < 2))
        )
        with store.engine.connect() as c, c.begin():
            protected = int(c.execute(q).scalar_one())
        log.warning(
            "media over its cap (%d > %d bytes): %d bytes are evidence of violations the police have not had "
            "yet: kept",
            usage,
            max_bytes,
            protected,
        )
    if files:
        store.audit("retention", "admin", "prune_media", "media", "*", remark=f"{files} files, {freed} bytes")
    return Pruned(files, freed, usage, protected)
