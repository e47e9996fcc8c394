"""The fault scripts of issue 13, against a real `xrec serve` process and a real redis-server, with their
figures written into docs/reliability.md (between the `faults:begin` / `faults:end` markers).

    .venv/bin/python bench/faults.py                       # every scenario, figures into docs/reliability.md
    .venv/bin/python bench/faults.py --events 20000 --no-doc   # a quick run: print only

What it starts, all of it its own and all of it stopped on exit: a redis-server on --redis-port (default
6391, no persistence: `--save ""`, `--appendonly no`; refused if something already answers there, so a
shared Redis is never killed or flushed), the fixture bundle twice (tests/fixtures/tiny_bundle.py, seeds 0
and 1) under runs/faults/, and `xrec serve` processes on free loopback ports with production defaults
(reads need a key, JSON logs), each with its own Redis key prefix and events folder. Load comes from a few
threads of httpx clients (modest: the machine is shared).

Scenarios (each a few seconds):
  a. Redis killed (kill -9) under /v1/recommend load, restarted empty after --outage-s: failed requests
     during the outage and overall, seconds from Redis's return to the first non-degraded answer, events
     acknowledged during the outage found in Redis afterwards (replayed from the durable log).
  b. the service killed (kill -9) in the middle of a stream of POST /v1/events from 3 senders, restarted;
     then again with Redis killed at the same moment: every acknowledged event is sent again, and each one
     the service takes as new (not a duplicate) was lost.
  c. four POST /v1/admin/reload under load (bundles alternating): failed requests.
  d. three corrupt bundles (a model file overwritten, items.parquet cut short, manifest.json not JSON)
     offered to reload under load: each refused (422), the old model still serving, failed requests.
  e. clients that go away in the middle of a /v1/batch/score stream: the service still healthy, its memory
     (RSS) before and after, ERROR lines in its log, a full batch afterwards.
  f. --events events (default 200,000) posted by 3 concurrent senders, then restarts timed to /readyz 200,
     alternating with restarts of a service that has no events at all (medians): the ratio must be ≤ 1.2.
     Also (informative) the start after Redis lost everything: the whole log replayed.

Exit status 1 when a figure misses its bar (the figures are still written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.tiny_bundle import PEOPLE, PLATFORMS, TEST_SALT, build_tiny_bundle, person_id  # noqa: E402

KEY = "xrec-faults-key"
AUTH = {"X-API-Key": KEY}
TS = 1_760_000_000
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
ITEMS = {p: [f"{p}:{p[0]}{i:04d}" for i in range(30)] for p in PLATFORMS}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---- the processes --------------------------------------------------------------------------------------


class OwnRedis:
    """A redis-server of this script's own on `port`, no persistence; killed (SIGKILL) and started again by
    its pid, never by name."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server not found (apt-get install redis-server)")
        self.exe = exe

    def start(self) -> float:
        """Start it; the time (monotonic) it first answered PING."""
        if port_answers(self.port):
            raise SystemExit(f"something already listens on 127.0.0.1:{self.port}: pick another --redis-port "
                             "(this script kills its Redis, so it never uses one it did not start)")
        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError):
                client.ping()
                return time.monotonic()
            time.sleep(0.02)
        raise SystemExit(f"own redis-server on {self.port} did not answer")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)


