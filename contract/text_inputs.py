"""How item text becomes the item encoder's input, the same for export (parity inputs) and the service.

The bundle ships the tokenizer folder; both sides load it with `load_tokenizer` and pad with `pad_batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"


def load_tokenizer(tokenizer_dir: Path, max_length: int) -> Tokenizer:
    """The fast (Rust) tokenizer from a Hugging Face tokenizer folder, truncating and not padding.

    Hugging Face `tokenizer.json` files often carry a fixed padding length (MiniLM's pads to 128): that
    padding is switched off here because batches are padded to their own longest text instead.
    """
    path = Path(tokenizer_dir) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer.json (the item encoder needs a fast tokenizer)")
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


def pad_batch(encodings: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 [B, T] with T the longest of these token lists."""
    width = max(len(ids) for ids in encodings)
    input_ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for i, ids in enumerate(encodings):
        input_ids[i, :len(ids)] = ids
        mask[i, :len(ids)] = 1
    return input_ids, mask
