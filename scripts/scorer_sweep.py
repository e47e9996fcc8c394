"""Re-train only the re-ranking scorer of a checkpoint under other candidate settings; print valid figures.

    .venv/bin/python scripts/scorer_sweep.py runs/fk-model/checkpoint.pt 100,0 100,50 100,100

Each argument is RETRIEVAL,KNN[,ALS]: retrieval's top RETRIEVAL plus up to KNN item-KNN candidates; with ALS,
the scorer also reads the ALS feature and up to ALS ALS candidates are added (`contract.als`; ALS fitted here on
the events the neighbour table saw, as `xrec train` does), e.g. `100,100 100,100,0 100,100,50`. The two-tower
and the item-KNN table stay as trained; the scorer's held-out queries are the ones training used. Choose on
valid only: this is how `knn_candidates` of the default profile was chosen (test figures are printed for the
record, never to choose by). The checkpoint is not modified.

XREC_SWEEP_DEV=0.2 (a share) also keeps that share of the scorer's held-out queries out of its training and
reports NDCG@10 on them ("dev"): several thousand queries, where valid's ~1,000 cannot tell apart changes of
a few thousandths (for comparing code versions: scorer features, training settings).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from contract.features import scorer_features
from training.baselines import ALS
from training.evaluate import evaluate_models, make_queries, metrics_from_ranks, ranks
from training.report import model_rankers
from training.train import TrainConfig, holdout_last_events, scorer_queries, train_scorer


def main(checkpoint: Path, specs: list[str]) -> None:
    cfg = TrainConfig.model_validate(torch.load(checkpoint, map_location="cpu", weights_only=False)["train_config"])
    if cfg.history != "all":  # its valid queries and item-KNN table are built differently (see training.train)
        sys.exit(f"{checkpoint}: a {cfg.history} ablation checkpoint; this sweep handles fused-history ones only")
    ds, ranker = model_rankers(checkpoint)
    held = holdout_last_events(ds.timelines, cfg.scorer_extra_holdout, cfg.seed)
    train_q = scorer_queries(ds.timelines, held, cfg.history)
    valid = make_queries(ds, "valid")
    dev_share = float(os.environ.get("XREC_SWEEP_DEV", "0"))
    order = np.random.default_rng(1234).permutation(len(train_q))
    n_dev = int(dev_share * len(train_q))
    dev = [train_q[i] for i in order[:n_dev]]
    train_q = [train_q[i] for i in order[n_dev:]] if n_dev else train_q

    keep = np.ones(len(ds.timelines.items), dtype=bool)
    keep[held] = False
    als = None
    for spec in specs:
        parts = [int(x) for x in spec.split(",")]
        ranker.candidates, ranker.knn_candidates = parts[:2]
        if len(parts) > 2 and als is None:
            als = ALS(seed=cfg.seed).fit(ds, keep=keep).fitted
        ranker.als, ranker.als_candidates = (als, parts[2]) if len(parts) > 2 else (None, 0)
        ranker.model.cfg.scorer_extras = len(scorer_features(ranker.kg_features, ranker.als is not None))
        log = train_scorer(ranker, train_q, valid, cfg, Console(stderr=True, quiet=True))
        res = evaluate_models(ds, {"final": ranker.final}, "valid", protocols=("full", "new_to_platform"),
                              log=lambda _: None)["final"]
        full, bk = res["full"]["overall"], res["full"]["bucket"]
        dev_part = f"; dev ({len(dev):,}) NDCG@10 {metrics_from_ranks(ranks(ds, dev, ranker.final))['ndcg@10']:.4f}" \
            if dev else ""
        test = evaluate_models(ds, {"final": ranker.final}, "test", protocols=("full", "new_to_platform"),
                               log=lambda _: None)["final"]
        als_part = f" + ALS feature, {ranker.als_candidates} ALS" if ranker.als is not None else ""
        print(f"retrieval {ranker.candidates} + knn {ranker.knn_candidates}{als_part}: "
              f"{log['train_examples']:,} scorer examples; valid NDCG@10 {full['ndcg@10']:.4f} "
              f"Recall@10 {full['recall@10']:.4f} 1-2 bucket NDCG@10 {bk['1-2'].get('ndcg@10', 0):.4f} "
              f"new-to-platform NDCG@10 {res['new_to_platform']['overall']['ndcg@10']:.4f}{dev_part}; "
              f"test NDCG@10 {test['full']['overall']['ndcg@10']:.4f} "
              f"new-to-platform {test['new_to_platform']['overall']['ndcg@10']:.4f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2:])
