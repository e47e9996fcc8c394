"""Evaluation protocols and metrics. Models are compared on exactly the same queries and candidates.

Protocols, for every target of a split (valid/test):
- `full`: rank the target platform's whole catalog, excluding items the person already has there (the
  target itself is never excluded). Recall@10/20/50, NDCG@10/20, MRR.
- `sampled`: the target against 999 random items of its platform (one fixed draw per target, shared by all
  models), HR@10 and NDCG@10 — the LLMCDSR paper's protocol.
- `new_to_platform`: `full`, but the person's history on the target platform is hidden: only their other
  platforms remain (a known customer arriving at a new shop).
Breakdowns: per platform, and per bucket of the person's history length on the target platform.

Popularity bias (`full` only, per platform and overall, from each query's top 10 with seen items excluded
as in `ranks`): catalog coverage, Gini of exposure, long-tail share and novelty (`bias_metrics`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.sequences import Dataset

KS_RECALL = (10, 20, 50)
KS_NDCG = (10, 20)
BUCKETS = ((0, 0, "0"), (1, 2, "1-2"), (3, 9, "3-9"), (10, 10**9, "10+"))
SAMPLED_NEGATIVES = 999
TOP_K = 10  # the recommendation list whose popularity bias is measured
LONG_TAIL = 0.8  # the long tail: this share of a platform's items, the least popular by training events
BIAS_KEYS = ("coverage", "gini", "long_tail", "novelty")


@dataclass
class Query:
    """One prediction: a person's history (oldest first) and the platform to recommend on."""

    person: int
    platform: int
    items: np.ndarray
    platforms: np.ndarray
    ts: np.ndarray
    now: int
    target: int


# A model scores a batch of queries: one score array per query over `ds.platform_items(q.platform)`.
ScoreFn = Callable[[Sequence[Query]], list[np.ndarray]]


def bucket_of(n: int) -> str:
    return next(name for lo, hi, name in BUCKETS if lo <= n <= hi)


def make_queries(ds: Dataset, split: str, new_to_platform: bool = False) -> list[Query]:
    t, tl = ds.targets[split], ds.timelines
    out = []
    for i in range(len(t)):
        s = tl.span(int(t.person[i]))
        items, plats, ts = tl.items[s], tl.platforms[s], tl.ts[s]
        before = ts < t.ts[i]  # only the past, whatever the data holds
        if new_to_platform:
            before &= plats != t.platform[i]
        out.append(Query(int(t.person[i]), int(t.platform[i]), items[before], plats[before], ts[before],
                         int(t.ts[i]), int(t.item[i])))
    return out


def hide_target_history(queries: list[Query]) -> list[Query]:
    """The new-to-platform protocol's view of queries (`make_queries(..., new_to_platform=True)`): each one's
    target-platform events hidden; queries left with no history are dropped (every ranking answers them alike)."""
    out = []
    for q in queries:
        other = q.platforms != q.platform
        if other.any():
            out.append(Query(q.person, q.platform, q.items[other], q.platforms[other], q.ts[other], q.now, q.target))
    return out


def top_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, best first, ties by position; -inf (excluded) is never listed, so
    fewer than k come back when fewer than k items are left."""
    n = len(scores)
    # Only the k-th highest score and above can make the list (all of them, when ties straddle the cut).
    cand = np.flatnonzero(scores >= np.partition(scores, n - k)[n - k]) if n > k else np.arange(n)
    cand = cand[scores[cand] > -np.inf]
    return cand[np.lexsort((cand, -scores[cand]))][:k]


def ranks(ds: Dataset, queries: Sequence[Query], score_fn: ScoreFn, batch: int = 256,
          exclude_seen: bool = True, top: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each target among its platform's items (ties counted against the target).

    `top` (int64 [len(queries), k], optional) receives each query's top-k item rows, best first (ties by item
    row), from the same scores with the same seen items excluded — the person's seen items, whether or not the
    target is among them, since a recommender cannot know the target; -1 pads a list shorter than k."""
    cand = {p: ds.platform_items(p) for p in range(len(ds.platforms))}
    pos = {p: {int(item): j for j, item in enumerate(c)} for p, c in cand.items()}
    out = np.empty(len(queries), dtype=np.int64)
    for b in range(0, len(queries), batch):
        qs = queries[b:b + batch]
        for k, (q, scores) in enumerate(zip(qs, score_fn(qs), strict=True)):
            scores = np.asarray(scores, dtype=np.float64).copy()
            j = pos[q.platform][q.target]
            target_score = scores[j]
            if exclude_seen:
                seen = [pos[q.platform][int(i)] for i in q.items if int(i) in pos[q.platform]]
                scores[seen] = -np.inf
            if top is not None:
                best = cand[q.platform][top_positions(scores, top.shape[1])]
                top[b + k, :len(best)] = best
                top[b + k, len(best):] = -1
            scores[j] = -np.inf  # the target is never excluded, and does not outrank itself
            out[b + k] = int(np.sum(scores >= target_score))
    return out


