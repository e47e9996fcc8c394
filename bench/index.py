"""Nearest-neighbour retrieval: exact vs HNSW vs IVF, on the bundle's real item vectors and on the catalog
grown to 1M items with random unit vectors (the same synthetic items bench/serve.py serves).

    .venv/bin/python bench/index.py --bundle bundles/fk-v1 --sizes real,1000000

Queries are real: user vectors from the bundle's user_encoder.onnx for persons of history.parquet, each with
the target platform bench/serve.py would ask for. Ground truth is exact inner-product top-100.

Two layouts, each measured with and without the platform restriction (retrieval from the target platform's
items only, which is what /v1/recommend does):
- `per-platform` (the service's: app.services.retrieval.PlatformIndex, one index per platform, IndexIDMap2
  wrapped, searched through PlatformIndex.search): restricted = the target's index; unrestricted = every
  platform's index searched and the results merged by score.
- `global` (one index over every item): unrestricted = a plain search; restricted = a search with a FAISS
  IDSelector that admits the target platform's rows only.

Per index: build time (and threads), memory per item (serialised size and the process RSS growth), single-
query search latency with one thread (as the service searches), recall@100 against exact. HNSW uses the
service's settings (M, efConstruction from app.core.config); an efSearch / nprobe sweep shows the
trade-off around them.

Filtered retrieval (`--filter-share 0.1`, instead of the above): the bundle grown to each of `--sizes` with random
items (bench/common.py grow_bundle; its indexes HNSW above `--hnsw-threshold`, IVF above XREC_IVF_THRESHOLD), every
item given a random `category` attribute so that one value keeps about that share of a platform, loaded by the
service's loader; then recall@k of the service's filtered search (`Catalog.search` with the filter's row mask, as
/v1/recommend with `filters` runs it) against exact filtered search, for random unit queries, both for the
service's path (exact over the allowed rows up to XREC_FILTER_EXACT_MAX of them) and for the index with its
adaptive over-fetch alone (`filter_exact_max` 0):

    .venv/bin/python bench/index.py --bundle B --filter-share 0.1 --sizes 100000 --queries 300

The index files a bundle carries (`--bundle-indexes`, instead of the above): the bundle loaded by the service's
loader (its memory-mapped exact/HNSW/IVF files, the manifest's HNSW efSearch and IVF nprobe), real user
vectors as queries, each searched on its target platform through `Catalog.search` as /v1/recommend does, recall@k
against exact search over that platform's items — e.g. on the 1M copy bench/serve.py --items 1000000 leaves under
runs/bench/:

    .venv/bin/python bench/index.py --bundle runs/bench/fk-v6-1000k --bundle-indexes --queries 1000
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np
import pyarrow.parquet as pq
from common import (
    RUNS,
    git_rev,
    machine,
    persons_and_targets,
    platform_share,
    proc_status,
    read_manifest_json,
    synthetic_items,
    write_json,
)

from app.core.config import Settings
from app.services.onnx import make_session
from app.services.ranking import History
from app.services.retrieval import IndexParams, PlatformIndex
from app.services.rules import Condition, Rules, allowed_mask
from contract.features import user_encoder_feeds
from contract.indexes import HNSW_EF_DEFAULT


def load_real(bundle: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    manifest = read_manifest_json(bundle)
    platforms = manifest["platforms"]
    items = pq.read_table(bundle / "items.parquet", columns=["item_id", "platform", "vector"])
    dim = int(manifest["dim"])
    col = items.column("vector").combine_chunks()
    flat = col.flatten() if hasattr(col, "flatten") else col.values
    vecs = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(items.num_rows, dim)
    of = {p: i for i, p in enumerate(platforms)}
    plat = np.array([of[p] for p in items.column("platform").to_pylist()], dtype=np.int64)
    return items.column("item_id").to_pylist(), plat, np.ascontiguousarray(vecs), platforms


def queries(bundle: Path, item_ids: list[str], vecs: np.ndarray, n: int, seed: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors [n, D], target platform ids [n]) from the bundle's user encoder, as the service computes
    them (app.services.ranking.user_vectors over the person's snapshot history)."""
    manifest = read_manifest_json(bundle)
    s = Settings()
    session = make_session(bundle / manifest["models"]["user_encoder"]["file"], ["CPUExecutionProvider"],
                           s.ort_intra_op_threads)
    persons, targets, platforms = persons_and_targets(bundle, seed)
    persons, targets = persons[:n], targets[:n]
    want = set(persons)
    hist = pq.read_table(bundle / "history.parquet", columns=["person", "platform", "item_id", "ts"])
    hist = hist.sort_by([("person", "ascending"), ("ts", "ascending")])
    by: dict[str, list[tuple[str, int, int]]] = {}
    of = {p: i for i, p in enumerate(platforms)}
    for p, pl, it, t in zip(*(hist.column(c).to_pylist() for c in ("person", "platform", "item_id", "ts")),
                            strict=True):
        if p in want:
            by.setdefault(p, []).append((it, of[pl], t))
    row_of = {item: r for r, item in enumerate(item_ids)}
    catalog = SimpleNamespace(vectors=vecs, rows_of=lambda ids: np.fromiter((row_of.get(i, -1) for i in ids),
                                                                             dtype=np.int64, count=len(ids)))
    max_history = int(manifest["max_history"])
    hs = [History.from_ids(catalog, [e[0] for e in by[p]], [e[1] for e in by[p]], [e[2] for e in by[p]])  # type: ignore[arg-type]
          for p in persons]
    tg = [of[t] for t in targets]
    # the service's user-encoder input (contract.features.user_encoder_feeds), batches of 256 as it batches
    u = np.concatenate([session.run(None, user_encoder_feeds(hs[i:i + 256], tg[i:i + 256], vecs, max_history))[0]
                        for i in range(0, len(hs), 256)])
    return np.ascontiguousarray(u, dtype=np.float32), np.array(tg, dtype=np.int64)


