"""The user encoder's cost per person with and without the left-padding cut (`app.services.ranking.trim_padding`),
on a bundle's own persons, in process, in batches of the sizes the micro-batcher forms.

    .venv/bin/python bench/user_encoder.py --bundle bundles/fk-v10 [--batches 1,4,8,16] [--seconds 3]

Both ways run the same ONNX session (1 thread, as the service sets it) on the same feeds, alternating, and the
vectors are compared bit for bit.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq

from app.services.ranking import trim_padding
from contract.bundle import read_manifest
from contract.features import History, user_encoder_feeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    manifest = read_manifest(args.bundle)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(args.bundle / "user_encoder.onnx"), opts, providers=["CPUExecutionProvider"])
    items = pq.read_table(args.bundle / "items.parquet", columns=["item_id", "vector"])
    row_of = {item: i for i, item in enumerate(items.column("item_id").to_pylist())}
    vectors = np.stack(items.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    events = pq.read_table(args.bundle / "history.parquet").to_pandas()
    platform_of = {name: i for i, name in enumerate(manifest.platforms)}
    histories = [History.of([row_of[i] for i in g.item_id], [platform_of[p] for p in g.platform], g.ts.to_numpy())
                 for _, g in events.sort_values("ts", kind="stable").groupby("person", sort=False)]
    lengths = np.array([len(h) for h in histories])
    print(f"{args.bundle}: {len(histories):,} persons, events each: median {np.median(lengths):.0f}, "
          f"90th percentile {np.percentile(lengths, 90):.0f}; max_history {manifest.max_history}")
    rng = np.random.default_rng(0)
    for b in (int(x) for x in args.batches.split(",")):
        batches = [[histories[i] for i in rng.integers(0, len(histories), b)] for _ in range(200)]
        feeds = [user_encoder_feeds(h, [0] * b, vectors, manifest.max_history) for h in batches]
        cut = [trim_padding(f) for f in feeds]
        same = all(np.array_equal(session.run(None, f)[0], session.run(None, c)[0])
                   for f, c in zip(feeds, cut, strict=True))
        spent = {"full": 0.0, "cut": 0.0}
        runs = {"full": 0, "cut": 0}
        end = time.perf_counter() + 2 * args.seconds
        while time.perf_counter() < end:
            for name, fs in (("full", feeds), ("cut", cut)):
                t = time.perf_counter()
                for f in fs[:20]:
                    session.run(None, f)
                spent[name] += time.perf_counter() - t
                runs[name] += 20 * b
        full, short = (spent[k] / runs[k] * 1e6 for k in ("full", "cut"))
        slots = np.mean([c["hist_mask"].shape[1] for c in cut])
        print(f"batch {b:>2}: {manifest.max_history} slots {full:6.0f} µs/person, cut to {slots:4.1f} slots on average "
              f"{short:6.0f} µs/person ({full / short:.2f}x); vectors bit-identical: {same}")


if __name__ == "__main__":
    main()
