"""One Settings class for every xrec program (service, training, export), read from `XREC_*` env vars."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from contract.indexes import IndexParams

DEV_ID_SALT = "xrec-dev-salt-change-me"
# The name of the one variant when XREC_VARIANTS is not set (responses and metrics still name it).
DEFAULT_VARIANT = "default"
VARIANT_NAME = r"^[A-Za-z0-9_.-]{1,32}$"


class VariantSpec(BaseModel):
    """One arm of an A/B test: a name, its bundle folder, its share of persons."""

    name: str = Field(pattern=VARIANT_NAME)
    bundle_dir: Path
    share: float = Field(gt=0.0, le=1.0)


def parse_variants(text: str) -> list[VariantSpec]:
    """`name=/path/to/bundle:share,name2=/path2:share2` (shares are weights: they are scaled to sum to 1)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, eq, rest = part.partition("=")
        path, colon, share = rest.rpartition(":")
        if not eq or not colon or not path:
            raise ValueError(f"XREC_VARIANTS: {part!r} is not name=/bundle/dir:share")
        try:
            weight = float(share)
        except ValueError:
            raise ValueError(f"XREC_VARIANTS: {part!r}: the share {share!r} is not a number") from None
        out.append({"name": name.strip(), "bundle_dir": path.strip(), "share": weight})
    return [VariantSpec.model_validate(v) for v in out]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XREC_", env_file=".env", extra="ignore")

    # Where raw platform logs live when a mapping file does not say otherwise.
    data_root: Path = Path("../shared/data/food-kitchen")
    # Key for pseudonymising account ids; training and serving must share it.
    id_salt: SecretStr = SecretStr(DEV_ID_SALT)

    # ---- service: the bundle -------------------------------------------------------------------------
    # The bundle folder to serve; none means /readyz answers 503 until POST /v1/admin/reload names one.
    bundle_dir: Path | None = None
    # Hash every bundle file against its manifest before serving it (seconds for a large bundle).
    verify_bundle: bool = True
    # A/B test: several bundles served side by side, each person in one of them by a keyed hash of the
    # person id (`name=/bundle/dir:share,…`; shares are weights). Set, it replaces `bundle_dir`.
    variants: Annotated[list[VariantSpec], NoDecode] = Field(default_factory=list)
    # The key of that hash: another key is another random split of the same persons.
    variant_salt: SecretStr = SecretStr("xrec-variants-1")

    # ---- service: ONNX Runtime and FAISS ---------------------------------------------------------------
    # Execution providers in order of preference; empty = CUDA when onnxruntime-gpu sees a GPU, else CPU.
    ort_providers: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Threads per ONNX call. 1 suits a server: concurrency comes from requests, not from one matmul.
    ort_intra_op_threads: int | None = 1
    faiss_threads: int = 1
    # numpy's BLAS (OpenBLAS) threads. 1: its worker threads spin while they wait for work, and a cold request's
    # small matrix products (ALS candidate scores, explanations) then cost twice the CPU for the same time and take
    # the second core from the request threads (bench/cold_path.py: 7.3 ms CPU a request at 2, 3.9 at 1).
    blas_threads: int = 1
    # Catalogs of up to this many rows get every row's response JSON pieces made at load (~2 s per 100k rows
    # here); a larger one makes them on first use (a 1M catalog would spend seconds and ~200 MB on them).
    prerender_max_rows: int = 200_000
    # Platforms with more items than this get an HNSW index; smaller ones an exact flat index.
    hnsw_threshold: int = 50_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    # HNSW's efSearch: 0 = the bundle's (chosen at export: the smallest reaching XREC_HNSW_TARGET_RECALL, recall@100
    # against exact on its own items; 256 for a bundle from before); set, it overrides every HNSW index's.
    hnsw_ef_search: int = 0
    hnsw_target_recall: float = 0.97
    # Platforms with more items than this get an IVF index (IndexIVFFlat, ≈ 4·sqrt(n) lists), its nprobe chosen
    # at export: the fewest lists reaching XREC_IVF_TARGET_RECALL (recall@100 against exact) on its own items.
    ivf_threshold: int = 500_000
    ivf_target_recall: float = 0.97
    # IVF lists searched per query: 0 = the bundle's (chosen at export); set, it overrides every IVF index's.
    ivf_nprobe: int = 0

    # ---- service: Redis -----------------------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every key starts with this; tests use a per-test prefix. Profiles: {prefix}:{model_version}:profile:{p}.
    redis_prefix: str = "xrec"
    # Short timeouts: a dead Redis must cost a request milliseconds, not seconds (we fall back to memory).
    redis_socket_timeout_s: float = 0.25
    redis_connect_timeout_s: float = 0.25
    # After a Redis error, skip Redis for this long, doubling up to the max until a call succeeds.
    redis_backoff_min_s: float = 0.5
    redis_backoff_max_s: float = 10.0
    profile_ttl_s: int = 24 * 3600
    # How long an event id is remembered for idempotency, and a person's recent events are kept.
    event_ttl_s: int = 30 * 24 * 3600
    # Events kept per person (the fused history the models see is the newest `max_history` of these).
    profile_max_events: int = 256
    stream_maxlen: int = 1_000_000

    # ---- service: in-process caches --------------------------------------------------------------------
    # Final ranked lists per (person, platform, model version, exclude_seen): a warm request is a dict lookup.
    ranked_cache_size: int = 20_000
    ranked_cache_depth: int = 50
    ranked_cache_ttl_s: float = 300.0
    # Python's garbage collector (gen0, gen1, gen2 thresholds), set after start-up froze what it loaded
    gc_thresholds: tuple[int, int, int] = (50_000, 20, 100)
    # Profiles kept in memory: the fallback while Redis is down.
    profile_lru_size: int = 50_000
    embed_cache_size: int = 10_000
    # POST /v1/items/audience (app/services/audience.py): user vectors of at most this many snapshot persons
    # (the most recently active) per platform, kept for the loaded bundle (64-d: 256 bytes each); the persons
    # with events since the bundle are read fresh on each request, at most this many of them too. The best
    # `audience_rescore` by u·v are re-scored with the scorer.
    audience_max_persons: int = Field(default=100_000, ge=1)
    audience_rescore: int = Field(default=1_000, ge=1)

    # ---- service: durability -----------------------------------------------------------------------------
    # Append-only JSONL of every acknowledged event (fsync'd before the ack) and of catalog changes.
    events_dir: Path = Path("var/events")
    # A replay of the event log (startup, Redis recovery) says how far it is every this many seconds.
    replay_progress_s: float = 5.0

    # ---- service: logs -----------------------------------------------------------------------------------------
    # The service's own log lines (loggers app.*, xrec.*): level, and JSON lines (else plain text).
    log_level: str = "INFO"
    log_json: bool = True

    # ---- service: API -----------------------------------------------------------------------------------------
    # Accepted X-API-Key values (comma-separated in the env var). Every /v1 route needs one (reads: see below).
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Require a key on the read routes (/v1/recommend, /v1/rank) too. Off: keyless reads are served, but
    # their `reasons` name items of the requested platform only (a raw account id of one shop must not
    # reveal what that person did on another); a read that sends a valid key gets every platform's.
    read_auth: bool = True
    max_body_bytes: int = 1 << 20
    max_batch_body_bytes: int = 64 << 20
    # A request body must arrive in full within this many seconds of the first read, else 408 and the
    # connection is closed (0: no limit). 64 MB of batch body in 30 s needs ~2 MB/s.
    body_timeout_s: float = 30.0
    batch_chunk: int = 256
    n_reasons: int = 3
    # Request rules: a filter allowing at most this many items of a platform is searched exactly over them,
    # a larger one through the index with an adaptive over-fetch (app/services/retrieval.py).
    filter_exact_max: int = Field(default=20_000, ge=0)
    # The event type `diversity.exclude_bought_days` means when a request names none.
    purchase_event: str = Field(default="purchase", min_length=1, max_length=64)

    # ---- service: micro-batching of uncached /v1/recommend requests (app/services/batching.py) -----------
    # Requests that miss the ranked cache share one profile read, one user-encoder call, one FAISS search per
    # platform and one scorer call. The worker takes whatever is waiting; it waits up to this window for
    # more only while requests arrive closer together than the window (a lone request is never held).
    # 0: never wait (requests still share a batch when they queue up behind a running one).
    recommend_batch_window_ms: float = Field(default=1.0, ge=0.0, le=50.0)
    recommend_batch_max: int = Field(default=64, ge=1)
    # Requests waiting beyond this many are refused (503, Retry-After): an overload is not queued forever.
    recommend_queue_max: int = Field(default=1024, ge=1)
    # Two stages in two threads: profiles + user encoder, then candidates + scorer + JSON. One batch's ONNX,
    # FAISS and Redis calls (GIL released) overlap the other's Python. False: one thread does both.
    recommend_pipeline: bool = True
    # After POST /v1/events, rank each person's list for the events' platform ahead of their next request
    # (in the micro-batcher, with the uncached requests): the page view that follows an event is then a
    # cache hit. It costs one uncached recommendation per (person, platform) of each events call.
    refresh_after_events: bool = True
    # FAISS index files of a bundle are memory-mapped where FAISS can (flat vectors, IVF lists): pages are shared
    # between worker processes and loading does not copy them. False: read into memory.
    index_mmap: bool = True

    @field_validator("ort_providers", "api_keys", mode="before")
    @classmethod
    def _comma_list(cls, v: object) -> object:
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("variants", mode="before")
    @classmethod
    def _variants(cls, v: object) -> object:
        return parse_variants(v) if isinstance(v, str) else v

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: list[VariantSpec]) -> list[VariantSpec]:
        names = [s.name for s in v]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must differ: {names}")
        return v

    def index_params(self) -> IndexParams:
        """The FAISS index settings (XREC_HNSW_*, XREC_IVF_*, XREC_FAISS_THREADS): what export builds and what the
        service builds and searches with. Imported here, not at the top: only index builders need FAISS."""
        from contract.indexes import IndexParams

        return IndexParams(self.hnsw_threshold, self.hnsw_m, self.hnsw_ef_construction, self.hnsw_ef_search,
                           self.hnsw_target_recall, self.faiss_threads, ivf_threshold=self.ivf_threshold,
                           ivf_target_recall=self.ivf_target_recall, ivf_nprobe=self.ivf_nprobe)


@lru_cache
def get_settings() -> Settings:
    return Settings()
