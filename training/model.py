"""The two towers and the re-ranking scorer. Short on purpose: export rebuilds these from `ModelConfig`.

item tower   text → MiniLM → mean pooling → L2-normalise → linear → + platform embedding (+ learned ID part,
             with dropout, for items with history) → unit vector. `TextItemEncoder` is that whole text
             path as one module: what export turns into item_encoder.onnx, so a new item's vector at serve
             time is the one training gives it (the frozen mode caches the pooled vectors, not the module)
user tower   fused cross-platform history (item vectors + platform + time-gap bucket + position) → causal
             transformer → per-target-platform projection → unit vector; one person, one vector per platform
scorer       MLP over [user, item, user ⊙ item, scalar features] → relevance score
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, field_validator
from pydantic.dataclasses import dataclass
from torch import nn

from contract.features import N_TIME_BUCKETS, SCORER_EXTRAS, scorer_features


@dataclass(config=ConfigDict(extra="forbid"))
class ModelConfig:
    """Every model setting and its default, once. A training profile's `[model]` table sets these; the
    data fixes `n_items`, `n_platforms` and `text_dim` at train time."""

    n_items: int = 0
    n_platforms: int = 0
    text_dim: int = 384
    dim: int = 64
    max_history: int = 50
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    use_id: bool = True  # hybrid item vectors: text + learned ID part
    id_dropout: float = 0.25  # chance an item's ID part is dropped in a training step
    n_time_buckets: int = N_TIME_BUCKETS
    mode: str = "frozen"  # frozen | top-k | lora: how the text transformer is fine-tuned
    unfreeze_layers: int = 2  # top-k mode
    lora_r: int = 8  # lora mode
    text_max_length: int = 32
    text_model: str | None = None  # a local transformer folder; None = MiniLM from its package
    scorer_extras: int = len(SCORER_EXTRAS)
    scorer_hidden: int = 64

    @field_validator("n_time_buckets")
    @classmethod
    def _buckets_as_computed(cls, v: int) -> int:
        # `contract.features.time_buckets` computes these; the service refuses a bundle that differs.
        if v != N_TIME_BUCKETS:
            raise ValueError(f"n_time_buckets is fixed by contract.features ({N_TIME_BUCKETS}), got {v}")
        return v

    @field_validator("text_model", mode="before")
    @classmethod
    def _path_as_text(cls, v: object) -> object:
        return None if v is None else str(v)

    def to_dict(self) -> dict:
        return asdict(self)


class ItemTower(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.text_dim, cfg.dim)
        self.platform = nn.Embedding(cfg.n_platforms, cfg.dim)
        self.ids = nn.Embedding(cfg.n_items, cfg.dim, sparse=True) if cfg.use_id else None
        nn.init.normal_(self.platform.weight, std=0.02)
        if self.ids is not None:
            nn.init.normal_(self.ids.weight, std=0.02)

    def text_part(self, pooled: torch.Tensor, platform: torch.Tensor) -> torch.Tensor:
        """The text path before the ID part: `pooled` is the mean-pooled transformer output, normalised
        here (idempotent, so cached unit vectors and raw pooled ones give the same result)."""
        return self.proj(F.normalize(pooled, dim=-1)) + self.platform(platform)

    def forward(self, text_vec: torch.Tensor, platform: torch.Tensor, rows: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Unit item vectors. Without `rows` (a new item) there is no ID part."""
        x = self.text_part(text_vec, platform)
        if self.ids is not None and rows is not None:
            idv = self.ids(rows)
            if self.training and self.cfg.id_dropout > 0:
                keep = torch.rand(idv.shape[0], 1, device=idv.device) >= self.cfg.id_dropout
                idv = idv * keep
            x = x + idv
        return F.normalize(x, dim=-1)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over the attention mask (sentence-transformers' pooling)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class TextItemEncoder(nn.Module):
    """Item text → unit vector: transformer → mean pooling → the item tower's text path (no ID part).

    Exactly `ItemTower.forward(pooled, platform, rows=None)`, i.e. how a brand-new item is represented.
    """

    def __init__(self, backbone: nn.Module, items: ItemTower) -> None:
        super().__init__()
        self.backbone = backbone
        self.items = items

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, platform: torch.Tensor
                ) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.items(mean_pool(hidden, attention_mask), platform, rows=None)


