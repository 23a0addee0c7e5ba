"""Tables of ``gradfit runs`` (one line per run) and ``gradfit compare`` (config differences, metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.console import JustifyMethod
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gradfit.cli.render.common import fmt, titled_table, yaml_value

if TYPE_CHECKING:
    from gradfit.runs.comparison import Comparison


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
#: the columns left out, first to last, while the table is wider than the console; run and status always stay
DROP_ORDER = ("started", "wall time", "test_acc", "best val_loss", "dataset", "model", "steps", "val_acc", "val_loss")
ELLIPSIS = "…"
MEMBERS = "members"  # gradfit.runs.rundir.MEMBERS_DIR (not imported: it brings numpy)


def runs_table(rows: list[dict], folder: str, width: int) -> tuple[Table, list[str]]:
    """``gradfit runs``: one line per run or sweep (the rows of ``gradfit.runs.catalog.RunEntry.row``), fitted to
    ``width`` columns, and the lines to print under it: each sweep's best member, the columns left out.

    A run's name never wraps: columns are left out in ``DROP_ORDER`` until the table fits, and only when the run
    and status columns alone are too wide are the names shortened, in the middle (their ends tell members apart).
    """
    numeric = {row.get("val_rmse") is not None or row.get("test_rmse") is not None for row in rows}
    score = {frozenset({False}): "acc", frozenset({True}): "rmse"}.get(frozenset(numeric), "acc|rmse")
    cells = {name: [_cell(row, name) for row in rows] for name, _ in _RUN_COLUMNS}
    needed = {name: max([cell_len(_header(name, score))] + [cell_len(c.plain) for c in cells[name]]) for name in cells}
    shown = [name for name, _ in _RUN_COLUMNS]
    for name in DROP_ORDER:
        if _table_width(needed[n] for n in shown) <= width:
            break
        shown.remove(name)
    notes = _sweep_notes(rows)
    room = width - _table_width(needed[n] for n in shown) + needed["run"]  # what the run column may take
    if room < needed["run"]:
        cells["run"] = [_run_cell(row, room) for row in rows]
        notes.append(f"{ELLIPSIS} marks what a name leaves out to fit {width} columns; --json gives each path")
    dropped = [_header(name, score) for name, _ in _RUN_COLUMNS if name not in shown]
    if dropped:
        notes.append(f"not shown at {width} columns: {', '.join(dropped)} (a wider terminal or --json shows them)")
    table = titled_table(_title(rows, folder))
    for name, justify in _RUN_COLUMNS:
        if name in shown:
            table.add_column(_header(name, score), justify=justify, no_wrap=True, overflow="ellipsis")
    for i in range(len(rows)):
        table.add_row(*(cells[name][i] for name in shown))
    return table, [escape(note) for note in notes]


def _table_width(widths) -> int:
    """A table's width from its columns' (a space either side of each, a border between and around them)."""
    widths = list(widths)
    return sum(widths) + 3 * len(widths) + 1


def _header(name: str, score: str) -> str:
    return name.replace("_acc", f"_{score}")


def _cell(row: dict, column: str) -> Text:
    """A cell of the runs table, as plain text with its style."""
    if column == "run":
        return _run_cell(row)
    if column == "status":
        return Text(row["status"], style=RUN_STATUS_STYLE.get(row["status"], ""))
    if column == "dataset":  # a file's name: its folders are in config.yaml
        return Text(Path(row["dataset"]).name or row["dataset"])
    value = {
        "model": lambda: row["model"],
        "steps": lambda: fmt(row["steps"]),
        "best val_loss": lambda: fmt(row["best_val_loss"]),
        "val_loss": lambda: fmt(row["val_loss"]),
        "val_acc": lambda: _score_short(row, "val"),
        "test_acc": lambda: _score_short(row, "test"),
        "wall time": lambda: "-" if row["wall_time_s"] is None else f"{row['wall_time_s']:.1f} s",
        "started": lambda: row["started"].replace("T", " ")[:19],
    }[column]()
    return Text(value)


def _run_cell(row: dict, width: int | None = None) -> Text:
    """The run's name, a sweep's with its count. Given a ``width`` (the names do not fit), every sweep member's name
    loses its "members" folder, and one still too long its middle: a member's, the middle of its own folder's name
    (the sweep's name and the member's index and last values stay), another's, the middle of the whole."""
    suffix = f" ({_runs(row['members'])})" if row.get("kind") == "sweep" else ""
    name = row["run"]
    if width is None:
        return Text(name) + Text(suffix, style="dim")
    name = name.replace(f"/{MEMBERS}/", f"/{ELLIPSIS}/")
    room = width - cell_len(suffix)
    sweep, mark, member = name.rpartition(f"/{ELLIPSIS}/")
    if mark and cell_len(name) > room and room - cell_len(sweep + mark) >= 12:
        name = sweep + mark + _cut(member, room - cell_len(sweep + mark))
    return Text(_cut(name, room)) + Text(suffix, style="dim")


def _cut(text: str, width: int) -> str:
    """``text`` in ``width`` characters (8 at least): its middle replaced by an ellipsis."""
    if len(text) <= width:
        return text
    keep = max(width, 8) - 1
    return text[: keep // 3] + ELLIPSIS + text[len(text) - (keep - keep // 3) :]


def _runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def _relative(path: str, folder: str) -> str:
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return path


def _title(rows: list[dict], folder: str) -> str:
    sweeps = [row for row in rows if row.get("kind") == "sweep"]
    title = f"{len(rows) - len(sweeps)} run(s)"
    if sweeps:
        title += f" and {len(sweeps)} sweep(s) of {_runs(sum(row['members'] for row in sweeps))}"
    return f"{title} in {escape(folder)}"


def _sweep_notes(rows: list[dict]) -> list[str]:
    """A line per sweep: which member its row shows."""
    notes = []
    for row in rows:
        if row.get("kind") != "sweep":
            continue
        best, runs = row["best_member"], _runs(row["members"])
        shown = (
            f"the row shows the best of its {runs}, {_relative(best, row['path'])}"
            if best
            else f"none of its {runs} completed yet"
        )
        notes.append(f"{row['run']}: {shown}")
    if notes:
        notes.append("--members lists the runs of each sweep")
    return notes


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
