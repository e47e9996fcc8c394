"""py-spy profiles of the server under load, folded into per-request cost categories (bench/serve.py --profile)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from common import (
    proc_cpu_s,
)
from load import Server, py_spy, run_load

# ---- profiling ------------------------------------------------------------------------------------------------

# Where a sample's time goes: the deepest frame on its stack that matches one of these (first match in this
# order at that frame). (label, substring of "function (file:line)").
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("socket send/recv syscalls (loopback TCP)", ("_SelectorSocketTransport.write", "_read_ready__",
                                                  "sock_recv", "sock_sendall")),
    ("redis (profile read/write)", ("redis/", "redis_store.py")),
    ("ONNX user encoder", ("user_vectors (app/services/ranking.py",)),
    ("ONNX scorer", ("score (app/services/ranking.py",)),
    ("FAISS search", ("search (app/services/retrieval.py",)),
    ("scorer features (knn, extras)", ("candidate_extras (",)),
    ("explain + JSON fragments", ("_fragments (app/services/recommender.py", "explain (")),
    ("profile build/parse", ("profiles.py",)),
    ("history lookup", ("from_ids (", "_history (")),
    ("micro-batch worker (other glue of the cold path)", ("app/services/batching.py",)),
    ("threadpool hop", ("run_in_threadpool", "anyio/", "concurrent/futures", "threading.py")),
    ("ranked-cache lookup", ("from_cache (",)),
    ("response JSON assembly", ("render (app/services/recommender.py",)),
    ("person/platform resolution", ("resolve_person (", "platform_id (")),
    ("handler (other)", ("recommend (app/api/routes/recommend.py",)),
    ("body parse + pydantic validation", ("request_body_to_args", "_validate_value_with_model_field",
                                          "validate_python", "json/decoder.py", "json/__init__.py",
                                          "fastapi/_compat", "Request.json", "Request.body",
                                          "_get_body", "(starlette/requests.py")),
    ("FastAPI deps + routing", ("solve_dependencies", "fastapi/routing.py", "fastapi/dependencies",
                                "starlette/routing.py", "get_request_handler", "get_bundle", "get_state",
                                "require_read_key", "run_endpoint_function")),
    ("middleware (metrics, body limit)", ("app/api/middleware.py", "app/core/metrics.py")),
    ("starlette/FastAPI app + exceptions", ("starlette/", "fastapi/")),
    ("uvicorn HTTP protocol", ("uvicorn/",)),
    ("asyncio event loop", ("asyncio/",)),
]


IDLE = ("Condition.wait (threading.py", "Event.wait (threading.py")


def load_breakdown(collapsed: Path, top: int = 12) -> list[tuple[str, float]]:
    """Share of startup samples per deepest xrec function (app/, xrec/) on the stack: where loading goes."""
    per: Counter[str] = Counter()
    total = 0
    for ln in collapsed.read_text().splitlines():
        stack, _, n = ln.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        frames = stack.split(";")
        mine = [f for f in frames if "/work/main/app/" in f or "app/services" in f or "app/core" in f]
        leaf = frames[-1]
        if not mine or "importlib" in stack or mine[-1].startswith("<module>"):
            per["imports / interpreter start"] += int(n)
            continue
        name = _short(mine[-1])
        # the C++ work under a frame (FAISS add, parquet, sha256) is attributed to that frame; say which
        if leaf != mine[-1]:
            name += " → " + _short(leaf)
        per[name] += int(n)
    return [(k, v / max(total, 1)) for k, v in per.most_common(top)]


def profile_categories(collapsed: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """(samples per category, top self-time frames, total samples) from py-spy's raw (collapsed) output."""
    cats: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        if any(w in stack for w in IDLE):
            continue  # a thread blocked (threadpool workers waiting for work): not CPU
        total += count
        self_time[_short(frames[-1])] += count
        label = "other (interpreter, GC, imports)"
        for frame in reversed(frames):
            hit = next((lab for lab, keys in CATEGORIES if any(k in frame for k in keys)), None)
            if hit:
                label = hit
                break
        cats[label] += count
    return cats.most_common(), self_time.most_common(15), total


def _short(frame: str) -> str:
    m = re.match(r"(.*) \((.*?)(?:/site-packages|/lib/python3\.\d+)?/?([^/]*?/?[^/]+\.py):(\d+)\)", frame)
    return f"{m.group(1)} ({m.group(3)})" if m else frame


def run_profile(server: Server, client: str, bodies: list[str], concurrency: int, seconds: float, cycle: bool,
                tmp: Path, out: Path) -> dict:
    """py-spy (non-blocking: the server is not paused) over a load run; the run's figures are not reported
    as throughput (sampling costs the server some CPU)."""
    spy = py_spy()
    raw = out.with_suffix(".txt")
    cpu0 = proc_cpu_s(server.proc.pid)
    p = subprocess.Popen([spy, "record", "--pid", str(server.proc.pid), "--duration", str(int(seconds) + 1),
                          "--rate", "250", "--nonblocking", "--format", "raw", "--output", str(raw)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    time.sleep(1.0)  # py-spy attaches
    try:
        r = run_load(client, server.url, bodies, concurrency, seconds, len(bodies) if not cycle else 10**9,
                     cycle, tmp)
    finally:
        try:
            p.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    cpu = proc_cpu_s(server.proc.pid) - cpu0
    if not raw.is_file():
        return {"error": (p.stderr.read() if p.stderr else b"").decode()[-500:]}
    cats, top, total = profile_categories(raw)
    n_req = max(r["requests"], 1)
    cpu_us = cpu / n_req * 1e6
    return {"requests": r["requests"], "req_s": r["requests"] / r["seconds"], "server_cpu_us_per_req": cpu_us,
            "samples": total, "categories": [(c, n / total, n / total * cpu_us) for c, n in cats],
            "top_self": [(f, n / total) for f, n in top], "raw": str(raw)}
