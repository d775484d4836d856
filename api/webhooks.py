"""Signed webhook push of stored event messages to police and cleaning endpoints (cameras.yaml ``webhooks:``).

How it works:

- **Queue.** A background task (started in the app's lifespan) sweeps ``event_messages`` for messages the API
  stored recently (``received_at``, indexed) and enqueues one ``webhook_deliveries`` row per matching endpoint
  (its ``event_types``; its ``grid_prefix`` if set, the most specific matching prefix winning:
  :func:`targets_for`). The row keeps the exact body that is signed and sent on
  every attempt. Rows are unique per (endpoint, event id, seq), so sweeps, restarts and API replicas never
  enqueue a message twice. On start the sweep looks back ``webhook_lookback_s``; the queue itself is in the
  database, so pending deliveries survive restarts.
- **Delivery.** Per endpoint, messages go out in the order they were stored (open before its updates before
  closed): the oldest pending row is sent; a failure (no connection, timeout, non-2xx) puts it back with
  capped exponential backoff (``backoff_base_s`` × 2^(attempts−1), at most ``backoff_max_s``, jittered) and
  holds the endpoint's later rows behind it; after ``max_attempts`` the row is marked ``failed`` (the log
  shows it; ``POST /api/webhooks/deliveries/{id}/retry`` re-queues it) and the next goes. A sender leases
  its row by moving ``next_attempt_at`` ahead, so replicas do not send one row at once.
- **Request.** ``POST url`` with body = the event message JSON (wire format v1) and headers
  ``X-Pingan-Timestamp: <unix seconds>``, ``X-Pingan-Signature: sha256=<hex HMAC-SHA256(secret,
  "<timestamp>.<body>")>``, ``Idempotency-Key: <event id>:<seq>`` (stable across retries: receivers drop
  repeats), ``X-Pingan-Event-Type``, ``X-Pingan-Delivery``. Delivery is at least once; with the idempotency
  key the receiver applies each message exactly once. Receivers check the signature with
  :func:`verify_signature` (or its few lines in any language) and refuse timestamps older than a few minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, cast

import httpx
from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel
from sqlalchemy import Connection, Engine, Table, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from starlette.concurrency import run_in_threadpool

from api.auth import Principal, require
from api.errors import Conflict, NotFound
from api.models import EventMessageRow, EventRow, WebhookDeliveryRow
from api.runtime import RuntimeDep
from pipeline.config import WebhookConfig

log = logging.getLogger("pingan.api.webhooks")

deliveries_t = cast(Table, WebhookDeliveryRow.__table__)
messages_t = cast(Table, EventMessageRow.__table__)
events_t = cast(Table, EventRow.__table__)

TIMESTAMP_HEADER = "X-Pingan-Timestamp"
SIGNATURE_HEADER = "X-Pingan-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
HISTORY_KEEP = 10
SWEEP_OVERLAP_S = 120.0  # a message stored (received_at) this long before it committed is still swept
USER_AGENT = "pingan-webhook/1"
KEEP_DONE_S = 30 * 86400.0  # delivered and failed rows stay in the log this long
PRUNE_EVERY_S = 3600.0
DeliveryStatus = Literal["pending", "delivered", "failed"]


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---- signing ----------------------------------------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Pingan-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``<timestamp>.<body>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """What a receiver does: the signature matches and the timestamp is within ``tolerance_s`` of now."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def backoff_s(attempts: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """Delay before the next try after ``attempts`` failed ones: base·2^(n−1) capped at max, jittered to
    50–100 % so that endpoints coming back are not hit by every sender at once."""
    delay = min(max_s, base_s * 2.0 ** max(0, attempts - 1))
    return delay * (0.5 + 0.5 * rand())


def _matches(ep: WebhookConfig, event_type: str, grid: str | None) -> bool:
    if event_type not in ep.event_types:
        return False
    if ep.grid_prefix is None:
        return True
    return grid is not None and (grid == ep.grid_prefix or grid.startswith(ep.grid_prefix + "/"))


def targets_for(endpoints: Sequence[WebhookConfig], event_type: str, grid: str | None) -> list[WebhookConfig]:
    """The endpoints a message goes to: of those taking its type and grid, the ones with the most specific
    ``grid_prefix`` (most path levels; no prefix is the least specific). Several equally specific ones all
    get it. E.g. a district crew (no prefix) and a street crew (``fangshan/xilu``) for ``bin_overflow``: an
    event in ``fangshan/xilu/...`` goes to the street crew only, one elsewhere to the district crew."""
    matching = [e for e in endpoints if _matches(e, event_type, grid)]
    if not matching:
        return []

    def depth(e: WebhookConfig) -> int:
        return 0 if e.grid_prefix is None else e.grid_prefix.count("/") + 1

    best = max(depth(e) for e in matching)
    return [e for e in matching if depth(e) == best]


# ---- the dispatcher ---------------------------------------------------------------------------------------


class WebhookDispatcher:
    """Enqueues stored messages for the configured endpoints and delivers them (see the module doc)."""

    def __init__(
        self,
        engine: Engine,
        endpoints: Sequence[WebhookConfig],
        *,
        poll_s: float = 1.0,
        lookback_s: float = 3600.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.engine = engine
        self.endpoints = {e.id: e for e in endpoints}
        self.poll_s = poll_s
        self.lookback_s = lookback_s
        self._transport = transport
        self._clients: dict[str, httpx.Client] = {}
        self._watermark: datetime | None = None
        self._seen: dict[tuple[str, int], datetime] = {}
        # its own jitter: drawing from the shared generator on a background thread changes what every other
        # user of it gets (Hypothesis warns about exactly that mid-test)
        self._rng = random.Random()

    # ---- database -------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(pingan_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _insert_ignore(self, c: Connection, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        ins = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        stmt = ins(deliveries_t).on_conflict_do_nothing(index_elements=["endpoint_id", "event_id", "seq"])
        c.execute(stmt, rows)

    # ---- sweep: stored messages → queue ---------------------------------------------------------

    def sweep(self, now: datetime | None = None) -> int:
        """Enqueue the messages stored since the last sweep for every matching endpoint; returns how many
        (message, endpoint) pairs were offered to the queue."""
        if not self.endpoints:
            return 0
        now = now or utcnow()
        if self._watermark is None:
            since = now - timedelta(seconds=self.lookback_s)
        else:
            since = self._watermark - timedelta(seconds=SWEEP_OVERLAP_S)
        types = sorted({t for e in self.endpoints.values() for t in e.event_types})
        m, ev = messages_t, events_t
        q = (
            select(m.c.event_id, m.c.seq, m.c.received_at, ev.c.type, ev.c.grid)
            .join(ev, ev.c.id == m.c.event_id)
            .where(m.c.received_at >= since, ev.c.type.in_(types))
            .order_by(m.c.received_at, m.c.event_id, m.c.seq)
        )
        with self._read() as c:
            rows = [r for r in c.execute(q) if (r.event_id, r.seq) not in self._seen]
            offered: list[dict[str, Any]] = []
            for r in rows:
                targets = targets_for(list(self.endpoints.values()), r.type, r.grid)
                if not targets:
                    continue
                payload = c.execute(
                    select(m.c.payload).where(m.c.event_id == r.event_id, m.c.seq == r.seq)
                ).scalar_one()
                body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
                for e in targets:
                    offered.append(
                        {
                            "endpoint_id": e.id,
                            "event_id": r.event_id,
                            "seq": r.seq,
                            "event_type": r.type,
                            "body": body,
                            "status": "pending",
                            "attempts": 0,
                            "created_at": now,
                            "next_attempt_at": now,
                        }
                    )
        if offered:
            with self._write() as c:
                self._insert_ignore(c, offered)
        for r in rows:
            self._seen[(r.event_id, r.seq)] = r.received_at
        newest = max((r.received_at for r in rows), default=None)
        self._watermark = max(filter(None, (self._watermark, newest)), default=now)
        floor = self._watermark - timedelta(seconds=2 * SWEEP_OVERLAP_S)
        self._seen = {k: t for k, t in self._seen.items() if t >= floor}
        return len(offered)

    # ---- pump: queue → endpoint -----------------------------------------------------------------

    def _client(self, ep: WebhookConfig) -> httpx.Client:
        client = self._clients.get(ep.id)
        if client is None:
            client = httpx.Client(
                timeout=ep.timeout_s,
                follow_redirects=False,
                transport=self._transport,
                headers={"User-Agent": USER_AGENT},
            )
            self._clients[ep.id] = client
        return client

    def _send(self, ep: WebhookConfig, row: Any) -> tuple[bool, int | None, str | None]:
        body = row.body.encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: sign(ep.secret.get_secret_value(), ts, body),
            IDEMPOTENCY_HEADER: f"{row.event_id}:{row.seq}",
            "X-Pingan-Event-Type": row.event_type,
            "X-Pingan-Delivery": str(row.id),
        }
        try:
            r = self._client(ep).post(ep.url, content=body, headers=headers)
        except httpx.HTTPError as err:
            text = f"{type(err).__name__}: {err}".replace(ep.url, f"<{ep.id}>")
            return False, None, text[:500]
        if 200 <= r.status_code < 300:
            return True, r.status_code, None
        return False, r.status_code, f"HTTP {r.status_code}"

    def pump(self, endpoint_id: str, max_sends: int = 100) -> int:
        """Send this endpoint's due rows in order until one fails or none is due; returns how many went."""
        ep = self.endpoints[endpoint_id]
        d = deliveries_t
        sent = 0
        while sent < max_sends:
            now = utcnow()
            with self._read() as c:
                row = c.execute(
                    select(d)
                    .where(d.c.endpoint_id == ep.id, d.c.status == "pending")
                    .order_by(d.c.id)
                    .limit(1)
                ).first()
            if row is None or (row.next_attempt_at is not None and row.next_attempt_at > now):
                return sent
            lease = now + timedelta(seconds=3 * ep.timeout_s + 5)  # connect, write and read may each take it
            with self._write() as c:
                claimed = c.execute(
                    update(d)
                    .where(
                        d.c.id == row.id, d.c.status == "pending", d.c.next_attempt_at == row.next_attempt_at
                    )
                    .values(next_attempt_at=lease)
                ).rowcount
            if claimed != 1:
                return sent  # another sender has it
            t0 = time.monotonic()
            ok, status, error = self._send(ep, row)
            done = utcnow()
            attempts = row.attempts + 1
            entry: dict[str, Any] = {"at": done.isoformat(), "status": status, "error": error}
            entry["ms"] = round((time.monotonic() - t0) * 1000, 1)
            values: dict[str, Any] = {
                "attempts": attempts,
                "last_attempt_at": done,
                "last_status": status,
                "last_error": error,
                "history": [*(row.history or []), entry][-HISTORY_KEEP:],
            }
            if ok:
                values.update(status="delivered", delivered_at=done, next_attempt_at=None)
                if attempts > 1:
                    log.info(
                        "webhook %s: %s:%s delivered after %d tries", ep.id, row.event_id, row.seq, attempts
                    )
            elif attempts >= ep.max_attempts:
                values.update(status="failed", next_attempt_at=None)
                log.warning(
                    "webhook %s: giving up on %s:%s after %d tries (%s)",
                    ep.id,
                    row.event_id,
                    row.seq,
                    attempts,
                    error,
                )
            else:
                delay = backoff_s(attempts, ep.backoff_base_s, ep.backoff_max_s, self._rng.random)
                values["next_attempt_at"] = done + timedelta(seconds=delay)
                log.debug("webhook %s: try %d failed (%s); next in %.1f s", ep.id, attempts, error, delay)
            with self._write() as c:
                c.execute(update(d).where(d.c.id == row.id).values(**values))
            if not ok:
                return sent
            sent += 1
        return sent

    def prune(self, keep_s: float = KEEP_DONE_S, now: datetime | None = None) -> int:
        """Drop delivered and failed rows older than ``keep_s`` from the log (pending ones always stay)."""
        cutoff = (now or utcnow()) - timedelta(seconds=keep_s)
        d = deliveries_t
        with self._write() as c:
            return int(
                c.execute(
                    d.delete().where(d.c.status.in_(["delivered", "failed"]), d.c.created_at < cutoff)
                ).rowcount
            )

    def tick(self) -> int:
        """One round, synchronously: sweep, then pump every endpoint. Returns how many were delivered."""
        self.sweep()
        return sum(self.pump(i) for i in self.endpoints)

    async def run(self, stopping: asyncio.Event | None = None) -> None:
        """The lifespan task: sweep and pump every ``poll_s`` (endpoints in parallel threads) until
        ``stopping`` is set; a round in progress finishes first (no thread is left holding a connection)."""
        stopping = stopping or asyncio.Event()
        pruned_at = 0.0
        while not stopping.is_set():
            try:
                if time.monotonic() - pruned_at >= PRUNE_EVERY_S:
                    pruned_at = time.monotonic()
                    await run_in_threadpool(self.prune)
                await run_in_threadpool(self.sweep)
                await asyncio.gather(*(run_in_threadpool(self.pump, i) for i in self.endpoints))
            except Exception as err:  # keep pushing; the next round retries
                log.warning("webhook round failed: %s: %s", type(err).__name__, err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.poll_s)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


