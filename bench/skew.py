"""Train/serve skew check on a real bundle, against the trained model itself (torch), two modes:

- `recommend`: for test persons, the service's /v1/recommend top-k must equal the offline evaluator's
  ranking for the same history and time;
- `new-item`: a catalog title is sent through PUT /v1/items under a new id; /v1/rank over it and the
  person's offline top 10 must order them as the trained model orders an item it never saw (text path alone).

    .venv/bin/python bench/skew.py --checkpoint runs/fk-model/checkpoint.pt --bundle bundles/fk-v3 --persons 100
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
from training.checkpoint import load_checkpoint
from training.evaluate import make_queries
from training.report import model_rankers
from training.skew import expected_top, new_item_case

API_KEY = "skew-check"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--persons", type=int, default=50)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--split", default="test")
    ap.add_argument("--mode", choices=["recommend", "new-item", "both"], default="both")
    args = ap.parse_args()

    ds, ranker = model_rankers(args.checkpoint)
    cfg = load_checkpoint(args.checkpoint).cfg
    queries = [q for q in make_queries(ds, args.split) if len(q.items)][: args.persons]
    prefix = f"xrec-skew-{uuid.uuid4().hex[:8]}"
    settings = Settings(_env_file=None, bundle_dir=args.bundle, redis_prefix=prefix,  # type: ignore[call-arg]
                        events_dir=Path(f"/tmp/{prefix}"), api_keys=API_KEY)
    rng = np.random.default_rng(0)
    with TestClient(create_app(settings), headers={"X-API-Key": API_KEY}) as client:
        if args.mode in ("recommend", "both"):
            same, started = 0, time.perf_counter()
            for q, scores in zip(queries, ranker.final(queries), strict=True):
                expected = expected_top(ranker, q, args.k, scores)
                r = client.post("/v1/recommend", json={"person_id": ds.timelines.persons[q.person],
                                                       "platform": ds.platforms[q.platform], "k": args.k,
                                                       "now_ts": q.now})
                got = [i["item_id"] for i in r.json()["items"]]
                same += got == expected
                if got != expected:
                    print(f"differs: person {q.person}: offline {expected[:5]}… service {got[:5]}…")
            print(f"recommend: {same}/{len(queries)} persons: service top-{args.k} == offline top-{args.k} "
                  f"({time.perf_counter() - started:.1f}s)")
        if args.mode in ("new-item", "both"):
            same, worst, started = 0, 0.0, time.perf_counter()
            for n, q in enumerate(queries):
                platform = ds.platforms[q.platform]
                source = int(rng.choice(ds.platform_items(q.platform)))
                case = new_item_case(ranker, q, source, f"{platform}:skew-new-{n}", cfg.text_max_length,
                                     cfg.text_model)
                r = client.put("/v1/items", json={"items": [{"item_id": case.new_id, "platform": platform,
                                                             "title": case.title}]}, headers={"X-API-Key": API_KEY})
                r.raise_for_status()
                r = client.post("/v1/rank", json={"person_id": ds.timelines.persons[q.person], "platform": platform,
                                                  "now_ts": q.now, "items": [{"item_id": i} for i in case.ids]})
                got = r.json()["items"]
                order = [i["item_id"] for i in got]
                served = {i["item_id"]: i["score"] for i in got}
                worst = max(worst, abs(served[case.new_id] - case.new_score))
                same += order == case.expected
                if order != case.expected:
                    print(f"differs: person {q.person}, new item {case.title[:40]!r}: offline position "
                          f"{case.expected.index(case.new_id)}, service {order.index(case.new_id)}")
            print(f"new-item: {same}/{len(queries)} persons: /v1/rank order with a new item == offline "
                  f"(max |score diff| of the new item {worst:.2e}; {time.perf_counter() - started:.1f}s)")


if __name__ == "__main__":
    main()
