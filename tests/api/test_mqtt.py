"""MQTT (api.mqtt) against the real Mosquitto on 127.0.0.1:1883: events new/update/end, retained camera status
and availability (with the Last Will), escalations; a broker that is down never blocks anything."""

from __future__ import annotations

import gc
import json
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from api.app import create_app
from api.mqtt import MqttPublisher
from pipeline.config import MqttConfig, SlaRule
from tests.fixtures.api import PASSWORD, WORKER, TestClient, make_event, make_settings

pytestmark = pytest.mark.mqtt


class Sub:
    """A real paho client subscribed to ``<prefix>/#``; messages land in a queue."""

    def __init__(self, addr: tuple[str, int], prefix: str) -> None:
        self.q: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.prefix = prefix
        ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{uuid.uuid4().hex[:8]}")

        def on_connect(client: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
            client.subscribe(f"{prefix}/#", qos=1)

        c.on_connect = on_connect
        c.on_subscribe = lambda *_a: ready.set()
        c.on_message = lambda _c, _u, m: self.q.put((m.topic, m.payload, bool(m.retain)))
        c.connect(*addr, keepalive=30)
        c.loop_start()
        assert ready.wait(5), "subscription not confirmed"
        self.client = c

    def next(self, topic: str, timeout: float = 5.0, payload: bytes | None = None) -> tuple[bytes, bool]:
        """The next message on ``topic`` (optionally with this payload), skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no message on {topic} ({payload!r})")
            try:
                t, p, retained = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if t == f"{self.prefix}/{topic}" and (payload is None or p == payload):
                return p, retained

    def event(self, timeout: float = 5.0) -> dict[str, Any]:
        return json.loads(self.next("events", timeout)[0])  # type: ignore[no-any-return]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _clear_retained(addr: tuple[str, int], prefix: str, topics: list[str]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-clean-{uuid.uuid4().hex[:8]}")
    c.connect(*addr)
    c.loop_start()
    for t in topics:
        c.publish(f"{prefix}/{t}", b"", qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


@pytest.fixture
def prefix(mqtt_addr: tuple[str, int]) -> Iterator[str]:
    p = f"pingan-test-{uuid.uuid4().hex[:10]}"
    yield p
    _clear_retained(mqtt_addr, p, ["available", "gate-east/status", "parking/lot-1/free"])


def _cfg(addr: tuple[str, int], prefix: str, **kw: Any) -> MqttConfig:
    return MqttConfig(host=addr[0], port=addr[1], topic_prefix=prefix, keepalive_s=5, **kw)


def test_events_status_availability_and_escalations(tmp_path, mqtt_addr, prefix, api_users):
    settings = make_settings(
        tmp_path,
        mqtt=_cfg(mqtt_addr, prefix),
        sla={"illegal_parking": SlaRule(ack_within_s=0.3)},
        sla_check_s=0.1,
    )
    sub = Sub(mqtt_addr, prefix)
    try:
        with TestClient(create_app(settings)) as client:
            assert sub.next("available", payload=b"online")[0] == b"online"
            status = {"state": "running", "fps": 1.5, "frames": 40, "dropped": 0, "reconnects": 0}
            r = client.put("/api/cameras/gate-east/status", json=status, headers=WORKER)
            assert r.status_code == 204
            cam = json.loads(sub.next("gate-east/status")[0])
            assert (cam["id"], cam["state"], cam["health"], cam["fps"]) == ("gate-east", "running", "ok", 1.5)

            ev = make_event()
            assert client.post("/api/events", json=ev, headers=WORKER).status_code == 201
            new = sub.event()
            assert new["type"] == "new"
            assert new["after"]["id"] == ev["id"] and new["after"]["state"] == "open"
            assert new["before"] == new["after"]
            assert new["after"]["disposition"] == "new"

            upd = dict(ev, state="update", seq=1, dwell_s=125.0)
            assert client.post("/api/events", json=upd, headers=WORKER).status_code == 200
            assert client.post("/api/events", json=upd, headers=WORKER).status_code == 200  # a duplicate
            # the update, and (unacknowledged past 0.3 s) the escalation: pingan/escalations and an update on
            # pingan/events, in whichever order the check and the post happened
            updates, escalations = [], []
            while len(updates) < 2 or not escalations:
                t, p, _r = sub.q.get(timeout=5)
                if t == f"{prefix}/events":
                    updates.append(json.loads(p))
                elif t == f"{prefix}/escalations":
                    escalations.append(json.loads(p))
            assert [m["type"] for m in updates] == ["update", "update"]
            moved = [m for m in updates if m["before"]["dwell_s"] != m["after"]["dwell_s"]]
            assert [(m["before"]["dwell_s"], m["after"]["dwell_s"]) for m in moved] == [(65.0, 125.0)]
            marked = [m for m in updates if m["after"]["escalated_at"] and not m["before"]["escalated_at"]]
            assert len(marked) == 1
            (esc,) = escalations
            assert esc["event"]["id"] == ev["id"] and esc["event"]["escalated_at"]
            assert esc["sla"]["ack_within_s"] == 0.3
            assert esc["entry"]["action"] == "escalate"

            closed = dict(ev, state="closed", seq=2, dwell_s=300.0, ended_at=ev["updated_at"])
            assert client.post("/api/events", json=closed, headers=WORKER).status_code == 200
            end = sub.event()
            assert end["type"] == "end"
            assert (end["before"]["state"], end["after"]["state"]) == ("update", "closed")

            # staff dispose: an update (the duplicate above was not published: this is the next message)
            r = client.post("/api/token", json={"username": "admin", "password": PASSWORD})
            admin = {"Authorization": f"Bearer {r.json()['access_token']}"}
            r = client.post(
                f"/api/events/{ev['id']}/disposition", json={"action": "acknowledge"}, headers=admin
            )
            assert r.status_code == 200, r.text
            m = sub.event()
            assert m["type"] == "update"
            assert (m["before"]["disposition"], m["after"]["disposition"]) == ("new", "acknowledged")

            # the generic publish other code uses (e.g. parking availability)
            assert client.app.state.pingan.mqtt.publish("parking/lot-1/free", 7, retain=True)
            assert sub.next("parking/lot-1/free")[0] == b"7"
            text = client.get("/metrics", headers=admin).text
            assert "pingan_mqtt_connected 1" in text and "pingan_mqtt_messages_dropped_total 0" in text
            assert "pingan_sse_subscribers 0" in text  # the MQTT bridge's subscription is not a stream
        # the app stopped: "offline", retained
        assert sub.next("available", payload=b"offline")[0] == b"offline"
    finally:
        sub.close()

    late = Sub(mqtt_addr, prefix)  # a client that connects later gets the retained state
    try:
        got = {}
        for _ in range(3):
            t, p, retained = late.q.get(timeout=5)
            got[t.removeprefix(prefix + "/")] = (p, retained)
        assert got["available"] == (b"offline", True)
        assert json.loads(got["gate-east/status"][0])["state"] == "running" and got["gate-east/status"][1]
        assert got["parking/lot-1/free"] == (b"7", True)
    finally:
        late.close()


def test_last_will_and_reconnect(mqtt_addr, prefix):
    pub = MqttPublisher(_cfg(mqtt_addr, prefix))
    sub = Sub(mqtt_addr, prefix)
    try:
        pub.start()
        sub.next("available", payload=b"online")
        # the connection dies without a DISCONNECT: the broker publishes the Will; paho reconnects by itself
        pub._client.socket().shutdown(socket.SHUT_RDWR)
        assert sub.next("available", payload=b"offline", timeout=10)[1] is False
        assert sub.next("available", payload=b"online", timeout=15)[0] == b"online"
        assert pub.connects >= 2
        pub.publish("events", {"type": "new"})
        assert json.loads(sub.next("events")[0]) == {"type": "new"}
    finally:
        pub.stop()
        sub.close()
    assert pub.connected is False
    del pub
    gc.collect()  # an unclosed socket would warn here (ResourceWarning is an error in this suite)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_broker_down_never_blocks_and_drops_oldest(tmp_path):
    cfg = MqttConfig(host="127.0.0.1", port=_dead_port(), queue_size=5, keepalive_s=5)
    pub = MqttPublisher(cfg)
    pub.start()
    try:
        t0 = time.monotonic()
        for i in range(20):
            assert pub.publish("events", {"n": i})
        assert time.monotonic() - t0 < 0.5
        assert (pub.queued, pub.dropped, pub.connected) == (5, 15, False)
        assert [json.loads(o.payload)["n"] for o in pub._queue] == [15, 16, 17, 18, 19]
    finally:
        t0 = time.monotonic()
        pub.stop()
        assert time.monotonic() - t0 < 5

    # and the API keeps ingesting with MQTT configured but the broker unreachable
    settings = make_settings(tmp_path, mqtt=cfg)
    with TestClient(create_app(settings)) as client:
        for _ in range(3):
            t0 = time.monotonic()
            assert client.post("/api/events", json=make_event(), headers=WORKER).status_code == 201
            assert time.monotonic() - t0 < 2
    del pub, client
    gc.collect()


def test_disabled_or_absent_is_a_no_op():
    assert MqttPublisher(None).publish("x", 1) is False
    off = MqttPublisher(MqttConfig(enabled=False))
    off.start()
    assert off.publish("x", 1) is False
    off.stop()


def test_topic_rules():
    pub = MqttPublisher(MqttConfig(topic_prefix="site/a"), site_id="s")
    pub._stopping = False
    assert pub.topic("gate", "status") == "site/a/gate/status"
    assert pub.publish("site/a/parking/x/free", 1)
    assert pub.publish("parking/x/free", 2)
    assert [o.topic for o in pub._queue] == ["site/a/parking/x/free"] * 2
    with pytest.raises(ValueError):
        pub.publish("a/+/b", 1)
