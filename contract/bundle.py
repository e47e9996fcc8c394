"""The bundle: the one contract between training/export and the service.

A bundle is a folder `bundles/<version>/`:

  manifest.json          this module's `Manifest`
  item_encoder.onnx      input_ids int64 [B,T], attention_mask int64 [B,T], platform int64 [B]
                         → item_vec float32 [B,D] (unit norm; text only — a new item has no ID part)
  user_encoder.onnx      hist_vecs float32 [B,L,D], hist_platform int64 [B,L], hist_bucket int64 [B,L],
                         hist_mask bool [B,L], target_platform int64 [B] → user_vec float32 [B,D] (unit norm)
  scorer.onnx            (optional) user_vec float32 [N,D], item_vec float32 [N,D], extras float32 [N,E] → score [N]
  (variants, e.g. item_encoder.int8.onnx, listed in manifest.models[*].variants)
  tokenizer/             tokenizer files for the item encoder (Hugging Face format)
  items.parquet          item_id, platform, title, vector (list<float32>[D]), popularity (int64)
  history.parquet        person, platform, item_id, ts — each person's recent fused history at the cut-off
  accounts.parquet       platform, account (keyed hash), person
  knn.npz                index int32 [n_items, K] (rows of items.parquet, -1 = none), weight float32 [n_items, K]
  kg.npz                 (optional, manifest.kg) the items' knowledge-graph entities (`contract.kg.ItemEntities`):
                         offsets int64 [n_items + 1], entities int32, names str [n_entities], kinds int8
                         [n_entities]. Without it: no entity reasons, no KG candidates, KG features 0.
  indexes/<p>.faiss      (optional) platform p's retrieval index, FAISS ids = item rows (`contract.indexes`);
                         listed in manifest.indexes. Without them the service builds the indexes at start.

Platform ids: index into `manifest.platforms`; in `hist_platform` they are shifted by one (0 = padding).
`target_platform` is NOT shifted. Inputs are built by `contract.features`, the same code offline and online.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from contract.features import ALS_EXTRAS, HISTORY_SNAPSHOT, KG_EXTRAS, N_TIME_BUCKETS, SCORER_EXTRAS, scorer_features

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
ITEM_ENCODER_INPUTS = ("input_ids", "attention_mask", "platform")
USER_ENCODER_INPUTS = ("hist_vecs", "hist_platform", "hist_bucket", "hist_mask", "target_platform")
SCORER_INPUTS = ("user_vec", "item_vec", "extras")
MODEL_INPUTS = {"item_encoder": ITEM_ENCODER_INPUTS, "user_encoder": USER_ENCODER_INPUTS, "scorer": SCORER_INPUTS}
REQUIRED_MODELS = ("item_encoder", "user_encoder")


class ModelFile(BaseModel):
    file: str
    inputs: list[str]
    outputs: list[str]
    variants: dict[str, str] = Field(default_factory=dict, description="name → file, e.g. int8")
    recommended: str = Field(default="fp32", description="the variant the service should load")
    parity: dict[str, float] = Field(default_factory=dict, description="e.g. cosine, max_abs_diff")


class IndexFile(BaseModel):
    """One platform's FAISS index (`contract.indexes`), built at export."""

    file: str
    kind: str = Field(description="flat (exact inner product) | hnsw | ivf")
    items: int = Field(description="vectors in it: the platform's items in items.parquet")
    hnsw_threshold: int = Field(description="the size above which export chose HNSW (catalog changes keep to it)")
    hnsw_m: int
    hnsw_ef_construction: int
    # HNSW's efSearch chosen at export (optional: a bundle from before has none; the service then searches 256)
    hnsw_ef_search: int | None = Field(default=None, description="kind hnsw: the efSearch chosen at export (the "
                                                                  "service's unless XREC_HNSW_EF_SEARCH is set)")
    hnsw_target_recall: float | None = Field(default=None, description="kind hnsw: the recall@100 efSearch was "
                                                                       "chosen for")
    hnsw_recall: float | None = Field(default=None, description="kind hnsw: recall@100 against exact at "
                                                                "hnsw_ef_search, measured at export on a sample of "
                                                                "its own items (None: efSearch was set, not chosen)")
    # IVF (optional: a bundle from before IVF has none of these, and its indexes are never IVF)
    ivf_threshold: int | None = Field(default=None, description="the size above which export chose IVF "
                                                                "(catalog changes keep to it); None: never")
    ivf_target_recall: float | None = Field(default=None, description="the recall@100 nprobe was chosen for")
    ivf_nlist: int | None = Field(default=None, description="kind ivf: its lists")
    ivf_nprobe: int | None = Field(default=None, description="kind ivf: lists searched per query (the service's "
                                                             "unless XREC_IVF_NPROBE is set)")
    ivf_recall: float | None = Field(default=None, description="kind ivf: recall@100 against exact at ivf_nprobe, "
                                                              "measured at export on a sample of its own items")