class Block(nn.Module):
    """Pre-LayerNorm transformer block; attention written out so ONNX export stays plain."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q * (d // self.heads) ** -0.5) @ k.transpose(-1, -2)
        att = att.masked_fill(~allowed[:, None], float("-inf")).softmax(-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.drop(self.out(y))
        return x + self.drop(self.mlp(self.ln2(x)))


class UserTower(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.inp = nn.Linear(d, d)
        self.platform = nn.Embedding(cfg.n_platforms + 1, d)  # 0 = padding
        self.bucket = nn.Embedding(cfg.n_time_buckets, d)
        self.position = nn.Embedding(cfg.max_history, d)  # distance from the newest slot
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        # One output projection and bias per target platform: the same history, a vector per platform.
        self.target_w = nn.Parameter(torch.eye(d).repeat(cfg.n_platforms, 1, 1))
        self.target_b = nn.Embedding(cfg.n_platforms, d)
        self.empty = nn.Embedding(cfg.n_platforms, d)  # the query of a person with no history
        for e in (self.platform, self.bucket, self.position, self.target_b, self.empty):
            nn.init.normal_(e.weight, std=0.02)

    def encode(self, hist_vecs: torch.Tensor, hist_platform: torch.Tensor, hist_bucket: torch.Tensor,
               hist_mask: torch.Tensor) -> torch.Tensor:
        """Hidden state after each history slot [B, L, D]; slot t sees slots ≤ t (right-aligned input)."""
        b, n, _ = hist_vecs.shape
        dist = (n - 1) - torch.arange(n, device=hist_vecs.device)  # a descending Range exports badly
        x = self.inp(hist_vecs) + self.platform(hist_platform) + self.bucket(hist_bucket) + self.position(dist)
        x = self.drop(x)
        idx = torch.arange(n, device=x.device)  # comparisons, not tril/eye: plain ops in ONNX Runtime
        causal = idx[None, :] <= idx[:, None]
        eye = idx[None, :] == idx[:, None]
        # Each slot may see earlier real slots, and always itself (so padded slots never see nothing).
        allowed = (causal[None] & hist_mask[:, None, :]) | eye[None]
        for blk in self.blocks:
            x = blk(x, allowed)
        return self.ln(x)

    def query(self, h: torch.Tensor, target_platform: torch.Tensor) -> torch.Tensor:
        w = self.target_w[target_platform]  # [N, D, D]
        return F.normalize(torch.einsum("nd,nde->ne", h, w) + self.target_b(target_platform), dim=-1)

    def empty_query(self, target_platform: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.empty(target_platform), dim=-1)

    def forward(self, hist_vecs: torch.Tensor, hist_platform: torch.Tensor, hist_bucket: torch.Tensor,
                hist_mask: torch.Tensor, target_platform: torch.Tensor) -> torch.Tensor:
        """The serving path: one unit vector per person from the newest slot (or the empty query)."""
        h = self.encode(hist_vecs, hist_platform, hist_bucket, hist_mask)[:, -1]
        u = self.query(h, target_platform)
        has = hist_mask.any(dim=-1, keepdim=True)
        return torch.where(has, u, self.empty_query(target_platform))


# Where the scorer's training may start: each is a ranking in its own right; training keeps the best on valid
# and moves from it only where valid improves, so the final ranking is never below these on valid. (A blend
# of the two, scaled to the data, is added at train time: `training.train.scorer_starts`.)
SCORER_STARTS: dict[str, dict[str, float]] = {
    "retrieval": {"dot": 10.0},
    # the neighbour table alone (item-KNN or EASE); popularity, then retrieval, only break its ties
    "neighbours": {"log_knn": 10.0, "log_popularity": 1e-5, "dot": 1e-7},
}


def feature_names(width: int) -> tuple[str, ...]:
    """The scorer's feature columns for its width: `scorer_features` with or without the KG and ALS ones."""
    for kg in (False, True):
        for als in (False, True):
            if len(scorer_features(kg, als)) == width:
                return scorer_features(kg, als)
    return SCORER_EXTRAS  # a test's scorer of another width: the base features come first


class Scorer(nn.Module):
    """A linear model over the scalar features plus an MLP over everything that starts at zero.

    The re-ranker trains on a few thousand held-out queries: the linear part learns the robust blend (e.g.
    retrieval score with item-KNN), the MLP only the interactions the data supports.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.linear = nn.Linear(cfg.scorer_extras, 1)
        self.net = nn.Sequential(
            nn.Linear(3 * d + cfg.scorer_extras, cfg.scorer_hidden), nn.GELU(), nn.Dropout(0.1),
            nn.Linear(cfg.scorer_hidden, 1),
        )
        self.start_from(SCORER_STARTS["retrieval"])

    def start_from(self, weights: dict[str, float]) -> None:
        """Set the linear part to a fixed blend of named features (`SCORER_EXTRAS`) and the MLP to zero: the
        scorer then ranks exactly by that blend (e.g. retrieval alone, or item-KNN alone)."""
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()
            names = feature_names(self.linear.in_features)
            for name, w in weights.items():
                self.linear.weight[0, names.index(name)] = w
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, user_vec: torch.Tensor, item_vec: torch.Tensor, extras: torch.Tensor) -> torch.Tensor:
        x = torch.cat([user_vec, item_vec, user_vec * item_vec, extras], dim=-1)
        return (self.linear(extras) + self.net(x)).squeeze(-1)


class RoutedScorer(nn.Module):
    """Two scorers, one per kind of person: `known` for people with history on the target platform, `new` for
    people new to it (the `has_target_history` feature is 0). Each is chosen on valid for its own people
    (`training.train.route_new_to_platform`): a ranking that wins overall can lose to a baseline on the people
    a platform has never seen. One module, so the bundle's scorer.onnx stays one file with the same inputs."""

    def __init__(self, known: Scorer, new: Scorer) -> None:
        super().__init__()
        self.known, self.new = known, new
        self.has_target = feature_names(known.linear.in_features).index("has_target_history")

    def forward(self, user_vec: torch.Tensor, item_vec: torch.Tensor, extras: torch.Tensor) -> torch.Tensor:
        known = extras[:, self.has_target] > 0.5
        return torch.where(known, self.known(user_vec, item_vec, extras), self.new(user_vec, item_vec, extras))


def load_scorer(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> Scorer | RoutedScorer:
    """A checkpoint's scorer from its weights: a `RoutedScorer` when they hold two."""
    routed = any(k.startswith("known.") for k in state)
    scorer: Scorer | RoutedScorer = RoutedScorer(Scorer(cfg), Scorer(cfg)) if routed else Scorer(cfg)
    scorer.load_state_dict(state)
    return scorer.eval()


class TwoTower(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.items = ItemTower(cfg)
        self.users = UserTower(cfg)
        self.log_temp = nn.Parameter(torch.tensor(-2.7))  # learnable temperature, starts at ~0.067

    def temperature(self) -> torch.Tensor:
        return self.log_temp.exp().clamp(min=0.01, max=1.0)
