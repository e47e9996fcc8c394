"""`xrec ablate transfer`: does history from other platforms help? The same profile trained twice — on
fused cross-platform timelines and on target-platform-only timelines — evaluated on the same test queries."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.evaluate import (
    BUCKETS,
    ScoreFn,
    bootstrap_ratio,
    bucket_of,
    evaluate_models,
    ndcg_per_query,
    write_results,
)
from training.report import model_rankers
from training.train import TrainConfig, restrict_to_target, train


def transfer_ablation(cfg: TrainConfig, out: Path, cross_checkpoint: Path | None = None, split: str = "test",
                      log: Callable[[str], None] = print, target_checkpoint: Path | None = None) -> dict[str, dict]:
    ckpts = {"cross-platform": cross_checkpoint, "target-only": target_checkpoint}
    for name, history in (("cross-platform", "all"), ("target-only", "target-only")):
        if ckpts.get(name) is None:
            ckpts[name] = train(cfg.model_copy(update={"history": history, "out": out / name}))
    models: dict[str, ScoreFn] = {}
    for name, ckpt in ckpts.items():
        _, ranker = model_rankers(ckpt)
        score = ranker.final if ranker.scorer is not None else ranker.retrieval
        if name == "target-only":
            models[name] = lambda qs, s=score: s(restrict_to_target(list(qs)))
        else:
            models[name] = score
    ds, _ = model_rankers(ckpts["cross-platform"])
    results = evaluate_models(ds, models, split, protocols=("full", "new_to_platform"), log=log)
    write_results(results, f"{split}-transfer", out)
    lines = ["| history | " + " | ".join(b[2] for b in BUCKETS) + " | all | new-to-platform |",
             "|---|" + "---:|" * (len(BUCKETS) + 2)]
    for name, res in results.items():
        bk = res["full"]["bucket"]
        lines.append(f"| {name} | " + " | ".join(f"{bk[b[2]]['ndcg@10']:.4f}" if bk[b[2]]["n"] else "–"
                                                 for b in BUCKETS)
                     + f" | {res['full']['overall']['ndcg@10']:.4f}"
                     + f" | {res['new_to_platform']['overall']['ndcg@10']:.4f} |")
    a = results["cross-platform"]["full"]["bucket"]["1-2"].get("ndcg@10", 0.0)
    b = results["target-only"]["full"]["bucket"]["1-2"].get("ndcg@10", 0.0)
    lines.append("")
    if b:
        lo, hi = bucket_ratio_interval(results, "1-2")
        lines.append(f"1–2 bucket: cross-platform / target-only = {a / b:.2f}× (paired bootstrap 95% interval "
                     f"{lo:.2f}–{hi:.2f}×)")
    else:
        lines.append("1–2 bucket: target-only is 0")
    (out / f"transfer-{split}.md").write_text("NDCG@10, full ranking, by events on the target platform\n\n"
                                              + "\n".join(lines) + "\n")
    log("\n".join(lines))
    return results


def bucket_ratio_interval(results: dict[str, dict], bucket: str) -> tuple[float, float]:
    """Paired bootstrap interval of cross-platform / target-only NDCG@10 on one history bucket's queries."""
    per = {name: results[name]["full"]["per_query"] for name in ("cross-platform", "target-only")}
    sel = np.array([bucket_of(n) == bucket for n in per["cross-platform"]["target_history"]])
    a, b = (ndcg_per_query(np.array(per[name]["rank"])[sel], 10) for name in ("cross-platform", "target-only"))
    return bootstrap_ratio(a, b)
