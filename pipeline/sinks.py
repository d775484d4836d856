"""Sinks: where the outbox delivers events. ``HttpSink`` speaks the worker → API contract (docs/CONTRACTS.md).

Outcome of one ``send`` (one event message and its evidence files):

- acknowledged: ``POST /api/events`` answered 200 (duplicate) / 201 (created), or 409 (the API already holds
  that (id, seq)); then every ``PUT /api/events/{id}/evidence/{name}`` answered 200/201/204;
- transient (:class:`SinkError`, retried by the outbox): connection refused/reset, timeouts, 5xx, 408, 425,
  429, and 401/403 (a wrong or not-yet-provisioned worker key is a configuration fault fixed by an operator;
  the events must wait for it rather than be thrown away);
- permanent (:class:`PermanentSinkError`, dead-lettered by the outbox): any other 4xx, including 409/422 on an
  evidence upload (the bytes do not match the listed sha256).

Sending is idempotent: the API de-duplicates by (id, seq) and evidence uploads are PUTs, so a retried send
after a half-finished one (message stored, a file not yet) is harmless.

``send_batch`` (used by the outbox for a backlog) POSTs up to ``batch_max`` messages to
``POST /api/events/batch`` and judges each item by the ``code`` the API reports for it, exactly as above
(201/200 and 409 acknowledged; 401/403/408/425/429/5xx transient; other 4xx permanent), then PUTs the
evidence files of each acknowledged item as ``send`` does. The whole request failing transiently (no
connection, 5xx, 401/403, ...) makes every item transient. An API without the batch route (404/405): the
call raises :class:`BatchUnsupported` (nothing sent; the outbox then sends those messages one by one) and
``batching`` is False for ``BATCH_RETRY_S``, then the batch route is tried again; a batch the API refuses
as a whole for another 4xx (e.g. 413 too large) is sent one message at a time, each judged alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import httpx

from pipeline.errors import BatchUnsupported, PermanentSinkError, SinkError
from pipeline.events import Event
from pipeline.redact import mask_url

log = logging.getLogger(__name__)

ACK = frozenset({200, 201, 204})
TRANSIENT_4XX = frozenset({401, 403, 408, 425, 429})
BATCH_PATH = "/api/events/batch"
BATCH_MAX = 100  # messages per batch request (the API takes up to 500)
BATCH_RETRY_S = 600.0  # after a 404/405 from the batch route (an older API), single requests this long


class _TransportError(SinkError):
    """No HTTP answer at all (refused, reset, timeout): later requests to the same API would fail alike."""


def _outcome(code: int, what: str, detail: str, duplicate_ok: bool) -> SinkError | None:
    """None when ``code`` acknowledges the message, else the error to raise (see module doc)."""
    if code in ACK or (duplicate_ok and code == 409):
        return None
    msg = f"{what} → HTTP {code}: {detail[:200].replace(chr(10), ' ')}"
    if code >= 500 or code in TRANSIENT_4XX or code < 200 or 300 <= code < 400:
        if code in (401, 403):
            log.error("API refused the worker key (%s): check api.worker_key / PINGAN_WORKER_KEY", code)
        return SinkError(msg)
    return PermanentSinkError(msg)


def _classify(resp: httpx.Response, what: str, duplicate_ok: bool) -> None:
    err = _outcome(resp.status_code, what, resp.text, duplicate_ok)
    if err is not None:
        raise err


def _item_codes(resp: httpx.Response, n: int) -> list[tuple[int, str]] | None:
    """(code, message) per item of a 200 batch answer, or None when it is not one for these n items."""
    try:
        items = resp.json()["items"]
        out = [(int(it["code"]), str(it.get("message") or it.get("status") or "")) for it in items]
        if [int(it["index"]) for it in items] != list(range(n)):
            return None
    except (ValueError, KeyError, TypeError):
        return None
    return out


class HttpSink:
    """Delivers events to the pingan API over HTTP (see module doc for what counts as acknowledged)."""

    def __init__(
        self,
        base_url: str,
        key: str,
        timeout_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        batch_max: int = BATCH_MAX,
    ) -> None:
        if not 1 <= batch_max <= 500:
            raise ValueError("batch_max must be 1..500")
        self.base_url = base_url.rstrip("/")
        self.batch_max = batch_max
        self._single_until = 0.0  # monotonic time until which the batch route is not tried (older API)
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"authorization": f"Bearer {key}", "user-agent": "pingan-worker/1"},
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            follow_redirects=False,
        )

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kw)
        except httpx.HTTPError as e:  # connect/read/write errors and timeouts: transient
            # httpx messages never carry the key; mask any URL userinfo all the same.
            raise _TransportError(mask_url(f"{method} {path}: {type(e).__name__}: {e}")) from None

    def send(self, event: Event, files: dict[str, bytes]) -> None:
        """POST the message, then PUT each evidence file. Raises SinkError / PermanentSinkError."""
        resp = self._request("POST", "/api/events", json=event.to_wire())
        _classify(resp, f"POST /api/events {event.id}#{event.seq}", duplicate_ok=True)
        self._put_files(event, files)

    def _put_files(self, event: Event, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            path = f"/api/events/{quote(event.id, safe='')}/evidence/{quote(name, safe='')}"
            resp = self._request("PUT", path, content=data, headers={"content-type": "image/jpeg"})
            _classify(resp, f"PUT evidence {name} of {event.id}", duplicate_ok=False)

    @property
    def batching(self) -> bool:
        """False while the API is known to lack the batch route (``BATCH_RETRY_S`` after its 404/405)."""
        return time.monotonic() >= self._single_until

    def send_batch(self, items: Sequence[tuple[Event, dict[str, bytes]]]) -> list[SinkError | None]:
        """Deliver several messages (distinct ids, or in seq order) through ``POST /api/events/batch``; one
        outcome per item (None: acknowledged). Raises SinkError when the API could not be reached at all."""
        out: list[SinkError | None] = []
        for start in range(0, len(items), self.batch_max):
            chunk = items[start : start + self.batch_max]
            try:
                out += self._batch(chunk) if self.batching else self._one_by_one(chunk)
            except BatchUnsupported:
                if not out:
                    raise  # the caller sends these one at a time, each acknowledged as it goes
                out += self._one_by_one(chunk)
            except SinkError as e:
                if not out:
                    raise
                return out + [e] * (len(items) - len(out))  # earlier chunks were acknowledged: keep that
        return out

    def _batch(self, chunk: Sequence[tuple[Event, dict[str, bytes]]]) -> list[SinkError | None]:
        resp = self._request("POST", BATCH_PATH, json={"events": [ev.to_wire() for ev, _ in chunk]})
        code = resp.status_code
        if code in (404, 405):  # an API from before the batch route
            log.info("API has no %s (HTTP %s): sending one message per request", BATCH_PATH, code)
            self._single_until = time.monotonic() + BATCH_RETRY_S
            raise BatchUnsupported(f"POST {BATCH_PATH} → HTTP {code}")  # nothing was stored
        codes = _item_codes(resp, len(chunk)) if code == 200 else None
        if codes is None:
            err = _outcome(code, f"POST {BATCH_PATH} ({len(chunk)} messages)", resp.text, False)
            if err is not None and not isinstance(err, PermanentSinkError):
                raise err  # API down, overloaded or refusing the key: every item waits
            # refused as a whole (e.g. 413) or an answer we cannot read: let each message be judged alone
            log.warning("%s answered HTTP %s: sending these %d one by one", BATCH_PATH, code, len(chunk))
            return self._one_by_one(chunk)
        out: list[SinkError | None] = []
        down: SinkError | None = None
        for (ev, files), (item_code, message) in zip(chunk, codes, strict=True):
            err = _outcome(item_code, f"POST {BATCH_PATH} {ev.id}#{ev.seq}", message, duplicate_ok=True)
            if err is None and files:
                if down is not None:  # the API went away during the uploads: the rest wait too
                    err = down
                else:
                    try:
                        self._put_files(ev, files)
                    except _TransportError as e:
                        err = down = e
                    except SinkError as e:
                        err = e
            out.append(err)
        return out

    def _one_by_one(self, chunk: Sequence[tuple[Event, dict[str, bytes]]]) -> list[SinkError | None]:
        out: list[SinkError | None] = []
        for ev, files in chunk:
            if out and isinstance(out[-1], _TransportError):
                out.append(out[-1])  # unreachable: do not wait a timeout per message
                continue
            try:
                self.send(ev, files)
                out.append(None)
            except SinkError as e:
                out.append(e)
        return out

    def put_status(self, camera_id: str, payload: dict[str, Any]) -> bool:
        """Best effort camera health (``PUT /api/cameras/{id}/status``); never raises. True when accepted."""
        try:
            resp = self._client.put(f"/api/cameras/{quote(camera_id, safe='')}/status", json=payload)
        except Exception as e:
            log.debug("camera status for %s not sent: %s", camera_id, type(e).__name__)
            return False
        if resp.status_code not in ACK:
            log.debug("camera status for %s refused: HTTP %s", camera_id, resp.status_code)
            return False
        return True

    def put_bay(self, camera_id: str, zone_id: str, payload: dict[str, Any]) -> bool:
        """Best effort bay occupancy (``PUT /api/parking/{camera}/{zone}``, JSON ``{occupied, capacity,
        free, ts, grid}``); never raises. True when accepted."""
        path = f"/api/parking/{quote(camera_id, safe='')}/{quote(zone_id, safe='')}"
        try:
            resp = self._client.put(path, json=payload)
        except Exception as e:
            log.debug("bay state for %s/%s not sent: %s", camera_id, zone_id, type(e).__name__)
            return False
        if resp.status_code not in ACK:
            log.debug("bay state for %s/%s refused: HTTP %s", camera_id, zone_id, resp.status_code)
            return False
        return True

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
