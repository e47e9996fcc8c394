"""`xrec train --federated`: the two-tower trained by one Flower client per platform (issue 14; docs/federated.md).

Each platform trains on its own events; they never leave it. Per round, the server (Flower's FedAvg, or FedProx
with `proximal_mu > 0`) sends the *shared* parameters to every platform's client; each trains locally for
`local_steps` (or one pass over its own windows) with the pooled trainer's loss, and sends back only the shared
parameters; the server averages them, weighted by each platform's training targets (equal weights under DP noise,
see training/dp.py), optionally clipping each update and adding Gaussian noise.

shared (averaged)   the item tower's text projection and the user tower's trunk: input projection, history-
                    platform, time-gap and position embeddings, transformer blocks, final norm; the temperature
local (never sent)  per platform p: its items' ID rows, its item-platform embedding row, its target-platform
                    query head (projection, bias) and its empty-history query — `LOCAL_ROWS`, row p or p's items

After the last round the server asks each client once for its local rows (a query message): that is where the
model is assembled into one checkpoint, which the rest of `xrec train` (neighbour table, scorer, valid
comparison) then uses unchanged, so `xrec evaluate` and `xrec export` take it as they take a pooled one.

Runs on Flower's simulation runtime (Ray, one ClientApp per platform, `run_simulation`). A client's state between
rounds (its local rows) lives in its Flower context, as it would on a real SuperNode. The clients read their data
from files the orchestrator writes (what each platform would hold itself: its own timelines, the public catalog).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx
from flwr.simulation import run_simulation
from rich.console import Console

from training import dp
from training.evaluate import Query
from training.model import ModelConfig, TwoTower
from training.sequences import Dataset, Timelines
from training.train import (
    FederatedConfig,
    TrainConfig,
    TrainState,
    _loss,
    evaluate_two_tower,
    restrict_to_target,
    sampling_log_q,
    two_tower_optimisers,
)
from training.windows import Windows, batches, chunk_by_tokens, make_windows

# Parameters whose rows belong to one platform each: they stay on it. Everything else in the model is shared.
LOCAL_ROWS = ("items.ids.weight", "items.platform.weight", "users.target_w", "users.target_b.weight",
              "users.empty.weight")
WEIGHT_KEY = "num-examples"  # FedAvg weights: a platform's training targets
DP_WEIGHT_KEY = "dp-weight"  # 1 for every platform: DP noise is calibrated to an equal-weight average


# --- which parameters travel --------------------------------------------------------------------------------


def local_rows(item_platform: np.ndarray, name: str, platform: int) -> np.ndarray:
    """Rows of local parameter `name` that belong to `platform`: its items' ID rows, else row `platform`."""
    if name == "items.ids.weight":
        return np.flatnonzero(item_platform == platform)
    return np.array([platform])


def shared_arrays(model: TwoTower) -> dict[str, np.ndarray]:
    """The parameters every platform trains together (all but `LOCAL_ROWS`), as float32 arrays."""
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items() if k not in LOCAL_ROWS}


def own_local_arrays(model: TwoTower, item_platform: np.ndarray, platform: int) -> dict[str, np.ndarray]:
    """This platform's rows of each local parameter (never another platform's)."""
    sd = model.state_dict()
    return {k: sd[k][torch.from_numpy(local_rows(item_platform, k, platform))].numpy().copy()
            for k in LOCAL_ROWS if k in sd}


@torch.no_grad()
def load_arrays(model: TwoTower, arrays: dict[str, np.ndarray], item_platform: np.ndarray | None = None,
                platform: int | None = None) -> None:
    """Write shared arrays (whole tensors) or, with `platform`, one platform's local rows into `model`."""
    sd = model.state_dict()
    for k, v in arrays.items():
        t = torch.from_numpy(np.asarray(v))
        if platform is None:
            sd[k].copy_(t.reshape(sd[k].shape))  # Flower sends a 0-d array (the temperature) as shape (1,)
        else:
            sd[k][torch.from_numpy(local_rows(item_platform, k, platform))] = t


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: record[k].numpy() for k in record}


