"""scripts/kg_probe.py on a tiny demo model: three variants, valid and test, differences with intervals."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from training.data.build import build_dataset
from training.data.demo import write_demo
from training.data.sources import load_sources
from training.model import ModelConfig
from training.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kg_probe", ROOT / "scripts/kg_probe.py")
probe = importlib.util.module_from_spec(_spec)
sys.modules["kg_probe"] = probe
_spec.loader.exec_module(probe)


def test_the_paired_interval_of_a_difference():
    a, b = np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0, 0.0])
    d, lo, hi = probe.diff_interval(a, b)
    assert d == 0.25 and lo == 0.0 and 0.5 <= hi <= 0.75  # resamples of {1, 0, 0, 0}
    assert probe.diff_interval(a, a) == (0.0, 0.0, 0.0)


def test_the_probe_reports_three_variants_on_valid_and_test(tmp_path, tiny_text_model, capsys):
    mapping = write_demo(tmp_path / "raw", people=200, items_per_platform=30, seed=2)
    build_dataset(load_sources(mapping), tmp_path / "ds", salt="s")
    ckpt = train(TrainConfig(dataset=tmp_path / "ds", out=tmp_path / "run", epochs=1, batch_tokens=256,
                             scorer_epochs=1, text_cache=tmp_path / "cache",
                             model=ModelConfig(dim=16, n_layers=1, text_model=tiny_text_model)))
    probe.main(ckpt, 10, tmp_path / "probe.json")
    report = json.loads((tmp_path / "probe.json").read_text())
    assert list(report["variants"]) == ["no KG", "KG features", "KG features + 10 KG candidates"]
    for v in report["variants"].values():
        assert set(v["ndcg@10"]) == {"valid", "test"}
        assert set(v["ndcg@10"]["test"]) == {"all", "new to platform", "1-2 bucket"}
    for split in ("valid", "test"):
        d, lo, hi = report["differences_to_no_kg"]["KG features"][split]["all"]
        assert lo <= d <= hi
    out = capsys.readouterr().out
    assert "| variant | valid all (n=" in out and "KG features − no KG, test:" in out
