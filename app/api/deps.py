"""Shared request dependencies: the service state, the current bundle, API-key checks.

All `async def` without blocking work: a sync dependency would cost each request a threadpool hop.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request, Security, status
from fastapi.security import APIKeyHeader

from app.api.errors import ApiError
from app.core.config import Settings
from app.services.errors import NoBundle
from app.services.model_bundle import LoadedBundle
from app.services.state import ServiceState
from app.services.variants import Served

T = TypeVar("T")

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="one of XREC_API_KEYS; required on every /v1 route (on reads too, "
                                          "unless XREC_READ_AUTH=false)")


async def get_state(request: Request) -> ServiceState:
    return request.app.state.xrec


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_settings(request: Request) -> Settings:
    return request.app.state.xrec.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def _loaded(require: Callable[[], T]) -> T:
    try:
        return require()
    except NoBundle:
        raise ApiError(status.HTTP_503_SERVICE_UNAVAILABLE, "no bundle loaded (see /readyz)") from None


async def get_bundle(request: Request) -> LoadedBundle:
    """The bundle this request uses from start to end (a reload swaps the reference, not this one)."""
    return _loaded(request.app.state.xrec.require_bundle)


BundleDep = Annotated[LoadedBundle, Depends(get_bundle)]


async def get_served(request: Request) -> Served:
    """The A/B variants this request chooses from (one, without XREC_VARIANTS), read once."""
    return _loaded(request.app.state.xrec.require_served)


ServedDep = Annotated[Served, Depends(get_served)]

# The dependencies above take the Request rather than each other: every level of sub-dependency costs
# each request some microseconds, and /v1/recommend is meant to answer in well under a millisecond.


KEY_LOC: list[str | int] = ["header", "x-api-key"]


def key_is_valid(settings: Settings, key: str | None) -> bool:
    """Whether `key` is one of XREC_API_KEYS."""
    if not key:
        return False
    given = key.encode()
    # Compare against every key in constant time: no early exit that would time which key matched.
    ok = False
    for k in settings.api_keys:
        ok |= hmac.compare_digest(given, k.get_secret_value().encode())
    return ok


def _check_key(settings: Settings, key: str | None) -> None:
    if not key:
        raise ApiError(status.HTTP_401_UNAUTHORIZED, "missing X-API-Key header", KEY_LOC,
                       headers={"WWW-Authenticate": "APIKey"})
    if not key_is_valid(settings, key):
        raise ApiError(status.HTTP_403_FORBIDDEN, "invalid API key", KEY_LOC)


async def require_api_key(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    _check_key(request.app.state.xrec.settings, key)


async def require_read_key(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> bool:
    """Whether this read may see the person's whole history: True with a valid key. With
    XREC_READ_AUTH=false a read without a key is served too, but returns False: its `reasons` then name
    items of the target platform only, never what the person did on another platform. A key that is sent
    is always checked (403 if wrong), so a mistyped key does not silently cost a client its reasons."""
    settings: Settings = request.app.state.xrec.settings
    if settings.read_auth or key:
        _check_key(settings, key)
        return True
    return False


WriteAuth = Depends(require_api_key)
ReadAuth = Depends(require_read_key)
# In a read handler: whether `reasons` may name items of other platforms than the target (the same
# dependency as the router's ReadAuth, so it runs once per request).
AllPlatformReasons = Annotated[bool, Depends(require_read_key)]
