"""Training on tiny data: leakage rules, loss going down, each fine-tuning mode running a step."""


import numpy as np
import pytest
import torch

from contract.features import time_buckets
from training.evaluate import make_queries
from training.model import ModelConfig
from training.sequences import load_dataset
from training.train import SURE, TrainConfig, holdout_last_events, ship_scorer, step_tokens, target_only, train
from training.windows import batches, make_windows


def test_windows_make_every_event_but_the_first_a_target_once_with_only_earlier_history(demo_ds):
    ds = load_dataset(demo_ds)
    tl = ds.timelines
    w = make_windows(tl, max_history=4)
    seen_targets = []
    for b in batches(tl, w, 64, np.random.default_rng(0)):
        for r in range(b.hist_rows.shape[0]):
            for t in range(b.hist_rows.shape[1]):
                if b.target_mask[r, t]:
                    seen_targets.append(int(b.target_rows[r, t]))
                    assert b.hist_mask[r, t]  # a target always has the slot before it as history
    assert len(seen_targets) == len(tl.items) - len(tl)
    # Windows never cross persons and history precedes its target in time.
    person = np.repeat(np.arange(len(tl)), np.diff(tl.offsets))
    for s, n in zip(w.start, w.length, strict=True):
        assert person[s] == person[s + n - 1]
        assert np.all(np.diff(tl.ts[s:s + n]) >= 0)


def test_no_eval_target_leaks_into_its_history_or_the_training_events(demo_ds):
    ds = load_dataset(demo_ds)
    tl = ds.timelines
    for split in ds.targets:
        for q in make_queries(ds, split):
            assert np.all(q.ts < q.now)
        t = ds.targets[split]
        events = set(zip(tl.items.tolist(), tl.ts.tolist(), np.repeat(np.arange(len(tl)), np.diff(tl.offsets)).tolist(),
                         strict=True))
        assert not any((int(i), int(ts), int(p)) in events for i, ts, p in zip(t.item, t.ts, t.person, strict=True))


def test_held_out_scorer_events_are_never_two_tower_targets(demo_ds):
    ds = load_dataset(demo_ds)
    tl = ds.timelines
    held = holdout_last_events(tl)
    assert len(held) > 0
    is_target = np.ones(len(tl.items), dtype=bool)
    is_target[held] = False
    w = make_windows(tl, 8, is_target)
    for b in batches(tl, w, 128, np.random.default_rng(0)):
        # a held-out event can be an input but is never predicted
        assert not b.target_mask[b.hist_mask.logical_not()].any()
    targets = np.zeros(len(tl.items), dtype=bool)
    for s, n in zip(w.start, w.length, strict=True):
        targets[s + 1:s + n] |= is_target[s + 1:s + n]
    assert not targets[held].any()


def test_transfer_windows_predict_each_platform_from_the_other_platforms_only(demo_ds):
    ds = load_dataset(demo_ds)
    tl = ds.timelines
    is_target = np.ones(len(tl.items), dtype=bool)
    is_target[holdout_last_events(tl)] = False
    w = make_windows(tl, 4, is_target, transfer=True)
    assert len(w.transfer_inputs) > 0 and len(make_windows(tl, 4, is_target).transfer_inputs) == 0
    person = np.repeat(np.arange(len(tl)), np.diff(tl.offsets))
    predicted = []
    for inp, tgt, buck, p in zip(w.transfer_inputs, w.transfer_targets, w.transfer_buckets, w.transfer_platform,
                                 strict=True):
        assert 0 < len(inp) <= 4 and tgt[-1] >= 0  # a window ends at its last target
        assert (tl.platforms[inp] != p).all() and (person[inp] == person[inp[0]]).all()
        hit = tgt >= 0
        assert (tl.platforms[tgt[hit]] == p).all() and is_target[tgt[hit]].all()
        assert (tgt[hit] > inp[hit]).all()  # the slot comes before the event it predicts ...
        # ... and it is the newest other-platform event before it: nothing of theirs elsewhere in between
        other = np.flatnonzero((person == person[inp[0]]) & (tl.platforms != p))
        # time gaps as the service computes them for this history: between the other-platform events themselves
        assert np.array_equal(buck, time_buckets(tl.ts[other])[np.searchsorted(other, inp)])
        for slot, t in zip(inp[hit], tgt[hit], strict=True):
            assert not ((other > slot) & (other < t)).any()
        predicted += tgt[hit].tolist()
    assert len(predicted) == len(set(predicted))
    # Brute force: after each other-platform event, the first target event on P, unless another platform's event
    # comes between (then that later event is the slot that predicts it).
    expected = []
    for q in range(len(tl)):
        s = tl.span(q)
        plats, idx = tl.platforms[s], np.arange(s.start, s.stop)
        for p in np.unique(plats) if len(np.unique(plats)) > 1 else ():
            for o in np.flatnonzero(plats != p):
                for j in range(o + 1, len(idx)):
                    if plats[j] != p:
                        break
                    if is_target[idx[j]]:
                        expected.append(int(idx[j]))
                        break
    assert sorted(predicted) == sorted(expected)
    # The batches carry them beside the consecutive windows' targets; every target slot has history.
    seen = 0
    for b in batches(tl, w, 64, np.random.default_rng(0)):
        assert b.hist_mask[b.target_mask].all()
        seen += int(b.target_mask.sum())
    consecutive = sum(int(is_target[s + 1:s + n].sum()) for s, n in zip(w.start, w.length, strict=True))
    assert seen == consecutive + len(expected)


