"""`xrec tune` on the demo: two trials, a tuned profile `xrec train` loads, one CSV row per trial, pruning."""

import csv
import tomllib
from pathlib import Path

import optuna

from training.model import ModelConfig
from training.train import TrainConfig, train
from training.tune import profile_params, tune


def _base(demo_ds: Path, tmp_path: Path, tiny_text_model: Path) -> TrainConfig:
    return TrainConfig(dataset=demo_ds, out=tmp_path / "profile-out", epochs=2, batch_tokens=256, negatives=512,
                       scorer_epochs=1, knn_decays=[1.0], text_cache=tmp_path / "cache",
                       model=ModelConfig(dim=16, n_layers=1, max_history=20, text_model=tiny_text_model))


class PruneSecond(optuna.pruners.BasePruner):
    """Prunes every trial but the first at its first report: exercises the epoch hook and the PRUNED path."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number > 0


def test_two_trials_write_a_tuned_profile_and_one_csv_row_each(demo_ds, tmp_path, tiny_text_model):
    base = _base(demo_ds, tmp_path, tiny_text_model)
    out = tmp_path / "tune"
    results = tune(base, out, budget_minutes=5, max_trials=2)
    assert len(results) == 2 and all(r.state == "COMPLETE" for r in results), results
    # Trial 0 is the profile as given.
    assert {k: results[0].params[k] for k in profile_params(base)} == profile_params(base)

    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1"] and {r["state"] for r in rows} == {"COMPLETE"}
    assert all(float(r["value"]) >= 0 for r in rows) and "params_model.dim" in rows[0]

    best = max(results, key=lambda r: r.value)
    cfg = TrainConfig.from_toml(out / "tuned.toml")  # what `xrec train OUT/tuned.toml` reads
    assert cfg.model.dim == best.params["model.dim"] and cfg.lr == best.params["lr"]
    assert cfg.negatives == best.params["negatives"] and cfg.model.text_model == str(tiny_text_model)
    assert cfg.dataset == demo_ds and cfg.out == base.out and cfg.max_minutes == base.max_minutes
    assert "model" in tomllib.loads((out / "tuned.toml").read_text())  # the [model] table
    # Only the best trial keeps its checkpoint.
    assert (out / f"trial-{best.number}" / "checkpoint.pt").is_file()
    assert sum(1 for _ in out.glob("trial-*/checkpoint.pt")) == 1


def test_a_pruned_trial_stops_after_its_first_epoch(demo_ds, tmp_path, tiny_text_model):
    base = _base(demo_ds, tmp_path, tiny_text_model).model_copy(update={"scorer": False, "epochs": 3})
    out = tmp_path / "tune"
    results = tune(base, out, budget_minutes=5, max_trials=2, pruner=PruneSecond())
    assert [r.state for r in results] == ["COMPLETE", "PRUNED"]
    assert results[1].epochs == 1 and results[1].value is None
    assert not (out / "trial-1" / "checkpoint.pt").exists() and (out / "trial-0" / "checkpoint.pt").is_file()
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["COMPLETE", "PRUNED"]


def test_the_epoch_hook_is_optional_and_sees_every_epoch(demo_ds, tmp_path, tiny_text_model):
    seen = []
    cfg = _base(demo_ds, tmp_path, tiny_text_model).model_copy(update={"scorer": False, "patience": 5})
    train(cfg, on_epoch=lambda e, ndcg: seen.append((e, ndcg)))
    assert [e for e, _ in seen] == [1, 2] and all(0 <= v <= 1 for _, v in seen)