def sampled_ranks(ds: Dataset, queries: Sequence[Query], score_fn: ScoreFn, seed: int = 0,
                  batch: int = 256) -> np.ndarray:
    """Rank of the target among itself + 999 random items of its platform (fixed per target)."""
    rng = np.random.default_rng(seed)
    cand = {p: ds.platform_items(p) for p in range(len(ds.platforms))}
    pos = {p: {int(item): j for j, item in enumerate(c)} for p, c in cand.items()}
    negs = []
    for q in queries:
        pool = len(cand[q.platform])
        draw = rng.choice(pool - 1, size=min(SAMPLED_NEGATIVES, pool - 1), replace=False)
        j = pos[q.platform][q.target]
        negs.append(np.where(draw >= j, draw + 1, draw))  # skip the target's own slot
    out = np.empty(len(queries), dtype=np.int64)
    for b in range(0, len(queries), batch):
        qs = queries[b:b + batch]
        for k, (q, scores) in enumerate(zip(qs, score_fn(qs), strict=True)):
            scores = np.asarray(scores, dtype=np.float64)
            t = scores[pos[q.platform][q.target]]
            out[b + k] = int(np.sum(scores[negs[b + k]] >= t))
    return out


def metrics_from_ranks(r: np.ndarray) -> dict[str, float]:
    r = np.asarray(r)
    if len(r) == 0:
        return {"n": 0}
    m: dict[str, float] = {"n": int(len(r))}
    for k in KS_RECALL:
        m[f"recall@{k}"] = float(np.mean(r < k))
    for k in KS_NDCG:
        m[f"ndcg@{k}"] = float(np.mean(ndcg_per_query(r, k)))
    m["mrr"] = float(np.mean(1.0 / (r + 1.0)))
    return m


def ndcg_per_query(r: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k of each query from its target's 0-based rank (one relevant item)."""
    r = np.asarray(r)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


def bootstrap_ratio(a: np.ndarray, b: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(a) / mean(b) over paired resamples of the same queries (a, b: per-query values)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    num, den = np.asarray(a)[idx].mean(axis=1), np.asarray(b)[idx].mean(axis=1)
    ratios = num[den > 0] / den[den > 0]
    lo, hi = np.percentile(ratios, [2.5, 97.5]) if len(ratios) else (float("nan"), float("nan"))
    return float(lo), float(hi)


def bootstrap_win_share(a: np.ndarray, b: np.ndarray, n: int = 2_000, seed: int = 0) -> float:
    """Share of paired resamples of the same queries in which mean(a) > mean(b) (a, b: per-query values)."""
    if len(a) == 0:
        return 0.0
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n, len(a)))
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(np.mean(diff[idx].mean(axis=1) > 0))


def sampled_metrics(r: np.ndarray) -> dict[str, float]:
    r = np.asarray(r)
    return {"n": int(len(r)), "hr@10": float(np.mean(r < 10)),
            "ndcg@10": float(np.mean(np.where(r < 10, 1.0 / np.log2(r + 2.0), 0.0)))}


