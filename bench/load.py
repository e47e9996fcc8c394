"""The service under test and the load generators of bench/serve.py: `Server` starts `xrec serve` on a
free loopback port and stops it; `BareServer` the HTTP ceiling (bench/bare_app.py); `run_load` drives either
with wrk (or httpx where wrk is missing); `post_events` sends events before a run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
from common import (
    REPO,
    proc_status,
)

LUA = Path(__file__).resolve().parent / "recommend.lua"
# The server under test accepts this key (reads need one, as in production: XREC_READ_AUTH defaults to true).
BENCH_KEY = "xrec-bench-key"


# ---- the server ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`xrec serve` in its own process group; stopped (SIGTERM, then SIGKILL) on exit whatever happens."""

    def __init__(self, bundle: Path, salt: str, workdir: Path, load_timeout_s: float,
                 pythonpath: str | None = None, profile_load: Path | None = None) -> None:
        self.port = free_port()
        self.prefix = f"xrec-bench-{uuid.uuid4().hex[:8]}"  # a fresh namespace: nobody's profiles but ours
        self.events_dir = workdir / f"events-{self.prefix}"  # empty: nothing to replay at start
        self.log_path = workdir / f"server-{self.prefix}.log"
        env = {**os.environ, "XREC_ID_SALT": salt, "XREC_REDIS_PREFIX": self.prefix,
               "XREC_EVENTS_DIR": str(self.events_dir), "XREC_API_KEYS": BENCH_KEY, "PYTHONUNBUFFERED": "1"}
        if pythonpath:  # an A/B experiment (e.g. httptools + uvloop), never the default
            env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        # Production settings: only what makes the run local and isolated is set; everything else is default.
        for k in ("XREC_HNSW_THRESHOLD", "XREC_FAISS_THREADS", "XREC_ORT_INTRA_OP_THREADS", "XREC_VERIFY_BUNDLE",
                  "XREC_RANKED_CACHE_SIZE", "XREC_RANKED_CACHE_TTL_S", "XREC_READ_AUTH"):
            env.pop(k, None)
        self.log_file = self.log_path.open("w")
        self.started = time.perf_counter()
        # `python -m` puts its working directory first on sys.path: a checkout given as `pythonpath` (another
        # commit's worktree, for an A/B of the code) must be the working directory too, or this checkout's
        # `app` is what runs.
        cwd = Path(pythonpath) if pythonpath and (Path(pythonpath) / "xrec" / "cli.py").is_file() else REPO
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xrec.cli", "serve", "--bundle", str(Path(bundle).resolve()), "--host",
             "127.0.0.1", "--port", str(self.port), "--log-level", "info"],
            cwd=cwd, env=env, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        spy = None
        if profile_load is not None:  # where startup time goes (non-blocking sampling: it is not slowed)
            spy = subprocess.Popen([py_spy(), "record", "--pid", str(self.proc.pid), "--duration",
                                    str(int(load_timeout_s)), "--rate", "50", "--nonblocking", "--format", "raw",
                                    "--output", str(profile_load)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            self.load_s = self._wait_ready(load_timeout_s)
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
                try:
                    spy.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
        self.loaded_mem = proc_status(self.proc.pid)

    def _wait_ready(self, timeout_s: float) -> float:
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; log: {self.log_path}\n"
                                 + self.log_path.read_text()[-3000:])
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - self.started
            except urllib.error.HTTPError as e:  # 503: still loading, or the bundle was refused (a detail)
                why = json.loads(e.read() or b"{}").get("detail")
                if why:
                    self.stop()
                    raise SystemExit(f"the server refused the bundle: {why}; log: {self.log_path}") from None
            except OSError:
                pass  # not listening yet
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"server not ready after {timeout_s:.0f}s; log: {self.log_path}")

    def readyz(self) -> dict:
        with urllib.request.urlopen(self.url + "/readyz", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        stop_group(self.proc)
        self.log_file.close()
        _drop_redis_prefix(self.prefix)
        shutil.rmtree(self.events_dir, ignore_errors=True)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM a server's process group, SIGKILL it if it has not exited within 15 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


class BareServer:
    """bench/bare_app.py (the HTTP ceiling) served as `xrec serve` serves the app: its own process group,
    stopped on exit."""

    def __init__(self, workdir: Path, timeout_s: float = 60.0) -> None:
        self.port = free_port()
        self.log_path = workdir / f"bare-{self.port}.log"
        self.log_file = self.log_path.open("w")
        code = (f"import uvicorn; uvicorn.run('bench.bare_app:app', host='127.0.0.1', port={self.port}, "
                "log_level='warning', access_log=False, http='xrec.http_protocol:NoDelayHTTPProtocol')")
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"bare server exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"bare server not ready after {timeout_s:.0f}s; log: {self.log_path}")

    def stop(self) -> None:
        stop_group(self.proc)
        self.log_file.close()


def post_events(url: str, events: list[dict], batch: int = 500) -> dict[str, int]:
    """POST /v1/events in batches (before a measured run, not during it); totals of the answers."""
    totals: dict[str, int] = Counter()
    for i in range(0, len(events), batch):
        body = json.dumps({"events": events[i:i + batch]}).encode()
        req = urllib.request.Request(url + "/v1/events", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "X-API-Key": BENCH_KEY})
        with urllib.request.urlopen(req, timeout=120) as r:
            out = json.loads(r.read())
        for k in ("accepted", "duplicates", "unknown_items"):
            totals[k] += int(out.get(k, 0))
    return dict(totals)


