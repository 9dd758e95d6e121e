"""The web page: ``GET /`` and its three static assets, shipped inside the package.

The page is plain HTML, CSS and JS with no CDN, so it works offline. It calls only the public
API (``/v1/models``, ``/classify``, ``/features``), exactly as any other client would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR: Final = Path(__file__).with_name("static")

# A fixed list rather than a mounted directory: nothing else under static/ is ever served, and a
# path from the URL never reaches the filesystem.
ASSETS: Final = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

_HEADERS: Final = {
    # The page only talks to its own origin and draws the user's image from a blob: URL.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Small files; revalidating each load keeps the page in step with the installed package.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_HEADERS
    )


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, "no such static asset")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=_HEADERS)
