"""`xrec export`: checkpoint + dataset → one versioned bundle (see `contract.bundle` for the layout).

Every model is exported to ONNX and checked against the trained model on real inputs (the item encoder
against the model's own text-only item vectors of real titles); a failed check fails the export.
Quantised item-encoder variants are measured (cosine to fp32, valid NDCG@10 of text-only retrieval) and
marked recommended only when NDCG@10 drops by less than 1% relative. Item attributes the dataset's catalog
carries (`item_attributes`) go into the bundle's items.parquet, so filters and diversity caps work on a fresh
bundle without PUT /v1/items. Each platform's FAISS index is built
here with every core (exact up to `hnsw_threshold` items, HNSW above, IVF above `ivf_threshold` with its
nprobe chosen here for a target recall; `contract.indexes`), so the service reads it instead of building it at
start. The bundle is written atomically.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contract.bundle import ITEM_ENCODER_INPUTS, IndexFile, Manifest, ModelFile, salt_fingerprint, write_manifest
from contract.features import HISTORY_SNAPSHOT, scorer_features, user_encoder_feeds
from contract.indexes import IndexParams, write_indexes
from export.onnx import SCORER_INPUTS, USER_INPUTS, export_scorer, export_user_encoder
from export.onnx_optimize import quantize_int8, to_fp16
from export.onnx_text import check_against_model, compare_vectors, embed_onnx, export_text_encoder
from training.checkpoint import load_checkpoint, text_item_encoder
from training.data.build import atomic_dir
from training.evaluate import hide_target_history, make_queries, metrics_from_ranks, ranks
from training.model import ModelConfig
from training.pipeline import Ranker, as_contract_query, checkpoint_ranker, new_item_vectors
from training.sequences import load_dataset
from training.text_vectors import encode_texts, text_model_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
MAX_RELATIVE_NDCG_DROP = 0.01
PARITY_TITLES = 200  # real catalog titles the item encoder is checked on against the trained model


def _text_only_ndcg(ranker: Ranker, text_vecs: np.ndarray, valid) -> float:
    """Valid NDCG@10 when every item vector comes from text alone (how a brand-new item is served)."""
    saved = ranker.item_vecs
    ranker.item_vecs = text_vecs
    try:
        return metrics_from_ranks(ranks(ranker.ds, valid, ranker.retrieval))["ndcg@10"]
    finally:
        ranker.item_vecs = saved


def export_bundle(checkpoint: Path, out_root: Path, version: str | None = None, dataset: Path | None = None,
                  salt: str = "", measure_variants: bool = True, log=print,
                  index_params: IndexParams | None = None) -> Path:
    loaded = load_checkpoint(checkpoint)
    ckpt, cfg, model = loaded.ckpt, loaded.cfg, loaded.model
    ds = load_dataset(Path(dataset or ckpt["dataset"]))
    if ds.item_ids != ckpt["item_ids"]:
        raise ValueError(f"{dataset or ckpt['dataset']}: items differ from the checkpoint's; export with the "
                         "dataset the model was trained on")
    version = version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = out_root / version
    module = text_item_encoder(loaded)
    # A fine-tuned transformer encodes with its own weights; a frozen one reuses the disk cache.
    text_vecs = encode_texts(ds.titles, cfg.text_max_length, progress=False, model_path=text_model_path(cfg.text_model),
                             model=module.backbone if ckpt.get("text") else None)
    ranker = checkpoint_ranker(model, loaded.scorer, ckpt, ds, text_vecs)
    vecs = ranker.item_vecs
    valid = make_queries(ds, "valid") if "valid" in ds.targets else []
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(ds.n_items, size=min(PARITY_TITLES, ds.n_items), replace=False))
    sample_titles = [ds.titles[i] for i in sample]
    new_item_vecs = new_item_vectors(model, text_vecs[sample], ds.item_platform[sample])

    with atomic_dir(out) as tmp:
        # Item encoder: fp32, then variants.
        tok_dir = tmp / "tokenizer"
        tok_dir.mkdir()
        for name in TOKENIZER_FILES:
            if (text_model_path(cfg.text_model) / name).is_file():
                shutil.copy2(text_model_path(cfg.text_model) / name, tok_dir / name)
        export_text_encoder(module, tok_dir, tmp / "item_encoder.onnx", cfg.text_max_length,
                            sample_texts=sample_titles[:64], name="item_encoder")
        parity = check_against_model(tmp / "item_encoder.onnx", tok_dir, cfg.text_max_length, sample_titles,
                                     ds.item_platform[sample].tolist(), new_item_vecs)
        item_model = ModelFile(file="item_encoder.onnx", inputs=list(ITEM_ENCODER_INPUTS), outputs=["item_vec"],
                               parity=_floats(parity))
        variants = {"int8": "item_encoder.int8.onnx", "fp16": "item_encoder.fp16.onnx"}
        quantize_int8(tmp / "item_encoder.onnx", tmp / variants["int8"])
        to_fp16(tmp / "item_encoder.onnx", tmp / variants["fp16"])
        item_model.variants = variants
        variant_report: dict[str, object] = {}
        if measure_variants and valid:
            variant_report = _measure_variants(tmp, tok_dir, cfg, ds, ranker, valid, log)
            if variant_report.get("int8", {}).get("recommended"):
                item_model.recommended = "int8"

        # User encoder, on real histories.
        qs = valid[:64] if valid else make_queries(ds, next(iter(ds.targets)))[:64]
        feeds = user_encoder_feeds([as_contract_query(q).history for q in qs], [q.platform for q in qs], vecs,
                                   cfg.max_history)
        feeds["hist_mask"][0] = False  # an empty history must work too
        user_parity = export_user_encoder(model.users, tmp / "user_encoder.onnx", feeds)
        models = {"item_encoder": item_model,
                  "user_encoder": ModelFile(file="user_encoder.onnx", inputs=list(USER_INPUTS),
                                            outputs=["user_vec"], parity=user_parity)}
        if loaded.scorer is not None:  # without one the service serves the retrieval order
            # + the same people as new to the target platform: a routed scorer's both halves are checked
            prepared = ranker.prepare(qs[:16] + hide_target_history(qs[:16]), keep_retrieval=False)
            scorer_feeds = {
                "user_vec": np.concatenate([np.repeat(p.user[None], len(p.candidates.rows), 0) for p in prepared]),
                "item_vec": np.concatenate([vecs[p.candidates.rows] for p in prepared]),
                "extras": np.concatenate([p.candidates.extras for p in prepared]),
            }
            scorer_feeds = {k: v.astype(np.float32) for k, v in scorer_feeds.items()}
            models["scorer"] = ModelFile(file="scorer.onnx", inputs=list(SCORER_INPUTS), outputs=["score"],
                                         parity=export_scorer(loaded.scorer, tmp / "scorer.onnx", scorer_feeds))

        # Tables.
        attributes = item_attributes(Path(dataset or ckpt["dataset"]) / "items.parquet", ds.item_ids)
        _write_items(tmp / "items.parquet", ds, vecs, ckpt["popularity"], attributes)
        if attributes is not None:
            log(f"item attributes: {sum(a is not None for a in attributes):,} of {len(attributes):,} items "
                f"({', '.join(sorted({k for a in attributes if a for k in json.loads(a)})[:10])})")
        _write_history(tmp / "history.parquet", ds, HISTORY_SNAPSHOT)
        src_accounts = Path(dataset or ckpt["dataset"]) / "accounts.parquet"
        if src_accounts.is_file():
            shutil.copy2(src_accounts, tmp / "accounts.parquet")
        np.savez(tmp / "knn.npz", index=ckpt["knn_index"].astype(np.int32),
                 weight=ckpt["knn_weight"].astype(np.float32))
        # The items' knowledge-graph entities: reasons, KG candidates and KG features read them (a dataset without
        # a KG: no kg.npz, and the service computes as training did, with an empty table).
        kg_file = None
        if not ranker.kg.is_empty:
            kg_file = "kg.npz"
            ranker.kg.save(tmp / kg_file)
        # ALS item factors: the scorer's ALS feature and candidates (a scorer trained without them: no als.npz).
        als_file = None
        if ranker.als is not None:
            als_file = "als.npz"
            ranker.als.save(tmp / als_file)
        # The retrieval indexes, built here with every core, so that the service only reads them.
        started = time.perf_counter()
        indexes = write_indexes(tmp, list(ds.platforms), np.asarray(ds.item_platform), vecs.astype(np.float32),
                                index_params or IndexParams())
        log(f"indexes: {', '.join(f'{p} {e.kind} ({e.items:,} items{_index_note(e)})' for p, e in indexes.items())}"
            f" in {time.perf_counter() - started:.1f}s")

        tlog = ckpt.get("log", {})
        evaluation = {"train": tlog.get("two_tower", {}).get("best_valid_ndcg@10"),
                      "scorer": tlog.get("scorer", {}).get("best_valid_ndcg@10"),
                      # what the scorer ranks by: "trained", or the fixed ranking (a baseline) chosen on valid
                      "ranks_as": tlog.get("scorer", {}).get("start"),
                      "new_to_platform_ranks_as": tlog.get("new_to_platform", {}).get("chosen"),
                      "variants": variant_report}
        metrics_file = checkpoint.parent / "metrics-test.json"
        if metrics_file.is_file():
            evaluation["test"] = _summary(json.loads(metrics_file.read_text()))
        manifest = Manifest(model_version=version, dim=cfg.dim, platforms=ds.platforms,
                            max_history=cfg.max_history, n_time_buckets=cfg.n_time_buckets,
                            history_snapshot=HISTORY_SNAPSHOT,
                            max_length=cfg.text_max_length,
                            scorer_extras=list(scorer_features(ranker.kg_features, ranker.als is not None)),
                            retrieval_candidates=ranker.candidates,
                            knn_candidates=ranker.knn_candidates, knn_decay=float(ckpt.get("knn_decay", 1.0)),
                            kg=kg_file, kg_candidates=ranker.kg_candidates if kg_file else 0,
                            als=als_file, als_candidates=ranker.als_candidates if als_file else 0,
                            models=models, indexes=indexes,
                            salt_fingerprint=salt_fingerprint(salt) if salt else "",
                            cutoff_ts=int(ds.timelines.ts.max()) if len(ds.timelines.ts) else None,
                            evaluation=evaluation)
        write_manifest(tmp, manifest)
    log(f"bundle written: {out}")
    return out


def _index_note(e: IndexFile) -> str:
    """What export chose for an approximate index and the recall@100 it measured there."""
    if e.kind == "ivf" and e.ivf_recall is not None:
        return f", {e.ivf_nlist} lists, nprobe {e.ivf_nprobe}: recall@100 {e.ivf_recall:.3f}"
    if e.kind == "hnsw" and e.hnsw_recall is not None:
        return f", efSearch {e.hnsw_ef_search}: recall@100 {e.hnsw_recall:.3f}"
    return ""


def _floats(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, int | float)}


def _summary(metrics: dict) -> dict[str, object]:
    return {m: {p: r[p]["overall"] for p in r if "overall" in r[p]} for m, r in metrics.items()}


def _measure_variants(tmp: Path, tok_dir: Path, cfg: ModelConfig, ds, ranker: Ranker, valid, log) -> dict:
    out: dict[str, dict] = {}
    plats = ds.item_platform.tolist()
    fp32 = embed_onnx(tmp / "item_encoder.onnx", tok_dir, cfg.text_max_length, ds.titles, plats)
    base = _text_only_ndcg(ranker, fp32, valid)
    out["fp32"] = {"valid_text_only_ndcg@10": base}
    q8 = embed_onnx(tmp / "item_encoder.int8.onnx", tok_dir, cfg.text_max_length, ds.titles, plats)
    nd = _text_only_ndcg(ranker, q8, valid)
    cmp = compare_vectors(fp32, q8)
    drop = (base - nd) / base if base > 0 else 0.0
    out["int8"] = {"valid_text_only_ndcg@10": nd, "relative_drop": drop, **_floats(cmp),
                   "recommended": bool(drop < MAX_RELATIVE_NDCG_DROP)}
    log(f"item encoder int8: cosine to fp32 {cmp.get('cosine_min', float('nan')):.4f} (min), "
        f"text-only valid NDCG@10 {nd:.4f} vs fp32 {base:.4f} ({drop:+.1%} drop) → "
        f"{'recommended' if out['int8']['recommended'] else 'not recommended'}")
    return out


def _write_items(path: Path, ds, vecs: np.ndarray, popularity: np.ndarray,
                 attributes: list[str | None] | None = None) -> None:
    dim = vecs.shape[1]
    columns = {
        "item_id": ds.item_ids,
        "platform": [ds.platforms[p] for p in ds.item_platform],
        "title": ds.titles,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.astype(np.float32).ravel()), dim),
        "popularity": pa.array(np.asarray(popularity).astype(np.int64)),
    }
    if attributes is not None:  # what the service's filters and diversity caps read (app/services/rules.py)
        columns["attributes"] = pa.array(attributes, pa.string())
    pq.write_table(pa.table(columns), path)


# The dataset's items.parquet columns that are not attributes.
ITEM_COLUMNS = ("item_id", "platform", "title")


def item_attributes(items_file: Path, item_ids: list[str]) -> list[str | None] | None:
    """The catalog attributes of the dataset's items, for the bundle's items.parquet `attributes` column: one
    JSON object per item of `item_ids` (null: none), or None when the dataset has no attributes at all.

    Read from the dataset's items.parquet: an `attributes` column (a JSON object per item, or an Arrow
    struct/map), and every other column beside item_id, platform and title, each one attribute named by the
    column (null: the item does not have it). Values as the service keeps them: strings; numbers (finite);
    booleans as "true"/"false"; dates and times in ISO 8601; anything else left out. A named column wins over
    the same name inside `attributes`.
    """
    if not items_file.is_file():
        return None
    names = pq.read_schema(items_file).names
    extra = [c for c in names if c not in ITEM_COLUMNS]
    if not extra:
        return None
    table = pq.read_table(items_file, columns=["item_id", *extra])
    by_id: dict[str, dict[str, str | float]] = {}
    ids = table.column("item_id").to_pylist()
    packed = table.column("attributes").to_pylist() if "attributes" in extra else [None] * len(ids)
    named = {c: table.column(c).to_pylist() for c in extra if c != "attributes"}
    for i, item in enumerate(ids):
        attrs: dict[str, str | float] = {}
        raw = packed[i]
        if isinstance(raw, str) and raw.strip():
            try:
                raw = json.loads(raw)
            except ValueError as e:
                raise ValueError(f"{items_file}: item {item!r}: attributes are not JSON: {e}") from None
        if isinstance(raw, list):  # an Arrow map column reads as (key, value) pairs
            raw = dict(raw)
        if isinstance(raw, dict):
            for k, v in raw.items():
                value = _attribute_value(v)
                if value is not None:
                    attrs[str(k)] = value
        for name, values in named.items():
            value = _attribute_value(values[i])
            if value is not None:
                attrs[name] = value
        by_id[item] = attrs
    out = [json.dumps(by_id[i], ensure_ascii=False, sort_keys=True) if by_id.get(i) else None for i in item_ids]
    return out if any(a is not None for a in out) else None


def _attribute_value(v: object) -> str | float | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, str):
        return v
    if isinstance(v, datetime | date):
        return v.isoformat()
    return None


def _write_history(path: Path, ds, max_history: int) -> None:
    """Each person's last `max_history` events at the training cut-off: the service's cold cache."""
    tl = ds.timelines
    persons, platforms, items, ts = [], [], [], []
    for p in range(len(tl)):
        lo, hi = int(tl.offsets[p]), int(tl.offsets[p + 1])
        lo = max(lo, hi - max_history)
        n = hi - lo
        persons.extend([tl.persons[p]] * n)
        platforms.extend(ds.platforms[x] for x in tl.platforms[lo:hi])
        items.extend(ds.item_ids[x] for x in tl.items[lo:hi])
        ts.extend(tl.ts[lo:hi].tolist())
    pq.write_table(pa.table({"person": persons, "platform": platforms, "item_id": items,
                             "ts": pa.array(ts, type=pa.int64())}), path)