def target_history(queries: Sequence[Query]) -> np.ndarray:
    """Each query's number of history events on its target platform (what the buckets count)."""
    return np.array([int(np.sum(q.platforms == q.platform)) for q in queries], dtype=np.int64)


def breakdown(ds: Dataset, queries: Sequence[Query], r: np.ndarray, n_target: np.ndarray
              ) -> dict[str, dict[str, dict[str, float]]]:
    """Metrics per platform and per bucket of history length on the target platform (`target_history`)."""
    by_platform = {}
    for p, name in enumerate(ds.platforms):
        sel = np.array([q.platform == p for q in queries], dtype=bool)
        by_platform[name] = metrics_from_ranks(r[sel])
    by_bucket = {}
    for lo, hi, name in BUCKETS:
        sel = (n_target >= lo) & (n_target <= hi)
        by_bucket[name] = metrics_from_ranks(r[sel])
    return {"platform": by_platform, "bucket": by_bucket}


def long_tail_mask(pop: np.ndarray) -> np.ndarray:
    """One platform's items (their training event counts): True for the long tail, the floor(0.8·n) least
    popular items; among equal counts a lower item row counts as more popular."""
    n = len(pop)
    order = np.lexsort((np.arange(n), -np.asarray(pop)))  # most popular first
    mask = np.zeros(n, dtype=bool)
    mask[order[n - int(LONG_TAIL * n + 1e-9):]] = True
    return mask


def gini(x: np.ndarray) -> float:
    """Gini coefficient of non-negative values: sum_j (2j - n - 1) x_(j) / ((n - 1) sum x), x ascending,
    j = 1..n — 0 when all are equal, 1 when one value holds everything (0 for n < 2 or all zero)."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n, total = len(x), float(np.sum(x))
    if n < 2 or total <= 0:
        return 0.0
    j = np.arange(1, n + 1)
    return float(np.sum((2 * j - n - 1) * x) / ((n - 1) * total))


def _bias(exposure: np.ndarray, tail: np.ndarray, info: np.ndarray, k: int) -> dict[str, float]:
    """Bias metrics from per-item top-k exposure (slots), long-tail flags and self-information."""
    slots = int(np.sum(exposure))
    per_slot = (lambda v: float(np.sum(exposure * v) / slots)) if slots else (lambda v: float("nan"))
    return {f"coverage@{k}": float(np.mean(exposure > 0)) if len(exposure) else float("nan"),
            f"gini@{k}": gini(exposure), f"long_tail@{k}": per_slot(tail), f"novelty@{k}": per_slot(info)}


def bias_metrics(ds: Dataset, queries: Sequence[Query], top: np.ndarray) -> dict[str, dict]:
    """Popularity bias of top-k lists (`top`: item rows per query, -1 padding; k = its width).

    For a platform P (its n items, c(i) = training events of item i, `ds.popularity()`), over the lists of
    the queries on P, exposure e(i) = number of list slots holding item i:
    - coverage@k = share of P's items with e(i) > 0;
    - gini@k = `gini` of e over all of P's items (unexposed ones included);
    - long_tail@k = share of the slots that hold a long-tail item (`long_tail_mask`: bottom 80% by c);
    - novelty@k = mean over the slots of -log2 p(i), p(i) = (c(i) + 1) / (sum_P c + n).
    Overall: the same over all slots, the items of every platform that has a query side by side.
    Returns {"overall": {...}, "platform": {name: {...}}} (platforms without queries are left out)."""
    k = top.shape[1]
    pop = ds.popularity()
    qplat = np.array([q.platform for q in queries], dtype=np.int64)
    per: dict[str, dict[str, float]] = {}
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for p, name in enumerate(ds.platforms):
        sel = qplat == p
        if not sel.any():
            continue
        items = ds.platform_items(p)
        listed = top[sel]
        listed = listed[listed >= 0]
        exposure = np.bincount(np.searchsorted(items, listed), minlength=len(items))
        c = pop[items].astype(np.float64)
        info = -np.log2((c + 1.0) / (c.sum() + len(items)))
        parts.append((exposure, long_tail_mask(c), info))
        per[name] = _bias(*parts[-1], k)
    exposure, tail, info = (np.concatenate(a) for a in zip(*parts, strict=True)) if parts else [np.zeros(0)] * 3
    return {"overall": _bias(exposure, tail, info, k), "platform": per}


def evaluate_models(ds: Dataset, models: dict[str, ScoreFn], split: str,
                    protocols: Sequence[str] = ("full", "new_to_platform", "sampled"),
                    log: Callable[[str], None] = print) -> dict[str, dict]:
    """{model: {protocol: {overall, platform, bucket}}} on one split. On `full`, `overall` and each
    platform's entry also hold the popularity-bias metrics of the top 10 (`bias_metrics`)."""
    queries = {"full": make_queries(ds, split), "sampled": None,
               "new_to_platform": make_queries(ds, split, new_to_platform=True)}
    queries["sampled"] = queries["full"]
    out: dict[str, dict] = {}
    for name, fn in models.items():
        res: dict[str, dict] = {}
        for proto in protocols:
            qs = queries[proto]
            if proto == "sampled":
                res[proto] = {"overall": sampled_metrics(sampled_ranks(ds, qs, fn))}
            else:
                top = np.full((len(qs), TOP_K), -1, dtype=np.int64) if proto == "full" else None
                r, n_target = ranks(ds, qs, fn, top=top), target_history(qs)
                # Per-query ranks too: paired comparisons (bootstrap intervals) between models need them.
                res[proto] = {"overall": metrics_from_ranks(r), **breakdown(ds, qs, r, n_target),
                              "per_query": {"rank": r.tolist(), "target_history": n_target.tolist()}}
                if top is not None:
                    bias = bias_metrics(ds, qs, top)
                    res[proto]["overall"].update(bias["overall"])
                    for pname, m in bias["platform"].items():
                        res[proto]["platform"][pname].update(m)
        out[name] = res
        f = res.get("full", {}).get("overall", {})
        n = res.get("new_to_platform", {}).get("overall", {})
        bias = (f"  coverage@{TOP_K} {f[f'coverage@{TOP_K}']:.3f}  long-tail@{TOP_K} "
                f"{f[f'long_tail@{TOP_K}']:.3f}" if f"coverage@{TOP_K}" in f else "")
        log(f"{split} {name:>22}: NDCG@10 {f.get('ndcg@10', float('nan')):.4f}  "
            f"Recall@10 {f.get('recall@10', float('nan')):.4f}  new-to-platform NDCG@10 "
            f"{n.get('ndcg@10', float('nan')):.4f}{bias}")
    return out


