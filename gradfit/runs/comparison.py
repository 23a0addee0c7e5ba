"""``gradfit compare``: the config keys on which runs differ and their metrics side by side. No jax."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradfit.errors import GradfitError
from gradfit.runs.catalog import RunEntry, labels, open_runs, read_entry


@dataclasses.dataclass(frozen=True)
class Comparison:
    runs: list[str]  # run folder paths, in the order given
    labels: list[str]  # their short names (``labels``)
    config: dict[str, list]  # dotted key -> its value in each run, for the keys that differ
    metrics: dict[str, list]  # metric -> its value in each run

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


COMPARED_METRICS = (
    "status",
    "steps",
    "epochs",
    "objective",
    "grad_norm",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
    "val_rmse",
    "val_mae",
    "val_r2",
    "test_rmse",
    "test_mae",
    "test_r2",
    "best_val_loss",
    "best_val_accuracy",
    "best_val_rmse",
    "wall_time_s",
    "steps_per_s",
)
#: metrics of one kind of target: left out of a comparison where no run has them
_TASK_METRICS = {
    "val_accuracy",
    "test_accuracy",
    "best_val_accuracy",
    *(f"{s}_{m}" for s in ("val", "test") for m in ("rmse", "mae", "r2")),
    "best_val_rmse",
}


_SUMMARY_METRICS = frozenset({"steps", "epochs", "objective", "grad_norm", "wall_time_s", "steps_per_s"})


def compare(paths: Sequence[str | Path]) -> Comparison:
    """The config keys on which runs differ and their metrics side by side; a sweep's folder stands for its members.

    Configs are compared resolved, every key with its value, so a key an older run's config.yaml does not
    spell (its default then) is not a difference unless the default changed.
    """
    folders = open_runs(paths)  # a sweep's folder: its members
    if len(folders) < 2:
        raise GradfitError("compare needs at least two runs: gradfit compare RUN RUN [RUN...] (or a sweep's folder)")
    configs = [_flat(run.config().model_dump(mode="json")) for run in folders]
    keys = sorted(set().union(*configs))
    values = {key: [config.get(key) for config in configs] for key in keys}
    config = {key: row for key, row in values.items() if any(v != row[0] for v in row[1:])}
    rows = [read_entry(run.path) for run in folders]
    metrics = {name: [_metric(entry, name) for entry in rows] for name in COMPARED_METRICS}
    regression = any(entry.summary is not None and "val_rmse" in entry.summary.final for entry in rows)

    def shown(name: str, values: list) -> bool:  # classes keep their accuracy rows, even where none was measured
        return (
            name not in _TASK_METRICS
            or any(v is not None for v in values)
            or (name.endswith("accuracy") and not regression)
        )

    metrics = {name: values for name, values in metrics.items() if shown(name, values)}
    return Comparison([str(run.path) for run in folders], labels([run.path for run in folders]), config, metrics)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _metric(entry: RunEntry, name: str) -> Any:
    summary = entry.summary
    if name == "status":
        return entry.status
    if summary is None:
        return entry.steps if name == "steps" else None
    if name.startswith("best_"):
        return summary.best.get(name[len("best_") :])
    if name in _SUMMARY_METRICS:
        return getattr(summary, name)
    return summary.final.get(name)  # None where the summary has no such value
