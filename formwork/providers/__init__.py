"""Model providers by name; a route's model is ``provider/model-id``."""

from __future__ import annotations

import datetime as dt
import logging

from .. import dialects
from ..config import Settings
from ..protocol import Route, TaskSpec
from .base import Provider, ProviderError
from .openai import OpenAIProvider

log = logging.getLogger(__name__)


def split_ref(ref: str) -> tuple[str, str]:
    provider, _, model = ref.partition("/")
    return provider, model


class Providers:
    def __init__(
        self,
        providers: dict[str, Provider],
        *,
        default_model: str,
        unavailable: dict[str, str] | None = None,
    ) -> None:
        self._providers = providers
        self.default_route = Route(model=default_model)
        self.unavailable = dict(unavailable or {})  # name -> why it cannot serve here
        self._given: Provider | None = None

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        local: Provider | None = None,
        unavailable: dict[str, str] | None = None,
    ) -> Providers:
        providers: dict[str, Provider] = {
            name: OpenAIProvider(name, conf) for name, conf in settings.providers.items()
        }
        if local is not None:
            providers[local.name] = local
        built = cls(providers, default_model=settings.default_route, unavailable=unavailable)
        built._given = local
        return built

    @property
    def names(self) -> list[str]:
        return sorted(self._providers)

    def has(self, ref: str) -> bool:
        return split_ref(ref)[0] in self._providers

    def resolve(self, ref: str) -> tuple[Provider, str]:
        name, model = split_ref(ref)
        provider = self._providers.get(name)
        if provider is None:
            raise ProviderError(f"no provider named {name!r} is configured")
        return provider, model

    def chain(self, routes: list[Route]) -> list[Route]:
        """The task's routes this replica can serve; the default model when none."""
        usable = [route for route in routes if self.has(route.model)]
        return usable or [self.default_route]

    def warnings(self, spec: TaskSpec) -> list[str]:
        """What a registration should know: skipped routes, what the 2020-12 translation of the
        output schema could not carry over, and what each provider relaxes or does not enforce
        (validation still checks the original schema)."""
        translation = dialects.translate(spec.output_schema)
        notes = [
            f"route {route.model!r}: {self._absent(split_ref(route.model)[0])}, "
            "so the route is skipped"
            for route in spec.routes
            if not self.has(route.model)
        ]
        candidate = spec.candidate.route.model if spec.candidate else None
        if candidate is not None and not self.has(candidate):
            absent = self._absent(split_ref(candidate)[0])
            notes.append(f"candidate {candidate!r}: {absent}, so each of its calls here fails")
        notes += [
            f"translating the {translation.dialect.name} output schema for decoding: {loss}"
            for loss in translation.losses
        ]
        for route in self.chain(spec.routes):
            name, model = split_ref(route.model)
            provider = self._providers.get(name)
            if not route.constrained or provider is None:
                continue
            if isinstance(provider, OpenAIProvider):
                notes += provider.strict_warnings(translation.schema, model=model)
            else:
                notes += provider.schema_warnings(translation.schema)
        return list(dict.fromkeys(notes))

    def _absent(self, name: str) -> str:
        if name in self.unavailable:
            return f"provider {name!r} is unavailable here ({self.unavailable[name]})"
        return f"no provider {name!r} is configured here"

    def loading(self) -> list[str]:
        """The providers still starting up."""
        return sorted(name for name, p in self._providers.items() if p.loading)

    async def ready(self) -> dict[str, bool]:
        """Each provider's readiness; one that is unavailable here is not ready."""
        ready = {name: await p.ready() for name, p in self._providers.items()}
        ready.update({name: False for name in self.unavailable})
        return dict(sorted(ready.items()))

    async def shutdowns(self) -> dict[str, dt.date]:
        """Shutdown dates the OpenAI-compatible endpoints' model lists report, by model ref; an
        endpoint that does not answer gives none."""
        found: dict[str, dt.date] = {}
        for name, provider in self._providers.items():
            if not isinstance(provider, OpenAIProvider):
                continue
            try:
                reported = await provider.shutdowns()
            except ProviderError as e:
                log.info("retirement dates: %s", e)
                continue
            found.update((f"{name}/{model}", when) for model, when in reported.items())
        return found

    async def aclose(self) -> None:
        """Close the providers built here; a ``local`` handed in stays with its owner."""
        for name, provider in reversed(list(self._providers.items())):
            if provider is self._given:
                continue
            try:
                await provider.aclose()
            except Exception:
                log.exception("closing provider %s failed", name)
