"""The cross-platform knowledge graph (training/kg): extraction, linking, the Parquet files, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from export.write_bundle import item_attributes
from training.data.build import build_dataset
from training.data.demo import write_demo
from training.data.readers import DataError
from training.data.sources import SourceError, load_sources
from training.kg.calibrate import SAMPLE, load_sample
from training.kg.extract import Mention, TitleExtractor, category_path, item_mentions
from training.kg.graph import EDGE_SCHEMA, NODE_SCHEMA, build_graph, components
from training.kg.link import LINK_RULES, LinkRule, choose_rule, compatible, link_mentions, pair_rule
from training.kg.text import head_phrase, name_key, singular, tokens
from xrec.cli import app

# --- text ---------------------------------------------------------------------------------------------------


def test_name_keys_match_spellings_of_one_name():
    assert name_key("KitchenAid", "brand") == name_key("Kitchen Aid", "brand") == "kitchenaid"
    assert name_key("Bob's Red Mill", "brand") == name_key("Bobs Red Mill", "brand")
    assert name_key("Black &amp; Decker", "brand") == name_key("Black and Decker", "brand") == "blackdecker"
    assert name_key("Acme Co.", "brand") == name_key("ACME", "brand") == "acme"
    assert name_key("Coffee Filters", "type") == name_key("coffee filter", "type") == "coffeefilter"
    assert name_key("Crème Brûlée", "type") == "cremebrulee"
    assert name_key("Coffee Filters", "brand") != name_key("Coffee Filter", "brand")  # brands keep their s


def test_singular_and_tokens_and_head_phrase():
    assert [singular(w) for w in ("filters", "knives", "berries", "cookies", "leaves", "shelves", "dishes",
                                  "glass", "asparagus", "mix")] == [
        "filter", "knife", "berry", "cookie", "leaf", "shelf", "dish", "glass", "asparagus", "mix"]
    assert tokens('J.A. Henckels 8" Knife, (Black) paddle.') == ["J.A.", "Henckels", "8", "Knife", "Black",
                                                                  "paddle"]
    assert tokens("Holders/Mitts") == ["Holders", "Mitts"]
    assert head_phrase("Melitta Cone Coffee Filters, Natural Brown (Pack of 12)") == "Melitta Cone Coffee Filters"
    assert head_phrase("Beater Blade for Cuisinart Mixers") == "Beater Blade"
    assert head_phrase("Coffee Mug - Blue") == "Coffee Mug"


# --- extraction ---------------------------------------------------------------------------------------------

TITLES = [
    # Hamilton nearly always continues with Beach: one brand of two words.
    "Hamilton Beach 2-Slice Toaster, Black",
    "Hamilton Beach Hand Blender",
    "Hamilton Beach 12-Cup Coffee Maker",
    "Hamilton Beach Slow Cooker, 6 Quart",
    # A single-word brand with varied continuations (model numbers, product words).
    "Zylotron ZX-200 Coffee Maker",
    "Zylotron Stainless Slow Cooker",
    "Zylotron Hand Blender, White",
    "Zylotron 4-Slice Toaster",
    # A connector inside a brand.
    "Black & Decker Cordless Hand Vacuum",
    "Black & Decker Steam Iron",
    "Black & Decker Hand Blender",
    # A title before a name: Mr. is not a brand alone.
    "Mr. Coffee 12-Cup Coffee Maker",
    "Mr. Coffee Frothing Pitcher",
    "Mr. Coffee Replacement Carafe",
    # One first word, several names: "Santa" is not a brand, "Santa Cruz" and "Santa Fe" are.
    "Santa Cruz Lemonade, 32 Ounce",
    "Santa Cruz Apple Juice",
    "Santa Cruz Lemon Juice (Pack of 6)",
    "Santa Cruz Orange Juice",
    "Santa Fe Salsa Bowl",
    "Santa Fe Chip Bowl",
    "Santa Fe Dip Bowl",
    # A descriptive first word is never a brand: "Organic" is all over the catalog.
    "Organic Green Tea Bags",
    "Organic Honey, 16 Ounce",
    "Organic Rolled Oats",
    # Too rare to be a brand (two titles).
    "Quuxley Coffee Maker",
    "Quuxley Hand Blender",
    # Filler titles that make "organic" and "black" common words.
    *[f"Plain Thing {i} Organic Black Stuff" for i in range(20)],
]


def test_brands_are_frequent_leading_phrases():
    found = TitleExtractor().extract(TITLES)
    brands = dict(zip(TITLES, found.brands, strict=True))
    assert brands["Hamilton Beach Hand Blender"] == "Hamilton Beach"
    assert brands["Zylotron ZX-200 Coffee Maker"] == "Zylotron"
    assert brands["Black & Decker Steam Iron"] == "Black & Decker"
    assert brands["Mr. Coffee Frothing Pitcher"] == "Mr. Coffee"
    assert brands["Santa Cruz Apple Juice"] == "Santa Cruz"
    assert brands["Santa Fe Chip Bowl"] == "Santa Fe"
    assert brands["Organic Honey, 16 Ounce"] is None
    assert brands["Quuxley Coffee Maker"] is None
    assert "Santa" not in found.brand_support


def test_types_are_frequent_trailing_head_phrases():
    found = TitleExtractor().extract(TITLES)
    types = dict(zip(TITLES, found.types, strict=True))
    assert types["Hamilton Beach 12-Cup Coffee Maker"] == "coffee maker"  # the model number is left out
    assert types["Zylotron Hand Blender, White"] == "hand blender"  # what follows the comma is not the head
    assert types["Hamilton Beach Slow Cooker, 6 Quart"] is None  # two slow cookers only: not a type
    assert types["Santa Cruz Lemon Juice (Pack of 6)"] == "juice"  # "lemon juice" is in one title only
    assert types["Santa Fe Chip Bowl"] == "bowl"
    assert types["Mr. Coffee Replacement Carafe"] is None  # one carafe: not a type


def test_attributes_win_over_titles_and_category_paths_nest():
    items = pa.table({
        "item_id": ["a:1", "a:2", "a:3", "b:1"],
        "platform": ["a", "a", "a", "b"],
        "title": ["Foo Kettle", "Foo Toaster Large", "Foo Mug Small", "Bar Kettle"],
        "brand": ["Acme", None, "Acme", "ACME"],
        "category_path": ["Kitchen > Kettles", "Kitchen > Kettles", None, "Kettles"],
    })
    tags, mentions, parents = item_mentions(items, ["brand", "category_path"], TitleExtractor())
    got = {(t.item, t.kind): (t.mention, t.source) for t in tags}
    assert got[(0, "brand")] == (("brand", "a", "acme"), "attribute")
    assert got[(1, "brand")] == (("brand", "a", "foo"), "title")  # no attribute: the title's brand
    assert got[(3, "brand")] == (("brand", "b", "acme"), "attribute")
    assert got[(0, "category")] == (("category", "a", "kitchen/kettle"), "attribute")
    assert (2, "category") not in got
    assert ((("category", "a", "kitchen/kettle"), ("category", "a", "kitchen"))) in parents
    assert mentions[("category", "a", "kitchen/kettle")].link_key == mentions[("category", "b", "kettle")].link_key
    assert category_path("Home | Kitchen | Kettles") == ["Home", "Kitchen", "Kettles"]


# --- linking ------------------------------------------------------------------------------------------------


def _m(kind: str, platform: str, name: str, items: int = 5) -> Mention:
    key = name_key(name, kind)
    return Mention(kind, platform, key, name, items, key)


def _encoder(table: dict[str, list[float]]):
    """Names → fixed unit vectors (hand-made similarities)."""
    def encode(names: list[str]) -> np.ndarray:
        vecs = np.array([table[n] for n in names], dtype=np.float32)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    return encode


def test_linking_by_name_by_vector_and_never_across_kinds():
    ms = [_m("brand", "a", "KitchenAid"), _m("brand", "b", "Kitchen Aid"),      # 0-1 equal names
          _m("brand", "a", "Emeril's"), _m("brand", "b", "Emeril"),           # 2-3 close vectors
          _m("brand", "a", "Chex"), _m("brand", "b", "Chemex"),               # 4-5 not close enough
          _m("type", "a", "kitchen aid"), _m("type", "b", "drinking straw"),  # 6-7 types
          _m("type", "a", "straw")]                                          # 8
    vec = {"KitchenAid": [1, 0, 0, 0], "Kitchen Aid": [1, 0, 0, 0], "Emeril's": [0, 1, 0.1, 0],
           "Emeril": [0, 1, 0.12, 0], "Chex": [0, 0, 1, 0], "Chemex": [0.3, 0, 1, 0.5],
           "kitchen aid": [1, 0, 0, 0.01], "drinking straw": [0, 0, 0, 1], "straw": [0, 0, 0.05, 1]}
    rules = {"brand": LinkRule(name=0.9, context=0.0), "type": LinkRule(name=0.9, context=0.0)}
    links = link_mentions(ms, _encoder(vec), None, rules)
    got = {(x.a, x.b): x.method for x in links}
    assert got == {(0, 1): "name", (2, 3): "vector", (7, 8): "vector"}
    # Without vectors only equal names link; vector links of types need the same head word.
    assert {(x.a, x.b) for x in link_mentions(ms, None, None, rules)} == {(0, 1)}
    assert compatible(ms[7], ms[8])
    assert not compatible(_m("type", "a", "cappuccino"), _m("type", "b", "cappuccino maker"))


def test_context_blocks_look_alike_names_with_unlike_items():
    ms = [_m("type", "a", "cracker"), _m("type", "b", "cracker"), _m("type", "a", "syrup"), _m("type", "b", "syrup")]
    alike = {(0, 1): 0.3, (2, 3): 0.9}  # saltines vs lobster crackers; syrups vs syrups

    def context(pairs):
        return [alike[p] for p in pairs]

    links = link_mentions(ms, None, context, {"type": LinkRule(name=1.01, context=0.8)})
    assert [(x.a, x.b, x.context) for x in links] == [(2, 3, 0.9)]


def test_choose_rule_on_hand_labelled_pairs():
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0], dtype=bool)
    name_equal = np.array([1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)
    allowed = np.ones(8, dtype=bool)
    cosine = np.array([1.0, 1.0, 0.95, 1.0, 0.91, 0.5, 0.97, 0.93])
    context = np.array([0.9, 0.8, 0.7, 0.1, 0.8, 0.9, 0.75, 0.2])
    best = choose_rule(labels, name_equal, allowed, cosine, context, min_precision=0.9)
    predicted = pair_rule(name_equal, allowed, cosine, context, LinkRule(best.name, best.context))
    assert best.precision == 1.0 and best.recall == 1.0
    assert predicted.tolist() == labels.tolist()
    assert 0.91 < best.name <= 0.95 and 0.2 < best.context <= 0.7


def test_the_labelled_sample_is_in_the_repo_and_well_formed():
    pairs = load_sample(SAMPLE)
    assert 100 <= len(pairs) <= 250
    assert {p.kind for p in pairs} == {"brand", "type"}
    assert {(p.platform_a, p.platform_b) for p in pairs} == {("grocery", "kitchen")}
    assert 0 < sum(p.same for p in pairs) < len(pairs)
    assert len({(p.kind, p.name_a, p.name_b) for p in pairs}) == len(pairs)  # no pair twice


# --- graph --------------------------------------------------------------------------------------------------


def test_components_label_connected_nodes():
    labels = components(6, np.array([0, 2, 3]), np.array([1, 3, 4]))
    assert labels.tolist() == [0, 0, 2, 2, 2, 5]


def test_build_graph_nodes_edges_and_links():
    titles = ["Acme Kettle", "Acme Toaster", "Acme Blender", "Acme Tea", "Acme Coffee", "Acme Cocoa"]
    items = pa.table({"item_id": [f"shop:{i}" for i in range(3)] + [f"deli:{i}" for i in range(3)],
                      "platform": ["shop"] * 3 + ["deli"] * 3, "title": titles})
    events = pa.table({"person": ["p1", "p1", "p1", "p2"], "platform": ["shop", "shop", "deli", "deli"],
                       "item_id": ["shop:0", "shop:0", "deli:1", "deli:2"], "ts": pa.array([1, 2, 3, 4], pa.int64()),
                       "event": ["purchase", "purchase", "view", "view"]})
    kg = build_graph(items, events, [], encoder=None)
    assert kg.nodes.schema == NODE_SCHEMA and kg.edges.schema == EDGE_SCHEMA
    nodes = {r["node_id"]: r for r in kg.nodes.to_pylist()}
    acme = nodes["brand:acme"]  # one brand on two platforms: one node
    assert acme["platforms"] == ["deli", "shop"] and acme["count"] == 6
    assert sorted((a["platform"], a["method"]) for a in acme["aliases"]) == [("deli", "anchor"), ("shop", "name")]
    assert nodes["person:p1"]["count"] == 3 and nodes["person:p1"]["platforms"] == ["deli", "shop"]
    assert nodes["item:shop:0"]["count"] == 2 and nodes["person:p1"]["component"] == -1
    edges = kg.edges.to_pylist()
    assert {"src": "person:p1", "dst": "item:shop:0", "relation": "purchase", "platform": "shop",
            "weight": 2.0, "source": "events"} in edges
    assert sum(e["relation"] == "has_brand" for e in edges) == 6
    assert kg.summary["entities"]["brand"]["cross_platform"] == 1
    assert kg.summary["entities"]["brand"]["items_on_linked"] == {"deli": 3, "shop": 3}
    assert kg.summary["components"]["cross_platform"] == 1


# --- xrec data build: attributes and kg/ --------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_kg(tmp_path_factory) -> Path:
    """The demo with catalog attributes (shop: brand, category_path; video: topic), built with its graph."""
    root = tmp_path_factory.mktemp("kg-demo")
    mapping = write_demo(root / "raw", people=200, items_per_platform=36, seed=4, attributes=True)
    build_dataset(load_sources(mapping), root / "ds", salt="t")
    return root / "ds"


def test_build_carries_attribute_columns_into_items_and_the_bundle(demo_kg):
    items = pq.read_table(demo_kg / "items.parquet")
    assert items.column_names == ["item_id", "platform", "title", "brand", "category_path", "topic"]
    assert all(items.schema.field(c).type == pa.string() for c in items.column_names)
    rows = items.to_pylist()
    shop = next(r for r in rows if r["platform"] == "shop")
    assert shop["brand"] and shop["category_path"].startswith("Shop > ") and shop["topic"] is None
    news = next(r for r in rows if r["platform"] == "news")
    assert news["brand"] is news["category_path"] is news["topic"] is None
    # What export copies into the bundle's items (export/write_bundle.py), read from this dataset.
    attrs = item_attributes(demo_kg / "items.parquet", [shop["item_id"], news["item_id"]])
    assert json.loads(attrs[0]) == {"brand": shop["brand"], "category_path": shop["category_path"]}
    assert attrs[1] is None


def test_build_writes_the_graph_and_reports_it(demo_kg):
    nodes = pq.read_table(demo_kg / "kg" / "nodes.parquet")
    edges = pq.read_table(demo_kg / "kg" / "edges.parquet")
    assert nodes.schema == NODE_SCHEMA and edges.schema == EDGE_SCHEMA
    kinds = set(nodes.column("kind").to_pylist())
    assert {"item", "person", "brand", "category"} <= kinds
    relations = set(edges.column("relation").to_pylist())
    assert {"has_brand", "in_category", "part_of", "purchase", "view", "read"} <= relations
    # Shop categories ("Shop > coffee") and video topics ("coffee") share leaf names: linked across platforms.
    coffee = [r for r in nodes.to_pylist() if r["kind"] == "category" and r["name"] == "coffee"]
    assert len(coffee) == 1 and coffee[0]["platforms"] == ["shop", "video"]
    # Shop brands come from the attribute, not the title.
    assert {e["source"] for e in edges.to_pylist() if e["relation"] == "has_brand" and e["platform"] == "shop"} \
        == {"attribute"}
    report = json.loads((demo_kg / "report.json").read_text())
    kg = report["kg"]
    assert kg["entities"]["category"]["cross_platform"] >= 1
    assert kg["nodes"]["item"] == 3 * 36 and kg["components"]["largest"]
    assert set(kg["bytes"]) == {"nodes.parquet", "edges.parquet"}


def test_missing_attribute_columns_are_named(tmp_path):
    raw = tmp_path / "raw"
    mapping = write_demo(raw, people=60, items_per_platform=30, seed=2, attributes=True)
    text = mapping.read_text()
    (raw / "csv.toml").write_text(text.replace('"brand", "category_path"', '"brand", "maker"'))
    with pytest.raises(DataError) as e:
        build_dataset(load_sources(raw / "csv.toml"), tmp_path / "o1", salt="t", kg=False)
    assert e.value.path.endswith("products.csv") and "missing column 'maker'" in e.value.message
    (raw / "jsonl.toml").write_text(text.replace('attributes = ["topic"]', 'attributes = ["topic", "genre"]'))
    with pytest.raises(SourceError, match=r"videos\.jsonl: no line has the attribute column 'genre'"):
        build_dataset(load_sources(raw / "jsonl.toml"), tmp_path / "o2", salt="t", kg=False)
    (raw / "bad.toml").write_text(text.replace('"brand", "category_path"', '"brand", "title"'))
    with pytest.raises(SourceError, match="attribute column 'title' clashes"):
        load_sources(raw / "bad.toml")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


# --- the CLI ------------------------------------------------------------------------------------------------


def test_cli_kg_show_prints_the_neighbourhood(demo_kg):
    item = pq.read_table(demo_kg / "items.parquet").to_pylist()[0]
    res = CliRunner().invoke(app, ["kg", "show", item["item_id"], "--dataset", str(demo_kg)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert out.startswith(f"{item['item_id']}  {item['title']}")
    assert f"brand: {item['brand']}" in out and "category: " in out
    assert "video calls it" in out and "also on video:" in out  # the linked category on the other platform
    bare = item["item_id"].split(":", 1)[1]  # a bare id is enough when one platform has it
    assert CliRunner().invoke(app, ["kg", "show", bare, "--dataset", str(demo_kg)]).output == out


def test_cli_kg_show_errors_and_build_without_kg(demo_kg, tmp_path):
    res = CliRunner().invoke(app, ["kg", "show", "shop:NOPE", "--dataset", str(demo_kg)])
    assert res.exit_code == 2 and "no item 'shop:NOPE'" in res.output
    mapping = write_demo(tmp_path / "raw", people=60, items_per_platform=30, seed=2)
    res = CliRunner().invoke(app, ["data", "build", str(mapping), "--out", str(tmp_path / "ds"), "--no-kg"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "ds" / "kg").exists() and "kg" not in json.loads((tmp_path / "ds" / "report.json")
                                                                            .read_text())
    res = CliRunner().invoke(app, ["kg", "show", "shop:S00001", "--dataset", str(tmp_path / "ds")])
    assert res.exit_code == 2 and "no knowledge graph" in res.output


# --- Food-Kitchen -------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_committed_rules_are_the_ones_the_sample_chooses(food_kitchen, tmp_path):
    """On the labelled sample with the real titles: the rules in LINK_RULES are what calibration picks, and
    the links the real build makes reach precision ≥ 0.9 on the sample."""
    from training.kg.calibrate import calibrate
    from training.kg.link import minilm_encoder

    encoder = minilm_encoder()
    if encoder is None:
        pytest.skip("MiniLM not installed")
    cfg = load_sources(Path("configs/food-kitchen.toml"), data_root=food_kitchen)
    build_dataset(cfg, tmp_path / "fk", salt="test-salt")
    result = calibrate(load_sample(), encoder, tmp_path / "fk")
    for kind, r in result["kinds"].items():
        assert (r["chosen"]["name"], r["chosen"]["context"]) == (LINK_RULES[kind].name, LINK_RULES[kind].context)
    assert result["committed"]["precision"] >= 0.9
    assert result["built_graph"]["precision"] >= 0.9


# --- the table ranking reads (training/kg/table.py) ---------------------------------------------------------


def test_item_entities_reads_the_item_entity_edges_in_the_datasets_item_order(tmp_path):
    from training.kg.table import item_entities

    folder = tmp_path / "kg"
    folder.mkdir()
    nodes = [("item:shop:a", "item", "A"), ("item:video:v", "item", "V"), ("brand:acme", "brand", "Acme"),
             ("type:mug", "type", "mug"), ("category:shop:coffee", "category", "coffee"), ("person:p", "person", None)]
    pq.write_table(pa.table({"node_id": [n[0] for n in nodes], "kind": [n[1] for n in nodes],
                             "name": [n[2] for n in nodes], "platforms": [["shop"]] * len(nodes),
                             "count": [1] * len(nodes), "component": [0] * len(nodes),
                             "aliases": [[]] * len(nodes)}, schema=NODE_SCHEMA), folder / "nodes.parquet")
    edges = [("item:shop:a", "brand:acme", "has_brand"), ("item:shop:a", "type:mug", "has_type"),
             ("item:video:v", "brand:acme", "has_brand"), ("item:video:v", "category:shop:coffee", "in_category"),
             ("item:shop:gone", "brand:acme", "has_brand"),  # an item the dataset no longer has
             ("person:p", "item:shop:a", "review")]
    pq.write_table(pa.table({"src": [e[0] for e in edges], "dst": [e[1] for e in edges],
                             "relation": [e[2] for e in edges], "platform": ["shop"] * len(edges),
                             "weight": [1.0] * len(edges), "source": ["title"] * len(edges)}, schema=EDGE_SCHEMA),
                   folder / "edges.parquet")
    t = item_entities(tmp_path, ["video:v", "shop:b", "shop:a"])  # the dataset's rows: v, b (no entities), a
    names = [str(n) for n in t.names]
    assert sorted(names) == ["Acme", "coffee", "mug"]
    assert [names[e] for e in t.of(0)] == sorted(["Acme", "coffee"], key=names.index)
    assert t.of(1).tolist() == []
    assert sorted(names[e] for e in t.of(2)) == ["Acme", "mug"]
    assert {names[e]: t.kind(e) for e in range(t.n_entities)} == {"Acme": "brand", "mug": "type", "coffee": "category"}
    # A dataset built with --no-kg: an empty table of the dataset's size.
    empty = item_entities(tmp_path / "nothing", ["a", "b"])
    assert empty.is_empty and empty.n_items == 2
