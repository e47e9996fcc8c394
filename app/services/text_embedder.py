"""Item-text embedding at serving time: the bundle's item encoder (ONNX) behind a Rust tokenizer, no torch.

Speed comes from three things, measured in `bench/embed.py` (see docs/benchmarks.md):
- length bucketing: texts are tokenised once, sorted by token count and batched with their neighbours, so
  each batch is padded only to its own longest text (titles are short and vary a lot in length);
- ONNX Runtime with all graph optimisations and a fixed, sequential thread layout;
- the bundle's recommended variant (an int8 model is a plain ONNX file to this class).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract.text_inputs import load_tokenizer, pad_batch

# Most tokens in one padded batch. Past ~1k tokens the [tokens, 4·hidden] feed-forward activations outgrow
# the per-core caches: with plain 64-title batches MiniLM ran at 2/3 of the speed it has with this cap (fp32
# 113 vs 169 items/s, int8 309 vs 472, 2-core EPYC; 128 to 512 all measured alike). `batch_size` stays the
# cap on titles per batch.
MAX_BATCH_TOKENS = 512


def session_options(intra_op_threads: int | None = None, spin: bool = False) -> ort.SessionOptions:
    """Options for an encoder that shares its CPU (with the service's other work, or other processes).

    - all graph optimisations (ORT's own fusions at load time);
    - one operator at a time (sequential, one inter-op thread): a BERT graph is a chain, so parallel
      operators only add contention; the cores go to intra-op parallelism inside each MatMul;
    - `intra_op_threads=None` leaves ORT's default, the number of physical cores;
    - no spinning: idle pool threads sleep instead of busy-waiting for the next operator. On a loaded
      machine spinning threads steal the cores the working ones need (bench/embed.py measured 1.25-1.5x
      more items/s without it under load; docs/benchmarks.md).
    """
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.inter_op_num_threads = 1
    if intra_op_threads is not None:
        so.intra_op_num_threads = int(intra_op_threads)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    return so


class TextEmbedder:
    """Unit item vectors [N, D] for texts, from an item-encoder ONNX file (see `contract.bundle`).

    Inputs of the model: input_ids int64 [B,T], attention_mask int64 [B,T], platform int64 [B];
    output: item_vec float32 [B,D].
    """

    def __init__(self, model_path: Path, tokenizer_dir: Path, max_length: int,
                 providers: list[str] | None = None, intra_op_threads: int | None = None) -> None:
        self.model_path = Path(model_path)
        self.max_length = int(max_length)
        self.tokenizer = load_tokenizer(Path(tokenizer_dir), self.max_length)
        pad = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad
        self.session = ort.InferenceSession(str(self.model_path), session_options(intra_op_threads),
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_name = self.session.get_outputs()[0].name
        dim = self.session.get_outputs()[0].shape[-1]
        self.dim = dim if isinstance(dim, int) else None

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        # encode_batch runs in Rust threads; special tokens ([CLS] … [SEP]) are added as in training.
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray, platform: np.ndarray) -> np.ndarray:
        """One forward pass over an already padded batch."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "platform": platform}
        feed = {k: v for k, v in feed.items() if k in self.input_names}
        return self.session.run([self.output_name], feed)[0]

    def embed(self, texts: list[str], platforms: list[int], batch_size: int = 64) -> np.ndarray:
        """float32 [N, D], unit rows, row i for texts[i] on platforms[i].

        Batches hold texts of similar token length, at most `batch_size` of them and at most
        MAX_BATCH_TOKENS tokens after padding.
        """
        if len(texts) != len(platforms):
            raise ValueError(f"{len(texts)} texts but {len(platforms)} platforms")
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if not texts:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        ids = self.tokenize(texts)
        plat = np.asarray(platforms, dtype=np.int64)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        # Stable sort by token count: neighbours have (nearly) the same length, so each batch pads little.
        order = np.argsort(lengths, kind="stable")
        out: np.ndarray | None = None
        for rows in _batches(order, lengths, batch_size, MAX_BATCH_TOKENS):
            input_ids, mask = pad_batch([ids[r] for r in rows], self.pad_id)
            vec = self.run(input_ids, mask, plat[rows])
            if out is None:
                out = np.empty((len(texts), vec.shape[1]), dtype=np.float32)
            out[rows] = vec  # back to input order
        assert out is not None
        return out


def _batches(order: np.ndarray, lengths: np.ndarray, max_rows: int, max_tokens: int) -> list[np.ndarray]:
    """Consecutive slices of `order` (sorted by length, ascending) of at most `max_rows` rows and at most
    `max_tokens` padded tokens each (at least one row, however long)."""
    out = []
    start, n = 0, len(order)
    while start < n:
        end = start + 1
        # the newest row is the longest so far (ascending order): it sets the padded width
        while end < n and end - start < max_rows and (end - start + 1) * lengths[order[end]] <= max_tokens:
            end += 1
        out.append(order[start:end])
        start = end
    return out
