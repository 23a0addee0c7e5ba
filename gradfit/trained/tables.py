"""A trained run over whole tables: ``gradfit eval``'s labels and scores (weighted where the data say so) and
``gradfit predict``'s CSV, streamed a batch at a time. Prints nothing."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, TextIO

import numpy as np

from gradfit.data import blocks
from gradfit.data.text import LineNumbers
from gradfit.data.weighting import class_positions
from gradfit.errors import DataError, GradfitError
from gradfit.trained.run import TrainedRun, reload_dataset


class Evaluated(NamedTuple):
    """What ``evaluate`` computed the metrics from."""

    y: np.ndarray  # true class indices, or a numeric target's values (in its units)
    scores: np.ndarray  # log-probabilities (n, K), or predictions (n,)
    source: str  # what was evaluated, for the title
    weights: np.ndarray | None  # the rows' sample weights (the run's data.weight column), or None


def evaluate(run: TrainedRun, data: Path | None, split: str, target: str | None, batch_rows: int) -> Evaluated:
    """The true labels and the model's log-probabilities (a numeric target's true values and predictions, in its
    units) on a labelled file or one of the run's splits, with the rows' sample weights when the run was trained
    with a weight column and the data have it."""
    log_probs = run.predictions() if run.regression else run.log_probabilities()
    if data is not None:
        table = run.open_data(data, target, True)
        parts = [
            (block.labels, log_probs(block.x, lambda i, b=block: table.locate(b.positions[i])), block.weights)
            for block in run.batches(table, batch_rows)
        ]
        if not parts:
            raise table.no_rows()
        weights = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
        return Evaluated(
            np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), str(data), weights
        )
    rows = getattr(reload_dataset(run), split)
    if len(rows) == 0:
        raise DataError(
            f"{run.run_dir}: the run has no {split} rows (data.{split}_fraction was 0); pick another "
            "--split or pass --data FILE"
        )
    source = run.preprocessing["dataset"]
    ys, probs, row_weights = [], [], []
    mean, std = run.target_scale
    per_class = run.preprocessing.get("class_weight")
    for start, (x, y) in zip(range(0, len(rows), batch_rows), rows.blocks(batch_rows)):
        if y.ndim == 2:  # weighted rows: (label, weight), the weight a sample weight times a class weight
            y, w = y[:, 0], np.asarray(y[:, 1], np.float64)
            ids = class_positions(y, run.classes)
            row_weights.append(w if per_class is None or ids is None else w / np.asarray(per_class)[ids])
        if run.regression:
            ys.append(mean + std * np.asarray(y, np.float64))  # what ``predictions`` computes of the model's output
        else:
            ys.append((y > 0).astype(np.int32) if len(run.classes) == 2 else y.astype(np.int32))
        probs.append(log_probs(x, lambda r, i=start: f"{source}: row {i + r} of the {split} split"))
    sampled = run.weight is not None and row_weights  # class weights alone weigh the objective, not the data
    return Evaluated(
        np.concatenate(ys),
        np.concatenate(probs),
        f"the {split} split of {run.preprocessing['dataset']}",
        np.concatenate(row_weights) if sampled else None,
    )


def write_predictions(
    run: TrainedRun, data: Path, out: TextIO, with_probabilities: bool, target: str | None, batch_rows: int
) -> int:
    """Stream predictions for a file as CSV to ``out``; returns the number of rows.

    Columns: ``line`` (the input line; ``row`` for .npz), ``prediction`` (an original label value, or a numeric
    target's predicted value) and, with probabilities, ``p_<label>`` per class (17 significant digits for float64
    runs, 9 for float32 ones).
    """
    if run.regression and with_probabilities:
        raise GradfitError(
            f"{run.run_dir}: --proba: the model predicts a numeric target, which has no class probabilities; "
            "leave --proba out"
        )
    table = run.open_data(data, target, False)  # a wrong file fails here, before any output
    digits = f"%.{run.precision.significant_digits}g"
    if run.regression:
        return _write_values(run, table, out, digits, batch_rows)
    log_probs = run.log_probabilities()
    labels = np.array([_csv_field(str(c)) for c in run.classes])
    position = "line" if table.kind == "csv" else "row"
    header = [position, "prediction"] + ([f"p_{c}" for c in run.classes] if with_probabilities else [])
    out.write(",".join(_csv_field(h) for h in header) + "\n")
    count = 0
    lines = LineNumbers(table.path) if table.kind == "csv" else None  # a CSV's positions count data rows
    for block in run.batches(table, batch_rows):
        lp = log_probs(block.x, lambda i, b=block: table.locate(b.positions[i]))  # never nan
        where = block.positions if lines is None else lines.next(len(block.positions))
        columns = [where.astype(str), labels[lp.argmax(axis=1)]]
        if with_probabilities:
            columns += list(np.char.mod(digits, np.exp(lp)).T)
        out.write("".join(",".join(row) + "\n" for row in zip(*columns)))
        count += len(lp)
    if count == 0:
        raise table.no_rows()
    return count


def _write_values(run: TrainedRun, table: blocks.Table, out: TextIO, digits: str, batch_rows: int) -> int:
    """``write_predictions`` of a numeric target: the position and the predicted value of each row."""
    predictions = run.predictions()
    position = "line" if table.kind == "csv" else "row"
    out.write(f"{position},prediction\n")
    count = 0
    lines = LineNumbers(table.path) if table.kind == "csv" else None
    for block in run.batches(table, batch_rows):
        values = predictions(block.x, lambda i, b=block: table.locate(b.positions[i]))
        where = block.positions if lines is None else lines.next(len(block.positions))
        out.write("".join(f"{w},{v}\n" for w, v in zip(where.astype(str), np.char.mod(digits, values))))
        count += len(values)
    if count == 0:
        raise table.no_rows()
    return count


def _csv_field(text: str) -> str:
    """``text`` quoted for CSV when it needs to be."""
    if any(ch in text for ch in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text