class Service:
    """`xrec serve` on `bundle`, its own port, key prefix and events folder (kept across restarts, as a
    restarted pod keeps its volume); production defaults otherwise."""

    def __init__(self, name: str, bundle: Path, redis_port: int, workdir: Path) -> None:
        self.name = name
        self.bundle = bundle
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = f"xrec-faults-{name}-{uuid.uuid4().hex[:6]}"
        self.events_dir = workdir / f"events-{name}"
        self.log_path = workdir / f"server-{name}.log"
        self.redis_port = redis_port
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XREC_")}
        env.update(XREC_ID_SALT=TEST_SALT, XREC_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
                   XREC_REDIS_PREFIX=self.prefix, XREC_EVENTS_DIR=str(self.events_dir), XREC_API_KEYS=KEY,
                   PYTHONUNBUFFERED="1")
        return env

    def start(self, timeout_s: float = 120.0) -> float:
        """Start it; seconds from the process's start to /readyz 200."""
        self.starts += 1
        with self.log_path.open("a") as f:
            f.write(json.dumps({"level": "FAULTS", "message": f"start {self.starts}"}) + "\n")
        logf = self.log_path.open("a")
        started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "xrec.cli", "serve", "--bundle", str(self.bundle),
                                      "--port", str(self.port), "--log-level", "info"], cwd=REPO, env=self.env(),
                                     stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        with httpx.Client(timeout=1.0) as c:
            while time.monotonic() - started < timeout_s:
                if self.proc.poll() is not None:
                    raise SystemExit(f"{self.name}: server exited {self.proc.returncode}\n"
                                     + self.log_path.read_text()[-3000:])
                with contextlib.suppress(httpx.TransportError):
                    if c.get(f"{self.url}/readyz").status_code == 200:
                        return time.monotonic() - started
                time.sleep(0.05)
        raise SystemExit(f"{self.name}: not ready after {timeout_s:.0f}s; log {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None

    def log_records(self, since_start: int = 1) -> list[dict]:
        """The JSON log lines written since start number `since_start`."""
        out, n = [], 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = {"level": "NOT-JSON", "message": line[:200]}
            if rec.get("level") == "FAULTS":
                n += 1
                continue
            if n >= since_start:
                out.append(rec)
        return out

    def errors_logged(self, since_start: int = 1) -> int:
        return sum(1 for r in self.log_records(since_start) if r.get("level") in ("ERROR", "CRITICAL", "NOT-JSON"))


# ---- load ------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    t0: float
    t1: float
    status: int  # 0: no answer (transport error)
    cache: str | None = None
    version: str | None = None


RECOMMEND_PEOPLE = [(person_id(n), p) for n, accts in PEOPLE.items() for p in accts]


def recommend_body(i: int) -> dict:
    """Never cached (now_ts moves), so each request reads Redis: the path an outage hits."""
    if i % 4 == 3:  # a cold account
        return {"account_id": f"cold-{i % 500}", "platform": PLATFORMS[i % 2], "k": 10, "now_ts": TS + i}
    pid, platform = RECOMMEND_PEOPLE[i % len(RECOMMEND_PEOPLE)]
    return {"person_id": pid, "platform": platform, "k": 10, "now_ts": TS + i}


@dataclass
class Load:
    """`threads` loops of POST /v1/recommend (one httpx client each) until stopped."""

    url: str
    threads: int = 3
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _loop(self, w: int) -> None:
        i = w * 1_000_000
        with httpx.Client(timeout=5.0, headers=AUTH) as c:
            while not self._stop.is_set():
                i += 1
                t0 = time.monotonic()
                try:
                    r = c.post(f"{self.url}/v1/recommend", json=recommend_body(i))
                    body = r.json() if r.status_code == 200 else {}
                    self.outcomes.append(Outcome(t0, time.monotonic(), r.status_code, body.get("cache"),
                                                 body.get("model_version")))
                except (httpx.TransportError, ValueError):
                    self.outcomes.append(Outcome(t0, time.monotonic(), 0))
                    time.sleep(0.05)

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._loop, args=(w,), daemon=True) for w in range(self.threads)]
        for t in self._workers:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=10)

    def failed(self, lo: float = float("-inf"), hi: float = float("inf")) -> int:
        return sum(1 for o in self.outcomes if o.status != 200 and lo <= o.t0 <= hi)

    def count(self, lo: float = float("-inf"), hi: float = float("inf")) -> int:
        return sum(1 for o in self.outcomes if lo <= o.t0 <= hi)


def event(eid: str, account: str, j: int) -> dict:
    platform = "kitchen" if account.startswith("k") else "grocery"
    return {"event_id": eid, "platform": platform, "account_id": account, "item_id": ITEMS[platform][j % 30],
            "ts": TS + j}


def send_events(url: str, batches: Iterable[list[dict]], client: httpx.Client) -> tuple[list[dict], int]:
    """Post the batches in order until one fails to be answered; (the events acknowledged, failed posts)."""
    acked: list[dict] = []
    for batch in batches:
        try:
            r = client.post(f"{url}/v1/events", json={"events": batch})
        except httpx.TransportError:
            return acked, 1
        if r.status_code != 200:
            log(f"  a post was answered {r.status_code}: {r.text[:300]}")
            return acked, 1
        acked.extend(batch)
    return acked, 0