# --- what each platform holds -------------------------------------------------------------------------------


@dataclass
class ClientData:
    """One platform's training data: the catalog (titles are public) and only the events it may see."""

    platform: int
    ds: Dataset  # the whole item table; timelines: this platform's events (and linked people's others if shared)
    is_target: np.ndarray  # bool per event of ds.timelines: a two-tower target (this platform, not held out)
    valid: list[Query]  # valid targets on this platform, with the history it may see


def platform_view(tl: Timelines, is_target: np.ndarray, platform: int, cross_platform_history: bool
                  ) -> tuple[Timelines, np.ndarray]:
    """The timelines one platform's client trains on, and which of their events are targets.

    Without cross-platform history: each person's events on this platform only. With it: the whole fused
    timeline of every person with an event here (linked people bring their other platforms' events as history),
    but only this platform's events are targets."""
    person = np.repeat(np.arange(len(tl)), np.diff(tl.offsets))
    on_p = tl.platforms == platform
    keep = on_p if not cross_platform_history else np.isin(person, np.unique(person[on_p]))
    idx = np.flatnonzero(keep)  # stays person-major and time-ordered
    who = person[idx]
    starts = np.flatnonzero(np.r_[True, who[1:] != who[:-1]]) if len(idx) else np.array([], dtype=np.int64)
    view = Timelines([tl.persons[who[s]] for s in starts], np.r_[starts, len(idx)].astype(np.int64),
                     tl.items[idx], tl.platforms[idx], tl.ts[idx])
    return view, is_target[idx] & on_p[idx]


def client_data(ds: Dataset, is_target: np.ndarray, valid: list[Query], platform: int,
                cross_platform_history: bool) -> ClientData:
    tl, targets = platform_view(ds.timelines, is_target, platform, cross_platform_history)
    mine = [q for q in valid if q.platform == platform]
    if not cross_platform_history:
        mine = restrict_to_target(mine)
    return ClientData(platform, Dataset(ds.platforms, ds.item_ids, ds.item_platform, ds.titles, tl, {}), targets,
                      mine)


def client_windows(data: ClientData, max_history: int) -> Windows:
    """Windows over the platform's view; the empty-history targets are its people's first events, only those
    on this platform that may be targets (a held-out scorer event never trains the two-tower)."""
    w = make_windows(data.ds.timelines, max_history, data.is_target)
    w.first_events = w.first_events[data.is_target[w.first_events]] if len(w.first_events) else w.first_events
    return w


def n_targets(w: Windows) -> int:
    """Two-tower targets in the windows (each event once), plus the empty-history ones: FedAvg's weight."""
    t = np.zeros(len(w.is_target), dtype=bool)
    for s, n in zip(w.start, w.length, strict=True):
        t[s + 1:s + n] = True
    return int((t & w.is_target).sum()) + len(w.first_events)


# --- the client (one per platform) --------------------------------------------------------------------------


class FrozenText:
    """The frozen-mode text tower a client needs: cached MiniLM vectors, nothing trainable."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.frozen = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))

    def vectors(self, needed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(len(self.frozen)) if needed is None else needed
        return self.frozen[rows], rows

    def all_vectors(self) -> np.ndarray:
        return self.frozen.numpy()

    def trainable(self) -> list[torch.nn.Parameter]:
        return []

    def train(self) -> None:
        pass


@dataclass
class ClientSpec:
    """What a ClientApp needs to find its platform's data: small, since Flower ships it with every message."""

    folder: str  # client-<p>.pkl and text.npy
    cfg_json: str  # TrainConfig
    model_args: dict


@dataclass
class Client:
    data: ClientData
    state: TrainState
    windows: Windows
    init: dict[str, torch.Tensor]  # the seeded initial weights: every round starts from them, then loads
    foreign: dict[str, torch.Tensor]  # per local parameter, the rows of other platforms: held at `init`
    n_targets: int  # FedAvg's weight


