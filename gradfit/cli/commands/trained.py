"""``gradfit eval``, ``predict``, ``inference`` and ``export``: use a trained model's run directory."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Literal

import typer
from rich.markup import escape

from gradfit.cli.options import (
    FORCE_HELP,
    JSON_HELP,
    JSON_OUT_HELP,
    RUN_DIR_HELP,
    JsonOutput,
    Scale,
    Split,
    checked_output,
    stderr,
    use_compile_cache,
)

ExportFormat = Literal["stablehlo", "onnx"]
BATCH_HELP = "Rows per batch: files are read and predicted this many rows at a time, never loaded whole."


def evaluate(
    run_dir: Path = typer.Argument(..., help=RUN_DIR_HELP),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="A labelled table (CSV, Parquet, Feather, .npz or converted folder) to evaluate on, instead of a split "
        "of the run's own data.",
    ),
    split: Split = typer.Option("test", help="Which split of the run's data, without --data."),
    target: str | None = typer.Option(None, help="Label column of the --data table [default: the run's label column]."),
    batch_rows: int = typer.Option(65_536, "--batch-rows", min=1, help=BATCH_HELP),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
    json_file: Path | None = typer.Option(None, "--json-out", metavar="FILE", help=JSON_OUT_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Evaluate a trained model: log loss, accuracy, precision/recall/F1 per class and macro, ROC AUC, confusion matrix; for a numeric target RMSE, MAE and R^2.

    New data get the run's saved standardization and label mapping; their feature columns must be the run's (matched by name, in any order).

    [bold]Examples[/]

      gradfit eval runs/logreg-20261126-101500
      gradfit eval runs/logreg-20261126-101500 --data new.csv --json-out metrics.json
      gradfit eval runs/mlp-20261126-101500 --json | jq .accuracy
      gradfit eval runs/mlp-20261126-101500 --split val
    """  # noqa: E501 (a paragraph of --help is one line: Rich wraps it to the terminal)
    from gradfit.runs.rundir import own_files

    output = JsonOutput.checked(json_flag, json_file, force, [*own_files(run_dir), *([data] if data else [])])
    use_compile_cache()
    from gradfit import api
    from gradfit.cli.render.trained import eval_tables
    from gradfit.core import metrics
    from gradfit.trained import tables

    run = api.load_run(run_dir)
    y, scores, source, weights = tables.evaluate(run, data, split, target or run.target, batch_rows)
    if run.regression:
        result = metrics.regression_metrics(y, scores, weights)
    else:
        result = metrics.classification_metrics(y, scores, run.classes, weights)
    result["weighted_by"] = None if weights is None else run.weight
    console = output.console()
    for table in eval_tables(result, source):
        console.print(table)
    output.emit({"run_dir": str(run_dir), "data": source, **result})


