"""`xrec bundle verify`: hashes, then load every model and run one inference on inputs of the right shape, and
read every retrieval index."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract.bundle import BundleError, read_manifest, verify_files
from contract.indexes import read_index


def _dummy_feeds(sess: ort.InferenceSession, manifest) -> dict[str, np.ndarray]:
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) else (2 if i == 0 else 4) for i, d in enumerate(inp.shape)]
        if inp.name in ("hist_vecs",):
            shape[-1] = manifest.dim
        if inp.type == "tensor(bool)":
            feeds[inp.name] = np.ones(shape, dtype=bool)
        elif "int64" in inp.type:
            feeds[inp.name] = np.ones(shape, dtype=np.int64)
        else:
            feeds[inp.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return feeds


def verify_bundle(bundle: Path, log: Callable[[str], None] = print) -> list[str]:
    try:
        manifest = read_manifest(bundle)
    except BundleError as e:
        return [str(e)]
    problems = verify_files(bundle, manifest)
    if problems:
        return problems  # never load a file whose bytes are not the ones exported
    log(f"{len(manifest.files)} files match their sha256")
    for name, model in manifest.models.items():
        for variant, file in {"fp32": model.file, **model.variants}.items():
            try:
                sess = ort.InferenceSession(str(bundle / file), providers=["CPUExecutionProvider"])
                out = sess.run(None, _dummy_feeds(sess, manifest))[0]
            except Exception as e:  # noqa: BLE001 - any failure to load or run is the finding
                if variant == "fp16":  # fp16 is for GPUs; CPU kernels may be missing
                    log(f"{name} ({variant}): not runnable on CPU here ({type(e).__name__})")
                    continue
                problems.append(f"{file}: does not load or run: {e}")
                continue
            if not np.all(np.isfinite(out)):
                problems.append(f"{file}: produced non-finite output")
            log(f"{name} ({variant}): ran, output {tuple(out.shape)}")
    for platform, entry in manifest.indexes.items():
        try:
            index = read_index(bundle / entry.file, mmap=False)
        except Exception as e:  # noqa: BLE001 - any failure to read is the finding
            problems.append(f"{entry.file}: does not load: {e}")
            continue
        if index.ntotal != entry.items or index.d != manifest.dim:
            problems.append(f"{entry.file}: {index.ntotal} vectors of dimension {index.d}, the manifest says "
                            f"{entry.items} of dimension {manifest.dim}")
        else:
            log(f"index {platform} ({entry.kind}): {index.ntotal:,} items")
    return problems
