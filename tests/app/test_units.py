"""Unit tests of the pieces under the routes: provider choice, FAISS indexes and the catalog, ids, caches,
and the rule that the service never imports torch or training/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.services.cache import LRU, Fragments, RankedCache, RankedEntry
from app.services.onnx import CPU, CUDA, select_providers
from app.services.retrieval import Catalog, IndexParams, PlatformIndex
from contract.features import knn_candidates, knn_dense, knn_lookup, knn_scores, knn_sparse
from contract.ids import account_key, unlinked_person_key

ROOT = Path(__file__).resolve().parents[2]


def test_knn_scores_and_candidates_by_hand() -> None:
    # 6 items; platform 0 = rows 0, 1, 2, 4, 5; platform 1 = row 3. Each item's top-2 neighbours.
    index = np.array([[1, 3], [0, 2], [1, -1], [0, -1], [-1, -1], [2, 0]], dtype=np.int32)
    weight = np.array([[0.5, 0.9], [0.5, 0.4], [0.4, 0], [0.9, 0], [0, 0], [0.3, 0.2]], dtype=np.float32)
    platform = np.array([0, 0, 0, 1, 0, 0])
    # History 0 then 1 (newest), decay 0.5: item 1 gets 0.5·0.5 from 0; item 3 0.9·0.5; 0 gets 0.5; 2 gets 0.4.
    dense = knn_dense(np.array([0, 1]), index, weight, decay=0.5)
    assert np.allclose(dense, [0.5, 0.25, 0.4, 0.45, 0, 0])
    assert np.allclose(knn_scores(np.array([0, 1]), np.array([3, 2, 9, -1]), index, weight, decay=0.5),
                       [0.45, 0.4, 0, 0])
    # The sparse form the ranking path reads: the nonzero rows, the same values, the same lookups.
    sparse = knn_sparse(np.array([0, 1]), index, weight, decay=0.5)
    assert sparse.rows.tolist() == [0, 1, 2, 3] and np.array_equal(sparse.values, dense[:4])
    assert np.allclose(sparse.lookup(np.array([3, 2, 9, -1, 5])), [0.45, 0.4, 0, 0, 0])
    assert knn_sparse(np.array([4]), index, weight).lookup(np.array([0, 4])).tolist() == [0, 0]
    # Platform 0, best first, zero scores never: 0, 2, 1 (3 is platform 1; 4 and 5 score 0).
    none = np.zeros(0, dtype=np.int64)
    assert knn_candidates(sparse, 5, platform, 0, none).tolist() == [0, 2, 1]
    assert knn_candidates(sparse, 2, platform, 0, none).tolist() == [0, 2]
    assert knn_candidates(sparse, 5, platform, 0, np.array([0, 1, 7])).tolist() == [2]  # seen / retrieved
    live = np.array([True, True, False, True, True, True])
    assert knn_candidates(sparse, 5, platform, 0, none, live).tolist() == [0, 1]
    assert knn_candidates(sparse, 0, platform, 0, none).tolist() == []
    assert knn_candidates(knn_sparse(np.array([4]), index, weight), 5, platform, 0, none).tolist() == []


def test_sparse_knn_scores_equal_the_dense_ones_on_a_random_table() -> None:
    rng = np.random.default_rng(0)
    n, k = 500, 20
    index = rng.integers(-1, n, (n, k)).astype(np.int32)
    weight = rng.random((n, k)).astype(np.float32)
    for _ in range(20):
        hist = rng.integers(0, n, rng.integers(0, 80))
        dense = knn_dense(hist, index, weight, 50, 0.65)
        sparse = knn_sparse(hist, index, weight, 50, 0.65)
        assert np.array_equal(sparse.values, dense[sparse.rows])  # bit-identical sums
        assert not np.delete(dense, sparse.rows).any()  # nothing else is nonzero
        cands = rng.integers(-1, n + 5, 100)
        assert np.array_equal(sparse.lookup(cands), knn_lookup(dense, cands))


def test_provider_choice_prefers_cuda_when_onnxruntime_offers_it() -> None:
    assert select_providers([], [CPU]) == [CPU]
    assert select_providers([], ["AzureExecutionProvider", CUDA, CPU]) == [CUDA, CPU]
    assert select_providers([CPU], [CUDA, CPU]) == [CPU]  # forced CPU
    assert select_providers(["TensorrtExecutionProvider", CUDA], [CUDA, CPU]) == [CUDA, CPU]


def test_provider_choice_reads_what_onnxruntime_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocks `onnxruntime.get_available_providers` (the only mock in these tests): no GPU exists here, so
    this is how the GPU branch is exercised. With onnxruntime-gpu on a GPU node the list holds CUDA."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    assert select_providers([], ort.get_available_providers())[0] == CUDA


def test_service_never_imports_torch_or_training() -> None:
    code = ("import sys, app.main, app.services.state, xrec.cli; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'training'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    for path in (ROOT / "app").rglob("*.py"):
        text = path.read_text()
        assert "import torch" not in text and "from training" not in text and "import training" not in text, path


def test_ids_match_the_data_build() -> None:
    from training.data.fuse import IdentityMap
    from training.data.fuse import account_key as build_account_key

    ids = IdentityMap.from_links("salt", [("P1", "shop", "a1")])
    assert unlinked_person_key("salt", "video", "v7") == ids.person("video", "v7")
    assert account_key("salt", "shop", "a1") == build_account_key("salt", "shop", "a1")


def _unit(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])  # IVF over 50 items: one list, exact
def test_platform_index_search_add_remove(kind: str) -> None:
    vecs = _unit(50)
    rows = np.arange(100, 150)
    idx = PlatformIndex.build(8, rows, vecs, IndexParams(hnsw_threshold=1000 if kind == "flat" else 10, hnsw_m=8,
                                                         ivf_threshold=10 if kind == "ivf" else 500_000))
    assert idx.kind == kind and idx.size == 50
    q = vecs[:1]
    exact = rows[np.argsort(-(vecs @ q[0]))]
    (top,) = idx.search(q, 5, [np.array([], dtype=np.int64)])
    assert list(top) == list(exact[:5])
    (top,) = idx.search(q, 5, [exact[:2]])
    assert list(top) == list(exact[2:7])
    keep = rows != exact[0]
    changed = idx.with_changes(np.array([999]), q, [int(exact[0])], np.append(rows[keep], 999),
                               np.concatenate([vecs[keep], q]))
    (top,) = changed.search(q, 3, [np.array([], dtype=np.int64)])
    assert top[0] == 999 and int(exact[0]) not in top
    assert changed.size == 50 and idx.size == 50, "copy-on-write: the old index is unchanged"


def test_a_flat_index_search_is_exact_ties_to_the_lower_row_and_the_same_alone_or_batched() -> None:
    """`PlatformIndex._search_flat`: matrix products over blocks of queries, the offline evaluator's order
    (score, then the lower row), and each query's answer independent of the queries searched with it."""
    rng = np.random.default_rng(3)
    vecs = np.round(_unit(6_000, 64, seed=3) * 4) / 4  # coarse values: many tied scores
    rows = np.sort(rng.choice(20_000, 6_000, replace=False)).astype(np.int64)
    idx = PlatformIndex.build(64, rows, vecs.astype(np.float32), IndexParams(hnsw_threshold=100_000))
    assert idx.kind == "flat"
    queries = _unit(13, 64, seed=4)
    none = np.zeros(0, dtype=np.int64)
    allowed = rng.random(20_000) < 0.5
    for mask in (None, allowed):
        batched = idx.search(queries, 40, [none] * 13, mask)
        for q, got in zip(queries, batched, strict=True):
            assert got.tolist() == idx.search(q[None], 40, [none], mask)[0].tolist()
            s = vecs.astype(np.float32) @ q
            ok = np.ones(len(rows), dtype=bool) if mask is None else mask[rows]
            order = np.lexsort((rows[ok], -s[ok]))
            assert set(got.tolist()) == set(rows[ok][order[:40]].tolist())  # (last bits of scores may differ)
    ex = idx.search(queries[:1], 5, [none])[0][:3]
    assert not set(idx.search(queries[:1], 5, [ex])[0].tolist()) & set(ex.tolist())


