"""Item-encoder graph variants: ORT-fused fp32, per-token int8 (CPU) and fp16 (GPU).

    optimize_graph        fp32 → ORT-fused fp32 (Attention, SkipLayerNorm, BiasGelu, EmbedLayerNorm)
    quantize_int8         fp32 → int8 (per-token activation scales; see the Quantisation section)
    to_fp16               fp32 → fused fp16 for GPU serving (io types unchanged)

Each takes the fp32 file `export.onnx_text.export_text_encoder` wrote; bench/embed.py measures what they buy
(docs/benchmarks.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from export.onnx_text import META_HEADS, META_HIDDEN, metadata

# --------------------------------------------------------------------------------------------------------
# Graph optimisation


def _fuse(in_path: Path, num_heads: int, hidden_size: int, use_gpu: bool):  # -> OnnxModel
    from onnxruntime.transformers.optimizer import optimize_model

    meta = metadata(in_path)
    num_heads = num_heads or int(meta.get(META_HEADS, 0))
    hidden_size = hidden_size or int(meta.get(META_HIDDEN, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # opt_level 0: only the offline fusions, so the file stays loadable with any ORT graph level
        return optimize_model(str(in_path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                              opt_level=0, use_gpu=use_gpu)


def optimize_graph(in_path: Path, out_path: Path, num_heads: int = 0, hidden_size: int = 0) -> dict:
    """Fuse the BERT subgraphs (attention, skip + LayerNorm, bias + GELU, embeddings) with ORT's transformer
    optimizer and save the result (contrib ops: ONNX Runtime only). Heads and hidden size come from the
    export's metadata unless given. Returns the fused op counts."""
    opt = _fuse(Path(in_path), num_heads, hidden_size, use_gpu=False)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    opt.save_model_to_file(str(out_path))
    fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    return {"file": str(out_path), "bytes": out_path.stat().st_size, "fused": fused}


# --------------------------------------------------------------------------------------------------------
# Quantisation
#
# ORT's dynamic quantisation (MatMulInteger / DynamicQuantizeMatMul) quantises a MatMul's activations with
# ONE scale for the whole [B, T, K] tensor. MiniLM has a few tokens with massive activations (|x| ≈ 25-30
# where the median token peaks at 2-5): one scale for all tokens leaves the ordinary ones a handful of levels,
# and item vectors end at cosine 0.987 (min over titles) to fp32, 0.918 with ORT's defaults. The per-token
# recipe (0.996) gives each
# token its own scale: x_q = round(x / s_t) + 128 with s_t = max|x_t| / 127, then MatMulIntegerToFloat (uint8
# × int8 per-channel weights: the VNNI kernel ORT's own int8 path uses) and a multiply by s_t. Inputs that
# come out of a GELU (≥ -0.17) are shifted to ≥ 0 to use all 256 levels, and the shift's constant
# contribution is taken back out exactly. Measured variants: docs/benchmarks.md.

# min over x of x·Φ(x) is -0.16997; the tanh and sigmoid approximations stay above -0.1701, and anything
# below the shift would only saturate at level 0 (an error of < 1e-4)
GELU_MIN = 0.17
_LN_OPS = ("LayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
           "SimplifiedLayerNormalization")
_GELU_OPS = ("Gelu", "BiasGelu", "FastGelu", "QuickGelu")


@dataclass(frozen=True)
class Int8Recipe:
    """How `quantize_int8` quantises; `DEFAULT_INT8` is the recipe chosen in docs/benchmarks.md.

    method        "per-token": this module's per-token activation rewrite (int8 weights per output channel)
                  for the MatMuls in `scope`, ORT dynamic per-tensor for the other weight MatMuls;
                  "dynamic": ORT quantize_dynamic for all of them.
    scope         per-token: "ffn" (the MatMuls into and out of each GELU) or "all".
    per_channel, reduce_range, op_types: passed to ORT's quantize_dynamic. reduce_range also makes
                  per-token weights 7-bit: CPUs without VNNI (AVX512-VNNI / AVX-VNNI) compute u8×s8 through
                  int16 pairs that can saturate with full 8-bit weights.
    exclude_tail  keep mean pooling, projection, platform embedding and normalisation in float: they cost
                  nothing, and the projection's error would land on the output vector directly.
    """

    name: str = "per-token-ffn"
    method: str = "per-token"
    scope: str = "ffn"
    shift_gelu: bool = True
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = ("MatMul",)
    exclude_tail: bool = True


