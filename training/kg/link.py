"""Entity linking across platforms: the same brand, product type or category in two catalogs becomes one node.

Two entities of one kind on different platforms are *candidates* when

- their normalised names are equal (`text.name_key`: "KitchenAid" = "Kitchen Aid", "Bob's" = "Bobs",
  "coffee filters" = "coffee filter"), or
- one is the other's nearest *compatible* name on that platform by MiniLM cosine (FAISS, exact inner product
  over unit vectors, the best of the 10 nearest) and the cosine is at least the kind's `name` threshold.
  Compatible: any two brands; two product types or categories only with the same head word (the last one,
  singular): "drinking straw" may be "straw", "cappuccino maker" is never "cappuccino", however close
  MiniLM puts them;

and a candidate is *linked* when the context similarity of the two (`context.TitleContext`: the cosine of
the mean MiniLM vectors of their items' titles) is at least the kind's `context` threshold — a grocery
"cracker" (saltines) is not a kitchen "cracker" (for lobster), PUR gum is not PUR water filters. Links are
closed transitively (`graph.components`): each cluster is one node.

Both thresholds of each kind were chosen on the hand-labelled pairs in `link_sample.csv`
(`python -m training.kg.calibrate`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from training.kg.extract import Mention
from training.kg.text import singular, tokens


@dataclass(frozen=True)
class LinkRule:
    name: float  # least MiniLM cosine of two names that differ after normalisation
    context: float  # least context similarity of any linked pair (0: not checked)


# Chosen on link_sample.csv by `python -m training.kg.calibrate` (per kind, the highest F1 with precision ≥ 0.9
# on that kind's pairs). A name threshold above 1 turns vector links off for that kind.
LINK_RULES: dict[str, LinkRule] = {
    # sample: precision 0.94, recall 0.94 (16 of 17); 5-fold cross-validated 0.88 / 0.88
    "brand": LinkRule(name=0.88, context=0.51),
    # equal names only (no vector link of two differing type names was right on the sample), and alike items:
    # sample: precision 1.00, recall 0.30 (3 of 10); cross-validated 0.67 / 0.20
    "type": LinkRule(name=1.01, context=0.81),
}
# Categories come from catalog attributes (curated names) and Food-Kitchen has none to label: equal leaf names
# link, no vectors, no context check — an uncalibrated choice.
LINK_RULES["category"] = LinkRule(name=1.01, context=0.0)
NEIGHBOURS = 10  # nearest names searched for a compatible one
NAME_MAX_LENGTH = 16  # MiniLM tokens per entity name (names are short; also keys their own vector cache file)

Encoder = Callable[[list[str]], np.ndarray]  # names → unit vectors [N, D]
Context = Callable[[Sequence[tuple[int, int]]], list[float]]  # context similarity of mention pairs (by index)


@dataclass(frozen=True)
class Link:
    a: int  # indices into the mentions
    b: int
    method: Literal["name", "vector"]
    score: float  # cosine of the names (1.0 for a name link without vectors)
    context: float  # context similarity (nan when not checked)


def minilm_encoder(cache_dir: Path | None = None, progress: bool = False) -> Encoder | None:
    """MiniLM name vectors through the text-vector disk cache; None where torch/transformers are missing (a
    serving-only install), and linking then goes by name alone."""
    try:
        from training.text_vectors import DEFAULT_CACHE, encode_texts
    except ImportError:
        return None
    folder = cache_dir if cache_dir is not None else DEFAULT_CACHE

    def encode(names: list[str]) -> np.ndarray:
        return encode_texts(names, max_length=NAME_MAX_LENGTH, cache_dir=folder, progress=progress)

    return encode


def head_word(m: Mention) -> str:
    """The last word of a name, lower case and singular: the head of an English noun phrase."""
    words = tokens(m.name)
    return singular(words[-1]) if words else ""


def compatible(a: Mention, b: Mention) -> bool:
    """Whether two mentions may be linked by vector at all (see the module docstring)."""
    return a.kind == b.kind and (a.kind == "brand" or head_word(a) == head_word(b))


def rule_for(rules: dict[str, LinkRule], kind: str) -> LinkRule:
    """A kind's rule; a kind without one takes the types' (no vector links, alike items)."""
    return rules.get(kind) or rules.get("type") or LinkRule(name=1.01, context=0.0)


def link_mentions(mentions: Sequence[Mention], encoder: Encoder | None, context: Context | None = None,
                  rules: dict[str, LinkRule] | None = None) -> list[Link]:
    """Every cross-platform link between mentions of one kind (see the module docstring). Without an encoder
    only equal names are candidates; without a context function the context is not checked."""
    rules = rules or LINK_RULES
    groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, m in enumerate(mentions):
        groups[m.kind][m.platform].append(i)

    # Name vectors only for kinds on two platforms or more whose rule can link differing names at all.
    need = sorted(i for kind, by_platform in groups.items()
                  if len(by_platform) > 1 and rule_for(rules, kind).name <= 1.0
                  for idx in by_platform.values() for i in idx)
    vectors: dict[int, np.ndarray] = {}
    if encoder is not None and need:
        vectors = dict(zip(need, encoder([mentions[i].name for i in need]), strict=True))

    def allowed(a: int, b: int) -> bool:
        return compatible(mentions[a], mentions[b])

    candidates: dict[tuple[int, int], tuple[Literal["name", "vector"], float]] = {}
    for kind, by_platform in groups.items():
        rule = rule_for(rules, kind)
        platforms = sorted(by_platform)
        for pi, p in enumerate(platforms):
            for q in platforms[pi + 1:]:
                by_key: dict[str, list[int]] = defaultdict(list)
                for j in by_platform[q]:
                    by_key[mentions[j].link_key].append(j)
                for i in by_platform[p]:
                    for j in by_key.get(mentions[i].link_key, ()):
                        score = float(vectors[i] @ vectors[j]) if i in vectors and j in vectors else 1.0
                        candidates[(min(i, j), max(i, j))] = ("name", score)
                if rule.name > 1.0 or not vectors:
                    continue
                for src, dst in ((by_platform[p], by_platform[q]), (by_platform[q], by_platform[p])):
                    for i, j, score in nearest(src, dst, vectors, allowed):
                        pair = (min(i, j), max(i, j))
                        if score >= rule.name and pair not in candidates:
                            candidates[pair] = ("vector", score)

    pairs = sorted(candidates)
    checked = [pair for pair in pairs if rule_for(rules, mentions[pair[0]].kind).context > 0]
    contexts = dict(zip(checked, context(checked), strict=True)) if context is not None and checked else {}
    links = []
    for pair in pairs:
        method, score = candidates[pair]
        ctx = contexts.get(pair, float("nan"))
        if pair not in contexts or ctx >= rule_for(rules, mentions[pair[0]].kind).context:
            links.append(Link(pair[0], pair[1], method, score, ctx))
    return links


def nearest(src: Sequence[int], dst: Sequence[int], vectors: dict[int, np.ndarray],
            allowed: Callable[[int, int], bool] | None = None, k: int = NEIGHBOURS) -> list[tuple[int, int, float]]:
    """For each of `src`, its nearest allowed one of `dst` by cosine among the k nearest: (src index, dst
    index, cosine); a src with none allowed among them is left out."""
    import faiss

    if not src or not dst:
        return []
    dst_vecs = np.stack([vectors[j] for j in dst]).astype(np.float32)
    index = faiss.IndexFlatIP(dst_vecs.shape[1])
    index.add(dst_vecs)
    scores, found = index.search(np.stack([vectors[i] for i in src]).astype(np.float32), min(k, len(dst)))
    out = []
    for i, row_f, row_s in zip(src, found, scores, strict=True):
        for f, s in zip(row_f, row_s, strict=True):
            if f >= 0 and (allowed is None or allowed(i, dst[int(f)])):
                out.append((i, dst[int(f)], float(s)))
                break
    return out


@dataclass(frozen=True)
class Scores:
    name: float
    context: float
    precision: float
    recall: float
    f1: float
    true_pos: int
    false_pos: int
    false_neg: int


def pair_rule(name_equal: np.ndarray, allowed: np.ndarray, cosine: np.ndarray, context: np.ndarray,
              rule: LinkRule) -> np.ndarray:
    """The linking rule for pairs seen alone: (equal normalised names, or compatible with name cosine ≥ the
    name threshold) and context similarity ≥ the context threshold."""
    candidate = name_equal | (allowed & (cosine >= rule.name))
    return candidate & (context >= rule.context) if rule.context > 0 else candidate


def score_rule(labels: np.ndarray, predicted: np.ndarray, rule: LinkRule) -> Scores:
    labels, predicted = labels.astype(bool), predicted.astype(bool)
    tp = int((labels & predicted).sum())
    fp = int((~labels & predicted).sum())
    fn = int((labels & ~predicted).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Scores(rule.name, rule.context, precision, recall, f1, tp, fp, fn)


def choose_rule(labels: np.ndarray, name_equal: np.ndarray, allowed: np.ndarray, cosine: np.ndarray,
                context: np.ndarray, min_precision: float = 0.9) -> Scores:
    """The thresholds with the highest F1 among those whose precision on the pairs is ≥ `min_precision`
    (ties: the highest name threshold, then the middle context threshold). Candidates: the pairs' own values
    rounded to 0.01, and no context check."""
    names = sorted({round(float(c), 2) for c in cosine} | {1.01})
    contexts = sorted({0.0} | {round(float(c), 2) for c in context if c > 0})
    tied: list[Scores] = []
    for t_name in names:
        for t_ctx in contexts:
            rule = LinkRule(t_name, t_ctx)
            s = score_rule(labels, pair_rule(name_equal, allowed, cosine, context, rule), rule)
            if s.precision < min_precision:
                continue
            if not tied or s.f1 > tied[0].f1 + 1e-12:
                tied = [s]
            elif abs(s.f1 - tied[0].f1) <= 1e-12:
                tied.append(s)
    if not tied:
        raise ValueError(f"no thresholds reach precision {min_precision} on these pairs")
    # Among equally good rules: the highest name threshold (vector links are the least certain), and the middle
    # of the context thresholds that go with it (not an edge of the labelled values).
    top = max(s.name for s in tied)
    at_top = sorted((s for s in tied if s.name == top), key=lambda s: s.context)
    return at_top[len(at_top) // 2]
