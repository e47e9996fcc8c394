"""Campaign scoring (`xrec batch score`): persons from a Parquet/CSV file → Parquet parts of their top-k items.

Ranking is the service's own code, not a copy of it: each worker builds the service's objects around the
bundle (`ServiceState`: the Redis-backed profile store and the recommender; catalog changes made online are
re-applied as at a service start) and runs `Recommender.batch_lines`, the code behind POST /v1/batch/score,
then adds each item's reasons with the recommender's `_explain`, as /v1/recommend does. Business rules
(`filters`, `diversity`: the JSON POST /v1/batch/score takes, validated by the same models) are applied by
that same code. A person's list
therefore equals /v1/recommend's answer for the same person, platform, k and `now` (tests/app/test_campaign.py).

The input is cut into parts of `part_size` rows: part i holds input rows [i·part_size, (i+1)·part_size) and
is written as out/part-{i:05d}.parquet (temp file, then rename: a part file is whole or absent). A rerun
into the same folder skips the parts already written, so a killed job resumes where it stopped.
out/_campaign.json records what the job is (bundle model version, platform, k, items, exclude_seen, now,
part size, input file, filters, diversity); a rerun must match it, and reuses its `now`, so resumed parts are
ranked at the same instant as the first ones.

Executors:
- Ray Data (default): each pending part is one row (its person columns as lists); `map_batches` runs them
  on a fixed pool of actors, one CPU each, each holding the bundle (ONNX and FAISS single-threaded), and
  the driver writes each part as it comes back. No address: a local Ray with `workers` CPUs (default:
  this machine's); an address: that cluster (xrec must be installed on its nodes; XREC_* settings are
  taken from the driver and shipped to the actors).
- In process (`use_ray=False`, `--no-ray`): the same scorer over the parts, one after another.

Output rows, one per person and recommended item: input_row (the person's row in the input file), person
(pseudonymous id), platform, rank (1 = best), item_id, score, cold_start, reasons (list of
{item_id, platform, weight}: the history items behind the recommendation, as in /v1/recommend).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from app.core.config import Settings
from contract.bundle import BundleError, read_manifest

JOB_FILE = "_campaign.json"
PERSON_COLUMNS = ("person_id", "account_id", "account_platform")
DEFAULT_PART_SIZE = 10_000

REASON = pa.struct([("item_id", pa.string()), ("platform", pa.string()), ("weight", pa.float32())])
OUTPUT_SCHEMA = pa.schema([("input_row", pa.int64()), ("person", pa.string()), ("platform", pa.string()),
                           ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float32()),
                           ("cold_start", pa.bool_()), ("reasons", pa.list_(REASON))])
_PART_ROW = pa.schema([("part", pa.int64()), ("start", pa.int64())]
                      + [(c, pa.list_(pa.string())) for c in PERSON_COLUMNS])


class CampaignError(Exception):
    """Bad input, or an output folder that holds another campaign: a message a person can act on."""


def part_name(part: int) -> str:
    return f"part-{part:05d}.parquet"


@dataclass(frozen=True)
class Job:
    """What a campaign is; out/_campaign.json. Everything but `bundle` must match on a rerun."""

    bundle: str
    model_version: str
    platform: str
    k: int | None
    items: list[str] | None
    exclude_seen: bool
    now: int
    part_size: int
    persons: str
    # Business rules, as POST /v1/batch/score takes them (app.schemas Filters / Diversity, validated; JSON).
    filters: dict[str, Any] | None = None
    diversity: dict[str, Any] | None = None

    def differences(self, other: Job) -> list[str]:
        return [f"{name}: {getattr(other, name)!r} there, {getattr(self, name)!r} now"
                for name in ("model_version", "platform", "k", "items", "exclude_seen", "now", "part_size", "persons",
                             "filters", "diversity")
                if getattr(self, name) != getattr(other, name)]

    def rules(self, purchase_event: str) -> Any:
        """The job's filters and diversity as the recommender takes them (`app.services.rules.Rules`), or None."""
        from app.schemas import Diversity, Filters
        from app.services.rules import Rules

        filters = Filters.model_validate_json(json.dumps(self.filters)) if self.filters is not None else None
        diversity = Diversity.model_validate_json(json.dumps(self.diversity)) if self.diversity is not None else None
        return Rules.of(filters, diversity, purchase_event)


