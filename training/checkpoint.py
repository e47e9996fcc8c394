"""The checkpoint `xrec train` writes, and how evaluation and export rebuild the model from it alone.

Like nanoGPT's: the model config (`model_args`) travels with the weights, so another program rebuilds the
modules from `training.model` without the training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from training.model import ModelConfig, RoutedScorer, Scorer, TextItemEncoder, TwoTower, load_scorer
from training.text_vectors import load_text_model, text_model_path


@dataclass
class Loaded:
    cfg: ModelConfig
    model: TwoTower
    scorer: Scorer | RoutedScorer | None
    ckpt: dict


def load_checkpoint(path: Path) -> Loaded:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ModelConfig(**ckpt["model_args"])
    model = TwoTower(cfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    scorer = load_scorer(cfg, ckpt["scorer"]) if ckpt.get("scorer") is not None else None
    return Loaded(cfg, model, scorer, ckpt)


def text_item_encoder(loaded: Loaded) -> TextItemEncoder:
    """The trained item tower's whole text path, with the fine-tuned transformer when there is one."""
    backbone, _ = load_text_model(text_model_path(loaded.cfg.text_model))
    if loaded.ckpt.get("text"):
        backbone.load_state_dict(loaded.ckpt["text"])
    return TextItemEncoder(backbone, loaded.model.items).eval()


def fine_tuned_backbone(loaded: Loaded) -> torch.nn.Module | None:
    """The fine-tuned transformer (top-k, lora modes), None when it stayed frozen (the disk cache serves)."""
    return text_item_encoder(loaded).backbone if loaded.ckpt.get("text") else None