def markdown_table(results: dict[str, dict], split: str) -> str:
    lines = [f"### {split}: full ranking, new-to-platform, sampled (1 + 999)", "",
             "| model | NDCG@10 | NDCG@20 | Recall@10 | Recall@20 | Recall@50 | MRR | new-to-platform NDCG@10 "
             "| new-to-platform Recall@10 | sampled HR@10 | sampled NDCG@10 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, res in results.items():
        f = res.get("full", {}).get("overall", {})
        n = res.get("new_to_platform", {}).get("overall", {})
        s = res.get("sampled", {}).get("overall", {})

        def g(d: dict, k: str) -> str:
            return f"{d[k]:.4f}" if k in d else "–"

        lines.append(f"| {name} | {g(f, 'ndcg@10')} | {g(f, 'ndcg@20')} | {g(f, 'recall@10')} | "
                     f"{g(f, 'recall@20')} | {g(f, 'recall@50')} | {g(f, 'mrr')} | {g(n, 'ndcg@10')} | "
                     f"{g(n, 'recall@10')} | {g(s, 'hr@10')} | {g(s, 'ndcg@10')} |")
    lines += ["", f"#### {split}: NDCG@10 by history length on the target platform (full ranking)", ""]
    names = [b[2] for b in BUCKETS]
    lines.append("| model | " + " | ".join(f"{b} (n={next(iter(results.values()))['full']['bucket'][b]['n']})"
                                              for b in names) + " |" if results else "")
    lines.append("|---|" + "---:|" * len(names))
    for name, res in results.items():
        bk = res.get("full", {}).get("bucket", {})
        lines.append(f"| {name} | " + " | ".join(f"{bk[b].get('ndcg@10', 0):.4f}" if bk.get(b, {}).get("n")
                                                 else "–" for b in names) + " |")
    lines += bias_table(results, split)
    return "\n".join(lines) + "\n"


def bias_table(results: dict[str, dict], split: str, protocol: str = "full") -> list[str]:
    """Markdown lines: the popularity-bias metrics per model, overall ("all") then per platform."""
    cols = [f"{key}@{TOP_K}" for key in BIAS_KEYS]
    if not any(cols[0] in res.get(protocol, {}).get("overall", {}) for res in results.values()):
        return []
    lines = ["", f"#### {split}: popularity bias of the top {TOP_K} ({protocol} ranking; long tail = the "
                 f"{LONG_TAIL:.0%} least popular of a platform's items by training events)", "",
             f"| model | platform | coverage@{TOP_K} | Gini of exposure | long-tail share | novelty (bits) |",
             "|---|---|---:|---:|---:|---:|"]
    for name, res in results.items():
        r = res.get(protocol, {})
        scopes = [("all", r.get("overall", {}))] + list(r.get("platform", {}).items())
        for scope, m in scopes:
            if cols[0] in m:
                lines.append(f"| {name} | {scope} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |")
    return lines


def bucket_chart(results: dict[str, dict], split: str, out: Path, protocol: str = "full") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [b[2] for b in BUCKETS]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(results), 1)
    for k, (model, res) in enumerate(results.items()):
        bk = res[protocol]["bucket"]
        ax.bar(np.arange(len(names)) + k * width, [bk[b].get("ndcg@10", 0.0) for b in names], width, label=model)
    ax.set_xticks(np.arange(len(names)) + width * (len(results) - 1) / 2)
    ax.set_xticklabels([f"{b}\n(n={next(iter(results.values()))[protocol]['bucket'][b]['n']})" for b in names])
    ax.set_xlabel("events on the target platform before the target")
    ax.set_ylabel("NDCG@10")
    ax.set_title(f"{split}, {protocol}: NDCG@10 by history length on the target platform")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def bias_chart(results: dict[str, dict], split: str, out: Path, protocol: str = "full") -> Path:
    """Grouped bars per model, overall: coverage, long-tail share and Gini (left), novelty in bits (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = [(f"coverage@{TOP_K}", "catalog coverage"), (f"long_tail@{TOP_K}", "long-tail share"),
              (f"gini@{TOP_K}", "Gini of exposure")]
    models = {m: res[protocol]["overall"] for m, res in results.items()
              if shares[0][0] in res.get(protocol, {}).get("overall", {})}
    fig, (ax, ax_nov) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / max(len(models), 1)
    for k, (model, m) in enumerate(models.items()):
        ax.bar(np.arange(len(shares)) + k * width, [m[key] for key, _ in shares], width, label=model)
    ax.set_xticks(np.arange(len(shares)) + width * (len(models) - 1) / 2)
    ax.set_xticklabels([label for _, label in shares])
    ax.set_ylim(0, 1.3)  # room above the bars for the legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_title(f"{split}, {protocol}: top-{TOP_K} popularity bias (all platforms)")
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    ax_nov.bar(np.arange(len(models)), [m[f"novelty@{TOP_K}"] for m in models.values()],
               color=[f"C{k}" for k in range(len(models))])
    ax_nov.set_xticks(np.arange(len(models)))
    ax_nov.set_xticklabels(list(models), rotation=30, ha="right", fontsize=7)
    ax_nov.set_ylabel("bits")
    ax_nov.set_title(f"novelty@{TOP_K}: mean -log2 p(item)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_results(results: dict[str, dict], split: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"metrics-{split}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / f"metrics-{split}.md").write_text(markdown_table(results, split))
    bucket_chart(results, split, out_dir / f"buckets-{split}.png")
    if any(f"coverage@{TOP_K}" in res.get("full", {}).get("overall", {}) for res in results.values()):
        bias_chart(results, split, out_dir / f"bias-{split}.png")
