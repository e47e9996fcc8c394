"""Fixtures shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data.build import build_dataset
from training.data.demo import write_demo
from training.data.sources import load_sources


@pytest.fixture(scope="session")
def demo_ds(tmp_path_factory) -> Path:
    """The synthetic demo (300 people, 40 items per platform), built once."""
    root = tmp_path_factory.mktemp("demo")
    mapping = write_demo(root / "raw", people=300, items_per_platform=40, seed=1)
    build_dataset(load_sources(mapping), root / "ds", salt="t")
    return root / "ds"