_CLIENTS: dict[tuple[str, int], Client] = {}  # per process: a simulation actor may serve several platforms


def load_client(spec: ClientSpec, platform: int) -> Client:
    key = (spec.folder, platform)
    if key not in _CLIENTS:
        with open(Path(spec.folder) / f"client-{platform}.pkl", "rb") as f:
            data: ClientData = pickle.load(f)
        cfg = TrainConfig.model_validate_json(spec.cfg_json)
        torch.manual_seed(cfg.seed)  # the orchestrator's initial model: local rows start where pooled ones do
        model = TwoTower(ModelConfig(**spec.model_args))
        text = FrozenText(np.load(Path(spec.folder) / "text.npy"))
        state = TrainState(model, text, data.ds, cfg,  # type: ignore[arg-type]  # duck-typed text tower
                           sampling_log_q(data.ds, max(cfg.negatives, 1), cfg.batch_tokens))
        sd = model.state_dict()
        foreign = {k: torch.from_numpy(np.setdiff1d(np.arange(len(sd[k])), local_rows(data.ds.item_platform, k,
                                                                                        platform)))
                   for k in LOCAL_ROWS if k in sd}
        if model.items.ids is not None:
            # Other platforms' items (in a shared history) are seen by their text alone: their ID rows live on
            # their platform. Zero rows add nothing to the text part (the vector of an ID-dropped item).
            with torch.no_grad():
                model.items.ids.weight[foreign["items.ids.weight"]] = 0.0
        init = {k: v.detach().clone() for k, v in model.state_dict().items()}
        w = client_windows(data, model.cfg.max_history)
        _CLIENTS[key] = Client(data, state, w, init, foreign, n_targets(w))
    return _CLIENTS[key]


def restore(client: Client, shared: dict[str, np.ndarray], context: Context) -> None:
    """The model as this platform holds it this round: seeded start, the server's shared weights, and its own
    local rows from its Flower context (from the previous round; none before the first)."""
    model, p = client.state.model, client.data.platform
    model.load_state_dict(client.init)
    load_arrays(model, shared)
    if "local" in context.state:
        load_arrays(model, from_record(context.state["local"]), client.data.ds.item_platform, p)


def lr_factor(progress: float) -> float:
    """The pooled schedule over the whole run (0..1): linear warm-up over the first 1/30, then cosine to 10%."""
    warm = 1 / 30
    if progress < warm:
        return max(progress, 1e-3) / warm
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, (progress - warm) / (1 - warm))))


@torch.no_grad()
def hold_foreign_rows(client: Client) -> None:
    """Undo what a step did to other platforms' rows in this client's copy (weight decay, or the gradient of a
    shared history's items): a client trains its own platform's rows and no one else's, even locally."""
    sd = client.state.model.state_dict()
    for k, rows in client.foreign.items():
        sd[k][rows] = client.init[k][rows]


def local_train(client: Client, steps: int, progress: tuple[float, float], mu: float, seed: int
                ) -> dict[str, float]:
    """`steps` steps of the pooled trainer's loss on this platform's windows (0: one pass), plus FedProx's
    μ/2·‖w − w_global‖² over the shared parameters. A fresh optimiser each round: its moments are not model
    state, and would drift apart from the averaged weights."""
    state, w = client.state, client.windows
    cfg, model = state.cfg, state.model
    params, opts = two_tower_optimisers(model, cfg)
    named = dict(model.named_parameters())
    anchor = {k: v.detach().clone() for k, v in named.items() if k not in LOCAL_ROWS} if mu > 0 else {}
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    per_pass = len(chunk_by_tokens(w.lengths(), cfg.batch_tokens, np.random.default_rng(0))) if len(w.start) else 0
    steps = steps or per_pass
    if per_pass == 0 or steps == 0:
        return {"loss": 0.0, "steps": 0}
    model.train()
    total, done = 0.0, 0
    while done < steps:
        for batch in batches(state.ds.timelines, w, cfg.batch_tokens, rng):
            f = lr_factor(progress[0] + (progress[1] - progress[0]) * done / steps)
            for o in opts:
                for g in o.param_groups:
                    g["lr"] = cfg.lr * f
            loss = _loss(state, batch, rng, w.first_events)
            if mu > 0:
                loss = loss + mu / 2 * sum(((named[k] - a) ** 2).sum() for k, a in anchor.items())
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            for o in opts:
                o.step()
            hold_foreign_rows(client)
            total, done = total + loss.item(), done + 1
            if done >= steps:
                break
    return {"loss": total / done, "steps": done}


