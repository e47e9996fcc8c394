"""Shared pieces of the benchmark scripts: bundle copies with a synthetic catalog, request mixes, the
bundle's accuracy figures, process memory and small formatting helpers.

Nothing here changes a bundle in place: a grown catalog is written as a NEW folder (under runs/, which git
ignores) whose unchanged files are symlinks to the source bundle, with a manifest whose hashes match.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app.core.config import DEV_ID_SALT, Settings
from contract.bundle import MANIFEST, salt_fingerprint, sha256_file
from contract.indexes import INDEX_DIR, write_indexes
from contract.kg import ItemEntities

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "runs" / "bench"
# Salts we can try when the caller gives none: the service refuses a bundle whose salt fingerprint differs,
# and the benchmark addresses persons by their pseudonymous id, so any matching salt serves the same answers.
KNOWN_SALTS = (DEV_ID_SALT, "xrec-test-salt")


# ---- bundle helpers --------------------------------------------------------------------------------------

def read_manifest_json(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))


def matching_salt(bundle: Path, given: str | None) -> str | None:
    """A salt whose fingerprint the bundle accepts (None when none of the candidates fits)."""
    want = read_manifest_json(bundle).get("salt_fingerprint", "")
    candidates = [s for s in (given, os.environ.get("XREC_ID_SALT"), *KNOWN_SALTS) if s]
    if not want:
        return candidates[0] if candidates else DEV_ID_SALT
    return next((s for s in candidates if salt_fingerprint(s) == want), None)


def _link_bundle(src: Path, dst: Path, replace: set[str]) -> None:
    """dst/ with a symlink for every top-level entry of src/ except `replace` and the manifest."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name != MANIFEST and entry.name not in replace:
            (dst / entry.name).symlink_to(entry.resolve())


def _write_manifest(src: Path, dst: Path, changed: list[str], drop: list[str] | None = None,
                    **updates: object) -> None:
    """The source manifest with new hashes for `changed` files (the others are the same bytes), without the
    files in `drop`."""
    manifest = read_manifest_json(src)
    for name in drop or []:
        manifest["files"].pop(name, None)
    for name in changed:
        manifest["files"][name] = {"sha256": sha256_file(dst / name), "bytes": (dst / name).stat().st_size}
    manifest.update(updates)
    (dst / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def unsalted_copy(src: Path, dst: Path) -> Path:
    """A symlinked copy whose manifest names no salt fingerprint (for a bundle built with an unknown salt)."""
    _link_bundle(src, dst, set())
    _write_manifest(src, dst, [], salt_fingerprint="")
    return dst


def random_unit(n: int, dim: int, rng: np.random.Generator, chunk: int = 200_000) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - lo), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[lo:lo + len(x)] = x
    return out


def platform_share(item_platform: list[str], platforms: list[str]) -> np.ndarray:
    share = np.array([item_platform.count(p) for p in platforms], dtype=np.float64)
    return share / share.sum() if share.sum() else np.full(len(platforms), 1.0 / len(platforms))


