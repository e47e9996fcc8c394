"""Shared request dependencies: the service state, the current bundle, API-key checks.

All `async def` without blocking work: a sync dependency would cost each request a threadpool hop.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from app.core.config import Settings
from app.services.errors import NoBundle
from app.services.model_bundle import LoadedBundle
from app.services.state import ServiceState

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="one of XREC_API_KEYS; required on write, batch and admin routes "
                                          "(and on reads when XREC_READ_AUTH is true)")


async def get_state(request: Request) -> ServiceState:
    return request.app.state.xrec


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_settings(request: Request) -> Settings:
    return request.app.state.xrec.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_bundle(request: Request) -> LoadedBundle:
    """The bundle this request uses from start to end (a reload swaps the reference, not this one)."""
    try:
        return request.app.state.xrec.require_bundle()
    except NoBundle:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no bundle loaded") from None


BundleDep = Annotated[LoadedBundle, Depends(get_bundle)]

# The dependencies above take the Request rather than each other: every level of sub-dependency costs
# each request some microseconds, and /v1/recommend is meant to answer in well under a millisecond.


def _check_key(settings: Settings, key: str | None) -> None:
    if not key:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing X-API-Key header",
                            headers={"WWW-Authenticate": "APIKey"})
    given = key.encode()
    # Compare against every key in constant time: no early exit that would time which key matched.
    ok = False
    for k in settings.api_keys:
        ok |= hmac.compare_digest(given, k.get_secret_value().encode())
    if not ok:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid API key")


async def require_api_key(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    _check_key(request.app.state.xrec.settings, key)


async def require_read_key(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    settings: Settings = request.app.state.xrec.settings
    if settings.read_auth:
        _check_key(settings, key)


WriteAuth = Depends(require_api_key)
ReadAuth = Depends(require_read_key)
