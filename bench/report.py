"""Markdown tables for docs/benchmarks.md from the JSON figures bench/serve.py and bench/index.py write.

    .venv/bin/python bench/report.py --serve runs/bench/serve-fk-36k.json runs/bench/serve-fk-1m.json \
        --index runs/bench/index.json

Prints the tables (summary with goals and ratios, serving runs, loading, index comparison, profiles) so the
page is regenerated from measurements, not retyped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _f(x: float | None, fmt: str = ",.2f") -> str:
    return "—" if x is None else format(x, fmt)


def rps(r: dict) -> float:
    return r["requests"] / r["seconds"] if r["seconds"] else float("nan")


def serve_tables(runs: list[dict]) -> list[str]:
    out = ["| catalog | cache | conc. | requests | seconds | req/s | p50 ms | p95 ms | p99 ms | max ms | errors "
           "| cache hits | server CPU µs/req | wrk CPU µs/req |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in runs:
        for r in s["runs"]:
            out.append(f"| {s['label']} | {r['mode']} | {r['concurrency']} | {r['requests']:,} | {r['seconds']:.1f} | "
                       f"{rps(r):,.0f} | {r['p50_us'] / 1e3:.2f} | {r['p95_us'] / 1e3:.2f} | {r['p99_us'] / 1e3:.2f} | "
                       f"{r['max_us'] / 1e3:.1f} | {r['errors']} | {r['hits'] / max(r['requests'], 1):.0%} | "
                       f"{r.get('server_cpu_us_per_req', float('nan')):,.0f} | "
                       f"{r.get('client_cpu_us_per_req', float('nan')):,.1f} |")
    out += ["", "| catalog | items | ready after (s) | RSS after load (MiB) | peak RSS (MiB) | RSS per item (B) | "
            "RSS after runs (MiB) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in runs:
        ld = s["load"]
        out.append(f"| {s['label']} | {s['items']:,} | {ld['ready_s']:.1f} | {ld['rss_bytes'] / 2**20:,.0f} | "
                   f"{ld['hwm_bytes'] / 2**20:,.0f} | {ld['rss_bytes'] / s['items']:,.0f} | "
                   f"{(ld.get('rss_after_bytes') or 0) / 2**20:,.0f} |")
    return out


def index_table(rows: list[dict]) -> list[str]:
    out = ["| catalog | layout | index | knob | build s (threads) | B/item serialised | B/item RSS | "
           "recall@100 restricted | recall@100 unrestricted | search p50/p99 µs restricted | unrestricted |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        knob = {"hnsw": f"efSearch {r['knob']}", "ivf": f"nprobe {r['knob']}", "exact": "—"}[r["index"]]
        if r.get("default") and r["index"] == "hnsw":
            knob += " (service)"
        out.append(f"| {r['size']} | {r['layout']} | {r['index']} | {knob} | "
                   f"{r['build_s']:.1f} ({r['build_threads']}) | {r['bytes_per_item_serialised']:,.0f} | "
                   f"{r['bytes_per_item_rss']:,.0f} | "
                   f"{r['recall_restricted']:.4f} | {r['recall_unrestricted']:.4f} | "
                   f"{r['lat_restricted']['p50_us']:,.0f} / {r['lat_restricted']['p99_us']:,.0f} | "
                   f"{r['lat_unrestricted']['p50_us']:,.0f} / {r['lat_unrestricted']['p99_us']:,.0f} |")
    return out


def service_index(rows: list[dict], items: int) -> dict | None:
    """The index the service actually uses for a catalog of this size: per-platform, flat below the HNSW
    threshold per platform, HNSW (service efSearch) above."""
    cands = [r for r in rows if r["items"] == items and r["layout"] == "per-platform"]
    hnsw = [r for r in cands if r["index"] == "hnsw" and r.get("default")]
    exact = [r for r in cands if r["index"] == "exact"]
    if items > 100_000 and hnsw:
        return hnsw[0]
    return (exact or hnsw or [None])[0]


def summary(runs: list[dict], rows: list[dict]) -> list[str]:
    out = ["| catalog | items | warm c=1 p50 ms | warm c=16 req/s | warm c=16 p99 ms | warm c=64 req/s | "
           "warm c=64 p99 ms | warm c=64 errors | cold c=16 req/s | cold c=16 p99 ms | index served | "
           "recall@100 restricted | HNSW recall@100 restricted (efSearch 256) | test NDCG@10 | test Recall@10 |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for s in runs:
        by = {(r["mode"], r["concurrency"]): r for r in s["runs"]}

        def g(mode: str, c: int, what: str, by: dict = by) -> str:
            r = by.get((mode, c))
            if r is None:
                return "—"
            if what == "rps":
                return f"{rps(r):,.0f}"
            if what == "errors":
                return str(r["errors"])
            return f"{r[what] / 1e3:.2f}"

        si = service_index(rows, s["items"])
        hn = [r for r in rows if r["items"] == s["items"] and r["index"] == "hnsw" and r.get("default")
              and r["layout"] == "per-platform"]
        acc = s.get("accuracy") or {}
        nd = acc.get("ndcg@10")
        rc = acc.get("recall@10")
        out.append(f"| {s['label']} | {s['items']:,} | {g('warm', 1, 'p50_us')} | {g('warm', 16, 'rps')} | "
                   f"{g('warm', 16, 'p99_us')} | {g('warm', 64, 'rps')} | {g('warm', 64, 'p99_us')} | "
                   f"{g('warm', 64, 'errors')} | {g('cold', 16, 'rps')} | {g('cold', 16, 'p99_us')} | "
                   f"{si['index'] + ' per platform' if si else '—'} | "
                   f"{_f(si['recall_restricted'], '.4f') if si else '—'} | "
                   f"{_f(hn[0]['recall_restricted'], '.4f') if hn else '—'} | "
                   f"{_f(nd, '.4f') if nd is not None else 'see docs/results.md'} | "
                   f"{_f(rc, '.4f') if rc is not None else 'see docs/results.md'} |")
    return out


def profiles(runs: list[dict]) -> list[str]:
    out = []
    for s in runs:
        for name, pr in (s.get("profile") or {}).items():
            if "categories" not in pr:
                continue
            out += [f"**{s['label']}, {name}** (c=16 under py-spy: {pr['req_s']:,.0f} req/s, server CPU "
                    f"{pr['server_cpu_us_per_req']:,.0f} µs/request)", ""]
            if name == "warm":
                out += ["| step | share | ≈ µs/request |", "|---|---:|---:|"]
                out += [f"| {c} | {sh:.1%} | {us:,.0f} |" for c, sh, us in pr["categories"] if sh >= 0.005]
            else:
                out += ["| step | share of busy-thread time (Redis waits included) |", "|---|---:|"]
                out += [f"| {c} | {sh:.1%} |" for c, sh, _ in pr["categories"] if sh >= 0.005]
            out.append("")
        bd = (s.get("load") or {}).get("breakdown")
        if bd:
            out += [f"**{s['label']}, startup** ({s['load']['ready_s']:.1f} s to ready)", "",
                    "| where (deepest xrec function → leaf) | share |", "|---|---:|"]
            out += [f"| `{n}` | {sh:.1%} |" for n, sh in bd]
            out.append("")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", type=Path, nargs="*", default=[], help="bench/serve.py JSON files")
    ap.add_argument("--index", type=Path, nargs="*", default=[], help="bench/index.py JSON files")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown here (default: stdout)")
    args = ap.parse_args()
    runs = [json.loads(p.read_text()) for p in args.serve]
    rows = [r for p in args.index for r in json.loads(p.read_text())["rows"]]
    lines = ["### Summary", ""] + summary(runs, rows) + ["", "### Serving", ""] + serve_tables(runs)
    lines += ["", "### Index", ""] + index_table(rows) + ["", "### Profiles", ""] + profiles(runs)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