def test_catalog_changes_are_copy_on_write() -> None:
    vecs = _unit(6)
    cat = Catalog.build([f"a:{i}" for i in range(3)] + [f"b:{i}" for i in range(3)],
                        np.array([0, 0, 0, 1, 1, 1]), ["t"] * 6, vecs, np.array([5.0, 1, 3, 0, 2, 9]), 2,
                        IndexParams())
    assert [cat.item_ids[r] for r in cat.popular[0]] == ["a:0", "a:2", "a:1"]
    new = cat.with_changes([("a:9", 0, "nine", vecs[3]), ("a:1", 0, "one again", vecs[4])], ["b:2"])
    assert new.version == 1 and cat.version == 0
    assert new.index_sizes() == {0: 4, 1: 2} and cat.index_sizes() == {0: 3, 1: 3}
    assert new.row_of["a:1"] == 7 and not new.live[1] and new.titles[7] == "one again"
    assert new.is_live("a:9") and not new.is_live("b:2") and cat.is_live("b:2")
    assert list(new.rows_of(["a:1", "zzz"])) == [7, -1]


def test_fragments_are_rendered_once_and_only_when_sent() -> None:
    asked: list[list[int]] = []

    def render(idx: list[int]) -> list[bytes]:
        asked.append(idx)
        return [f'{{"i":{i}}}'.encode() for i in idx]

    frags = Fragments(50, render)
    assert frags.get([0, 1, 2]) == [b'{"i":0}', b'{"i":1}', b'{"i":2}']
    assert frags.get([1, 3]) == [b'{"i":1}', b'{"i":3}']
    assert asked == [[0, 1, 2], [3]] and len(frags) == 50  # 46 of 50 never made


