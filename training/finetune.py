"""Where item text vectors come from during training, per fine-tuning mode.

- `frozen`: MiniLM encodes every title once (disk-cached); only what sits on top trains. Fast on a CPU.
- `top-k`: the top `unfreeze_layers` transformer layers train; titles are encoded in the loop.
- `lora`: low-rank adapters (the `peft` library) on the attention projections; titles encoded in the loop.
The in-loop modes encode only the items a step needs, so they require sampled negatives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from training.model import ModelConfig, mean_pool
from training.sequences import Dataset
from training.text_vectors import encode_texts, load_text_model, text_model_path


class TextTower:
    def __init__(self, ds: Dataset, cfg: ModelConfig, cache: Path | None, console: Console) -> None:
        self.ds, self.cfg, self.mode = ds, cfg, cfg.mode
        path = text_model_path(cfg.text_model)
        self.frozen = torch.from_numpy(encode_texts(ds.titles, cfg.text_max_length, cache_dir=cache, model_path=path))
        self.encoder = None
        if self.mode != "frozen":
            model, self.tokenizer = load_text_model(path)
            if self.mode == "top-k":
                for p in model.parameters():
                    p.requires_grad = False
                for layer in model.encoder.layer[-cfg.unfreeze_layers:]:
                    for p in layer.parameters():
                        p.requires_grad = True
            elif self.mode == "lora":
                from peft import LoraConfig, get_peft_model

                model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r,
                                                         target_modules=["query", "value"], lora_dropout=0.1))
            else:
                raise ValueError(f"unknown fine-tuning mode {self.mode!r}")
            self.encoder = model
            n = sum(p.numel() for p in model.parameters() if p.requires_grad)
            console.print(f"text transformer: {self.mode}, {n:,} trainable parameters")

    def trainable(self) -> list[torch.nn.Parameter]:
        return [] if self.encoder is None else [p for p in self.encoder.parameters() if p.requires_grad]

    def train(self) -> None:
        if self.encoder is not None:
            self.encoder.train()

    def _encode(self, rows: torch.Tensor) -> torch.Tensor:
        assert self.encoder is not None
        enc = self.tokenizer([self.ds.titles[int(r)] for r in rows], padding=True, truncation=True,
                             max_length=self.cfg.text_max_length, return_tensors="pt")
        out = self.encoder(**enc).last_hidden_state
        return torch.nn.functional.normalize(mean_pool(out, enc["attention_mask"]), dim=-1)

    def vectors(self, needed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(text vectors, item rows) for a training step: every item, or just `needed` rows."""
        if self.encoder is None:
            rows = torch.arange(self.ds.n_items) if needed is None else needed
            return self.frozen[rows], rows
        if needed is None:
            raise ValueError(f"mode {self.mode!r} encodes titles in the loop: set negatives > 0")
        return self._encode(needed), needed

    @torch.no_grad()
    def all_vectors(self, batch: int = 256) -> np.ndarray:
        if self.encoder is None:
            return self.frozen.numpy()
        self.encoder.eval()
        order = np.argsort([len(t) for t in self.ds.titles])
        out = np.zeros((self.ds.n_items, self.frozen.shape[1]), dtype=np.float32)
        for s in range(0, len(order), batch):
            rows = torch.from_numpy(order[s:s + batch])
            out[rows.numpy()] = self._encode(rows).numpy()
        return out

    def state(self) -> dict[str, torch.Tensor]:
        """The live trainable text-transformer weights (adapters included), to restore the best epoch."""
        if self.encoder is None:
            return {}
        return {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.encoder is not None and state:
            self.encoder.load_state_dict(state)

    def export_state(self) -> dict[str, torch.Tensor]:
        """Plain MiniLM weights for export (LoRA merged in); empty when the transformer stayed frozen."""
        if self.encoder is None:
            return {}
        model = self.encoder
        if self.mode == "lora":
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
