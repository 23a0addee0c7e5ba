"""Tables of ``gradfit train``, ``gradfit sweep`` and ``gradfit config show``: the training summary, the sweep's
ranking and the resolved config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from gradfit.cli.render.common import fmt, member_ranges, titled_table, yaml_value
from gradfit.config.load import ResolvedConfig, describe_keys, unused_keys
from gradfit.counts import count, rate

if TYPE_CHECKING:
    from gradfit.runs.rundir import Summary


def summary_table(summary: Summary) -> Table:
    """summary.json as a table, its rows named by its keys."""
    final = summary.final
    table = titled_table("Training summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    steps_per_s = summary.steps_per_s
    rows = [
        ("status", summary.status),
        ("stop_reason", summary.stop_reason),
        ("steps / epochs", f"{summary.steps:,} / {summary.epochs:.4g}"),
        ("objective", fmt(summary.objective, 6)),
        ("grad_norm", fmt(summary.grad_norm, 3)),
        ("train_loss", fmt(final["train_loss"])),
        *_split_rows(final),
        ("params.npz", _saved_params(summary)),
        *(
            []
            if summary.zero_weights is None
            else [("zero weights", f"{summary.zero_weights:,} of the weights are exactly 0 (model.l1)")]
        ),
        (
            "trace / compile time",
            f"{summary.trace_time_s:.2f} s / {summary.compile_time_s:.2f} s (compile cache: {summary.compile_cache})",
        ),
        (
            "train / eval time",
            f"{summary.train_time_s:.2f} s / {summary.eval_time_s:.2f} s "
            f"({count(summary.evaluations, 'evaluation')}, every {count(summary.eval_every, 'step')})",
        ),
        (
            "steps_per_s",
            ("-" if steps_per_s is None else rate(steps_per_s))
            + " (training steps and log points; evaluations excluded)",
        ),
        ("wall_time", f"{summary.wall_time_s:.2f} s"),
        ("device", summary.device),
        ("run directory", summary.run_dir or "written by process 0"),
        ("last checkpoint", summary.checkpoint or "-"),
    ]
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    return table


def _split_rows(final: dict) -> list[tuple[str, str]]:
    """The validation and test metrics: loss and accuracy, or a numeric target's loss, RMSE, MAE and R^2."""
    if "val_rmse" in final:
        return [
            (
                f"{split}_loss / rmse / mae / r2",
                " / ".join(fmt(final[f"{split}_{key}"]) for key in ("loss", "rmse", "mae", "r2")),
            )
            for split in ("val", "test")
        ]
    return [
        (f"{split}_loss / {split}_accuracy", f"{fmt(final[f'{split}_loss'])} / {_accuracy(final[f'{split}_accuracy'])}")
        for split in ("val", "test")
    ]


def _accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.10g}"


def _saved_params(summary: Summary) -> str:
    if summary.params_step is None:
        return "not written (the parameters diverged)"
    stopper = summary.early_stopping
    best = f", the best {stopper['monitor']}" if stopper else ""
    return f"parameters of step {summary.params_step:,}{best}"


def sweep_ranking(state: dict) -> Table:
    """sweep.json's ranking: one row per setting, mean +- std of the metric over its seeds, the best marked."""
    from gradfit.config.choices import HIGHER_IS_BETTER
    from gradfit.sweeps.plan import show_value

    metric = state["metric"]
    table = titled_table(
        f"Sweep: settings ranked by {metric} ({'higher' if metric in HIGHER_IS_BETTER else 'lower'} is "
        "better), mean +- std over seeds",
        title_justify="left",
    )
    swept = [key for key in state["swept"] if key != "seed"]
    table.add_column("rank", justify="right")
    for key in swept:
        table.add_column(key.rsplit(".", 1)[-1], justify="right")
    table.add_column(metric, justify="right")
    table.add_column("seeds", justify="right")
    table.add_column("members", justify="left")
    for row in state["ranking"]:
        value = (
            "-"
            if row["mean"] is None
            else fmt(row["mean"]) + ("" if row["std"] is None else f" +- {fmt(row['std'], 2)}")
        )
        seeds = (
            f"{row['completed']:,}/{len(row['members']):,}"
            + (f", [red]{row['failed']:,} diverged or failed[/]" if row["failed"] else "")
            + (f", {row['pending']:,} unfinished" if row["pending"] else "")
        )
        mark = "[bold green]best[/] " if row["best"] else ""
        table.add_row(
            f"{mark}{row['rank']}",
            *(show_value(row["values"][key]) if key in row["values"] else "-" for key in swept),
            value,
            seeds,
            member_ranges(row["members"]),
        )
    table.caption = "".join(f"{note}\n" for note in state.get("notes", [])) + (
        f"{count(len(state['members']), 'member')} in {count(len(state['groups']), 'compiled group')}; sub-runs in "
        f"{state['sweep_dir']}/members; wall time {state.get('wall_time_s', 0):.1f} s"
    )
    return table


def config_table(resolved: ResolvedConfig) -> tuple[Table, int]:
    """The resolved config, one row per key that the chosen model/optimizer uses; returns (table, hidden)."""
    config = resolved.config.model_dump(mode="json")
    unused = unused_keys(resolved.config)
    title = f"Resolved config: {resolved.path or 'built-in defaults'}"
    table = titled_table(title, title_justify="left")
    for name in ("key", "value", "source", "description"):
        table.add_column(name, overflow="fold")
    hidden = 0
    for info in describe_keys():
        if any(info.key[:n] in unused for n in range(1, len(info.key) + 1)):
            hidden += 1
            continue
        value: Any = config
        for part in info.key:
            value = value[part]
        source = resolved.source_of(info.key)
        style = "" if source == "default" else "bold"
        table.add_row(
            ".".join(info.key),
            escape(yaml_value(value)),
            f"[{style}]{escape(source)}[/]" if style else source,
            escape(info.description),
        )
    return table, hidden
