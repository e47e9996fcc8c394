"""POST /v1/admin/reload: serve another bundle without dropping a request."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fastapi import APIRouter

from app.api.deps import StateDep, WriteAuth
from app.api.errors import AUTH_ERRORS, BODY_ERRORS, ApiError, error_responses, without_server_paths
from app.schemas import ReloadRequest, ReloadResponse
from contract.bundle import BundleError

log = logging.getLogger(__name__)
router = APIRouter(tags=["admin"], dependencies=[WriteAuth], responses=error_responses(*AUTH_ERRORS, *BODY_ERRORS))


@router.post("/v1/admin/reload", response_model=ReloadResponse)
def reload_bundle(body: ReloadRequest, state: StateDep) -> ReloadResponse:
    """Load the bundle completely beside the current one, then swap one reference: requests in flight
    finish on the bundle they started with. A bundle that fails to load changes nothing (422). With A/B
    variants (XREC_VARIANTS), every variant is reloaded from its folder, and `bundle_dir` is refused."""
    started = time.perf_counter()
    previous = state.bundle
    variants = state.settings.variants
    if variants and body.bundle_dir:
        raise ApiError(422, "XREC_VARIANTS is set: reload without bundle_dir (every variant is reloaded from its "
                            "folder), or change XREC_VARIANTS and restart", ["body", "bundle_dir"], "bundle_error")
    path = Path(body.bundle_dir) if body.bundle_dir else (previous.path if previous else state.settings.bundle_dir)
    if path is None and not variants:
        raise ApiError(422, "no bundle_dir given and none configured", ["body", "bundle_dir"], "bundle_error")
    try:
        bundle = state.load_variants().primary if variants else state.load(path)  # type: ignore[arg-type]
    except BundleError as e:
        log.warning("reload refused: %s", e)
        # The reason, but no absolute server path (the log has the full message).
        folders = [s.bundle_dir for s in variants] if variants else [path]
        raise ApiError(422, f"bundle not loaded: {without_server_paths(str(e), *folders)}", ["body", "bundle_dir"],
                       "bundle_error") from None
    return ReloadResponse(model_version=bundle.model_version,
                          previous_model_version=previous.model_version if previous else None,
                          items=sum(bundle.catalog.index_sizes().values()),
                          took_ms=round((time.perf_counter() - started) * 1000, 1))
