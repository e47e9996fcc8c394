"""Liveness and readiness: /healthz answers while the process runs, /readyz once a bundle serves."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import StateDep
from app.api.errors import without_server_paths
from app.schemas import Health, Ready, VariantInfo

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Process alive; checks no dependency (a Redis outage must not get pods restarted)."""
    return Health()


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
def readyz(state: StateDep) -> JSONResponse:
    """Ready when a bundle is loaded. Redis being down does not make the service unready: it answers
    degraded from memory and the bundle snapshot."""
    redis = "up" if state.guard.ping() else "down"
    bundle = state.bundle
    if bundle is None:
        # Unauthenticated: the reason, without absolute server paths (the log has them).
        folders = [state.settings.bundle_dir, *(v.bundle_dir for v in state.settings.variants)]
        why = state.load_error and without_server_paths(state.load_error, *filter(None, folders))
        return JSONResponse(Ready(status="no bundle", redis=redis, detail=why).model_dump(), status_code=503)
    served = state.served
    variants = ([VariantInfo(name=v.name, model_version=v.bundle.model_version, share=round(v.share, 6))
                 for v in served.variants] if served is not None else [])
    ready = Ready(status="ready", model_version=bundle.model_version, execution_provider=bundle.provider,
                  redis=redis, items=sum(bundle.catalog.index_sizes().values()), platforms=bundle.platforms,
                  variants=variants)
    return JSONResponse(ready.model_dump(exclude_none=True))
