"""ONNX export of the user encoder and the scorer, each checked against PyTorch on real inputs.

(The item-text encoder has its own module, `export.onnx_text`, with its graph optimisation and quantisation.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from contract.bundle import SCORER_INPUTS
from contract.bundle import USER_ENCODER_INPUTS as USER_INPUTS
from export.onnx_text import PARITY_COSINE, PARITY_MAX_ABS, ParityError
from training.model import RoutedScorer, Scorer, UserTower


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, inputs: tuple[str, ...],
            output: str, dynamic: dict[str, dict[int, str]], opset: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python values
        torch.onnx.export(module, args, str(path), input_names=list(inputs), output_names=[output],
                          dynamic_axes={**dynamic, output: {0: "batch"}}, opset_version=opset, dynamo=False)


def parity(module: nn.Module, path: Path, feeds: dict[str, np.ndarray], name: str,
           cosine_min: float = PARITY_COSINE, max_abs: float = PARITY_MAX_ABS) -> dict[str, float]:
    """Run PyTorch and ONNX Runtime on the same inputs; raise ParityError naming the model if they differ."""
    module.eval()
    with torch.no_grad():
        ref = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)[0]
    ref2, got2 = ref.reshape(len(ref), -1).astype(np.float64), got.reshape(len(got), -1).astype(np.float64)
    cos = np.sum(ref2 * got2, 1) / (np.linalg.norm(ref2, axis=1) * np.linalg.norm(got2, axis=1) + 1e-12)
    if ref2.shape[1] == 1:  # scalar outputs: cosine of the whole score vector
        cos = np.array([float(ref2[:, 0] @ got2[:, 0] / (np.linalg.norm(ref2) * np.linalg.norm(got2) + 1e-12))])
    figures = {"cosine_min": float(cos.min()), "max_abs_diff": float(np.abs(ref - got).max()), "n": len(ref)}
    print(f"parity {name}: cosine min {figures['cosine_min']:.7f}, max abs diff {figures['max_abs_diff']:.2e} "
          f"on {len(ref)} inputs")
    if figures["cosine_min"] < cosine_min or figures["max_abs_diff"] > max_abs:
        raise ParityError(f"{name}: ONNX output differs from PyTorch (cosine {figures['cosine_min']:.6f} < "
                          f"{cosine_min} or max abs diff {figures['max_abs_diff']:.2e} > {max_abs})")
    return figures


def export_user_encoder(users: UserTower, path: Path, feeds: dict[str, np.ndarray], opset: int = 17
                        ) -> dict[str, float]:
    """Export the serving path of the user tower; `feeds` are real histories for the parity check."""
    args = tuple(torch.from_numpy(feeds[k]) for k in USER_INPUTS)
    dyn = {k: {0: "batch", 1: "history"} for k in USER_INPUTS[:4]}
    dyn["target_platform"] = {0: "batch"}
    _export(users, args, path, USER_INPUTS, "user_vec", dyn, opset)
    return parity(users, path, {k: feeds[k] for k in USER_INPUTS}, "user_encoder")


def export_scorer(scorer: Scorer | RoutedScorer, path: Path, feeds: dict[str, np.ndarray], opset: int = 17
                  ) -> dict[str, float]:
    args = tuple(torch.from_numpy(feeds[k]) for k in SCORER_INPUTS)
    _export(scorer, args, path, SCORER_INPUTS, "score", {k: {0: "batch"} for k in SCORER_INPUTS}, opset)
    return parity(scorer, path, {k: feeds[k] for k in SCORER_INPUTS}, "scorer")
