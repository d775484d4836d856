"""``NatsSink``: the outbox delivers events to NATS JetStream (district; layout in ``pipeline.bus``).

Outcome of one ``send`` (one event message and its evidence files):

- acknowledged: every file is in the evidence object store (already there with the same SHA-256, or put
  now), then JetStream answered the message's publish with a PubAck (a ``duplicate`` PubAck counts: the
  stream holds it);
- transient (:class:`SinkError`, retried by the outbox): no connection (first connect refused, or
  reconnecting), timeouts, no stream answering, JetStream API errors (e.g. storage full);
- permanent (:class:`PermanentSinkError`, dead-lettered): the message exceeds the server's ``max_payload``.

``send`` is synchronous (the outbox's sender thread calls it); the NATS client lives on a private event loop
in a daemon thread. Messages carry ``Nats-Msg-Id: <event id>:<seq>``: JetStream drops a re-send inside its
duplicate window, and the API de-duplicates by (id, seq) after that, so at-least-once delivery stores each
message once.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import json
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from pipeline import bus
from pipeline.errors import PermanentSinkError, SinkError
from pipeline.events import Event
from pipeline.redact import mask_url

log = logging.getLogger(__name__)
T = TypeVar("T")


class NatsSink:
    """Publishes event messages to JetStream and evidence files to the JetStream object store."""

    def __init__(
        self,
        url: str,
        stream: str = "PINGAN",
        subject_prefix: str = "pingan",
        site_id: str = "site",
        timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        name: str = "pingan-worker",
        replicas: int = 1,
    ) -> None:
        self.url = url
        self.stream = stream
        self.prefix = subject_prefix
        self.site_id = site_id
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.name = name
        self.replicas = replicas
        self._masked = ",".join(mask_url(u) for u in url.split(","))
        self._nc: Any = None
        self._js: Any = None
        self._obj: Any = None
        self._stream_ok = False
        self._closed = False
        self._lock = threading.Lock()  # one send at a time (the outbox has one sender; tests may share)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats-sink", daemon=True)
        self._thread.start()

    # ---- the private loop -----------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        if self._closed:
            coro.close()
            raise SinkError("the NATS sink is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise SinkError(f"NATS: no answer within {timeout_s:.1f} s") from None

    async def _connection(self) -> Any:
        import nats

        nc = self._nc
        if nc is not None and nc.is_connected:
            return nc
        if nc is not None and not nc.is_closed:
            # The client reconnects by itself; a publish now would wait for the timeout. Fail fast instead.
            raise SinkError(f"NATS {self._masked}: connection is down (reconnecting)")

        async def _err(e: Exception) -> None:
            log.debug("NATS %s: %s", self._masked, type(e).__name__)

        async def _disconnected() -> None:
            if not self._closed:
                log.warning("NATS %s: disconnected", self._masked)

        async def _reconnected() -> None:
            log.info("NATS %s: reconnected", self._masked)

        try:
            self._nc = await nats.connect(
                servers=self.url.split(","),
                name=self.name,
                connect_timeout=self.connect_timeout_s,
                allow_reconnect=True,
                # The first connect tries each server twice and gives up (the outbox retries); once connected,
                # the client reconnects for ever (nats-py reads this option on each reconnect).
                max_reconnect_attempts=1,
                reconnect_time_wait=0.5,
                error_cb=_err,
                disconnected_cb=_disconnected,
                reconnected_cb=_reconnected,
            )
        except Exception as e:  # NoServersError, OSError, TimeoutError: all transient
            raise SinkError(f"NATS {self._masked}: cannot connect: {type(e).__name__}") from None
        self._nc.options["max_reconnect_attempts"] = -1
        self._js = self._nc.jetstream(timeout=self.timeout_s)
        self._obj = None
        self._stream_ok = False
        return self._nc

    async def _jetstream(self) -> Any:
        await self._connection()
        if not self._stream_ok:
            await bus.ensure_stream(self._js, self.stream, self.prefix, self.replicas)
            self._stream_ok = True
        return self._js

    async def _bucket(self) -> Any:
        if self._obj is None:
            self._obj = await bus.ensure_evidence_bucket(self._js, self.prefix, self.replicas)
        return self._obj

    # ---- sending --------------------------------------------------------------------------------

    async def _put_file(self, event_id: str, name: str, data: bytes) -> None:
        from nats.js.errors import ObjectNotFoundError

        obj = await self._bucket()
        key = bus.evidence_key(event_id, name)
        digest = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        try:
            info = await obj.get_info(key)
            if info.digest == digest and info.size == len(data):
                return  # already stored by an earlier try
        except ObjectNotFoundError:
            pass
        await obj.put(key, data)

    async def _send(self, event: Event, files: dict[str, bytes]) -> None:
        import nats.errors
        import nats.js.errors

        try:
            js = await self._jetstream()
            for name, data in files.items():
                await self._put_file(event.id, name, data)
            subject = bus.event_subject(self.prefix, self.site_id, event.camera_id, event.type.value)
            ack = await js.publish(
                subject,
                event.model_dump_json().encode(),
                timeout=self.timeout_s,
                stream=self.stream,
                headers={bus.MSG_ID: bus.msg_id(event.id, event.seq)},
            )
            if ack.duplicate:
                log.debug("event %s#%d was already in the stream", event.id, event.seq)
        except SinkError:
            raise
        except nats.errors.MaxPayloadError as e:
            raise PermanentSinkError(f"event {event.id}#{event.seq} exceeds the server's max_payload") from e
        except (nats.js.errors.NoStreamResponseError, nats.js.errors.NotFoundError) as e:
            self._stream_ok = False  # the stream went away: create it again on the next try
            self._obj = None
            raise SinkError(f"NATS: no stream took {event.id}#{event.seq}: {type(e).__name__}") from None
        except nats.js.errors.APIError as e:
            raise SinkError(f"JetStream refused {event.id}#{event.seq}: {e.description or e.code}") from None
        except (nats.errors.Error, OSError, TimeoutError) as e:
            raise SinkError(f"NATS: {event.id}#{event.seq} not acknowledged: {type(e).__name__}") from None

    def send(self, event: Event, files: dict[str, bytes]) -> None:
        """Put the evidence files, publish the message, await its PubAck. Raises (Permanent)SinkError."""
        budget = self.connect_timeout_s + self.timeout_s * (2 + 2 * len(files)) + 1.0
        with self._lock:
            self._call(self._send(event, files), budget)

    # ---- camera status (best effort) ------------------------------------------------------------

    async def _status(self, camera_id: str, payload: dict[str, Any]) -> bool:
        try:
            nc = await self._connection()
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()
            await nc.publish(bus.status_subject(self.prefix, self.site_id, camera_id), body)
            return True
        except Exception as e:
            log.debug("camera status for %s not sent: %s", camera_id, type(e).__name__)
            return False

    def put_status(self, camera_id: str, payload: dict[str, Any]) -> bool:
        """Core NATS publish of camera health; never raises. True when handed to the client."""
        try:
            return self._call(self._status(camera_id, payload), self.connect_timeout_s + 1.0)
        except Exception:
            return False

    # ---- lifecycle ------------------------------------------------------------------------------

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.drain(), 2.0) if nc.is_connected else await nc.close()
            except Exception:
                await nc.close()

    def close(self) -> None:
        if self._closed:
            return
        fut = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
        self._closed = True
        try:
            fut.result(5.0)
        except Exception:
            fut.cancel()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> NatsSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sink_for(cfg: Any) -> Any:
    """The sink ``cfg.bus`` asks for: ``HttpSink`` to the API (default) or ``NatsSink`` (district)."""
    if cfg.bus.kind == "nats":
        b = cfg.bus
        return NatsSink(b.nats_url, b.stream, b.subject_prefix, cfg.site.id, replicas=b.replicas)
    from pipeline.sinks import HttpSink

    return HttpSink(cfg.api.base_url, cfg.api.worker_key or "")
