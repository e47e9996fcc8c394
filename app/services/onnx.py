"""ONNX Runtime sessions: which execution provider, and one place that creates sessions."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def select_providers(preferred: list[str], available: list[str]) -> list[str]:
    """The providers to ask ONNX Runtime for, best first; CPU always last as the fallback.

    Nothing preferred: CUDA when the installed onnxruntime offers it (onnxruntime-gpu), else CPU alone.
    A preferred provider this onnxruntime does not have is skipped (with a warning) rather than fatal,
    so one image runs on GPU and CPU nodes alike.
    """
    wanted = preferred or [CUDA]
    chosen = [p for p in wanted if p in available and p != CPU]
    missing = [p for p in wanted if p not in available]
    if preferred and missing:
        log.warning("execution providers not available here, skipped: %s", ", ".join(missing))
    return [*chosen, CPU]


def make_session(path: Path, providers: list[str], intra_op_threads: int | None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if intra_op_threads is not None:
        opts.intra_op_num_threads = intra_op_threads
        # One op at a time per call: the server runs many calls at once on few cores.
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def active_provider(session: ort.InferenceSession) -> str:
    """The provider ONNX Runtime actually uses (it falls back to CPU if CUDA fails to start)."""
    return session.get_providers()[0]