# ---- the delivery log (admin) -----------------------------------------------------------------------------


class DeliveryPublic(BaseModel):
    id: int
    endpoint_id: str
    event_id: str
    seq: int
    event_type: str
    idempotency_key: str
    status: str
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    history: list[dict[str, Any]] = []


class DeliveryPagePublic(BaseModel):
    items: list[DeliveryPublic]
    next_before_id: int | None = None


def _public(row: Any) -> DeliveryPublic:
    data = {k: v for k, v in row._mapping.items() if k != "body"}
    data["history"] = data.get("history") or []
    return DeliveryPublic(**data, idempotency_key=f"{row.event_id}:{row.seq}")


def list_deliveries(
    engine: Engine,
    *,
    endpoint_id: str | None = None,
    status: str | None = None,
    event_id: str | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> tuple[list[DeliveryPublic], int | None]:
    d = deliveries_t
    q = select(d).order_by(d.c.id.desc()).limit(limit + 1)
    for col, value in ((d.c.endpoint_id, endpoint_id), (d.c.status, status), (d.c.event_id, event_id)):
        if value is not None:
            q = q.where(col == value)
    if before_id is not None:
        q = q.where(d.c.id < before_id)
    with engine.connect() as c, c.begin():
        rows = list(c.execute(q))
    more = len(rows) > limit
    rows = rows[:limit]
    return [_public(r) for r in rows], (rows[-1].id if more and rows else None)


router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])
Admin = Annotated[Principal, Depends(require("admin"))]


