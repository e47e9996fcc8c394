"""Training examples for the two-tower: windows of each person's timeline, every event a target.

A window holds up to `max_history + 1` consecutive events of one person. Its events 0..m-1 are the input
(right-aligned, as `contract.features.history_inputs` lays out a history at serving time) and events 1..m
are the targets: the output after slot t predicts event t + 1 from strictly earlier events. A person's very
first event is a target too, for the empty-history query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from contract.features import time_buckets
from training.sequences import Timelines


@dataclass
class Windows:
    start: np.ndarray  # first event index (global) of each window
    length: np.ndarray  # events in the window (inputs + 1)
    first_events: np.ndarray  # global indices of persons' first events (empty-history targets)
    buckets: np.ndarray  # time-gap bucket of every event, over its whole timeline
    is_target: np.ndarray  # bool per event: may be predicted (held-out events may not)


def make_windows(tl: Timelines, max_history: int, is_target: np.ndarray | None = None) -> Windows:
    starts, lengths, firsts = [], [], []
    buckets = np.zeros(len(tl.items), dtype=np.int64)
    for p in range(len(tl)):
        lo, hi = int(tl.offsets[p]), int(tl.offsets[p + 1])
        buckets[lo:hi] = time_buckets(tl.ts[lo:hi])
        firsts.append(lo)
        end = hi
        while end - lo >= 2:  # a window needs at least one input and one target
            s = max(lo, end - (max_history + 1))
            starts.append(s)
            lengths.append(end - s)
            end = s + 1  # the next window ends where this one's first input is: each event a target once
    if is_target is None:
        is_target = np.ones(len(tl.items), dtype=bool)
    return Windows(np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64),
                   np.array(firsts, dtype=np.int64), buckets, is_target)


@dataclass
class Batch:
    hist_rows: torch.Tensor  # [B, l] item rows (0 where padded)
    hist_platform: torch.Tensor  # [B, l] platform + 1 (0 = padding)
    hist_bucket: torch.Tensor  # [B, l]
    hist_mask: torch.Tensor  # [B, l] bool
    target_rows: torch.Tensor  # [B, l] the next item after each slot
    target_platform: torch.Tensor  # [B, l]
    target_mask: torch.Tensor  # [B, l] bool: a real target to train on


def chunk_by_tokens(lengths: np.ndarray, tokens: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Windows grouped by similar length so that each batch pads to about `tokens` slots (long windows come
    in small batches, short ones in large): every step costs about the same. Shuffled."""
    order = np.argsort(lengths + rng.random(len(lengths)), kind="stable")  # length-sorted, ties shuffled
    chunks, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end + 1 - start) * (int(lengths[order[end]]) - 1) <= tokens:
            end += 1
        chunks.append(order[start:end])
        start = end
    rng.shuffle(chunks)
    return chunks


def batches(tl: Timelines, w: Windows, tokens: int, rng: np.random.Generator):
    """Batches of windows of similar length, each padded only to its own longest window."""
    chunks = chunk_by_tokens(w.length, tokens, rng)
    for chunk in chunks:
        n_in = int(w.length[chunk].max()) - 1
        b = len(chunk)
        hist = np.zeros((b, n_in), dtype=np.int64)
        plat = np.zeros((b, n_in), dtype=np.int64)
        buck = np.zeros((b, n_in), dtype=np.int64)
        mask = np.zeros((b, n_in), dtype=bool)
        trow = np.zeros((b, n_in), dtype=np.int64)
        tplat = np.zeros((b, n_in), dtype=np.int64)
        tmask = np.zeros((b, n_in), dtype=bool)
        for r, k in enumerate(chunk):
            s, m = int(w.start[k]), int(w.length[k]) - 1
            inp = slice(s, s + m)
            tgt = slice(s + 1, s + m + 1)
            hist[r, -m:] = tl.items[inp]
            plat[r, -m:] = tl.platforms[inp] + 1
            buck[r, -m:] = w.buckets[inp]
            mask[r, -m:] = True
            trow[r, -m:] = tl.items[tgt]
            tplat[r, -m:] = tl.platforms[tgt]
            tmask[r, -m:] = w.is_target[tgt]
        yield Batch(*(torch.from_numpy(a) for a in (hist, plat, buck, mask, trow, tplat, tmask)))