def test_lru_and_ranked_cache_invalidation_race() -> None:
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.get("a")
    lru.put("c", 3)
    assert lru.get("b") is None and lru.get("a") == 1
    cache = RankedCache(10, ttl=60)
    entry = RankedEntry(0, 0, ("x",), Fragments(1, lambda idx: [b"{}"] * len(idx)), np.array([0]), False, True)
    since = cache.epoch()
    cache.invalidate_person("v", "p1", 2)  # an event arrives while the list is being computed
    cache.put(("v", "p1", 0, True, True), entry, since)
    assert cache.get(("v", "p1", 0, True, True), 0) is None, "a list computed before the event is not stored"
    cache.put(("v", "p1", 0, True, True), entry, cache.epoch())
    assert cache.get(("v", "p1", 0, True, True), 0) is entry and cache.get(("v", "p1", 0, True, True), 1) is None


def test_xrec_serve_starts_uvicorn_with_the_bundle(bundle_dir: Path, redis_prefix: str, tmp_path: Path) -> None:
    """The real command in a subprocess, two workers: it serves /healthz and the bundle on /readyz, and
    keep-alive requests do not wait on Nagle + delayed ACK (~40 ms each; uvicorn issue #3149)."""
    import os
    import time

    import httpx

    from tests.app.conftest import free_port
    from tests.fixtures.tiny_bundle import TEST_SALT

    port = free_port()
    env = {**os.environ, "XREC_ID_SALT": TEST_SALT, "XREC_REDIS_PREFIX": redis_prefix,
           "XREC_EVENTS_DIR": str(tmp_path / "events")}
    env.pop("XREC_BUNDLE_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "xrec.cli", "serve", "--bundle", str(bundle_dir),
                             "--port", str(port), "--workers", "2", "--log-level", "warning"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert ready is not None, proc.stdout.read().decode() if proc.stdout else ""
        assert ready.status_code == 200 and ready.json()["model_version"] == "tiny-0"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            http.get("/healthz")
            started = time.perf_counter()
            for _ in range(10):
                assert http.get("/healthz").status_code == 200
            assert time.perf_counter() - started < 0.3, "keep-alive requests stall: TCP_NODELAY is off"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
