"""Load a bundle folder (layout: `contract.bundle`) into what the service runs: sessions, tables, indexes
(read from the bundle's index files, memory-mapped; built here for a bundle without them).

Loading is all-or-nothing and touches no shared state, so /v1/admin/reload can load a new bundle while
the old one keeps serving, then swap one reference.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.core.config import Settings
from app.services.onnx import active_provider, make_session, select_providers
from app.services.ranking import Models
from app.services.retrieval import Catalog, IndexParams, PlatformIndex
from app.services.text_embedder import TextEmbedder
from contract.als import AlsFactors
from contract.bundle import (
    BundleError,
    Manifest,
    check_compatible,
    read_manifest,
    salt_fingerprint,
    verify_files,
)
from contract.features import KnnTable
from contract.indexes import HNSW_EF_DEFAULT, NO_IVF, index_rows, read_index
from contract.kg import ItemEntities

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Snapshot:
    """history.parquet: each person's fused history at the bundle's cut-off (CSR by person)."""

    spans: dict[str, tuple[int, int]]
    item_ids: list[str]
    platforms: np.ndarray  # int64 platform ids
    ts: np.ndarray  # int64
    kinds: list[str | None] | None = None  # event types, when history.parquet has an `event` column

    def events(self, person: str) -> tuple[list[str], list[int], list[int]]:
        span = self.spans.get(person)
        if span is None:
            return [], [], []
        lo, hi = span
        return self.item_ids[lo:hi], self.platforms[lo:hi].tolist(), self.ts[lo:hi].tolist()

    def event_types(self, person: str) -> list[str | None]:
        lo, hi = self.spans.get(person, (0, 0))
        return self.kinds[lo:hi] if self.kinds is not None else [None] * (hi - lo)

    def __contains__(self, person: str) -> bool:
        return person in self.spans


@dataclass
class LoadedBundle:
    path: Path
    manifest: Manifest
    models: Models
    embedder: TextEmbedder
    snapshot: Snapshot
    accounts: dict[str, str]  # account key (platform is inside the hash) → person
    provider: str
    catalog: Catalog  # replaced (never modified) by catalog changes; see app.services.retrieval
    platform_of: dict[str, int] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    # Serialises catalog writers; readers just read `catalog` once per request.
    catalog_lock: threading.Lock = field(default_factory=threading.Lock)
    # JSON pieces of catalog rows, made on first use (a row's item id and title never change: a changed
    # item gets a new row): (row, "result") → b'{"item_id":…,"title":…,"score":', (row, "reason") →
    # b'{"item_id":…,"platform":…,"weight":'.
    row_json: dict[tuple[int, str], bytes] = field(default_factory=dict)

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    @property
    def platforms(self) -> list[str]:
        return self.manifest.platforms


def model_file(manifest: Manifest, name: str) -> str:
    """The file of a model in the variant the manifest recommends (fp32 = the plain file)."""
    entry = manifest.models.get(name)
    if entry is None:
        raise BundleError(f"manifest lists no model {name!r} (has {sorted(manifest.models)})")
    if entry.recommended != "fp32" and entry.recommended in entry.variants:
        return entry.variants[entry.recommended]
    return entry.file


def _vectors(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    values = column.combine_chunks()
    flat = values.flatten() if hasattr(values, "flatten") else values.values
    vecs = flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if vecs.size != len(values) * dim:
        raise BundleError(f"items.parquet: vectors are not all of dimension {dim}")
    return vecs.reshape(len(values), dim)


def _read(path: Path, columns: list[str]) -> pa.Table:
    if not path.is_file():
        raise BundleError(f"{path}: missing")
    table = pq.read_table(path)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise BundleError(f"{path}: missing columns {missing}")
    return table


def _attributes(items: pa.Table) -> list[dict[str, str | float] | None] | None:
    """items.parquet's optional `attributes` column: a JSON object per item (string or number values; a
    boolean becomes "true"/"false", anything else is left out), or null."""
    if "attributes" not in items.column_names:
        return None
    out: list[dict[str, str | float] | None] = []
    for i, raw in enumerate(items.column("attributes").to_pylist()):
        if raw is None or raw == "":
            out.append(None)
            continue
        try:
            d = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError as e:
            raise BundleError(f"items.parquet: row {i}: attributes are not JSON: {e}") from None
        if not isinstance(d, dict):
            raise BundleError(f"items.parquet: row {i}: attributes must be a JSON object")
        attrs: dict[str, str | float] = {}
        for k, v in d.items():
            if isinstance(v, bool):
                attrs[str(k)] = "true" if v else "false"
            elif isinstance(v, str):
                attrs[str(k)] = v
            elif isinstance(v, int | float) and math.isfinite(v):
                attrs[str(k)] = float(v)
        out.append(attrs or None)
    return out


def _read_indexes(path: Path, manifest: Manifest, item_platform: np.ndarray, settings: Settings
                  ) -> dict[int, PlatformIndex]:
    """The FAISS indexes built at export (`contract.indexes`), each checked against items.parquet."""
    platform_of = {p: i for i, p in enumerate(manifest.platforms)}
    out = {}
    for name, entry in manifest.indexes.items():
        pid = platform_of.get(name)
        if pid is None:
            raise BundleError(f"manifest.json: an index for {name!r}, which is not one of {manifest.platforms}")
        index = read_index(path / entry.file, mmap=settings.index_mmap)
        rows = np.flatnonzero(item_platform == pid)
        if int(index.d) != manifest.dim or not np.array_equal(index_rows(index), rows):
            raise BundleError(f"{entry.file}: {index.ntotal} vectors of dimension {index.d}; items.parquet has "
                              f"{len(rows)} {name} items of dimension {manifest.dim}: re-export the bundle")
        # The bundle's build choices stand (a manifest from before IVF: never IVF); so do its search-time ones
        # (efSearch, nprobe) unless the service sets its own.
        params = IndexParams(entry.hnsw_threshold, entry.hnsw_m, entry.hnsw_ef_construction,
                             settings.hnsw_ef_search or entry.hnsw_ef_search or HNSW_EF_DEFAULT,
                             entry.hnsw_target_recall or settings.hnsw_target_recall, settings.faiss_threads,
                             ivf_threshold=NO_IVF if entry.ivf_threshold is None else entry.ivf_threshold,
                             ivf_target_recall=entry.ivf_target_recall or settings.ivf_target_recall,
                             ivf_nprobe=settings.ivf_nprobe)
        out[pid] = PlatformIndex.from_file(index, entry.kind, params, mapped=settings.index_mmap,
                                           nprobe=entry.ivf_nprobe)
    return out


def load_bundle(path: Path, settings: Settings) -> LoadedBundle:
    """Read, check and load a bundle. Raises BundleError with a reason a person can act on."""
    try:
        return _load(path, settings)
    except BundleError:
        raise
    except Exception as e:  # a corrupt ONNX or parquet file, unreadable files: still "this bundle is bad"
        raise BundleError(f"{path}: {type(e).__name__}: {e}") from e


def _load(path: Path, settings: Settings) -> LoadedBundle:
    started = time.perf_counter()
    path = Path(path).resolve()
    manifest = read_manifest(path)
    if settings.verify_bundle:
        problems = verify_files(path, manifest)
        if problems:
            raise BundleError(f"{path}: " + "; ".join(problems[:5]))
    salt = settings.id_salt.get_secret_value()
    if manifest.salt_fingerprint and manifest.salt_fingerprint != salt_fingerprint(salt):
        raise BundleError(f"{path}: built with a different id salt than XREC_ID_SALT: accounts would not "
                          "be found")
    incompatible = check_compatible(manifest, settings.profile_max_events)
    if incompatible:
        raise BundleError(f"{path / 'manifest.json'}: " + "; ".join(incompatible))
    platform_of = {p: i for i, p in enumerate(manifest.platforms)}

    faiss.omp_set_num_threads(settings.faiss_threads)
    providers = select_providers(settings.ort_providers, ort.get_available_providers())
    threads = settings.ort_intra_op_threads
    user_encoder = make_session(path / model_file(manifest, "user_encoder"), providers, threads)
    scorer = make_session(path / model_file(manifest, "scorer"), providers, threads) if manifest.has_scorer else None
    embedder = TextEmbedder(path / model_file(manifest, "item_encoder"), path / manifest.tokenizer_dir,
                            manifest.max_length, providers, threads)

    items = _read(path / "items.parquet", ["item_id", "platform", "title", "vector", "popularity"])
    item_ids = items.column("item_id").to_pylist()
    unknown = set(items.column("platform").to_pylist()) - set(platform_of)
    if unknown:
        raise BundleError(f"items.parquet: platforms {sorted(unknown)} not in the manifest")
    item_platform = np.array([platform_of[p] for p in items.column("platform").to_pylist()], dtype=np.int64)
    vectors = _vectors(items.column("vector"), manifest.dim)
    popularity = items.column("popularity").to_numpy(zero_copy_only=False).astype(np.float64)
    params = settings.index_params()
    indexes = _read_indexes(path, manifest, item_platform, settings)
    if indexes:  # the bundle's choices (kind, HNSW/IVF build parameters) stand; catalog changes keep to them
        params = next(iter(indexes.values())).params
    # Platforms the bundle has no index file for (all of them, for a bundle exported before index files)
    # are indexed here.
    catalog = Catalog.build(item_ids, item_platform, items.column("title").to_pylist(), vectors, popularity,
                            len(manifest.platforms), params, indexes, _attributes(items), settings.filter_exact_max)

    knn = np.load(path / "knn.npz")
    knn_index, knn_weight = knn["index"].astype(np.int64), knn["weight"].astype(np.float32)
    if knn_index.shape[0] != len(item_ids):
        raise BundleError(f"knn.npz: {knn_index.shape[0]} rows, items.parquet has {len(item_ids)}")
    # The items' entities: a bundle exported without a knowledge graph (or before it) has none.
    kg = ItemEntities.load(path / manifest.kg) if manifest.kg else ItemEntities.empty(len(item_ids))
    if kg.n_items != len(item_ids):
        raise BundleError(f"{manifest.kg}: {kg.n_items} rows, items.parquet has {len(item_ids)}")
    als = AlsFactors.load(path / manifest.als, item_platform) if manifest.als_features and manifest.als else None
    if als is not None and als.n_rows != len(item_ids):
        raise BundleError(f"{manifest.als}: {als.n_rows} rows, items.parquet has {len(item_ids)}")
    models = Models(user_encoder, scorer, manifest.retrieval_candidates,
                    KnnTable(knn_index, knn_weight, manifest.max_history, manifest.knn_decay), manifest.knn_candidates,
                    kg, manifest.kg_candidates, manifest.kg_features, als, manifest.als_candidates)

    hist = _read(path / "history.parquet", ["person", "platform", "item_id", "ts"])
    hist = hist.filter(pc.is_in(hist.column("platform"), value_set=pa.array(manifest.platforms)))
    # Stable sort by person then time keeps each person's timeline in order, whatever the file's order.
    hist = hist.sort_by([("person", "ascending"), ("ts", "ascending")])
    persons = hist.column("person").to_pylist()
    spans: dict[str, tuple[int, int]] = {}
    start = 0
    for i in range(1, len(persons) + 1):
        if i == len(persons) or persons[i] != persons[start]:
            spans[persons[start]] = (start, i)
            start = i
    snapshot = Snapshot(spans, hist.column("item_id").to_pylist(),
                        np.array([platform_of[p] for p in hist.column("platform").to_pylist()],
                                 dtype=np.int64),
                        hist.column("ts").to_numpy(zero_copy_only=False).astype(np.int64),
                        hist.column("event").to_pylist() if "event" in hist.column_names else None)

    acc = _read(path / "accounts.parquet", ["platform", "account", "person"])
    accounts = dict(zip(acc.column("account").to_pylist(), acc.column("person").to_pylist(), strict=True))

    bundle = LoadedBundle(path, manifest, models, embedder, snapshot, accounts,
                          active_provider(user_encoder), catalog, platform_of)
    log.info("loaded bundle %s (model %s, %d items, %d persons, %s) in %.1fs", path, manifest.model_version,
             len(item_ids), len(spans), bundle.provider, time.perf_counter() - started)
    return bundle