def check_rules(filters: dict[str, Any] | None, diversity: dict[str, Any] | None
                ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Validate --filters / --diversity with the models POST /v1/batch/score validates them with; returns them
    normalised (defaults left out). Raises CampaignError naming the option and the field."""
    from pydantic import ValidationError

    from app.schemas import Diversity, Filters

    out: list[dict[str, Any] | None] = []
    for name, model, value in (("filters", Filters, filters), ("diversity", Diversity, diversity)):
        if value is None:
            out.append(None)
            continue
        try:
            parsed = model.model_validate_json(json.dumps(value))
        except (ValidationError, TypeError, ValueError) as e:
            if isinstance(e, ValidationError) and e.errors():
                err = e.errors()[0]
                where = ".".join(str(x) for x in err["loc"])
                raise CampaignError(f"--{name}: {where + ': ' if where else ''}{err['msg']}") from None
            raise CampaignError(f"--{name}: {e}") from None
        out.append(parsed.model_dump(mode="json", exclude_defaults=True))
    return out[0], out[1]


def load_rule(text: str | None, name: str) -> dict[str, Any] | None:
    """A --filters / --diversity value: a JSON object, or @file holding one."""
    if text is None:
        return None
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise CampaignError(f"--{name}: {path}: no such file")
        text = path.read_text(encoding="utf-8")
    try:
        value = json.loads(text)
    except ValueError as e:
        raise CampaignError(f"--{name}: not JSON: {e}") from None
    if not isinstance(value, dict):
        raise CampaignError(f"--{name}: a JSON object, e.g. {_EXAMPLES[name]}")
    return value


_EXAMPLES = {"filters": '{"include": {"category": ["pans"]}, "exclude": {"brand": ["acme"]}}',
             "diversity": '{"max_per_value": {"brand": 2}, "exclude_bought_days": 30}'}


@dataclass
class PartResult:
    part: int
    persons: int
    rows: int
    cold: int
    degraded: bool


@dataclass
class Summary:
    out: Path
    mode: str
    workers: int
    persons: int = 0  # scored by this run
    parts: int = 0  # written by this run
    skipped_parts: int = 0  # already in the folder
    skipped_persons: int = 0
    rows: int = 0
    cold: int = 0
    degraded: bool = False
    seconds: float = 0.0
    first_part_s: float | None = None  # start → first part written (bundle loading, Ray start)

    @property
    def persons_per_s(self) -> float:
        return self.persons / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        first = f", first part after {self.first_part_s:.1f}s" if self.first_part_s is not None else ""
        degraded = ("; DEGRADED: Redis was unavailable, some lists lack events since the bundle"
                    if self.degraded else "")
        return (f"scored {self.persons:,} persons in {self.parts} parts ({self.skipped_parts} parts, "
                f"{self.skipped_persons:,} persons already done) → {self.rows:,} rows in {self.out}; "
                f"{self.seconds:.1f}s{first}, {self.persons_per_s:,.0f} persons/s, {self.mode} with "
                f"{self.workers} worker(s); {self.cold:,} cold start{degraded}")


# ---- input -----------------------------------------------------------------------------------------------

def read_parts(path: Path, part_size: int) -> Iterator[tuple[int, int, pa.Table]]:
    """(part, first input row, table of PERSON_COLUMNS as strings) for consecutive parts of `part_size`
    rows (the last may be shorter), streamed from a Parquet or CSV file."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CampaignError(f"{path}: no such file")
    if suffix in (".parquet", ".pq"):
        pf = pq.ParquetFile(path)
        columns = [c for c in PERSON_COLUMNS if c in pf.schema_arrow.names]
        _need_person_columns(path, columns)
        batches: Iterator[pa.RecordBatch] = pf.iter_batches(batch_size=min(part_size, 65_536), columns=columns)
    elif suffix == ".csv":
        with open(path, encoding="utf-8") as f:
            header = [h.strip().strip('"') for h in f.readline().rstrip("\r\n").split(",")]
        _need_person_columns(path, [c for c in PERSON_COLUMNS if c in header])
        convert = pacsv.ConvertOptions(include_columns=list(PERSON_COLUMNS), include_missing_columns=True,
                                       column_types={c: pa.string() for c in PERSON_COLUMNS},
                                       strings_can_be_null=True)
        batches = iter(pacsv.open_csv(path, convert_options=convert))
    else:
        raise CampaignError(f"{path}: persons must be a .parquet or .csv file")
    start = 0
    for part, table in enumerate(_rebatch((_normalise(b) for b in batches), part_size)):
        yield part, start, table
        start += table.num_rows


def count_rows(path: Path) -> int | None:
    """Input rows, when the file says so without reading it (Parquet metadata)."""
    if path.suffix.lower() in (".parquet", ".pq"):
        return pq.ParquetFile(path).metadata.num_rows
    return None


def _need_person_columns(path: Path, present: list[str]) -> None:
    if "person_id" not in present and "account_id" not in present:
        raise CampaignError(f"{path}: needs a person_id column, or account_id (+ account_platform, default "
                            "the campaign's platform)")


def _normalise(batch: pa.RecordBatch) -> pa.RecordBatch:
    cols = []
    for c in PERSON_COLUMNS:
        if c in batch.schema.names:
            col = batch.column(c)
            cols.append(col if col.type == pa.string() else pc.cast(col, pa.string()))
        else:
            cols.append(pa.nulls(batch.num_rows, pa.string()))
    return pa.RecordBatch.from_arrays(cols, names=list(PERSON_COLUMNS))


def _rebatch(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    pending: list[pa.RecordBatch] = []
    n = 0
    for batch in batches:
        while batch.num_rows:
            take = min(size - n, batch.num_rows)
            pending.append(batch.slice(0, take))
            n += take
            batch = batch.slice(take)
            if n == size:
                yield pa.Table.from_batches(pending).combine_chunks()
                pending, n = [], 0
    if n:
        yield pa.Table.from_batches(pending).combine_chunks()


def check_part(table: pa.Table, start: int, platforms: list[str]) -> None:
    """Every row names a person (person_id or account_id) and only platforms of the bundle."""
    neither = pc.and_(pc.is_null(table.column("person_id")), pc.is_null(table.column("account_id")))
    if pc.any(neither).as_py():
        i = int(pc.index(neither, True).as_py())
        raise CampaignError(f"input row {start + i}: neither person_id nor account_id")
    for p in pc.unique(table.column("account_platform").drop_null()).to_pylist():
        if p not in platforms:
            i = int(pc.index(table.column("account_platform"), p).as_py())
            raise CampaignError(f"input row {start + i}: unknown account_platform {p!r}; the bundle has {platforms}")


# ---- scoring (one per worker) -------------------------------------------------------------------------------

class _RememberingProfiles:
    """The recommender's profile store, remembering what its last `get` returned: `batch_lines` reads a
    chunk's profiles once, and the reasons need the same histories."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.last: dict[str, Any] = {}

    def get(self, *args: Any, **kwargs: Any) -> Any:
        profiles, degraded = self._store.get(*args, **kwargs)
        self.last = {p.person: p for p in profiles}
        return profiles, degraded

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class PartScorer:
    """Holds one bundle and the service's objects around it; scores whole parts. Ray Data's actor class
    (`__call__`: a batch of part rows in, a row per part out, the part's Parquet bytes in it)."""

    def __init__(self, settings: Settings, job: Job) -> None:
        from app.services.model_bundle import load_bundle
        from app.services.state import ServiceState

        self.job = job
        # Light: clients and caches, no I/O (the service's own wiring, so profiles come from the same Redis).
        self.state = ServiceState(settings)
        self.bundle = load_bundle(Path(job.bundle), settings)
        if self.bundle.model_version != job.model_version:
            raise CampaignError(f"{job.bundle}: model {self.bundle.model_version}, the job is for {job.model_version}")
        self.state.catalog.replay(self.bundle)  # items added/removed online, as a service start would
        self.rec = self.state.recommender
        self.profiles = _RememberingProfiles(self.rec.profiles)
        self.rec.profiles = self.profiles
        self.target = self.rec.platform_id(self.bundle, job.platform, ("platform",))
        self.rules = job.rules(settings.purchase_event)  # filters and diversity, as POST /v1/batch/score's
        self._ids: pa.Array | None = None
        self._ids_version = -1
        catalog = self.bundle.catalog
        for item in job.items or []:  # the check POST /v1/batch/score makes
            if not catalog.is_live(item) or int(catalog.platform[catalog.row_of[item]]) != self.target:
                raise CampaignError(f"item {item!r} is not a live {job.platform} item")

    def close(self) -> None:
        self.state.redis.close()

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list] = {"part": [], "persons": [], "rows": [], "cold": [], "degraded": [], "parquet": []}
        for i in range(batch.num_rows):
            cols = [batch.column(c)[i].values.to_pylist() for c in PERSON_COLUMNS]
            table, res = self.score(int(batch.column("part")[i].as_py()), int(batch.column("start")[i].as_py()),
                                    *cols)
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd")
            for key, value in (("part", res.part), ("persons", res.persons), ("rows", res.rows), ("cold", res.cold),
                               ("degraded", res.degraded), ("parquet", sink.getvalue().to_pybytes())):
                out[key].append(value)
        return pa.table(out)

    def score(self, part: int, start: int, person_ids: list[str | None], account_ids: list[str | None],
              account_platforms: list[str | None]) -> tuple[pa.Table, PartResult]:
        job, bundle, rec = self.job, self.bundle, self.rec
        persons = [rec.resolve_person(bundle, pid, acc, ap or job.platform, ("persons", start + j))
                   for j, (pid, acc, ap) in enumerate(zip(person_ids, account_ids, account_platforms, strict=True))]
        res = PartResult(part, len(persons), 0, 0, False)
        input_row: list[int] = []
        person: list[str] = []
        rank: list[int] = []
        item_id: list[str] = []
        score: list[float] = []
        cold: list[bool] = []
        reason_rows: list[np.ndarray] = []  # [n items, n_reasons] catalog rows, -1 padded (at the end)
        reason_w: list[np.ndarray] = []
        catalog = bundle.catalog
        for chunk in rec.batch_lines(bundle, persons=persons, target=self.target, item_ids=job.items, k=job.k,
                                     exclude_seen=job.exclude_seen, now=job.now, rules=self.rules):
            for line in chunk.splitlines():
                row = json.loads(line)
                if "index" not in row:  # the summary line
                    res.degraded |= bool(row.get("degraded"))
                    continue
                items = row["items"][:job.k] if job.k is not None else row["items"]
                res.cold += bool(row["cold_start"])
                n = len(items)
                if not n:
                    continue
                ids = [it["item_id"] for it in items]
                history = self.profiles.last[row["person_id"]].history(catalog)
                r_rows, r_w = rec._explain(bundle, catalog, history, catalog.vectors[catalog.rows_of(ids)],
                                           self.target, True)
                input_row += [start + row["index"]] * n
                person += [row["person_id"]] * n
                rank += range(1, n + 1)
                item_id += ids
                score += [it["score"] for it in items]
                cold += [row["cold_start"]] * n
                reason_rows.append(r_rows)
                reason_w.append(r_w)
        res.rows = len(rank)
        n_reasons = self.rec.n_reasons
        rr = np.concatenate(reason_rows) if reason_rows else np.zeros((0, n_reasons), dtype=np.int64)
        rw = np.concatenate(reason_w) if reason_w else np.zeros((0, n_reasons), dtype=np.float32)
        keep = rr >= 0
        flat = rr[keep]  # row-major: each item's reasons in order
        offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
        reasons = pa.StructArray.from_arrays(
            [self._item_ids(catalog).take(pa.array(flat)),
             pa.array(bundle.platforms, pa.string()).take(pa.array(catalog.platform[flat])),
             pa.array(rw[keep].astype(np.float32))], fields=list(REASON))
        columns = [input_row, person, [job.platform] * res.rows, rank, item_id, score, cold]
        arrays = [pa.array(c, type=f.type) for c, f in zip(columns, OUTPUT_SCHEMA, strict=False)]
        arrays.append(pa.ListArray.from_arrays(pa.array(offsets), reasons, type=OUTPUT_SCHEMA.field("reasons").type))
        return pa.Table.from_arrays(arrays, schema=OUTPUT_SCHEMA), res

    def _item_ids(self, catalog: Any) -> pa.Array:
        """The catalog's item ids as an Arrow array (built once per catalog version)."""
        if self._ids_version != catalog.version or self._ids is None:
            self._ids, self._ids_version = pa.array(catalog.item_ids, pa.string()), catalog.version
        return self._ids


# ---- the job --------------------------------------------------------------------------------------------------

def _write_atomic(out: Path, name: str, data: bytes | pa.Table) -> None:
    tmp = out / f".{name}.tmp-{os.getpid()}"
    if isinstance(data, pa.Table):
        pq.write_table(data, tmp, compression="zstd")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, out / name)


def prepare(out: Path, job: Job, now_given: bool) -> tuple[Job, set[int]]:
    """Create or reopen the output folder: the job to run (a rerun's `now` is the first run's) and the parts
    already written."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / JOB_FILE
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        before = Job(**{k: stored[k] for k in Job.__dataclass_fields__ if k in stored})  # older jobs: no rules
        if not now_given:
            job = Job(**{**asdict(job), "now": before.now})
        diff = job.differences(before)
        if diff:
            raise CampaignError(f"{out} holds another campaign ({'; '.join(diff)}): use a new --out folder")
    elif any(out.glob("part-*.parquet")):
        raise CampaignError(f"{out} has part files but no {JOB_FILE}: use a new --out folder")
    path.write_text(json.dumps(asdict(job), indent=2) + "\n", encoding="utf-8")
    for tmp in out.glob(".part-*.tmp-*"):  # left by a killed run
        tmp.unlink(missing_ok=True)
    done = set()
    for p in out.glob("part-*.parquet"):
        try:
            done.add(int(p.stem.split("-", 1)[1]))
        except ValueError:
            continue
    return job, done


@dataclass
class Campaign:
    """`run()` scores every part not yet written; see the module docstring."""

    settings: Settings
    bundle: Path
    persons: Path
    platform: str
    out: Path
    k: int | None = 20
    items: list[str] | None = None
    exclude_seen: bool = True
    now: int | None = None
    part_size: int = DEFAULT_PART_SIZE
    filters: dict[str, Any] | None = None  # POST /v1/batch/score's `filters` (app.schemas.Filters)
    diversity: dict[str, Any] | None = None  # and `diversity` (app.schemas.Diversity)
    use_ray: bool = True
    address: str | None = None
    workers: int | None = None
    progress: bool = True
    console: Any = None  # rich Console for the progress bar (stderr by default)
    on_part: Callable[[PartResult], None] | None = field(default=None, repr=False)

    def job(self) -> Job:
        try:
            manifest = read_manifest(Path(self.bundle))
        except BundleError as e:
            raise CampaignError(str(e)) from None
        if self.platform not in manifest.platforms:
            raise CampaignError(f"unknown platform {self.platform!r}; the bundle has {manifest.platforms}")
        if self.items is None and self.k is None:
            raise CampaignError("give k, or a list of items to score")
        if self.items is not None and not self.items:
            raise CampaignError("the items list is empty")
        if self.part_size < 1:
            raise CampaignError("part size must be at least 1")
        filters, diversity = check_rules(self.filters, self.diversity)
        return Job(str(Path(self.bundle).resolve()), manifest.model_version, self.platform, self.k,
                   list(self.items) if self.items is not None else None, self.exclude_seen,
                   int(time.time()) if self.now is None else int(self.now), self.part_size,
                   str(Path(self.persons).resolve()), filters, diversity)

    def run(self) -> Summary:
        started = time.perf_counter()
        job = self.job()
        manifest_platforms = read_manifest(Path(self.bundle)).platforms
        job, done = prepare(Path(self.out), job, self.now is not None)
        # One CPU per worker; Redis timeouts for a batch job (wait for an answer rather than fall back to the
        # bundle snapshot, as a request must after 0.25 s).
        settings = self.settings.model_copy(update={
            "ort_intra_op_threads": 1, "faiss_threads": 1,
            "redis_socket_timeout_s": max(self.settings.redis_socket_timeout_s, 5.0),
            "redis_connect_timeout_s": max(self.settings.redis_connect_timeout_s, 5.0)})
        summary = Summary(Path(self.out), "ray" if self.use_ray else "in-process", 1)

        def pending() -> Iterator[tuple[int, int, pa.Table]]:
            for part, start, table in read_parts(Path(self.persons), job.part_size):
                check_part(table, start, manifest_platforms)
                if part in done:
                    summary.skipped_parts += 1
                    summary.skipped_persons += table.num_rows
                    continue
                yield part, start, table

        with _progress(self.console, self.progress, count_rows(Path(self.persons))) as bar:
            def record(res: PartResult) -> None:
                summary.parts += 1
                summary.persons += res.persons
                summary.rows += res.rows
                summary.cold += res.cold
                summary.degraded |= res.degraded
                if summary.first_part_s is None:
                    summary.first_part_s = time.perf_counter() - started
                bar(res.persons, summary.skipped_persons)
                if self.on_part is not None:
                    self.on_part(res)

            if self.use_ray:
                self._run_ray(settings, job, pending(), record, summary)
            else:
                scorer = PartScorer(settings, job)
                try:
                    for part, start, table in pending():
                        out, res = scorer.score(part, start, *(table.column(c).to_pylist() for c in PERSON_COLUMNS))
                        _write_atomic(Path(self.out), part_name(part), out)
                        record(res)
                finally:
                    scorer.close()
            bar(0, summary.skipped_persons)
        summary.seconds = time.perf_counter() - started
        stored = json.loads((Path(self.out) / JOB_FILE).read_text(encoding="utf-8"))
        stored["last_run"] = {k: v for k, v in asdict(summary).items() if k != "out"}
        (Path(self.out) / JOB_FILE).write_text(json.dumps(stored, indent=2) + "\n", encoding="utf-8")
        return summary

    def _run_ray(self, settings: Settings, job: Job, parts: Iterator[tuple[int, int, pa.Table]],
                 record: Callable[[PartResult], None], summary: Summary) -> None:
        import logging

        import ray
        import ray.data  # before setting its log level below: importing it configures its logging

        started_here = not ray.is_initialized()
        if started_here:
            common: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "logging_level": logging.WARNING}
            if self.address:
                ray.init(address=self.address, **common)
            else:
                ray.init(num_cpus=self.workers or os.cpu_count() or 1, **common)
        data_log = logging.getLogger("ray.data")
        level = data_log.level
        data_log.setLevel(logging.ERROR)  # its per-run INFO lines and warnings would break up the progress bar
        try:
            workers = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            summary.workers = workers
            rows = [_part_row(part, start, table) for part, start, table in parts]
            if not rows:
                return
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # ours counts persons
            ctx.print_on_execution_start = False
            ds = ray.data.from_arrow(rows).map_batches(
                PartScorer, fn_constructor_kwargs={"settings": settings, "job": job}, batch_size=1,
                batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=min(workers, len(rows))), num_cpus=1)
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                    for r in batch.to_pylist():
                        _write_atomic(Path(self.out), part_name(r["part"]), r["parquet"])
                        record(PartResult(r["part"], r["persons"], r["rows"], r["cold"], r["degraded"]))
            except Exception as e:
                cause = _campaign_cause(e)
                if cause is not None:
                    raise CampaignError(str(cause)) from None
                raise
        finally:
            data_log.setLevel(level)
            if started_here:
                ray.shutdown()


def _part_row(part: int, start: int, table: pa.Table) -> pa.Table:
    """One part as one row: its person columns as lists (so a Ray batch of one row is one whole part)."""
    offsets = pa.array([0, table.num_rows], type=pa.int32())
    lists = [pa.ListArray.from_arrays(offsets, table.column(c).combine_chunks()) for c in PERSON_COLUMNS]
    return pa.Table.from_arrays([pa.array([part], pa.int64()), pa.array([start], pa.int64()), *lists],
                                schema=_PART_ROW)


def _campaign_cause(e: BaseException) -> BaseException | None:
    """The CampaignError (or BundleError) behind an error Ray re-raised in the driver, if that is what it is."""
    seen = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, CampaignError | BundleError):
            return x
        stack += [x.__cause__, x.__context__, getattr(x, "cause", None)]
    text = str(e)
    for kind in ("CampaignError: ", "BundleError: "):
        if kind in text:
            return CampaignError(text.split(kind, 1)[1].strip().splitlines()[0])
    return None


class _progress:
    """A rich progress bar over persons (a no-op when disabled); calling it advances it."""

    def __init__(self, console: Any, enabled: bool, total: int | None) -> None:
        self.enabled = enabled
        self.console = console
        self.total = total

    def __enter__(self) -> Callable[[int, int], None]:
        if not self.enabled:
            return lambda n, skipped: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("persons"),
                            TimeElapsedColumn(), TimeRemainingColumn(),
                            console=self.console or Console(stderr=True), transient=False)
        self.bar.__enter__()
        task = self.bar.add_task("scoring", total=self.total)
        state = {"skipped": 0}

        def advance(n: int, skipped: int) -> None:
            self.bar.update(task, advance=n + skipped - state["skipped"])
            state["skipped"] = skipped

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


def load_items(path: Path) -> list[str]:
    """A candidate list: one item id per line; blank lines and '#' comments ignored."""
    if not path.is_file():
        raise CampaignError(f"{path}: no such file")
    items = [s for s in (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
             if s and not s.startswith("#")]
    if not items:
        raise CampaignError(f"{path}: no item ids")
    return list(dict.fromkeys(items))


__all__ = ["Campaign", "CampaignError", "Job", "OUTPUT_SCHEMA", "PartScorer", "Summary", "check_rules", "load_items",
           "load_rule", "read_parts"]
