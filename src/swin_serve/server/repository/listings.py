"""What the loader acts on: one look at the repository's files (or at SWIN_MODEL_PATH's one
file), with a warning, once each, about the ``.onnx`` files whose names cannot be served."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from swin_serve.server.repository.files import Listing, check_directory, scan, single_file
from swin_serve.server.runtime.engine import ModelLoadError
from swin_serve.server.runtime.model_file import SETTLE_S
from swin_serve.server.settings import Settings

log = logging.getLogger("swin_serve.server")

STARTUP_SETTLE_TRIES = 10  # at start-up, wait this many SETTLE_S for files still being written


class Lister:
    """Listings of the repository that ``settings`` names."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.single_name: str | None = None  # SWIN_MODEL_PATH: the one model's name
        self._misnamed: set[str] = set()  # warned about once each

    async def settled(self, directory: Path) -> Listing:
        """The start-up listing, once no file is being written (or after a while, regardless);
        ModelLoadError if ``directory`` cannot be read."""
        try:
            check_directory(directory)
            listing = await asyncio.to_thread(scan, directory)
            for _ in range(STARTUP_SETTLE_TRIES):
                if not listing.unsettled:
                    break
                log.info("repository: waiting for %s to be written", sorted(listing.unsettled))
                await asyncio.sleep(SETTLE_S)
                listing = await asyncio.to_thread(scan, directory)
        except OSError as exc:
            raise ModelLoadError(f"SWIN_MODEL_REPOSITORY: {exc}") from exc
        self._warn_misnamed(listing)
        return listing

    async def look(self) -> Listing:
        """A reload's listing; OSError if the repository cannot be read."""
        listing = await asyncio.to_thread(self._list)
        log.debug("repository: looking (%d model files)", len(listing.files))
        self._warn_misnamed(listing)
        return listing

    def _list(self) -> Listing:
        directory = self.settings.model_repository
        if directory is not None:
            return scan(directory)
        return single_file(Path(self.settings.model_path), self.single_name or "")

    def _warn_misnamed(self, listing: Listing) -> None:
        for name in sorted(listing.misnamed - self._misnamed):
            log.warning("repository: skipping %s: not a usable model name", name)
        self._misnamed = listing.misnamed
