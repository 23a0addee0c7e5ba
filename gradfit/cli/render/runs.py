"""Tables of ``gradfit runs`` (one line per run) and ``gradfit compare`` (config differences, metrics)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import JustifyMethod
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gradfit.cli.render.common import fmt, titled_table, yaml_value

if TYPE_CHECKING:
    from gradfit.runs.catalog import Comparison


RUN_STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "interrupted": "yellow",
    "running": "cyan",
    "unfinished": "yellow",
    "damaged": "red",
}


_RUN_COLUMNS: tuple[tuple[str, JustifyMethod], ...] = (
    ("run", "left"),
    ("status", "left"),
    ("model", "left"),
    ("dataset", "left"),
    ("steps", "right"),
    ("best val_loss", "right"),
    ("val_loss", "right"),
    ("val_acc", "right"),  # a numeric target's runs: val_rmse (and both names when the rows mix them)
    ("test_acc", "right"),
    ("wall time", "right"),
    ("started", "left"),
)


def runs_table(rows: list[dict], folder: str) -> Table:
    """``gradfit runs``: one line per run (the rows of ``gradfit.runs.catalog.RunEntry.row``)."""
    table = titled_table(f"{len(rows)} run(s) in {escape(folder)}")
    numeric = {row.get("val_rmse") is not None or row.get("test_rmse") is not None for row in rows}
    score = {frozenset({False}): "acc", frozenset({True}): "rmse"}.get(frozenset(numeric), "acc|rmse")
    for name, justify in _RUN_COLUMNS:
        name = name.replace("_acc", f"_{score}")
        table.add_column(name, justify=justify, overflow="fold" if name == "run" else "ellipsis")
    for row in rows:
        table.add_row(
            escape(row["run"]),
            Text(row["status"], style=RUN_STATUS_STYLE.get(row["status"], "")),
            escape(row["model"]),
            escape(row["dataset"]),
            fmt(row["steps"]),
            fmt(row["best_val_loss"]),
            fmt(row["val_loss"]),
            _score_short(row, "val"),
            _score_short(row, "test"),
            "-" if row["wall_time_s"] is None else f"{row['wall_time_s']:.1f} s",
            escape(row["started"].replace("T", " ")[:19]),
        )
    return table


def damaged_runs(rows: list[dict]) -> list[str]:
    """A line per run the listing could not read, saying why (the table only says 'damaged')."""
    return [
        f"[red]damaged:[/] {escape(row['stop_reason'] or row['path'])}" for row in rows if row["status"] == "damaged"
    ]


def _score_short(row: dict, split: str) -> str:
    """A split's accuracy, or a numeric target's RMSE (marked as such)."""
    if row.get(f"{split}_rmse") is not None:
        return fmt(row[f"{split}_rmse"])
    value = row[f"{split}_accuracy"]
    return "-" if value is None else f"{value:.4f}"


def comparison_tables(comparison: Comparison) -> list[Table]:
    """``gradfit compare``: the config keys that differ (``key: a -> b`` for two runs) and the metrics side by side."""
    names = comparison.labels
    config = titled_table("Config differences" + ("" if comparison.config else ": none"))
    config.add_column("key", style="bold")
    if len(names) == 2:
        config.add_column(f"{escape(names[0])} -> {escape(names[1])}")
        for key, (a, b) in comparison.config.items():
            config.add_row(escape(key), f"{escape(yaml_value(a))} -> {escape(yaml_value(b))}")
    else:
        for name in names:
            config.add_column(escape(name))
        for key, values in comparison.config.items():
            config.add_row(escape(key), *(escape(yaml_value(v)) for v in values))
    metrics = titled_table("Metrics")
    metrics.add_column("metric", style="bold")
    for name in names:
        metrics.add_column(escape(name), justify="right")
    for key, values in comparison.metrics.items():
        metrics.add_row(key, *(escape(fmt(v, 6)) for v in values))
    return [config, metrics]
