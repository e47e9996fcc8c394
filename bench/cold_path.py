"""The uncached /v1/recommend path in process, without HTTP: `Recommender.compute_many` on micro-batches of
persons the service has not seen since start, with a real Redis (a fresh key prefix) behind the profiles.

    .venv/bin/python bench/cold_path.py --bundle bundles/fk-v11 [--batches 1,8,16] [--persons 3000] [--profile]

Prints the worker's time per request (the service's micro-batch worker, both stages in one thread) for each
batch size; `--profile` adds cProfile's top functions by own time, grouped as bench/spy_profile.py groups py-spy
samples. Each batch size runs on its own persons, so every request misses the ranked cache and reads Redis.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
import uuid
from pathlib import Path

import numpy as np
from common import matching_salt, persons_and_targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--batches", default="1,8,16")
    ap.add_argument("--persons", type=int, default=3000, help="persons per batch size")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()

    salt = matching_salt(args.bundle, None)
    if salt is not None:
        os.environ["XREC_ID_SALT"] = salt
    os.environ["XREC_REDIS_PREFIX"] = f"xrec-bench-{uuid.uuid4().hex[:8]}"
    os.environ["XREC_BUNDLE_DIR"] = str(args.bundle)
    from app.core.config import Settings
    from app.services.recommender import Ask
    from app.services.state import ServiceState

    state = ServiceState(Settings())
    state.start()
    try:
        bundle = state.require_bundle()
        persons, targets, _ = persons_and_targets(args.bundle)
        rng = np.random.default_rng(0)
        order = rng.permutation(len(persons))
        rec = state.recommender
        used = 0
        for b in (int(x) for x in args.batches.split(",")):
            take = order[used:used + args.persons]
            used += len(take)
            asks = [Ask(persons[i], bundle.platform_of[targets[i]], args.k) for i in take]
            batches = [asks[j:j + b] for j in range(0, len(asks), b)]
            warm = batches[:max(1, 100 // b)]
            for batch in warm:  # JSON pieces, ONNX and FAISS first calls
                rec.compute_many(bundle, batch)
                rec.profiles.flush_stores()
            timed = batches[len(warm):]
            prof = cProfile.Profile() if args.profile else None
            t0, c0 = time.perf_counter(), time.process_time()
            if prof is not None:
                prof.enable()
            failed = 0
            for batch in timed:
                answers = rec.compute_many(bundle, batch)
                rec.profiles.flush_stores()
                failed += sum(isinstance(a, BaseException) for a in answers)
            if prof is not None:
                prof.disable()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            n = sum(len(x) for x in timed)
            print(f"batch {b:>2}: {n:,} requests, {wall / n * 1e6:7.0f} µs/request wall, {cpu / n * 1e6:7.0f} µs "
                  f"CPU (process, all threads), {failed} failed")
            if prof is not None:
                stats = pstats.Stats(prof)
                rows = sorted(((v[2], f"{Path(k[0]).name}:{k[1]} {k[2]}") for k, v in stats.stats.items()),
                              reverse=True)[:args.top]
                for own, name in rows:
                    print(f"    {own / n * 1e6:6.1f} µs/request  {name}")
    finally:
        state.stop()


if __name__ == "__main__":
    main()
