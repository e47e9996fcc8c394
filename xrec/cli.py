"""The `xrec` command line: one typer app, a sub-app per stage of the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from app.core.config import DEV_ID_SALT, get_settings

app = typer.Typer(help="xrec: cross-platform recommendations.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Ingest, clean and fuse raw platform logs.", no_args_is_help=True)
app.add_typer(data_app, name="data")
bundle_app = typer.Typer(help="Inspect and check model bundles.", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")
batch_app = typer.Typer(help="Offline scoring of many persons (campaigns).", no_args_is_help=True)
app.add_typer(batch_app, name="batch")
report_app = typer.Typer(help="Reports from the service's event log.", no_args_is_help=True)
app.add_typer(report_app, name="report")
kg_app = typer.Typer(help="The cross-platform knowledge graph of a built dataset.", no_args_is_help=True)
app.add_typer(kg_app, name="kg")

# Wide enough for the summary tables when stderr is a log file rather than a terminal.
err = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 140)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@data_app.command("build")
def data_build(
    config: Annotated[Path, typer.Argument(help="source mapping file (TOML)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (replaced atomically)")],
    data_root: Annotated[Path | None, typer.Option(help="where the raw files live [env: XREC_DATA_ROOT]")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="fail at the first bad row")] = False,
    kg: Annotated[bool, typer.Option("--kg/--no-kg", help="also build the knowledge graph (kg/)")] = True,
) -> None:
    """Read every platform's logs, clean them, fuse each person's accounts, write a dataset and its
    knowledge graph."""
    from training.data.build import build_dataset, summary_table
    from training.data.readers import DataError
    from training.data.sources import SourceError, load_sources

    settings = get_settings()
    salt = settings.id_salt.get_secret_value()
    if salt == DEV_ID_SALT:
        err.print("[yellow]warning:[/] XREC_ID_SALT is the development default; set a secret for real data")
    try:
        cfg = load_sources(config, data_root=data_root, default_root=settings.data_root)
        result = build_dataset(cfg, out, salt, strict=strict, console=err, kg=kg)
    except DataError as e:
        raise _fail(str(e)) from None
    except SourceError as e:
        raise _fail(str(e)) from None
    err.print(summary_table(result.report))
    r = result.report
    if "kg" in r:
        from training.kg.report import kg_lines, kg_table

        err.print(kg_table(r["kg"]))  # type: ignore[arg-type]
        for line in kg_lines(r["kg"]):  # type: ignore[arg-type]
            err.print(line, highlight=False, soft_wrap=True)
    err.print(f"{r['events']:,} events, {r['people']:,} people ({r['linked_people']:,} linked), "
              f"targets {r['targets']}; wrote {result.out} in {result.seconds:.1f}s")


@kg_app.command("show")
def kg_show(
    item: Annotated[str, typer.Argument(help="item id: platform:id (or an id only one platform has)")],
    dataset: Annotated[Path, typer.Option(help="built dataset folder")] = Path("runs/fk"),
    per_platform: Annotated[int, typer.Option(min=0, help="items sharing each entity, per platform")] = 3,
) -> None:
    """An item's neighbourhood: its entities, their names on other platforms, items that share them."""
    from training.kg.show import KGError, format_neighbourhood, neighbourhood

    try:
        n = neighbourhood(dataset, item, per_platform)
    except KGError as e:
        raise _fail(str(e)) from None
    for line in format_neighbourhood(n):
        typer.echo(line)


