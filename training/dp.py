"""Differential privacy for the federated trainer's shared updates: clipping, Gaussian noise, the ε accountant.

Central DP with server-side fixed clipping (McMahan et al. 2018, "Learning differentially private recurrent
language models"): each platform's update of the shared parameters (its returned weights minus the round's
global weights) is clipped to L2 norm `clip`, the clipped updates are averaged with equal weights, and the
average gets Gaussian noise of standard deviation `noise_multiplier · clip / n_clients` per coordinate. One
platform's update then moves the average by at most `clip / n` (added or removed), so each round is a Gaussian
mechanism with noise multiplier z; over T rounds its Rényi DP at order α is T·α / (2z²) (Mironov 2017), and
(ε, δ)-DP follows with ε = min over α > 1 of T·α / (2z²) + log(1/δ) / (α − 1).

What that covers (docs/federated.md): the shared parameters the server releases, against anyone who sees them
(the other platforms, the bundle), with one platform's whole update as the unit; not the server itself (it sees
each update before clipping), and not the local parameters each platform keeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def update_norm(new: Sequence[np.ndarray], old: Sequence[np.ndarray]) -> float:
    """L2 norm of the update `new − old` over all arrays together (one flattened vector)."""
    return math.sqrt(sum(float(np.sum((n.astype(np.float64) - o) ** 2)) for n, o in zip(new, old, strict=True)))


def clip_update(new: Sequence[np.ndarray], old: Sequence[np.ndarray], clip: float) -> tuple[list[np.ndarray], float]:
    """`old + (new − old) · min(1, clip / ‖new − old‖)`: the same weights with the update's norm at most `clip`.
    Returns the clipped weights and the update's norm before clipping (worth logging: it says what clip to use)."""
    if clip <= 0:
        raise ValueError(f"clip must be positive, got {clip}")
    norm = update_norm(new, old)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return [(o + (n.astype(np.float64) - o) * scale).astype(n.dtype) for n, o in zip(new, old, strict=True)], norm


def noise_std(noise_multiplier: float, clip: float, n_clients: int) -> float:
    """Per-coordinate noise for an equal-weight average of `n_clients` updates clipped to `clip`: one client
    moves that average by at most clip / n."""
    return noise_multiplier * clip / n_clients


def add_noise(arrays: Sequence[np.ndarray], std: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Each array plus independent N(0, std²) noise per coordinate (same dtypes)."""
    return [(a + rng.normal(0.0, std, size=a.shape)).astype(a.dtype) for a in arrays]


def rdp_gaussian(noise_multiplier: float, rounds: int, alpha: float) -> float:
    """Rényi DP of order `alpha` of `rounds` Gaussian mechanisms with sensitivity 1 and noise std z (composed)."""
    return rounds * alpha / (2.0 * noise_multiplier**2)


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε of (ε, δ)-DP after `rounds` releases of a Gaussian mechanism with noise multiplier z (no subsampling:
    every platform takes part in every round), from its Rényi DP: min over α > 1 of T·α/(2z²) + log(1/δ)/(α−1).

    The minimum has a closed form: with a = T/(2z²) and b = log(1/δ) the optimum is at α = 1 + √(b/a), where
    ε = a + 2√(ab). Infinite without noise; 0 rounds release nothing."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    a = rounds / (2.0 * noise_multiplier**2)
    b = math.log(1.0 / delta)
    return a + 2.0 * math.sqrt(a * b)