def handle_train(spec: ClientSpec, msg: Message, context: Context) -> Message:
    p = int(context.node_config["partition-id"])
    client = load_client(spec, p)
    restore(client, from_record(msg.content["arrays"]), context)
    conf = msg.content["config"]
    started = time.perf_counter()
    out = local_train(client, int(conf["local-steps"]), (float(conf["progress-start"]), float(conf["progress-end"])),
                      float(conf.get("proximal-mu", 0.0)), int(conf["seed"]))
    model, ip = client.state.model, client.data.ds.item_platform
    context.state["local"] = to_record(own_local_arrays(model, ip, p))  # stays on this platform
    metrics = MetricRecord({WEIGHT_KEY: client.n_targets, DP_WEIGHT_KEY: 1, "platform": p,
                            "loss": out["loss"], "steps": out["steps"], "seconds": time.perf_counter() - started})
    return Message(RecordDict({"arrays": to_record(shared_arrays(model)), "metrics": metrics}), reply_to=msg)


def handle_evaluate(spec: ClientSpec, msg: Message, context: Context) -> Message:
    """Retrieval NDCG@10 on this platform's valid targets, with the history it may see."""
    p = int(context.node_config["partition-id"])
    client = load_client(spec, p)
    restore(client, from_record(msg.content["arrays"]), context)
    m = evaluate_two_tower(client.state, client.data.valid) if client.data.valid else {"ndcg@10": 0.0,
                                                                                        "recall@10": 0.0}
    metrics = MetricRecord({WEIGHT_KEY: len(client.data.valid), DP_WEIGHT_KEY: 1, "platform": p,
                            "valid-ndcg@10": float(m["ndcg@10"]), "valid-recall@10": float(m["recall@10"])})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def handle_assemble(spec: ClientSpec, msg: Message, context: Context) -> Message:
    """Once, after the last round: this platform's local rows, for the one checkpoint the bundle is built from."""
    p = int(context.node_config["partition-id"])
    if "local" in context.state:
        local = context.state["local"]
    else:  # never trained (no round ran): its seeded start
        client = load_client(spec, p)
        local = to_record(own_local_arrays(client.state.model, client.data.ds.item_platform, p))
    return Message(RecordDict({"local": local, "metrics": MetricRecord({"platform": p})}), reply_to=msg)


