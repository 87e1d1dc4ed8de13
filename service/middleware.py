"""ASGI middleware: the request id on every line and answer (a 500 included), the request body
limit, and the loopback-only rule."""

from __future__ import annotations

import ipaddress
import json
import logging
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from formwork import logs
from formwork.errors import Forbidden, FormworkError

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})
NO_KEYS = (
    "no API keys are configured, so this server answers loopback clients only; configure keys "
    "(formwork keys new) or, behind your own auth, set insecure_no_auth"
)


async def send_problem(send: Send, scope: Scope, error: FormworkError) -> None:
    """Answer with ``error`` as problem+json, from below the app's own exception handlers."""
    problem = error.problem(instance=scope.get("path", ""))
    problem["request_id"] = logs.request_id.get()
    body = json.dumps(problem).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


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

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [
                    *message.get("headers", []),
                    (REQUEST_ID_HEADER, rid.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            if started:
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await send_problem(send_with_id, scope, FormworkError("an internal error occurred"))
        finally:
            logs.request_id.reset(token)


class PayloadTooLarge(FormworkError):
    """413, raised only here: the body is refused before anything reads it."""

    status, slug, title = 413, "payload-too-large", "Request body too large"


class BodyLimitMiddleware:
    """Refuse (413) a request body over ``max_bytes`` before the app reads it, and so before
    auth: at once from ``Content-Length``; for a chunked body, as soon as the bytes received
    pass the limit (what came is held here, at most ``max_bytes``, and replayed to the app)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            size = int(declared) if declared.isdigit() else self.max_bytes + 1
            if size > self.max_bytes:
                await send_problem(send, scope, self._refusal(f"is {size} bytes, over"))
                return
            await self.app(scope, receive, send)  # the server delivers no more than declared
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await send_problem(send, scope, self._refusal("passed"))
                return
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": bytes(body), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    def _refusal(self, size: str) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body {size} the limit of {self.max_bytes} bytes",
            limit_bytes=self.max_bytes,
        )


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages``, then what the server gives (a disconnect)."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


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
        await send_problem(send, scope, Forbidden(NO_KEYS))
