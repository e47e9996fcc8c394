"""What else could the scorer do? Re-train only the scorer of a checkpoint several ways; valid and test.

    .venv/bin/python scripts/scorer_probe.py runs/fk-s0/checkpoint.pt [PROBE ...] [--json OUT]

Every probe re-trains the scorer on the held-out queries `xrec train` used, on top of the checkpoint's
two-tower and neighbour table, and prints NDCG@10 on valid, test and both new-to-platform after every scorer
epoch (what `xrec train` would choose from: the best epoch on valid). Probes (default: all but gbdt):

- `epochs`: the default scorer, every epoch, and the average of its weights over the last epochs (SWA).
- `ensemble`: five scorers from five seeds, their scores averaged (last epoch, and SWA).
- `settings`: the scorer's learning rate, width and weight decay.
- `long`: 15 scorer epochs instead of 8, every epoch kept (no early stopping).
- `candidates`: more retrieval and item-KNN candidates (the default: 100 + 100).
- `similarity`: four more features, the candidate's vector against the history's item vectors (the largest
  dot product, the last item's, a recency-weighted mean, the largest on the target platform).
- `new-to-platform`: the fixed rankings, then the scorer trained without the copies of each held-out query
  that has history on the target platform with that history hidden (what `xrec train` adds by default,
  `scorer_new_to_platform_copies`), or with them for a checkpoint trained without.
- `short-history`: + a copy of each held-out query with more than 3 events, with its last 3 only.
- `gbdt`: a LambdaMART ranker (LightGBM, `pip install lightgbm`: not a project dependency) over the scorer's
  features, alone and with the trained scorer's score as one more.

Decide on valid only; the test columns are the report. The checkpoint is not modified. About 1 minute per
trained scorer on 2 cores (Food-Kitchen), plus ~40 s to prepare the candidates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from contract.ranking import Candidates
from training.evaluate import Query, make_queries, ndcg_per_query, ranks
from training.model import Scorer
from training.pipeline import Prepared, Ranker
from training.report import model_rankers
from training.sequences import Dataset
from training.train import (
    TrainConfig,
    holdout_last_events,
    new_to_platform_copies,
    scorer_examples,
    scorer_queries,
    scorer_starts,
)

PROBES = ("epochs", "ensemble", "settings", "long", "candidates", "similarity", "new-to-platform", "short-history",
          "gbdt")
SHORT = 3  # the short-history probe's history length
SIMILARITY_HISTORY = 50  # history items the similarity features read (the user encoder's max_history)


class Examples:
    """The scorer's training tensors (`training.train.scorer_examples`) and the evaluation splits' prepared
    candidates, for one candidate setting; `more` adds feature columns to both (query, candidate rows → [n, f])."""

    def __init__(self, ds: Dataset, ranker: Ranker, train_q: list, splits: dict[str, list],
                 more: Callable[[object, np.ndarray], np.ndarray] | None = None) -> None:
        def add(queries: list, prepared: list[Prepared]) -> list[Prepared]:
            if more is None:
                return prepared
            return [replace(p, candidates=Candidates(
                p.candidates.rows, np.concatenate([p.candidates.extras, more(q, p.candidates.rows)], axis=1)))
                for q, p in zip(queries, prepared, strict=True)]

        self.prepared = {s: add(q, ranker.prepare(q)) for s, q in splits.items()}
        self.u, self.v, self.x, self.real, self.y = scorer_examples(
            ranker, train_q, add(train_q, ranker.prepare(train_q, keep_retrieval=False)))


class Ensemble(torch.nn.Module):
    """Scorers' scores averaged."""

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, u: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(u, v, x) for m in self.members]).mean(0)


