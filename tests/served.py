"""An ASGI app served over real HTTP on loopback by uvicorn in a background thread: for what
``TestClient`` cannot show (a client that disconnects, hundreds of concurrent connections)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from starlette.types import ASGIApp


class Served:
    """``with Served(app) as served: httpx.get(served.url + "/healthz")``."""

    def __init__(self, app: ASGIApp, *, lifespan: str = "on", host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan=lifespan,  # type: ignore[arg-type]
            timeout_graceful_shutdown=1,
        )
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Served:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        self._server = server = uvicorn.Server(self._config)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="served", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the served app did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Served:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