def test_target_only_splits_history_per_platform(demo_ds):
    tl = load_dataset(demo_ds).timelines
    t, order = target_only(tl)
    assert len(t.items) == len(tl.items) and len(t) >= len(tl)
    assert (t.items == tl.items[order]).all() and (t.ts == tl.ts[order]).all()
    for p in range(len(t)):
        assert len(np.unique(t.platforms[t.span(p)])) == 1


def test_loss_falls_and_a_checkpoint_is_written(demo_ds, tmp_path, tiny_text_model):
    cfg = TrainConfig(dataset=demo_ds, out=tmp_path / "run", epochs=6, batch_tokens=256, lr=5e-3, patience=10,
                      scorer_epochs=2,
                      text_cache=tmp_path / "cache",
                      model=ModelConfig(dim=16, n_layers=1, text_model=tiny_text_model))
    ckpt = train(cfg)
    log = torch.load(ckpt, weights_only=False)["log"]
    losses = [e["loss"] for e in log["two_tower"]["epochs"]]
    assert losses[-1] < losses[0] - 0.1, losses  # the demo is noisy: log(40 items) ≈ 3.7 is the start
    assert "scorer" in log and log["scorer"]["train_examples"] > 0


@pytest.mark.parametrize("mode", ["top-k", "lora"])
def test_each_fine_tuning_mode_runs_a_step(demo_ds, tmp_path, mode, tiny_text_model):
    cfg = TrainConfig(dataset=demo_ds, out=tmp_path / mode, epochs=1, batch_tokens=64, negatives=16, max_steps=1,
                      scorer=False,
                      text_cache=tmp_path / "cache",
                      model=ModelConfig(dim=16, n_layers=1, mode=mode, unfreeze_layers=1, lora_r=2,
                                        text_model=tiny_text_model))
    ckpt = train(cfg)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["model_args"]["mode"] == mode and saved["text"], "fine-tuned text weights travel with the model"



def test_the_logq_ablation_switch_changes_the_sampled_softmax_and_nothing_else(demo_ds, tmp_path, tiny_text_model):
    def first_step_loss(name: str, logq: bool) -> float:
        cfg = TrainConfig(dataset=demo_ds, out=tmp_path / name, epochs=1, batch_tokens=64, negatives=16, max_steps=1,
                          scorer=False, logq_correction=logq, text_cache=tmp_path / "cache",
                          model=ModelConfig(dim=16, n_layers=1, text_model=tiny_text_model))
        return torch.load(train(cfg), weights_only=False)["log"]["two_tower"]["epochs"][0]["loss"]

    with_logq = first_step_loss("a", True)
    assert first_step_loss("b", True) == pytest.approx(with_logq, rel=1e-6)  # the same seed: the same step
    assert first_step_loss("c", False) != pytest.approx(with_logq, rel=1e-3)

