"""Does the knowledge graph help? Re-train only the scorer of a checkpoint without and with it; valid and test.

    .venv/bin/python scripts/kg_probe.py runs/fk-model/checkpoint.pt [KG_CANDIDATES] [--json OUT]

Three variants, each a scorer re-trained (`train_scorer`, the held-out queries training used) on top of the
same two-tower and neighbour table: (i) no KG (the scorer's SCORER_EXTRAS, what `xrec train` does by
default), (ii) + the KG features (`KG_EXTRAS`: `kg_other`, `kg_target`, from the items' entities in the
checkpoint's dataset kg/; `kg_features = true`), (iii) the KG features + up to KG_CANDIDATES (default 50) KG
candidates for queries with no history on the target platform (`kg_candidates`). Every other setting is the
checkpoint's. For each: NDCG@10 on valid and test — overall, new-to-platform (the protocol
that hides the target platform's history: where KG candidates apply) and the 1–2 bucket (1 or 2 events on the
target platform) — and each variant's difference to (i) per query with a paired bootstrap 95% interval.

Decide on valid only; the test columns are the report. The checkpoint is not modified. About 4 minutes per
variant on 2 cores (Food-Kitchen).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from contract.features import scorer_features
from training.evaluate import evaluate_models, make_queries, ndcg_per_query
from training.kg.table import item_entities
from training.report import model_rankers
from training.train import TrainConfig, holdout_last_events, scorer_queries, train_scorer

SPLITS = ("valid", "test")
# Column → (protocol, which queries of it): "all" every query, "1-2" those with 1 or 2 target-platform events.
COLUMNS = {"all": ("full", None), "new to platform": ("new_to_platform", None), "1-2 bucket": ("full", (1, 2))}
BOOTSTRAP = 10_000


def per_query(result: dict, column: str) -> np.ndarray:
    """NDCG@10 of each query of a column, in the split's query order."""
    proto, bucket = COLUMNS[column]
    pq = result[proto]["per_query"]
    ndcg = ndcg_per_query(np.asarray(pq["rank"]), 10)
    if bucket is None:
        return ndcg
    n = np.asarray(pq["target_history"])
    return ndcg[(n >= bucket[0]) & (n <= bucket[1])]


def diff_interval(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """mean(a − b) and its 95% interval over paired resamples of the same queries."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) == 0:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(d), size=(BOOTSTRAP, len(d)))
    lo, hi = np.percentile(d[idx].mean(axis=1), [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def main(checkpoint: Path, kg_n: int, out: Path | None) -> None:
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = TrainConfig.model_validate(ckpt["train_config"])
    if cfg.history != "all":  # its valid queries and item-KNN table are built differently (see training.train)
        sys.exit(f"{checkpoint}: a {cfg.history} ablation checkpoint; this probe handles fused-history ones only")
    ds, ranker = model_rankers(checkpoint)
    kg = item_entities(Path(ckpt["dataset"]), ds.item_ids)
    if kg.is_empty:
        sys.exit(f"{ckpt['dataset']}: no knowledge graph (kg/); build the dataset without --no-kg")
    held = holdout_last_events(ds.timelines, cfg.scorer_extra_holdout, cfg.seed)
    train_q = scorer_queries(ds.timelines, held, cfg.history)
    valid = make_queries(ds, "valid")
    ranker.kg = kg
    variants = {"no KG": (False, 0), "KG features": (True, 0), f"KG features + {kg_n} KG candidates": (True, kg_n)}
    print(f"{checkpoint}: {len(train_q):,} scorer queries, retrieval {ranker.candidates} + item-KNN "
          f"{ranker.knn_candidates}; KG: {kg.n_entities:,} entities on {int((np.diff(kg.offsets) > 0).sum()):,} "
          f"of {kg.n_items:,} items", flush=True)

    scores: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    report: dict[str, object] = {"checkpoint": str(checkpoint), "variants": {}}
    for name, (features, n) in variants.items():
        started = time.perf_counter()
        ranker.kg_features, ranker.kg_candidates = features, n
        ranker.model.cfg.scorer_extras = len(scorer_features(features))  # the width of the scorer train_scorer makes
        log = train_scorer(ranker, train_q, valid, cfg, Console(stderr=True, quiet=True))
        scores[name] = {}
        for split in SPLITS:
            res = evaluate_models(ds, {"final": ranker.final}, split, protocols=("full", "new_to_platform"),
                                  log=lambda _: None)["final"]
            scores[name][split] = {c: per_query(res, c) for c in COLUMNS}
        means = {s: {c: float(v.mean()) for c, v in scores[name][s].items()} for s in SPLITS}
        report["variants"][name] = {"ndcg@10": means, "scorer": log["start"], "train_examples": log["train_examples"],
                                    "minutes": round((time.perf_counter() - started) / 60, 1)}
        print(f"{name}: scorer {log['start']}, {log['train_examples']:,} examples; " + "; ".join(
            f"{s} " + ", ".join(f"{c} {m:.4f}" for c, m in means[s].items()) for s in SPLITS)
            + f" ({report['variants'][name]['minutes']} min)", flush=True)

    base = next(iter(variants))
    sizes = {s: {c: len(v) for c, v in scores[base][s].items()} for s in SPLITS}
    print("\n| variant | " + " | ".join(f"{s} {c} (n={sizes[s][c]})" for s in SPLITS for c in COLUMNS) + " |")
    print("|---|" + "---:|" * (len(SPLITS) * len(COLUMNS)))
    for name in variants:
        print(f"| {name} | " + " | ".join(f"{scores[name][s][c].mean():.4f}" for s in SPLITS for c in COLUMNS) + " |")
    diffs: dict[str, dict] = {}
    for name in list(variants)[1:]:
        diffs[name] = {s: {c: diff_interval(scores[name][s][c], scores[base][s][c]) for c in COLUMNS}
                       for s in SPLITS}
        for s in SPLITS:
            print(f"{name} − {base}, {s}: " + "; ".join(
                f"{c} {d:+.4f} [{lo:+.4f}, {hi:+.4f}]" for c, (d, lo, hi) in diffs[name][s].items()))
    report["differences_to_no_kg"] = diffs
    report["sizes"] = sizes
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    json_out = None
    if "--json" in args:
        i = args.index("--json")
        json_out = Path(args[i + 1])
        del args[i:i + 2]
    if not args:
        sys.exit(__doc__)
    main(Path(args[0]), int(args[1]) if len(args) > 1 else 50, json_out)
