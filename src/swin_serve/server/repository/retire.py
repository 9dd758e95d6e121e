"""Retiring a model that was replaced or removed: it finishes the requests that hold it, its
batcher stops, and the registry forgets it."""

from __future__ import annotations

import logging

from swin_serve.server.repository.models import LoadedModel
from swin_serve.server.repository.registry import Registry
from swin_serve.server.settings import Settings

log = logging.getLogger("swin_serve.server")


async def retire(registry: Registry, model: LoadedModel, settings: Settings) -> None:
    """Let ``model`` finish what it holds, then stop it; the registry then forgets it."""
    # The longest a request that leased it can still take: its body, then its deadline.
    budget = settings.body_timeout_s + settings.request_timeout_ms / 1e3 + 1.0
    try:
        finished = await model.retire(budget)
    finally:
        registry.unloaded(model)
    log.info(
        "model %s: old version unloaded (%s)", model.name, "drained" if finished else "timed out"
    )