def resend(url: str, events: list[dict]) -> tuple[int, int]:
    """Send acknowledged events again: (taken as new = lost before, duplicates)."""
    new = dup = 0
    with httpx.Client(timeout=60.0, headers=AUTH) as c:
        for i in range(0, len(events), 1000):
            r = c.post(f"{url}/v1/events", json={"events": events[i:i + 1000]})
            r.raise_for_status()
            new += r.json()["accepted"]
            dup += r.json()["duplicates"]
    return new, dup


# ---- figures -----------------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    measure: str
    value: str
    bar: str = ""
    met: bool | None = None


ROWS: list[Row] = []


def record(scenario: str, measure: str, value: object, bar: str = "", met: bool | None = None) -> None:
    ROWS.append(Row(scenario, measure, str(value), bar, met))
    mark = "" if met is None else ("  ok" if met else "  MISSED")
    log(f"  {scenario} | {measure}: {value}" + (f" (bar {bar}){mark}" if bar else ""))


# ---- scenarios ---------------------------------------------------------------------------------------------


def scenario_redis_kill(rds: OwnRedis, bundle: Path, work: Path, outage_s: float) -> None:
    name = "a. Redis kill -9 under load"
    log(name)
    svc = Service("a", bundle, rds.port, work)
    svc.start()
    try:
        r = rds.client()
        with Load(svc.url) as load, httpx.Client(timeout=5.0, headers=AUTH) as c:
            time.sleep(1.5)
            t_kill = time.monotonic()
            rds.kill9()
            time.sleep(0.3)
            # Events acknowledged while Redis is away: durable in the log, applied in memory.
            outage_events = [event(f"a-out-{i}", f"k-a-{i % 5}", i) for i in range(20)]
            degraded_acks = 0
            for i in range(0, 20, 10):
                resp = c.post(f"{svc.url}/v1/events", json={"events": outage_events[i:i + 10]})
                degraded_acks += resp.status_code == 200 and resp.json()["degraded"]
            time.sleep(max(outage_s - 0.3, 0.5))
            t_back = rds.start()
            deadline = t_back + 30
            recovered_at = None
            while time.monotonic() < deadline:
                done = [o for o in load.outcomes if o.t0 >= t_back and o.status == 200]
                fresh = [o for o in done if o.cache != "degraded"]
                if fresh:
                    recovered_at = min(o.t1 for o in fresh)
                    break
                time.sleep(0.05)
            time.sleep(1.5)  # and it stays recovered
        replayed = 0
        for _ in range(100):
            replayed = sum(bool(r.exists(f"{svc.prefix}:event:{e['event_id']}")) for e in outage_events)
            if replayed == len(outage_events):
                break
            time.sleep(0.1)
        during = load.count(t_kill, t_back)
        record(name, "requests during the outage (3 clients)", f"{during:,}")
        record(name, "failed requests during the outage", load.failed(t_kill, t_back), "0",
               load.failed(t_kill, t_back) == 0 and during > 0)
        record(name, "failed requests overall", f"{load.failed()} of {load.count():,}", "0", load.failed() == 0)
        record(name, "outage (s)", f"{t_back - t_kill:.1f}")
        if recovered_at is None:
            record(name, "seconds from Redis's return to a non-degraded answer", "never (30 s)", "≤ 10", False)
        else:
            rec_s = recovered_at - t_back
            record(name, "seconds from Redis's return to a non-degraded answer", f"{rec_s:.1f}",
                   "≤ 10 (XREC_REDIS_BACKOFF_MAX_S)", rec_s <= 10.0)
            late = sum(1 for o in load.outcomes if o.t0 > recovered_at and o.cache == "degraded")
            record(name, "degraded answers after recovery", late, "0", late == 0)
        record(name, "events acknowledged during the outage (degraded)", f"{degraded_acks * 10}")
        record(name, "of them in Redis after recovery (replayed from the log)", f"{replayed} of {len(outage_events)}",
               "all", replayed == len(outage_events))
        errs = svc.errors_logged()
        record(name, "ERROR lines in the service log", errs)
    finally:
        svc.stop()