@data_app.command("demo")
def data_demo(
    out: Annotated[Path, typer.Argument(help="folder for the synthetic raw logs and their mapping file")],
    people: Annotated[int, typer.Option(min=50, help="number of people")] = 3000,
    items: Annotated[int, typer.Option(min=30, help="items per platform")] = 1500,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Write a small synthetic three-platform sample (CSV, JSONL.gz, Parquet) plus its mapping file."""
    from training.data.demo import write_demo

    mapping = write_demo(out, people=people, items_per_platform=items, seed=seed)
    err.print(f"wrote demo data to {out}; build it with: xrec data build {mapping} --out <DIR>")


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Argument(help="training profile (TOML), e.g. configs/train-default.toml")],
    dataset: Annotated[Path | None, typer.Option(help="built dataset folder (overrides the profile)")] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (overrides the profile)")] = None,
    mode: Annotated[str | None, typer.Option(help="frozen | top-k | lora")] = None,
    history: Annotated[str | None, typer.Option(help="all | target-only (transfer ablation)")] = None,
    epochs: Annotated[int | None, typer.Option(help="two-tower epochs")] = None,
    max_steps: Annotated[int | None, typer.Option(help="stop after this many steps (smoke runs)")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (overrides the profile)")] = None,
    evaluate: Annotated[bool, typer.Option(help="evaluate on test with baselines afterwards")] = True,
    federated: Annotated[bool, typer.Option("--federated", help="train the two-tower with one Flower client per "
                                                                "platform (the profile's [federated] table; "
                                                                "docs/federated.md)")] = False,
    rounds: Annotated[int | None, typer.Option(min=1, help="--federated: server rounds (overrides the "
                                                           "profile)")] = None,
    dp_clip: Annotated[float | None, typer.Option(min=0.0, help="--federated: clip each platform's shared update "
                                                                "to this L2 norm")] = None,
    dp_noise: Annotated[float | None, typer.Option(min=0.0, help="--federated: DP noise multiplier (needs "
                                                                 "--dp-clip)")] = None,
) -> None:
    """Fine-tune the two-tower model and the re-ranking scorer; early stopping on valid."""
    from pydantic import ValidationError

    from training.train import TrainConfig, train

    if not config.is_file():
        raise _fail(f"training profile not found: {config}")
    if not federated and any(v is not None for v in (rounds, dp_clip, dp_noise)):
        raise _fail("--rounds, --dp-clip and --dp-noise go with --federated")
    try:
        cfg = TrainConfig.from_toml(config, dataset=dataset, out=out, mode=mode, history=history, epochs=epochs,
                                    max_steps=max_steps, seed=seed)
        fed = {k: v for k, v in (("rounds", rounds), ("dp_clip", dp_clip), ("dp_noise_multiplier", dp_noise))
               if v is not None}
        if fed:
            cfg = cfg.model_validate(cfg.model_dump() | {"federated": cfg.federated.model_dump() | fed})
    except (ValidationError, ValueError) as e:
        raise _fail(f"{config}: {e}") from None
    if not (cfg.dataset / "events.parquet").is_file():
        raise _fail(f"{cfg.dataset}: not a built dataset (run `xrec data build` first)")
    two_tower = None
    if federated:
        try:
            from training.federated import federated_two_tower
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("flwr"):
                raise
            raise _fail("flwr is not installed: pip install -e '.[federated]' (docs/federated.md)") from None
        two_tower = federated_two_tower
    ckpt = train(cfg, console=err, two_tower=two_tower)
    if evaluate:
        from training.report import run_evaluation

        run_evaluation(ckpt, "test", log=err.print)
        err.print(f"metrics: {ckpt.parent / 'metrics-test.md'}")


@app.command("tune")
def tune_cmd(
    config: Annotated[Path, typer.Argument(help="training profile (TOML) to tune around")],
    budget_minutes: Annotated[float, typer.Option("--budget-minutes", min=0.1, help="wall-clock budget for the "
                                                  "whole search")],
    trials: Annotated[int | None, typer.Option(min=1, help="at most this many trials (default: until the budget "
                                                          "is spent)")] = None,
    out: Annotated[Path, typer.Option(help="folder for the trials, tuned.toml and trials.csv")] = Path("runs/tune"),
    dataset: Annotated[Path | None, typer.Option(help="built dataset folder (overrides the profile)")] = None,
) -> None:
    """Search training settings on valid NDCG@10 (Optuna TPE, median pruning); write a tuned profile."""
    from pydantic import ValidationError

    from training.train import TrainConfig

    if not config.is_file():
        raise _fail(f"training profile not found: {config}")
    try:
        cfg = TrainConfig.from_toml(config, dataset=dataset)
    except (ValidationError, ValueError) as e:
        raise _fail(f"{config}: {e}") from None
    if not (cfg.dataset / "events.parquet").is_file():
        raise _fail(f"{cfg.dataset}: not a built dataset (run `xrec data build` first)")
    try:
        from training.tune import tune
    except ModuleNotFoundError as e:
        if e.name != "optuna":
            raise
        raise _fail("optuna is not installed: pip install -e '.[train]'") from None
    try:
        tune(cfg, out, budget_minutes, trials, console=err)
    except RuntimeError as e:
        raise _fail(str(e), code=1) from None
    err.print(f"train with: xrec train {out / 'tuned.toml'}")


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint.pt from `xrec train`")],
    split: Annotated[str, typer.Option(help="valid | test")] = "test",
    out: Annotated[Path | None, typer.Option(help="folder for metrics (default: beside the checkpoint)")] = None,
    baselines: Annotated[bool, typer.Option(help="also run the baselines on the same queries")] = True,
) -> None:
    """Full ranking, new-to-platform and sampled protocols, per platform and history bucket."""
    from training.report import run_evaluation

    if not checkpoint.is_file():
        raise _fail(f"checkpoint not found: {checkpoint}")
    run_evaluation(checkpoint, split, out, baselines=baselines, log=err.print)
    err.print(f"metrics: {(out or checkpoint.parent) / f'metrics-{split}.md'}")


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint.pt from `xrec train`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="bundles folder; the bundle goes in OUT/VERSION")] = Path(
        "bundles"),
    version: Annotated[str | None, typer.Option(help="bundle version (default: a UTC timestamp)")] = None,
    measure_variants: Annotated[bool, typer.Option(help="measure quantised variants on valid")] = True,
) -> None:
    """Export the encoders and the scorer to ONNX (with parity checks), build each platform's retrieval index,
    and write a versioned bundle."""
    from export.onnx_text import ParityError
    from export.write_bundle import export_bundle

    if not checkpoint.is_file():
        raise _fail(f"checkpoint not found: {checkpoint}")
    import contextlib
    import sys

    try:
        # Progress and parity figures go to stderr: stdout carries only the bundle path, for scripts.
        settings = get_settings()
        # Index kind by catalog size: XREC_HNSW_THRESHOLD (and HNSW's XREC_HNSW_M, XREC_HNSW_EF_CONSTRUCTION),
        # XREC_IVF_THRESHOLD (IVF's nprobe chosen here for XREC_IVF_TARGET_RECALL).
        index_params = settings.index_params()
        with contextlib.redirect_stdout(sys.stderr):
            path = export_bundle(checkpoint, out, version, salt=settings.id_salt.get_secret_value(),
                                 measure_variants=measure_variants, log=err.print, index_params=index_params)
    except ParityError as e:
        raise _fail(f"parity check failed, no bundle written: {e}") from None
    typer.echo(str(path))


@app.command("ablate")
def ablate_cmd(
    config: Annotated[Path, typer.Argument(help="training profile (TOML)")],
    out: Annotated[Path, typer.Option(help="folder for both runs and the comparison")] = Path("runs/ablation"),
    cross_checkpoint: Annotated[Path | None, typer.Option(help="reuse a cross-platform checkpoint")] = None,
    target_checkpoint: Annotated[Path | None, typer.Option(help="reuse a target-only checkpoint")] = None,
    split: Annotated[str, typer.Option(help="valid | test")] = "test",
) -> None:
    """Transfer ablation: cross-platform history vs target-platform-only history, per history bucket."""
    from training.ablation import transfer_ablation
    from training.train import TrainConfig

    cfg = TrainConfig.from_toml(config)
    transfer_ablation(cfg, out, cross_checkpoint, split, log=err.print, target_checkpoint=target_checkpoint)
    err.print(f"table: {out / f'transfer-{split}.md'}")


@bundle_app.command("verify")
def bundle_verify(bundle: Annotated[Path, typer.Argument(help="a bundle folder")]) -> None:
    """Check every file's hash, load each model and run one inference."""
    from export.verify import verify_bundle

    problems = verify_bundle(bundle, log=err.print)
    if problems:
        for p in problems:
            err.print(f"[red]✗[/] {p}", highlight=False)
        raise _fail(f"{bundle}: {len(problems)} problem(s)", code=1)
    err.print(f"[green]✓[/] {bundle} verified")


@data_app.command("export-events")
def data_export_events(
    out: Annotated[Path, typer.Argument(help="folder for the per-platform event files and mapping snippet")],
    events_dir: Annotated[Path | None, typer.Option(help="the service's event log [env: XREC_EVENTS_DIR]")] = None,
    mapping: Annotated[Path | None, typer.Option(help="the mapping file of the next build: its column names, "
                                                      "formats and own event files are used")] = None,
    since: Annotated[int | None, typer.Option(help="only events at or after this time (epoch s)")] = None,
    until: Annotated[int | None, typer.Option(help="only events before this time (epoch s)")] = None,
) -> None:
    """Events ingested by the service (POST /v1/events) → input for the next `xrec data build`."""
    from app.services.event_log import PlatformColumns, export_events

    settings = get_settings()
    columns: dict[str, PlatformColumns] = {}
    if mapping is not None:
        from training.data.sources import SourceError, load_sources

        try:
            cfg = load_sources(mapping, default_root=settings.data_root)
        except SourceError as e:
            raise _fail(str(e)) from None
        for name, src in cfg.platforms.items():
            columns[name] = PlatformColumns(
                account=src.account, item=src.item, event=src.event or "event", timestamp=src.timestamp,
                timestamp_format=src.timestamp_format, format=src.format, events=tuple(src.events),
                catalog=src.catalog.model_dump(exclude_none=True), default_event=src.default_event)
    source = events_dir or settings.events_dir
    if not source.is_dir():
        raise _fail(f"no event log at {source} (set --events-dir or XREC_EVENTS_DIR)")
    result = export_events(source, out, columns, since=since, until=until)
    for platform, path in result.files.items():
        err.print(f"{platform}: {result.counts[platform]:,} events → {path}")
    err.print(f"{result.duplicates:,} duplicate deliveries dropped; mapping snippet: {result.snippet}")


@batch_app.command("score")
def batch_score(
    bundle: Annotated[Path, typer.Option(help="bundle folder")],
    persons: Annotated[Path, typer.Option(help="Parquet or CSV: a person_id column, or account_id (+ account_platform, "
                                              "default --platform)")],
    platform: Annotated[str, typer.Option(help="the platform to recommend items of")],
    out: Annotated[Path, typer.Option(help="folder for the Parquet parts (a rerun resumes, skipping written parts)")],
    k: Annotated[int | None, typer.Option(min=1, help="items per person (default 20; --items: all)")] = None,
    items: Annotated[Path | None, typer.Option(help="candidate list, one item id per line: score only these")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster to run on (default: start a local Ray)")] = None,
    no_ray: Annotated[bool, typer.Option("--no-ray", help="score in this process, one part after another")] = False,
    workers: Annotated[int | None, typer.Option(min=1, help="actors, one CPU each (default: all CPUs of this machine "
                                                          "or of the cluster)")] = None,
    part_size: Annotated[int, typer.Option(min=1, help="persons per output part")] = 10_000,
    now: Annotated[int | None, typer.Option(help="rank as at this epoch s (default: the job's first start)")] = None,
    exclude_seen: Annotated[bool, typer.Option(help="leave out items the person has interacted with")] = True,
    filters: Annotated[str | None, typer.Option(help="business rules, as POST /v1/batch/score's `filters`: a JSON "
                                                    "object (or @file), e.g. '{\"include\": {\"category\": "
                                                    "[\"pans\"]}}'")] = None,
    diversity: Annotated[str | None, typer.Option(help="as POST /v1/batch/score's `diversity`: a JSON object (or "
                                                      "@file), e.g. '{\"max_per_value\": {\"brand\": 2}}'")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Campaign scoring: every person's top-k (or the --items, scored) with the service's ranking and reasons,
    written as Parquet parts; on Ray Data (one model-holding actor per core) or --no-ray. --filters and
    --diversity apply the business rules of POST /v1/batch/score, with its code."""
    from app.services.campaign import Campaign, CampaignError, load_items, load_rule

    if not (bundle / "manifest.json").is_file():
        raise _fail(f"{bundle}: not a bundle folder (no manifest.json)")
    if not no_ray:
        try:
            import ray  # noqa: F401
        except ModuleNotFoundError:
            raise _fail("ray is not installed: pip install -e '.[campaign]', or run with --no-ray") from None
    try:
        candidates = load_items(items) if items is not None else None
        summary = Campaign(get_settings(), bundle, persons, platform, out,
                           k=k if k is not None or candidates is not None else 20, items=candidates,
                           exclude_seen=exclude_seen, now=now, part_size=part_size,
                           filters=load_rule(filters, "filters"), diversity=load_rule(diversity, "diversity"),
                           use_ray=not no_ray,
                           address=address, workers=workers, progress=progress, console=err).run()
    except CampaignError as e:
        raise _fail(str(e)) from None
    err.print(summary.line(), highlight=False, soft_wrap=True)


@report_app.command("ab")
def report_ab(
    events_dir: Annotated[Path | None, typer.Option(help="the service's event log [env: XREC_EVENTS_DIR]")] = None,
    since: Annotated[int | None, typer.Option(help="only events at or after this time (epoch s)")] = None,
    until: Annotated[int | None, typer.Option(help="only events before this time (epoch s)")] = None,
    exposure: Annotated[str, typer.Option(help="the event type a client sends when it shows recommendations: "
                                               "who counts as exposed")] = "exposure",
    outcomes: Annotated[str, typer.Option(help="comma-separated event types to give rates of")] = "click,purchase",
    as_json: Annotated[bool, typer.Option("--json", help="print the figures as JSON instead of a table")] = False,
) -> None:
    """A/B test figures per variant from events that name a variant: exposed persons and their share, the rate
    of persons with each outcome (95% Wilson intervals), and the difference to the first variant."""
    import json

    from app.services.ab_report import ab_report_from_log, format_table

    source = events_dir or get_settings().events_dir
    if not source.is_dir():
        raise _fail(f"no event log at {source} (set --events-dir or XREC_EVENTS_DIR)")
    kinds = [k.strip() for k in outcomes.split(",") if k.strip()]
    report = ab_report_from_log(source, exposure, kinds, since, until)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    if not report.variants:
        err.print(f"no events naming a variant in {source}")
        raise typer.Exit(1)
    Console(width=200).print(format_table(report))


@app.command("serve")
def serve(
    bundle: Annotated[Path | None, typer.Option(help="bundle folder to serve [env: XREC_BUNDLE_DIR]")] = None,
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="processes (each loads the bundle and has its own "
                                                     "caches)")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Run the HTTP service (uvicorn, app.main:app)."""
    import os

    import uvicorn

    from app.core.config import get_settings
    from app.core.logs import uvicorn_log_config

    if bundle is not None:
        if not (bundle / "manifest.json").is_file():
            raise _fail(f"{bundle}: not a bundle folder (no manifest.json)")
        # Through the environment, so every worker process reads the same setting.
        os.environ["XREC_BUNDLE_DIR"] = str(bundle.resolve())
    # No access log: it costs throughput, and the request details it would add are in /metrics. uvicorn's
    # own lines (startup, tracebacks) in the service's log format (JSON lines unless XREC_LOG_JSON=false).
    uvicorn.run("app.main:app", host=host, port=port, workers=workers, log_level=log_level,
                access_log=False, http="xrec.http_protocol:NoDelayHTTPProtocol",
                log_config=uvicorn_log_config(get_settings().log_json))


if __name__ == "__main__":
    app()
