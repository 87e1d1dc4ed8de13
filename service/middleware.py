"""ASGI middleware: the request id on every line and answer, and the loopback-only rule."""

from __future__ import annotations

import ipaddress
import json
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from formwork import logs
from formwork.errors import Forbidden

REQUEST_ID_HEADER = b"x-request-id"
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
NO_KEYS = (
    "no API keys are configured, so this server answers loopback clients only; configure keys "
    "(formwork keys new) or, behind your own auth, set insecure_no_auth"
)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequestIdMiddleware:
    """Takes the caller's X-Request-ID (or makes one), logs with it and echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER, b"").decode("latin-1")[:128]
        rid = given or uuid.uuid4().hex
        token = logs.request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER, rid.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logs.request_id.reset(token)


class LoopbackOnlyMiddleware:
    """With no keys configured, refuse (403) every client that is not on loopback.

    It sits in the app, so the rule holds however the app is served (``formwork serve``,
    uvicorn or gunicorn directly, any host). Added only when the rule applies."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] not in ("http", "websocket") or (client and is_loopback(client[0])):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        problem = Forbidden(NO_KEYS).problem(instance=scope.get("path", ""))
        problem["request_id"] = logs.request_id.get()
        body = json.dumps(problem).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