def test_small_data_gets_smaller_batches_so_an_epoch_has_enough_steps(demo_ds, tmp_path, tiny_text_model):
    cfg = TrainConfig(dataset=demo_ds, batch_tokens=4096, min_steps_per_epoch=90)
    assert step_tokens(cfg, 381_169) == 4096  # Food-Kitchen: 95 steps at 4,096 already, left alone
    assert step_tokens(cfg, 75_198) == 835  # its sparse variant: 20 steps at 4,096, 90 at 835
    assert step_tokens(cfg, 1_000) == 64  # never below 64 slots
    assert step_tokens(cfg.model_copy(update={"min_steps_per_epoch": 0}), 75_198) == 4096  # off: as profiled
    # The run trains with (and records) the lowered size, and takes at least the asked-for steps an epoch.
    ds = load_dataset(demo_ds)
    cfg = TrainConfig(dataset=demo_ds, out=tmp_path / "small", epochs=1, batch_tokens=4096, min_steps_per_epoch=8,
                      max_steps=2, negatives=16, scorer=False, text_cache=tmp_path / "cache",
                      model=ModelConfig(dim=16, n_layers=1, text_model=tiny_text_model))
    saved = torch.load(train(cfg), weights_only=False)
    used = saved["train_config"]["batch_tokens"]
    assert used == step_tokens(cfg, len(ds.timelines.items) - len(ds.timelines)) < 4096
    w = make_windows(ds.timelines, saved["model_args"]["max_history"])
    assert sum(1 for _ in batches(ds.timelines, w, used, np.random.default_rng(0))) >= 8


def test_a_baseline_that_wins_on_valid_is_what_ships(demo_ds, tmp_path, tiny_text_model):
    """One step of two-tower training leaves retrieval near random: the neighbour table wins on valid, the
    scorer ships it (nothing trained beats it), and the final ranking is that baseline's on valid."""
    cfg = TrainConfig(dataset=demo_ds, out=tmp_path / "weak", epochs=1, max_steps=1, batch_tokens=64,
                      scorer_epochs=0, text_cache=tmp_path / "cache", knn_candidates=20, candidates=20, ease_lambda=500,
                      # the copies rescale the blends; without them the neighbour table alone wins on this fixture
                      scorer_new_to_platform_copies=False,
                      model=ModelConfig(dim=16, n_layers=1, text_model=tiny_text_model))
    log = torch.load(train(cfg), weights_only=False)["log"]
    starts = log["scorer"]["starts"]
    assert log["scorer"]["start"] == "neighbours" and starts["neighbours"] > starts["retrieval"], starts
    cmp = log["valid_comparison"]
    # On valid, the shipped ranking is the chosen neighbour table's (choices also see held-out events).
    chosen = log["neighbours"]
    assert chosen["chosen"] == "ease" or cmp["final"] >= cmp["baselines"][f"item-knn (decay {chosen['decay']})"]
    assert set(cmp["baselines"]) >= {"popularity", "als", "ease"}
    assert log["neighbours"]["chosen"] in ("co-occurrence", "ease")


def test_own_blends_replace_the_trained_scorer_only_when_surely_ahead_but_the_baseline_whenever_ahead():
    rng = np.random.default_rng(0)
    trained = rng.random(1000)
    slightly = trained + rng.normal(0.002, 0.2, 1000)  # ahead by noise only
    clearly = trained + 0.05
    assert ship_scorer(trained, {"retrieval": trained - 0.01, "blend 3:1": slightly}) == "trained"
    assert ship_scorer(trained, {"retrieval": trained - 0.01, "blend 3:1": clearly}) == "blend 3:1"
    # the neighbour table is a baseline: ahead on valid at all, it ships
    nb = trained.copy()
    nb[0] += 0.01
    assert ship_scorer(trained, {"retrieval": trained - 0.01, "neighbours": nb}) == "neighbours"
    # so is ALS alone (a scorer with the ALS feature): the better of the two baselines ships
    als = nb.copy()
    als[1] += 0.01
    assert ship_scorer(trained, {"neighbours": nb, "als": als}) == "als"
    assert ship_scorer(trained, {"neighbours": trained - 0.01, "als": als - 0.02}) == "trained"
    # no trained state (it never beat retrieval): the best fixed ranking
    assert ship_scorer(None, {"retrieval": trained, "neighbours": trained - 0.01}) == "retrieval"


