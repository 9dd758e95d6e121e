"""Request parameters that several HTTP routes take: the client's shorter deadline."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Query

TimeoutQuery = Annotated[
    int | None,
    Query(
        ge=1,
        le=600_000,
        description="Shorter deadline for this request (ms); never extends the server default",
    ),
]
TimeoutHeader = Annotated[
    int | None,
    Header(
        ge=1,
        le=600_000,
        alias="X-Request-Timeout-Ms",
        description="Same as the timeout_ms query parameter",
    ),
]
