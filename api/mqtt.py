"""MQTT publishing in Frigate's style (config ``mqtt:``; topics under ``topic_prefix``, default ``pingan``).

Topics:

- ``<prefix>/events``: every stored event message, disposition change and escalation, as
  ``{"type": "new" | "update" | "end", "before": {...}, "after": {...}}`` (the event as
  ``GET /api/events/{id}`` shows it, without history). ``new`` is the first message of an event, ``end``
  its closing message, ``update`` everything else (later messages, dispositions, escalations). ``before`` is
  the event as last published (``after`` itself when this process has not published it before).
- ``<prefix>/<camera>/status`` (retained): the camera's health as ``GET /api/cameras`` shows it.
- ``<prefix>/available`` (retained): ``online`` while connected; ``offline`` when the API stops, and as the
  broker's Last Will when the connection is lost.
- ``<prefix>/escalations``: an event unacknowledged past its SLA (api.sla):
  ``{"event": {...}, "sla": {...}, "entry": {...}}``.
- anything else through :meth:`MqttPublisher.publish` (e.g. ``parking/<lot>/free``).

paho-mqtt runs its network loop in its own thread and reconnects by itself (1 s … 30 s). Nothing here blocks
the caller: :meth:`MqttPublisher.publish` appends to a bounded queue (the oldest message is dropped when it is
full, and counted) that a sender thread hands to paho while the broker is connected. A broker that is down or
slow never holds up ingestion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from api.broadcast import CLOSE, Broadcaster, Message
from pipeline.config import MqttConfig

log = logging.getLogger("pingan.api.mqtt")
EVENT_CACHE = 10_000  # events whose last published state is kept (for "before")


@dataclass(frozen=True)
class _Out:
    topic: str
    payload: bytes
    qos: int
    retain: bool


def _encode(payload: Any) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    if isinstance(payload, bool):
        return b"true" if payload else b"false"
    if isinstance(payload, int | float):
        return str(payload).encode()
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str).encode()


class MqttPublisher:
    """Publishes to one broker. With no config (or ``enabled: false``) every call is a cheap no-op."""

    def __init__(self, cfg: MqttConfig | None, site_id: str = "site") -> None:
        self.cfg = cfg
        self.enabled = cfg is not None and cfg.enabled
        self.prefix = cfg.topic_prefix if cfg is not None else "pingan"
        self.site_id = site_id
        self.queue_size = cfg.queue_size if cfg is not None else 1
        self.dropped = 0  # messages given up: the queue was full (oldest first) or paho's own queue was
        self.sent = 0
        self.connects = 0
        self.bridged = 0  # live-feed subscriptions held by bridge(): not SSE clients (see /metrics)
        self._queue: deque[_Out] = deque()
        self._cond = threading.Condition()
        self._connected = False
        self._stopping = False
        self._client: Any = None
        self._sender: threading.Thread | None = None
        self._events: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._retained: dict[str, bytes] = {}  # last retained payload per status topic: re-sent on reconnect

    # ---- topics ---------------------------------------------------------------------------------

    def topic(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    @property
    def available_topic(self) -> str:
        return self.topic("available")

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def queued(self) -> int:
        return len(self._queue)

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start paho's network thread (it connects and reconnects by itself) and the sender thread."""
        if not self.enabled or self._client is not None:
            return
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        cfg = self.cfg
        assert cfg is not None
        client_id = cfg.client_id or f"pingan-api-{self.site_id}-{uuid.uuid4().hex[:8]}"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        client.will_set(self.available_topic, b"offline", qos=1, retain=True)
        if cfg.username is not None:
            pw = cfg.password.get_secret_value() if cfg.password is not None else None
            client.username_pw_set(cfg.username, pw)
        client.reconnect_delay_set(1, 30)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(cfg.queue_size)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client
        self._stopping = False
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="pingan-mqtt-send", daemon=True)
        self._sender.start()

    def stop(self, flush_s: float = 2.0) -> None:
        """Send what is queued (for up to ``flush_s`` while connected), announce ``offline``, disconnect, and
        stop both threads. Leaves no socket open."""
        client = self._client
        if client is None:
            return
        with self._cond:
            if self._connected and self._queue:
                self._cond.wait_for(lambda: not self._queue or not self._connected, timeout=flush_s)
            self._stopping = True
            self._cond.notify_all()
        if self._sender is not None:
            self._sender.join(timeout=5)
            self._sender = None
        try:
            if self._connected:
                info = client.publish(self.available_topic, b"offline", qos=1, retain=True)
                with contextlib.suppress(Exception):
                    info.wait_for_publish(timeout=flush_s)
            client.disconnect()
        except Exception as err:  # shutting down: report, never raise
            log.debug("mqtt: disconnect: %s", type(err).__name__)
        client.loop_stop()
        with contextlib.suppress(Exception):
            client._reset_sockets()  # the socket and the wake-up pair, whatever state the loop ended in
        self._client = None
        self._connected = False

    # ---- paho callbacks (network thread) --------------------------------------------------------

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("mqtt: broker refused the connection: %s", reason)
            return
        self.connects += 1
        log.info("mqtt: connected to the broker")
        client.publish(self.available_topic, b"online", qos=1, retain=True)
        with self._cond:
            # the broker may have lost its retained state (restart without persistence): send it again
            for topic, payload in list(self._retained.items()):
                self._queue.appendleft(_Out(topic, payload, 1, True))
            self._connected = True
            self._cond.notify_all()

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
            self._cond.notify_all()
        if was and not self._stopping:
            log.warning("mqtt: connection lost (%s); reconnecting", reason)

    # ---- sending --------------------------------------------------------------------------------

    def publish(self, topic: str, payload: Any, retain: bool = False, qos: int = 1) -> bool:
        """Queue one message; never blocks. ``topic`` is relative to the prefix (``parking/lot-1/free`` →
        ``pingan/parking/lot-1/free``; a topic that already starts with ``<prefix>/`` is taken as is).
        ``payload``: bytes, str, number, or anything JSON-serialisable. Returns False when MQTT is off."""
        if not self.enabled or self._stopping:
            return False
        if not topic.startswith(self.prefix + "/"):
            topic = self.topic(topic)
        if not topic or any(c in topic for c in "+#\0"):
            raise ValueError(f"not a topic to publish to: {topic!r}")
        out = _Out(topic, _encode(payload), qos, retain)
        with self._cond:
            if retain:
                self._retained[topic] = out.payload
                if len(self._retained) > 100_000:  # bounded, whatever callers do
                    self._retained.pop(next(iter(self._retained)))
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(out)
            self._cond.notify_all()
        return True

    def _send_loop(self) -> None:
        from paho.mqtt.enums import MQTTErrorCode

        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or (self._connected and bool(self._queue)))
                if self._stopping:
                    return
                out = self._queue.popleft()
                self._cond.notify_all()  # stop() may be waiting for the queue to drain
            client = self._client
            if client is None:
                return
            try:
                info = client.publish(out.topic, out.payload, qos=out.qos, retain=out.retain)
            except Exception as err:  # a bad topic or payload: drop that message, keep sending
                log.warning("mqtt: message to %s not sent: %s", out.topic, type(err).__name__)
                self.dropped += 1
                continue
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                self.dropped += 1
            elif info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and out.qos == 0:
                with self._cond:  # lost the connection meanwhile: keep it for the next one
                    self._queue.appendleft(out)
            else:  # sent, or (QoS ≥ 1) kept by paho and sent on reconnect
                self.sent += 1

    # ---- what the API publishes -----------------------------------------------------------------

    def event_message(self, after: dict[str, Any], lifecycle: bool) -> dict[str, Any]:
        """The ``<prefix>/events`` payload for the event's new state; remembers it as the next ``before``.
        ``lifecycle``: a message from the camera (new/update/end), else an API-side change (update)."""
        eid = str(after.get("id"))
        before = self._events.pop(eid, None)
        after = {k: v for k, v in after.items() if k != "history"}
        closing = after.get("state") == "closed" and (before is None or before.get("state") != "closed")
        if lifecycle and closing:
            kind = "end"
        elif lifecycle and before is None and after.get("seq") == 0:
            kind = "new"
        else:
            kind = "update"
        self._events[eid] = after
        while len(self._events) > EVENT_CACHE:
            self._events.popitem(last=False)
        return {"type": kind, "before": before if before is not None else after, "after": after}

    def on_live(self, kind: str, data: dict[str, Any]) -> None:
        """Publish one live-feed message (api.broadcast kinds: event, disposition, camera, escalation)."""
        if not self.enabled:
            return
        if kind == "event":
            self.publish("events", self.event_message(data, lifecycle=True))
        elif kind == "disposition":
            self.publish("events", self.event_message(data["event"], lifecycle=False))
        elif kind == "escalation":
            self.publish("events", self.event_message(data["event"], lifecycle=False))
            self.publish("escalations", data)
        elif kind == "camera":
            cam = str(data.get("id", ""))
            if cam and "/" not in cam:
                self.publish(self.topic(cam, "status"), data, retain=True)


