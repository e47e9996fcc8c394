"""The HTTP ceiling of this machine, measured by bench/serve.py beside the service: the same server (uvicorn,
one worker, xrec's protocol class, no access log) and the same route and request bodies as /v1/recommend,
but a bare FastAPI handler: it reads the body and answers a fixed response of the same shape. Whatever the
service costs beyond this is routing-to-answer work of its own (validation, auth, ranking, JSON).

    .venv/bin/python -c "import uvicorn; uvicorn.run('bench.bare_app:app', port=8001, access_log=False)"
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

app = FastAPI(title="bare")
BODY = b'{"items":[],"model_version":"bare","cache":"hit","cold_start":false,"took_ms":0.0}'


@app.post("/v1/recommend")
async def recommend(request: Request) -> Response:
    await request.body()
    return Response(BODY, media_type="application/json")


@app.get("/readyz")
async def readyz() -> dict:
    return {"ready": True}
