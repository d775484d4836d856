"""App factory: ``create_app(settings_from_config(cfg))``; run it with ``api.server.serve`` (or uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Mount

from api.auth import auth_rules as _auth_rules
from api.auth import public
from api.broadcast import Broadcaster, Message
from api.db import make_engine, migrate
from api.errors import install_handlers
from api.http import LimitsMiddleware
from api.mqtt import MqttPublisher
from api.mqtt import bridge as mqtt_bridge
from api.routers import (
    audit,
    bins,
    cameras,
    dashboard,
    events,
    evidence,
    false_alarms,
    grid,
    live,
    metrics,
    packs,
    parking,
    stations,
    violations,
)
from api.runtime import Runtime, RuntimeDep
from api.settings import Settings
from api.store import Store
from api.webhooks import WebhookDispatcher
from api.webhooks import router as webhooks_router

log = logging.getLogger("pingan.api")
STATIC = Path(__file__).resolve().parent / "static"
PUBLIC_PATHS = frozenset({"/healthz", "/login", "/logout", "/api/token", "/favicon.ico"})
PUBLIC_MOUNTS = frozenset({"/static"})


def _healthz(_: Annotated[None, Depends(public)], rt: RuntimeDep) -> JSONResponse:
    try:
        ok = rt.store.ping()
    except Exception as err:  # the health check reports, it does not raise
        log.warning("health check: database unreachable: %s", type(err).__name__)
        ok = False
    return JSONResponse(
        {"status": "ok" if ok else "degraded", "database": ok}, status_code=200 if ok else 503
    )


async def _pause(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)


async def _retention(rt: Runtime, stopping: asyncio.Event) -> None:
    """Keep evidence on disk under ``media_max_bytes`` (api.retention: non-violations first, then violations
    the police already have; never the others)."""
    from api.retention import prune

    cap = rt.settings.media_max_bytes
    assert cap is not None
    while not stopping.is_set():
        try:
            done = await run_in_threadpool(prune, rt.store, cap)
            if done.files:
                log.info("retention: removed %d evidence files (%d bytes)", done.files, done.freed)
        except Exception as err:  # keep the loop alive; the next round retries
            log.warning("retention failed: %s", type(err).__name__)
        await _pause(stopping, rt.settings.retention_every_s)


async def _health_watch(rt: Runtime, stopping: asyncio.Event) -> None:
    """Cameras that stop reporting send nothing: notice when their health changes with time alone (e.g. a
    worker box died → offline) and tell live subscribers, as a status report would."""
    from api.routers.common import camera_public

    last: dict[str, str] | None = None
    while not stopping.is_set():
        try:
            rows = await run_in_threadpool(rt.store.cameras)
            now = {r["id"]: camera_public(r, rt) for r in rows}
            if last is not None:
                for cam_id, pub in now.items():
                    # reports announce themselves; only time turns a camera offline silently
                    if pub.health == "offline" and last.get(cam_id) not in (None, "offline"):
                        meta = {"camera_id": cam_id, "grid": pub.grid}
                        rt.broadcaster.publish("camera", pub.model_dump(mode="json"), meta)
            last = {cam_id: pub.health for cam_id, pub in now.items()}
        except Exception as err:  # keep watching; the next round retries
            log.warning("camera health watch failed: %s", type(err).__name__)
        await _pause(stopping, rt.settings.health_check_s)


def app_routes(app: FastAPI) -> list[BaseRoute]:
    """Every route of the app, included routers flattened (FastAPI includes them lazily)."""
    return [rc.original_route for rc in iter_route_contexts(app.routes)]


def check_route_rules(app: FastAPI) -> None:
    """Deny by default: every API route carries exactly one auth rule; public ones are on the allow-list."""
    for route in app_routes(app):
        if isinstance(route, APIRoute):
            rules = _auth_rules(route.dependant)
            if len(rules) != 1:
                raise RuntimeError(f"route {route.path} has {len(rules)} auth rules; it needs exactly one")
            if rules[0][0] == "public" and route.path not in PUBLIC_PATHS:
                raise RuntimeError(f"route {route.path} is public but not on the public allow-list")
        elif isinstance(route, Mount):
            if route.path not in PUBLIC_MOUNTS:
                raise RuntimeError(f"mount {route.path} is not on the public allow-list")
        else:
            raise RuntimeError(
                f"route {getattr(route, 'path', route)} is not an APIRoute and has no auth rule"
            )


def create_app(settings: Settings) -> FastAPI:
    """Build the API. The database is migrated (Alembic) and the configured cameras are synced at startup."""
    engine = make_engine(settings.database_url)
    settings.media_dir.mkdir(parents=True, exist_ok=True)
    rt = Runtime(
        settings=settings,
        store=Store(engine, settings.media_dir),
        broadcaster=Broadcaster(settings.sse_queue_size),
        mqtt=MqttPublisher(settings.mqtt, settings.site_id),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(migrate, engine)
        await run_in_threadpool(rt.store.sync_cameras, settings.cameras)
        rt.broadcaster.bind(asyncio.get_running_loop())
        # these finish their round and stop when told (never cancelled mid-query: a thread still holding a
        # connection while the engine is disposed would leak it)
        stopping = asyncio.Event()
        loops = []
        if rt.mqtt.enabled:  # Frigate-style MQTT (api.mqtt): what this replica stores and sees, not relays

            def own(m: Message) -> bool:
                bc = getattr(app.state, "bus_consumer", None)
                return m.meta.get("relay") in (None, getattr(bc, "replica_id", None))

            rt.mqtt.start()
            loops.append(asyncio.create_task(mqtt_bridge(rt.mqtt, rt.broadcaster, stopping, own)))
        if settings.sla:  # escalate events unacknowledged past their limit (api.sla)
            from api import sla

            loops.append(asyncio.create_task(sla.run(rt, stopping)))
        consumer = None
        if settings.bus.kind == "nats":  # district: events arrive over NATS JetStream (api.bus_consumer)
            from api.bus_consumer import BusConsumer

            consumer = BusConsumer(rt)
            app.state.bus_consumer = consumer
            await consumer.start()
        loops.append(asyncio.create_task(_health_watch(rt, stopping)))
        if settings.media_max_bytes:
            loops.append(asyncio.create_task(_retention(rt, stopping)))
        webhooks = WebhookDispatcher(
            engine, settings.webhooks, poll_s=settings.webhook_poll_s, lookback_s=settings.webhook_lookback_s
        )
        app.state.webhooks = webhooks
        if settings.webhooks:  # signed push of stored messages (api.webhooks); the queue is in the database
            loops.append(asyncio.create_task(webhooks.run(stopping)))
        try:
            yield
        finally:
            stopping.set()
            await asyncio.gather(*loops, return_exceptions=True)
            if consumer is not None:
                await consumer.stop()
            await run_in_threadpool(rt.mqtt.stop)  # flush, "offline", disconnect
            webhooks.close()
            rt.broadcaster.close()
            await asyncio.sleep(0)  # let open streams see the close and finish
            engine.dispose()

    app = FastAPI(
        title="pingan",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )
    app.state.pingan = rt
    install_handlers(app)
    app.add_middleware(
        LimitsMiddleware,
        max_json_bytes=settings.max_json_bytes,
        max_evidence_bytes=settings.max_evidence_bytes,
    )
    # live before events: /api/events/stream must win over /api/events/{event_id}
    for module in (live, events, evidence, cameras, violations, packs, audit, dashboard, parking, grid, bins):
        app.include_router(module.router)
    for module in (metrics, false_alarms, stations):  # type: ignore[assignment]
        app.include_router(module.router)
    app.include_router(webhooks_router)
    app.add_api_route("/healthz", _healthz, methods=["GET"], response_class=JSONResponse)
    # HEAD for load balancers; a second route, as one route with both methods gives the OpenAPI document a
    # duplicate operation id (FastAPI warns; schemathesis reads the document)
    app.add_api_route(
        "/healthz", _healthz, methods=["HEAD"], response_class=JSONResponse, include_in_schema=False
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    check_route_rules(app)
    return app