def make_client_app(spec: ClientSpec) -> ClientApp:
    # The handlers are module functions, so Ray ships them by reference: each actor keeps its `_CLIENTS` cache.
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(spec, msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(spec, msg, context)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return handle_assemble(spec, msg, context)

    return app


# --- the server ---------------------------------------------------------------------------------------------


def make_strategy(fed: FederatedConfig, n_clients: int) -> FedAvg:
    """FedAvg, or FedProx (FedAvg on the server, μ sent to the clients) — every platform in every round.
    Under DP noise the average is equal-weight: the noise is calibrated to one platform moving it by clip/n."""
    kw = dict(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=n_clients, min_evaluate_nodes=n_clients,
              min_available_nodes=n_clients,
              weighted_by_key=DP_WEIGHT_KEY if fed.dp_noise_multiplier > 0 else WEIGHT_KEY)
    return FedProx(proximal_mu=fed.proximal_mu, **kw) if fed.proximal_mu > 0 else FedAvg(**kw)


def aggregate(strategy: FedAvg, server_round: int, replies: list[Message], current: ArrayRecord,
              fed: FederatedConfig, rng: np.random.Generator) -> tuple[ArrayRecord, list[float]]:
    """The new shared weights from the clients' replies: each update clipped (`dp_clip`), the strategy's
    weighted average, Gaussian noise (`dp_noise_multiplier`). Also the updates' norms before clipping."""
    names = list(current.keys())
    old = [current[k].numpy() for k in names]
    norms = []
    for r in replies:
        new = [r.content["arrays"][k].numpy() for k in names]
        if fed.dp_clip > 0:
            new, norm = dp.clip_update(new, old, fed.dp_clip)
            r.content["arrays"] = to_record(dict(zip(names, new, strict=True)))
        else:
            norm = dp.update_norm(new, old)
        norms.append(norm)
    arrays, _ = strategy.aggregate_train(server_round, replies)
    if arrays is None:
        raise RuntimeError(f"round {server_round}: no client update to aggregate")
    if fed.dp_noise_multiplier > 0:
        noisy = dp.add_noise([arrays[k].numpy() for k in names],
                             dp.noise_std(fed.dp_noise_multiplier, fed.dp_clip, len(replies)), rng)
        arrays = to_record(dict(zip(names, noisy, strict=True)))
    return arrays, norms


def _received(replies: list[Message], what: str) -> list[Message]:
    failed = [r for r in replies if r.has_error()]
    if failed:
        raise RuntimeError(f"{what}: {len(failed)} client(s) failed: {failed[0].error.reason}")
    return replies


@dataclass
class ServerLoop:
    """The rounds, run by the ServerApp (a thread of this process in simulation); keeps what it logs."""

    state: TrainState
    console: Console
    on_epoch: Callable[[int, float], None] | None
    started: float
    rounds: list[dict] = field(default_factory=list)
    final: dict[str, np.ndarray] = field(default_factory=dict)
    local: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    def run(self, grid: Grid) -> None:
        cfg, fed = self.state.cfg, self.state.cfg.federated
        n = len(self.state.ds.platforms)
        strategy = make_strategy(fed, n)
        rng = np.random.default_rng(cfg.seed)
        arrays = to_record(shared_arrays(self.state.model))
        names = self.state.ds.platforms
        best, bad = -1.0, 0
        for r in range(1, fed.rounds + 1):
            conf = ConfigRecord({"local-steps": fed.local_steps, "seed": cfg.seed * 1000 + r,
                                 "progress-start": (r - 1) / fed.rounds, "progress-end": r / fed.rounds})
            down = arrays.count_bytes()
            replies = _received(list(grid.send_and_receive(strategy.configure_train(r, arrays, conf, grid))),
                                f"round {r} training")
            up = [rep.content["arrays"].count_bytes() for rep in replies]
            train = [dict(rep.content["metrics"]) for rep in replies]
            arrays, norms = aggregate(strategy, r, replies, arrays, fed, rng)
            evals = _received(list(grid.send_and_receive(strategy.configure_evaluate(r, arrays, ConfigRecord(),
                                                                                     grid))), f"round {r} evaluation")
            ev = [dict(e.content["metrics"]) for e in evals]
            n_q = sum(e[WEIGHT_KEY] for e in ev)
            ndcg = sum(e["valid-ndcg@10"] * e[WEIGHT_KEY] for e in ev) / max(n_q, 1)
            minutes = (time.perf_counter() - self.started) / 60
            eps = (dp.epsilon(fed.dp_noise_multiplier, r, fed.dp_delta) if fed.dp_noise_multiplier > 0
                   else None)
            by_platform = {names[int(t["platform"])]: {"loss": t["loss"], "steps": int(t["steps"]),
                                                       "targets": int(t[WEIGHT_KEY]),
                                                       "seconds": round(t["seconds"], 1),
                                                       "update_norm": round(nm, 4)}
                           for t, nm in zip(train, norms, strict=True)}
            for e in ev:
                by_platform[names[int(e["platform"])]]["valid_ndcg@10"] = e["valid-ndcg@10"]
                by_platform[names[int(e["platform"])]]["valid_queries"] = int(e[WEIGHT_KEY])
            loss = sum(t["loss"] * t[WEIGHT_KEY] for t in train) / max(sum(t[WEIGHT_KEY] for t in train), 1)
            row = {"epoch": r, "round": r, "loss": loss, "valid_ndcg@10": ndcg, "minutes": round(minutes, 2),
                   "bytes_down_per_client": down, "bytes_up_per_client": int(np.mean(up)),
                   "bytes_per_round": int(down * len(replies) + sum(up) + down * len(evals)),
                   "epsilon": eps, "platforms": by_platform}
            self.rounds.append(row)
            self.console.print(
                f"round {r}: loss {loss:.4f}  federated valid NDCG@10 {ndcg:.4f} ("
                + ", ".join(f"{k} {v.get('valid_ndcg@10', 0):.4f}" for k, v in sorted(by_platform.items()))
                + f")  {row['bytes_per_round'] / 1e6:.2f} MB exchanged"
                + (f"  ε {eps:.2f}" if eps is not None else "") + f"  ({minutes:.1f} min)")
            if self.on_epoch is not None:
                self.on_epoch(r, ndcg)
            best, bad = (ndcg, 0) if ndcg > best else (best, bad + 1)
            if r < fed.rounds and minutes >= cfg.max_minutes:
                self.console.print(f"[yellow]max_minutes ({cfg.max_minutes}) reached after round {r}[/]")
                break
            if r < fed.rounds and bad >= cfg.patience:  # as the pooled epochs stop (no earlier round is kept)
                self.console.print(f"[yellow]valid NDCG@10 not better for {bad} rounds: stopping after round {r}[/]")
                break
        self.final = {k: arrays[k].numpy() for k in arrays}
        self.assemble(grid)

    def assemble(self, grid: Grid) -> None:
        """Each platform's local rows, once, for the checkpoint (see the module docstring)."""
        msgs = [Message(RecordDict({"config": ConfigRecord({"action": "assemble"})}), dst_node_id=node,
                        message_type=MessageType.QUERY) for node in grid.get_node_ids()]
        for rep in _received(list(grid.send_and_receive(msgs)), "assembly"):
            self.local[int(rep.content["metrics"]["platform"])] = from_record(rep.content["local"])


# --- the hook `xrec train --federated` plugs into training.train.train ------------------------------------


def write_clients(state: TrainState, windows: Windows, valid: list[Query], folder: Path
                  ) -> tuple[ClientSpec, list[ClientData]]:
    """Each platform's data as its client reads it (`client-<p>.pkl`), the catalog's text vectors (`text.npy`)
    and the spec every ClientApp gets. In a deployment each platform would build its own file from its logs."""
    cfg, ds = state.cfg, state.ds
    clients = []
    for p in range(len(ds.platforms)):
        data = client_data(ds, windows.is_target, valid, p, cfg.federated.cross_platform_history)
        with open(folder / f"client-{p}.pkl", "wb") as f:
            pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
        clients.append(data)
    np.save(folder / "text.npy", state.text.all_vectors())
    return ClientSpec(str(folder), cfg.model_dump_json(), state.model.cfg.to_dict()), clients



def federated_two_tower(state: TrainState, windows: Windows, valid: list[Query], console: Console,
                        on_epoch: Callable[[int, float], None] | None = None) -> dict[str, object]:
    """Fit `state.model` federatedly (one Flower client per platform); a `training.train.TwoTowerFit`.
    `windows.is_target` says which events may be targets (the scorer's held-out ones may not)."""
    cfg, fed, ds = state.cfg, state.cfg.federated, state.ds
    if cfg.model.mode != "frozen":
        raise ValueError(f"federated training needs mode = \"frozen\" (got {cfg.model.mode!r}): a fine-tuned text "
                         "transformer would be one more shared model, not supported yet")
    started = time.perf_counter()
    n = len(ds.platforms)
    loop = ServerLoop(state, console, on_epoch, started)
    with tempfile.TemporaryDirectory(prefix="xrec-federated-") as tmp:
        spec, clients = write_clients(state, windows, valid, Path(tmp))
        shared = shared_arrays(state.model)
        n_shared = sum(v.size for v in shared.values())
        console.print(f"federated: {n} platforms ({', '.join(ds.platforms)}), {fed.rounds} rounds, "
                      + (f"{fed.local_steps} local steps" if fed.local_steps else "one local pass") + " per round, "
                      + (f"FedProx μ {fed.proximal_mu}" if fed.proximal_mu > 0 else "FedAvg")
                      + f"; {n_shared:,} shared parameters; history: "
                      + ("fused across platforms (agreed sharing)" if fed.cross_platform_history
                         else "each platform's own events")
                      + (f"; DP clip {fed.dp_clip}, noise ×{fed.dp_noise_multiplier}" if fed.dp_clip else ""))
        for d in clients:
            console.print(f"  {ds.platforms[d.platform]}: {len(d.ds.timelines):,} people, "
                          f"{int(d.is_target.sum()):,} target events, {len(d.valid):,} valid targets")
        server = ServerApp()

        @server.main()
        def main(grid: Grid, context: Context) -> None:
            loop.run(grid)

        flwr_log = logging.getLogger("flwr")
        level = flwr_log.level
        flwr_log.setLevel(logging.WARNING)  # Flower logs every message at INFO; the round lines say it all
        try:
            cpus = max(1, min(n, os.cpu_count() or 1))
            run_simulation(server, make_client_app(spec), num_supernodes=n, backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": cpus, "include_dashboard": False, "object_store_memory": 256 * 2**20}})
        finally:
            flwr_log.setLevel(level)
    if len(loop.local) != n:
        raise RuntimeError(f"federated run ended without every platform's model ({len(loop.local)} of {n})")
    load_arrays(state.model, loop.final)
    for p, arrays in loop.local.items():
        load_arrays(state.model, arrays, ds.item_platform, p)
    assembled = evaluate_two_tower(state, valid)
    console.print(f"assembled model: valid NDCG@10 {assembled['ndcg@10']:.4f} (all platforms, fused history)")
    last = loop.rounds[-1] if loop.rounds else {}
    summary = {
        "rounds": len(loop.rounds), "strategy": "FedProx" if fed.proximal_mu > 0 else "FedAvg",
        "runtime": "flwr.simulation (Ray)", "shared_parameters": n_shared,
        "bytes_per_round": last.get("bytes_per_round"),
        "bytes_per_client_per_round": (last.get("bytes_down_per_client", 0) * 2 + last.get("bytes_up_per_client", 0)),
        "epsilon": dp.epsilon(fed.dp_noise_multiplier, len(loop.rounds), fed.dp_delta)
        if fed.dp_noise_multiplier > 0 else None,
        # Any change to one platform's data (one person's events, say) may replace its clipped update: twice
        # the add/remove sensitivity, i.e. the same mechanism at half the noise multiplier.
        "epsilon_replace_one": dp.epsilon(fed.dp_noise_multiplier / 2, len(loop.rounds), fed.dp_delta)
        if fed.dp_noise_multiplier > 0 else None,
        "delta": fed.dp_delta if fed.dp_noise_multiplier > 0 else None,
        "assembled_valid_ndcg@10": assembled["ndcg@10"], "assembled_valid_recall@10": assembled["recall@10"],
        "minutes": round((time.perf_counter() - started) / 60, 2), "config": fed.model_dump(),
    }
    return {"best_valid_ndcg@10": assembled["ndcg@10"], "epochs": loop.rounds, "federated": summary}
