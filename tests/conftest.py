"""Shared fixtures. Tests write their own small fixtures; the real data set is read in place."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOOD_KITCHEN = Path(__import__("os").environ.get("XREC_DATA_ROOT", ROOT.parent / "shared/data/food-kitchen"))


@pytest.fixture(scope="session")
def food_kitchen() -> Path:
    if not (FOOD_KITCHEN / "stats.json").is_file():
        pytest.skip(f"real data not found at {FOOD_KITCHEN}")
    return FOOD_KITCHEN


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with MiniLM's real tokenizer: a real transformer,
    small enough for unit tests of every fine-tuning mode and of export."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from training.text_vectors import minilm_path

    out = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy2(minilm_path() / name, out / name)
    return out