DEFAULT_INT8 = Int8Recipe()
# The variants measured against each other (bench/embed.py --int8 all), worst to best.
INT8_RECIPES = {
    "naive": Int8Recipe(name="naive", method="dynamic", per_channel=False, op_types=(), exclude_tail=False),
    "dynamic-per-channel": Int8Recipe(name="dynamic-per-channel", method="dynamic"),
    "per-token-all": Int8Recipe(name="per-token-all", scope="all"),
    "per-token-ffn": DEFAULT_INT8,
}


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: n for n in model.graph.node for out in n.output}


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    return users


def _downstream(model: onnx.ModelProto, start: onnx.NodeProto) -> list[onnx.NodeProto]:
    users = _consumers(model)
    seen: dict[int, onnx.NodeProto] = {}
    todo = [start]
    while todo:
        node = todo.pop()
        for out in node.output:
            for u in users.get(out, []):
                if id(u) not in seen:
                    seen[id(u)] = u
                    todo.append(u)
    return list(seen.values())


def _tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes after the transformer (pooling, projection, platform embedding, normalisation):
    everything downstream of the last LayerNormalization, i.e. the one with no LayerNormalization after it."""
    for node in model.graph.node:
        if node.op_type in _LN_OPS:
            after = _downstream(model, node)
            if not any(n.op_type in _LN_OPS for n in after):
                return [n.name for n in after if n.name]
    return []


def _near(model: onnx.ModelProto, tensor: str, op_types: tuple[str, ...], downstream: bool, steps: int = 4
          ) -> bool:
    """Whether an op of `op_types` is within `steps` element-wise nodes (Add, Mul, Div, Constant) up- or
    downstream of `tensor`: the shape of a GELU written out in primitive ops, and nothing wider (the GELU
    shift is only exact for tensors that really are GELU outputs)."""
    prod, users = _producers(model), _consumers(model)
    frontier = [tensor]
    for _ in range(steps):
        nodes = [u for t in frontier for u in users.get(t, [])] if downstream else \
            [prod[t] for t in frontier if t in prod]
        if any(n.op_type in op_types for n in nodes):
            return True
        nodes = [n for n in nodes if n.op_type in ("Add", "Mul", "Div", "Constant")]
        frontier = [t for n in nodes for t in (n.output if downstream else n.input)]
    return False


def _is_gelu_output(model: onnx.ModelProto, tensor: str) -> bool:
    prod = _producers(model).get(tensor)
    if prod is None:
        return False
    if prod.op_type in _GELU_OPS:
        return True
    # Unfused exact GELU: (x * (1 + erf(x / sqrt 2))) * 0.5, ending in a Mul.
    return prod.op_type == "Mul" and _near(model, tensor, ("Erf", "Tanh"), downstream=False)


def weight_matmuls(model: onnx.ModelProto, scope: str = "all", exclude: Sequence[str] = ()) -> list[str]:
    """Names of the MatMuls with a constant 2-D weight (the transformer's linear layers), minus `exclude`.

    scope "ffn": only the feed-forward ones (the MatMul into and the MatMul out of each GELU).
    """
    inits = {i.name: i for i in model.graph.initializer}
    skip = set(exclude)
    names = []
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.name in skip or n.input[1] not in inits or len(inits[n.input[1]].dims) != 2:
            continue
        if scope == "ffn" and not (_is_gelu_output(model, n.input[0])
                                   or _near(model, n.output[0], ("Erf", *_GELU_OPS), downstream=True)):
            continue
        names.append(n.name)
    return names


def per_token_int8(model: onnx.ModelProto, nodes: Sequence[str], shift_gelu: bool = True,
                   weight_bits: int = 8) -> onnx.ModelProto:
    """Rewrite the MatMuls `nodes` (constant weight B [K, M]) to int8 with per-token activation scales.

    For an input x [..., K] (quantised once however many MatMuls read it, e.g. Q, K and V):
        s   = max(max|x| over K / 127, eps)               [..., 1]
        x_q = QuantizeLinear(x as [N, K], s as [N], 128)  per row (axis 0), uint8
    (GELU outputs: x + 0.17 ≥ 0 instead of x, s = max(x + 0.17) / 255, zero point 0)
    and for each MatMul:
        y   = MatMulIntegerToFloat(x_q, W_q, 1, w_scale, 128) * s   reshaped back to [..., M]
    W_q = round(W / w_scale) int8, w_scale per output column. Returns a new model; the input is untouched.
    """
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name: i for i in model.graph.initializer}
    targets = set(nodes)
    wmax = float(2 ** (weight_bits - 1) - 1)
    consts: dict[str, onnx.TensorProto] = {}

    def const(name: str, value: object, dtype: type = np.float32) -> str:
        if name not in consts:
            consts[name] = numpy_helper.from_array(np.array(value, dtype=dtype), name)
        return name

    new_nodes: list[onnx.NodeProto] = []
    quantised: dict[str, tuple[str, str, str, int]] = {}  # input → (x_q, s [N,1], lead shape, zero point)
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.name not in targets:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        k, m = w.shape
        x, y = node.input[0], node.output[0]
        if x not in quantised:
            q = "ptq_" + x.strip("/").replace("/", "_")
            shifted = shift_gelu and _is_gelu_output(model, x)
            if shifted:
                zp, levels = 0, 255.0
                src = q + "_pos"
                new_nodes += [
                    helper.make_node("Add", [x, const("ptq_gelu_shift", GELU_MIN)], [src], name=q + "_shift"),
                    helper.make_node("ReduceMax", [src], [q + "_max"], name=q + "_max", axes=[-1], keepdims=1)]
            else:
                zp, levels = 128, 127.0
                src = x
                new_nodes += [
                    helper.make_node("Abs", [x], [q + "_abs"], name=q + "_abs"),
                    helper.make_node("ReduceMax", [q + "_abs"], [q + "_max"], name=q + "_max", axes=[-1],
                                     keepdims=1)]
            new_nodes += [
                helper.make_node("Mul", [q + "_max", const(f"ptq_inv{levels:.0f}", 1.0 / levels)], [q + "_s0"],
                                 name=q + "_s0"),
                # eps: an all-zero row would divide by zero
                helper.make_node("Max", [q + "_s0", const("ptq_eps", 1e-12)], [q + "_s"], name=q + "_s"),
                helper.make_node("Reshape", [q + "_s", const("ptq_rows", [-1], np.int64)], [q + "_s_n"],
                                 name=q + "_s_n"),
                helper.make_node("Reshape", [q + "_s", const("ptq_rows_1", [-1, 1], np.int64)], [q + "_s_n1"],
                                 name=q + "_s_n1"),
                helper.make_node("Reshape", [src, const(f"ptq_rows_{k}", [-1, k], np.int64)], [q + "_x2"],
                                 name=q + "_x2"),
                # QuantizeLinear's per-axis zero point must have the scale's shape [N]
                helper.make_node("Shape", [q + "_s_n"], [q + "_n"], name=q + "_n"),
                helper.make_node("Expand", [const(f"ptq_zp{zp}_1", [zp], np.uint8), q + "_n"], [q + "_zp"],
                                 name=q + "_zp"),
                helper.make_node("QuantizeLinear", [q + "_x2", q + "_s_n", q + "_zp"], [q + "_xq"],
                                 name=q + "_q", axis=0),
                helper.make_node("Shape", [x], [q + "_lead"], name=q + "_lead", start=0, end=-1)]
            quantised[x] = (q + "_xq", q + "_s_n1", q + "_lead", zp)
        xq, s, lead, zp = quantised[x]
        p = "ptq_" + node.name.strip("/").replace("/", "_")
        w_scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / wmax
        const(p + "_w", np.round(w / w_scale).astype(np.int8), np.int8)
        const(p + "_w_scale", w_scale.astype(np.float32))
        new_nodes += [
            helper.make_node("MatMulIntegerToFloat",
                             [xq, p + "_w", const("ptq_one", 1.0), p + "_w_scale", const(f"ptq_zp{zp}", zp, np.uint8)],
                             [p + "_y"], name=p + "_matmul", domain="com.microsoft"),
            helper.make_node("Mul", [p + "_y", s], [p + "_ys"], name=p + "_rescale")]
        out2d = p + "_ys"
        if zp == 0:  # shifted input: (x + c) W = x W + c · colsum(W); take the constant back out
            const(p + "_shift_back", (-GELU_MIN * w.sum(axis=0)).astype(np.float32))
            new_nodes.append(helper.make_node("Add", [out2d, p + "_shift_back"], [p + "_yc"], name=p + "_unshift"))
            out2d = p + "_yc"
        new_nodes += [
            helper.make_node("Concat", [lead, const(f"ptq_dim{m}", [m], np.int64)], [p + "_shape"], name=p + "_shape",
                             axis=0),
            helper.make_node("Reshape", [out2d, p + "_shape"], [y], name=p + "_back")]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    used = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used] + list(consts.values())
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def quantize_int8(in_path: Path, out_path: Path, recipe: Int8Recipe = DEFAULT_INT8) -> dict:
    """An int8 variant of an fp32 item-encoder ONNX file: the raw export, not the fused graph (whose
    Attention op hides Q, K and V from the rewrite). See `Int8Recipe` and the section comment above."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    in_path, out_path = Path(in_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(in_path))
    exclude = _tail_nodes(model) if recipe.exclude_tail else []
    per_token: list[str] = []
    if recipe.method == "per-token":
        per_token = weight_matmuls(model, recipe.scope, exclude)
        model = per_token_int8(model, per_token, shift_gelu=recipe.shift_gelu,
                               weight_bits=7 if recipe.reduce_range else 8)
    elif recipe.method != "dynamic":
        raise ValueError(f"unknown int8 method {recipe.method!r}")
    rest = [] if recipe.method == "per-token" and recipe.scope == "all" else weight_matmuls(model, "all", exclude)
    if rest or recipe.method == "dynamic":
        tmp = out_path.with_name(out_path.name + ".tmp")
        onnx.save(model, str(tmp))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quantize_dynamic(
                    str(tmp), str(out_path), op_types_to_quantize=list(recipe.op_types),
                    per_channel=recipe.per_channel, reduce_range=recipe.reduce_range, weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude,
                    # DefaultTensorType: shape inference cannot type the outputs of contrib ops (our rewrite)
                    extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
        finally:
            tmp.unlink(missing_ok=True)
    else:
        onnx.save(model, str(out_path))
    onnx.checker.check_model(str(out_path))
    return {"file": str(out_path), "bytes": out_path.stat().st_size, "recipe": asdict(recipe),
            "per_token_matmuls": len(per_token), "per_tensor_matmuls": len(rest)}


# --------------------------------------------------------------------------------------------------------
# fp16 (GPU)


def to_fp16(in_path: Path, out_path: Path, num_heads: int = 0, hidden_size: int = 0) -> dict:
    """An fp16 variant for GPU serving (CUDA EP): ORT's GPU fusions, then weights and compute in float16.

    The inputs and output keep their contract types (int64 in, float32 out) so the service does not change,
    and the tail (pooling, projection, normalisation) stays float32: a sum over up to max_length tokens and an
    L2 norm are where fp16 would lose precision, for no measurable time. Returns whether the file loads and
    runs on CPU here (ORT's CPU provider lacks fp16 kernels for some ops; that is not a defect of the file).
    """
    import onnxruntime as ort

    in_path, out_path = Path(in_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    opt = _fuse(in_path, num_heads, hidden_size, use_gpu=True)
    keep_fp32 = _tail_nodes(opt.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.convert_float_to_float16(keep_io_types=True, node_block_list=keep_fp32)
    opt.save_model_to_file(str(out_path))
    onnx.checker.check_model(str(out_path))
    runs_on_cpu, error = True, ""
    try:
        sess = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
        feed = {"input_ids": np.array([[101, 2023, 102, 0]], dtype=np.int64),
                "attention_mask": np.array([[1, 1, 1, 0]], dtype=np.int64), "platform": np.zeros(1, np.int64)}
        out = sess.run(None, {k: v for k, v in feed.items() if k in {i.name for i in sess.get_inputs()}})[0]
        runs_on_cpu = bool(np.isfinite(out).all())
    except Exception as e:  # any ORT failure here only means "not on this CPU build"
        runs_on_cpu, error = False, f"{type(e).__name__}: {e}"[:300]
    return {"file": str(out_path), "bytes": out_path.stat().st_size, "fp32_nodes": len(keep_fp32),
            "runs_on_cpu": runs_on_cpu, "cpu_error": error}
