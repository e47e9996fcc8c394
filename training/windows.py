"""Training examples for the two-tower: windows of each person's timeline, every event a target.

A window holds up to `max_history + 1` consecutive events of one person. Its events 0..m-1 are the input
(right-aligned, as `contract.features.history_inputs` lays out a history at serving time) and events 1..m
are the targets: the output after slot t predicts event t + 1 from strictly earlier events. A person's very
first event is a target too, for the empty-history query.

Transfer windows (`make_windows(..., transfer=True)`) simulate people new to a platform: for a person on
several platforms and one platform P of theirs, the input is their events on the *other* platforms only, and
the slot just before each of their P events predicts it. A next-event window almost never asks that (a person's
P history is in the input), yet it is what the service answers for someone P has never seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    # transfer windows, after the consecutive ones: input event indices, and per input slot the index of the
    # event it predicts (-1: none) on `transfer_platform`; the input's time buckets over the input alone
    transfer_inputs: list[np.ndarray] = field(default_factory=list)
    transfer_targets: list[np.ndarray] = field(default_factory=list)
    transfer_buckets: list[np.ndarray] = field(default_factory=list)
    transfer_platform: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def lengths(self) -> np.ndarray:
        """Events per window (inputs + 1), consecutive windows first, then transfer windows."""
        return np.concatenate([self.length, np.array([len(i) + 1 for i in self.transfer_inputs], dtype=np.int64)])


def make_windows(tl: Timelines, max_history: int, is_target: np.ndarray | None = None,
                 transfer: bool = False) -> Windows:
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
    w = Windows(np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64),
                np.array(firsts, dtype=np.int64), buckets, is_target)
    if transfer:
        _add_transfer_windows(w, tl, max_history)
    return w


def _add_transfer_windows(w: Windows, tl: Timelines, max_history: int) -> None:
    plats = []
    for p in range(len(tl)):
        lo, hi = int(tl.offsets[p]), int(tl.offsets[p + 1])
        on = tl.platforms[lo:hi]
        used = np.unique(on)
        for target_p in used if len(used) > 1 else ():
            other = lo + np.flatnonzero(on != target_p)
            wanted = lo + np.flatnonzero((on == target_p) & w.is_target[lo:hi])
            # The slot just before each wanted event predicts it (the first of a run of P events, when several
            # follow the same slot): what the new-to-platform query at that moment would have as history.
            slot = np.searchsorted(other, wanted) - 1
            ok = slot >= 0
            target = np.full(len(other), -1, dtype=np.int64)
            slots, first = np.unique(slot[ok], return_index=True)
            target[slots] = wanted[ok][first]
            buckets = time_buckets(tl.ts[other])
            hit = np.flatnonzero(target >= 0)
            while len(hit):  # windows of ≤ max_history slots, each ending at its last target, newest first
                end = int(hit[-1]) + 1
                s = max(0, end - max_history)
                w.transfer_inputs.append(other[s:end])
                w.transfer_targets.append(target[s:end])
                w.transfer_buckets.append(buckets[s:end])
                plats.append(int(target_p))
                hit = hit[hit < s]
    w.transfer_platform = np.array(plats, dtype=np.int64)


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
    lengths = w.lengths()
    n_consecutive = len(w.length)
    chunks = chunk_by_tokens(lengths, tokens, rng)
    for chunk in chunks:
        n_in = int(lengths[chunk].max()) - 1
        b = len(chunk)
        hist = np.zeros((b, n_in), dtype=np.int64)
        plat = np.zeros((b, n_in), dtype=np.int64)
        buck = np.zeros((b, n_in), dtype=np.int64)
        mask = np.zeros((b, n_in), dtype=bool)
        trow = np.zeros((b, n_in), dtype=np.int64)
        tplat = np.zeros((b, n_in), dtype=np.int64)
        tmask = np.zeros((b, n_in), dtype=bool)
        for r, k in enumerate(chunk):
            if k < n_consecutive:  # events s..s+m-1 in, s+1..s+m predicted
                s, m = int(w.start[k]), int(w.length[k]) - 1
                inp, tgt = slice(s, s + m), slice(s + 1, s + m + 1)
                bk, t_items, t_plat, t_ok = w.buckets[inp], tl.items[tgt], tl.platforms[tgt], w.is_target[tgt]
            else:  # a transfer window: some slots predict an event on its platform
                t = k - n_consecutive
                inp, bk, tgt = w.transfer_inputs[t], w.transfer_buckets[t], w.transfer_targets[t]
                t_ok = tgt >= 0
                t_items = np.where(t_ok, tl.items[np.maximum(tgt, 0)], 0)  # item row 0 where none, as padding
                t_plat = w.transfer_platform[t]
                m = len(inp)
            hist[r, -m:] = tl.items[inp]
            plat[r, -m:] = tl.platforms[inp] + 1
            buck[r, -m:] = bk
            mask[r, -m:] = True
            trow[r, -m:] = t_items
            tplat[r, -m:] = t_plat
            tmask[r, -m:] = t_ok
        yield Batch(*(torch.from_numpy(a) for a in (hist, plat, buck, mask, trow, tplat, tmask)))
