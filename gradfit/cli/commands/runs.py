"""``gradfit runs``, ``gradfit compare`` and ``gradfit plot``: look at the runs in a folder."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.markup import escape

from gradfit.cli.options import JSON_HELP, JsonOutput, RunSort, RunStatus, checked_output, stderr
from gradfit.errors import GradfitError


def list_runs(
    folder: Path = typer.Argument(
        Path("runs"),
        help="A folder of run directories and sweeps, one run directory, or a sweep's folder (lists its members).",
    ),
    sort: RunSort = typer.Option(
        "started",
        "--sort",
        metavar="COLUMN",
        help="Order by started (newest first), run, status, steps, best_val_loss, "
        "best_val_accuracy, val_loss, val_accuracy, test_accuracy, best_val_rmse, val_rmse, test_rmse or "
        "wall_time_s (best first for metrics).",
    ),
    status: RunStatus | None = typer.Option(
        None,
        "--status",
        metavar="STATUS",
        help="Only runs with this status: completed, failed, interrupted, running, unfinished or damaged "
        "(a sweep's row: the sweep's own status).",
    ),
    members: bool = typer.Option(
        False, "--members", help="List every member of each sweep instead of one row per sweep."
    ),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """List runs: status, model, dataset, steps, best and final validation metrics, test accuracy, wall time.

    Reads only each run's summary.json, so it stays fast on a folder of thousands of runs. Status is what the summary says, [bold]running[/] while a gradfit process holds the run, [bold]unfinished[/] for a run killed before writing one (resume it), [bold]damaged[/] for a summary or run folder that cannot be read (a line under the table says why).

    A sweep is one row, "(N runs)" after its name, with the metrics of its best member (named under the table); [bold]--members[/] lists them all, as does naming the sweep's folder. Columns that do not fit the terminal are left out, from [bold]started[/] and [bold]wall time[/] on (a line under the table names them; --json has every one): a run's name is never wrapped.

    [bold]Examples[/]

      gradfit runs
      gradfit runs runs/ --sort best_val_loss --status completed
      gradfit runs runs/mlp-sweep-20261126-110000 --sort val_loss
      gradfit runs --json | jq '.[0].run'
    """  # noqa: E501 (a paragraph of --help is one line: Rich wraps it to the terminal)
    from gradfit.cli.render import runs as rendering
    from gradfit.cli.render.common import stdout_console
    from gradfit.runs import catalog

    rows = [entry.row() for entry in catalog.find_runs(folder, members=members)]
    if status is not None:
        rows = [row for row in rows if row["status"] == status]
    rows = catalog.sort_rows(rows, sort)
    if json_flag:
        JsonOutput(True, None).emit(rows)
        return
    console = stdout_console()
    table, notes = rendering.runs_table(rows, str(folder), console.width)
    console.print(table)
    for line in notes:
        console.print(line, highlight=False)
    for line in rendering.damaged_runs(rows):
        console.print(line, highlight=False, soft_wrap=True)


def compare(
    run_dirs: list[Path] = typer.Argument(
        ..., help="Two or more run directories; a sweep's folder stands for its members.", metavar="RUN RUN..."
    ),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Compare runs: the config keys on which they differ ([bold]key: a -> b[/]) and their metrics side by side.

    [bold]Examples[/]

      gradfit compare runs/mlp-20261126-101500 runs/mlp-20261126-103000
      gradfit compare runs/mlp-sweep-20261126-110000 --json   # every member of the sweep
    """
    from gradfit.cli.render.common import stdout_console
    from gradfit.cli.render.runs import comparison_tables
    from gradfit.runs.comparison import compare as comparison_of

    comparison = comparison_of(run_dirs)
    if json_flag:
        JsonOutput(True, None).emit(comparison.to_json())
        return
    console = stdout_console()
    for table in comparison_tables(comparison):
        console.print(table)


def plot(
    run_dirs: list[Path] = typer.Argument(
        ...,
        help="Run directories whose curves to draw, overlaid; a sweep's folder stands for its members.",
        metavar="RUN...",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The image to write: .png, .svg or .pdf."),
    metric: str | None = typer.Option(
        None,
        "--metric",
        "-m",
        help="Comma-separated metrics of metrics.jsonl, one panel each: batch_objective "
        "(every log point), objective, train_loss and grad_norm (whole training split, "
        "at evaluations), val_loss, val_accuracy (classes), val_rmse, val_mae, val_r2 (a numeric target), "
        "learning_rate. [default: batch_objective,val_loss,val_accuracy (val_rmse for a numeric target)]",
    ),
    log_y: bool = typer.Option(False, "--log-y", help="Logarithmic y axes (accuracies and R^2 stay linear)."),
    size: str = typer.Option("1200x400", "--size", metavar="WxH", help="Image size in pixels."),
    force: bool = typer.Option(False, "--force", help="Replace --out if the file exists."),
) -> None:
    """Draw training curves from metrics.jsonl: one panel per metric, one line per run (needs matplotlib).

    [bold]Examples[/]

      gradfit plot runs/mlp-20261126-101500 --out curves.png
      gradfit plot runs/mlp-* --metric val_loss,val_accuracy --log-y --out curves.svg
      gradfit plot runs/mlp-sweep-20261126-110000 --metric val_loss --out sweep.png   # its members
      pip install 'gradfit\\[plot]'   # matplotlib, if it is missing
    """
    from gradfit.runs import catalog
    from gradfit.runs import plot as plotting

    # ASCII digits only: str.isdigit() also passes '²', which int() refuses
    match = re.fullmatch(r"([0-9]{1,9})x([0-9]{1,9})", size.strip().lower())
    if match is None:
        raise GradfitError(f"--size {size!r}: expected WIDTHxHEIGHT in pixels (digits 0-9), e.g. 1200x400")
    width, height = match.groups()
    folders = catalog.open_runs(run_dirs)  # a sweep's folder: its members
    if metric is None:
        numeric = folders[0].config().model.regression if folders else False
        metric = ",".join(plotting.PLOT_METRICS_DEFAULT).replace(
            "val_accuracy", "val_rmse" if numeric else "val_accuracy"
        )
    metrics = [name.strip() for name in metric.split(",") if name.strip()]
    out = checked_output(out, "--out", force, [path for run in folders for path in run.own_files()], stdout=False)
    labels = catalog.labels([run.path for run in folders])
    plotting.plot_curves(
        [(label, run.iter_metrics()) for label, run in zip(labels, folders)],  # read one line at a time
        metrics,
        out,
        log_y=log_y,
        size=(int(width), int(height)),
    )
    stderr.print(f"wrote {escape(str(out))}", highlight=False, soft_wrap=True)
