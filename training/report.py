"""`xrec evaluate`: a trained checkpoint and every baseline on the same queries, written as metrics.json,
a markdown table and a PNG chart per history-length bucket."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from training.baselines import ALS, EASE, ItemKNN, Popularity, TableSpec, TextZeroShot
from training.checkpoint import fine_tuned_backbone, load_checkpoint
from training.evaluate import ScoreFn, evaluate_models, write_results
from training.pipeline import Ranker, checkpoint_ranker
from training.sequences import load_dataset
from training.text_vectors import encode_texts, text_model_path


def model_rankers(checkpoint: Path, dataset: Path | None = None) -> tuple[object, Ranker]:
    loaded = load_checkpoint(checkpoint)
    ckpt = loaded.ckpt
    ds = load_dataset(Path(dataset or ckpt["dataset"]))
    # A fine-tuned transformer (top-k, lora) encodes with its own weights; a frozen one reuses the disk cache.
    backbone = fine_tuned_backbone(loaded)
    text = encode_texts(ds.titles, loaded.cfg.text_max_length, progress=False,
                        model_path=text_model_path(loaded.cfg.text_model), model=backbone)
    return ds, checkpoint_ranker(loaded.model, loaded.scorer, ckpt, ds, text)


def run_evaluation(checkpoint: Path, split: str, out: Path | None = None, baselines: bool = True,
                   dataset: Path | None = None, log: Callable[[str], None] = print) -> dict[str, dict]:
    ds, ranker = model_rankers(checkpoint, dataset)
    models: dict[str, ScoreFn] = {}
    if baselines:
        text = encode_texts(ds.titles, 32, progress=False)  # zero-shot: the pretrained MiniLM as shipped
        models |= {"popularity": Popularity().fit(ds).score,
                   "item-knn (no recency)": ItemKNN(decay=1.0).fit(ds).score}
        # Each neighbour table kind (a cosine) and the chosen table, at the recency decay best for it on valid
        for table, decay in valid_decays(checkpoint, ranker.knn_decay).items():
            spec = TableSpec.parse(table)
            label = "item-knn" if spec.kind == "co-occurrence" else f"{spec.kind} item-knn"
            norm = "" if spec.label == spec.kind else f"α {spec.alpha:g}, shrink {spec.shrink:g}, "
            if (table, decay) != ("co-occurrence", 1.0):
                models[f"{label} ({norm}recency {decay})"] = ItemKNN(decay=decay, table=table).fit(ds).score
        models |= {"ease": EASE().fit(ds).score, "als": ALS().fit(ds).score,
                   "text zero-shot": TextZeroShot(text).fit(ds).score}
    models["two-tower (retrieval)"] = ranker.retrieval
    if ranker.scorer is not None:
        models["two-tower + scorer (final)"] = ranker.final
    results = evaluate_models(ds, models, split, log=log)
    out = out or checkpoint.parent
    write_results(results, split, out)
    chosen = valid_choice(checkpoint)
    if chosen:  # the first thing a reader sees: what was chosen on valid, and whether a baseline is ahead there
        md = out / f"metrics-{split}.md"
        md.write_text(chosen + "\n\n" + md.read_text(encoding="utf-8"), encoding="utf-8")
        log(chosen)
    return results


def valid_decays(checkpoint: Path, fallback: float) -> dict[str, float]:
    """{table label: the recency decay best on valid for it} for each kind's cosine and the chosen table, from
    `xrec train`'s log (older checkpoints: co-occurrence at the checkpoint's decay)."""
    import torch

    nb = torch.load(checkpoint, map_location="cpu", weights_only=False).get("log", {}).get("neighbours", {})
    best: dict[str, tuple[float, float]] = {}
    for key, ndcg in nb.get("valid_ndcg@10", {}).items():
        table, decay = key.rsplit("@", 1)
        if table == "ease" or (table != TableSpec.parse(table).kind and table != nb["chosen"]):
            continue  # EASE is reported on its own; of the other normalisations, only the chosen table
        if table not in best or ndcg > best[table][1]:
            best[table] = (float(decay), ndcg)
    return {k: d for k, (d, _) in best.items()} or {"co-occurrence": fallback}


def valid_choice(checkpoint: Path) -> str:
    """One line: the choices `xrec train` made on valid and the final model against the best baseline there."""
    import torch

    tlog = torch.load(checkpoint, map_location="cpu", weights_only=False).get("log", {})
    cmp, nb, sc = tlog.get("valid_comparison"), tlog.get("neighbours"), tlog.get("scorer", {})
    if not cmp:
        return ""
    parts = [f"**On valid** — {cmp['line']}."]
    if nb:
        parts.append(f"Neighbour table: {nb['chosen']}, recency decay {nb['decay']}.")
    if sc.get("start"):  # "trained", or the fixed ranking it ships instead
        parts.append("Scorer: trained." if sc.get("improved") else
                     f"Scorer: ranks as {sc['start']} (the trained one did not beat it on valid).")
    new = tlog.get("new_to_platform")
    if new and new["chosen"] != "trained":
        ndcg = new["valid_ndcg@10"]
        parts.append(f"People new to the target platform: ranked as {new['chosen']} ({ndcg[new['chosen']]:.4f} "
                     f"vs the scorer's {ndcg['trained']:.4f} on their valid queries).")
    return " ".join(parts)
