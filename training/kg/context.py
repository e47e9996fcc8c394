"""Context similarity of two entities: how alike the items that have them are.

A name alone cannot tell a grocery "cracker" (saltines) from a kitchen "cracker" (for lobster), nor PUR
chewing gum from PUR water filters: the items behind the names can. An entity's context is the mean MiniLM
vector of the titles of (up to `MAX_ITEMS` of) its items; two entities' context similarity is the cosine of
their means. Titles go through the text-vector disk cache with the same settings as training's frozen item
texts (`TITLE_MAX_LENGTH`), so a build and a training run share the vectors. Only the pairs the linker
considers are compared, so only their entities' titles are encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

MAX_ITEMS = 10  # titles per entity (the first ones in catalog order)
TITLE_MAX_LENGTH = 32  # as training encodes item titles (model.text_max_length): one shared cache file

TitleEncoder = Callable[[list[str]], np.ndarray]  # titles → unit vectors [N, D]


def minilm_title_encoder(progress: bool = False) -> TitleEncoder | None:
    """MiniLM title vectors through the default text-vector cache; None without torch/transformers."""
    try:
        from training.text_vectors import encode_texts
    except ImportError:
        return None

    def encode(titles: list[str]) -> np.ndarray:
        return encode_texts(titles, max_length=TITLE_MAX_LENGTH, progress=progress)

    return encode


class TitleContext:
    """Mean title vectors of entities (by index), computed for many entities in one encoder call."""

    def __init__(self, titles: Sequence[str], items_of: dict[int, list[int]], encoder: TitleEncoder) -> None:
        """`titles`: every item's title; `items_of[e]`: the items (rows) of entity e."""
        self.titles = titles
        self.items_of = items_of
        self.encoder = encoder
        self._means: dict[int, np.ndarray | None] = {}

    def prepare(self, entities: set[int]) -> None:
        """Encode the titles of these entities (those not done yet) in one batch."""
        todo = sorted(e for e in entities if e not in self._means)
        rows = {e: self.items_of.get(e, [])[:MAX_ITEMS] for e in todo}
        needed = sorted({r for rs in rows.values() for r in rs})
        if not needed:
            self._means.update({e: None for e in todo})
            return
        vectors = dict(zip(needed, self.encoder([self.titles[r] for r in needed]), strict=True))
        for e, rs in rows.items():
            if not rs:
                self._means[e] = None
                continue
            mean = np.mean([vectors[r] for r in rs], axis=0)
            norm = float(np.linalg.norm(mean))
            self._means[e] = mean / norm if norm else None

    def similarity(self, pairs: Sequence[tuple[int, int]]) -> list[float]:
        """Cosine of the mean title vectors of each pair's entities (0 where one has no items)."""
        self.prepare({e for pair in pairs for e in pair})
        out = []
        for a, b in pairs:
            ma, mb = self._means[a], self._means[b]
            out.append(float(ma @ mb) if ma is not None and mb is not None else 0.0)
        return out
