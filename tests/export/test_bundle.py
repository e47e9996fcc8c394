"""Export a tiny randomly initialised model end to end: parity, manifest hashes, verify, tamper detection."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from contract.bundle import read_manifest, sha256_file
from export.onnx import parity
from export.onnx_text import ParityError
from export.verify import verify_bundle
from export.write_bundle import export_bundle
from training.checkpoint import load_checkpoint
from training.data.build import build_dataset
from training.data.demo import write_demo
from training.data.sources import load_sources
from training.model import ModelConfig, UserTower
from training.train import TrainConfig, train


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, tiny_text_model) -> Path:
    root = tmp_path_factory.mktemp("export")
    mapping = write_demo(root / "raw", people=200, items_per_platform=30, seed=2)
    build_dataset(load_sources(mapping), root / "ds", salt="s")
    ckpt = train(TrainConfig(dataset=root / "ds", out=root / "run", epochs=1, batch_tokens=256, scorer_epochs=1,
                             text_cache=root / "cache",
                             model=ModelConfig(dim=16, n_layers=1, text_model=tiny_text_model)))
    return export_bundle(ckpt, root / "bundles", version="t1", salt="s")


def test_bundle_has_every_file_with_its_hash_and_parity_figures(tiny_bundle):
    m = read_manifest(tiny_bundle)
    for name in ("item_encoder.onnx", "item_encoder.int8.onnx", "user_encoder.onnx", "scorer.onnx", "items.parquet",
                 "history.parquet", "accounts.parquet", "knn.npz", "tokenizer/tokenizer.json"):
        assert name in m.files, name
        assert m.files[name].sha256 == sha256_file(tiny_bundle / name)
    for model in ("item_encoder", "user_encoder", "scorer"):
        assert m.models[model].parity["cosine_min"] >= 0.9999, model
        assert m.models[model].parity["max_abs_diff"] <= 1e-4, model
    assert m.platforms == ["news", "shop", "video"] and m.dim == 16 and m.model_version == "t1"
    assert "int8" in m.models["item_encoder"].variants
    # the retrieval indexes, built at export, hashed like every file (verify covers them)
    assert sorted(m.indexes) == m.platforms
    items = pq.read_table(tiny_bundle / "items.parquet").column("platform").to_pylist()
    for platform, entry in m.indexes.items():
        assert entry.file in m.files and entry.kind == "flat" and entry.items == items.count(platform) > 0


def test_verify_passes_then_names_a_tampered_file(tiny_bundle, tmp_path):
    assert verify_bundle(tiny_bundle) == []
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    with (copy / "scorer.onnx").open("r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    problems = verify_bundle(copy)
    assert len(problems) == 1 and problems[0].startswith("scorer.onnx:") and "sha256" in problems[0]
    (copy / "knn.npz").unlink()
    assert any(p.startswith("knn.npz: missing") for p in verify_bundle(copy))


def test_parity_fails_loudly_naming_the_model(tiny_bundle):
    cfg = ModelConfig(**json.loads(json.dumps(load_checkpoint(
        tiny_bundle.parents[1] / "run" / "checkpoint.pt").cfg.to_dict())))
    other = UserTower(cfg)  # fresh random weights: not what was exported
    torch.manual_seed(1)
    for p in other.parameters():
        p.data.normal_()
    b, n = 3, 4
    feeds = {"hist_vecs": np.random.default_rng(0).standard_normal((b, n, cfg.dim)).astype(np.float32),
             "hist_platform": np.ones((b, n), dtype=np.int64), "hist_bucket": np.ones((b, n), dtype=np.int64),
             "hist_mask": np.ones((b, n), dtype=bool), "target_platform": np.zeros(b, dtype=np.int64)}
    with pytest.raises(ParityError, match="user_encoder"):
        parity(other, tiny_bundle / "user_encoder.onnx", feeds, "user_encoder")


def test_items_table_holds_the_model_vectors(tiny_bundle):
    import pyarrow.parquet as pq

    t = pq.read_table(tiny_bundle / "items.parquet")
    assert t.column_names == ["item_id", "platform", "title", "vector", "popularity"]
    v = np.stack(t.column("vector").to_numpy(zero_copy_only=False))
    assert v.shape == (90, 16) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_item_encoder_gives_new_items_the_trained_models_vectors(tiny_bundle):
    """item_encoder.onnx (tokenised as the service tokenises) against the trained model itself:
    `model.items(text_vec, platform, rows=None)` over the training text path, on catalog titles and real
    product titles. The pre-fix export (projection of the raw, unnormalised pooled vector) fails this."""
    from export.onnx_text import DEFAULT_SAMPLE_TEXTS, embed_onnx
    from training.pipeline import new_item_vectors
    from training.sequences import load_dataset
    from training.text_vectors import encode_texts

    loaded = load_checkpoint(tiny_bundle.parents[1] / "run" / "checkpoint.pt")
    ds = load_dataset(tiny_bundle.parents[1] / "ds")
    titles = ds.titles[:60] + list(DEFAULT_SAMPLE_TEXTS)
    plats = np.r_[ds.item_platform[:60], np.arange(len(DEFAULT_SAMPLE_TEXTS)) % len(ds.platforms)]
    text = encode_texts(titles, loaded.cfg.text_max_length, cache_dir=None, progress=False,
                        model_path=Path(loaded.cfg.text_model))
    expected = new_item_vectors(loaded.model, text, plats)
    got = embed_onnx(tiny_bundle / "item_encoder.onnx", tiny_bundle / "tokenizer",
                     read_manifest(tiny_bundle).max_length, titles, plats)
    cos = (expected * got).sum(1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() >= 0.9999, cos.min()
    assert read_manifest(tiny_bundle).models["item_encoder"].parity["cosine_min"] >= 0.9999
    # The check can fail: the old text path (no normalisation before the projection) is far off here.
    from transformers import AutoTokenizer

    from training.checkpoint import text_item_encoder
    from training.model import mean_pool

    module = text_item_encoder(loaded)
    enc = AutoTokenizer.from_pretrained(loaded.cfg.text_model)(titles, padding=True, truncation=True,
                                                                 max_length=loaded.cfg.text_max_length,
                                                                 return_tensors="pt")
    with torch.no_grad():
        pooled = mean_pool(module.backbone(**enc).last_hidden_state, enc["attention_mask"])
        tower = loaded.model.items
        old = torch.nn.functional.normalize(tower.proj(pooled) + tower.platform(torch.from_numpy(plats)), dim=-1)
    old = old.numpy()
    assert ((old * expected).sum(1)).min() < 0.999



def _load(bundle, tmp_path):
    from app.core.config import Settings
    from app.services.model_bundle import load_bundle

    return load_bundle(bundle, Settings(_env_file=None, bundle_dir=bundle, id_salt="s", events_dir=tmp_path / "ev"))


def test_the_kg_table_travels_from_the_dataset_to_the_service(tiny_bundle, tmp_path):
    """The demo's knowledge graph: train() stores the items' entities in the checkpoint, export writes them as
    kg.npz (listed in the manifest), the service loads them. By default the scorer does not read them."""
    from contract.features import SCORER_EXTRAS
    from contract.kg import ItemEntities
    from training.kg.table import item_entities
    from training.sequences import load_dataset

    root = tiny_bundle.parents[1]
    expected = item_entities(root / "ds", load_dataset(root / "ds").item_ids)
    assert not expected.is_empty
    ckpt = load_checkpoint(root / "run" / "checkpoint.pt").ckpt
    m = read_manifest(tiny_bundle)
    assert m.kg == "kg.npz" and "kg.npz" in m.files and m.kg_candidates == ckpt["kg_candidates"] == 0
    assert m.scorer_extras == list(SCORER_EXTRAS) and not m.kg_features and not ckpt["kg_features"]
    loaded = _load(tiny_bundle, tmp_path)
    for name, a in expected.arrays().items():
        assert np.array_equal(ItemEntities.from_arrays(ckpt["kg"]).arrays()[name], a), name
        assert np.array_equal(loaded.models.kg.arrays()[name], a), name
    assert not loaded.models.kg_features


def test_an_old_checkpoint_without_kg_still_exports_and_loads(tiny_bundle, tmp_path):
    """A checkpoint from before the knowledge graph (no "kg" keys): an empty table, no kg.npz, and it loads."""
    root = tiny_bundle.parents[1]
    ckpt = torch.load(root / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)
    del ckpt["kg"], ckpt["kg_candidates"], ckpt["kg_features"]
    (tmp_path / "old").mkdir()
    torch.save(ckpt, tmp_path / "old" / "checkpoint.pt")
    out = export_bundle(tmp_path / "old" / "checkpoint.pt", tmp_path / "bundles", version="old", salt="s",
                        dataset=root / "ds", measure_variants=False, log=lambda _: None)
    m = read_manifest(out)
    assert m.kg is None and not (out / "kg.npz").exists() and m.kg_candidates == 0
    loaded = _load(out, tmp_path)
    assert loaded.models.kg.is_empty and loaded.models.scorer is not None


def test_a_model_with_kg_features_and_candidates_serves_them(tiny_bundle, tmp_path, tiny_text_model):
    """`kg_features = true`, `kg_candidates = 10`: the scorer is trained on SCORER_EXTRAS + KG_EXTRAS, the bundle
    says so, and the service computes those features as the offline ranker does."""
    from app.services.ranking import tables as service_tables
    from contract import ranking
    from contract.features import scorer_features
    from training.evaluate import make_queries
    from training.pipeline import as_contract_query
    from training.report import model_rankers

    root = tiny_bundle.parents[1]
    ckpt = train(TrainConfig(dataset=root / "ds", out=tmp_path / "run", epochs=1, batch_tokens=256, scorer_epochs=1,
                             text_cache=root / "cache", kg_features=True, kg_candidates=10,
                             model=ModelConfig(dim=16, n_layers=1, text_model=tiny_text_model)))
    assert load_checkpoint(ckpt).scorer.linear.in_features == len(scorer_features(True))
    out = export_bundle(ckpt, tmp_path / "bundles", version="kg", salt="s", measure_variants=False,
                        log=lambda _: None)
    m = read_manifest(out)
    assert m.scorer_extras == list(scorer_features(True)) and m.kg_features and m.kg_candidates == 10
    assert m.models["scorer"].parity["max_abs_diff"] <= 1e-4
    loaded = _load(out, tmp_path)
    assert loaded.models.kg_features and loaded.models.kg_candidates == 10
    ds, ranker = model_rankers(ckpt)
    assert ranker.kg_features and ranker.kg_candidates == 10 and not ranker.kg.is_empty
    online, offline = service_tables(loaded.models, loaded.catalog), ranker.tables()
    n_kg = 0
    for q in [q for q in make_queries(ds, "valid") if len(q.items)][:20]:
        cq, rows = as_contract_query(q), ds.platform_items(q.platform)
        u = ranker.user_vectors([q])[0]
        a = ranking.features(online, cq, u, ranker.item_vecs[rows], rows)
        b = ranking.features(offline, cq, u, ranker.item_vecs[rows], rows)
        assert a.shape == b.shape == (len(rows), len(scorer_features(True)))
        assert np.array_equal(a[:, -2:], b[:, -2:])
        n_kg += int((a[:, -2:] > 0).any())
    assert n_kg > 0, "some query has items sharing entities with its history"


def test_a_model_with_the_als_feature_and_candidates_serves_them(tiny_bundle, tmp_path, tiny_text_model):
    """`als_features = true`, `als_candidates = 5`: the scorer is trained on SCORER_EXTRAS + ALS_EXTRAS, the
    bundle carries the factors (als.npz), and the service computes the same candidates and features as the
    trained model's own ranker; an old checkpoint without ALS still exports without it."""
    from app.services.ranking import OnnxBackend
    from app.services.ranking import tables as service_tables
    from contract import ranking
    from contract.features import scorer_features
    from training.evaluate import make_queries
    from training.pipeline import as_contract_query
    from training.report import model_rankers

    root = tiny_bundle.parents[1]
    ckpt = train(TrainConfig(dataset=root / "ds", out=tmp_path / "run", epochs=1, batch_tokens=256, scorer_epochs=1,
                             text_cache=root / "cache", als_features=True, als_candidates=5, candidates=5,
                             model=ModelConfig(dim=16, n_layers=1, text_model=tiny_text_model)))
    assert load_checkpoint(ckpt).scorer.linear.in_features == len(scorer_features(False, True))
    out = export_bundle(ckpt, tmp_path / "bundles", version="als", salt="s", measure_variants=False,
                        log=lambda _: None)
    m = read_manifest(out)
    assert m.scorer_extras == list(scorer_features(False, True)) and m.als_features and m.als_candidates == 5
    assert m.als == "als.npz" and "als.npz" in m.files and m.models["scorer"].parity["max_abs_diff"] <= 1e-4
    loaded = _load(out, tmp_path)
    ds, ranker = model_rankers(ckpt)
    assert ranker.als is not None and loaded.models.als is not None and loaded.models.als_candidates == 5
    assert np.array_equal(loaded.models.als.items, ranker.als.items)
    online, offline = service_tables(loaded.models, loaded.catalog), ranker.tables()
    queries = [as_contract_query(q) for q in make_queries(ds, "valid") if len(q.items)][:20]
    u = ranker.user_vectors([q for q in make_queries(ds, "valid") if len(q.items)][:20])
    a = ranking.candidates(OnnxBackend(loaded.models, loaded.catalog), online, queries, u)
    b = ranking.candidates(ranker.backend(), offline, queries, u)
    n_als = 0
    for ca, cb in zip(a, b, strict=True):
        assert ca.rows.tolist() == cb.rows.tolist() and ca.extras.shape[1] == len(scorer_features(False, True))
        assert np.array_equal(ca.extras[:, -1], cb.extras[:, -1])
        n_als += len(ca.rows) - 5
    assert n_als > 0, "ALS (and item-KNN) add candidates beyond retrieval's 5"
    # The checkpoint without ALS exports as before: no als.npz, SCORER_EXTRAS only.
    old = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert old["als"] is not None
    m0 = read_manifest(tiny_bundle)
    assert m0.als is None and not m0.als_features and not (tiny_bundle / "als.npz").exists()


