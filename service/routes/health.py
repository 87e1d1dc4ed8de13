"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import CanRead, GuardDep, MetricsDep, ProvidersDep, StoreDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {
            "description": "No model provider is usable; the body says which.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
async def readyz(store: StoreDep, providers: ProvidersDep, response: Response) -> dict[str, object]:
    reason = await store.health()
    ready = await providers.ready()
    loading = providers.loading()
    if loading:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        state = "loading"
    elif not any(ready.values()):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        state = "unavailable"
    else:
        state = "ready" if reason is None else "degraded"
    body: dict[str, object] = {"status": state, "redis": reason is None, "providers": ready}
    if reason is not None:
        body["reason"] = reason
    if loading:
        body["loading"] = loading
    if providers.unavailable:
        body["unavailable"] = providers.unavailable
    return body


@router.get("/metrics", dependencies=[CanRead], response_class=PlainTextResponse)
async def metrics(metrics: MetricsDep, guard: GuardDep) -> Response:
    await guard.refresh()  # the budget and retirement gauges as of this scrape
    body = generate_latest(metrics.prometheus.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
