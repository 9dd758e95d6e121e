"""Work an HTTP request waits on, given up as soon as its client disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import ClientDisconnect, Request

T = TypeVar("T")


async def unless_client_left(request: Request, work: Awaitable[T]) -> T:
    """``work``, cancelled as soon as the HTTP client disconnects (ClientDisconnect, logged and
    counted as 499): a decode or a queued image that nobody will read must not hold a decode
    thread or a queue slot, and the log must not call it a 503 the client never saw.

    Only once the body has been read: uvicorn's ``receive`` then returns nothing but the
    disconnect."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if not task.done():  # the client left first: let the work see its cancellation
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: whatever it ended with has nobody to go to
        raise ClientDisconnect()
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