def scenario_service_kill(rds: OwnRedis, bundle: Path, work: Path, with_redis: bool) -> None:
    name = "b. service kill -9 mid-events" + (" (and Redis kill -9)" if with_redis else "")
    log(name)
    svc = Service("b2" if with_redis else "b1", bundle, rds.port, work)
    svc.start()
    try:
        senders = 3

        def sender(s: int) -> tuple[list[dict], int]:
            batches = ([event(f"b-{s}-{b}-{i}", f"{'kg'[i % 2]}-b-{s}-{i % 40}", b * 100 + i) for i in range(100)]
                       for b in range(100_000))  # lazily: posting starts at once
            with httpx.Client(timeout=10.0, headers=AUTH) as c:
                return send_events(svc.url, batches, c)

        with ThreadPoolExecutor(senders) as pool:
            futures = [pool.submit(sender, s) for s in range(senders)]
            time.sleep(2.0)
            if with_redis:
                rds.kill9()
            svc.kill9()
            results = [f.result() for f in futures]
        acked = [e for a, _ in results for e in a]
        cut = sum(f for _, f in results)
        if with_redis:
            rds.start()
        ready_s = svc.start()
        lost, dup = resend(svc.url, acked)
        record(name, "events acknowledged before the kill (3 senders, 100 per post)", f"{len(acked):,}")
        record(name, "posts cut by the kill (not acknowledged)", cut)
        record(name, "restart to /readyz (s)" + (", the whole log replayed" if with_redis else ""), f"{ready_s:.1f}")
        record(name, "acknowledged events lost (taken as new when sent again)", lost, "0", lost == 0 and len(acked) > 0)
        errs = svc.errors_logged(since_start=2)
        record(name, "ERROR lines in the log after the restart", errs, "0", errs == 0)
    finally:
        svc.stop()