def synthetic_items(n: int, dim: int, share: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(platform ids, unit vectors) of n synthetic items: the same for the same arguments, so bench/index.py
    measures exactly the catalog bench/serve.py serves."""
    rng = np.random.default_rng(seed)
    return rng.choice(len(share), size=n, p=share), random_unit(n, dim, rng)


def grow_bundle(src: Path, dst: Path, n_items: int, extra_persons: int = 0, seed: int = 0,
                log=print, index_files: bool = True) -> Path:
    """A copy of `src` whose items.parquet has `n_items` rows: the real items first (same rows, so knn.npz
    and histories still point at them), then synthetic items (random unit vectors, ids `synth:<platform>:<i>`,
    popularity 0) split across the platforms in the real catalog's proportions.

    `extra_persons` > 0 also appends synthetic persons with random histories over the real items (only for
    smoke tests on the tiny fixture, which has six persons; never for the real bundle's figures).
    `index_files`: build the retrieval indexes of the grown catalog into the copy, as `xrec export` does
    (every core; kind and HNSW parameters from XREC_HNSW_*), so the service reads them; False: the copy has
    none and the service builds them at start (an export from before index files).
    """
    started = time.perf_counter()
    manifest = read_manifest_json(src)
    platforms: list[str] = manifest["platforms"]
    dim = int(manifest["dim"])
    items = pq.read_table(src / "items.parquet")
    n_real = items.num_rows
    if n_items < n_real:
        raise SystemExit(f"--items {n_items:,} is below the real catalog's {n_real:,}")
    # Every per-item table grows with the catalog (the service refuses a bundle whose tables disagree in rows).
    per_item = [f for f in (manifest.get("kg"), manifest.get("als")) if f]
    replace = {"items.parquet", "knn.npz", INDEX_DIR, *per_item} | ({"history.parquet"} if extra_persons else set())
    _link_bundle(src, dst, replace)
    n_syn = n_items - n_real
    real_platform = items.column("platform").to_pylist()
    syn_platform_ids, vecs = synthetic_items(n_syn, dim, platform_share(real_platform, platforms), seed)
    syn_platform = [platforms[i] for i in syn_platform_ids.tolist()]
    syn_ids = [f"synth:{p}:{i}" for i, p in enumerate(syn_platform)]
    rng = np.random.default_rng(seed + 1)
    real_vecs = items.column("vector").combine_chunks()
    real_flat = (real_vecs.flatten() if hasattr(real_vecs, "flatten") else real_vecs.values)
    all_vecs = np.concatenate([real_flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n_real, dim),
                               vecs])
    table = pa.table({
        "item_id": pa.concat_arrays([items.column("item_id").combine_chunks(), pa.array(syn_ids)]),
        "platform": pa.concat_arrays([items.column("platform").combine_chunks().cast(pa.string()),
                                      pa.array(syn_platform)]),
        "title": pa.concat_arrays([items.column("title").combine_chunks().cast(pa.string()),
                                   pa.array([f"synthetic item {i}" for i in range(n_syn)])]),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(all_vecs.ravel()), dim),
        "popularity": pa.concat_arrays([items.column("popularity").combine_chunks().cast(pa.int64()),
                                        pa.array(np.zeros(n_syn, dtype=np.int64))]),
    })
    pq.write_table(table, dst / "items.parquet")
    knn = np.load(src / "knn.npz")
    k = knn["index"].shape[1]
    np.savez(dst / "knn.npz",
             index=np.concatenate([knn["index"], np.full((n_syn, k), -1, dtype=np.int32)]),
             weight=np.concatenate([knn["weight"], np.zeros((n_syn, k), dtype=np.float32)]))
    changed = ["items.parquet", "knn.npz", *per_item]
    if manifest.get("kg"):  # synthetic items have no entities
        kg = ItemEntities.load(src / manifest["kg"])
        ItemEntities(np.r_[kg.offsets, np.full(n_syn, kg.offsets[-1])], kg.entities, kg.names, kg.kinds
                     ).save(dst / manifest["kg"])
    if manifest.get("als"):  # nor ALS factors: zero rows, no ALS signal
        with np.load(src / manifest["als"]) as z:
            np.savez(dst / manifest["als"], items=np.concatenate(
                [z["items"], np.zeros((n_syn, z["items"].shape[1]), dtype=z["items"].dtype)]),
                alpha=z["alpha"], reg=z["reg"])
    if extra_persons:
        _grow_history(src, dst, extra_persons, n_real, items.column("item_id").to_pylist(), real_platform, rng)
        changed.append("history.parquet")
    indexes: dict[str, dict] = {}
    index_s = 0.0
    if index_files:
        t0 = time.perf_counter()
        st = Settings()
        params = st.index_params()
        platform_ids = np.array([platforms.index(p) for p in real_platform] + syn_platform_ids.tolist())
        written = write_indexes(dst, platforms, platform_ids, all_vecs, params)
        indexes = {name: entry.model_dump() for name, entry in written.items()}
        changed += [e.file for e in written.values()]
        index_s = time.perf_counter() - t0
    manifest = read_manifest_json(src)
    stale = [f for f in manifest["files"] if f.startswith(INDEX_DIR + "/")]
    _write_manifest(src, dst, changed, indexes=indexes, drop=stale)
    log(f"bundle copy {dst}: {n_items:,} items ({n_real:,} real + {n_syn:,} synthetic), "
        f"{extra_persons:,} synthetic persons, written in {time.perf_counter() - started:.1f}s"
        + (f" (indexes built with {os.cpu_count()} threads in {index_s:.1f}s: "
           + ", ".join(f"{p} {e['kind']}" for p, e in indexes.items()) + ")" if index_files else ""))
    return dst


def _grow_history(src: Path, dst: Path, n: int, n_real: int, item_ids: list[str], item_platform: list[str],
                  rng: np.random.Generator) -> None:
    hist = pq.read_table(src / "history.parquet")
    base_ts = int(pc_max(hist.column("ts"))) - 90 * 86_400
    persons, platforms, items, ts = [], [], [], []
    for j in range(n):
        person = "p_synth" + hashlib.sha256(f"synthetic-person-{j}".encode()).hexdigest()[:20]
        t = base_ts + int(rng.integers(0, 30 * 86_400))
        for row in rng.integers(0, n_real, size=int(rng.integers(3, 30))).tolist():
            persons.append(person)
            platforms.append(item_platform[row])
            items.append(item_ids[row])
            ts.append(t)
            t += int(rng.integers(600, 5 * 86_400))
    extra = pa.table({"person": persons, "platform": platforms, "item_id": items, "ts": pa.array(ts, pa.int64())})
    pq.write_table(pa.concat_tables([hist.select(["person", "platform", "item_id", "ts"])
                                     .cast(extra.schema), extra]), dst / "history.parquet")


def pc_max(column: pa.ChunkedArray) -> int:
    import pyarrow.compute as pc

    return int(pc.max(column).as_py())


# ---- request mix -------------------------------------------------------------------------------------------

def persons_and_targets(bundle: Path, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """Every person in history.parquet (shuffled, seeded) with a target platform each: the platform of their
    latest event 80% of the time (they are on it now), another platform otherwise (the cross-platform case).
    Returns (persons, targets, platforms)."""
    platforms: list[str] = read_manifest_json(bundle)["platforms"]
    hist = pq.read_table(bundle / "history.parquet", columns=["person", "platform", "ts"])
    hist = hist.sort_by([("person", "ascending"), ("ts", "ascending")])
    person = hist.column("person").to_pylist()
    plat = hist.column("platform").to_pylist()
    last: dict[str, str] = {}
    for p, pl in zip(person, plat, strict=True):
        last[p] = pl  # sorted by time: the last write is the latest event
    rng = np.random.default_rng(seed)
    names = sorted(last)
    order = rng.permutation(len(names))
    persons, targets = [], []
    for i in order.tolist():
        p = names[i]
        t = last[p]
        if len(platforms) > 1 and rng.random() < 0.2:
            t = rng.choice([x for x in platforms if x != t])
        persons.append(p)
        targets.append(str(t))
    return persons, targets, platforms


def recommend_body(person: str, target: str, k: int) -> str:
    return json.dumps({"person_id": person, "platform": target, "k": k}, separators=(",", ":"))


def zipf_choice(n_items: int, n_draws: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """`n_draws` indexes into `n_items`, index i drawn with probability ∝ 1 / (i + 1)^s (a few persons come
    back often, most rarely)."""
    p = 1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** s
    return rng.choice(n_items, size=n_draws, p=p / p.sum())


def event_sources(bundle: Path, n: int, seed: int = 0, max_events: int = 5) -> list[tuple[str, list[str]]]:
    """n (platform, item ids) pairs: the last `max_events` items of real persons' histories on one platform
    (at least 2 there). The benchmark posts them as the events of new accounts (the API takes raw account
    ids, which a bundle does not hold), then asks for those accounts: the after-event path."""
    hist = pq.read_table(bundle / "history.parquet", columns=["person", "platform", "item_id", "ts"])
    hist = hist.sort_by([("person", "ascending"), ("platform", "ascending"), ("ts", "ascending")])
    person, plat, item = (hist.column(c).to_pylist() for c in ("person", "platform", "item_id"))
    groups: list[tuple[str, list[str]]] = []
    start = 0
    for i in range(1, len(person) + 1):
        if i == len(person) or (person[i], plat[i]) != (person[start], plat[start]):
            if i - start >= 2:
                groups.append((plat[start], item[start:i][-max_events:]))
            start = i
    if not groups:
        raise SystemExit("no person has two events on one platform: no after-event requests possible")
    rng = np.random.default_rng(seed)
    return [groups[j] for j in rng.choice(len(groups), size=n, replace=len(groups) < n).tolist()]


# ---- accuracy of a bundle -----------------------------------------------------------------------------------

FINAL_MODEL = "two-tower + scorer (final)"


def bundle_accuracy(bundle: Path) -> dict[str, object]:
    """Test NDCG@10 / Recall@10 (full ranking) of the bundle's model: manifest.evaluation['test'], else the
    metrics-test.json next to a checkpoint the manifest names; None values when neither has them."""
    manifest = read_manifest_json(bundle)
    evaluation = manifest.get("evaluation") or {}
    summary = evaluation.get("test") if isinstance(evaluation, dict) else None
    source = "manifest.json evaluation.test"
    if not summary:
        summary, source = None, "none"
        for key in ("checkpoint", "checkpoint_path"):
            ckpt = evaluation.get(key) or manifest.get(key)
            if ckpt:
                f = Path(str(ckpt)).parent / "metrics-test.json"
                if f.is_file():
                    raw = json.loads(f.read_text())
                    summary = {m: {p: r[p]["overall"] for p in r if "overall" in r[p]} for m, r in raw.items()}
                    source = str(f)
                    break
    out: dict[str, object] = {"ndcg@10": None, "recall@10": None, "source": source, "model": None,
                              "valid_ndcg@10": evaluation.get("scorer") or evaluation.get("train")}
    if summary:
        name = FINAL_MODEL if FINAL_MODEL in summary else next(
            (m for m in summary if m.startswith("two-tower")), None)
        full = (summary.get(name) or {}).get("full") or {} if name else {}
        out.update({"ndcg@10": full.get("ndcg@10"), "recall@10": full.get("recall@10"), "model": name})
    return out


# ---- machine and process facts --------------------------------------------------------------------------------

def machine() -> dict[str, object]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gb, 1), "kernel": platform.release(),
            "python": platform.python_version(), "load_1m": round(os.getloadavg()[0], 2)}


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process, bytes."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process (all threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def git_rev() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
