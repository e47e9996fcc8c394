"""ONNX export of the item-text encoder (`training.model.TextItemEncoder`) and its parity checks.

Contract (`contract.bundle`): input_ids int64 [B,T], attention_mask int64 [B,T], platform int64 [B]
→ item_vec float32 [B,D], unit rows. Batch and sequence axes are dynamic.

    export_text_encoder   module → fp32 ONNX, failing unless it matches the module (cosine ≥ 0.9999, |Δ| ≤ 1e-4)
    check_against_model   the ONNX file against the trained model's own text-only item vectors
    embed_onnx            titles → vectors with an item-encoder file (ONNX Runtime, no app code)

Graph variants (fused, int8, fp16): `export.onnx_optimize`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from tokenizers import Tokenizer
from torch import nn

from contract.bundle import ITEM_ENCODER_INPUTS
from contract.text_inputs import load_tokenizer, pad_batch
from training.model import ItemTower, ModelConfig, TextItemEncoder

INPUTS = ITEM_ENCODER_INPUTS
OUTPUT = "item_vec"
# fp32 parity thresholds (what optimum's validate_model_outputs would hold an export to).
PARITY_COSINE = 0.9999
PARITY_MAX_ABS = 1e-4
# Written into the ONNX file's metadata at export: the graph optimiser needs the attention shape and cannot
# read it off this graph (transformers' `view(..., -1, head_dim)` hides the head count).
META_HEADS, META_HIDDEN, META_MAX_LENGTH = "xrec.num_heads", "xrec.hidden_size", "xrec.max_length"

# A few varied product titles for the export-time parity check when the caller gives none.
DEFAULT_SAMPLE_TEXTS = (
    "Mae Ploy Thai Green Curry Paste - 14 oz jar",
    "Ateco Food Coloring Kit, 6 colors",
    "PowerBar Harvest Energy Bars, Double Chocolate Crisp, 2.29-Ounce Bars (Pack of 15)",
    "Wilton Decorating Cakes Book",
    "tea",
    "Lodge Pre-Seasoned Cast Iron Skillet with Assist Handle, 12 inch, Black - oven safe, induction ready",
    "",
    "Zoku Quick Pops Recipe Book",
)


class ParityError(RuntimeError):
    """An exported model disagrees with its PyTorch module beyond the tolerances."""


# --------------------------------------------------------------------------------------------------------
# The module


def reference_minilm_encoder(model_dir: Path, n_platforms: int = 8) -> TextItemEncoder:
    """MiniLM + an item tower with identity projection and zero platform embedding: its output is the
    sentence-transformers all-MiniLM-L6-v2 embedding, in the same graph shape as a trained item tower."""
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    backbone = AutoModel.from_pretrained(model_dir, attn_implementation="eager")
    dim = backbone.config.hidden_size
    tower = ItemTower(ModelConfig(n_items=0, n_platforms=n_platforms, text_dim=dim, dim=dim, use_id=False))
    with torch.no_grad():
        tower.proj.weight.copy_(torch.eye(dim))
        tower.proj.bias.zero_()
        tower.platform.weight.zero_()
    return TextItemEncoder(backbone, tower).eval()


# --------------------------------------------------------------------------------------------------------
# Export and parity


def _as_tokenizer(tokenizer: Tokenizer | Path | str, max_length: int) -> Tokenizer:
    return tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(Path(tokenizer), max_length)


def _eager_attention(module: nn.Module) -> list[tuple[nn.Module, str]]:
    """Switch Hugging Face submodules to eager attention for the export; returns what to restore.

    ORT's transformer optimizer recognises the eager attention subgraph (MatMul-Softmax-MatMul) and fuses it
    into one Attention op; the SDPA export is a different subgraph that it leaves unfused.
    """
    changed = []
    for sub in module.modules():
        impl = getattr(getattr(sub, "config", None), "_attn_implementation", None)
        if impl is not None and impl != "eager" and hasattr(sub, "set_attn_implementation"):
            try:
                sub.set_attn_implementation("eager")
                changed.append((sub, impl))
            except (ValueError, NotImplementedError):  # pragma: no cover - a model without eager attention
                pass
    return changed


def _attention_shape(module: nn.Module) -> tuple[int, int]:
    """(num_heads, hidden_size) of the first Hugging Face config in the module; (0, 0) when there is none."""
    for sub in module.modules():
        cfg = getattr(sub, "config", None)
        heads, hidden = getattr(cfg, "num_attention_heads", None), getattr(cfg, "hidden_size", None)
        if isinstance(heads, int) and isinstance(hidden, int):
            return heads, hidden
    return 0, 0


def _ensure_inputs(model: onnx.ModelProto) -> None:
    """Keep every contract input in the graph even when the module ignores one (the exporter drops unused
    inputs, and the service feeds all three)."""
    present = {i.name for i in model.graph.input}
    dims = {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"], "platform": ["batch"]}
    for name in INPUTS:
        if name not in present:
            model.graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64, dims[name]))


def metadata(path: Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def export_text_encoder(module: nn.Module, tokenizer_dir: Path, out_path: Path, max_length: int, opset: int = 17,
                        sample_texts: Sequence[str] | None = None, name: str | None = None,
                        check: bool = True) -> dict:
    """Export `module` (forward(input_ids, attention_mask, platform) → unit vectors) to `out_path`.

    Dynamic batch and sequence axes, weights inside the file. Unless `check=False` the file is then run
    against the module on `sample_texts` (real titles, ideally; a built-in handful otherwise) and the export
    fails with ParityError below cosine 0.9999 or above max abs diff 1e-4. Returns a summary with the
    parity figures under "parity".
    """
    if opset < 17:
        raise ValueError(f"opset {opset}: the item encoder is exported with opset ≥ 17 (LayerNormalization)")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    name = name or out_path.stem
    tok = load_tokenizer(Path(tokenizer_dir), max_length)
    texts = list(sample_texts) if sample_texts else list(DEFAULT_SAMPLE_TEXTS)
    pad_id = tok.token_to_id("[PAD]") or 0
    # Trace with padding in the batch: with a mask of all ones the attention code may skip the mask, and
    # the traced graph would then ignore padding.
    dummy = [max(texts[:8], key=len) or "x", "a"]
    ids, mask = pad_batch([e.ids for e in tok.encode_batch(dummy)], pad_id)
    if mask.all():
        ids, mask = np.pad(ids, ((0, 0), (0, 1)), constant_values=pad_id), np.pad(mask, ((0, 0), (0, 1)))
    args = (torch.from_numpy(ids), torch.from_numpy(mask), torch.zeros(len(dummy), dtype=torch.long))
    was_training = module.training
    module.eval()
    restore = _eager_attention(module)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python values computed from shapes
            # The TorchScript exporter: the dynamo one needs onnxscript, and this graph has no data-dependent
            # control flow that would need it.
            torch.onnx.export(
                module, args, str(out_path), input_names=list(INPUTS), output_names=[OUTPUT],
                dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                              "attention_mask": {0: "batch", 1: "sequence"},
                              "platform": {0: "batch"}, OUTPUT: {0: "batch"}},
                opset_version=opset, do_constant_folding=True, dynamo=False)
    finally:
        for sub, impl in restore:
            sub.set_attn_implementation(impl)
        module.train(was_training)
    model = onnx.load(str(out_path))
    _ensure_inputs(model)
    heads, hidden = _attention_shape(module)
    onnx.helper.set_model_props(model, {META_HEADS: str(heads), META_HIDDEN: str(hidden),
                                        META_MAX_LENGTH: str(max_length)})
    model.doc_string = f"xrec item encoder {name}: input_ids, attention_mask, platform -> unit item_vec"
    onnx.save(model, str(out_path))
    onnx.checker.check_model(str(out_path))
    summary: dict = {"file": str(out_path), "opset": opset, "bytes": out_path.stat().st_size,
                     "inputs": list(INPUTS), "outputs": [OUTPUT], "max_length": max_length}
    if check:
        summary["parity"] = check_parity(module, out_path, texts, tok, max_length=max_length, name=name)
    return summary


def check_parity(module: nn.Module, onnx_path: Path, sample_texts: Sequence[str], tokenizer: Tokenizer | Path,
                 max_length: int = 128, platforms: Sequence[int] | None = None, name: str | None = None,
                 min_cosine: float = PARITY_COSINE, max_abs_diff: float | None = PARITY_MAX_ABS,
                 batch_size: int = 32, verbose: bool = True) -> dict[str, float]:
    """Run the module (PyTorch) and the ONNX file (ONNX Runtime, CPU) on the same texts; print and return
    the cosine (min and mean over rows) and the max abs diff; raise ParityError naming the model when the
    min cosine is below `min_cosine` or the max abs diff above `max_abs_diff` (None: not checked, for
    quantised variants where only the cosine means something).

    The texts go in as batches in the given order, each padded to its longest text, so padded rows are part
    of the check. Platforms default to cycling through the module's platform embedding.
    """
    import onnxruntime as ort

    name = name or Path(onnx_path).stem
    tok = _as_tokenizer(tokenizer, max_length)
    texts = list(sample_texts)
    if not texts:
        raise ValueError("check_parity needs sample texts")
    n_plat = _n_platforms(module)
    plats = np.asarray(platforms if platforms is not None else [i % n_plat for i in range(len(texts))],
                       dtype=np.int64)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {i.name for i in sess.get_inputs()}
    pad_id = tok.token_to_id("[PAD]") or 0
    ref_parts, got_parts = [], []
    was_training = module.training
    module.eval()
    try:
        for start in range(0, len(texts), batch_size):
            ids, mask = pad_batch([e.ids for e in tok.encode_batch(texts[start:start + batch_size])], pad_id)
            plat = plats[start:start + batch_size]
            with torch.no_grad():
                ref = module(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(plat))
            ref_parts.append(ref.float().numpy())
            feed = {k: v for k, v in (("input_ids", ids), ("attention_mask", mask), ("platform", plat)) if k in feeds}
            got_parts.append(np.asarray(sess.run(None, feed)[0], dtype=np.float32))
    finally:
        module.train(was_training)
    figures = compare_vectors(np.concatenate(ref_parts), np.concatenate(got_parts))
    if verbose:
        print(f"parity {name}: {len(texts)} texts, cosine min {figures['cosine_min']:.6f} "
              f"mean {figures['cosine_mean']:.6f}, max abs diff {figures['max_abs_diff']:.2e}")
    problems = []
    if not figures["cosine_min"] >= min_cosine:  # `not >=` so that NaN fails too
        problems.append(f"cosine {figures['cosine_min']:.6f} < {min_cosine}")
    if max_abs_diff is not None and not figures["max_abs_diff"] <= max_abs_diff:
        problems.append(f"max abs diff {figures['max_abs_diff']:.2e} > {max_abs_diff:.0e}")
    if problems:
        raise ParityError(f"ONNX model {name} ({onnx_path}) does not match its PyTorch module on "
                          f"{len(texts)} texts: " + "; ".join(problems))
    return figures


def _n_platforms(module: nn.Module) -> int:
    emb = getattr(getattr(module, "items", module), "platform", None)
    return emb.num_embeddings if isinstance(emb, nn.Embedding) else 1


def compare_vectors(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Row-wise cosine and max abs diff between two [N, D] arrays: cosine_min (also as "cosine", the
    manifest's parity key), cosine_mean, max_abs_diff, n."""
    if ref.shape != got.shape:
        raise ParityError(f"shape {got.shape} != reference {ref.shape}")
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    cos = (ref64 * got64).sum(1) / (np.linalg.norm(ref64, axis=1) * np.linalg.norm(got64, axis=1) + 1e-12)
    return {"cosine": float(cos.min()), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "max_abs_diff": float(np.abs(ref64 - got64).max()), "n": float(len(ref))}