def test_als_in_the_scorer_is_chosen_on_valid_and_the_checkpoint_matches_the_choice(demo_ds, tmp_path,
                                                                                    tiny_text_model):
    """`als_features = "auto"`: the scorer trains without and with ALS; with ALS ships only when it leads in ≥ 95%
    of valid's bootstrap resamples, and the checkpoint's scorer width, ALS factors and candidates say which.
    `false` never fits ALS."""
    from contract.features import scorer_features
    from training.checkpoint import load_checkpoint

    base = dict(dataset=demo_ds, epochs=1, batch_tokens=256, scorer_epochs=2, text_cache=tmp_path / "cache",
                candidates=10, knn_candidates=10, als_candidates=10,
                model=ModelConfig(dim=16, n_layers=1, text_model=tiny_text_model))
    ckpt = train(TrainConfig(out=tmp_path / "auto", **base))
    saved = torch.load(ckpt, weights_only=False)
    choice = saved["log"]["scorer"]["als_choice"]
    with_als = choice["with_ahead_share"] >= SURE
    assert not with_als or choice["with"] > choice["without"]  # a sure lead is a lead
    assert saved["log"]["scorer"]["als"] is with_als
    assert (saved["als"] is not None) is with_als and saved["als_candidates"] == (10 if with_als else 0)
    width = len(scorer_features(False, with_als))
    assert saved["model_args"]["scorer_extras"] == width == load_checkpoint(ckpt).scorer.linear.in_features
    assert saved["log"]["scorer"]["best_valid_ndcg@10"] == choice["with" if with_als else "without"]
    if with_als:  # with ≥ 10 ALS candidates, ALS alone is one of the fixed rankings (a baseline)
        assert "als" in saved["log"]["scorer"]["starts"]

    off = torch.load(train(TrainConfig(out=tmp_path / "off", als_features=False, **base)), weights_only=False)
    assert off["als"] is None and "als_choice" not in off["log"]["scorer"] and not off["log"]["scorer"]["als"]
    assert off["model_args"]["scorer_extras"] == len(scorer_features(False))


def test_people_new_to_a_platform_get_a_baseline_where_it_beats_the_trained_scorer_for_them(demo_ds, tmp_path,
                                                                                            tiny_text_model):
    """A scorer that ranks item-KNN upside down loses to the neighbour table on new-to-platform valid queries:
    routing gives those people a fixed ranking, and leaves people with target-platform history to the scorer."""
    from rich.console import Console

    from training.evaluate import hide_target_history
    from training.model import RoutedScorer, Scorer, load_scorer
    from training.report import model_rankers
    from training.train import route_new_to_platform

    ckpt = train(TrainConfig(dataset=demo_ds, out=tmp_path / "run", epochs=1, batch_tokens=256, scorer_epochs=1,
                             text_cache=tmp_path / "cache", model=ModelConfig(dim=16, n_layers=1,
                                                                               text_model=tiny_text_model)))
    ds, ranker = model_rankers(ckpt)
    upside_down = Scorer(ranker.model.cfg)
    upside_down.start_from({"log_knn": -10.0})
    ranker.scorer = upside_down
    assert route_new_to_platform(ranker, [], Console(quiet=True))["chosen"] == "trained"  # no one to choose on
    assert ranker.scorer is upside_down
    valid = make_queries(ds, "valid")
    new_q = hide_target_history(valid)
    assert new_q and all((q.platforms != q.platform).all() and len(q.items) for q in new_q)
    log = route_new_to_platform(ranker, new_q, Console(quiet=True))
    assert log["chosen"] != "trained" and log["valid_ndcg@10"][log["chosen"]] > log["valid_ndcg@10"]["trained"], log
    routed = ranker.scorer
    assert isinstance(routed, RoutedScorer) and routed.known is upside_down
    known = [q for q in valid if (q.platforms == q.platform).any()]
    assert known
    got = ranker.final(known)
    ranker.scorer = upside_down
    assert all(np.array_equal(a, b) for a, b in zip(got, ranker.final(known), strict=True))  # the scorer, untouched
    ranker.scorer = routed.new
    fixed = ranker.final(new_q)
    ranker.scorer = load_scorer(ranker.model.cfg, routed.state_dict())  # the checkpoint's round trip
    assert isinstance(ranker.scorer, RoutedScorer)
    assert all(np.allclose(a, b) for a, b in zip(ranker.final(new_q), fixed, strict=True))
