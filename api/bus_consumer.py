"""District scale-out, API side: take event messages from NATS JetStream; share the live feed across replicas.

Started by the app's lifespan when ``bus.kind == "nats"``. Three parts, on one NATS connection:

- **events**: a durable pull consumer (``pingan-api``, explicit ack) on ``<prefix>.*.*.event.*``. Every API
  replica binds the same durable, so JetStream hands each message to one replica. Each fetched batch (up to
  32 messages) is validated message by message with ``pipeline.events.Event``, then stored in ONE transaction
  through the store call of ``POST /api/events/batch`` (idempotent by (id, seq); in fetch order, which is the
  stream's, so an event's messages keep their seq order). Then, message by message, its listed evidence is
  copied from the object store ``<prefix>-evidence``, the live feed is told, and only then is it acked. A
  message that cannot be valid (bad JSON, schema, subject ≠ body, unknown camera, an id of another camera or
  type) is terminated; a failure of ours (database down) naks the whole batch with a delay and it comes back.
- **camera status**: a queue subscription (core NATS, group ``pingan-api``) on ``<prefix>.*.*.status``: one
  replica records each report, as ``PUT /api/cameras/{id}/status`` does.
- **live relay**: whatever a replica's broadcaster publishes (stored events, dispositions, camera health) is
  republished on ``<prefix>.<site>.live``; every other replica feeds it into its own broadcaster, so a live
  (SSE) client sees the whole district's feed whichever replica it is connected to.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import ValidationError

from api.broadcast import CLOSE, Message, Subscription
from api.errors import ApiError, NotFound
from api.routers.common import camera_public, event_meta, event_public
from api.runtime import Runtime
from api.schemas import CameraStatusIn
from api.store import EventView, PutStatus
from pipeline import bus
from pipeline.events import Event
from pipeline.redact import mask_url

log = logging.getLogger("pingan.api.bus")
STATUS_FIELDS = frozenset(CameraStatusIn.model_fields)
Live = tuple[dict[str, Any], dict[str, Any]]  # a live-feed ``event`` message: data, meta


def event_live(rt: Runtime, view: EventView) -> Live:
    """The live-feed ``event`` message for a stored event, as ``POST /api/events`` publishes it."""
    pub = event_public(view, rt)
    return pub.model_dump(mode="json"), event_meta(pub)


@dataclass
class _Item:
    """A message of a fetched batch that passed validation."""

    msg: Any
    ev: Event
    worker: str  # recorded with the message: ``nats:<site>``
    redelivered: bool


@dataclass
class _Stored:
    """What storing one message of a batch did, as the event loop needs it after the commit."""

    status: PutStatus | Literal["conflict"]
    error: str | None = None
    view: EventView | None = None  # set when the live feed is to show it
    live: Live | None = None  # ``view`` rendered
    missing: list[str] = field(default_factory=list)  # listed evidence not stored yet


class BusConsumer:
    def __init__(
        self,
        rt: Runtime,
        durable: str = "pingan-api",
        batch: int = 32,
        ack_wait_s: float = 10.0,
        fetch_timeout_s: float = 1.0,
        replica_id: str | None = None,
    ) -> None:
        cfg = rt.settings.bus
        self.rt = rt
        self.url = cfg.nats_url
        self.stream = cfg.stream
        self.prefix = cfg.subject_prefix
        self.replicas = cfg.replicas
        self.site_id = rt.settings.site_id
        self.durable = durable
        self.batch = batch
        self.ack_wait_s = ack_wait_s
        self.fetch_timeout_s = fetch_timeout_s
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        # messages this replica stored: new to the store (created, updated, or stale: an older seq coming
        # after a newer one is recorded, the event left as it is), not duplicates
        self.stored = 0
        self._masked = ",".join(mask_url(u) for u in self.url.split(","))
        self._cameras = rt.settings.camera_ids()
        self._nc: Any = None
        self._js: Any = None
        self._obj: Any = None
        self._task: asyncio.Task[None] | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._relay_sub: Subscription | None = None
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()  # set once the consumer is bound

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin in the background; NATS being down at start is retried, the API serves meanwhile."""
        self._task = asyncio.create_task(self._main(), name="bus-consumer")

    async def stop(self) -> None:
        self._stopping.set()
        for task in (self._task, self._relay_task):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._task, self._relay_task):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._relay_sub is not None:
            self.rt.broadcaster.unsubscribe(self._relay_sub)
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            if nc.is_connected:  # acks of handled messages go out first
                with contextlib.suppress(Exception):
                    await nc.flush(1.0)
            with contextlib.suppress(Exception):
                await nc.close()

    async def _main(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                psub = await self._setup()
                delay = 0.5
                await self._consume(psub)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning(
                    "NATS bus %s: %s: %s; retrying in %.1f s", self._masked, type(e).__name__, e, delay
                )
                await self._close_quietly()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, 10.0)

    async def _close_quietly(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _setup(self) -> Any:
        import nats

        async def _err(e: Exception) -> None:
            log.debug("NATS bus: %s", type(e).__name__)

        async def _disconnected() -> None:
            if not self._stopping.is_set():
                log.warning("NATS bus %s: disconnected", self._masked)

        nc = await nats.connect(
            servers=self.url.split(","),
            name=f"pingan-api-{self.replica_id}",
            connect_timeout=2.0,
            allow_reconnect=True,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
            error_cb=_err,
            disconnected_cb=_disconnected,
        )
        nc.options["max_reconnect_attempts"] = -1  # once connected, reconnect for ever
        self._nc = nc
        js = self._js = nc.jetstream(timeout=5.0)
        await bus.ensure_stream(js, self.stream, self.prefix, self.replicas)
        self._obj = await bus.ensure_evidence_bucket(js, self.prefix, self.replicas)
        await self._add_consumer(js)
        psub = await js.pull_subscribe_bind(self.durable, self.stream)
        await nc.subscribe(bus.live_subject(self.prefix, self.site_id), cb=self._on_live)
        await nc.subscribe(bus.status_filter(self.prefix), queue=self.durable, cb=self._on_status)
        if self._relay_task is None:
            self._relay_sub = self.rt.broadcaster.subscribe(lambda m: "relay" not in m.meta)
            self._relay_task = asyncio.create_task(self._relay(self._relay_sub), name="bus-live-relay")
        self.ready.set()
        log.info(
            "NATS bus %s: consuming %s as %s (replica %s)",
            self._masked,
            self.stream,
            self.durable,
            self.replica_id,
        )
        return psub

    async def _add_consumer(self, js: Any) -> None:
        """Create the shared durable consumer unless it exists; an existing one is used as it is found (an
        operator may have re-created it, e.g. to replay from a start time)."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        try:
            info = await js.consumer_info(self.stream, self.durable)
        except NotFoundError:
            info = None
        if info is not None:
            if info.config.ack_policy != AckPolicy.EXPLICIT:
                raise RuntimeError(f"consumer {self.durable} exists without explicit acks; remove it")
            return
        await js.add_consumer(
            self.stream,
            ConsumerConfig(
                durable_name=self.durable,
                description="pingan API replicas (shared)",
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait_s,
                max_deliver=-1,
                max_ack_pending=1000,
                filter_subject=bus.events_filter(self.prefix),
            ),
        )

    # ---- events ---------------------------------------------------------------------------------

    async def _consume(self, psub: Any) -> None:
        import nats.errors

        while not self._stopping.is_set():
            try:
                msgs = await psub.fetch(self.batch, timeout=self.fetch_timeout_s)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # disconnected, consumer deleted...: the client reconnects; try again
                log.debug("NATS bus fetch: %s", type(e).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 0.5)
                continue
            await self._handle(msgs)

    async def _handle(self, msgs: list[Any]) -> None:
        """Store a fetched batch and answer each of its messages. What is left unanswered (stopping,
        cancelled) goes to another replica now, not after ack_wait; a stored one is then a duplicate there."""
        try:
            if not self._stopping.is_set():
                await self._answer(msgs)
        finally:
            for msg in msgs:
                if not msg.is_acked:
                    await _quiet(msg.nak())

    async def _answer(self, msgs: list[Any]) -> None:
        batch: list[_Item] = []
        for msg in msgs:
            item = self._validate(msg)
            if item is None:
                await _quiet(msg.term())
            else:
                batch.append(item)
        if not batch:
            return
        try:
            results = await asyncio.to_thread(self._store, batch)
        except Exception as e:  # ours (database down...): the batch was rolled back; let all of it come back
            first = batch[0].ev
            log.warning(
                "bus: %d messages (%s#%d…) not stored (%s); will retry",
                len(batch),
                first.id,
                first.seq,
                type(e).__name__,
            )
            for item in batch:
                await _quiet(item.msg.nak(delay=2.0))
            return
        copied: dict[str, dict[str, tuple[str, int]]] = {}  # event id → name → (sha256, size)
        tried: set[tuple[str, str]] = set()  # evidence already fetched for this batch
        for item, got in zip(batch, results, strict=True):
            if self._stopping.is_set():
                return
            await self._finish(item, got, copied, tried)

    def _validate(self, msg: Any) -> _Item | None:
        """The message's event, or None (logged) when the message can never be valid."""
        where = bus.parse_event_subject(msg.subject)
        try:
            ev = Event.model_validate_json(msg.data)
        except ValidationError as e:
            log.error(
                "bus: dropping an invalid message on %s: %s", msg.subject, e.errors(include_url=False)[:3]
            )
            return None
        if where is None or where[1] != ev.camera_id or where[2] != ev.type.value:
            log.error("bus: dropping %s#%d: subject %s does not match its body", ev.id, ev.seq, msg.subject)
            return None
        if self._cameras and ev.camera_id not in self._cameras:
            log.error("bus: dropping %s#%d: camera %s is not configured here", ev.id, ev.seq, ev.camera_id)
            return None
        # A redelivered message may have been stored by a replica that died before the live feed saw it:
        # showing it again is harmless (clients key events by id).
        return _Item(msg, ev, f"nats:{where[0]}", _num_delivered(msg) > 1)

    def _store(self, batch: list[_Item]) -> list[_Stored]:
        """In a worker thread: store the batch in one transaction; per message, its live message (when there
        is news) and the names of its listed evidence not stored yet."""
        outcomes = self.rt.store.put_events([b.ev for b in batch], [b.worker for b in batch])
        current: dict[str, EventView | None] = {}  # read back once an event: the batch is committed
        out: list[_Stored] = []
        for item, got in zip(batch, outcomes, strict=True):
            ev, view = item.ev, got.view
            if got.status == "conflict":
                out.append(_Stored(got.status, got.error))
                continue
            if view is None and (item.redelivered or ev.evidence):
                if ev.id not in current:
                    current[ev.id] = self.rt.store.get_event(ev.id)
                view = current[ev.id]
            done = _Stored(got.status)
            if view is not None:
                stored = {e["name"] for e in view.evidence if e["stored"]}
                done.missing = [e.name for e in ev.evidence if e.name not in stored]
                if got.status in ("created", "updated") or item.redelivered:
                    done.view, done.live = view, event_live(self.rt, view)
            out.append(done)
        return out

    async def _finish(
        self,
        item: _Item,
        got: _Stored,
        copied: dict[str, dict[str, tuple[str, int]]],
        tried: set[tuple[str, str]],
    ) -> None:
        """One message of a stored batch, in fetch order: copy its evidence, tell the live feed, ack."""
        msg, ev = item.msg, item.ev
        if got.status == "conflict":  # the id belongs to another camera/type; never valid
            log.error("bus: dropping %s#%d: %s", ev.id, ev.seq, got.error)
            await _quiet(msg.term())
            return
        if got.status in ("created", "updated", "stale"):
            self.stored += 1
        try:
            # one fetch per file and batch: the object store keeps one copy of a name, the newest listed
            names = [n for n in got.missing if (ev.id, n) not in tried]
            tried.update((ev.id, n) for n in names)
            if names:
                copied.setdefault(ev.id, {}).update(await self._evidence(ev, names))
            live = got.live
            if got.view is not None and ev.id in copied:  # read before this batch's copies: show them stored
                fresh = _with_stored(got.view, copied[ev.id])
                if fresh is not None:
                    live = await asyncio.to_thread(event_live, self.rt, fresh)
            if live is not None:
                await self._show("event", *live)
        except Exception as e:  # ours (database down...): let it come back
            log.warning("bus: %s#%d: evidence not stored (%s); will retry", ev.id, ev.seq, type(e).__name__)
            await _quiet(msg.nak(delay=2.0))
            return
        await _quiet(msg.ack())

    async def _evidence(self, ev: Event, names: list[str]) -> dict[str, tuple[str, int]]:
        """Copy evidence from the object store. Returns the files stored: name → (sha256, size)."""
        from nats.js.errors import ObjectNotFoundError

        out: dict[str, tuple[str, int]] = {}
        for name in names:
            try:
                res = await asyncio.wait_for(self._obj.get(bus.evidence_key(ev.id, name)), 30.0)
            except ObjectNotFoundError:
                log.debug("bus: evidence %s of %s is not in the object store (yet)", name, ev.id)
                continue
            data = bytes(res.data)
            try:
                await asyncio.to_thread(self.rt.store.put_evidence, ev.id, name, data)
                out[name] = hashlib.sha256(data).hexdigest(), len(data)
            except ApiError as e:  # 409: bytes differ from the listed sha256 (a newer message may list them)
                log.warning("bus: evidence %s of %s not stored: %s", name, ev.id, e.message)
        return out

    async def _show(self, kind: str, data: dict[str, Any], meta: dict[str, Any]) -> None:
        """Publish on this replica's live feed and, on the same connection *before* the ack that follows,
        on the live subject: when the ack reached the server, so did the other replicas' copy."""
        self.rt.broadcaster.publish(kind, data, {**meta, "relay": self.replica_id})
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        body = json.dumps(
            {"o": self.replica_id, "k": kind, "m": meta, "d": data},
            default=str,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        try:  # buffered by the client while it reconnects
            await nc.publish(bus.live_subject(self.prefix, self.site_id), body.encode())
        except Exception as e:
            log.debug("bus: live message not sent: %s", type(e).__name__)

    # ---- camera status --------------------------------------------------------------------------

    async def _on_status(self, msg: Any) -> None:
        where = bus.parse_status_subject(msg.subject)
        if where is None:
            return
        camera_id = where[1]
        try:
            raw = json.loads(msg.data)
            body = CameraStatusIn.model_validate({k: v for k, v in raw.items() if k in STATUS_FIELDS})
        except (ValueError, AttributeError) as e:
            log.debug("bus: bad status for %s: %s", camera_id, type(e).__name__)
            return
        if self._cameras and camera_id not in self._cameras:
            return
        try:
            await asyncio.to_thread(self._put_status, camera_id, body)
        except NotFound:
            pass
        except Exception as e:
            log.debug("bus: status for %s not stored: %s", camera_id, type(e).__name__)

    def _put_status(self, camera_id: str, body: CameraStatusIn) -> None:
        values = body.row_values()
        _changed, row = self.rt.store.put_camera_status(camera_id, values)
        pub = camera_public(row, self.rt)
        meta = {"camera_id": camera_id, "grid": pub.grid}
        self.rt.broadcaster.publish("camera", pub.model_dump(mode="json"), meta)

    # ---- live relay -----------------------------------------------------------------------------

    async def _relay(self, sub: Subscription) -> None:
        """Republish this replica's own live messages (HTTP posts, dispositions, camera health)."""
        subject = bus.live_subject(self.prefix, self.site_id)
        while True:
            msg: Message = await sub.queue.get()
            if msg is CLOSE:
                return
            nc = self._nc
            if nc is None or nc.is_closed:
                continue  # best effort, like the live feed itself (a reconnecting client buffers)
            body = msg.text.split("\ndata: ", 1)[1].rstrip("\n")
            head = json.dumps({"o": self.replica_id, "k": msg.kind, "m": msg.meta}, default=str)
            try:
                await nc.publish(subject, f'{head[:-1]},"d":{body}}}'.encode())
            except Exception as e:
                log.debug("bus: live relay: %s", type(e).__name__)

    async def _on_live(self, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
            if data["o"] == self.replica_id:
                return
            self.rt.broadcaster.publish(str(data["k"]), data["d"], {**data["m"], "relay": data["o"]})
        except (ValueError, KeyError, TypeError) as e:
            log.debug("bus: bad live message: %s", type(e).__name__)


def _with_stored(view: EventView, copied: dict[str, tuple[str, int]]) -> EventView | None:
    """``view`` with the files just copied marked stored, as a read-back would show it; None when it lists
    none of them (unstored, with the same sha256)."""
    evidence = [
        {**e, "stored": True, "size": copied[e["name"]][1]}
        if not e["stored"] and copied.get(e["name"], ("", 0))[0] == e["sha256"]
        else e
        for e in view.evidence
    ]
    return replace(view, evidence=evidence) if evidence != view.evidence else None


def _num_delivered(msg: Any) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


async def _quiet(coro: Any) -> None:
    try:
        await coro
    except Exception as e:  # an ack lost on a dropped connection means a redelivery: harmless
        log.debug("bus: ack/nak not sent: %s", type(e).__name__)