def main(checkpoint: Path, probes: list[str], out: Path | None) -> None:
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = TrainConfig.model_validate(ckpt["train_config"])
    ds, ranker = model_rankers(checkpoint)
    shipped = ranker.scorer
    held = scorer_queries(ds.timelines, holdout_last_events(ds.timelines, cfg.scorer_extra_holdout, cfg.seed),
                          cfg.history)
    copies = new_to_platform_copies(held)
    train_q = held + copies if cfg.scorer_new_to_platform_copies else held  # as `xrec train` trained it
    splits = {"valid": make_queries(ds, "valid"), "valid new-to-platform": make_queries(ds, "valid", True),
              "test": make_queries(ds, "test"), "test new-to-platform": make_queries(ds, "test", True)}
    report: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    ex = Examples(ds, ranker, train_q, splits)
    print(f"{checkpoint}: {len(ex.y):,} scorer examples of {len(train_q):,} held-out queries, candidates "
          f"{ranker.candidates} + {ranker.knn_candidates} ({time.perf_counter() - started:.0f} s)", flush=True)

    def evaluate(name: str, scorer: torch.nn.Module, data: Examples) -> dict[str, float]:
        ranker.scorer = scorer
        got = {}
        for s, q in splits.items():
            r = ranks(ds, q, lambda _, p=data.prepared[s]: ranker.rescore(p), batch=len(q))
            got[s] = float(ndcg_per_query(r, 10).mean())
        report[name] = got
        print(f"{name:48s} " + "  ".join(f"{s} {v:.4f}" for s, v in got.items()), flush=True)
        return got

    def fit(data: Examples, seed: int, epochs: int = cfg.scorer_epochs, lr: float = cfg.scorer_lr,
            hidden: int | None = None, wd: float = 1e-3) -> tuple[Scorer, list[dict]]:
        """`training.train.train_scorer`'s loop without its choices: (scorer, its weights after every epoch)."""
        torch.manual_seed(seed)
        mc = replace(ranker.model.cfg, scorer_extras=data.x.shape[-1],
                     scorer_hidden=hidden or ranker.model.cfg.scorer_hidden)
        sc = Scorer(mc)  # starts as retrieval alone, as `train_scorer` does
        opt = torch.optim.AdamW(sc.parameters(), lr=lr, weight_decay=wd)
        rng = np.random.default_rng(seed)
        q, c = data.v.shape[:2]
        states = []
        for _ in range(epochs):
            sc.train()
            order = rng.permutation(q)
            for s in range(0, q, cfg.scorer_batch):
                idx = torch.from_numpy(order[s:s + cfg.scorer_batch])
                b = len(idx)
                logits = sc(data.u[idx].repeat_interleave(c, 0), data.v[idx].reshape(b * c, -1),
                            data.x[idx].reshape(b * c, -1)).view(b, c).masked_fill(~data.real[idx], float("-inf"))
                loss = F.cross_entropy(logits, data.y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            states.append({k: t.detach().clone() for k, t in sc.state_dict().items()})
        return sc, states

    def averaged(sc: Scorer, states: list[dict]) -> Scorer:
        avg = {k: torch.stack([s[k].float() for s in states]).mean(0) for k in states[0]}
        out = Scorer(replace(ranker.model.cfg, scorer_extras=sc.linear.in_features,
                             scorer_hidden=sc.net[0].out_features))
        out.load_state_dict(avg)
        return out

    def every_epoch(name: str, data: Examples, **kw: object) -> tuple[Scorer, list[dict]]:
        sc, states = fit(data, cfg.seed, **kw)
        for e, st in enumerate(states):
            sc.load_state_dict(st)
            evaluate(f"{name}, epoch {e + 1}", sc, data)
        chosen = max(range(len(states)), key=lambda e: report[f"{name}, epoch {e + 1}"]["valid"])
        report[f"{name}, best epoch on valid"] = report[f"{name}, epoch {chosen + 1}"] | {"epoch": chosen + 1}
        print(f"{name}: best epoch on valid {chosen + 1}", flush=True)
        return sc, states

    evaluate("shipped scorer (the checkpoint's)", shipped, ex)
    if "epochs" in probes:
        sc, states = every_epoch("default scorer", ex)
        for first in (3, 5):
            evaluate(f"default scorer, weights averaged over epochs {first}-{len(states)}",
                     averaged(sc, states[first - 1:]), ex)
    if "ensemble" in probes:
        runs = [fit(ex, cfg.seed + i) for i in range(5)]
        last = []
        for sc, states in runs:
            sc.load_state_dict(states[-1])
            last.append(sc)
        evaluate("5 seeds, scores averaged (last epoch)", Ensemble(last), ex)
        evaluate("5 seeds, scores averaged (each averaged over epochs 3-8)",
                 Ensemble([averaged(sc, states[2:]) for sc, states in runs]), ex)
    if "settings" in probes:
        for name, kw in (("lr 3e-3, 15 epochs", {"lr": 3e-3, "epochs": 15}), ("hidden 256", {"hidden": 256}),
                         ("weight decay 1e-2", {"wd": 1e-2})):
            every_epoch(name, ex, **kw)
    if "long" in probes:
        sc, states = every_epoch("15 epochs", ex, epochs=15)
        for first in (8, 11):
            evaluate(f"15 epochs, weights averaged over epochs {first}-15", averaged(sc, states[first - 1:]), ex)
    if "candidates" in probes:
        for n, k in ((100, 200), (200, 100), (200, 200)):
            ranker.candidates, ranker.knn_candidates = n, k
            every_epoch(f"candidates {n} + {k}", Examples(ds, ranker, train_q, splits))
        ranker.candidates, ranker.knn_candidates = ckpt["candidates"], ckpt["knn_candidates"]
    if "similarity" in probes:
        vecs = ranker.item_vecs

        def similarity(q: object, rows: np.ndarray) -> np.ndarray:
            h, hp = np.asarray(q.items)[-SIMILARITY_HISTORY:], np.asarray(q.platforms)[-SIMILARITY_HISTORY:]
            out = np.zeros((len(rows), 4), np.float32)
            if len(h):
                s = vecs[rows] @ vecs[h].T
                w = 0.8 ** np.arange(len(h) - 1, -1, -1)
                out[:, 0], out[:, 1], out[:, 2] = s.max(1), s[:, -1], s @ w / w.sum()
                on = hp == q.platform
                if on.any():
                    out[:, 3] = s[:, on].max(1)
            return out

        every_epoch("+ 4 similarity features", Examples(ds, ranker, train_q, splits, similarity))
    if "new-to-platform" in probes:
        fixed = Scorer(replace(ranker.model.cfg, scorer_extras=ex.x.shape[-1]))
        for name, w in scorer_starts(ex.x[ex.real], ranker.als is not None and ranker.als_candidates >= 10).items():
            fixed.start_from(w)
            evaluate(f"fixed: {name}", fixed, ex)
        if cfg.scorer_new_to_platform_copies:
            every_epoch(f"without the {len(copies):,} new-to-platform copies", Examples(ds, ranker, held, splits))
        else:
            every_epoch(f"+ {len(copies):,} new-to-platform copies", Examples(ds, ranker, held + copies, splits))
    if "short-history" in probes:
        short = [Query(q.person, q.platform, q.items[-SHORT:], q.platforms[-SHORT:], q.ts[-SHORT:], q.now, q.target)
                 for q in held if len(q.items) > SHORT]
        every_epoch(f"+ {len(short):,} copies with the last {SHORT} events only", Examples(ds, ranker, train_q + short,
                                                                                           splits))
    if "gbdt" in probes:
        gbdt(ex, fit(ex, cfg.seed), evaluate)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"checkpoint": str(checkpoint), "ndcg@10": report}, indent=1) + "\n")


