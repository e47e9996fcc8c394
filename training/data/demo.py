"""`xrec data demo`: a small synthetic three-platform sample in the same raw shapes real platforms export.

A shop (CSV, ISO times), a video site (gzipped JSON lines, epoch milliseconds) and a news site (Parquet,
epoch seconds), each with its own account ids and column names; people with a taste for a few topics, some
of them on several platforms and linked by an identity table; held-out next items after a cut-off date for
the linked people; and a little injected dirt, counted in `stats.json`, so cleaning has work to do.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TOPICS: dict[str, list[str]] = {
    "coffee": ["espresso", "pour-over", "cold brew", "arabica beans", "milk frother", "grinder"],
    "baking": ["sourdough", "bundt pan", "stand mixer", "cake flour", "piping bags", "proofing basket"],
    "hiking": ["trail boots", "trekking poles", "daypack", "rain shell", "headlamp", "water filter"],
    "gaming": ["controller", "mechanical keyboard", "headset", "strategy game", "racing wheel", "console"],
    "gardening": ["pruning shears", "raised bed", "tomato seeds", "compost bin", "watering can", "trowel"],
    "fitness": ["kettlebell", "yoga mat", "resistance bands", "running shoes", "foam roller", "jump rope"],
    "asian-cooking": ["wok", "rice cooker", "miso paste", "chili crisp", "bamboo steamer", "soy sauce"],
    "photography": ["mirrorless camera", "prime lens", "tripod", "camera bag", "light meter", "film roll"],
    "jazz": ["vinyl record", "saxophone reeds", "turntable", "jazz standards", "trumpet mute", "upright bass"],
    "travel": ["carry-on", "packing cubes", "travel pillow", "passport wallet", "adapter plug", "guidebook"],
    "pets": ["dog leash", "cat tree", "chew toy", "pet bed", "grain-free kibble", "litter box"],
    "tea": ["matcha", "oolong", "loose leaf tea", "teapot", "tea infuser", "chai blend"],
}
ADJECTIVES = ["classic", "premium", "compact", "organic", "professional", "everyday", "deluxe", "lightweight",
              "handmade", "vintage", "smart", "eco-friendly"]
BRANDS = ["Acme", "Northwind", "Bluebird", "Kestrel", "Olive & Oak", "Tidewater", "Summit", "Lumen"]
PLATFORMS = ("shop", "video", "news")
CUTOFF = datetime(2024, 6, 1, tzinfo=UTC)


def _title(rng: random.Random, platform: str, topic: str) -> tuple[str, str | None]:
    """An item's title, and its brand (shop items only)."""
    noun = rng.choice(TOPICS[topic])
    adj = rng.choice(ADJECTIVES)
    if platform == "shop":
        brand = rng.choice(BRANDS)
        return f"{brand} {adj} {noun} ({rng.choice(['1 pack', '2 pack', 'large', 'small'])})", brand
    if platform == "video":
        return rng.choice([f"How to choose a {adj} {noun}", f"{noun.title()} review: is the {adj} one worth it?",
                           f"10 {topic} tips with a {noun}", f"Beginner's guide to {topic}: the {noun}"]), None
    return rng.choice([f"Why {adj} {noun}s are back in {topic}", f"The {topic} world reacts to a new {noun}",
                       f"Ask an expert: {noun} care for {topic} fans",
                       f"{topic.title()} report: {adj} {noun} prices"]), None


