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
) -> None:
    """Read every platform's logs, clean them, fuse each person's accounts, write a dataset."""
    from training.data.build import build_dataset, summary_table
    from training.data.readers import DataError
    from training.data.sources import SourceError, load_sources

    settings = get_settings()
    salt = settings.id_salt.get_secret_value()
    if salt == DEV_ID_SALT:
        err.print("[yellow]warning:[/] XREC_ID_SALT is the development default; set a secret for real data")
    try:
        cfg = load_sources(config, data_root=data_root, default_root=settings.data_root)
        result = build_dataset(cfg, out, salt, strict=strict, console=err)
    except DataError as e:
        raise _fail(str(e)) from None
    except SourceError as e:
        raise _fail(str(e)) from None
    err.print(summary_table(result.report))
    r = result.report
    err.print(f"{r['events']:,} events, {r['people']:,} people ({r['linked_people']:,} linked), "
              f"targets {r['targets']}; wrote {result.out} in {result.seconds:.1f}s")


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


if __name__ == "__main__":
    app()
