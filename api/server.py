"""Run the API under uvicorn so that live (SSE) streams end promptly on shutdown.

Uvicorn waits for open connections before it runs the app's shutdown, and an SSE stream never finishes by
itself; this server closes the broadcaster first, so every stream ends and shutdown proceeds.
"""

from __future__ import annotations

from types import FrameType

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.runtime import Runtime
from api.settings import Settings


class Server(uvicorn.Server):
    """uvicorn.Server that ends live streams as soon as it is asked to exit: by a signal, by ``stop()`` or by
    setting ``should_exit = True`` from another thread (what an embedding CLI does)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        self.runtime: Runtime = app.state.pingan
        super().__init__(config)

    @property  # type: ignore[override]
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value:
            self.runtime.broadcaster.close()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.runtime.broadcaster.close()
        super().handle_exit(sig, frame)

    def stop(self) -> None:
        """Ask a server running in another thread to stop (thread-safe)."""
        self.should_exit = True


def create_server(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    **uvicorn_kw: object,
) -> Server:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        proxy_headers=False,
        **uvicorn_kw,  # type: ignore[arg-type]
    )
    return Server(config, app)


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Blocking: run the API until SIGINT/SIGTERM."""
    create_server(settings, host, port, log_level).run()
