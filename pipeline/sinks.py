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
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import httpx

from pipeline.errors import PermanentSinkError, SinkError
from pipeline.events import Event
from pipeline.redact import mask_url

log = logging.getLogger(__name__)

ACK = frozenset({200, 201, 204})
TRANSIENT_4XX = frozenset({401, 403, 408, 425, 429})


def _classify(resp: httpx.Response, what: str, duplicate_ok: bool) -> None:
    code = resp.status_code
    if code in ACK or (duplicate_ok and code == 409):
        return
    detail = resp.text[:200].replace("\n", " ")
    msg = f"{what} → HTTP {code}: {detail}"
    if code >= 500 or code in TRANSIENT_4XX or code < 200 or 300 <= code < 400:
        if code in (401, 403):
            log.error("API refused the worker key (%s): check api.worker_key / PINGAN_WORKER_KEY", code)
        raise SinkError(msg)
    raise PermanentSinkError(msg)


class HttpSink:
    """Delivers events to the pingan API over HTTP (see module doc for what counts as acknowledged)."""

    def __init__(
        self,
        base_url: str,
        key: str,
        timeout_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
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
            raise SinkError(mask_url(f"{method} {path}: {type(e).__name__}: {e}")) from None

    def send(self, event: Event, files: dict[str, bytes]) -> None:
        """POST the message, then PUT each evidence file. Raises SinkError / PermanentSinkError."""
        resp = self._request("POST", "/api/events", json=event.to_wire())
        _classify(resp, f"POST /api/events {event.id}#{event.seq}", duplicate_ok=True)
        for name, data in files.items():
            path = f"/api/events/{quote(event.id, safe='')}/evidence/{quote(name, safe='')}"
            resp = self._request("PUT", path, content=data, headers={"content-type": "image/jpeg"})
            _classify(resp, f"PUT evidence {name} of {event.id}", duplicate_ok=False)

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
