"""Shared fixtures. Tests write their own small fixtures; the real data set is read in place."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOOD_KITCHEN = Path(__import__("os").environ.get("XREC_DATA_ROOT", ROOT.parent / "shared/data/food-kitchen"))


@pytest.fixture(scope="session")
def food_kitchen() -> Path:
    if not (FOOD_KITCHEN / "stats.json").is_file():
        pytest.skip(f"real data not found at {FOOD_KITCHEN}")
    return FOOD_KITCHEN
