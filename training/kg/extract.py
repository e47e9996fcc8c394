"""Entity extraction: which brand, product type and category each item has.

From catalog attributes where the mapping file names them (`attributes = ["brand", "category_path"]`), else
from the titles, per platform, with a transparent frequency rule and no model:

- **brand** = a frequent leading 1–3-word phrase of the platform's titles. The first word starts it unless it
  is generic (a word found in ≥ 1% of the platform's titles elsewhere, or in more titles elsewhere than at
  the start: "Organic", "Black", "Chef"), a stop word
  ("The") or a title ("Mr.", "Dr."), in which case it must grow. It grows by the next word while at least 70%
  of the titles starting with it continue that way ("Hamilton" → "Hamilton Beach", "Bob's" → "Bob's Red
  Mill"; not "OXO" → "OXO SteeL"), never by a generic word, a number or a lower-case word, and a connector
  ("&", "and") only with the word after it ("Black & Decker"). It needs ≥ 3 titles.
- **product type** = the trailing noun phrase of the title's head (the part before the first comma, dash,
  bracket or "for/with/by/in"), with the brand, model numbers and pack words ("Organic", "Pack") removed and
  colours, materials and shapes at its end ("White", "Steel", "Round") dropped, the last word made singular:
  the longest of its last 1–3 words that ends ≥ 3 titles' heads ("coffee filter" before "filter"), a third
  word only where it leads ≥ half of the two-word phrase's titles ("ice cream maker", not "pour-over coffee
  maker").
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from training.kg.text import (
    CONNECTORS,
    DESCRIPTORS,
    HONORIFICS,
    NOT_A_BRAND,
    QUALIFIERS,
    STOPWORDS,
    clean_title,
    has_digit,
    has_letter,
    head_phrase,
    name_key,
    singular,
    tokens,
)

KINDS = ("brand", "type", "category")
# Catalog attribute columns that name an entity, by column name (others are plain attributes only).
ATTRIBUTE_KINDS: dict[str, str] = {
    "brand": "brand", "manufacturer": "brand", "maker": "brand", "vendor": "brand",
    "type": "type", "product_type": "type", "item_type": "type",
    "category": "category", "category_path": "category", "categories": "category", "topic": "category",
    "genre": "category", "section": "category",
}
CATEGORY_SEPARATORS = (">", "›", "|")


@dataclass(frozen=True)
class ExtractorConfig:
    min_support: int = 3  # titles an n-gram must start (brand) or end (type) to become an entity
    extend_ratio: float = 0.7  # a brand grows by a word when this share of its titles continue with it
    strong_ratio: float = 0.9  # ... even by a generic word ("Bob's" → "Bob's Red Mill") at this share
    generic_share: float = 0.01  # a word in this share of a platform's titles outside a brand is generic
    max_brand_words: int = 3
    max_type_words: int = 3
    third_word_ratio: float = 0.5  # a 3-word type needs this share of its 2-word tail's titles


@dataclass(frozen=True)
class Mention:
    """One entity as one platform's catalog names it."""

    kind: str  # brand | type | category
    platform: str
    key: str  # its identity on its platform (a normalised name; a category's normalised path)
    name: str  # how the catalog spells it (the most common spelling)
    items: int  # items of the platform that have it
    link_key: str  # what must be equal on two platforms to link by name


@dataclass
class TitleEntities:
    """What the extractor found for one platform's titles: per title a brand and a type (or None)."""

    brands: list[str | None]
    types: list[str | None]
    brand_support: Counter[str] = field(default_factory=Counter)
    type_support: Counter[str] = field(default_factory=Counter)


def _word_ok(word: str) -> bool:
    """A word that may continue a brand name: has a letter, no digit, not a stop word, not all lower case."""
    return (has_letter(word) and not has_digit(word) and word.lower() not in STOPWORDS
            and not word.islower())


