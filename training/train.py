"""`xrec train`: fit the two-tower on every event, then the re-ranking scorer; every choice made on valid.

The loop:
  1. item texts → frozen MiniLM vectors (disk-cached) — or, in `top-k`/`lora` mode, MiniLM in the loop;
  2. each person's last event is held out when they use several platforms: those become the scorer's
     training queries, so the scorer learns on candidates the two-tower never trained on; a part of them
     (`choice_min`) tops a small valid split up for the choices below: a few hundred targets are too noisy;
  3. two-tower epochs: softmax over the target platform's whole catalog (or sampled negatives with a logQ
     correction), learnable temperature, AdamW; NDCG@10 on the choice queries after each epoch, best kept;
  4. the neighbour table (co-occurrence, sequential, mixed or EASE), how its counts are normalised and its
     recency decay, best on the choice queries;
  5. scorer: starts from the best of retrieval, neighbours alone and blends, then listwise epochs over
     retrieval's top-100 + the neighbours' top-100, kept only where the choice queries improve; it also
     trains on copies of the held-out queries with the target platform's history hidden (new-to-platform);
     people new to the target platform are ranked by whatever is best for them on valid (`RoutedScorer`);
  6. the final ranking against every baseline on valid (first line of the evaluation report);
  7. checkpoint: model config + weights + scorer + neighbour table + the items' knowledge-graph entities
     + metrics; export needs only model.py.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from contract.als import AlsFactors
from contract.features import scorer_features
from training.baselines import ALS, Popularity
from training.evaluate import (
    Query,
    bootstrap_win_share,
    hide_target_history,
    make_queries,
    metrics_from_ranks,
    ndcg_per_query,
    ranks,
)
from training.finetune import TextTower
from training.kg.table import item_entities
from training.model import SCORER_STARTS, ModelConfig, RoutedScorer, Scorer, TwoTower, feature_names
from training.neighbours import Neighbours, choose_neighbours
from training.pipeline import Prepared, Ranker, item_vectors
from training.sequences import Dataset, Timelines, load_dataset
from training.text_vectors import text_dim
from training.windows import Windows, batches, chunk_by_tokens, make_windows


class FederatedConfig(BaseModel):
    """The `[federated]` table: how `xrec train --federated` trains the two-tower (training/federated.py,
    docs/federated.md). Only read with `--federated`."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(12, ge=1)  # server rounds (fewer when `max_minutes` or `patience` stop it first)
    local_steps: int = Field(0, ge=0)  # steps per platform per round; 0: one pass over the platform's own windows
    proximal_mu: float = Field(0.0, ge=0.0)  # FedProx's μ (0: FedAvg)
    # False: a platform's client sees each person's events on that platform only. True: it also sees linked
    # people's events on the other platforms (their fused history) — only where the platforms have agreed to share.
    cross_platform_history: bool = False
    dp_clip: float = Field(0.0, ge=0.0)  # > 0: clip each platform's update of the shared parameters to this L2 norm
    dp_noise_multiplier: float = Field(0.0, ge=0.0)  # > 0: Gaussian noise (std z·clip/n) on the average; needs dp_clip
    dp_delta: float = Field(1e-5, gt=0.0, lt=1.0)  # the δ that ε is reported at

    @model_validator(mode="after")
    def _noise_needs_clipping(self) -> FederatedConfig:
        if self.dp_noise_multiplier > 0 and self.dp_clip <= 0:
            raise ValueError("dp_noise_multiplier > 0 needs dp_clip > 0 (noise is calibrated to the clip norm)")
        return self


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: Path
    out: Path = Path("runs/train")
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)  # the [model] table; every default in ModelConfig
    # two-tower training
    epochs: int = 20
    batch_tokens: int = 4096  # padded history slots per step (a batch of windows of similar length)
    # >0: batch_tokens is lowered on a small data set so that an epoch has at least this many steps (`step_tokens`)
    min_steps_per_epoch: int = 0
    lr: float = 2e-3
    weight_decay: float = 0.01
    negatives: int = 0  # 0: softmax over the platform's whole catalog; N: N sampled negatives + logQ
    logq_correction: bool = True  # sampled softmax only: False is the ablation (popular items over-penalised)
    aux_text_weight: float = 0.0  # joint loss: also match the target's text-only vector
    patience: int = 3
    max_minutes: float = 22.0  # stop two-tower epochs when this much time has gone
    history: Literal["all", "target-only"] = "all"  # transfer ablation: drop other platforms' history
    # + transfer windows: each multi-platform person's other-platform events predicting their events on one
    # platform, as the service asks for someone new to it (`training.windows`). Off by default: on Food-Kitchen
    # they left retrieval's new-to-platform valid NDCG@10 where it was (0.0682 → 0.0679), and on the sparse variant
    # they lowered retrieval on test on every seed, and both-platform was lower on valid and test (docs/results.md)
    transfer_windows: bool = False
    holdout_for_scorer: bool = True
    max_steps: int = 0  # >0: stop after this many steps (tests, smoke runs)
    # scorer
    scorer: bool = True
    scorer_epochs: int = 15
    scorer_lr: float = 1e-2
    scorer_batch: int = 32
    scorer_extra_holdout: int = 10000  # also hold out the last event of this many single-platform people
    # The scorer also trains on a copy of each held-out query with history on the target platform, that history
    # hidden: the queries of people new to a platform, which last events rarely are (scripts/scorer_probe.py
    # new-to-platform; docs/results.md).
    scorer_new_to_platform_copies: bool = True
    # A valid split smaller than this is topped up with held-out last events of people active on several
    # platforms (like valid's people; the scorer then does not train on them) for every choice made on valid:
    # early stopping, the neighbour table, the scorer's start and epochs. A few hundred targets are too noisy to
    # choose on; larger valid splits are used alone, since held-out events come from before the cut-off.
    choice_min: int = 500
    candidates: int = 100  # retrieval's top N for the scorer to re-rank
    knn_candidates: int = 0  # + the N best item-KNN items retrieval missed (unseen, same platform)
    # Knowledge graph (the dataset's kg/; docs/kg.md). Both off by default: on Food-Kitchen neither lifted valid
    # NDCG@10 (features 0.1380 vs 0.1408 without; 50 candidates changed nothing; docs/results.md). The items'
    # entities travel to the bundle either way: the service's reasons name shared brands with them.
    # The scorer's KG features (contract.features.KG_EXTRAS): events sharing a brand/type/category with the item.
    kg_features: bool = False
    # + for people new to the target platform, the N target-platform items sharing the most knowledge-graph
    # entities with their other platforms' history (contract.kg.kg_candidates).
    kg_candidates: int = 0
    # ALS (contract.als) in the scorer: its score as a feature, + the N best ALS items the others missed.
    # "auto": the scorer is trained without and with them and the better on valid ships (`choose_als`). On the
    # Food-Kitchen variants they moved valid by under ±0.002 (docs/results.md), so it is chosen per data set;
    # with ≥ 10 ALS candidates, ALS alone is also a baseline the shipped ranking is never below on valid.
    als_features: bool | Literal["auto"] = "auto"
    als_candidates: int = 50
    knn_decays: list[float] = [1.0, 0.8, 0.65, 0.5]  # recency decays of the neighbour table, chosen on valid
    knn_tables: list[str] = ["co-occurrence", "sequential", "mixed"]  # neighbour tables to choose from on valid
    # (alpha, shrink) pairs tried on valid for the best kind (`TableSpec`: weight = count / (n_i^alpha n_j^(1-alpha)
    # + shrink); alpha 0.5 is the cosine, towards 1 popular candidates are penalised less). Only the cosine by
    # default: `NORMALISATIONS` lifts the plain item-KNN ranking by 8-13% on Food-Kitchen and its variants, but the
    # scorer over it ranked no better (it already weighs popularity: docs/results.md, tenth session)
    knn_normalisations: list[tuple[float, float]] = [(0.5, 10.0)]
    # EASE as a neighbour-table candidate (0: co-occurrence only). Off by default: on Food-Kitchen EASE won as
    # a plain ranking on valid (0.0965 vs 0.0872) yet made the scorer worse (valid 0.1191 vs 0.1295).
    ease_lambda: float = 0.0
    text_cache: Path | None = Path(".cache/text-vectors")
    federated: FederatedConfig = Field(default_factory=FederatedConfig)  # the [federated] table

    @classmethod
    def from_toml(cls, path: Path, **overrides: object) -> TrainConfig:
        """A profile file; `overrides` (None = keep) may name model settings too (e.g. `mode`)."""
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        model_keys = {f.name for f in fields(ModelConfig)}
        misplaced = sorted(model_keys & set(raw))
        if misplaced:
            raise ValueError(f"{path}: {', '.join(misplaced)} belong in the [model] table")
        for k, v in overrides.items():
            if v is not None:
                (raw.setdefault("model", {}) if k in model_keys else raw)[k] = v
        return cls.model_validate(raw)