def embed_onnx(onnx_path: Path, tokenizer_dir: Path, max_length: int, texts: Sequence[str],
               platforms: Sequence[int], batch_size: int = 64) -> np.ndarray:
    """Item vectors [N, D] from an item-encoder file, tokenised with the bundle's tokenizer as the service
    tokenises (`contract.text_inputs`); ONNX Runtime on the CPU."""
    import onnxruntime as ort

    tok = load_tokenizer(Path(tokenizer_dir), max_length)
    pad_id = tok.token_to_id("[PAD]") or 0
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {i.name for i in sess.get_inputs()}
    plats = np.asarray(platforms, dtype=np.int64)
    out = []
    for s in range(0, len(texts), batch_size):
        ids, mask = pad_batch([e.ids for e in tok.encode_batch(list(texts[s:s + batch_size]))], pad_id)
        feed = {"input_ids": ids, "attention_mask": mask, "platform": plats[s:s + batch_size]}
        out.append(np.asarray(sess.run(None, {k: v for k, v in feed.items() if k in feeds})[0], dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def check_against_model(onnx_path: Path, tokenizer_dir: Path, max_length: int, texts: Sequence[str],
                        platforms: Sequence[int], expected: np.ndarray, name: str = "item_encoder",
                        min_cosine: float = PARITY_COSINE) -> dict[str, float]:
    """The exported file against the trained model's own vectors for the same texts: `expected` must be
    what training computes for a new item (`model.items(text_vec, platform, rows=None)` over the training
    text path), not the output of the module that was exported — a shared mistake would cancel out.
    Raises ParityError below `min_cosine`."""
    got = embed_onnx(onnx_path, tokenizer_dir, max_length, texts, platforms)
    figures = compare_vectors(expected.astype(np.float32), got)
    print(f"parity {name} vs the trained model: {len(texts)} titles, cosine min {figures['cosine_min']:.6f} "
          f"mean {figures['cosine_mean']:.6f}, max abs diff {figures['max_abs_diff']:.2e}")
    if not figures["cosine_min"] >= min_cosine:
        raise ParityError(f"ONNX model {name} ({onnx_path}) gives new items other vectors than the trained model "
                          f"(cosine min {figures['cosine_min']:.6f} < {min_cosine} on {len(texts)} titles)")
    return figures
