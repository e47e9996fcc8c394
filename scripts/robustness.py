"""Accuracy over seeds and data sets: `xrec train` on each (data set, seed), every baseline beside the model.

    .venv/bin/python scripts/robustness.py --profile configs/train-default.toml --seeds 0,1,2 \\
        --data fk=runs/fk --data sparse=runs/variants/sparse/dataset --out runs/robustness

Each run is the default command (`xrec train PROFILE --dataset D --out OUT/NAME-seedS --seed S`, which
evaluates on test with all baselines). The report (`OUT/robustness.md`) has one row per run — test NDCG@10,
Recall@10, new-to-platform NDCG@10 of the final model, the best baseline on test and whether the model is at
or above it, what was chosen on valid — and, per data set, the mean ± sd over seeds. Runs already done
(a metrics-test.json in their folder) are read, not repeated.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

FINAL = "two-tower + scorer (final)"
RETRIEVAL = "two-tower (retrieval)"


def run(profile: Path, dataset: Path, out: Path, seed: int) -> float:
    """Train and evaluate one (data set, seed) unless done; minutes it took (0 when it was done)."""
    if (out / "metrics-test.json").is_file():
        return 0.0
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "xrec.cli", "train", str(profile), "--dataset", str(dataset), "--out",
                    str(out), "--seed", str(seed)], check=True)
    return (time.perf_counter() - started) / 60


def summary(out: Path) -> dict[str, object]:
    metrics = json.loads((out / "metrics-test.json").read_text())
    final_name = FINAL if FINAL in metrics else RETRIEVAL

    def fig(name: str, protocol: str = "full", key: str = "ndcg@10") -> float:
        return float(metrics[name][protocol]["overall"][key])

    baselines = [m for m in metrics if m not in (FINAL, RETRIEVAL)]
    best = max(baselines, key=fig)
    best_ntp = max(baselines, key=lambda m: fig(m, "new_to_platform"))
    log = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False).get("log", {})
    nb = log.get("neighbours", {})
    return {"final": fig(final_name), "recall": fig(final_name, key="recall@10"),
            "ntp": fig(final_name, "new_to_platform"), "retrieval": fig(RETRIEVAL),
            "best": best, "best_ndcg": fig(best),
            "best_ntp": best_ntp, "best_ntp_ndcg": fig(best_ntp, "new_to_platform"),
            "neighbours": f"{nb.get('chosen', '?')}@{nb.get('decay', '?')}",
            "start": log.get("scorer", {}).get("start", "-"), "minutes": log.get("minutes")}


def report(rows: list[tuple[str, int, dict]]) -> str:
    lines = ["| data | seed | final NDCG@10 | Recall@10 | new-to-platform | retrieval | best baseline (test) | "
             "final ≥ it | best new-to-platform baseline | neighbours, scorer start (valid) | train min |",
             "|---|---:|---:|---:|---:|---:|---|:-:|---|---|---:|"]
    for name, seed, s in rows:
        lines.append(f"| {name} | {seed} | {s['final']:.4f} | {s['recall']:.4f} | {s['ntp']:.4f} "
                     f"| {s['retrieval']:.4f} "
                     f"| {s['best']} {s['best_ndcg']:.4f} | {'yes' if s['final'] >= s['best_ndcg'] else '**no**'} "
                     f"| {s['best_ntp']} {s['best_ntp_ndcg']:.4f} | {s['neighbours']}, {s['start']} | {s['minutes']} |")
    lines += ["", "| data | seeds | final NDCG@10 | Recall@10 | new-to-platform | best baseline NDCG@10 |",
              "|---|---:|---|---|---|---|"]
    for name in dict.fromkeys(n for n, _, _ in rows):
        ss = [s for n, _, s in rows if n == name]

        def ms(key: str, ss: list[dict] = ss) -> str:
            v = np.array([s[key] for s in ss], dtype=float)
            return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v[0]:.4f}"

        lines.append(f"| {name} | {len(ss)} | {ms('final')} | {ms('recall')} | {ms('ntp')} | {ms('best_ndcg')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", type=Path, default=Path("configs/train-default.toml"))
    ap.add_argument("--data", action="append", required=True, help="NAME=DATASET_DIR (repeatable)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", type=Path, default=Path("runs/robustness"))
    ap.add_argument("--report-only", action="store_true", help="only report the runs already done")
    args = ap.parse_args()
    rows = []
    for spec in args.data:
        name, dataset = spec.split("=", 1)
        for seed in (int(s) for s in args.seeds.split(",")):
            out = args.out / f"{name}-seed{seed}"
            if args.report_only and not (out / "metrics-test.json").is_file():
                continue
            minutes = run(args.profile, Path(dataset), out, seed)
            rows.append((name, seed, summary(out)))
            print(f"{name} seed {seed}: final {rows[-1][2]['final']:.4f} ({minutes:.1f} min)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "robustness.md").write_text(report(rows), encoding="utf-8")
    print(report(rows))


if __name__ == "__main__":
    main()
