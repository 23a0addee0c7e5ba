"""The lines of metrics.jsonl: one per log point, made from a chunk's window sums and an evaluation's output."""

from __future__ import annotations

from typing import Any

import numpy as np

from gradfit.runs.metrics import RECORD_KEYS
from gradfit.training.plan import Plan
from gradfit.training.programs import WINDOW_ROWS

END_ROWS = ("objective", "train_loss", "grad_norm")  # what a full-batch chunk reports of its end state


def window_records(plan: Plan, start: int, end: int, metrics: dict, elapsed: float) -> list[dict]:
    """One record per log window of a chunk that ran from ``start`` to ``end``."""
    every, records = plan.log_every, []
    for w, window_start in enumerate(range(start // every * every, end, every)):
        lo, hi = max(window_start, start), min(window_start + every, end)
        columns = {name: float(metrics["windows"][row, w]) for row, name in enumerate(WINDOW_ROWS)}
        records.append(log_record(plan, hi, hi - lo, columns, elapsed))
    return records


def log_record(plan: Plan, step: int, steps: int, window: dict, elapsed: float) -> dict:
    """One line of metrics.jsonl. ``batch_*``: means over the ``steps`` since the previous record (None at step
    0); ``objective``, ``train_loss``, ``grad_norm`` (whole training split) and ``val_*``: where computed, else
    None. ``elapsed_s``: the wall time when the chunk that computed it ended (its records share it)."""
    record = dict.fromkeys(RECORD_KEYS)
    record.update(step=step, epoch=step / plan.steps_per_epoch, elapsed_s=elapsed)
    if steps:
        record.update(
            batch_objective=window["objective_sum"] / steps,
            batch_grad_norm=window["grad_norm_sum"] / steps,
            learning_rate=window["learning_rate"],
        )
    if plan.full_batch:  # the state carries them: at every log point for free
        record.update({key: float(window[key]) for key in ("objective", "train_loss", "grad_norm")})
    return record


def finite_record(record: dict) -> bool:
    return all(np.isfinite(v) for k, v in record.items() if isinstance(v, float))


def record_fields(result: dict, parts: dict, dataset: Any) -> dict:
    """Log-record fields from an evaluation's raw output: the parts computed; accuracies as exact fractions."""
    fields: dict = {}
    if parts.get("train"):
        fields.update(objective=float(result["objective"]), train_loss=float(result["train_loss"]))
        if parts.get("gradient"):
            fields["grad_norm"] = float(result["grad_norm"])
    for split, rows in (("val", len(dataset.val)), ("test", len(dataset.test))):
        if parts.get(split) and rows:
            fields[f"{split}_loss"] = float(result[f"{split}_loss"])
            fields[f"{split}_accuracy"] = int(result[f"{split}_correct"]) / rows
    return fields


def objective_text(record: dict) -> str | None:
    """'objective 0.31' (whole split) or 'batch_objective 0.33' (running mean), whichever the record has."""
    for key in ("objective", "batch_objective"):
        value = record.get(key)
        if isinstance(value, float) and np.isfinite(value):
            return f"{key}: {value:.6g}"
    return None
