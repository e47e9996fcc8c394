"""Campaign scoring throughput: `xrec batch score` in process (--no-ray) and on a local Ray, vs the HTTP
endpoint POST /v1/batch/score, on the same persons, bundle and Redis.

    .venv/bin/python bench/campaign.py                          # the tiny test fixture bundle (built here)
    .venv/bin/python bench/campaign.py --bundle bundles/fk-v1 --persons 53000 --platform kitchen
    .venv/bin/python bench/campaign.py --bundle B --salt S --persons 1000 --modes in-process --compare 1000

Persons: the bundle's history persons, cycled to --persons (every one is scored from scratch each time:
campaign reads do not write profiles back, so nothing is cached between repeats). Each mode gets a fresh
Redis key prefix (deleted afterwards) and its own output folder.
- in-process: `Campaign(use_ray=False)`, one process, ONNX and FAISS on one thread.
- ray: `Campaign(use_ray=True)` on a local Ray with --workers CPUs, one actor per CPU; timed end to end
  (Ray start, actors loading the bundle) and from the first part written on.
- http: `xrec serve` (one uvicorn worker, as in production), one POST /v1/batch/score per 100,000 persons,
  the NDJSON stream read to its summary line. Its rows carry no reasons; the campaign's do (and are written
  as Parquet), so the campaign does more per person.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from load import BENCH_KEY, Server, _drop_redis_prefix  # noqa: E402

from app.core.config import Settings  # noqa: E402
from app.services.campaign import Campaign  # noqa: E402


def history_persons(bundle: Path) -> list[str]:
    return sorted(set(pq.read_table(bundle / "history.parquet", columns=["person"]).column("person").to_pylist()))


def settings_for(bundle: Path, salt: str, prefix: str, events: Path) -> Settings:
    return Settings(_env_file=None, bundle_dir=bundle, id_salt=salt, redis_prefix=prefix, events_dir=events,
                    api_keys=[BENCH_KEY], redis_url=os.environ.get("XREC_REDIS_URL", "redis://127.0.0.1:6379/0"))


def run_campaign(bundle: Path, persons: Path, platform: str, k: int, salt: str, work: Path, use_ray: bool,
                 workers: int, part_size: int) -> dict:
    prefix = f"xrec-bench-camp-{os.getpid()}-{'ray' if use_ray else 'solo'}"
    try:
        s = Campaign(settings_for(bundle, salt, prefix, work / "events"), bundle, persons, platform,
                     work / ("out-ray" if use_ray else "out-solo"), k=k, part_size=part_size, use_ray=use_ray,
                     workers=workers, progress=False).run()
    finally:
        _drop_redis_prefix(prefix)
    first_persons = min(part_size, s.persons)
    steady = ((s.persons - first_persons) / (s.seconds - s.first_part_s)
              if s.first_part_s is not None and s.seconds > s.first_part_s and s.persons > first_persons else None)
    print(s.line(), file=sys.stderr)
    return {"mode": s.mode, "workers": s.workers, "persons": s.persons, "seconds": round(s.seconds, 2),
            "persons_per_s": round(s.persons_per_s, 1), "first_part_s": round(s.first_part_s or 0, 2),
            "steady_persons_per_s": round(steady, 1) if steady else None, "rows": s.rows}


def run_http(bundle: Path, ids: list[str], platform: str, k: int, salt: str, work: Path) -> dict:
    server = Server(bundle, salt, work, load_timeout_s=300)
    try:
        started = time.perf_counter()
        rows = 0
        for i in range(0, len(ids), 100_000):
            body = json.dumps({"platform": platform, "k": k, "persons": [{"person_id": p} for p in ids[i:i + 100_000]]})
            req = urllib.request.Request(server.url + "/v1/batch/score", data=body.encode(), method="POST",
                                         headers={"Content-Type": "application/json", "X-API-Key": BENCH_KEY})
            with urllib.request.urlopen(req, timeout=3600) as r:
                last = b""
                for line in r:
                    rows += 1
                    last = line
            assert json.loads(last).get("done") is True, last[:300]
        seconds = time.perf_counter() - started
    finally:
        server.stop()
    n = len(ids)
    print(f"http: {n:,} persons in {seconds:.1f}s, {n / seconds:,.0f} persons/s", file=sys.stderr)
    return {"mode": "http /v1/batch/score", "workers": 1, "persons": n, "seconds": round(seconds, 2),
            "persons_per_s": round(n / seconds, 1), "first_part_s": None, "steady_persons_per_s": None,
            "rows": rows - len(range(0, n, 100_000))}


def compare_with_service(bundle: Path, salt: str, work: Path, out_dir: Path, platform: str, k: int, n: int
                         ) -> dict:
    """The first `n` persons of a campaign's output against `POST /v1/recommend` of a running `xrec serve` on
    the same bundle: the same items in the same order, and the scores."""
    table = pq.read_table(out_dir, columns=["person", "rank", "item_id", "score"]).to_pylist()
    by_person: dict[str, list[dict]] = {}
    for row in table:
        by_person.setdefault(row["person"], []).append(row)
    persons = sorted(by_person)[:n]
    server = Server(bundle, salt, work, load_timeout_s=300)
    same, max_diff = 0, 0.0
    try:
        for person in persons:
            body = json.dumps({"person_id": person, "platform": platform, "k": k}).encode()
            req = urllib.request.Request(server.url + "/v1/recommend", data=body, method="POST",
                                         headers={"Content-Type": "application/json", "X-API-Key": BENCH_KEY})
            with urllib.request.urlopen(req, timeout=60) as r:
                served = json.loads(r.read())["items"]
            ours = sorted(by_person[person], key=lambda row: row["rank"])
            if [it["item_id"] for it in served] == [row["item_id"] for row in ours]:
                same += 1
                max_diff = max([max_diff] + [abs(it["score"] - row["score"]) for it, row in zip(served, ours,
                                                                                              strict=True)])
    finally:
        server.stop()
    print(f"compare: {same:,} of {len(persons):,} persons get the same {k} items in the same order from "
          f"`xrec batch score` and POST /v1/recommend; max score difference {max_diff:.2e}", file=sys.stderr)
    return {"persons": len(persons), "same_items_and_order": same, "max_score_diff": max_diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="default: build the tiny test fixture bundle")
    ap.add_argument("--salt", default=None, help="the bundle's id salt (default: the fixture's)")
    ap.add_argument("--persons", type=int, default=20_000)
    ap.add_argument("--platform", default=None, help="default: the bundle's last platform")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--part-size", type=int, default=2_000)
    ap.add_argument("--modes", default="in-process,ray,http")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    ap.add_argument("--compare", type=int, default=0,
                    help="then compare the first N persons of the in-process (else ray) output with /v1/recommend")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="xrec-bench-campaign-") as tmp:
        work = Path(tmp)
        bundle, salt = args.bundle, args.salt
        if bundle is None:
            from tests.fixtures.tiny_bundle import TEST_SALT, build_tiny_bundle

            bundle, salt = build_tiny_bundle(work / "tiny"), salt or TEST_SALT
        if salt is None:
            raise SystemExit("--salt: the id salt the bundle was built with")
        manifest = json.loads((bundle / "manifest.json").read_text())
        platform = args.platform or manifest["platforms"][-1]
        base = history_persons(bundle)
        ids = [base[i % len(base)] for i in range(args.persons)]
        persons = work / "persons.parquet"
        pq.write_table(pa.table({"person_id": ids}), persons)
        print(f"bundle {manifest['model_version']}: {len(base):,} distinct persons cycled to {len(ids):,}; "
              f"platform {platform}, k {args.k}; {os.cpu_count()} CPUs", file=sys.stderr)
        results = []
        for mode in args.modes.split(","):
            if mode == "http":
                results.append(run_http(bundle, ids, platform, args.k, salt, work))
            else:
                results.append(run_campaign(bundle, persons, platform, args.k, salt, work, mode == "ray",
                                            args.workers, args.part_size))
        compared = None
        if args.compare:
            out = work / ("out-solo" if "in-process" in args.modes.split(",") else "out-ray")
            compared = compare_with_service(bundle, salt, work, out, platform, args.k, args.compare)
    print("| mode | workers | persons | seconds | persons/s | first part after | persons/s after first part |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        first = f"{r['first_part_s']:.1f} s" if r["first_part_s"] else "—"
        steady = f"{r['steady_persons_per_s']:,.0f}" if r["steady_persons_per_s"] else "—"
        print(f"| {r['mode']} | {r['workers']} | {r['persons']:,} | {r['seconds']:.1f} | {r['persons_per_s']:,.0f} "
              f"| {first} | {steady} |")
    if args.json:
        args.json.write_text(json.dumps({"bundle": str(args.bundle or "tiny fixture"), "results": results,
                                         "compared": compared}, indent=2))


if __name__ == "__main__":
    main()
