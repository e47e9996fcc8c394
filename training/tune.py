"""`xrec tune`: per-data-set hyper-parameter search on valid NDCG@10 within a time budget.

Optuna, TPE sampler (seeded with the profile's seed) and a median pruner. Trial 0 is the profile as it is
(so the tuned profile is never below it on valid); later trials sample model and loop settings around the
profile's values. Each trial is one `training.train.train` run in `OUT/trial-N`; after every two-tower epoch
its valid NDCG@10 goes to the pruner, which stops a trial that is below the median of earlier trials at the
same epoch. A trial's value is the run's final valid NDCG@10 (`log["valid_comparison"]["final"]`: the scorer's
best, else retrieval's).

Budget: every trial's two-tower `max_minutes` is at most what is left (less the time the rest of a run took last
time: text vectors, scorer, comparison), and no trial starts when less than a finished trial's median time is
left. Writes `OUT/tuned.toml` (a complete profile for `xrec train`), `OUT/trials.csv`, and keeps only the best
trial's `checkpoint.pt` (every trial keeps its `train.log`; finished ones their `train.json`).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from dataclasses import dataclass, fields
from pathlib import Path

import optuna
import torch
from rich.console import Console
from rich.table import Table

from training.model import ModelConfig
from training.train import TrainConfig, train

# Fixed by the data at train time, or by the feature contract: never written to a profile.
DATA_FIXED = {"n_items", "n_platforms", "text_dim", "n_time_buckets", "scorer_extras"}


@dataclass
class TrialResult:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    value: float | None  # the run's final valid NDCG@10 (complete trials only)
    params: dict[str, object]
    minutes: float
    epochs: int  # two-tower epochs reported
    last_epoch_ndcg: float | None  # retrieval's valid NDCG@10 after the last epoch (what the pruner saw)
    error: str = ""


def _choices(base: object, options: list) -> list:
    """The standard options plus the profile's own value, so trial 0 can be the profile as it is."""
    return sorted(set(options) | {base})


def _log_range(base: float, factor: float, fallback: tuple[float, float]) -> tuple[float, float]:
    return (base / factor, base * factor) if base > 0 else fallback


def suggest(trial: optuna.Trial, base: TrainConfig) -> dict[str, object]:
    """Sampled settings around the profile's values; model keys are prefixed `model.`."""
    m = base.model
    wd = _log_range(base.weight_decay, 10.0, (1e-4, 1e-1))
    return {
        "model.dim": trial.suggest_categorical("model.dim", _choices(m.dim, [32, 64, 96])),
        "model.n_layers": trial.suggest_categorical("model.n_layers", _choices(m.n_layers, [1, 2])),
        "model.dropout": trial.suggest_float("model.dropout", 0.0, max(0.4, m.dropout)),
        "model.id_dropout": trial.suggest_float("model.id_dropout", 0.0, max(0.5, m.id_dropout)),
        "model.max_history": trial.suggest_categorical("model.max_history", _choices(m.max_history, [20, 50])),
        "lr": trial.suggest_float("lr", *_log_range(base.lr, 4.0, (5e-4, 8e-3)), log=True),
        "weight_decay": trial.suggest_float("weight_decay", *wd, log=True),
        # 0: a full softmax over the target platform's catalog
        "negatives": trial.suggest_categorical("negatives", _choices(base.negatives, [512, 2048, 4096, 0])),
        "scorer_lr": trial.suggest_float("scorer_lr", *_log_range(base.scorer_lr, 4.0, (2e-3, 5e-2)), log=True),
    }


def profile_params(base: TrainConfig) -> dict[str, object]:
    """The profile's own values of the searched settings (trial 0). A weight decay of 0 is outside a log range:
    then trial 0 samples it."""
    p = {"model.dim": base.model.dim, "model.n_layers": base.model.n_layers, "model.dropout": base.model.dropout,
         "model.id_dropout": base.model.id_dropout, "model.max_history": base.model.max_history, "lr": base.lr,
         "negatives": base.negatives}
    if base.weight_decay > 0:
        p["weight_decay"] = base.weight_decay
    if base.scorer_lr > 0:
        p["scorer_lr"] = base.scorer_lr
    return p


def apply(base: TrainConfig, params: dict[str, object], **loop: object) -> TrainConfig:
    """A validated copy of `base` with `params` (`model.` keys go to the [model] table) and loop overrides."""
    raw = base.model_dump()
    for k, v in params.items():
        if k.startswith("model."):
            raw["model"][k.removeprefix("model.")] = v
        else:
            raw[k] = v
    return TrainConfig.model_validate(raw | loop)


