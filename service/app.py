"""The app factory: ``uvicorn service.app:create_app --factory``."""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pydantic.warnings import UnsupportedFieldAttributeWarning

from formwork import logs
from formwork.auth import Keys
from formwork.config import Settings
from training.assembly import open_services

from . import openapi, problems, ui
from .deps import AppState
from .middleware import BodyLimitMiddleware, LoopbackOnlyMiddleware, RequestIdMiddleware
from .routes import batch, compat, compiles, finetunes, health, tasks

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    async with open_services(settings, background=True) as services:
        app.state.formwork = AppState(settings, services, Keys(settings.api_keys))
        providers = services.core.providers
        log.info("formwork ready: providers %s", ", ".join(providers.names) or "none")
        # Start-up leaves ~250k long-lived objects (jsonschema's format checkers alone are
        # half); freezing them keeps each full GC pass from walking them all and stalling
        # requests.
        gc.collect()
        gc.freeze()
        yield


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # The API's models build their schemas on first use (formwork.protocol.Model); FastAPI then
    # warns that its own body aliases have no effect there, which changes nothing.
    warnings.filterwarnings("ignore", category=UnsupportedFieldAttributeWarning)
    logs.configure(settings.log_level)
    app = FastAPI(
        title="Formwork",
        summary="JSON you can trust from language models.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc: service/ui/docs.py (local assets, read scope)
        redoc_url=None,
        openapi_url=None,  # /openapi.json: service/openapi.py (read scope)
    )
    app.state.settings = settings
    problems.install(app)
    app.include_router(tasks.router)
    app.include_router(finetunes.router)
    app.include_router(compiles.router)
    app.include_router(health.router)
    app.include_router(compat.router)
    app.include_router(batch.router)
    ui.install(app, settings)
    openapi.install(app, keys=bool(settings.api_keys))
    if not settings.api_keys and not settings.insecure_no_auth:
        app.add_middleware(LoopbackOnlyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.body_bytes)
    app.add_middleware(RequestIdMiddleware)  # outermost: its id is on every answer, a 500 too
    return app