class TitleExtractor:
    """Brands and product types of one platform's titles (see the module docstring for the rules)."""

    def __init__(self, config: ExtractorConfig | None = None) -> None:
        self.config = config or ExtractorConfig()

    def extract(self, titles: Sequence[str]) -> TitleEntities:
        cfg = self.config
        cleaned = [clean_title(t) for t in titles]
        heads = [tokens(head_phrase(t)) for t in cleaned]
        doc_freq: Counter[str] = Counter()
        for t in cleaned:
            doc_freq.update({w.lower() for w in tokens(t)})
        rule = _BrandRule(heads, doc_freq, len(titles), cfg)

        brand_words = [rule.words(h) for h in heads]
        brands: list[str | None] = []
        surfaces: dict[str, Counter[str]] = {}
        for h, n in zip(heads, brand_words, strict=True):
            key = name_key(" ".join(h[:n]), "brand") if n else ""
            if not key:
                brands.append(None)
                continue
            surfaces.setdefault(key, Counter())[" ".join(h[:n])] += 1
            brands.append(key)
        # One display name per brand: its most common spelling.
        display = {k: c.most_common(1)[0][0] for k, c in surfaces.items()}
        brands = [display[b] if b else None for b in brands]

        tails = [self._tail(h[n:]) for h, n in zip(heads, brand_words, strict=True)]
        ends: Counter[tuple[str, ...]] = Counter()
        for tail in tails:
            for n in range(1, len(tail) + 1):
                ends[tuple(tail[-n:])] += 1
        types = [self._longest_end(tail, ends) for tail in tails]
        return TitleEntities(brands, types, Counter(b for b in brands if b), Counter(t for t in types if t))

    def _tail(self, words: list[str]) -> list[str]:
        """The head's trailing noun-ish words, lower case, last one singular (at most max_type_words)."""
        # Words and connectors (a connector ends the phrase: "Grind & Brew Coffeemaker" → "brew coffeemaker").
        kept = [w.lower() for w in words if (not has_digit(w) and has_letter(w)) or w.lower() in CONNECTORS]
        kept = [w for w in kept if w not in QUALIFIERS and singular(w) not in QUALIFIERS]
        while kept and (kept[-1] in DESCRIPTORS or kept[-1] in STOPWORDS or kept[-1].endswith(("ly", "ed"))
                        or len(kept[-1]) < 3):
            kept.pop()
        if not kept:
            return []
        kept[-1] = singular(kept[-1])
        tail = [kept[-1]]
        for w in reversed(kept[:-1]):
            if len(tail) == self.config.max_type_words or w in STOPWORDS or w in CONNECTORS:
                break
            tail.insert(0, w)
        return tail

    def _longest_end(self, tail: list[str], ends: Counter[tuple[str, ...]]) -> str | None:
        cfg = self.config
        best: str | None = None
        for n in range(1, len(tail) + 1):
            phrase = tuple(tail[-n:])
            if ends[phrase] < cfg.min_support:
                break
            if n == 3 and ends[phrase] < cfg.third_word_ratio * ends[phrase[1:]]:
                break
            best = " ".join(phrase)
        return best


def attribute_kinds(columns: Sequence[str]) -> dict[str, str]:
    """Which of these attribute columns name entities, and of which kind (by column name)."""
    return {c: ATTRIBUTE_KINDS[c.lower()] for c in columns if c.lower() in ATTRIBUTE_KINDS}


def category_path(value: str) -> list[str]:
    """A category value as its path of levels: "Kitchen > Coffee > Filters" → three levels; a plain value is
    one level."""
    text = clean_title(value)
    for sep in CATEGORY_SEPARATORS:
        if sep in text:
            return [p.strip() for p in text.split(sep) if p.strip()]
    return [text] if text else []


@dataclass(frozen=True)
class Tag:
    """One item's entity before linking."""

    item: int  # row in the items table
    kind: str
    mention: tuple[str, str, str]  # (kind, platform, key)
    source: str  # attribute | title


def item_mentions(items: pa.Table, attribute_columns: list[str], extractor: TitleExtractor
              ) -> tuple[list[Tag], dict[tuple[str, str, str], Mention], set[tuple[tuple[str, str, str], ...]]]:
    """Each item's brand, type and category (attributes first, else titles), the mentions they name, and the
    (child, parent) pairs of category paths.

    `items` is a dataset's items table: item_id, platform, title and any attribute columns.
    """
    platforms = items.column("platform").to_pylist()
    titles = items.column("title").to_pylist()
    kinds = attribute_kinds(attribute_columns)
    attrs = {c: items.column(c).to_pylist() for c in kinds if c in items.column_names}
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(platforms):
        rows_of[p].append(i)

    tags: list[Tag] = []
    spellings: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
    counts: Counter[tuple[str, str, str]] = Counter()
    parents: set[tuple[tuple[str, str, str], ...]] = set()  # (child, parent) category mention pairs

    def tag(i: int, kind: str, platform: str, name: str, source: str, key: str | None = None) -> None:
        key = key if key is not None else name_key(name, kind)
        if not key:
            return
        mention = (kind, platform, key)
        spellings[mention][name] += 1
        counts[mention] += 1
        tags.append(Tag(i, kind, mention, source))

    for platform, rows in rows_of.items():
        found = extractor.extract([titles[i] for i in rows])
        from_title = {"brand": found.brands, "type": found.types}
        for pos, i in enumerate(rows):
            have: set[str] = set()
            for column, kind in kinds.items():
                value = attrs.get(column, [None] * len(platforms))[i]
                if value is None or not str(value).strip() or kind in have:
                    continue
                if kind == "category":
                    path = category_path(str(value))
                    if not path:
                        continue
                    keys = ["/".join(name_key(level, "category") for level in path[: d + 1])
                            for d in range(len(path))]
                    for d in range(1, len(path)):
                        parents.add(((kind, platform, keys[d]), (kind, platform, keys[d - 1])))
                        spellings[(kind, platform, keys[d - 1])][path[d - 1]] += 0  # known, even with no items
                    tag(i, kind, platform, path[-1], "attribute", keys[-1])
                else:
                    tag(i, kind, platform, clean_title(str(value)), "attribute")
                have.add(kind)
            for kind, values in from_title.items():
                if kind not in have and values[pos]:
                    tag(i, kind, platform, values[pos], "title")

    mentions: dict[tuple[str, str, str], Mention] = {}
    for m, names in spellings.items():
        kind, platform, key = m
        name = names.most_common(1)[0][0]
        mentions[m] = Mention(kind, platform, key, name, counts[m], name_key(name, kind))
    return tags, mentions, parents