def scenario_reload_corrupt_disconnect(rds: OwnRedis, bundles: tuple[Path, Path], work: Path) -> None:
    v0, v1 = bundles
    svc = Service("cde", v0, rds.port, work)
    svc.start()
    admin = httpx.Client(timeout=60.0, headers=AUTH)
    try:
        # c. reloads under load
        name = "c. reload under load"
        log(name)
        took, ok = [], 0
        with Load(svc.url) as load:
            time.sleep(1.0)
            for target in (v1, v0, v1, v0):
                r = admin.post(f"{svc.url}/v1/admin/reload", json={"bundle_dir": str(target)})
                ok += r.status_code == 200
                if r.status_code == 200:
                    took.append(r.json()["took_ms"])
                time.sleep(0.7)
        versions = sorted({o.version for o in load.outcomes if o.version})
        record(name, "reloads that succeeded", f"{ok} of 4", "4", ok == 4)
        record(name, "reload time (ms, median)", f"{statistics.median(took):.0f}" if took else "-")
        record(name, "failed requests", f"{load.failed()} of {load.count():,}", "0", load.failed() == 0)
        record(name, "model versions answering", ", ".join(versions))

        # d. corrupt bundles
        name = "d. corrupt bundle reload"
        log(name)
        broken = []
        for kind in ("model", "items", "manifest"):
            dst = work / f"corrupt-{kind}"
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(v0, dst)
            if kind == "model":
                (dst / "scorer.onnx").write_bytes(b"not a model" * 100)
            elif kind == "items":
                data = (dst / "items.parquet").read_bytes()
                (dst / "items.parquet").write_bytes(data[: len(data) // 2])
            else:
                (dst / "manifest.json").write_text("{ not json")
            broken.append(dst)
        before = httpx.get(f"{svc.url}/readyz").json()["model_version"]
        refused = 0
        with Load(svc.url) as load:
            time.sleep(0.5)
            for dst in broken:
                r = admin.post(f"{svc.url}/v1/admin/reload", json={"bundle_dir": str(dst)})
                refused += r.status_code == 422 and r.json()["detail"][0]["type"] == "bundle_error"
                time.sleep(0.3)
        after = httpx.get(f"{svc.url}/readyz").json()["model_version"]
        served = {o.version for o in load.outcomes if o.version}
        record(name, "corrupt bundles refused (422 bundle_error): model file, items cut short, manifest",
               f"{refused} of 3", "3", refused == 3)
        record(name, "model serving after them", f"{after} (before: {before})", "unchanged",
               after == before and served == {before})
        record(name, "failed requests meanwhile", f"{load.failed()} of {load.count():,}", "0", load.failed() == 0)

        # e. clients leaving in the middle of a batch stream
        name = "e. client disconnect in batch"
        log(name)
        persons = [{"account_id": f"batch-{i}"} for i in range(3000)]
        body = {"platform": "kitchen", "persons": persons, "k": 10}

        def full_batch() -> tuple[int, bool]:
            r = admin.post(f"{svc.url}/v1/batch/score", json=body)
            last = json.loads(r.text.splitlines()[-1]) if r.text else {}
            return r.text.count("\n"), last.get("done") is True and last.get("rows") == len(persons)

        full_batch()  # warm-up: allocator and caches grown before the memory is read
        rss_before = rss_mb(svc.pid)
        start_no = svc.starts
        n_log_before = len(svc.log_records(start_no))

        def leave_early(i: int) -> int:
            with httpx.Client(timeout=30.0, headers=AUTH) as c, \
                    c.stream("POST", f"{svc.url}/v1/batch/score", json=body) as r:
                got = 0
                for _ in r.iter_lines():
                    got += 1
                    if got >= 1 + i % 50:
                        break
                return got  # leaving the block closes the connection mid-stream

        t0 = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            lines_read = list(pool.map(leave_early, range(30)))
        left_s = time.monotonic() - t0
        time.sleep(1.0)
        health = httpx.get(f"{svc.url}/healthz").status_code
        rows, complete = full_batch()
        rss_after = rss_mb(svc.pid)
        new_records = svc.log_records(start_no)[n_log_before:]
        errs = sum(1 for r in new_records if r.get("level") in ("ERROR", "CRITICAL", "NOT-JSON"))
        record(name, "streams of 3,000 persons left after 1–50 lines (3 clients)",
               f"{len(lines_read)} in {left_s:.1f} s")
        record(name, "/healthz afterwards", health, "200", health == 200)
        record(name, "a full batch afterwards", f"{rows:,} lines, complete" if complete else f"{rows:,} lines, cut",
               "complete", complete)
        growth = rss_after - rss_before
        record(name, "service RSS before → after (MB)", f"{rss_before:.0f} → {rss_after:.0f} ({growth:+.0f})",
               "≤ +25", growth <= 25)
        record(name, "log lines written meanwhile; ERROR among them", f"{len(new_records)}; {errs}", "0 ERROR",
               errs == 0)
    finally:
        admin.close()
        svc.stop()


def scenario_replay(rds: OwnRedis, bundle: Path, work: Path, n_events: int, rounds: int, full: bool) -> None:
    name = "f. replay after events"
    log(f"{name}: posting {n_events:,} events from 3 senders")
    empty = Service("f-none", bundle, rds.port, work)
    busy = Service("f-events", bundle, rds.port, work)
    busy.start()
    try:
        per_post = 1000
        n_posts = -(-n_events // per_post)

        def sender(s: int) -> int:
            sent = 0
            with httpx.Client(timeout=120.0, headers=AUTH) as c:
                for b in range(s, n_posts, 3):
                    lo, hi = b * per_post, min((b + 1) * per_post, n_events)
                    evs = [event(f"f-{j}", f"{'kg'[j % 2]}-f-{j % 3000}", j) for j in range(lo, hi)]
                    r = c.post(f"{busy.url}/v1/events", json={"events": evs})
                    r.raise_for_status()
                    sent += r.json()["accepted"]
            return sent

        t0 = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            accepted = sum(pool.map(sender, range(3)))
        post_s = time.monotonic() - t0
        record(name, "events posted by 3 concurrent senders (1,000 per post)",
               f"{accepted:,} in {post_s:.1f} s ({accepted / post_s:,.0f}/s)", f"{n_events:,}", accepted == n_events)
        busy.stop()
        with_events, without = [], []
        for _ in range(rounds):
            without.append(empty.start())
            empty.stop()
            with_events.append(busy.start())
            busy.stop()
        replayed = [r for r in busy.log_records(2) if "replayed" in str(r.get("message", ""))
                    and "from the event log" in str(r.get("message", ""))]
        m_with, m_without = statistics.median(with_events), statistics.median(without)
        ratio = m_with / m_without
        detail = ", ".join(f"{x:.2f}" for x in without)
        record(name, f"restart to /readyz, no events (s, median of {rounds})", f"{m_without:.2f}")
        record(name, f"restart to /readyz after the {accepted:,} events (s, median of {rounds})", f"{m_with:.2f}")
        record(name, "ratio", f"{ratio:.2f}", "≤ 1.2", ratio <= 1.2)
        record(name, "events re-read by those restarts (log lines 'replayed …')", len(replayed), "0",
               len(replayed) == 0)
        log(f"  runs without events: {detail}; with: {', '.join(f'{x:.2f}' for x in with_events)}")
        if full:
            # Redis lost everything (restarted empty): the whole log is read again before ready.
            rds.kill9()
            rds.start()
            full_s = busy.start()
            lines = [r for r in busy.log_records(busy.starts) if "replayed" in str(r.get("message", ""))]
            n = re.search(r"replayed (\d+) events", str(lines[-1]["message"])) if lines else None
            record(name, "start after Redis restarted empty: whole log replayed (s; informative)",
                   f"{full_s:.1f} ({int(n.group(1)):,} events)" if n else f"{full_s:.1f}")
            busy.stop()
    finally:
        empty.stop()
        busy.stop()


# ---- the document ------------------------------------------------------------------------------------------


def table(command: str, total_s: float) -> str:
    load1 = os.getloadavg()[0]
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         check=False).stdout.strip()
    lines = [BEGIN,
             f"<!-- written by bench/faults.py ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {rev}); "
             "edit the script, not this block -->",
             "",
             "```bash", command, "```", "",
             f"{os.cpu_count()} CPU cores shared with other work (load average {load1:.1f} at the end), "
             f"total {total_s:.0f} s.", "",
             "| scenario | measure | value | bar | met |", "|---|---|---:|---|---|"]
    for r in ROWS:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.scenario} | {r.measure} | {r.value} | {r.bar} | {met} |")
    lines.append(END)
    return "\n".join(lines)


def write_doc(path: Path, block: str) -> None:
    text = path.read_text(encoding="utf-8")
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Faults\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-port", type=int, default=6391, help="the port of this script's own redis-server")
    ap.add_argument("--events", type=int, default=200_000, help="events posted before the replay timing (f)")
    ap.add_argument("--rounds", type=int, default=3, help="restarts timed each way in (f) (medians)")
    ap.add_argument("--outage-s", type=float, default=3.0, help="how long Redis stays down in (a)")
    ap.add_argument("--full-replay", action=argparse.BooleanOptionalAction, default=True,
                    help="(f) also time a start that replays the whole log (Redis restarted empty)")
    ap.add_argument("--only", default="abcdef", help="scenarios to run, e.g. 'ab' (the doc is written only "
                                                     "when all run)")
    ap.add_argument("--doc", type=Path, default=DOC, help="the markdown file whose faults block is rewritten")
    ap.add_argument("--no-doc", action="store_true", help="print the figures only")
    ap.add_argument("--json", type=Path, default=REPO / "runs" / "faults" / "faults.json",
                    help="the figures as JSON too")
    args = ap.parse_args(argv)

    started = time.monotonic()
    work = REPO / "runs" / "faults"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log("building the fixture bundles")
    v0 = build_tiny_bundle(work / "bundles" / "tiny-0", seed=0)
    v1 = build_tiny_bundle(work / "bundles" / "tiny-1", seed=1)
    rds = OwnRedis(args.redis_port, work)
    rds.start()
    random.seed(0)
    try:
        if "a" in args.only:
            scenario_redis_kill(rds, v0, work, args.outage_s)
        if "b" in args.only:
            scenario_service_kill(rds, v0, work, with_redis=False)
            scenario_service_kill(rds, v0, work, with_redis=True)
        if set("cde") & set(args.only):
            scenario_reload_corrupt_disconnect(rds, (v0, v1), work)
        if "f" in args.only:
            scenario_replay(rds, v0, work, args.events, args.rounds, args.full_replay)
    finally:
        rds.stop()
    total = time.monotonic() - started
    command = ".venv/bin/python bench/faults.py" + ("" if args.events == 200_000 else f" --events {args.events}")
    missed = [r for r in ROWS if r.met is False]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": command, "total_s": round(total, 1),
                                     "rows": [r.__dict__ for r in ROWS]}, indent=1) + "\n")
    if not args.no_doc and set(args.only) >= set("abcdef"):
        write_doc(args.doc, table(command, total))
        log(f"figures written to {args.doc.relative_to(REPO) if args.doc.is_relative_to(REPO) else args.doc}")
    log(f"done in {total:.0f} s: {len([r for r in ROWS if r.met])} bars met, {len(missed)} missed"
        + "".join(f"\n  MISSED: {r.scenario} | {r.measure}: {r.value} (bar {r.bar})" for r in missed))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