@router.get("/deliveries", response_model=DeliveryPagePublic)
def deliveries(
    who: Admin,
    rt: RuntimeDep,
    endpoint_id: Annotated[str | None, Query(max_length=64)] = None,
    status: DeliveryStatus | None = None,
    event_id: Annotated[str | None, Query(max_length=36)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,  # SQLite INTEGER: an overflow was a 500
) -> DeliveryPagePublic:
    """The delivery log, newest first: each message per endpoint with its state, tries and last error."""
    items, nxt = list_deliveries(
        rt.store.engine,
        endpoint_id=endpoint_id,
        status=status,
        event_id=event_id,
        limit=limit,
        before_id=before_id,
    )
    return DeliveryPagePublic(items=items, next_before_id=nxt)


@router.post("/deliveries/{delivery_id}/retry", response_model=DeliveryPublic)
def retry_delivery(
    delivery_id: Annotated[int, Path(ge=1, le=2**62)], who: Admin, rt: RuntimeDep
) -> DeliveryPublic:
    """Re-queue a delivery that was given up on (status failed): it goes again, in its place in the line."""
    d = deliveries_t
    now = utcnow()
    with rt.store.engine.connect() as conn:
        conn = conn.execution_options(pingan_write=True)
        with conn.begin():
            row = conn.execute(select(d).where(d.c.id == delivery_id)).first()
            if row is None:
                raise NotFound("no such delivery")
            if row.status != "failed":
                raise Conflict(f"only failed deliveries are retried; this one is {row.status}")
            conn.execute(
                update(d)
                .where(d.c.id == delivery_id)
                .values(status="pending", attempts=0, next_attempt_at=now)
            )
            row = conn.execute(select(d).where(d.c.id == delivery_id)).one()
    rt.store.audit(who.name, who.role, "webhook_retry", "webhook", str(delivery_id), remark=row.endpoint_id)
    return _public(row)
