"""Train/serve skew check on a real bundle: for test persons, the service's /v1/recommend top-k must equal the
offline evaluator's ranking (torch model + the same features code) for the same history and time.

    .venv/bin/python bench/skew.py --checkpoint runs/fk-model/checkpoint.pt --bundle bundles/fk-v1 --persons 50
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from training.evaluate import make_queries
from training.report import model_rankers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--persons", type=int, default=50)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--split", default="test")
    args = ap.parse_args()

    ds, ranker = model_rankers(args.checkpoint)
    queries = make_queries(ds, args.split)[: args.persons]
    offline = ranker.final(queries) if ranker.scorer is not None else ranker.retrieval(queries)
    prefix = f"xrec-skew-{uuid.uuid4().hex[:8]}"
    settings = Settings(_env_file=None, bundle_dir=args.bundle, redis_prefix=prefix,  # type: ignore[call-arg]
                        events_dir=Path(f"/tmp/{prefix}"))
    same, started = 0, time.perf_counter()
    with TestClient(create_app(settings)) as client:
        for q, scores in zip(queries, offline, strict=True):
            cand = ds.platform_items(q.platform)
            s = scores.copy()
            s[np.isin(cand, q.items)] = -np.inf
            expected = [ds.item_ids[cand[j]] for j in np.argsort(-s, kind="stable")[: args.k]]
            r = client.post("/v1/recommend", json={"person_id": ds.timelines.persons[q.person],
                                                   "platform": ds.platforms[q.platform], "k": args.k,
                                                   "now_ts": q.now})
            got = [i["item_id"] for i in r.json()["items"]]
            same += got == expected
            if got != expected:
                print(f"differs: person {q.person}: offline {expected[:5]}… service {got[:5]}…")
    print(f"{same}/{len(queries)} persons: service top-{args.k} == offline top-{args.k} "
          f"({time.perf_counter() - started:.1f}s)")


if __name__ == "__main__":
    main()