def exact_topk(vecs: np.ndarray, rows: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, global rows) of the exact top-k of `q` among `rows` (all threads: this is the ground truth)."""
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs[rows])
    d, i = index.search(q, min(k, len(rows)))
    return d, np.where(i >= 0, rows[np.maximum(i, 0)], -1)


def recall(got: list[np.ndarray], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(g[:k], t[t >= 0])) / max((t >= 0).sum(), 1)
                          for g, t in zip(got, truth, strict=True)]))


def rss() -> int:
    gc.collect()
    return proc_status(os.getpid()).get("VmRSS", 0)


def latency(fn, n: int) -> dict[str, float]:
    """Per-call microseconds of fn(i) for i < n (one query at a time, like a request)."""
    t = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn(i)
        t[i] = (time.perf_counter_ns() - t0) / 1e3
    return {"p50_us": float(np.percentile(t, 50)), "p99_us": float(np.percentile(t, 99)),
            "mean_us": float(t.mean())}


def make_global(kind: str, vecs: np.ndarray, p: IndexParams, nlist: int, seed: int) -> faiss.Index:
    d = vecs.shape[1]
    if kind == "exact":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = p.hnsw_ef_construction
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        train = vecs[np.random.default_rng(seed).permutation(len(vecs))[:min(len(vecs), 64 * nlist)]]
        index.train(train)
    index.add(vecs)
    return index


def search_params(kind: str, knob: int, sel: faiss.IDSelector | None) -> faiss.SearchParameters:
    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=knob, sel=sel)
    if kind == "ivf":
        return faiss.SearchParametersIVF(nprobe=knob, sel=sel)
    return faiss.SearchParameters(sel=sel)


def bench_size(label: str, vecs: np.ndarray, plat: np.ndarray, n_platforms: int, q: np.ndarray, tq: np.ndarray,
               args: argparse.Namespace) -> list[dict]:
    n, k = len(vecs), args.k
    s = Settings()

    def measure(row: dict, restricted: Callable[[int], np.ndarray], unrestricted: Callable[[int], np.ndarray]
                ) -> dict:
        """Recall (against exact search) and latency of one index, restricted to the query's platform and not."""
        got_r = [restricted(j) for j in range(len(q))]
        got_u = [unrestricted(j) for j in range(len(q))]
        row |= {"recall_restricted": recall(got_r, truth_r), "recall_unrestricted": recall(got_u, truth_all),
                "lat_restricted": latency(restricted, nq), "lat_unrestricted": latency(unrestricted, nq)}
        print(_line(row))
        return row
    # The sweep sets efSearch itself; "default" marks the one a bundle from before export-time efSearch searched.
    base = IndexParams(s.hnsw_threshold, s.hnsw_m, s.hnsw_ef_construction, s.hnsw_ef_search or HNSW_EF_DEFAULT)
    rows_of = [np.flatnonzero(plat == p) for p in range(n_platforms)]
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    truth_all = exact_topk(vecs, np.arange(n), q, k)[1]
    truth_r = np.full((len(q), k), -1, dtype=np.int64)
    for p in range(n_platforms):
        sel = np.flatnonzero(tq == p)
        if len(sel):
            got = exact_topk(vecs, rows_of[p], q[sel], k)[1]
            truth_r[sel, :got.shape[1]] = got
    print(f"[{label}] {n:,} items ({', '.join(f'{len(r):,}' for r in rows_of)} per platform), {len(q):,} queries; "
          f"ground truth {time.perf_counter() - t0:.1f}s")
    out = []
    nq = min(len(q), args.latency_queries)
    for kind in args.types:
        knobs = {"hnsw": args.ef_search, "ivf": args.nprobe, "exact": [0]}[kind]
        default_knob = {"hnsw": base.hnsw_ef_search, "ivf": args.nprobe[len(args.nprobe) // 2], "exact": 0}[kind]
        # ---- per-platform (the service's layout and code) ----------------------------------------------------
        faiss.omp_set_num_threads(args.build_threads)
        r0 = rss()
        t0 = time.perf_counter()
        if kind == "ivf":  # an nprobe sweep over FAISS IVF-Flat per platform (the service's IVF, contract.indexes,
            # has nlist ≈ 4·sqrt(n) too, but one nprobe chosen at export; --bundle-indexes measures that one)
            idx = {p: make_global("ivf", vecs[r], base, max(16, int(args.ivf_factor * np.sqrt(len(r)))),
                                  args.seed) for p, r in enumerate(rows_of)}
        else:
            params = IndexParams(0 if kind == "hnsw" else 1 << 62, base.hnsw_m, base.hnsw_ef_construction,
                                 base.hnsw_ef_search, ivf_threshold=1 << 62)
            idx = {p: PlatformIndex.build(vecs.shape[1], r, vecs[r], params) for p, r in enumerate(rows_of)}
        build_s = time.perf_counter() - t0
        mem_rss = rss() - r0
        ser = sum(len(faiss.serialize_index(i if kind == "ivf" else i.index)) for i in idx.values())
        faiss.omp_set_num_threads(1)  # the service searches with faiss_threads=1
        for knob in knobs:
            if kind == "hnsw":
                for i in idx.values():
                    faiss.downcast_index(i.index.index).hnsw.efSearch = knob
            elif kind == "ivf":
                for i in idx.values():
                    i.nprobe = knob

            def restricted(j: int, kind: str = kind, idx: dict = idx) -> np.ndarray:
                p = int(tq[j])
                if kind == "ivf":
                    _, ii = idx[p].search(q[j:j + 1], k)
                    return rows_of[p][ii[0][ii[0] >= 0]]
                return idx[p].search(q[j:j + 1], k, [np.zeros(0, dtype=np.int64)])[0]

            def unrestricted(j: int, kind: str = kind, idx: dict = idx) -> np.ndarray:
                ds, rs = [], []
                for p in range(n_platforms):
                    if kind == "ivf":
                        d, ii = idx[p].search(q[j:j + 1], k)
                        ok = ii[0] >= 0
                        ds.append(d[0][ok])
                        rs.append(rows_of[p][ii[0][ok]])
                    else:
                        d, ii = idx[p].index.search(q[j:j + 1], k)
                        ok = ii[0] >= 0
                        ds.append(d[0][ok])
                        rs.append(ii[0][ok])
                d, r = np.concatenate(ds), np.concatenate(rs)
                return r[np.argsort(-d, kind="stable")[:k]]

            row = {"size": label, "items": n, "index": kind, "knob": knob, "default": knob == default_knob,
                   "build_s": build_s, "build_threads": args.build_threads,
                   "bytes_per_item_serialised": ser / n, "bytes_per_item_rss": mem_rss / n}
            out.append(measure(row | {"layout": "per-platform"}, restricted, unrestricted))
        idx = {}  # free it before the next build (its memory is measured)
        gc.collect()
        # ---- global (one index; the restriction as an IDSelector) ------------------------------------------------
        if kind == "hnsw" and n > args.global_hnsw_max:
            print(f"  (global HNSW skipped above {args.global_hnsw_max:,} items: --global-hnsw-max)")
            continue
        faiss.omp_set_num_threads(args.build_threads)
        r0 = rss()
        t0 = time.perf_counter()
        g = make_global(kind, vecs, base, max(16, int(args.ivf_factor * np.sqrt(n))), args.seed)
        build_s = time.perf_counter() - t0
        mem_rss = rss() - r0
        ser = len(faiss.serialize_index(g))
        faiss.omp_set_num_threads(1)
        sels = [faiss.IDSelectorBatch(r) for r in rows_of]
        for knob in knobs:
            plain = search_params(kind, knob, None)
            filt = [search_params(kind, knob, s_) for s_ in sels]

            def g_unrestricted(j: int, plain: faiss.SearchParameters = plain, g: faiss.Index = g) -> np.ndarray:
                _, ii = g.search(q[j:j + 1], k, params=plain)
                return ii[0][ii[0] >= 0]

            def g_restricted(j: int, filt: list = filt, g: faiss.Index = g) -> np.ndarray:
                _, ii = g.search(q[j:j + 1], k, params=filt[int(tq[j])])
                return ii[0][ii[0] >= 0]

            row = {"size": label, "items": n, "index": kind, "knob": knob, "default": knob == default_knob,
                   "build_s": build_s, "build_threads": args.build_threads,
                   "bytes_per_item_serialised": ser / n, "bytes_per_item_rss": mem_rss / n}
            out.append(measure(row | {"layout": "global"}, g_restricted, g_unrestricted))
        g, sels = None, []
        gc.collect()
    return out


def tag_categories(bundle: Path, share: float, seed: int) -> int:
    """Give every item of the bundle a random `category` ("c0", "c1", …, each about `share` of the items)
    in items.parquet's `attributes` column, the manifest's hashes updated; returns the number of values."""
    import json

    import pyarrow as pa
    from common import _write_manifest

    n_values = max(1, round(1 / share))
    items = pq.read_table(bundle / "items.parquet")
    cats = np.random.default_rng(seed).integers(0, n_values, size=items.num_rows)
    attrs = pa.array([json.dumps({"category": f"c{c}"}) for c in cats.tolist()], pa.string())
    items = items.drop_columns([c for c in ["attributes"] if c in items.column_names]).append_column("attributes",
                                                                                                      attrs)
    target = bundle / "items.parquet"
    if target.is_symlink():
        target.unlink()
    pq.write_table(items, target)
    _write_manifest(bundle, bundle, ["items.parquet"])
    return n_values


def filtered_recall(bundle: Path, n_queries: int, k: int, seed: int, exact_max: int, value: str = "c0",
                    threads: int = 1) -> list[dict]:
    """Per platform: recall@k of `Catalog.search` under the filter `category = value` against exact filtered
    search, and its per-query latency (one query at a time, one FAISS thread)."""
    from app.services.model_bundle import load_bundle

    settings = Settings(_env_file=None, filter_exact_max=exact_max, faiss_threads=threads)  # type: ignore[call-arg]
    catalog = load_bundle(bundle, settings).catalog
    rules = Rules(include=(("category", Condition((value,))),))
    rng = np.random.default_rng(seed + 7)
    out = []
    none = [np.zeros(0, dtype=np.int64)]
    for p, index in sorted(catalog.indexes.items()):
        mask = allowed_mask(catalog, p, rules)
        assert mask is not None
        rows = np.flatnonzero(mask)
        q = rng.standard_normal((n_queries, catalog.dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        truth = exact_topk(catalog.vectors, rows, q, k)[1]
        got = [catalog.search(p, q[j:j + 1], k, none, [mask])[0] for j in range(n_queries)]
        lat = latency(lambda j, p=p, q=q, mask=mask: catalog.search(p, q[j:j + 1], k, none, [mask]),
                      min(n_queries, 200))
        path = "exact over allowed rows" if len(rows) <= catalog.filter_exact_max else f"{index.kind} over-fetch"
        out.append({"platform": p, "items": index.size, "allowed": int(len(rows)),
                    "allowed_share": len(rows) / max(index.size, 1), "index": index.kind, "path": path,
                    "exact_max": exact_max, "k": k, "queries": n_queries, "recall": recall(got, truth),
                    "lat": lat})
    return out


def bench_filtered(args: argparse.Namespace) -> list[dict]:
    import tempfile

    from common import grow_bundle

    os.environ["XREC_HNSW_THRESHOLD"] = str(args.hnsw_threshold)  # grow_bundle builds the indexes by Settings()
    rows = []
    with tempfile.TemporaryDirectory(prefix="xrec-filter-") as tmp:
        for size in args.sizes.split(","):
            n = int(size)
            dst = Path(tmp) / f"grown-{n}"
            grow_bundle(args.bundle.resolve(), dst, n, seed=args.seed)
            tag_categories(dst, args.filter_share, args.seed)
            for exact_max in (Settings(_env_file=None).filter_exact_max, 0):  # type: ignore[call-arg]
                for r in filtered_recall(dst, args.queries, args.k, args.seed, exact_max):
                    r["size"] = n
                    print(f"  {n:,} items: platform {r['platform']} ({r['items']:,} items, {r['index']}), filter "
                          f"keeps {r['allowed']:,} ({r['allowed_share']:.1%}); {r['path']:<24} recall@{r['k']} "
                          f"{r['recall']:.4f} over {r['queries']} queries; search p50/p99 "
                          f"{r['lat']['p50_us']:,.0f}/{r['lat']['p99_us']:,.0f} µs")
                    rows.append(r)
    return rows


def bundle_index_recall(bundle: Path, n_queries: int, k: int, seed: int) -> list[dict]:
    """Per platform: recall@k of the bundle's own index files as the service searches them, real queries."""
    from app.services.model_bundle import load_bundle

    t0 = time.perf_counter()
    catalog = load_bundle(bundle, Settings(_env_file=None)).catalog  # type: ignore[call-arg]
    loaded = time.perf_counter() - t0
    q, tq = queries(bundle, list(catalog.item_ids), catalog.vectors, n_queries, seed)
    none = [np.zeros(0, dtype=np.int64)]
    out = []
    for p, index in sorted(catalog.indexes.items()):
        sel = np.flatnonzero(tq == p)
        if not len(sel):
            continue
        truth = exact_topk(catalog.vectors, np.flatnonzero(catalog.platform == p), q[sel], k)[1]
        got = [catalog.search(p, q[j:j + 1], k, none)[0] for j in sel]
        lat = latency(lambda j, p=p, sel=sel: catalog.search(p, q[sel[j % len(sel)]:sel[j % len(sel)] + 1], k, none),
                      min(len(sel), 200))
        setting = (f"efSearch {index.params.hnsw_ef_search}" if index.kind == "hnsw" else
                   f"nprobe {faiss.extract_index_ivf(index.index).nprobe}" if index.kind == "ivf" else "exact")
        out.append({"platform": p, "items": index.size, "index": index.kind, "setting": setting, "k": k,
                    "queries": int(len(sel)), "recall": recall(got, truth), "lat": lat, "load_s": loaded})
    return out


def _line(r: dict) -> str:
    knob = {"hnsw": f"efSearch {r['knob']}", "ivf": f"nprobe {r['knob']}", "exact": ""}[r["index"]]
    return (f"  {r['layout']:<12} {r['index']:<5} {knob:<13} build {r['build_s']:7.1f}s "
            f"({r['build_threads']} thr)  {r['bytes_per_item_serialised']:6,.0f} B/item "
            f"(RSS +{r['bytes_per_item_rss']:6,.0f})  recall@100 restricted {r['recall_restricted']:.4f} "
            f"unrestricted {r['recall_unrestricted']:.4f}  search p50/p99 µs restricted "
            f"{r['lat_restricted']['p50_us']:,.0f}/{r['lat_restricted']['p99_us']:,.0f} unrestricted "
            f"{r['lat_unrestricted']['p50_us']:,.0f}/{r['lat_unrestricted']['p99_us']:,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--sizes", default="real,1000000",
                    help="comma-separated: 'real' (the bundle's items) and/or item counts (real + synthetic)")
    ap.add_argument("--types", default="exact,hnsw,ivf")
    ap.add_argument("--queries", type=int, default=1000, help="persons (user vectors) for recall")
    ap.add_argument("--latency-queries", type=int, default=500, help="of those, timed one by one")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--ef-search", default="64,128,256,512", help="HNSW efSearch sweep (export chooses the service's)")
    ap.add_argument("--nprobe", default="8,32,128", help="IVF nprobe sweep (the middle one is 'default')")
    ap.add_argument("--ivf-factor", type=float, default=4.0, help="nlist = factor * sqrt(items per index)")
    ap.add_argument("--build-threads", type=int, default=1,
                    help="FAISS threads while building (the service builds with faiss_threads=1)")
    ap.add_argument("--global-hnsw-max", type=int, default=200_000,
                    help="skip the global-layout HNSW above this many items (a second full build)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--filter-share", type=float, default=None,
                    help="measure filtered retrieval instead: a filter keeping about this share of a platform")
    ap.add_argument("--hnsw-threshold", type=int, default=1000,
                    help="--filter-share: platforms above this many items get HNSW indexes")
    ap.add_argument("--bundle-indexes", action="store_true",
                    help="measure the bundle's own index files as the service loads and searches them")
    args = ap.parse_args()
    if args.bundle_indexes:
        rows = bundle_index_recall(args.bundle.resolve(), args.queries, args.k, args.seed)
        for r in rows:
            print(f"platform {r['platform']}: {r['items']:,} items, {r['index']} index from the bundle "
                  f"({r['setting']}), "
                  f"recall@{r['k']} {r['recall']:.4f} over {r['queries']} real queries (restricted to the "
                  f"platform), p50 {r['lat']['p50_us'] / 1e3:.2f} ms one query at a time")
        out = args.json or RUNS / "index-bundle.json"
        write_json(out, {"bundle": str(args.bundle.resolve()), "machine": machine(), "git": git_rev(), "rows": rows})
        print(f"figures: {out}")
        return
    if args.filter_share is not None:
        rows = bench_filtered(args)
        out = args.json or RUNS / "index-filtered.json"
        write_json(out, {"bundle": str(args.bundle.resolve()), "machine": machine(), "git": git_rev(), "rows": rows})
        print(f"figures: {out}")
        return
    args.types = [t.strip() for t in args.types.split(",")]
    args.ef_search = [int(x) for x in args.ef_search.split(",")]
    args.nprobe = [int(x) for x in args.nprobe.split(",")]

    bundle = args.bundle.resolve()
    ids, plat, vecs, platforms = load_real(bundle)
    t0 = time.perf_counter()
    q, tq = queries(bundle, ids, vecs, args.queries, args.seed)
    print(f"bundle {bundle}: {len(ids):,} items, dim {vecs.shape[1]}; {len(q):,} user-vector queries "
          f"({time.perf_counter() - t0:.1f}s); git {git_rev()}; machine {machine()}")
    results = {"bundle": str(bundle), "machine": machine(), "git": git_rev(), "rows": []}
    for size in args.sizes.split(","):
        if size == "real":
            results["rows"] += bench_size(f"real {len(ids) // 1000}k", vecs, plat, len(platforms), q, tq, args)
            continue
        n = int(size)
        share = platform_share([platforms[p] for p in plat.tolist()], platforms)
        syn_plat, syn = synthetic_items(n - len(ids), vecs.shape[1], share, args.seed)
        v = np.concatenate([vecs, syn])
        del syn
        results["rows"] += bench_size(f"{n // 1000}k", v, np.concatenate([plat, syn_plat]), len(platforms), q, tq,
                                      args)
        del v
        gc.collect()
    out = args.json or RUNS / "index.json"
    write_json(out, results)
    print(f"figures: {out}")


if __name__ == "__main__":
    main()
