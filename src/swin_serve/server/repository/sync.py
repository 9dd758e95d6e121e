"""One reload's look: the files compared with what is served, and each difference acted on.

- a new file is loaded, self-checked and warmed up before its name takes requests;
- a file with new content (its SHA-256, not just its time) is loaded beside the old model, and
  the name switches over once the new one is warm;
- a removed file's name answers 404 at once, and its model finishes what it holds, then goes;
- a refused name is tried again, if there is room now;
- a file that fails any step is refused, and whatever is serving is left alone.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from swin_serve.server.repository.listings import Lister
from swin_serve.server.repository.loading import Loading
from swin_serve.server.repository.registry import ModelEntry, Registry
from swin_serve.server.runtime.model_file import FileStamp, ModelFile

log = logging.getLogger("swin_serve.server")


class Sync:
    """Brings ``registry`` in line with what ``lister`` sees, one load at a time."""

    def __init__(self, registry: Registry, lister: Lister, loading: Loading) -> None:
        self.registry, self._lister, self._loading = registry, lister, loading

    async def look(self) -> bool:
        """One look; True if some files were still being written (look again in SETTLE_S)."""
        try:
            listing = await self._lister.look()
        except OSError as exc:  # the volume went away: keep serving what is loaded
            log.error("repository: cannot be read, nothing changed: %s", exc)
            return False
        default = self.registry.default_name
        for entry in list(self.registry.entries.values()):
            if entry.name not in listing.stamps:
                self._loading.remove(entry)
        for name, path in listing.files.items():
            if self._loading.opening.stopped:
                return False
            await self._sync_one(name, path, listing.stamps[name])
        if default is not None and self.registry.default_name is None:
            why = (
                "the repository holds several models and SWIN_DEFAULT_MODEL is unset"
                if self.registry.entries
                else "the repository holds no model"
            )
            log.warning(
                "model %s is no longer the default: %s, so /classify and /features now answer 404",
                default,
                why,
            )
        if listing.unsettled:
            log.info("repository: %s still being written; looking again", sorted(listing.unsettled))
            return True
        return False

    async def _sync_one(self, name: str, path: Path, stamp: FileStamp) -> None:
        entry = self.registry.entries.get(name)
        if entry is None:
            entry = self.registry.add(name, path, stamp=stamp)
            if self._loading.at_capacity(entry):
                self._loading.refuse(entry)
                return
            await self._loading.load(entry, path)
        elif entry.refused:
            if not self._loading.at_capacity(entry):
                self.registry.begin_loading(entry, stamp=stamp)
                await self._loading.load(entry, path)
        elif entry.stamp != stamp:
            await self._changed(entry, path, stamp)

    async def _changed(self, entry: ModelEntry, path: Path, stamp: FileStamp) -> None:
        try:  # the one read: what is compared here is what loads below
            file = await asyncio.to_thread(ModelFile.read, path)
        except OSError as exc:
            log.warning("repository: %s: cannot be read yet: %s", entry.name, exc)
            return
        self.registry.restamp(entry, stamp)
        if entry.model is not None and file.digest == entry.model.digest:
            self.registry.clear_failure(entry)
            return
        if entry.model is None:
            if self._loading.at_capacity(entry):
                self._loading.refuse(entry)
                return
            self.registry.begin_loading(entry)
        else:
            self.registry.begin_replacing(entry)
            log.info(
                "model %s: new content in %s; loading it beside the serving one", entry.name, path
            )
        await self._loading.load(entry, path, file)