def test_cutting_the_user_encoders_padding_keeps_every_vector_bit_identical(tiny_bundle):
    import onnxruntime as ort

    from app.services.ranking import PADDING_CUT_STEP, trim_padding
    from contract.features import History, user_encoder_feeds

    session = ort.InferenceSession(str(tiny_bundle / "user_encoder.onnx"), providers=["CPUExecutionProvider"])
    vectors = np.stack(pq.read_table(tiny_bundle / "items.parquet").column("vector").to_numpy(zero_copy_only=False))
    max_history = read_manifest(tiny_bundle).max_history
    rng = np.random.default_rng(0)

    def history(n: int) -> History:
        return History.of(rng.integers(0, len(vectors), n), rng.integers(0, 2, n),
                          np.sort(rng.integers(1_600_000_000, 1_700_000_000, n)))

    cut_any = False
    for lengths in ([0, 1, 3], [2, 9, 17], [1, max_history], [5, 80], [0], [11]):
        feeds = user_encoder_feeds([history(n) for n in lengths], [n % 2 for n in lengths],
                                   vectors.astype(np.float32), max_history)
        trimmed = trim_padding(feeds)
        slots = trimmed["hist_mask"].shape[1]
        longest = min(max(lengths), max_history)
        # The cut never reaches a real slot, leaves at least one, and is whole blocks of the step.
        assert max(longest, 1) <= slots <= max_history and (max_history - slots) % PADDING_CUT_STEP == 0
        assert slots - max(longest, 1) < PADDING_CUT_STEP
        cut_any |= slots < max_history
        np.testing.assert_array_equal(session.run(None, trimmed)[0], session.run(None, feeds)[0])
    assert cut_any


