"""``gradfit data convert`` and ``gradfit data describe``: turn a table into a folder training can stream, and
summarize one."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import typer
from rich.markup import escape

from gradfit.cli.options import JSON_HELP, CheckPrecision, JsonOutput, stderr

DATA_TARGET_HELP = "Label column of a CSV (an .npz holds labels as y)."
OVERFLOW_LINES = 10  # columns named one per line by describe at most


@contextlib.contextmanager
def _progress_bar(what: str, quiet: bool) -> Iterator[Callable[[int, int | None], None] | None]:
    """A Rich progress bar on stderr (none with --quiet): yields a callback (done, total)."""
    if quiet:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn(escape(what)), BarColumn(), DownloadColumn(), TimeRemainingColumn(), console=stderr, transient=True
    ) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def convert(
    source: Path = typer.Argument(
        ...,
        help="A CSV with a header, a Parquet or Feather file, an .npz (X, y, optional feature_names) or a converted "
        "folder.",
    ),
    out_dir: Path = typer.Argument(..., help="The folder to write: X.npy, y.npy and meta.json."),
    target: str = typer.Option("target", help=DATA_TARGET_HELP),
    dtype: CheckPrecision | None = typer.Option(
        None,
        help="Store features as float32 (half the disk, rounded) "
        "or float64 [default: the source's; float64 for a CSV].",
    ),
    force: bool = typer.Option(False, "--force", help="Replace OUT_DIR if it is a converted folder."),
    categorical: list[str] | None = typer.Option(
        None,
        "--categorical",
        help="A categorical column (repeat for more), stored as category codes [default: every column whose "
        "cells are not numbers].",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Convert a table into a folder that training memory-maps and can stream (data.path: OUT_DIR).

    One pass in flat memory (blocks of rows), with the checks and messages training uses; features in the column order of the file, categorical columns as codes into their categories (listed in meta.json), missing cells as NaN, labels as indices into the sorted classes and the label column's name kept for the runs trained on it. Written under a temporary name and renamed when complete; a temporary folder left by a conversion to OUT_DIR that was killed (SIGKILL) is removed.

    [bold]Examples[/]

      gradfit data convert big.csv big/ --target label
      gradfit train configs/mlp.yaml --set data.source=file --set data.path=big --set data.in_memory=false
    """  # noqa: E501 (a paragraph of --help is one line: Rich wraps it to the terminal)
    from gradfit.data.convert import convert as convert_table

    with _progress_bar(f"converting {source}", quiet or json_flag) as progress:
        done = convert_table(source, out_dir, target, dtype, force, progress, categorical or "auto")
    if done.removed and not quiet:
        stderr.print(
            f"removed {len(done.removed)} partial folder(s) left by killed conversions to {escape(done.out_dir)}: "
            + ", ".join(escape(path) for path in done.removed),
            highlight=False,
            soft_wrap=True,
        )
    if json_flag:
        typer.echo(json.dumps({**dataclasses.asdict(done), "mb_per_s": done.mb_per_s}, indent=2))
        return
    from gradfit.files import format_bytes

    stderr.print(
        f"wrote {escape(done.out_dir)}: {done.rows:,} rows x {done.features:,} features ({done.dtype}), "
        f"{len(done.classes)} distinct labels, {format_bytes(done.bytes_out)} in {done.seconds:.1f} s "
        f"({done.mb_per_s:,.0f} MB/s of input)",
        highlight=False,
        soft_wrap=True,
    )


def describe(
    path: Path = typer.Argument(..., help="A CSV, Parquet or Feather file, an .npz or a converted folder."),
    target: str = typer.Option("target", help=DATA_TARGET_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Rows, columns, classes with counts, and per column mean, std, min, max (categories: the most frequent), missing and infinite cells.

    One streamed pass in float64 (flat memory). A column whose cells are not numbers is described as categorical; missing cells (empty or NA) and infinite ones are counted, not refused; a column whose variance overflows float64 is named. Of a file with more than 40 columns the table shows the first and last 10 and up to 20 with missing or infinite cells, an overflow or a single value; --json lists every column (and draws no table).

    [bold]Examples[/]

      gradfit data describe data/breast_cancer.csv
      gradfit data describe big/ --json | jq .classes
    """  # noqa: E501 (a paragraph of --help is one line: Rich wraps it to the terminal)
    from gradfit.data.describe import describe as describe_table

    with _progress_bar(f"reading {path}", quiet or json_flag) as progress:
        result = describe_table(path, target, progress)
    output = JsonOutput(json_flag, None)
    console = output.console()
    if not json_flag:  # the JSON holds every number; drawing 100,000 feature rows took minutes
        from gradfit.cli.render.data import describe_tables

        for table in describe_tables(result):
            console.print(table)
    overflow = result["overflow"]
    for name in overflow[:OVERFLOW_LINES]:
        console.print(
            f"[bold red]overflow:[/] column '{escape(name)}': its mean or variance overflows float64; "
            "training refuses cells beyond 1e150 in magnitude",
            soft_wrap=True,
            highlight=False,
        )
    if len(overflow) > OVERFLOW_LINES:
        console.print(
            f"[bold red]overflow:[/] {len(overflow) - OVERFLOW_LINES:,} more columns overflow (--json lists them)",
            highlight=False,
        )
    if json_flag:
        output.emit(result)
