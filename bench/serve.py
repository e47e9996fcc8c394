"""Throughput and latency of POST /v1/recommend, served the way production serves it.

    .venv/bin/python bench/serve.py --bundle bundles/fk-v1                     # the real catalog
    .venv/bin/python bench/serve.py --bundle bundles/fk-v1 --items 1000000     # + synthetic items to 1M

What it does, every step bounded in time and count, nothing left running when it exits:
1. (--items) writes a bundle copy under runs/bench/ whose items.parquet is the real items plus random unit
   vectors with synthetic ids, split across the platforms like the real catalog (same models, histories).
2. starts `xrec serve` (one uvicorn worker, the default Settings: bundle verification on, 1 ONNX and 1 FAISS
   thread, HNSW above 50k items per platform) on 127.0.0.1 with a fresh Redis key prefix and an empty event
   log, and times it until /readyz answers 200 (bundle load), reading its memory from /proc.
3. cold runs: per concurrency, requests for persons never asked before (ranked cache and Redis profile
   empty for them: the full path, Redis + ONNX + FAISS + scorer); the process itself is warmed first with
   other persons, so one-off costs (first ONNX run, allocator growth) are not counted.
4. warm runs: a warm-up pass over a fixed set of persons, then the same set again and again.
5. mixed runs, what a storefront sends (--mix, default 25% / 25% / 50%): first-time persons (never asked
   before), requests right after an event for that person (their cached list ended by it), and repeats of
   warm persons drawn by Zipf (--zipf: a few come back often, most rarely), shuffled. After-event requests
   are for new accounts whose events (the last few of a real person's history on one platform) are posted
   through POST /v1/events before the run: the API takes raw account ids, which a bundle does not hold, so a
   bundle person cannot be sent an event; the server's path is the same (profile rebuilt at ingest, one
   Redis read, no user-encoder call), only their histories are short.
6. (--bare, on by default) the HTTP ceiling of this machine: bench/bare_app.py, the same uvicorn settings
   and route with a handler that does nothing, measured at each concurrency before the service starts;
   every run is also printed as a share of it.
7. (--profile) py-spy samples the server under warm and cold load (a separate pass, not the measured one)
   and prints where the time goes per request.

Uncached requests are micro-batched by the service (XREC_RECOMMEND_BATCH_*); each cold and mixed run prints
the mean batch size the server reports (/metrics).

Load generator: wrk (C, one thread, bench/recommend.lua for distinct POST bodies). It competes with the
server for the same 2 cores, so it must cost little: wrk answers ~50k req/s on one core, i.e. ~3% of a
core at 1,500 req/s; an httpx client costs ~0.3 ms of CPU per request, i.e. half a core at that rate.
`--client httpx` is the fallback where wrk is not installed (its figures are then client-bound).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from common import (
    RUNS,
    bundle_accuracy,
    event_sources,
    git_rev,
    grow_bundle,
    machine,
    matching_salt,
    persons_and_targets,
    proc_cpu_s,
    proc_status,
    read_manifest_json,
    recommend_body,
    unsalted_copy,
    write_json,
    zipf_choice,
)
from load import BareServer, Server, post_events, run_load
from spy_profile import load_breakdown, run_profile

# ---- the benchmark ----------------------------------------------------------------------------------------------

def pools(persons: list[str], targets: list[str], sizes: list[int], k: int) -> Iterator[list[str]]:
    """Disjoint slices of the shuffled persons, as request bodies (cold runs never repeat a person)."""
    start = 0
    for n in sizes:
        if start + n > len(persons):
            raise SystemExit(f"not enough distinct persons: need {start + n:,}, history has {len(persons):,} "
                             "(lower --cold-requests or --warm-persons)")
        yield [recommend_body(p, t, k) for p, t in zip(persons[start:start + n], targets[start:start + n],
                                                        strict=True)]
        start += n


def mixed_plan(bundle: Path, n: int, firsts: list[str], warm: list[str], share_event: float, zipf: float, k: int,
               seed: int) -> dict:
    """A mixed run's request bodies (first-time persons, after-event accounts, Zipf-drawn warm repeats,
    shuffled) and the events to post before it."""
    rng = np.random.default_rng(seed)
    n_event = round(n * share_event)
    tag = f"{seed}-{rng.integers(1 << 30)}"
    events, after = [], []
    now = int(time.time())
    for i, (platform, items) in enumerate(event_sources(bundle, n_event, seed)):
        account = f"bench-{tag}-{i}"
        events += [{"event_id": f"{account}-{j}", "platform": platform, "account_id": account, "item_id": item,
                    "event": "view", "ts": now - 60 * (len(items) - j)} for j, item in enumerate(items)]
        after.append(json.dumps({"account_id": account, "platform": platform, "k": k}, separators=(",", ":")))
    repeats = [warm[i] for i in zipf_choice(len(warm), max(n - len(firsts) - n_event, 0), zipf, rng).tolist()]
    bodies = firsts + after + repeats
    return {"bodies": [bodies[i] for i in rng.permutation(len(bodies)).tolist()], "events": events}


def batch_counts(url: str) -> tuple[float, float]:
    """(batches, requests) the server has micro-batched so far, from /metrics."""
    count = total = 0.0
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
            for ln in r.read().decode().splitlines():
                if ln.startswith("xrec_recommend_batch_size_count"):
                    count = float(ln.split()[-1])
                elif ln.startswith("xrec_recommend_batch_size_sum"):
                    total = float(ln.split()[-1])
    except OSError:
        pass
    return count, total


EVENT_CHUNK = 200  # --settle: events posted per step (about 40 persons of the mixed plan)


def settle(url: str, quiet_s: float, max_s: float = 120.0) -> None:
    """Wait until the server has computed no uncached list for `quiet_s` (the lists it ranks ahead after
    events are done), at most `max_s`."""
    start = time.perf_counter()
    last, since = batch_counts(url)[1], time.perf_counter()
    while time.perf_counter() - start < max_s:
        time.sleep(0.05)
        now = batch_counts(url)[1]
        if now != last:
            last, since = now, time.perf_counter()
        elif time.perf_counter() - since >= quiet_s:
            return


def mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float:
    batches = after[0] - before[0]
    return (after[1] - before[1]) / batches if batches else float("nan")


def line(r: dict, name: str, c: int) -> str:
    rps = r["requests"] / r["seconds"] if r["seconds"] else float("nan")
    hit = r["hits"] / max(r["requests"], 1)
    return (f"  {name:<5} c={c:<3} {r['requests']:>7,} req in {r['seconds']:5.1f}s  {rps:8,.0f} req/s  "
            f"p50 {r['p50_us'] / 1000:6.2f}  p95 {r['p95_us'] / 1000:6.2f}  p99 {r['p99_us'] / 1000:6.2f}  "
            f"max {r['max_us'] / 1000:6.1f} ms  errors {r['errors']}  cache hit {hit:.0%}")


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    # SIGTERM/SIGHUP (a `timeout`, a closed terminal) must run the finally blocks that stop the server.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True, help="bundle folder (as given to `xrec serve`)")
    ap.add_argument("--items", type=int, default=0,
                    help="grow the catalog to this many items with synthetic random unit vectors (0: as is)")
    ap.add_argument("--concurrency", default="1,16,64", help="comma-separated connection counts")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (upper bound)")
    ap.add_argument("--max-requests", type=int, default=100_000, help="requests per warm run (upper bound)")
    ap.add_argument("--warm-persons", type=int, default=5_000,
                    help="distinct persons of the warm set (below the ranked cache's 20k entries)")
    ap.add_argument("--cold-requests", type=int, default=4_000,
                    help="distinct never-asked persons per cold run (each is one request; upper bound)")
    ap.add_argument("--modes", default="cold,warm,mixed",
                    help="any of cold, warm, mixed (in that order, one server process)")
    ap.add_argument("--mix", default="0.25,0.25",
                    help="mixed runs: share of first-time persons, share of after-event requests (the rest: warm)")
    ap.add_argument("--zipf", type=float, default=1.1, help="mixed runs: Zipf exponent of warm repeats")
    ap.add_argument("--bare", action=argparse.BooleanOptionalAction, default=True,
                    help="measure the HTTP ceiling (bench/bare_app.py) at each concurrency first")
    ap.add_argument("--index-files", action=argparse.BooleanOptionalAction, default=True,
                    help="(--items) build the grown catalog's indexes into the copy, as export does; "
                         "--no-index-files: the server builds them at start (an older bundle)")
    ap.add_argument("--k", type=int, default=20, help="items per request (the API default)")
    ap.add_argument("--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx")
    ap.add_argument("--profile", action="store_true", help="also py-spy the server under warm and cold load")
    ap.add_argument("--profile-seconds", type=float, default=8.0)
    ap.add_argument("--salt", default=None, help="XREC_ID_SALT the bundle was built with (default: try "
                                                 "$XREC_ID_SALT and the development/test salts)")
    ap.add_argument("--load-timeout", type=float, default=1500.0, help="seconds to wait for /readyz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extra-persons", type=int, default=0,
                    help="(smoke tests on the tiny fixture only) synthetic persons added to the copy")
    ap.add_argument("--server-pythonpath", default=None,
                    help="experiment: prepend this to the server's PYTHONPATH (e.g. a folder with httptools and "
                         "uvloop, which uvicorn then picks up); figures are labelled with it")
    ap.add_argument("--settle", action=argparse.BooleanOptionalAction, default=True,
                    help="mixed runs: after posting the events, wait until the lists the server ranks ahead "
                         "after events (XREC_REFRESH_AFTER_EVENTS) are done, as the time between a page's event "
                         "and the next page view allows; that work is reported apart (--no-settle: the "
                         "requests start at once and meet it in the queue)")
    ap.add_argument("--hold-while", type=Path, default=None,
                    help="after the server is ready, wait (at most --hold-max s) while this file exists: lets "
                         "bench/run_all.sh build other indexes during this server's load, not during its runs")
    ap.add_argument("--hold-max", type=float, default=1200.0)
    ap.add_argument("--label", default=None, help="name of this run in the JSON output")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here (default runs/bench/)")
    args = ap.parse_args()

    RUNS.mkdir(parents=True, exist_ok=True)
    src = args.bundle.resolve()
    bundle = src
    n_real = _count_items(src)
    if args.items or args.extra_persons:
        dst = RUNS / f"{src.name}-{(args.items or n_real) // 1000}k"
        bundle = grow_bundle(src, dst, max(args.items, n_real), args.extra_persons, args.seed,
                             index_files=args.index_files)
    salt = matching_salt(bundle, args.salt)
    if salt is None:
        print("note: no known salt matches the bundle's fingerprint; serving a symlinked copy with the "
              "fingerprint cleared (persons are addressed by pseudonymous id, so answers are the same)")
        bundle = unsalted_copy(bundle, RUNS / f"{bundle.name}-nosalt")
        salt = "xrec-bench"
    manifest = read_manifest_json(bundle)
    n_items = _count_items(bundle)
    conc = [int(c) for c in args.concurrency.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    persons, targets, platforms = persons_and_targets(bundle, args.seed)
    print(f"bundle {bundle} (model {manifest['model_version']}, dim {manifest['dim']}, {n_items:,} items, "
          f"{len(persons):,} persons); client {args.client}; git {git_rev()}")
    print(f"machine: {machine()}")

    # Person pools, disjoint: process warm-up, cold runs (one per concurrency), the warm set, the first-time
    # persons of the mixed runs (one pool per concurrency).
    n_cold = args.cold_requests
    share_first, share_event = (float(x) for x in args.mix.split(","))
    n_mixed_first = round(n_cold * share_first) if "mixed" in modes else 0
    sizes = ([200] + ([n_cold] * len(conc) if "cold" in modes else []) + [args.warm_persons]
             + [n_mixed_first] * (len(conc) if "mixed" in modes else 0))
    if args.profile and "cold" in modes:
        sizes.append(n_cold)
    got = list(pools(persons, targets, sizes, args.k))
    proc_warm, cold_sets = got[0], got[1:1 + (len(conc) if "cold" in modes else 0)]
    warm_set = got[1 + len(cold_sets)]
    first_sets = got[2 + len(cold_sets):2 + len(cold_sets) + (len(conc) if "mixed" in modes else 0)]
    profile_cold_set = got[-1] if args.profile and "cold" in modes else None
    mixed_plans = [mixed_plan(bundle, n_cold, firsts, warm_set, share_event, args.zipf, args.k, args.seed + i)
                   for i, firsts in enumerate(first_sets)]

    results: dict = {"label": args.label or f"{src.name}-{n_items}", "bundle": str(bundle),
                     "model_version": manifest["model_version"], "dim": manifest["dim"], "items": n_items,
                     "persons": len(persons), "client": args.client, "machine": machine(), "git": git_rev(),
                     "runs": [], "accuracy": bundle_accuracy(src), "server_pythonpath": args.server_pythonpath}
    tmp = Path(tempfile.mkdtemp(prefix="xrec-bench-"))
    server = None
    try:
        if args.bare:  # the HTTP ceiling, before the service starts (nothing else runs meanwhile)
            bare = BareServer(tmp)
            try:
                print("bare (bench/bare_app.py: the same server and route, a handler that does nothing):")
                for c in conc:
                    cpu0 = proc_cpu_s(bare.proc.pid)
                    r = run_load(args.client, bare.url, warm_set, c, args.duration, args.max_requests, True, tmp)
                    r["server_cpu_us_per_req"] = (proc_cpu_s(bare.proc.pid) - cpu0) / max(r["requests"], 1) * 1e6
                    results["runs"].append({"mode": "bare", "concurrency": c, **r})
                    print(line(r, "bare", c) + f"  server CPU {r['server_cpu_us_per_req']:,.0f} µs/req")
            finally:
                bare.stop()
        load_prof = RUNS / "profiles" / f"{results['label']}-load.txt" if args.profile else None
        if load_prof is not None:
            load_prof.parent.mkdir(parents=True, exist_ok=True)
        server = Server(bundle, salt, tmp, args.load_timeout, args.server_pythonpath, load_prof)
        ready = server.readyz()
        results["load"] = {"ready_s": server.load_s,
                           "rss_bytes": server.loaded_mem.get("VmRSS"), "hwm_bytes": server.loaded_mem.get("VmHWM"),
                           "readyz": ready}
        rss, hwm = server.loaded_mem.get("VmRSS", 0), server.loaded_mem.get("VmHWM", 0)
        if load_prof is not None and load_prof.is_file():
            results["load"]["breakdown"] = load_breakdown(load_prof)
            print("  startup time by function (py-spy):")
            for name, share in results["load"]["breakdown"]:
                print(f"  {share:6.1%}  {name}")
        print(f"server ready in {server.load_s:.1f}s, RSS "
              f"{rss / 2**20:,.0f} MiB, peak {hwm / 2**20:,.0f} MiB ({rss / n_items:,.0f} B/item); readyz {ready}")

        if args.hold_while is not None:
            t0 = time.perf_counter()
            while args.hold_while.exists() and time.perf_counter() - t0 < args.hold_max:
                time.sleep(1.0)
            results["load"]["held_s"] = time.perf_counter() - t0
            print(f"held {results['load']['held_s']:.0f}s for {args.hold_while} to go")

        # Warm the process (not the persons measured later): first ONNX runs, allocator, code paths.
        run_load(args.client, server.url, proc_warm, 8, 20, len(proc_warm) - 8, False, tmp)

        if "cold" in modes:
            print("cold (every request a person never asked before; Redis namespace fresh):")
            for c, bodies in zip(conc, cold_sets, strict=True):
                cpu0, batches0 = proc_cpu_s(server.proc.pid), batch_counts(server.url)
                r = run_load(args.client, server.url, bodies, c, args.duration, max(len(bodies) - c, 1), False,
                             tmp)
                r["server_cpu_us_per_req"] = (proc_cpu_s(server.proc.pid) - cpu0) / max(r["requests"], 1) * 1e6
                r["mean_batch"] = mean_batch(batches0, batch_counts(server.url))
                results["runs"].append({"mode": "cold", "concurrency": c, **r})
                print(line(r, "cold", c) + f"  server CPU {r['server_cpu_us_per_req']:,.0f} µs/req, "
                      f"mean batch {r['mean_batch']:.1f}")

        if "warm" in modes or "mixed" in modes:
            t0 = time.perf_counter()
            # The warm-up pass: every warm person once (computes and caches their ranked lists).
            run_load(args.client, server.url, warm_set, 16, 300, len(warm_set) + 16, True, tmp)
            warmed_at = time.perf_counter()
        if "warm" in modes:
            print(f"warm (the same {len(warm_set):,} persons again and again; warm-up pass "
                  f"{warmed_at - t0:.1f}s):")
            for c in conc:
                cpu0 = proc_cpu_s(server.proc.pid)
                r = run_load(args.client, server.url, warm_set, c, args.duration, args.max_requests, True, tmp)
                r["server_cpu_us_per_req"] = (proc_cpu_s(server.proc.pid) - cpu0) / max(r["requests"], 1) * 1e6
                results["runs"].append({"mode": "warm", "concurrency": c, **r})
                print(line(r, "warm", c) + f"  server CPU {r['server_cpu_us_per_req']:,.0f} µs/req, client "
                      f"{r.get('client_cpu_us_per_req', float('nan')):,.0f}")

        if "mixed" in modes:
            print(f"mixed ({share_first:.0%} first-time persons, {share_event:.0%} right after an event, the rest "
                  f"warm repeats by Zipf s={args.zipf}):")
            for c, plan in zip(conc, mixed_plans, strict=True):
                if time.perf_counter() - warmed_at > 240:  # the ranked cache keeps lists 300 s: warm them again
                    run_load(args.client, server.url, warm_set, 16, 300, len(warm_set) + 16, True, tmp)
                    warmed_at = time.perf_counter()
                cpu0, batches0 = proc_cpu_s(server.proc.pid), batch_counts(server.url)
                started = time.perf_counter()
                sent: dict[str, int] = {}
                # --settle: the events of a few persons at a time, each chunk's lists done before the next,
                # as events spread over time arrive; else all at once, then the requests.
                chunk = EVENT_CHUNK if args.settle else max(len(plan["events"]), 1)
                for i in range(0, len(plan["events"]), chunk):
                    for key, n in post_events(server.url, plan["events"][i:i + chunk]).items():
                        sent[key] = sent.get(key, 0) + n
                    if args.settle:
                        settle(server.url, quiet_s=0.05)
                batches1 = batch_counts(server.url)
                accepted = max(sent.get("accepted", 0), 1)
                ingest = {"events_posted": sent, "ingest_s": time.perf_counter() - started,
                          "lists_ranked_ahead": batches1[1] - batches0[1],
                          "server_cpu_us_per_event": (proc_cpu_s(server.proc.pid) - cpu0) / accepted * 1e6}
                print(f"  events: {accepted:,} accepted, {ingest['lists_ranked_ahead']:,.0f} lists ranked ahead, "
                      f"{ingest['ingest_s']:.1f} s; server CPU "
                      f"{ingest['server_cpu_us_per_event']:,.0f} µs per event (ingest + what it ranked ahead)")
                cpu0, batches0 = proc_cpu_s(server.proc.pid), batches1
                r = run_load(args.client, server.url, plan["bodies"], c, args.duration,
                             max(len(plan["bodies"]) - c, 1), False, tmp)
                r["server_cpu_us_per_req"] = (proc_cpu_s(server.proc.pid) - cpu0) / max(r["requests"], 1) * 1e6
                r["mean_batch"] = mean_batch(batches0, batch_counts(server.url))
                r.update(ingest)
                results["runs"].append({"mode": "mixed", "concurrency": c, **r})
                print(line(r, "mixed", c) + f"  server CPU {r['server_cpu_us_per_req']:,.0f} µs/req, "
                      f"mean batch {r['mean_batch']:.1f}")

        end_mem = proc_status(server.proc.pid)
        results["load"]["rss_after_bytes"] = end_mem.get("VmRSS")
        results["load"]["hwm_after_bytes"] = end_mem.get("VmHWM")

        if args.profile:
            prof_dir = RUNS / "profiles"
            prof_dir.mkdir(parents=True, exist_ok=True)
            results["profile"] = {}
            plan = [("warm", warm_set, True)] + ([("cold", profile_cold_set, False)] if profile_cold_set else [])
            for name, bodies, cycle in plan:
                pr = run_profile(server, args.client, bodies, 16, args.profile_seconds, cycle, tmp,
                                 prof_dir / f"{results['label']}-{name}")
                results["profile"][name] = pr
                print_profile(name, pr)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print_summary(results)
    out = args.json or RUNS / f"serve-{results['label']}.json"
    write_json(out, results)
    print(f"figures: {out}")


def _count_items(bundle: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(bundle / "items.parquet").metadata.num_rows


def print_profile(name: str, pr: dict) -> None:
    if "error" in pr:
        print(f"profile {name}: py-spy failed: {pr['error']}")
        return
    print(f"profile {name} (c=16, {pr['requests']:,} requests, {pr['req_s']:,.0f} req/s under py-spy; "
          f"server CPU {pr['server_cpu_us_per_req']:,.0f} µs/request; {pr['samples']:,} busy-thread samples)")
    # Warm requests run on the event loop thread alone, so sample share x CPU per request is CPU time per
    # step. Cold requests also spend thread time blocked on Redis replies (py-spy counts a recv as busy):
    # there the shares are of thread time, not CPU.
    print("  share   ≈µs/req   step" if name == "warm" else "  share of busy-thread time (Redis waits included)")
    for cat, share, us in pr["categories"]:
        print(f"  {share:6.1%}  {us:8,.0f}  {cat}" if name == "warm" else f"  {share:6.1%}  {cat}")
    print("  top self-time frames:")
    for frame, share in pr["top_self"][:10]:
        print(f"  {share:6.1%}  {frame}")


def print_summary(results: dict) -> None:
    """Every run, as a share of the HTTP ceiling (the bare endpoint at the same concurrency), then the goals
    (issue 12), with ratios (measured / goal)."""
    by = {(r["mode"], r["concurrency"]): r for r in results["runs"]}
    print(f"\nsummary ({results['label']}, {results['items']:,} items):")

    def rps(r: dict) -> float:
        return r["requests"] / r["seconds"]

    order = {"bare": 0, "cold": 1, "warm": 2, "mixed": 3}
    for (mode, c), r in sorted(by.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
        bare = by.get(("bare", c))
        ceiling = f"  {rps(r) / rps(bare):5.1%} of the HTTP ceiling" if bare and mode != "bare" else ""
        cpu = r.get("server_cpu_us_per_req")
        print(f"  {mode:<5} c={c:<3} {rps(r):8,.0f} req/s  p50 {r['p50_us'] / 1e3:6.2f}  "
              f"p99 {r['p99_us'] / 1e3:6.2f} ms  errors {r['errors']}"
              + (f"  server CPU {cpu:,.0f} µs/req" if cpu is not None else "") + ceiling)
    goals = []
    if ("cold", 1) in by:
        goals.append(("cold c=1 p50 ms <= 3", by[("cold", 1)]["p50_us"] / 1e3, 3, False))
    if ("cold", 16) in by:
        r = by[("cold", 16)]
        big = results["items"] >= 500_000
        goals += [(f"cold c=16 req/s >= {500 if big else 1000}", rps(r), 500 if big else 1000, True),
                  (f"cold c=16 p99 ms <= {100 if big else 50}", r["p99_us"] / 1e3, 100 if big else 50, False),
                  ("cold c=16 server CPU µs/req <= 1500", r.get("server_cpu_us_per_req", float("nan")), 1500, False)]
    if ("cold", 64) in by:
        r = by[("cold", 64)]
        goals += [("cold c=64 p99 ms <= 150", r["p99_us"] / 1e3, 150, False),
                  ("cold c=64 errors == 0", r["errors"], 0, False)]
    if ("warm", 16) in by:
        goals.append(("warm c=16 req/s >= 3000", rps(by[("warm", 16)]), 3000, True))
    if results["items"] >= 500_000 and "load" in results:
        goals.append(("ready s <= 60", results["load"]["ready_s"], 60, False))
    for name, got, goal, higher in goals:
        ok = got >= goal if higher else got <= goal
        ratio = f"{got / goal:.2f}x goal" if goal else ""
        print(f"  {'MET ' if ok else 'MISS'} {name}: {got:,.2f} {ratio}")


if __name__ == "__main__":
    main()
