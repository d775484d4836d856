"""District scale-out, API side: take event messages from NATS JetStream; share the live feed across replicas.

Started by the app's lifespan when ``bus.kind == "nats"``. Three parts, on one NATS connection:

- **events**: a durable pull consumer (``pingan-api``, explicit ack) on ``<prefix>.*.*.event.*``. Every API
  replica binds the same durable, so JetStream hands each message to one replica. A message is validated with
  ``pipeline.events.Event``, stored through the same store call as ``POST /api/events`` (idempotent by
  (id, seq)), its listed evidence is copied from the object store ``<prefix>-evidence``, and only then is it
  acked. A message that cannot be valid (bad JSON, schema, subject ≠ body, unknown camera) is terminated; a
  failure of ours (database down) is nak'ed with a delay and comes back.
- **camera status**: a queue subscription (core NATS, group ``pingan-api``) on ``<prefix>.*.*.status``: one
  replica records each report, as ``PUT /api/cameras/{id}/status`` does.
- **live relay**: whatever a replica's broadcaster publishes (stored events, dispositions, camera health) is
  republished on ``<prefix>.<site>.live``; every other replica feeds it into its own broadcaster, so a live
  (SSE) client sees the whole district's feed whichever replica it is connected to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

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


def ingest(rt: Runtime, ev: Event, worker: str) -> tuple[PutStatus, EventView | None]:
    """Store one message: the store call of ``POST /api/events`` (after its auth), idempotent by (id, seq)."""
    return rt.store.put_event(ev, worker)


def event_live(rt: Runtime, event_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The live-feed ``event`` message for a stored event, as ``POST /api/events`` publishes it."""
    view = rt.store.get_event(event_id)
    if view is None:
        return None
    pub = event_public(view, rt)
    return pub.model_dump(mode="json"), event_meta(pub)


class BusConsumer:
    def __init__(
        self,
        rt: Runtime,
        durable: str = "pingan-api",
        batch: int = 32,
        ack_wait_s: float = 10.0,
        fetch_timeout_s: float = 1.0,
        replica_id: str | None = None,
        concurrency: int = 4,
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
        self.stored = 0  # messages stored (created/updated) by this replica
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
        self._slots = asyncio.Semaphore(concurrency)

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
            # Messages of one event go in seq order; different events are handled side by side.
            groups: dict[str, list[Any]] = {}
            for msg in msgs:
                groups.setdefault(_event_key(msg), []).append(msg)
            await asyncio.gather(*(self._handle_group(g) for g in groups.values()))

    async def _handle_group(self, msgs: list[Any]) -> None:
        async with self._slots:
            for i, msg in enumerate(msgs):
                if self._stopping.is_set():
                    for rest in msgs[i:]:  # hand them to another replica now, not after ack_wait
                        await _quiet(rest.nak())
                    return
                await self._handle(msg)

    async def _handle(self, msg: Any) -> None:
        where = bus.parse_event_subject(msg.subject)
        try:
            ev = Event.model_validate_json(msg.data)
        except ValidationError as e:
            log.error(
                "bus: dropping an invalid message on %s: %s", msg.subject, e.errors(include_url=False)[:3]
            )
            await _quiet(msg.term())
            return
        if where is None or where[1] != ev.camera_id or where[2] != ev.type.value:
            log.error("bus: dropping %s#%d: subject %s does not match its body", ev.id, ev.seq, msg.subject)
            await _quiet(msg.term())
            return
        if self._cameras and ev.camera_id not in self._cameras:
            log.error("bus: dropping %s#%d: camera %s is not configured here", ev.id, ev.seq, ev.camera_id)
            await _quiet(msg.term())
            return
        # A redelivered message may have been stored by a replica that died before the live feed saw it:
        # showing it again is harmless (clients key events by id).
        redelivered = _num_delivered(msg) > 1
        try:
            status, live, missing = await asyncio.to_thread(self._store, ev, f"nats:{where[0]}", redelivered)
            if status in ("created", "updated"):
                self.stored += 1
            if missing and await self._evidence(ev, missing):
                live = await asyncio.to_thread(event_live, self.rt, ev.id)  # now with the evidence
            if live is not None:
                await self._show("event", *live)
        except ApiError as e:  # Conflict: the id belongs to another camera/type; never valid
            log.error("bus: dropping %s#%d: %s", ev.id, ev.seq, e.message)
            await _quiet(msg.term())
            return
        except asyncio.CancelledError:
            await _quiet(msg.nak())
            raise
        except Exception as e:  # ours (database down...): let it come back
            log.warning("bus: %s#%d not stored (%s); will retry", ev.id, ev.seq, type(e).__name__)
            await _quiet(msg.nak(delay=2.0))
            return
        await _quiet(msg.ack())

    def _store(
        self, ev: Event, worker: str, redelivered: bool
    ) -> tuple[PutStatus, tuple[dict[str, Any], dict[str, Any]] | None, list[str]]:
        """In a worker thread: store the message; return its live message (when there is news) and the names
        of listed evidence not stored yet."""
        status, view = ingest(self.rt, ev, worker)
        if view is None and (redelivered or ev.evidence):
            view = self.rt.store.get_event(ev.id)
        live = None
        missing: list[str] = []
        if view is not None:
            stored = {e["name"] for e in view.evidence if e["stored"]}
            missing = [e.name for e in ev.evidence if e.name not in stored]
            if status in ("created", "updated") or redelivered:
                pub = event_public(view, self.rt)
                live = pub.model_dump(mode="json"), event_meta(pub)
        return status, live, missing

    async def _evidence(self, ev: Event, names: list[str]) -> int:
        """Copy evidence from the object store. Returns how many files were stored."""
        from nats.js.errors import ObjectNotFoundError

        n = 0
        for name in names:
            try:
                res = await asyncio.wait_for(self._obj.get(bus.evidence_key(ev.id, name)), 30.0)
            except ObjectNotFoundError:
                log.debug("bus: evidence %s of %s is not in the object store (yet)", name, ev.id)
                continue
            try:
                await asyncio.to_thread(self.rt.store.put_evidence, ev.id, name, bytes(res.data))
                n += 1
            except ApiError as e:  # 409: bytes differ from the listed sha256 (a newer message may list them)
                log.warning("bus: evidence %s of %s not stored: %s", name, ev.id, e.message)
        return n

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
        # the same values as PUT /api/cameras/{id}/status stores (api.routers.cameras.put_status)
        values = {
            "state": body.state,
            "reason": body.reason,
            "last_frame_at": body.last_frame(),
            "fps": body.fps,
            "frames": body.frames,
            "dropped": body.dropped,
            "reconnects": body.reconnects,
            "stats": body.stats(),
        }
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


def _event_key(msg: Any) -> str:
    """The event id of a message without a full parse (the body starts with it); the subject as a fallback."""
    head = bytes(msg.data[:60])
    i = head.find(b'"id":"')
    return head[i + 6 : i + 42].decode(errors="replace") if i >= 0 else str(msg.subject)


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
