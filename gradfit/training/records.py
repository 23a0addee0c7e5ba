"""The lines of metrics.jsonl: one per log point, made from a chunk's window sums and an evaluation's output.

A numeric target is trained standardized ((y - mean) / std); the records put its numbers back in the target's
units (``Units``): losses and objectives times std^2, gradient norms times std, and RMSE, MAE and R^2 from the
evaluation's sums of errors.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from gradfit.runs.metrics import record_keys
from gradfit.training.plan import Plan
from gradfit.training.programs import WINDOW_ROWS

END_ROWS = ("objective", "train_loss", "grad_norm")  # what a full-batch chunk reports of its end state


@dataclasses.dataclass(frozen=True)
class Units:
    """How a run's raw numbers become the ones it reports: identity for classes; for a numeric target its std and,
    per evaluated split, the sum of squared deviations of its (standardized) target from their mean, R^2's
    denominator."""

    regression: bool = False
    std: float = 1.0
    spread: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, dataset: Any) -> Units:
        """The units of ``dataset`` (the validation and test targets are read once, a block at a time)."""
        if dataset.target_scale is None:
            return cls()
        spread = {}
        for name in ("val", "test"):
            count, total, squares = 0, 0.0, 0.0
            for _, y in getattr(dataset, name).blocks(1 << 16):
                y = np.asarray(y, np.float64)
                y = y[:, 0] if y.ndim == 2 else y  # weighted rows: (label, weight) pairs
                count, total, squares = count + len(y), total + y.sum(), squares + np.square(y).sum()
            spread[name] = squares - total * total / count if count else 0.0
        return cls(True, dataset.target_scale[1], spread)

    def loss(self, value: float) -> float:
        return value * self.std**2 if self.regression else value

    def norm(self, value: float) -> float:
        return value * self.std if self.regression else value


def window_records(plan: Plan, start: int, end: int, metrics: dict, elapsed: float, units: Units) -> list[dict]:
    """One record per log window of a chunk that ran from ``start`` to ``end``."""
    every, records = plan.log_every, []
    for w, window_start in enumerate(range(start // every * every, end, every)):
        lo, hi = max(window_start, start), min(window_start + every, end)
        columns = {name: float(metrics["windows"][row, w]) for row, name in enumerate(WINDOW_ROWS)}
        records.append(log_record(plan, hi, hi - lo, columns, elapsed, units))
    return records


def log_record(plan: Plan, step: int, steps: int, window: dict, elapsed: float, units: Units) -> dict:
    """One line of metrics.jsonl. ``batch_*``: means over the ``steps`` since the previous record (None at step
    0); ``objective``, ``train_loss``, ``grad_norm`` (whole training split) and ``val_*``: where computed, else
    None. ``elapsed_s``: the wall time when the chunk that computed it ended (its records share it)."""
    record = dict.fromkeys(record_keys(units.regression))
    record.update(step=step, epoch=step / plan.steps_per_epoch, elapsed_s=elapsed)
    if steps:
        record.update(
            batch_objective=units.loss(window["objective_sum"] / steps),
            batch_grad_norm=units.norm(window["grad_norm_sum"] / steps),
            learning_rate=window["learning_rate"],
        )
    if plan.full_batch:  # the state carries them: at every log point for free
        record.update(
            objective=units.loss(float(window["objective"])),
            train_loss=units.loss(float(window["train_loss"])),
            grad_norm=units.norm(float(window["grad_norm"])),
        )
    return record


def finite_record(record: dict) -> bool:
    return all(np.isfinite(v) for k, v in record.items() if isinstance(v, float))


def record_fields(result: dict, parts: dict, dataset: Any, units: Units) -> dict:
    """Log-record fields from an evaluation's raw output: the parts computed; accuracies as exact fractions; a
    numeric target's losses, RMSE and MAE in its units."""
    fields: dict = {}
    if parts.get("train"):
        fields.update(
            objective=units.loss(float(result["objective"])), train_loss=units.loss(float(result["train_loss"]))
        )
        if parts.get("gradient"):
            fields["grad_norm"] = units.norm(float(result["grad_norm"]))
    for split, rows in (("val", len(dataset.val)), ("test", len(dataset.test))):
        if parts.get(split) and rows:
            fields[f"{split}_loss"] = units.loss(float(result[f"{split}_loss"]))
            if not units.regression:
                fields[f"{split}_accuracy"] = int(result[f"{split}_score"]) / rows
                continue
            squares, absolute = (float(v) for v in result[f"{split}_score"])
            fields[f"{split}_rmse"] = units.std * float(np.sqrt(squares / rows))
            fields[f"{split}_mae"] = units.std * absolute / rows
            spread = units.spread[split]
            fields[f"{split}_r2"] = 1.0 - squares / spread if spread > 0 else None
    return fields


def objective_text(record: dict) -> str | None:
    """'objective 0.31' (whole split) or 'batch_objective 0.33' (running mean), whichever the record has."""
    for key in ("objective", "batch_objective"):
        value = record.get(key)
        if isinstance(value, float) and np.isfinite(value):
            return f"{key}: {value:.6g}"
    return None