def write_demo(out: Path, people: int = 3000, items_per_platform: int = 1500, seed: int = 0,
               attributes: bool = False) -> Path:
    """Write the sample under `out`; returns the path of its mapping file.

    The shop's catalog always has `brand` and `category_path` ("Shop > <topic>") columns and the video site's
    a `topic` column; with `attributes` the mapping file names them (`attributes = [...]`), so the dataset's
    items carry them and the knowledge graph takes brands and categories from them rather than the titles.
    """
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    topics = list(TOPICS)

    # Catalogs: each item has a topic and a Zipf-like popularity.
    catalog: dict[str, list[tuple[str, str, str, float]]] = {}
    brands: dict[str, str | None] = {}
    for p in PLATFORMS:
        rows = []
        for i in range(items_per_platform):
            topic = topics[i % len(topics)]
            item_id = f"{p[0].upper()}{i:05d}"
            title, brands[item_id] = _title(rng, p, topic)
            rows.append((item_id, title, topic, 1.0 / (1 + i // len(topics))))
        catalog[p] = rows
    by_topic = {p: {t: [r for r in catalog[p] if r[2] == t] for t in topics} for p in PLATFORMS}

    def pick(platform: str, likes: list[str]) -> str:
        topic = rng.choice(likes) if rng.random() < 0.85 else rng.choice(topics)
        pool = by_topic[platform][topic]
        return rng.choices(pool, weights=[r[3] for r in pool])[0][0]

    events: dict[str, list[tuple[str, str, str, datetime]]] = {p: [] for p in PLATFORMS}
    links: list[tuple[str, str, str]] = []
    targets: list[tuple[str, str, str, str, datetime]] = []
    for n in range(people):
        likes = rng.sample(topics, k=rng.choice([1, 2, 2, 3]))
        k = rng.choices([1, 2, 3], weights=[0.55, 0.3, 0.15])[0]
        on = rng.sample(PLATFORMS, k=k)
        accounts = {p: f"{p}-{rng.getrandbits(40):010x}" for p in on}
        if k > 1:
            links.extend((f"U{n:06d}", p, a) for p, a in accounts.items())
        t = CUTOFF - timedelta(days=rng.uniform(30, 700))
        had: set[str] = set()
        for _ in range(rng.randint(3, 25)):
            t += timedelta(hours=rng.uniform(1, 24 * 20))
            if t >= CUTOFF:
                break
            p = rng.choice(on)
            item = pick(p, likes)
            had.add(item)
            events[p].append((accounts[p], item, "view" if p != "shop" else "purchase", t))
        if k > 1:
            p = rng.choice(on)
            split = "valid" if n % 2 else "test"
            # As in Food-Kitchen's split, a target is something new to the person (a few draws, else skipped).
            target = next((i for i in (pick(p, likes) for _ in range(20)) if i not in had), None)
            if target is not None:
                targets.append((split, p, accounts[p], target, CUTOFF + timedelta(days=rng.uniform(1, 30))))

    dirt = {p: {"exact_duplicates": 0, "unknown_item": 0, "blank_account": 0} for p in PLATFORMS}
    for p in PLATFORMS:
        rows = events[p]
        rows.sort(key=lambda r: r[3])
        clean = len(rows)
        for i in rng.sample(range(clean), k=max(1, clean // 100)):
            rows.append(rows[i])
            dirt[p]["exact_duplicates"] += 1
        for _ in range(5):
            a, _, e, ts = rng.choice(rows[:clean])
            rows.append((a, f"GONE{rng.randrange(10**6)}", e, ts))
            dirt[p]["unknown_item"] += 1
            rows.append(("", rng.choice(catalog[p])[0], e, ts))
            dirt[p]["blank_account"] += 1
        rng.shuffle(rows)
        rows.sort(key=lambda r: r[3])  # logs come roughly in time order

    (out / "shop").mkdir(exist_ok=True)
    with (out / "shop" / "products.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "product_name", "topic", "brand", "category_path"])
        w.writerows((i, title, topic, brands[i], f"Shop > {topic}") for i, title, topic, _ in catalog["shop"])
    with (out / "shop" / "orders.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["user", "product_id", "kind", "ordered_at"])
        w.writerows((a, i, e, ts.strftime("%Y-%m-%dT%H:%M:%SZ")) for a, i, e, ts in events["shop"])

    (out / "video").mkdir(exist_ok=True)
    with (out / "video" / "videos.jsonl").open("w", encoding="utf-8") as f:
        for i, title, topic, _ in catalog["video"]:
            f.write(json.dumps({"video_id": i, "caption": title, "topic": topic}) + "\n")
    with gzip.open(out / "video" / "watch_log.jsonl.gz", "wt", encoding="utf-8") as f:
        for a, i, e, ts in events["video"]:
            f.write(json.dumps({"viewer": a, "video_id": i, "type": e, "time_ms": int(ts.timestamp() * 1000)}) + "\n")

    (out / "news").mkdir(exist_ok=True)
    pq.write_table(pa.table({"article": [r[0] for r in catalog["news"]],
                             "headline": [r[1] for r in catalog["news"]]}), out / "news" / "articles.parquet")
    pq.write_table(pa.table({"reader_id": [r[0] for r in events["news"]],
                             "article": [r[1] for r in events["news"]],
                             "epoch": [int(r[3].timestamp()) for r in events["news"]]}),
                   out / "news" / "reads.parquet")

    with (out / "identity_links.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["person_id", "platform", "account_id"])
        w.writerows(links)
    (out / "eval").mkdir(exist_ok=True)
    for split in ("valid", "test"):
        with (out / "eval" / f"{split}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["platform", "account_id", "item_id", "timestamp"])
            w.writerows((p, a, i, ts.strftime("%Y-%m-%dT%H:%M:%SZ")) for s, p, a, i, ts in targets if s == split)

    stats = {
        "injected_dirt": dirt,
        "clean_events": {p: len(events[p]) - sum(dirt[p].values()) for p in PLATFORMS},
        "items": {p: items_per_platform for p in PLATFORMS},
        "linked_people": len({person for person, _, _ in links}),
        "eval": {s: sum(1 for t in targets if t[0] == s) for s in ("valid", "test")},
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    mapping = out / "mapping.toml"
    text = DEMO_MAPPING
    if attributes:
        text = text.replace('text = "product_name" }',
                            'text = "product_name", attributes = ["brand", "category_path"] }')
        text = text.replace('text = "caption" }', 'text = "caption", attributes = ["topic"] }')
    mapping.write_text(text, encoding="utf-8")
    return mapping


DEMO_MAPPING = """\
# Synthetic demo: three platforms, three formats, three sets of column names.
name = "demo"
data_root = "."

[identity]
file = "identity_links.csv"

[platforms.shop]
events = ["shop/orders*.csv"]
account = "user"
item = "product_id"
event = "kind"
timestamp = "ordered_at"
timestamp_format = "iso"
catalog = { file = "shop/products.csv", id = "product_id", text = "product_name" }

[platforms.video]
events = ["video/watch_log*.jsonl.gz"]
account = "viewer"
item = "video_id"
event = "type"
timestamp = "time_ms"
timestamp_format = "epoch_ms"
catalog = { file = "video/videos.jsonl", id = "video_id", text = "caption" }

[platforms.news]
events = ["news/reads*.parquet"]
account = "reader_id"
item = "article"
timestamp = "epoch"
timestamp_format = "epoch_s"
default_event = "read"
catalog = { file = "news/articles.parquet", id = "article", text = "headline" }

[eval]
splits = { valid = "eval/valid.csv", test = "eval/test.csv" }
"""