def step_tokens(cfg: TrainConfig, slots: int) -> int:
    """The batch size (padded history slots) a run uses: `cfg.batch_tokens`, lowered to give at least
    `cfg.min_steps_per_epoch` steps an epoch over about `slots` targets (never below 64). Why: a small data set
    at 4,096 slots gets ~20 updates an epoch, and early stopping on its noisy valid split ends the two-tower
    after ~60 (the sparse Food-Kitchen variant: retrieval near popularity, docs/results.md)."""
    if cfg.min_steps_per_epoch <= 0:
        return cfg.batch_tokens
    return max(64, min(cfg.batch_tokens, slots // cfg.min_steps_per_epoch))


def target_only(tl: Timelines) -> tuple[Timelines, np.ndarray]:
    """The same events with each (person, platform) as its own timeline: no cross-platform history.
    Also returns the order: event i of the new timelines is event order[i] of `tl`."""
    person = np.repeat(np.arange(len(tl)), np.diff(tl.offsets))
    order = np.lexsort((np.arange(len(person)), tl.platforms, person))
    key = person[order] * 1000 + tl.platforms[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return Timelines([f"{tl.persons[person[order][s]]}@{tl.platforms[order][s]}" for s in starts],
                     np.r_[starts, len(order)].astype(np.int64), tl.items[order], tl.platforms[order],
                     tl.ts[order]), order


def restrict_to_target(queries: list[Query]) -> list[Query]:
    keep = [q.platforms == q.platform for q in queries]
    return [Query(q.person, q.platform, q.items[k], q.platforms[k], q.ts[k], q.now, q.target)
            for q, k in zip(queries, keep, strict=True)]


def holdout_last_events(tl: Timelines, extra: int = 0, seed: int = 0) -> np.ndarray:
    """The scorer's training targets: the last event of every person active on several platforms (like the
    evaluation's people), plus that of `extra` random single-platform people with ≥ 3 events (more data)."""
    multi, single = [], []
    for p in range(len(tl)):
        lo, hi = int(tl.offsets[p]), int(tl.offsets[p + 1])
        if hi - lo >= 2 and len(np.unique(tl.platforms[lo:hi])) > 1:
            multi.append(hi - 1)
        elif hi - lo >= 3:
            single.append(hi - 1)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(single, size=min(extra, len(single)), replace=False) if extra and single else []
    return np.sort(np.array([*multi, *chosen], dtype=np.int64))


def scorer_queries(tl: Timelines, held: np.ndarray, history: str) -> list[Query]:
    """The scorer's training queries: each held-out event with the history before it (on its own platform
    only, for the target-only ablation arm)."""
    qs = _queries_for(tl, held)
    return restrict_to_target(qs) if history == "target-only" else qs


def new_to_platform_copies(queries: list[Query]) -> list[Query]:
    """A copy of each query with history on its target platform, that history hidden (`scorer_new_to_platform_copies`):
    the scorer's examples of people new to a platform, which held-out last events rarely are."""
    return hide_target_history([q for q in queries if (q.platforms == q.platform).any()])


def _queries_for(tl: Timelines, events: np.ndarray) -> list[Query]:
    qs = []
    for e in events:
        p = int(np.searchsorted(tl.offsets, e, side="right") - 1)
        lo = int(tl.offsets[p])
        qs.append(Query(p, int(tl.platforms[e]), tl.items[lo:e], tl.platforms[lo:e], tl.ts[lo:e],
                        int(tl.ts[e]), int(tl.items[e])))
    return qs


@dataclass
class TrainState:
    model: TwoTower
    text: TextTower
    ds: Dataset
    cfg: TrainConfig
    log_q: torch.Tensor  # log of each item's expected count in a sampled-softmax step


def sampling_log_q(ds: Dataset, negatives: int, batch_items: int) -> torch.Tensor:
    """Expected appearances of each item among a step's candidates: uniform negatives of its platform plus
    the batch's own items, which arrive in proportion to popularity (the logQ correction of Yi et al.)."""
    pop = ds.popularity().astype(np.float64) + 1.0
    q = np.zeros(ds.n_items)
    for p in range(len(ds.platforms)):
        rows = ds.platform_items(p)
        q[rows] = negatives / len(rows) + batch_items * pop[rows] / pop.sum()
    return torch.from_numpy(np.log(q).astype(np.float32))


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console)


def _loss(state: TrainState, batch, rng: np.random.Generator, first_events: np.ndarray) -> torch.Tensor:
    """Next-item softmax on the target platform for every target slot, plus empty-history queries."""
    model, ds, cfg = state.model, state.ds, state.cfg
    tl = ds.timelines
    item_platform = torch.from_numpy(ds.item_platform)
    # The empty-history query learns what a person with nothing on record is likely to pick first.
    n_targets = int(batch.target_mask.sum())
    take = rng.choice(len(first_events), size=min(len(first_events), max(1, n_targets // 8)), replace=False)
    e_rows = torch.from_numpy(tl.items[first_events[take]])
    e_plat = torch.from_numpy(tl.platforms[first_events[take]])
    needed, candidate = None, None
    if cfg.negatives > 0:
        needed, candidate = _sampled_items(ds, batch, e_rows, cfg.negatives, rng)
    text_vecs, rows = state.text.vectors(needed)
    vecs = model.items(text_vecs, item_platform[rows], rows)  # [n_rows, D] (all items, or the needed ones)
    lookup = torch.full((ds.n_items,), -1, dtype=torch.long)
    lookup[rows] = torch.arange(len(rows))

    hist = vecs[lookup[batch.hist_rows].clamp(min=0)] * batch.hist_mask[..., None]
    h = model.users.encode(hist, batch.hist_platform, batch.hist_bucket, batch.hist_mask)
    sel = batch.target_mask
    u = torch.cat([model.users.query(h[sel], batch.target_platform[sel]), model.users.empty_query(e_plat)])
    t_rows = torch.cat([batch.target_rows[sel], e_rows])
    t_plat = torch.cat([batch.target_platform[sel], e_plat])

    temp = model.temperature()
    losses = []
    text_only = None
    if cfg.aux_text_weight > 0:
        text_only = F.normalize(model.items.text_part(text_vecs, item_platform[rows]), dim=-1)
    for p in range(len(ds.platforms)):
        m = t_plat == p
        if not m.any():
            continue
        on_p = item_platform[rows] == p
        cand = torch.nonzero(on_p if candidate is None else on_p & candidate).squeeze(1)  # positions in `vecs`
        pos_in_cand = torch.searchsorted(rows[cand], t_rows[m])
        us = u[m] / temp  # scale the few queries, not the many logits
        logits = us @ vecs[cand].T
        if cfg.negatives > 0 and cfg.logq_correction:  # sampled softmax: remove the sampling bias (logQ)
            logits = logits - state.log_q[rows[cand]]
        losses.append(F.cross_entropy(logits, pos_in_cand, reduction="sum"))
        if text_only is not None:
            aux = us @ text_only[cand].T
            losses.append(cfg.aux_text_weight * F.cross_entropy(aux, pos_in_cand, reduction="sum"))
    return torch.stack(losses).sum() / len(t_rows)


def _sampled_items(ds: Dataset, batch, extra_targets: torch.Tensor, negatives: int, rng: np.random.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, is_candidate) for a sampled-softmax step: rows = every item the step touches (sorted);
    candidates = the step's targets (each other's in-batch negatives) plus uniform negatives per platform."""
    cands = [batch.target_rows[batch.target_mask].numpy(), extra_targets.numpy()]
    for p in range(len(ds.platforms)):
        cands.append(rng.choice(ds.platform_items(p), size=negatives))
    cand = np.unique(np.concatenate(cands))
    rows = np.union1d(cand, batch.hist_rows[batch.hist_mask].numpy())
    return torch.from_numpy(rows), torch.from_numpy(np.isin(rows, cand))


def evaluate_two_tower(state: TrainState, queries: list[Query]) -> dict[str, float]:
    vecs = item_vectors(state.model, state.text.all_vectors(), state.ds.item_platform)
    ranker = Ranker(state.model, state.ds, vecs, np.zeros(state.ds.n_items), np.zeros((state.ds.n_items, 1),
                    dtype=np.int32), np.zeros((state.ds.n_items, 1), dtype=np.float32))
    return metrics_from_ranks(ranks(state.ds, queries, ranker.retrieval))


def two_tower_optimisers(model: TwoTower, cfg: TrainConfig, extra: list[torch.nn.Parameter] | None = None
                         ) -> tuple[list[torch.nn.Parameter], list[torch.optim.Optimizer]]:
    """(the dense parameters, which gradient clipping reads; the optimisers): AdamW over the dense ones (+ `extra`,
    e.g. fine-tuned text weights), SparseAdam over the item-ID rows, which get sparse gradients (a step touches a
    few thousand of them): it updates only those."""
    sparse = [model.items.ids.weight] if model.items.ids is not None else []
    params = [p for p in model.parameters() if p.requires_grad and all(p is not s for s in sparse)]
    params += extra or []
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)]
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=cfg.lr))
    return params, opts


def train_two_tower(state: TrainState, windows: Windows, valid: list[Query], console: Console,
                    on_epoch: Callable[[int, float], None] | None = None) -> dict[str, object]:
    """`on_epoch(epoch, valid NDCG@10)`, called after each epoch (1-based), may raise to stop the run: how
    `xrec tune` prunes a trial."""
    cfg, model = state.cfg, state.model
    params, opts = two_tower_optimisers(model, cfg, state.text.trainable())
    rng = np.random.default_rng(cfg.seed)
    steps_per_epoch = len(chunk_by_tokens(windows.lengths(), cfg.batch_tokens, np.random.default_rng(0)))
    total = steps_per_epoch * cfg.epochs
    warm = max(1, total // 30)

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine down to 10%
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lr_factor) for o in opts]
    best, best_state, bad, history, step = -1.0, None, 0, [], 0
    started = time.perf_counter()
    with _progress(console) as bar:
        task = bar.add_task("two-tower", total=total, info="")
        for epoch in range(cfg.epochs):
            model.train()
            state.text.train()
            run_loss, n = 0.0, 0
            for batch in batches(state.ds.timelines, windows, cfg.batch_tokens, rng):
                loss = _loss(state, batch, rng, windows.first_events)
                for o in opts:
                    o.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                for o, s in zip(opts, scheds, strict=True):
                    o.step()
                    s.step()
                run_loss, n, step = run_loss + loss.item(), n + 1, step + 1
                bar.update(task, advance=1, info=f"epoch {epoch + 1} loss {run_loss / n:.3f}")
                if cfg.max_steps and step >= cfg.max_steps:
                    break
            m = evaluate_two_tower(state, valid)
            minutes = (time.perf_counter() - started) / 60
            history.append({"epoch": epoch + 1, "loss": run_loss / max(n, 1), "valid_ndcg@10": m["ndcg@10"],
                            "valid_recall@10": m["recall@10"], "minutes": round(minutes, 2),
                            "temperature": model.temperature().item()})
            console.print(f"epoch {epoch + 1}: loss {run_loss / max(n, 1):.4f}  valid NDCG@10 {m['ndcg@10']:.4f}"
                          f"  Recall@10 {m['recall@10']:.4f}  ({minutes:.1f} min)")
            if on_epoch is not None:
                on_epoch(epoch + 1, m["ndcg@10"])
            if m["ndcg@10"] > best:
                best, bad = m["ndcg@10"], 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                text_state = state.text.state()
            else:
                bad += 1
            if bad >= cfg.patience or minutes >= cfg.max_minutes or (cfg.max_steps and step >= cfg.max_steps):
                break
    if best_state is not None:
        model.load_state_dict(best_state)
        state.text.load_state(text_state)
    return {"best_valid_ndcg@10": best, "epochs": history}


# How `train` fits the two-tower: `train_two_tower` (pooled), or a replacement with its signature and result
# shape ({"best_valid_ndcg@10", "epochs": [{"minutes", ...}], ...}) such as `training.federated.federated_two_tower`.
TwoTowerFit = Callable[[TrainState, Windows, list[Query], Console, Callable[[int, float], None] | None],
                       dict[str, object]]


def scorer_examples(ranker: Ranker, queries: list[Query], prepared: list[Prepared] | None = None
                    ) -> tuple[torch.Tensor, ...]:
    """(user, item, extras, is_real, label) for queries whose target is among the candidates. Candidate
    lists differ in length (item-KNN adds a varying number): padded to the longest, `is_real` marks them.
    `prepared`: the queries' `ranker.prepare` when the caller has it (e.g. with extra feature columns)."""
    users, items, extras, labels = [], [], [], []
    if prepared is None:
        prepared = ranker.prepare(queries, keep_retrieval=False)
    for q, p in zip(queries, prepared, strict=True):
        hit = np.flatnonzero(p.candidates.rows == q.target)
        if len(hit) == 0:
            continue
        users.append(p.user)
        items.append(ranker.item_vecs[p.candidates.rows])
        extras.append(p.candidates.extras)
        labels.append(int(hit[0]))
    c = max((len(v) for v in items), default=0)
    real = np.zeros((len(items), c), dtype=bool)
    for i, v in enumerate(items):
        real[i, :len(v)] = True

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, ((0, c - len(a)), (0, 0)))

    return (torch.from_numpy(np.stack(users)), torch.from_numpy(np.stack([pad(v) for v in items])),
            torch.from_numpy(np.stack([pad(x) for x in extras])), torch.from_numpy(real), torch.tensor(labels))


def scorer_starts(extras: torch.Tensor, als_baseline: bool = False) -> dict[str, dict[str, float]]:
    """`SCORER_STARTS` plus blends of retrieval and neighbours with each part scaled to its spread on the
    scorer's training candidates (EASE weights are far smaller than co-occurrence ones), and ALS alone for a
    scorer with the ALS feature and ≥ 10 ALS candidates (`als_baseline`: the candidates then hold ALS's own top
    10, so it ranks as the ALS baseline)."""
    from contract.features import SCORER_EXTRAS

    std = extras.float().std(dim=0)
    dot = 1.0 / max(float(std[SCORER_EXTRAS.index("dot")]), 1e-6)
    knn = 1.0 / max(float(std[SCORER_EXTRAS.index("log_knn")]), 1e-6)
    blends = {f"blend {a}:{b}": {"dot": a * dot, "log_knn": b * knn} for a, b in ((1, 1), (1, 3), (3, 1))}
    starts = SCORER_STARTS | blends
    if als_baseline and "als" in feature_names(extras.shape[1]):  # ALS alone, a baseline like the neighbours
        starts["als"] = {"als": 10.0, "log_popularity": 1e-5, "dot": 1e-7}
    return starts


def train_scorer(ranker: Ranker, train_q: list[Query], valid: list[Query], cfg: TrainConfig,
                 console: Console) -> dict[str, object]:
    torch.manual_seed(cfg.seed)
    scorer = Scorer(ranker.model.cfg)
    ranker.scorer = scorer
    u, v, x, real, y = scorer_examples(ranker, train_q)
    knn_part = f" + up to {cfg.knn_candidates} by item-KNN" if cfg.knn_candidates else ""
    console.print(f"scorer: {len(y):,} of {len(train_q):,} held-out targets are among the candidates "
                  f"(retrieval's top {cfg.candidates}{knn_part})")
    base = metrics_from_ranks(ranks(ranker.ds, valid, ranker.retrieval))
    prepared = ranker.prepare(valid)  # the valid queries' candidates and features: fixed while the scorer trains

    def valid_ndcg_per_query() -> np.ndarray:
        r = ranks(ranker.ds, valid, lambda _: ranker.rescore(prepared), batch=len(valid))
        return ndcg_per_query(r, 10)

    def valid_ndcg() -> float:
        return float(valid_ndcg_per_query().mean())

    # Fixed rankings the scorer can express (retrieval, the neighbour table, blends) against the trained one
    # on valid: see `ship_scorer`. Training itself always starts from retrieval (other starts train worse:
    # measured on Food-Kitchen).
    starts, per_query, weights = {}, {}, scorer_starts(x[real], ranker.als is not None and ranker.als_candidates >= 10)
    for name, w in weights.items():
        scorer.start_from(w)
        per_query[name] = valid_ndcg_per_query()
        starts[name] = float(per_query[name].mean())
    fixed = max(starts, key=starts.get)
    console.print("fixed rankings on valid (NDCG@10): " + ", ".join(f"{k} {v:.4f}" for k, v in starts.items()))
    scorer.start_from(weights["retrieval"])
    opt = torch.optim.AdamW(scorer.parameters(), lr=cfg.scorer_lr, weight_decay=1e-3)
    rng = np.random.default_rng(cfg.seed)
    best, best_state, bad, history = starts["retrieval"], None, 0, []
    q, c = v.shape[:2]
    for epoch in range(cfg.scorer_epochs):
        scorer.train()
        order = rng.permutation(q)
        total = 0.0
        for s in range(0, q, cfg.scorer_batch):
            idx = torch.from_numpy(order[s:s + cfg.scorer_batch])
            b = len(idx)
            logits = scorer(u[idx].repeat_interleave(c, 0), v[idx].reshape(b * c, -1),
                            x[idx].reshape(b * c, -1)).view(b, c).masked_fill(~real[idx], float("-inf"))
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * b
        ndcg = valid_ndcg()
        history.append({"epoch": epoch + 1, "loss": total / q, "valid_ndcg@10": ndcg})
        console.print(f"scorer epoch {epoch + 1}: loss {total / q:.4f}  valid NDCG@10 {ndcg:.4f} "
                      f"(best fixed, {fixed}: {starts[fixed]:.4f})")
        if ndcg > best:
            best, bad = ndcg, 0
            best_state = {k: t.detach().clone() for k, t in scorer.state_dict().items()}
        else:
            bad += 1
            if bad >= 3:
                break
    trained_q = None
    if best_state is not None:
        scorer.load_state_dict(best_state)
        trained_q = valid_ndcg_per_query()
    chosen = ship_scorer(trained_q, per_query)
    improved = chosen == "trained"
    if not improved:
        scorer.start_from(weights[chosen])
        best = starts[chosen]
        console.print(f"[yellow]the trained scorer did not beat {chosen} on valid: the scorer ranks as {chosen}[/]")
    return {"valid_retrieval_ndcg@10": base["ndcg@10"], "best_valid_ndcg@10": best, "epochs": history,
            "starts": starts, "start": chosen,
            "train_queries": len(train_q), "train_examples": int(len(y)), "improved": improved,
            # per valid query, what ships (not for the log: `choose_als` compares two scorers with it)
            "valid_ndcg_per_query": trained_q if improved else per_query[chosen]}


SURE = 0.95  # share of paired bootstrap resamples of valid a costlier or non-baseline ranking must lead in


def choose_als(ranker: Ranker, als: AlsFactors | None, train_q: list[Query], choice: list[Query],
               cfg: TrainConfig, console: Console) -> dict[str, object]:
    """Train the scorer with the ALS feature and candidates (`als_features = true`), without (false or no
    `als`), or both ways (`"auto"`): with ALS ships only when it is ahead in at least `SURE` of paired bootstrap
    resamples of valid, as the model's own fixed rankings must be (`ship_scorer`). Why: it costs every uncached
    request an ALS solve and a pass over the factors, and on ~1,000 valid targets a lead of a few thousandths is
    noise (Food-Kitchen seed 0, the same two-tower and table: 0.1085 on test with ALS, kept on valid; 0.1144
    without). Sets `ranker.scorer`, `ranker.als`, `ranker.als_candidates` and the model config's scorer width."""

    def fit(with_als: bool) -> tuple[dict[str, object], np.ndarray]:
        """(the scorer's log, its per-query valid NDCG@10)"""
        ranker.als, ranker.als_candidates = (als, cfg.als_candidates) if with_als else (None, 0)
        ranker.model.cfg.scorer_extras = len(scorer_features(cfg.kg_features, with_als))
        log = train_scorer(ranker, train_q, choice, cfg, console) | {"als": with_als}
        return log, log.pop("valid_ndcg_per_query")

    if als is None:  # als_features = false (or no scorer)
        return fit(False)[0]
    if cfg.als_features is True:
        return fit(True)[0]
    without, without_q = fit(False)
    kept = ranker.scorer
    with_als, with_q = fit(True)
    a, b = without["best_valid_ndcg@10"], with_als["best_valid_ndcg@10"]
    share = bootstrap_win_share(with_q, without_q)
    chosen = share >= SURE
    console.print(f"ALS in the scorer: valid NDCG@10 {b:.4f} with, {a:.4f} without, with ahead in {share:.0%} of "
                  f"resamples → " + ("with" if chosen else "without"))
    if chosen:
        return with_als | {"als_choice": {"with": b, "without": a, "with_ahead_share": share}}
    ranker.scorer, ranker.als, ranker.als_candidates = kept, None, 0
    ranker.model.cfg.scorer_extras = len(scorer_features(cfg.kg_features, False))
    return without | {"als_choice": {"with": b, "without": a, "with_ahead_share": share}}


BASELINE_STARTS = ("neighbours", "als")  # fixed rankings that are baselines: never shipped below them on valid


def ship_scorer(trained: np.ndarray | None, fixed: dict[str, np.ndarray], sure: float = SURE) -> str:
    """What the bundle's scorer ranks by: "trained", or the name of a fixed ranking (per-query valid NDCG@10).

    The neighbour table alone is a baseline (item-KNN), and so is ALS alone (with the ALS feature): each ships
    whenever it is ahead on valid, so the final ranking is never below them there. Retrieval and the blends are
    the model's own rankings; one replaces the trained scorer only when it is ahead in at least `sure` of paired
    bootstrap resamples of valid. A valid split of ~1,000 targets cannot tell apart differences of a few
    thousandths, and on Food-Kitchen a blend that led by 0.002 on valid was 0.012 behind on test (0.0886 vs
    0.1003).
    """
    if trained is None:
        return max(fixed, key=lambda k: fixed[k].mean())
    ahead = {name: q.mean() for name, q in fixed.items()
             if (q.mean() > trained.mean() if name in BASELINE_STARTS else bootstrap_win_share(q, trained) >= sure)}
    return max(ahead, key=ahead.get) if ahead else "trained"


def route_new_to_platform(ranker: Ranker, new_q: list[Query], console: Console) -> dict[str, object]:
    """What people new to the target platform are ranked by, chosen on their own valid queries (`new_q`) by
    the rule the whole ranking ships by (`ship_scorer`): the trained scorer, unless the neighbour table or
    ALS alone (baselines) is ahead there, or one of the model's fixed rankings is ahead with bootstrap
    confidence. Anything but the trained scorer makes `ranker.scorer` a `RoutedScorer`: people with history on
    the target platform keep the trained scorer. Why: a ranking that wins overall can lose to a baseline on
    the people a platform has never seen (a kept-aside data set: 0.0008 new-to-platform vs ALS 0.0062)."""
    trained = ranker.scorer
    assert trained is not None
    if not new_q:  # nobody in valid uses another platform (e.g. one-platform data): nothing to choose on
        return {"queries": 0, "valid_ndcg@10": {}, "chosen": "trained"}
    prepared = ranker.prepare(new_q)

    def per_query(scorer: torch.nn.Module) -> np.ndarray:
        ranker.scorer = scorer
        return ndcg_per_query(ranks(ranker.ds, new_q, lambda _: ranker.rescore(prepared), batch=len(new_q)), 10)

    extras = torch.from_numpy(np.concatenate([p.candidates.extras for p in prepared]))
    weights = scorer_starts(extras, ranker.als is not None and ranker.als_candidates >= 10)
    fixed_scorers, fixed = {}, {}
    for name, w in weights.items():
        fixed_scorers[name] = Scorer(ranker.model.cfg)
        fixed_scorers[name].start_from(w)
        fixed[name] = per_query(fixed_scorers[name])
    mine = per_query(trained)
    chosen = ship_scorer(mine, fixed)
    scores = {"trained": float(mine.mean())} | {k: float(v.mean()) for k, v in fixed.items()}
    console.print(f"new to the target platform ({len(new_q):,} valid queries, NDCG@10): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()) + f" → {chosen}")
    known = trained.known if isinstance(trained, RoutedScorer) else trained
    ranker.scorer = trained if chosen == "trained" else RoutedScorer(known, fixed_scorers[chosen]).eval()
    return {"queries": len(new_q), "valid_ndcg@10": scores, "chosen": chosen}


def compare_on_valid(ranker: Ranker, nb: Neighbours, valid: list[Query], log: dict, console: Console
                     ) -> dict[str, object]:
    """The shipped ranking against every baseline on valid (NDCG@10): what `xrec evaluate` reports first."""
    ds = ranker.ds
    final = metrics_from_ranks(ranks(ds, valid, ranker.final if ranker.scorer is not None else ranker.retrieval))[
        "ndcg@10"]
    baselines = {"popularity": Popularity().fit(ds).score, "als": ALS().fit(ds).score}
    scores = {name: metrics_from_ranks(ranks(ds, valid, fn))["ndcg@10"] for name, fn in baselines.items()}
    max_history = ranker.model.cfg.max_history
    # Every neighbour table as a plain ranking: without recency, and at the best decay each had on valid.
    for name in nb.tables:
        best_decay = max((d for d in nb.tried if d.startswith(f"{name}@")), key=nb.tried.get).split("@")[1]
        for decay in dict.fromkeys([1.0, float(best_decay)]):
            knn = nb.baseline(ds, name, decay, max_history)
            label = "item-knn" if name == "co-occurrence" else f"{name} item-knn"
            scores[f"{label} (decay {decay})"] = metrics_from_ranks(ranks(ds, valid, knn.score))["ndcg@10"]
    if nb.ease is not None:
        scores["ease"] = metrics_from_ranks(ranks(ds, valid, nb.ease.score))["ndcg@10"]
    best = max(scores, key=scores.get)
    beaten = scores[best] > final
    line = (f"valid NDCG@10: final model {final:.4f}, best baseline {best} {scores[best]:.4f}"
            + (" — the baseline is ahead on valid" if beaten else ""))
    console.print(("[yellow]" if beaten else "") + line + ("[/]" if beaten else ""))
    return {"final": final, "baselines": scores, "best_baseline": best, "baseline_ahead": beaten, "line": line}


def train(cfg: TrainConfig, console: Console | None = None,
          on_epoch: Callable[[int, float], None] | None = None, two_tower: TwoTowerFit | None = None) -> Path:
    """Train and write `cfg.out/checkpoint.pt` + `cfg.out/train.json`; returns the checkpoint path.
    `on_epoch`: see `train_two_tower`. `two_tower`: what fits the two-tower (default `train_two_tower`); every
    other step is the same whatever fits it."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    ds = load_dataset(cfg.dataset)
    tokens = step_tokens(cfg, len(ds.timelines.items) - len(ds.timelines))
    if tokens != cfg.batch_tokens:
        console.print(f"batch_tokens {cfg.batch_tokens:,} → {tokens:,}: ≥ {cfg.min_steps_per_epoch} steps an epoch")
        cfg = cfg.model_copy(update={"batch_tokens": tokens})
    if "valid" not in ds.targets:
        raise ValueError(f"{cfg.dataset}: no valid targets: early stopping needs an [eval] valid split")
    tl = ds.timelines
    is_target = np.ones(len(tl.items), dtype=bool)
    held = (holdout_last_events(tl, cfg.scorer_extra_holdout, cfg.seed) if (cfg.scorer and cfg.holdout_for_scorer)
            else np.array([], dtype=np.int64))
    is_target[held] = False

    model_cfg = replace(cfg.model, n_items=ds.n_items, n_platforms=len(ds.platforms),
                        text_dim=text_dim(cfg.model.text_model),
                        scorer_extras=len(scorer_features(cfg.kg_features, cfg.als_features is True)))
    text = TextTower(ds, model_cfg, cfg.text_cache, console)
    model = TwoTower(model_cfg)
    # A batch brings about (targets + history) ≈ 2 × 8 items per window.
    state = TrainState(model, text, ds, cfg, sampling_log_q(ds, max(cfg.negatives, 1), cfg.batch_tokens))

    valid = make_queries(ds, "valid")
    keep = np.ones(len(tl.items), dtype=bool)
    keep[held] = False  # the scorer's targets must not be in the co-occurrence it reads
    train_tl, train_keep = tl, keep
    if cfg.history == "target-only":
        train_tl, order = target_only(tl)
        is_target, train_keep = is_target[order], keep[order]
        valid = restrict_to_target(valid)
        ds = Dataset(ds.platforms, ds.item_ids, ds.item_platform, ds.titles, train_tl, ds.targets)
        state.ds = ds
    windows = make_windows(train_tl, model_cfg.max_history, is_target,
                           transfer=cfg.transfer_windows and cfg.history == "all")
    n_transfer = sum(int((t >= 0).sum()) for t in windows.transfer_targets)
    transfer = f" (+ {len(windows.transfer_inputs):,} transfer windows, {n_transfer:,} targets)" if n_transfer else ""
    console.print(f"{len(windows.start):,} windows, {int(is_target.sum()) - len(train_tl):,} targets{transfer}, "
                  f"{len(held):,} held out for the scorer; mode {model_cfg.mode}, history {cfg.history}")
    scorer_q = scorer_queries(tl, held, cfg.history) if len(held) else []
    order = np.random.default_rng(cfg.seed).permutation(len(scorer_q))
    multi = [i for i in order if len(np.unique(scorer_q[i].platforms)) > 1]  # several platforms in the history
    n_check = min(max(cfg.choice_min - len(valid), 0), len(multi) // 5)
    check = set(multi[:n_check])
    check_q = [q for i, q in enumerate(scorer_q) if i in check]
    train_q = [q for i, q in enumerate(scorer_q) if i not in check]
    choice = valid + check_q
    if cfg.scorer_new_to_platform_copies:
        copies = new_to_platform_copies(train_q)
        console.print(f"scorer: + {len(copies):,} copies of held-out queries as new to the target platform")
        train_q += copies
    console.print(f"choices on {len(valid):,} valid targets + {len(check_q):,} held-out last events")
    log = {"config": json.loads(cfg.model_dump_json()), "choice_queries": {"valid": len(valid), "held_out": n_check},
           "two_tower": (two_tower or train_two_tower)(state, windows, choice, console, on_epoch)}

    vecs = item_vectors(model, text.all_vectors(), ds.item_platform)
    # Neighbours over the timelines the model trained on (target-only ones link no platforms), without the
    # scorer's held-out targets; which kind and which recency decay is chosen on valid (+ held-out events).
    nb = choose_neighbours(ds, train_keep, choice, cfg.knn_decays, cfg.ease_lambda, model_cfg.max_history,
                           log=console.print, kinds=cfg.knn_tables, normalisations=cfg.knn_normalisations)
    popularity = np.bincount(tl.items[keep], minlength=ds.n_items).astype(np.float64)
    # The items' knowledge-graph entities (empty for a dataset built with --no-kg): scorer features, candidates.
    kg = item_entities(cfg.dataset, ds.item_ids)
    ranker = Ranker(model, ds, vecs, popularity, nb.index, nb.weight, nb.decay, candidates=cfg.candidates,
                    knn_candidates=cfg.knn_candidates, kg=kg, kg_candidates=cfg.kg_candidates,
                    kg_features=cfg.kg_features)
    log["neighbours"] = {"chosen": nb.name, "decay": nb.decay, "valid_ndcg@10": nb.tried}
    # ALS on the same events as the neighbours: not the scorer's held-out targets.
    als = ALS(seed=cfg.seed).fit(ds, keep=train_keep).fitted if cfg.als_features and cfg.scorer else None
    if cfg.scorer and len(train_q):
        log["scorer"] = choose_als(ranker, als, train_q, choice, cfg, console)
        log["new_to_platform"] = route_new_to_platform(ranker, hide_target_history(choice), console)
    log["valid_comparison"] = compare_on_valid(ranker, nb, valid, log, console)
    log["minutes"] = round((time.perf_counter() - started) / 60, 2)

    cfg.out.mkdir(parents=True, exist_ok=True)
    ckpt = cfg.out / "checkpoint.pt"
    torch.save({
        "model_args": model_cfg.to_dict(),
        "model": model.state_dict(),
        "text": text.export_state(),
        "scorer": ranker.scorer.state_dict() if ranker.scorer is not None else None,
        "train_config": json.loads(cfg.model_dump_json()),
        "dataset": str(cfg.dataset),
        "platforms": ds.platforms,
        "item_ids": ds.item_ids,
        "knn_index": nb.index,
        "knn_weight": nb.weight,
        "knn_decay": nb.decay,
        "knn_source": nb.name,
        "candidates": cfg.candidates,
        "knn_candidates": cfg.knn_candidates,
        "kg": kg.arrays(),
        "kg_candidates": cfg.kg_candidates,
        "kg_features": cfg.kg_features,
        "als": None if ranker.als is None else {"items": ranker.als.items, "alpha": ranker.als.alpha,
                                                "reg": ranker.als.reg},
        "als_candidates": ranker.als_candidates,
        "popularity": popularity,
        "log": log,
    }, ckpt)
    (cfg.out / "train.json").write_text(json.dumps(log, indent=1) + "\n")
    console.print(f"checkpoint: {ckpt}  ({log['minutes']} min)")
    return ckpt