# --- a small TOML writer: the profile's value types only (str, path, bool, int, float, list of those) ---------

def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else "nan" if math.isnan(v) else repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))  # a TOML basic string: JSON's escapes are valid TOML
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML: {v!r}")


def profile_toml(cfg: TrainConfig, header: list[str], tuned: set[str]) -> str:
    """`cfg` as a complete training profile (loop keys, then the [model] table); keys in `tuned` are marked."""
    lines = [f"# {h}" for h in header] + [""]
    raw = cfg.model_dump(mode="python")
    model = raw.pop("model")
    federated = raw.pop("federated")  # a table of its own, like [model]

    def emit(key: str, value: object, tuned_key: str) -> None:
        if value is None:  # TOML has no null: leave the key out (model keys: the default is None)
            if key == "text_cache":
                lines.append("# text_cache: none in the tuned runs (no cache) — TOML cannot say so, set it here")
            return
        lines.append(f"{key} = {_toml_value(value)}" + ("  # tuned" if tuned_key in tuned else ""))

    for f in TrainConfig.model_fields:
        if f not in ("model", "federated"):
            emit(f, raw[f], f)
    lines += ["", "[model]"]
    for f in fields(ModelConfig):
        if f.name not in DATA_FIXED:
            emit(f.name, model[f.name], f"model.{f.name}")
    lines += ["", "[federated]  # read by `xrec train --federated` only"]
    for k, v in federated.items():
        emit(k, v, f"federated.{k}")
    return "\n".join(lines) + "\n"


# --- the search -------------------------------------------------------------------------------------------------