async def bridge(
    publisher: MqttPublisher,
    broadcaster: Broadcaster,
    stopping: asyncio.Event,
    own: Callable[[Message], bool] = lambda m: "relay" not in m.meta,
) -> None:
    """Feed what this replica's live feed carries (and ``own`` accepts: not what other replicas relayed, which
    they publish themselves) to MQTT, until ``stopping`` is set; what is queued then is still published."""
    sub = broadcaster.subscribe(own)
    sub.queue = asyncio.Queue(maxsize=max(publisher.queue_size, broadcaster.queue_size))
    publisher.bridged += 1
    stop = asyncio.ensure_future(stopping.wait())

    def handle(msg: Message) -> None:
        try:
            data = json.loads(msg.text.split("\ndata: ", 1)[1])
            publisher.on_live(msg.kind, data)
        except Exception as err:  # never let one odd message end the bridge
            log.warning("mqtt: live message not published: %s", type(err).__name__)

    try:
        while True:
            get = asyncio.ensure_future(sub.queue.get())
            done, _ = await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await get
                while not sub.queue.empty():
                    msg = sub.queue.get_nowait()
                    if msg is not CLOSE:
                        handle(msg)
                return
            msg = get.result()
            if msg is CLOSE:
                return
            handle(msg)
    finally:
        stop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stop
        broadcaster.unsubscribe(sub)
        publisher.bridged -= 1