class _BrandRule:
    """The brand rule over one platform's title heads (see the module docstring): counts of leading phrases
    (lower case) and the tests on them."""

    def __init__(self, heads: list[list[str]], doc_freq: Counter[str], n_titles: int, cfg: ExtractorConfig) -> None:
        self.cfg = cfg
        self.doc_freq = doc_freq
        self.generic_min = max(cfg.min_support, cfg.generic_share * n_titles)
        self.lead: Counter[tuple[str, ...]] = Counter()
        # Each leading phrase's one-step extensions (a word, or a connector and a word), with a spelling.
        self.children: dict[tuple[str, ...], dict[tuple[str, ...], str]] = defaultdict(dict)
        for h in heads:
            low = [w.lower() for w in h]
            for n in range(1, min(cfg.max_brand_words, len(low)) + 1):
                self.lead[tuple(low[:n])] += 1
            n = 1
            while n < min(cfg.max_brand_words, len(h)):
                step = self._step(low, n)
                if step == 0:
                    break
                self.children[tuple(low[:n])].setdefault(tuple(low[: n + step]), h[n + step - 1])
                n += step
        self._covered: dict[tuple[str, ...], float] = {}

    def _step(self, low: list[str], n: int) -> int:
        """Words the next extension of a prefix of n words takes (2 after a connector), 0 if none fits."""
        limit = min(self.cfg.max_brand_words, len(low))
        if low[n] in CONNECTORS:
            return 2 if n + 2 <= limit else 0
        return 1

    def generic(self, word: str, phrase: tuple[str, ...], alone: bool = False) -> bool:
        """A word found in many titles outside this phrase (≥ 1% of them), or, for a word that would be a
        brand `alone`, in more titles outside it than at their start ("Made", "Chef", "Signature"): a common
        word, not a name."""
        other = self.doc_freq[word] - self.lead[phrase]
        return other >= self.generic_min or (alone and other >= self.cfg.min_support and other >= self.lead[phrase])

    def acceptable(self, phrase: tuple[str, ...], surface: str, exempt: bool = False) -> bool:
        """Whether `phrase` may extend its prefix: a name-like last word, supported, not generic (`exempt`: a
        title's second word, "Mr. Coffee")."""
        return (_word_ok(surface) and surface.lower() not in QUALIFIERS
                and self.lead[phrase] >= self.cfg.min_support
                and (exempt or not self.generic(phrase[-1], phrase)))

    def covered(self, prefix: tuple[str, ...]) -> float:
        """The share of a prefix's titles that continue into an acceptable extension: high for a first word
        means it starts several names ("Santa" → "Santa Cruz", "Santa Fe") or one ("Betty" → "Betty Crocker")
        and is not a brand by itself."""
        if prefix not in self._covered:
            total = sum(self.lead[e] for e, surface in self.children.get(prefix, {}).items()
                        if self.acceptable(e, surface))
            self._covered[prefix] = total / max(self.lead[prefix], 1)
        return self._covered[prefix]

    def words(self, h: list[str]) -> int:
        """How many leading words of a title's head make its brand (0: none)."""
        cfg = self.cfg
        if not h or has_digit(h[0]) or not has_letter(h[0]):
            return 0
        low = [w.lower() for w in h]
        honorific = low[0] in HONORIFICS
        # A first word that cannot be a brand alone must grow ("Green Mountain", "The Spice Hunter").
        forced = (honorific or low[0] in STOPWORDS or low[0] in NOT_A_BRAND
                  or self.generic(low[0], (low[0],), alone=True))
        n = 1
        while n < min(cfg.max_brand_words, len(h)):
            step = self._step(low, n)
            if step == 0:
                break
            prefix, phrase = tuple(low[:n]), tuple(low[: n + step])
            share = self.lead[phrase] / self.lead[prefix]
            if self.acceptable(phrase, h[n + step - 1], exempt=honorific and n == 1):
                grow = forced or share >= cfg.extend_ratio or (n == 1 and self.covered(prefix) >= cfg.extend_ratio)
            else:  # a generic word still continues a name that nearly all its titles continue ("Bob's Red Mill")
                grow = (not forced and share >= cfg.strong_ratio and _word_ok(h[n + step - 1])
                        and low[n + step - 1] not in QUALIFIERS)
            if not grow:
                if n == 1 and not forced and self.covered(prefix) >= cfg.extend_ratio:
                    return 0  # a first word that starts other names, and this title follows none of them
                break
            n += step
            forced = False
        if forced or self.lead[tuple(low[:n])] < cfg.min_support:
            return 0
        return n