def test_a_routed_scorer_exports_as_one_onnx_file_that_routes_each_row_as_trained(tiny_bundle, tmp_path):
    """A checkpoint whose scorer ranks people new to the target platform by another half (`RoutedScorer`):
    export checks it against the trained module on both kinds of people, and the bundle's scorer.onnx gives
    each row the score of its own half."""
    from contract.features import SCORER_EXTRAS
    from training.model import RoutedScorer, Scorer

    root = tiny_bundle.parents[1]
    loaded = load_checkpoint(root / "run" / "checkpoint.pt")
    new = Scorer(loaded.cfg)
    new.start_from({"log_popularity": 10.0, "dot": -1.0})  # unlike anything training ships
    routed = RoutedScorer(loaded.scorer, new).eval()
    ckpt = dict(loaded.ckpt, scorer=routed.state_dict())
    (tmp_path / "routed").mkdir()
    torch.save(ckpt, tmp_path / "routed" / "checkpoint.pt")
    assert isinstance(load_checkpoint(tmp_path / "routed" / "checkpoint.pt").scorer, RoutedScorer)
    out = export_bundle(tmp_path / "routed" / "checkpoint.pt", tmp_path / "bundles", version="routed", salt="s",
                        dataset=root / "ds", measure_variants=False, log=lambda _: None)
    assert read_manifest(out).models["scorer"].parity["max_abs_diff"] <= 1e-4
    session = _load(out, tmp_path).models.scorer
    rng = np.random.default_rng(0)
    d = loaded.cfg.dim
    feeds = {"user_vec": rng.normal(size=(40, d)).astype(np.float32),
             "item_vec": rng.normal(size=(40, d)).astype(np.float32),
             "extras": rng.random(size=(40, len(SCORER_EXTRAS))).astype(np.float32)}
    has = SCORER_EXTRAS.index("has_target_history")
    feeds["extras"][:, has] = np.arange(40) % 2
    got = session.run(None, feeds)[0].reshape(-1)
    with torch.no_grad():
        args = [torch.from_numpy(feeds[k]) for k in ("user_vec", "item_vec", "extras")]
        known, fresh = routed.known(*args).numpy(), routed.new(*args).numpy()
    assert not np.allclose(known, fresh)
    np.testing.assert_allclose(got, np.where(np.arange(40) % 2 == 1, known, fresh), atol=1e-5)