def predict(
    run_dir: Path = typer.Argument(..., help=RUN_DIR_HELP),
    data: Path = typer.Argument(
        ...,
        help="A table of the run's input columns: CSV (with a header), Parquet, Feather, .npz (array X) or a "
        "converted folder; a label column, if present, is ignored.",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write the predictions CSV here ([bold]-[/]: stdout, the default)."
    ),
    proba: bool = typer.Option(False, "--proba", help="Add one probability column per class, p_<label>."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    target: str | None = typer.Option(None, help="Name of a label column to ignore [default: the run's label column]."),
    batch_rows: int = typer.Option(65_536, "--batch-rows", min=1, help=BATCH_HELP),
) -> None:
    """Predict labels (and probabilities) for new rows, in the original label values; for a numeric target, the predicted value.

    Output columns: [bold]line[/] (of the input CSV; [bold]row[/] for other tables), [bold]prediction[/], and with --proba one [bold]p_<label>[/] per class. The file is written to a temporary name and renamed when complete, so a failure never leaves a partial or overwritten file.

    [bold]Examples[/]

      gradfit predict runs/mlp-20261126-101500 unlabeled.csv --out predictions.csv --proba
      gradfit predict runs/logreg-20261126-101500 new.npz | head
    """  # noqa: E501 (a paragraph of --help is one line: Rich wraps it to the terminal)
    from gradfit import api
    from gradfit.files import STDOUT, write_atomic_stream
    from gradfit.runs.rundir import own_files
    from gradfit.trained import tables

    if out is not None:
        out = None if str(out) == STDOUT else checked_output(out, "--out", force, [*own_files(run_dir), data])
    use_compile_cache()
    run = api.load_run(run_dir)
    label_column = target or run.target
    if out is None:
        tables.write_predictions(run, data, sys.stdout, proba, label_column, batch_rows)
        return
    with write_atomic_stream(out) as handle:
        rows = tables.write_predictions(run, data, handle, proba, label_column, batch_rows)
    stderr.print(f"wrote {rows:,} predictions to {escape(str(out))}", highlight=False)


def inference(
    run_dir: Path = typer.Argument(..., help=RUN_DIR_HELP),
    scale: Scale = typer.Option(
        "original",
        help="Coefficients per unit of the raw features (original), or per standard deviation (standardized).",
    ),
    level: float = typer.Option(0.95, min=0.5, max=0.9999, help="Confidence level of the intervals."),
    json_flag: bool = typer.Option(False, "--json", help=JSON_HELP),
    json_file: Path | None = typer.Option(None, "--json-out", metavar="FILE", help=JSON_OUT_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Coefficient table of a logistic regression (z) or a least-squares linear regression (t, as statsmodels OLS): estimates, standard errors, statistics, p-values, confidence intervals.

    Standard errors come from the inverse Hessian (jax.hessian, float64) of the total negative log-likelihood on the training split, at the run's parameters; with model.l2 > 0 the penalized Hessian is used, and the output says so. Separation (checked on the data with a linear program), constant features, a singular or ill-conditioned Hessian and an unconverged fit are detected and explained instead of printing huge or NaN numbers. Exit code 1 when any problem is reported (the numbers are then withheld or not to be trusted).

    [bold]Examples[/]

      gradfit inference runs/logreg-20261126-101500
      gradfit inference runs/logreg-20261126-101500 --scale standardized --json-out coefficients.json
    """  # noqa: E501 (a paragraph of --help is one line: Rich wraps it to the terminal)
    from gradfit.runs.rundir import own_files

    output = JsonOutput.checked(json_flag, json_file, force, own_files(run_dir))
    use_compile_cache()
    from gradfit import api
    from gradfit.cli.render.trained import inference_tables

    run = api.load_run(run_dir)
    result = run.inference(scale, level)
    console = output.console()
    negative, *others = run.classes or [None]  # the reference class; the binary model's log-odds are of the other
    positive = others[0] if len(others) == 1 else "each class"
    for table in inference_tables(result, positive, negative, (run.target or "the target") if run.regression else None):
        console.print(table)
    for problem in result.problems:
        console.print(f"[bold red]problem:[/] {escape(problem)}", soft_wrap=True, highlight=False)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True, highlight=False)
    output.emit(
        {
            "run_dir": str(run_dir),
            "positive_class": positive if len(others) == 1 else None,
            "negative_class": negative,  # the reference class: of a multinomial model, every row's "k vs" class
            "converged": result.converged,
            **dataclasses.asdict(result),
        }
    )
    if result.problems:
        raise typer.Exit(1)


def export(
    run_dir: Path = typer.Argument(..., help=RUN_DIR_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="The artifact to write; its sidecar is OUT.json."),
    export_format: ExportFormat = typer.Option(
        "stablehlo", "--format", help="StableHLO (jax.export), or ONNX (jax2onnx: pip install 'gradfit\\[onnx]')."
    ),
    force: bool = typer.Option(False, "--force", help="Replace --out and its sidecar if they exist."),
) -> None:
    """Export a trained model with its preprocessing as StableHLO (jax.export), to run with jax alone, or as ONNX.

    The file holds the whole prediction function, with a symbolic batch size: raw input rows in, class probabilities (or a numeric target's predictions) out, as predict_proba (predict) returns them. OUT.json names the input columns in order, their dtype, each categorical column's categories (a category goes in as its index in that list; a missing cell as NaN) and the output. Load StableHLO with: jax.export.deserialize(open(OUT, "rb").read()).call(X) (float64 runs: enable jax_enable_x64 first); ONNX with: onnxruntime.InferenceSession(OUT).run(None, {"x": X}).

    [bold]Examples[/]

      gradfit export runs/logreg-20261126-101500 --out logreg.stablehlo
      gradfit export runs/logreg-20261126-101500 --format onnx --out logreg.onnx
    """  # noqa: E501 (a paragraph of --help is one line: Rich wraps it to the terminal)
    from gradfit import api
    from gradfit.runs.rundir import own_files

    sidecar_path = Path(f"{out}.json")
    inputs = own_files(run_dir)
    out = checked_output(out, "--out", force, inputs, stdout=False)
    sidecar_path = checked_output(sidecar_path, "--out (its sidecar)", force, inputs, stdout=False)
    use_compile_cache()
    api.load_run(run_dir).export(out, export_format, force=True)  # the targets were checked just above
    size = out.stat().st_size
    stderr.print(f"wrote {escape(str(out))} ({size:,} bytes) and {escape(str(sidecar_path))}", highlight=False)