def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def tune(base: TrainConfig, out: Path, budget_minutes: float, max_trials: int | None = None,
         console: Console | None = None, pruner: optuna.pruners.BasePruner | None = None,
         sampler: optuna.samplers.BaseSampler | None = None) -> list[TrialResult]:
    """Run trials until the budget (or `max_trials`) is spent; write `tuned.toml` and `trials.csv` to `out`."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    deadline = started + budget_minutes * 60
    out.mkdir(parents=True, exist_ok=True)
    sampler = sampler or optuna.samplers.TPESampler(seed=base.seed, n_startup_trials=5)
    # Prune from the 2nd epoch on (the 1st is mostly warm-up), once 3 trials have finished.
    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.enqueue_trial(profile_params(base))

    results: list[TrialResult] = []
    overhead = None  # minutes a run spent outside two-tower epochs, last time
    best: TrialResult | None = None
    try:
        while max_trials is None or len(results) < max_trials:
            left = (deadline - time.perf_counter()) / 60
            done = [r.minutes for r in results if r.state == "COMPLETE"]
            expected = statistics.median(done) if done else 0.0
            if left <= 0 or (done and left < expected):
                console.print(f"budget: {max(left, 0):.1f} min left, a trial takes about {expected:.1f}: "
                              "no new trial")
                break
            trial = study.ask()
            params = suggest(trial, base)
            # The two-tower part gets what is left less the rest of a run (before any run: three quarters of it).
            two_tower = left - overhead if overhead is not None else 0.75 * left
            cfg = apply(base, params, out=out / f"trial-{trial.number}",
                        max_minutes=max(0.05, min(base.max_minutes, two_tower)))
            try:
                result = _run_trial(study, trial, cfg, params)
            except KeyboardInterrupt:
                console.print(f"interrupted in trial {trial.number}: writing what finished")
                break
            results.append(result)
            if result.state == "FAIL" and result.number == 0:
                raise RuntimeError(f"trial 0, the profile as given, failed: {result.error} (see "
                                   f"{cfg.out / 'train.log'})")
            if result.state == "COMPLETE":
                log = json.loads((cfg.out / "train.json").read_text())
                overhead = max(0.0, result.minutes - log["two_tower"]["epochs"][-1]["minutes"])
                if best is None or result.value > best.value:
                    if best is not None:
                        (out / f"trial-{best.number}" / "checkpoint.pt").unlink(missing_ok=True)
                    best = result
                else:
                    (cfg.out / "checkpoint.pt").unlink(missing_ok=True)
            what = (f"NDCG@10 {result.value:.4f}" if result.state == "COMPLETE"
                    else f"pruned after epoch {result.epochs} (retrieval {result.last_epoch_ndcg:.4f})"
                    if result.state == "PRUNED"
                    else f"failed: {result.error}")
            best_part = f"best {best.value:.4f} (#{best.number})" if best else "no best yet"
            left = max(0.0, (deadline - time.perf_counter()) / 60)
            console.print(f"trial {result.number}: {what}, {result.minutes:.1f} min; "
                          f"{best_part}; {left:.1f} min left — "
                          + " ".join(f"{k.removeprefix('model.')}={_fmt(v)}" for k, v in params.items()),
                          highlight=False, markup=False, soft_wrap=True)
    finally:
        optuna.logging.set_verbosity(verbosity)

    write_trials_csv(out / "trials.csv", results)
    console.print(trials_table(results, best))
    if best is None:
        errors = "; ".join(f"#{r.number}: {r.error}" for r in results if r.error)
        raise RuntimeError(f"no trial finished within {budget_minutes} min" + (f" ({errors})" if errors else ""))
    tuned = apply(base, best.params)  # the profile's own loop settings (out, max_minutes, …), the best params
    header = [f"Tuned by `xrec tune` on {base.dataset}: trial {best.number} of {len(results)}, "
              f"valid NDCG@10 {best.value:.4f} (trial 0, the profile as given: "
              f"{_fmt(results[0].value) if results[0].state == 'COMPLETE' else results[0].state.lower()}).",
              f"Its checkpoint: {out / f'trial-{best.number}' / 'checkpoint.pt'}. Train with: xrec train "
              f"{out / 'tuned.toml'}"]
    (out / "tuned.toml").write_text(profile_toml(tuned, header, set(best.params)), encoding="utf-8")
    console.print(f"best: trial {best.number}, valid NDCG@10 {best.value:.4f}; profile {out / 'tuned.toml'}, "
                  f"checkpoint {out / f'trial-{best.number}' / 'checkpoint.pt'} "
                  f"({(time.perf_counter() - started) / 60:.1f} min)")
    return results


def _run_trial(study: optuna.Study, trial: optuna.Trial, cfg: TrainConfig, params: dict[str, object]
               ) -> TrialResult:
    cfg.out.mkdir(parents=True, exist_ok=True)
    epochs = 0
    last: float | None = None

    def on_epoch(epoch: int, ndcg: float) -> None:
        nonlocal epochs, last
        epochs, last = epoch, ndcg
        trial.report(ndcg, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"valid NDCG@10 {ndcg:.4f} after epoch {epoch}")

    t0 = time.perf_counter()
    with (cfg.out / "train.log").open("w", encoding="utf-8") as fh:
        run_console = Console(file=fh, width=120, force_terminal=False)
        try:
            ckpt = train(cfg, console=run_console, on_epoch=on_epoch)
        except optuna.TrialPruned as e:
            run_console.print(f"pruned: {e}")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return TrialResult(trial.number, "PRUNED", None, params, (time.perf_counter() - t0) / 60, epochs, last)
        except Exception as e:  # one bad setting (e.g. out of memory) must not end the search
            run_console.print_exception()
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return TrialResult(trial.number, "FAIL", None, params, (time.perf_counter() - t0) / 60, epochs,
                               last, f"{type(e).__name__}: {e}")
        except KeyboardInterrupt:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
    value = float(torch.load(ckpt, weights_only=False)["log"]["valid_comparison"]["final"])
    study.tell(trial, value)
    return TrialResult(trial.number, "COMPLETE", value, params, (time.perf_counter() - t0) / 60, epochs, last)


def write_trials_csv(path: Path, results: list[TrialResult]) -> None:
    names = list(dict.fromkeys(k for r in results for k in r.params))
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["number", "state", "value", "minutes", "epochs", "last_epoch_ndcg",
                    *(f"params_{n}" for n in names), "error"])
        for r in results:
            w.writerow([r.number, r.state, _num(r.value, 6), f"{r.minutes:.2f}", r.epochs, _num(r.last_epoch_ndcg, 6),
                        *(r.params.get(n, "") for n in names), r.error])


def _num(v: float | None, digits: int) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def trials_table(results: list[TrialResult], best: TrialResult | None) -> Table:
    names = list(dict.fromkeys(k for r in results for k in r.params))
    t = Table(title="xrec tune: trials (valid NDCG@10)")
    for col in ("#", "state", "NDCG@10", "min", "epochs", "last epoch"):
        t.add_column(col, justify="right" if col != "state" else "left")
    for n in names:
        t.add_column(n.removeprefix("model."), justify="right")
    for r in results:
        style = "bold green" if best is not None and r.number == best.number else None
        t.add_row(str(r.number), r.state.lower(), _num(r.value, 4), f"{r.minutes:.1f}", str(r.epochs),
                  _num(r.last_epoch_ndcg, 4), *(_fmt(r.params.get(n, "")) for n in names), style=style)
    return t