def gbdt(ex: Examples, neural: tuple[Scorer, list[dict]], evaluate: Callable) -> None:
    """LambdaMART over the scorer's features, without and with the trained scorer's (last epoch) score."""
    try:
        import lightgbm
    except ImportError:
        sys.exit("the gbdt probe needs LightGBM: .venv/bin/pip install lightgbm")
    sc, states = neural
    sc.load_state_dict(states[-1])
    sc.eval()
    q, c = ex.real.shape
    with torch.no_grad():
        score = sc(ex.u.repeat_interleave(c, 0), ex.v.reshape(q * c, -1), ex.x.reshape(q * c, -1)).view(q, c).numpy()
    labels = np.zeros((q, c), dtype=np.float32)
    labels[np.arange(q), ex.y.numpy()] = 1
    real = ex.real.numpy()
    for with_score in (False, True):
        feats = ex.x.numpy() if not with_score else np.concatenate([ex.x.numpy(), score[..., None]], -1)
        m = lightgbm.LGBMRanker(objective="lambdarank", n_estimators=200, num_leaves=15, learning_rate=0.05,
                                min_child_samples=50, subsample=0.8, subsample_freq=1, colsample_bytree=0.8,
                                lambdarank_truncation_level=20, verbose=-1, n_jobs=2)
        m.fit(feats[real], labels[real], group=real.sum(1))

        class Trees(torch.nn.Module):
            def forward(self, u: torch.Tensor, v: torch.Tensor, x: torch.Tensor, _s: bool = with_score,
                        _m: object = m) -> torch.Tensor:
                f = x.numpy()
                if _s:
                    f = np.concatenate([f, sc(u, v, x).numpy()[:, None]], -1)
                return torch.from_numpy(_m.predict(f).astype(np.float32))

        evaluate(f"LambdaMART (200 trees, 15 leaves){' + scorer score' if with_score else ''}", Trees(), ex)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("probes", nargs="*", metavar="PROBE", help=f"{', '.join(PROBES)} (default: all but gbdt)")
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args = ap.parse_args()
    unknown = [p for p in args.probes if p not in PROBES]
    if unknown:
        ap.error(f"unknown probe {unknown[0]!r}; choose from {', '.join(PROBES)}")
    main(args.checkpoint, args.probes or [p for p in PROBES if p != "gbdt"], args.json)
