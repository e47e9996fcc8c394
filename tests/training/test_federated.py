"""`xrec train --federated`: what leaves a platform, the aggregation, DP, and a real two-round Flower run."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from rich.console import Console

from training import dp
from training.evaluate import make_queries, metrics_from_ranks, ranks
from training.federated import (
    DP_WEIGHT_KEY,
    LOCAL_ROWS,
    WEIGHT_KEY,
    aggregate,
    client_windows,
    federated_two_tower,
    load_client,
    make_client_app,
    make_strategy,
    shared_arrays,
    write_clients,
)
from training.finetune import TextTower
from training.model import ModelConfig, TwoTower
from training.sequences import load_dataset
from training.text_vectors import text_dim
from training.train import (
    FederatedConfig,
    TrainConfig,
    TrainState,
    holdout_last_events,
    sampling_log_q,
    train,
)
from training.windows import batches, make_windows

QUIET = Console(quiet=True)


@pytest.fixture
def flower_task():
    """The task identity Flower stamps on every message it creates; `run_simulation` sets it for its process,
    and so does this for tests that build messages themselves (restored afterwards)."""
    from flwr.supercore.task_identity import TaskIdentity

    before = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = before


# --- differential privacy -----------------------------------------------------------------------------------


def test_epsilon_is_the_renyi_bound_computed_by_hand():
    # z = 1, T = 1, δ = 1e-5: a = T/(2z²) = 0.5, b = ln(1e5) = 11.512925; ε = a + 2√(ab) = 0.5 + 2·2.399263
    assert dp.epsilon(1.0, 1, 1e-5) == pytest.approx(5.298526, abs=1e-5)
    # z = 2, T = 10: a = 1.25; ε = 1.25 + 2·√(1.25 · 11.512925) = 1.25 + 2·3.793568
    assert dp.epsilon(2.0, 10, 1e-5) == pytest.approx(8.837136, abs=1e-5)
    # the closed form is the minimum over Rényi orders α of T·α/(2z²) + log(1/δ)/(α − 1)
    alphas = np.linspace(1.0005, 200, 400_000)
    brute = np.min(dp.rdp_gaussian(2.0, 10, alphas) + math.log(1e5) / (alphas - 1))
    assert dp.epsilon(2.0, 10, 1e-5) == pytest.approx(brute, abs=1e-4)
    assert dp.epsilon(2.0, 20, 1e-5) > dp.epsilon(2.0, 10, 1e-5) > dp.epsilon(4.0, 10, 1e-5)
    assert dp.epsilon(0.0, 3, 1e-5) == math.inf and dp.epsilon(1.0, 0, 1e-5) == 0.0


def test_clipping_bounds_the_update_norm_and_keeps_its_direction():
    rng = np.random.default_rng(0)
    old = [rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=7).astype(np.float32)]
    new = [o + rng.normal(scale=3.0, size=o.shape).astype(np.float32) for o in old]
    clipped, before = dp.clip_update(new, old, clip=0.5)
    assert before == pytest.approx(dp.update_norm(new, old)) and before > 5
    assert dp.update_norm(clipped, old) == pytest.approx(0.5, rel=1e-5)
    d_new = np.concatenate([(n - o).ravel() for n, o in zip(new, old, strict=True)])
    d_clip = np.concatenate([(c - o).ravel() for c, o in zip(clipped, old, strict=True)])
    assert d_new @ d_clip / (np.linalg.norm(d_new) * np.linalg.norm(d_clip)) == pytest.approx(1.0, abs=1e-5)
    small = [o + 1e-3 for o in old]  # already within the bound: unchanged
    assert all(np.allclose(s, c) for s, c in zip(small, dp.clip_update(small, old, 0.5)[0], strict=True))


def test_noise_has_the_calibrated_spread():
    std = dp.noise_std(noise_multiplier=1.5, clip=2.0, n_clients=2)
    assert std == 1.5
    noisy = dp.add_noise([np.zeros(200_000, dtype=np.float32)], std, np.random.default_rng(1))[0]
    assert noisy.dtype == np.float32 and noisy.std() == pytest.approx(1.5, rel=0.01)


# --- the server's aggregation -------------------------------------------------------------------------------


def _reply(arrays: dict[str, np.ndarray], examples: int) -> Message:
    content = RecordDict({"arrays": ArrayRecord(array_dict={k: Array(v) for k, v in arrays.items()}),
                          "metrics": MetricRecord({WEIGHT_KEY: examples, DP_WEIGHT_KEY: 1})})
    return Message(content, dst_node_id=0, message_type=MessageType.TRAIN)


def _current(**arrays: list[float]) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(np.array(v, dtype=np.float32)) for k, v in arrays.items()})


def test_fedavg_weights_each_platform_by_its_training_targets(flower_task):
    fed = FederatedConfig()
    replies = [_reply({"w": np.array([1.0, 2.0], np.float32), "b": np.array([0.0], np.float32)}, 1),
               _reply({"w": np.array([3.0, 6.0], np.float32), "b": np.array([4.0], np.float32)}, 3)]
    out, norms = aggregate(make_strategy(fed, 2), 1, replies, _current(w=[0, 0], b=[0]), fed,
                           np.random.default_rng(0))
    # (1·[1, 2] + 3·[3, 6]) / 4 and (1·0 + 3·4) / 4
    assert np.allclose(out["w"].numpy(), [2.5, 5.0]) and np.allclose(out["b"].numpy(), [3.0])
    assert norms == pytest.approx([math.sqrt(5), math.sqrt(9 + 36 + 16)])


def test_dp_clips_each_update_then_averages_with_equal_weights_and_adds_the_calibrated_noise(flower_task):
    fed = FederatedConfig(dp_clip=1.0, dp_noise_multiplier=0.5)
    strategy = make_strategy(fed, 2)
    assert strategy.weighted_by_key == DP_WEIGHT_KEY
    replies = [_reply({"w": np.array([3.0, 4.0], np.float32)}, 1),  # norm 5 → [0.6, 0.8]
               _reply({"w": np.array([0.0, 0.5], np.float32)}, 99)]  # norm 0.5: kept; its 99 targets don't count
    out, norms = aggregate(strategy, 1, replies, _current(w=[0, 0]), fed, np.random.default_rng(7))
    noise = np.random.default_rng(7).normal(0.0, 0.5 * 1.0 / 2, size=2)
    assert np.allclose(out["w"].numpy(), np.array([0.3, 0.65]) + noise, atol=1e-6)
    assert norms == pytest.approx([5.0, 0.5])


# --- what each platform's client sees and sends ------------------------------------------------------------


def _setup(demo_ds: Path, tmp_path: Path, tiny_text_model: Path, **fed: object):
    cfg = TrainConfig(dataset=demo_ds, out=tmp_path / "run", batch_tokens=128, text_cache=tmp_path / "cache",
                      model=ModelConfig(dim=16, n_layers=1, text_model=tiny_text_model),
                      federated=FederatedConfig(**fed))
    ds = load_dataset(demo_ds)
    model_cfg = replace(cfg.model, n_items=ds.n_items, n_platforms=len(ds.platforms),
                        text_dim=text_dim(cfg.model.text_model))
    torch.manual_seed(cfg.seed)
    text = TextTower(ds, model_cfg, cfg.text_cache, QUIET)
    state = TrainState(TwoTower(model_cfg), text, ds, cfg, sampling_log_q(ds, 1, cfg.batch_tokens))
    is_target = np.ones(len(ds.timelines.items), dtype=bool)
    held = holdout_last_events(ds.timelines, 20, cfg.seed)
    is_target[held] = False
    windows = make_windows(ds.timelines, model_cfg.max_history, is_target)
    folder = tmp_path / "clients"
    folder.mkdir()
    spec, clients = write_clients(state, windows, make_queries(ds, "valid"), folder)
    return state, spec, clients, held


@pytest.mark.parametrize("cross", [False, True])
def test_a_client_trains_on_its_platforms_targets_and_sees_others_only_when_shared(demo_ds, tmp_path,
                                                                                   tiny_text_model, cross):
    state, _, clients, held = _setup(demo_ds, tmp_path, tiny_text_model, cross_platform_history=cross)
    tl = state.ds.timelines
    held_keys = set(zip(tl.items[held].tolist(), tl.ts[held].tolist(), strict=True))
    foreign_history = 0
    for data in clients:
        p = data.platform
        w = client_windows(data, state.model.cfg.max_history)
        seen = 0
        for b in batches(data.ds.timelines, w, 128, np.random.default_rng(0)):
            assert (b.target_platform[b.target_mask] == p).all()  # targets: this platform's events only
            hist = b.hist_platform[b.hist_mask] - 1
            foreign_history += int((hist != p).sum())
            if not cross:
                assert (hist == p).all()  # without agreed sharing: not one event of another platform
            seen += int(b.target_mask.sum())
        assert seen > 0
        assert (data.ds.timelines.platforms[w.first_events] == p).all()
        if not cross:
            assert (data.ds.timelines.platforms == p).all()
            assert all((q.platforms == p).all() for q in data.valid)
        # a held-out scorer event is never a two-tower target on any platform
        vt = data.ds.timelines
        targets = {(int(vt.items[i]), int(vt.ts[i])) for i in np.flatnonzero(data.is_target)}
        assert not targets & held_keys
        assert all(q.platform == p for q in data.valid)
    # the demo has linked people: sharing their history shows up, and only then
    assert (foreign_history > 0) == cross


def _context(p: int) -> Context:
    return Context(run_id=1, node_id=p + 1, node_config={"partition-id": p, "num-partitions": 3}, state=RecordDict(),
                   run_config={})


def _train_message(state: TrainState, steps: int = 3, mu: float = 0.0) -> Message:
    arrays = ArrayRecord(array_dict={k: Array(v) for k, v in shared_arrays(state.model).items()})
    conf = ConfigRecord({"local-steps": steps, "seed": 1, "progress-start": 0.0, "progress-end": 0.5,
                         "proximal-mu": mu})
    return Message(RecordDict({"arrays": arrays, "config": conf}), dst_node_id=2, message_type=MessageType.TRAIN)


def test_a_client_sends_only_shared_parameters_and_keeps_its_own_rows(demo_ds, tmp_path, tiny_text_model,
                                                                    flower_task):
    state, spec, clients, _ = _setup(demo_ds, tmp_path, tiny_text_model)
    app = make_client_app(spec)  # Flower's ClientApp, called in this process as a SuperNode would call it
    ip = state.ds.item_platform
    b = 1  # platform B; A = 0
    ctx = _context(b)
    reply = app(_train_message(state), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    sent = reply.content["arrays"]
    shared = shared_arrays(state.model)
    assert set(sent.keys()) == set(shared) and not set(sent.keys()) & set(LOCAL_ROWS)
    # the same sizes (Flower sends a 0-d array as shape (1,)): no platform's ID rows or query head travel
    assert {k: sent[k].numpy().size for k in shared} == {k: v.size for k, v in shared.items()}
    assert any(not np.array_equal(sent[k].numpy(), shared[k]) for k in shared)  # it did train
    assert reply.content["metrics"][WEIGHT_KEY] > 0
    # What B keeps in its Flower context: B's rows only — none of A's (or C's) items, B's query head alone.
    kept = ctx.state["local"]
    assert tuple(kept["items.ids.weight"].shape) == ((ip == b).sum(), state.model.cfg.dim)
    assert tuple(kept["users.target_w"].shape) == (1, state.model.cfg.dim, state.model.cfg.dim)
    init = state.model.state_dict()
    assert not np.allclose(kept["items.ids.weight"].numpy(), init["items.ids.weight"][torch.from_numpy(ip == b)])
    # B holds no ID rows of A's items (zeros: A's items are their text alone to B) and its training leaves
    # A's rows of every local parameter as they started, even in B's own copy.
    model = load_client(spec, b).state.model
    a_rows = torch.from_numpy(np.flatnonzero(ip == 0))
    assert not model.items.ids.weight[a_rows].any()
    assert torch.equal(model.users.target_w[0], init["users.target_w"][0])
    assert torch.equal(model.items.platform.weight[0], init["items.platform.weight"][0])
    # The next round starts from the server's shared weights and B's own kept rows.
    reply2 = app(_train_message(state, steps=1), ctx)
    assert not reply2.has_error()
    assert not np.array_equal(ctx.state["local"]["items.ids.weight"].numpy(), kept["items.ids.weight"].numpy())


def test_fedprox_keeps_a_platform_closer_to_the_global_weights(demo_ds, tmp_path, tiny_text_model, flower_task):
    state, spec, _, _ = _setup(demo_ds, tmp_path, tiny_text_model)
    app = make_client_app(spec)
    start = shared_arrays(state.model)
    names = list(start)

    def moved(mu: float) -> float:
        reply = app(_train_message(state, steps=6, mu=mu), _context(0))
        assert not reply.has_error()
        return dp.update_norm([reply.content["arrays"][k].numpy().reshape(start[k].shape) for k in names],
                              [start[k] for k in names])

    free, again, held = moved(0.0), moved(0.0), moved(50.0)
    assert free == pytest.approx(again)  # same seed, same start: the same local training
    assert held < 0.8 * free


# --- end to end: Flower's simulation, then the rest of `xrec train`, then export ---------------------------


def test_a_two_round_federated_run_gives_a_checkpoint_that_loads_ranks_and_exports(demo_ds, tmp_path,
                                                                                   tiny_text_model):
    from export.verify import verify_bundle
    from export.write_bundle import export_bundle
    from training.checkpoint import load_checkpoint
    from training.pipeline import checkpoint_ranker

    cfg = TrainConfig(dataset=demo_ds, out=tmp_path / "fed", batch_tokens=256, scorer_epochs=1,
                      text_cache=tmp_path / "cache", model=ModelConfig(dim=16, n_layers=1, text_model=tiny_text_model),
                      federated=FederatedConfig(rounds=2, local_steps=4))
    ckpt = train(cfg, console=QUIET, two_tower=federated_two_tower)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    fed = saved["log"]["two_tower"]["federated"]
    rounds = saved["log"]["two_tower"]["epochs"]
    assert fed["rounds"] == 2 and [r["round"] for r in rounds] == [1, 2] and fed["epsilon"] is None
    n = len(saved["platforms"])
    shared_bytes = 4 * fed["shared_parameters"]
    # per round: the shared weights down to each platform twice (train, evaluate) and up once, 4 bytes a weight
    # plus each array's header (up to ~20% on this tiny model, under 1% at 64-d)
    assert 3 * n * shared_bytes <= fed["bytes_per_round"] <= 3 * n * shared_bytes * 1.25
    assert all(set(r["platforms"]) == set(saved["platforms"]) for r in rounds)
    assert 0 <= fed["assembled_valid_ndcg@10"] <= 1
    assert "scorer" in saved["log"] and "valid_comparison" in saved["log"]

    loaded = load_checkpoint(ckpt)
    ds = load_dataset(demo_ds)
    text = TextTower(ds, loaded.cfg, cfg.text_cache, QUIET).all_vectors()
    ranker = checkpoint_ranker(loaded.model, loaded.scorer, loaded.ckpt, ds, text)
    valid = make_queries(ds, "valid")
    r = ranks(ds, valid, ranker.final)
    assert len(r) == len(valid) and (r >= 0).all()
    assert metrics_from_ranks(r)["ndcg@10"] > 0

    bundle = export_bundle(ckpt, tmp_path / "bundles", version="fed", salt="s", measure_variants=False,
                           log=lambda *_: None)
    assert verify_bundle(bundle) == []


def test_the_federated_table_round_trips_through_a_tuned_profile(tmp_path):
    from training.tune import profile_toml

    cfg = TrainConfig(dataset=tmp_path, federated=FederatedConfig(rounds=3, cross_platform_history=True, dp_clip=2.0,
                                                                  dp_noise_multiplier=0.8))
    path = tmp_path / "p.toml"
    path.write_text(profile_toml(cfg, ["test"], set()))
    assert TrainConfig.from_toml(path) == cfg
    with pytest.raises(ValueError, match="needs dp_clip"):
        FederatedConfig(dp_noise_multiplier=1.0)


def test_federated_options_need_the_federated_flag(tmp_path):
    from typer.testing import CliRunner

    from xrec.cli import app

    result = CliRunner().invoke(app, ["train", "configs/train-default.toml", "--rounds", "2"])
    assert result.exit_code == 2 and "--federated" in result.output