def _drop_redis_prefix(prefix: str) -> None:
    """Delete this run's keys (and only them): a benchmark must not leave 50k profiles in a shared Redis."""
    try:
        import redis

        r = redis.Redis.from_url(os.environ.get("XREC_REDIS_URL", "redis://127.0.0.1:6379/0"))
        batch = []
        for key in r.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                r.delete(*batch)
                batch = []
        if batch:
            r.delete(*batch)
    except Exception as e:  # cleanup must not hide the figures already measured
        print(f"note: could not delete Redis keys {prefix}:*: {e}", file=sys.stderr)


# ---- load generators ------------------------------------------------------------------------------------------

def run_wrk(url: str, bodies: list[str], concurrency: int, duration_s: float, limit: int, cycle: bool,
            tmp: Path) -> dict:
    path = tmp / f"bodies-{uuid.uuid4().hex[:6]}.jsonl"
    path.write_text("\n".join(bodies) + "\n")
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s", "--timeout", "2s",
           "-s", str(LUA), url, "--", str(path), str(limit), "cycle" if cycle else "once", BENCH_KEY]
    # wrk stops at -d by itself, or at LIMIT responses when the script prints WRK_LIMIT and we interrupt it;
    # the deadline is the backstop if it ever hung.
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk's own CPU: the generator's cost, measured
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    backstop = threading.Timer(duration_s + 30, proc.kill)
    backstop.start()
    lines = []
    try:
        assert proc.stdout is not None
        for ln in proc.stdout:
            lines.append(ln)
            if ln.startswith("WRK_LIMIT"):
                proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    finally:
        backstop.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    out = subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), stderr)
    path.unlink(missing_ok=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result (rc {out.returncode}):\n{out.stdout}\n{out.stderr}")
    r = json.loads(line.split(" ", 1)[1])
    r["errors"] = sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r["client_cpu_us_per_req"] = ((ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
                                  / max(r["requests"], 1) * 1e6)
    r["seconds"] = r["duration_us"] / 1e6
    return r


async def _httpx_run(url: str, bodies: list[str], concurrency: int, duration_s: float, limit: int,
                     cycle: bool) -> dict:
    import httpx

    lat: list[float] = []
    cache: Counter[str] = Counter()
    errors = 0
    nxt = 0
    stop_at = time.perf_counter() + duration_s

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal nxt, errors
        while time.perf_counter() < stop_at and len(lat) + errors < limit:
            if nxt >= len(bodies) and not cycle:
                return
            body = bodies[nxt % len(bodies)]
            nxt += 1
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/recommend", content=body,
                                      headers={"content-type": "application/json", "x-api-key": BENCH_KEY})
            except httpx.HTTPError:
                errors += 1
                continue
            if r.status_code != 200:
                errors += 1
                continue
            lat.append(time.perf_counter() - t0)
            cache[r.json().get("cache", "?")] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=2.0) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    us = np.array(lat) * 1e6 if lat else np.array([np.nan])
    pct = {f"p{name}_us": float(np.percentile(us, q))
           for name, q in (("50", 50), ("90", 90), ("95", 95), ("99", 99), ("999", 99.9))}
    return {"requests": len(lat) + errors, "seconds": seconds, "errors": errors, **pct,
            "max_us": float(np.max(us)), "mean_us": float(np.mean(us)), "hits": cache["hit"],
            "misses": cache["miss"], "degraded": cache["degraded"], "cold_start": 0}


def run_load(client: str, url: str, bodies: list[str], concurrency: int, duration_s: float, limit: int,
             cycle: bool, tmp: Path) -> dict:
    if client == "wrk":
        return run_wrk(url, bodies, concurrency, duration_s, limit, cycle, tmp)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    r = asyncio.run(_httpx_run(url, bodies, concurrency, duration_s, limit, cycle))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    r["client_cpu_us_per_req"] = ((ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
                                  / max(r["requests"], 1) * 1e6)
    return r


def py_spy() -> str:
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