class FileEntry(BaseModel):
    sha256: str
    bytes: int


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    model_version: str
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    dim: int
    platforms: list[str]
    max_history: int = Field(description="events the user encoder reads (the newest ones)")
    n_time_buckets: int
    history_snapshot: int = Field(default=HISTORY_SNAPSHOT,
                                  description="events per person in history.parquet, the most the scorer saw")
    tokenizer_dir: str = "tokenizer"
    max_length: int = 32
    scorer_extras: list[str]
    retrieval_candidates: int = 100
    knn_candidates: int = Field(default=0, description="item-KNN candidates added to retrieval's before re-ranking")
    knn_decay: float = Field(default=1.0, description="`decay` for features.knn_scores (recency weighting)")
    kg: str | None = Field(default=None, description="the items' entities file (kg.npz); None: no knowledge graph")
    kg_candidates: int = Field(default=0, description="knowledge-graph candidates added for people new to a "
                                                      "platform (contract.kg.kg_candidates)")
    als: str | None = Field(default=None, description="ALS item factors (als.npz); None: the scorer has no ALS "
                                                      "feature")
    als_candidates: int = Field(default=0, description="ALS candidates added before re-ranking (contract.als)")
    models: dict[str, ModelFile]
    indexes: dict[str, IndexFile] = Field(default_factory=dict, description="platform → its index file")
    files: dict[str, FileEntry] = Field(default_factory=dict)
    salt_fingerprint: str = Field(default="", description="sha256 of the id salt: the service checks it")
    cutoff_ts: int | None = None
    evaluation: dict[str, object] = Field(default_factory=dict)

    @property
    def has_scorer(self) -> bool:
        return "scorer" in self.models

    @property
    def kg_features(self) -> bool:
        """Whether the scorer reads the knowledge-graph features (`features.KG_EXTRAS`) after SCORER_EXTRAS."""
        return self.has_scorer and all(f in self.scorer_extras for f in KG_EXTRAS)

    @property
    def als_features(self) -> bool:
        """Whether the scorer reads the ALS feature (`features.ALS_EXTRAS`, from `als`) last."""
        return self.has_scorer and all(f in self.scorer_extras for f in ALS_EXTRAS)


class BundleError(Exception):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def salt_fingerprint(salt: str) -> str:
    return hashlib.sha256(("xrec-salt:" + salt).encode()).hexdigest()[:16]


def read_manifest(bundle_dir: Path) -> Manifest:
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: no manifest (is this a bundle folder?)")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: invalid manifest: {e}") from e
    if manifest.schema_version != SCHEMA_VERSION:
        raise BundleError(f"{path}: schema version {manifest.schema_version}, this xrec reads {SCHEMA_VERSION}")
    return manifest


def verify_files(bundle_dir: Path, manifest: Manifest) -> list[str]:
    """Problems with the bundle's files (missing, wrong size, wrong hash); empty when all is well."""
    problems = []
    for name, entry in sorted(manifest.files.items()):
        path = bundle_dir / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != entry.bytes:
            problems.append(f"{name}: size {path.stat().st_size} != manifest {entry.bytes}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{name}: sha256 differs from the manifest (file changed or corrupt)")
    return problems


def write_manifest(bundle_dir: Path, manifest: Manifest) -> Manifest:
    """Hash every file in the folder (except the manifest) into the manifest and write it."""
    files = {}
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(bundle_dir).as_posix()] = FileEntry(sha256=sha256_file(path),
                                                                   bytes=path.stat().st_size)
    manifest = manifest.model_copy(update={"files": files})
    (bundle_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return manifest


_REEXPORT = ": re-export the model with this version"


def check_compatible(manifest: Manifest, profile_max_events: int | None = None) -> list[str]:
    """Why this code cannot serve the bundle as it was trained (empty: it can).

    Every constant the service computes inputs with must be the one the models were trained and exported
    with; a mismatch would not fail, it would silently rank worse.
    """
    problems = []
    missing = [m for m in REQUIRED_MODELS if m not in manifest.models]
    if missing:
        problems.append(f"no {', '.join(missing)} in the manifest")
    for name, entry in manifest.models.items():
        expected = MODEL_INPUTS.get(name)
        if expected is not None and tuple(entry.inputs) != expected:
            problems.append(f"{name} takes {entry.inputs}, this version feeds {list(expected)}{_REEXPORT}")
    if manifest.n_time_buckets != N_TIME_BUCKETS:
        problems.append(f"trained with {manifest.n_time_buckets} time buckets, this version computes "
                        f"{N_TIME_BUCKETS}{_REEXPORT}")
    known = [list(scorer_features(kg, als)) for kg in (False, True) for als in (False, True)]
    if manifest.has_scorer and manifest.scorer_extras not in known:
        problems.append(f"the scorer was trained on features {manifest.scorer_extras}, this version computes "
                        f"{list(SCORER_EXTRAS)} (+ {list(KG_EXTRAS)} with the knowledge graph, + "
                        f"{list(ALS_EXTRAS)} with ALS){_REEXPORT}")
    if manifest.als_features and not manifest.als:
        problems.append(f"the scorer reads {list(ALS_EXTRAS)} but the manifest names no ALS file{_REEXPORT}")
    if manifest.max_history > manifest.history_snapshot:
        problems.append(f"max_history {manifest.max_history} > history_snapshot {manifest.history_snapshot}")
    if profile_max_events is not None and profile_max_events < manifest.history_snapshot:
        problems.append(f"XREC_PROFILE_MAX_EVENTS={profile_max_events} keeps fewer events than the "
                        f"{manifest.history_snapshot} the scorer's history features were computed on")
    return problems
