"""Rich rendering for the CLI: training progress, summary and config tables. Imported by gradfit.cli.app only."""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any, Optional

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.status import Status
from rich.table import Table
from rich.text import Text

from gradfit.config.load import ResolvedConfig, describe_keys, unused_keys

if TYPE_CHECKING:
    from gradfit.trained.inference import Inference
    from gradfit.runs.catalog import Comparison
    from gradfit.runs.rundir import Summary
    from gradfit.gradients.trace import Trace


def stdout_console() -> Console:
    """A console for stdout; wide when it is not a terminal, so logs and redirected tables are not wrapped."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def titled_table(title: str, **options) -> Table:
    """A table at least as wide as its title, so the title wraps only at spaces and only when the console is
    narrower: a narrow table would otherwise fold a path in its title every few characters."""
    return Table(title=title, min_width=len(Text.from_markup(title).plain), **{"title_justify": "left", **options})


def fmt(value: Any, digits: int = 4) -> str:
    """Compact number formatting for tables and log lines; '-' for missing values."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


class _Spinner:
    """A status line with a spinner on a terminal, updated in place: what happens before the first step."""

    status: Optional[Status] = None
    console: Console

    def _spin(self, message: str) -> None:
        if self.status is None:
            self.status = self.console.status(f"{escape(message)}...")
            self.status.start()
        else:
            self.status.update(f"{escape(message)}...")

    def _stop_status(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


class TrainProgress(_Spinner):
    """Training callbacks: a live progress bar on a terminal, plain log lines otherwise (at most 2 per second).

    Names are the keys of metrics.jsonl and summary.json, so the screen and the files say the same thing.
    """

    def __init__(self, console: Console, live: Optional[bool] = None):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.progress: Optional[Progress] = None
        self.status: Optional[Status] = None
        self.task = None
        self.total = 0
        self.eval_every = 1
        self.start_step = 0
        self.last_print = 0.0
        self.started = 0.0
        self.unprinted: Optional[dict] = None
        self.shown: dict = {}  # the newest value of each metric, kept between evaluations

    def on_stage(self, message: str) -> None:
        """A spinner on a terminal from the first second ('starting JAX', 'loading data', 'compiling')."""
        if self.live:
            self._spin(message)

    def on_start(self, info: dict) -> None:
        self._stop_status()
        self.total = info["total_steps"]
        self.eval_every = info["eval_every"]
        self.start_step = info.get("start_step", 0)
        self.started = time.perf_counter()
        cache = {"hit": ", from the compile cache", "partial": ", partly from the compile cache"}.get(
            info["compile_cache"], "")
        self.console.print(
            f"[bold]{escape(info['model'])}[/] on [bold]{escape(info['dataset'])}[/]: {info['num_params']:,} "
            f"parameters, {self.total:,} steps on {escape(info['device'])} (traced in {info['trace_time_s']:.2f} s, "
            f"compiled in {info['compile_time_s']:.2f} s{cache}); log every {info['log_every']:,} steps, "
            f"evaluate every {info['eval_every']:,}", soft_wrap=True, highlight=False
        )
        resumed = f" (resumed at step {self.start_step:,})" if self.start_step else ""
        self.console.print(f"run directory: {escape(info['run_dir'])}{resumed}", soft_wrap=True)
        if self.live:
            self.progress = Progress(
                TextColumn("[bold blue]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("batch_objective {task.fields[batch_objective]}"),
                TextColumn("val_accuracy {task.fields[val_accuracy]}"),
                TextColumn("{task.fields[rate]} steps/s"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=self.total, completed=self.start_step,
                                               batch_objective="-", val_accuracy="-", rate="-")

    def on_log(self, record: dict) -> None:
        # a chunk delivers up to a hundred records at once: only what is shown costs anything
        self.shown.update({k: v for k, v in record.items() if v is not None})
        now = time.perf_counter()
        evaluated = record["step"] % self.eval_every == 0  # evaluations are always shown
        due = record["step"] in (0, self.total) or evaluated or now - self.last_print >= (
            0.1 if self.progress is not None else 0.5)
        self.unprinted = record
        if not due:
            return
        self.last_print = now
        if self.progress is not None:
            self.progress.update(self.task, completed=record["step"],
                                 batch_objective=fmt(self.shown.get("batch_objective", self.shown.get("objective"))),
                                 val_accuracy=fmt(self.shown.get("val_accuracy"), 4), rate=self._rate(record))
            return
        self._print_line(record)

    def _rate(self, record: dict) -> str:
        elapsed = time.perf_counter() - self.started
        done = record["step"] - self.start_step
        return fmt(done / elapsed, 3) if elapsed > 0 and done else "-"

    def _print_line(self, record: dict) -> None:
        self.unprinted = None
        rate = self._rate(record)
        parts = [f"step {record['step']}/{self.total}", f"epoch {record['epoch']:.2f}"]
        for key, digits in (("batch_objective", 4), ("batch_grad_norm", 3), ("objective", 4), ("grad_norm", 3),
                            ("val_loss", 4), ("val_accuracy", 4), ("learning_rate", 3)):
            if record.get(key) is not None:
                parts.append(f"{key} {fmt(record[key], digits)}")
        parts.append(f"{rate} steps/s")
        self.console.print("  ".join(parts), highlight=False, soft_wrap=True)

    def on_end(self, summary: "Summary") -> None:
        if self.unprinted is not None:  # the newest record, where the display last skipped it
            if self.progress is None:
                self._print_line(self.unprinted)
            else:
                self.progress.update(self.task, completed=self.unprinted["step"])
        self.close()

    def close(self) -> None:
        self._stop_status()
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def summary_table(summary: "Summary") -> Table:
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
        ("val_loss / val_accuracy", f"{fmt(final['val_loss'])} / {_accuracy(final['val_accuracy'])}"),
        ("test_loss / test_accuracy", f"{fmt(final['test_loss'])} / {_accuracy(final['test_accuracy'])}"),
        ("params.npz", _saved_params(summary)),
        ("trace / compile time", f"{summary.trace_time_s:.2f} s / {summary.compile_time_s:.2f} s "
                                 f"(compile cache: {summary.compile_cache})"),
        ("train / eval time", f"{summary.train_time_s:.2f} s / {summary.eval_time_s:.2f} s "
                              f"({summary.evaluations} evaluations, every {summary.eval_every:,} steps)"),
        ("steps_per_s", f"{fmt(steps_per_s, 4)} (training steps and log points; evaluations excluded)"),
        ("wall_time", f"{summary.wall_time_s:.2f} s"),
        ("device", summary.device),
        ("run directory", summary.run_dir or "written by process 0"),
        ("last checkpoint", summary.checkpoint or "-"),
    ]
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    return table


def _accuracy(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.10g}"


def _saved_params(summary: "Summary") -> str:
    if summary.params_step is None:
        return "not written (the parameters diverged)"
    stopper = summary.early_stopping
    best = f", the best {stopper['monitor']}" if stopper else ""
    return f"parameters of step {summary.params_step:,}{best}"


class SweepProgress(_Spinner):
    """Sweep callbacks: one bar for the block in training and a line per member as it finishes (plain lines
    when not on a terminal)."""

    def __init__(self, console: Console, live: Optional[bool] = None):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.status: Optional[Status] = None
        self.progress: Optional[Progress] = None
        self.task = None

    def on_stage(self, message: str) -> None:
        if self.live:
            self._spin(message)
        else:
            self.console.print(f"{message}...", highlight=False)

    def on_block(self, info: dict) -> None:
        self._stop()
        members = info["members"]
        padded = info["parallel"] - len(members)
        self.console.print(f"group {info['group'] + 1}: members {_ranges(members)} side by side"
                           + (f" (+{padded} padding)" if padded else "")
                           + (f", from step {info['start_step']:,}" if info["start_step"] else ""), highlight=False)
        if self.live:
            self.progress = Progress(TextColumn("[bold blue]sweep"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[active]} members training"), TimeRemainingColumn(),
                                     console=self.console)
            self.progress.start()
            self.task = self.progress.add_task("sweep", total=info["total_steps"], completed=info["start_step"],
                                               active=len(members))

    def on_chunk(self, step: int, total_steps: int, active: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, active=active)

    def on_member(self, entry: dict) -> None:
        final = entry.get("final") or {}
        colour = {"completed": "green", "failed": "red"}.get(entry["status"], "yellow")
        self.console.print(f"  member {entry['index']} ({escape(entry['label'] or 'base config')}): "
                           f"[{colour}]{entry['status']}[/] at step {entry['steps']:,}, val_loss "
                           f"{fmt(final.get('val_loss'))}, val_accuracy {fmt(final.get('val_accuracy'))}"
                           + ("" if entry["status"] == "completed" else f" ({escape(entry['stop_reason'])})"),
                           highlight=False, soft_wrap=True)

    def _stop(self) -> None:
        self._stop_status()
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def close(self) -> None:
        self._stop()


def _ranges(indexes: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts, start = [], None
    for i, n in enumerate(indexes):
        start = n if start is None else start
        if i + 1 == len(indexes) or indexes[i + 1] != n + 1:
            parts.append(str(n) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(parts)


def sweep_ranking(state: dict) -> Table:
    """sweep.json's ranking: one row per setting, mean +- std of the metric over its seeds, the best marked."""
    metric = state["metric"]
    table = titled_table(f"Sweep: settings ranked by {metric} ({'lower' if metric == 'val_loss' else 'higher'} is "
                        "better), mean +- std over seeds", title_justify="left")
    swept = [key for key in state["swept"] if key != "seed"]
    table.add_column("rank", justify="right")
    for key in swept:
        table.add_column(key.rsplit(".", 1)[-1], justify="right")
    table.add_column(metric, justify="right")
    table.add_column("seeds", justify="right")
    table.add_column("members", justify="left")
    for row in state["ranking"]:
        value = "-" if row["mean"] is None else fmt(row["mean"]) + (
            "" if row["std"] is None else f" +- {fmt(row['std'], 2)}")
        seeds = f"{row['completed']}/{len(row['members'])}" + (
            f", [red]{row['failed']} diverged or failed[/]" if row["failed"] else "") + (
            f", {row['pending']} unfinished" if row["pending"] else "")
        mark = "[bold green]best[/] " if row["best"] else ""
        table.add_row(f"{mark}{row['rank']}", *(fmt(row["values"].get(key)) for key in swept), value, seeds,
                      _ranges(row["members"]))
    table.caption = (f"{len(state['members'])} members in {len(state['groups'])} compiled group(s); sub-runs in "
                     f"{state['sweep_dir']}/members; wall time {state.get('wall_time_s', 0):.1f} s")
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
        if any(info.key[: n] in unused for n in range(1, len(info.key) + 1)):
            hidden += 1
            continue
        value: Any = config
        for part in info.key:
            value = value[part]
        source = resolved.source_of(info.key)
        style = "" if source == "default" else "bold"
        table.add_row(".".join(info.key), escape(_yaml_value(value)),
                      f"[{style}]{escape(source)}[/]" if style else source, escape(info.description))
    return table, hidden


VERDICT_STYLE = {"PASS": "green", "KINK": "cyan", "INCONCLUSIVE": "yellow", "FAIL": "bold red", "N/A": "dim"}
METHOD_NAMES = {"forward": "forward AD", "finite_difference": "finite differences", "manual": "hand-derived",
                "float64": "reverse AD in float64"}


def _checked(result) -> str:
    """What a method compared: entries (coordinates) and random directions, counted apart."""
    parts = ([f"{result.checked:,} entr{'y' if result.checked == 1 else 'ies'}"] if result.checked else []) + (
        [f"{result.directions} direction{'s' if result.directions != 1 else ''}"] if result.directions else [])
    return " + ".join(parts) or "-"


def gradcheck_tables(report) -> list[Table]:
    """One table per parameter group: each method against reverse-mode AD."""
    tables = []
    for group in report.groups:
        style = VERDICT_STYLE[group.verdict]
        shape = "scalar" if not group.shape else "x".join(map(str, group.shape))
        noise = "" if group.f_noise is None else f"; loss noise {group.f_noise:.1e}"
        table = titled_table(f"[bold]{escape(group.name)}[/] ({shape}, {group.size:,} "
                            f"entr{'y' if group.size == 1 else 'ies'}{noise}): [{style}]{group.verdict}[/]",
                      title_justify="left")
        for name, justify in (("method vs reverse AD", "left"), ("rel. error", "right"), ("worst entry", "left"),
                              ("its value", "right"), ("reverse AD", "right"), ("checked", "right"),
                              ("verdict", "left"), ("notes", "left")):
            table.add_column(name, justify=justify)
        for method in report.methods:
            r = group.methods[method]
            notes = [r.note] if r.note else []
            if r.kinks:
                notes.append(f"{r.kinks} kink(s): AD between the one-sided differences")
            if r.inconclusive:
                notes.append(f"{r.inconclusive} within noise")
            if r.failures:
                notes.append(f"{r.failures} failing")
            table.add_row(METHOD_NAMES[method], fmt(r.error, 2), escape(r.worst or "-"), fmt(r.worst_value, 7),
                          fmt(r.worst_reference, 7), _checked(r), f"[{VERDICT_STYLE[r.verdict]}]{r.verdict}[/]",
                          escape("; ".join(notes)))
        tables.append(table)
    return tables


def sweep_table(rows, shape: str) -> Table:
    table = titled_table("Finite-difference error against the step h", title_justify="left")
    table.add_column("h", justify="right")
    table.add_column("rel. error", justify="right")
    table.add_column("")
    best = min(r.error for r in rows)
    for r in rows:
        marks = "#" * max(1, min(40, int(round(2 * (16 + math.log10(max(r.error, 1e-16)))))))
        table.add_row(f"{r.step:.0e}", f"{r.error:.2e}", marks + ("  <- best" if r.error == best else ""))
    table.caption = ("V shape: truncation falls as h^2 until round-off rises; consistent with a correct gradient"
                     if shape == "V" else
                     f"flat floor near {best:.1e}: finite differences never agree better; the gradient is wrong")
    return table


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


UNSTABLE_NOTE = ("? marks a figure whose timing samples varied by more than 20% (--json has each spread): not "
                 "a number to rely on; rerun on a quieter machine")


def _flag(text: str, row: dict, *keys: str) -> str:
    """``text``, marked with a yellow ? when a timing it comes from was unstable."""
    return f"{text}[yellow]?[/]" if set(keys) & set(row.get("unstable", [])) else text


def bench_tables(result: dict) -> list[Table]:
    """Environment, training throughput, gradient cost, method scaling, peers and scaling over devices as Rich
    tables."""
    tables = []
    env = titled_table("Environment", show_header=False, title_justify="left")
    for key, value in result["environment"].items():
        env.add_row(key, escape(str(value)))
    tables.append(env)

    if "training" in result:  # absent when bench ran one study only (--study)
        training = titled_table("Training throughput (steps/s; medians of samples after warm-up)", title_justify="left",
                         caption=UNSTABLE_NOTE)
        for name in ("config", "params", "batch", "compile s", "python loop", "fused chunk", "gradfit loop",
                     "evaluation share", "fused examples/s", "fused / python", "GFLOP/s", "of peak"):
            training.add_column(name, justify="left" if name == "config" else "right")
        for row in result["training"]:
            peak = row.get("fraction_of_peak")
            loop = row["loop"]
            training.add_row(
                f"{row['config']} ({row['optimizer']})", f"{row['num_params']:,}", str(row["batch_size"]),
                f"{row['compile_time_s']:.2f}", _flag(_rate(row["python_loop"]["steps_per_s"]), row, "python_loop_s_per_step"),
                _flag(_rate(row["fused"]["steps_per_s"]), row, "fused_s_per_step"),
                _flag(_rate(loop["steps_per_s"]), row, "loop_s_per_step"), f"{loop['eval_share']:.1%}",
                _rate(row["fused"]["examples_per_s"]),
                _flag(f"{row['fused_speedup']:.2f}x", row, "fused_s_per_step", "python_loop_s_per_step"),
                f"{row['gflops_per_s']:.3g}", ", ".join(f"{k} {v:.1%}" for k, v in peak.items()) if peak else "-")
        tables.append(training)

        cost = titled_table("Cost of a gradient: one value_and_grad vs one loss evaluation", title_justify="left")
        for name in ("config", "rows", "params", "loss", "value_and_grad", "ratio"):
            cost.add_column(name, justify="left" if name == "config" else "right")
        for row in result["gradient_cost"]:
            cost.add_row(row["config"], f"{row['rows']:,}", f"{row['num_params']:,}",
                         _flag(_seconds(row["loss_s"]), row, "loss_s"),
                         _flag(_seconds(row["value_and_grad_s"]), row, "value_and_grad_s"),
                         _flag(f"{row['ratio']:.2f}x", row, "loss_s", "value_and_grad_s"))
        tables.append(cost)

    methods = ("reverse", "forward", "finite_difference", "manual_numpy")
    for family, data in result["methods"].items():
        if family == "helmholtz":
            tables.append(helmholtz_table(data))
            continue
        table = titled_table(f"Full gradient of the {family} model, as a multiple of one loss evaluation",
                      title_justify="left")
        for name in ("size", "params", "loss", "reverse AD", "forward AD", "finite diff.", "NumPy by hand"):
            table.add_column(name, justify="right")
        for row in data["rows"]:
            ratios = [_flag(f"{row['ratios'][m]:.3g}x", row, "loss_s", f"{m}_s") for m in methods]
            table.add_row(str(row["size"]), f"{row['num_params']:,}", _flag(_seconds(row["loss_s"]), row, "loss_s"),
                          *ratios)
        e = data["growth_exponent"]
        if e["reverse"] is not None:
            table.caption = (f"growth exponent vs parameters: reverse {e['reverse']:.2f}, forward {e['forward']:.2f}, "
                             f"finite differences {e['finite_difference']:.2f}, NumPy {e['manual_numpy']:.2f} "
                             "(0: constant multiple of a loss; 1: one pass per parameter)")
            flops = [row.get("reverse_flops_vs_loss") for row in data["rows"]]
            if all(flops):
                table.caption += "; XLA flop count, reverse / loss: " + ", ".join(f"{f:.2f}" for f in flops)
        tables.append(table)

    if "peers" in result:
        peers = titled_table("Against the alternatives (time ratio gradfit / peer: below 1, gradfit is faster)",
                      title_justify="left", caption=UNSTABLE_NOTE)
        for name in ("peer", "gradfit", "peer time", "ratio", "notes"):
            peers.add_column(name, justify="left" if name in ("peer", "notes") else "right")
        for key, row in result["peers"].items():
            if not row.get("available", True):
                peers.add_row(escape(row["peer"]), "-", "-", "-", escape(row["reason"]))
                continue
            per_step = "gradfit_s_per_step" in row
            mine, theirs = ("gradfit_s_per_step", "peer_s_per_step") if per_step else ("gradfit_s", "peer_s")
            per = " /step" if per_step else ""
            notes = row.get("note", "")
            if "config" in row:
                notes = f"{row['config']}, batch {row['batch_size']}" + (f"; {notes}" if notes else "")
            peers.add_row(escape(row["peer"]), _flag(_seconds(row[mine]) + per, row, mine),
                          _flag(_seconds(row[theirs]) + per, row, theirs),
                          _flag(f"{row['time_ratio']:.2f}", row, mine, theirs), escape(notes))
        tables.append(peers)
    if "scaling" in result:
        tables.append(_scaling_table(result["scaling"]))
    return tables


def _seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} us"


def eval_tables(metrics: dict, source: str) -> list[Table]:
    """Overview, per-class precision/recall/F1, and the confusion matrix (rows: true, columns: predicted)."""
    overview = titled_table(f"Evaluation on {escape(source)}", show_header=False, title_justify="left")
    overview.add_column(style="bold")
    overview.add_column(justify="right")
    for key, value in (("rows", f"{metrics['rows']:,}"), ("log loss", fmt(metrics["log_loss"], 5)),
                       ("accuracy", fmt(metrics["accuracy"], 5)), ("ROC AUC", fmt(metrics["roc_auc"], 5)),
                       ("macro precision", fmt(metrics["precision_macro"], 5)),
                       ("macro recall", fmt(metrics["recall_macro"], 5)), ("macro F1", fmt(metrics["f1_macro"], 5))):
        if not (key == "ROC AUC" and metrics["roc_auc"] is None and len(metrics["classes"]) > 2):
            overview.add_row(key, value)
    per_class = titled_table("Per class", title_justify="left")
    for name in ("class", "precision", "recall", "F1", "support"):
        per_class.add_column(name, justify="left" if name == "class" else "right")
    for row in metrics["per_class"]:
        per_class.add_row(escape(str(row["class"])), fmt(row["precision"]), fmt(row["recall"]), fmt(row["f1"]),
                          f"{row['support']:,}")
    confusion = titled_table("Confusion matrix (rows: true class, columns: predicted)", title_justify="left")
    confusion.add_column("true \\ predicted", style="bold")
    for c in metrics["classes"]:
        confusion.add_column(escape(str(c)), justify="right")
    for c, counts in zip(metrics["classes"], metrics["confusion_matrix"]):
        confusion.add_row(escape(str(c)), *(f"{v:,}" for v in counts))
    return [overview, per_class, confusion]


def inference_tables(result: "Inference", positive: Any, negative: Any) -> list[Table]:
    """The fit's summary and the coefficient table of a logistic-regression inference result."""
    fit = titled_table(f"Logistic regression: log-odds of {escape(str(positive))} vs {escape(str(negative))}",
                show_header=False, title_justify="left")
    fit.add_column(style="bold")
    fit.add_column()
    converged = {None: "unknown (standard errors withheld)", True: "yes", False: "no"}[result.converged]
    if not result.standardized_features:
        scale = "raw feature units (the run did not standardize its features)"
    elif result.scale == "original":
        scale = "original feature units"
    else:
        scale = "per standard deviation of each feature (standardized)"
    separation = {None: "none", "not checked": "not checked (too many rows)"}.get(result.separation,
                                                                                 result.separation)
    for key, value in (
        ("observations", f"{result.n_obs:,} (the training split)"),
        ("log-likelihood", fmt(result.log_likelihood, 8)), ("AIC", fmt(result.aic, 8)), ("BIC", fmt(result.bic, 8)),
        ("parameters", f"{result.effective_parameters:.4g}" + (" effective" if result.l2 else "")),
        ("penalty", f"L2 = {result.l2:g}" if result.l2 else "none (maximum likelihood)"),
        ("separation", separation),
        ("converged", f"{converged}; gradient norm {fmt(result.gradient_norm, 3)}, Newton step "
                      f"{fmt(result.newton_offset, 3)} standard errors"),
        ("Hessian condition number", f"{fmt(result.condition_number, 3)} (scaled to unit diagonal)"),
        ("coefficient scale", scale),
    ):
        fit.add_row(key, escape(value))
    level = f"{result.level:.0%}"
    table = titled_table("Coefficients", title_justify="left")
    for name in ("", "estimate", "std err", "z", "P>|z|", f"{level} CI low", f"{level} CI high"):
        table.add_column(name, justify="left" if not name else "right")
    for c in result.coefficients:
        table.add_row(escape(c.name), fmt(c.estimate, 5), fmt(c.std_error, 4), fmt(c.z, 4), _p_value(c.p_value),
                      fmt(c.ci_low, 5), fmt(c.ci_high, 5))
    return [fit, table]


def _p_value(p: Optional[float]) -> str:
    if p is None:
        return "-"
    return "<1e-16" if p < 1e-16 else f"{p:.3g}"


def _scaling_table(scaling: dict) -> Table:
    table = titled_table(f"Scaling over devices: {escape(scaling['config'])}, global batch {scaling['batch_size']} "
                        "split across the devices (fused chunk)", title_justify="left",
                  caption=escape(scaling["note"]))
    for name in ("devices", "steps/s", "examples/s", "per device", "speed-up", "efficiency", "compile s"):
        table.add_column(name, justify="right")
    for row in scaling["rows"]:
        table.add_row(str(row["devices"]), _flag(_rate(row["steps_per_s"]), row, "s_per_step"),
                      _rate(row["examples_per_s"]), _rate(row["examples_per_s_per_device"]),
                      f"{row['speedup']:.2f}x", f"{row['efficiency']:.0%}", f"{row['compile_time_s']:.2f}")
    return table


_HELMHOLTZ_METHODS = {  # key in the study -> (column heading, short name in the error column)
    "reverse": ("reverse AD", "rev"), "forward": ("forward AD", "fwd"),
    "finite_difference": ("finite diff.", "fd"), "manual": ("by hand", "hand"), "symbolic": ("symbolic", "sym"),
}


def helmholtz_table(study: dict) -> Table:
    """The Helmholtz free energy study as a Rich table: per n, each method's full-gradient time as a multiple of
    one evaluation of f, the errors against reverse mode, and the size of SymPy's gradient expression; a last row
    of growth exponents, and a caption that says how to read them."""
    table = titled_table("Helmholtz free energy (Baydin et al. 2018): full gradient as a multiple of one evaluation "
                        "of f", title_justify="left", caption_justify="left")
    compared = [m for m in _HELMHOLTZ_METHODS if m != "reverse"]
    headings = ["n", "f", *(heading for heading, _ in _HELMHOLTZ_METHODS.values()),
                "error " + "/".join(_HELMHOLTZ_METHODS[m][1] for m in compared),
                "symbolic ops", "after CSE", "symbolic set-up"]
    for heading in headings:
        table.add_column(heading, justify="right", no_wrap=heading in ("symbolic", headings[7]))

    def ratio(row: dict, method: str) -> str:
        value = row["ratios"].get(method)
        if value is None:
            return "-"
        text = _flag(f"{value:.3g}x", row, "loss_s", f"{method}_s")
        if method == "symbolic" and row.get("symbolic_own_ratio") is not None:  # against f lambdified alike
            text += " " + _flag(f"({row['symbolic_own_ratio']:.3g}x)", row, "symbolic_s", "symbolic_loss_s")
        return text

    def error(value: Optional[float]) -> str:
        return "-" if value is None else "0" if value == 0 else f"{value:.0e}"

    def count(value: Optional[int]) -> str:
        return "-" if value is None else f"{value:,}"

    for row in study["rows"]:
        setup = row.get("symbolic_setup_s")
        table.add_row(str(row["size"]), _flag(_seconds(row["loss_s"]), row, "loss_s"),
                      *(ratio(row, m) for m in _HELMHOLTZ_METHODS),
                      " / ".join(error(row["errors"].get(m)) for m in compared),
                      count(row.get("symbolic_ops")), count(row.get("symbolic_ops_cse")),
                      "-" if setup is None else _seconds(setup))
    exponents, swell = study["growth_exponent"], study.get("expression_growth", {})
    table.add_section()
    table.add_row("growth", "", *(fmt(None) if exponents.get(m) is None else f"n^{exponents[m]:.2f}"
                                  for m in _HELMHOLTZ_METHODS), "",
                  *(fmt(None) if swell.get(k) is None else f"n^{swell[k]:.2f}" for k in ("ops", "ops_cse")), "")

    skipped = next((row["symbolic_skipped"] for row in study["rows"] if row.get("symbolic_skipped")), None)
    fit_from = study.get("growth_fit_from")
    notes = [
        "growth: the slope of log(ratio) against log(n) over " + (f"n >= {fit_from}" if fit_from else "the larger n")
        + ", where per-call overhead no longer dominates (0: a constant multiple of f, the cheap gradient "
        "principle; 1: one pass per variable); for the expression sizes, against log(n) over n >= 2",
        "error: norm-relative, against reverse-mode AD",
        "symbolic: SymPy's gradient lambdified to NumPy, against compiled f; in brackets, against f lambdified "
        "the same way; set-up is the one-off differentiation and lambdify",
        f"symbolic differentiation: {study['symbolic']}" + (f"; rows without it: {skipped}"
                                                             if skipped and skipped != study["symbolic"] else ""),
        UNSTABLE_NOTE,
    ]
    table.caption = escape("\n".join(notes[:-1])) + "\n" + notes[-1]
    return table


TRACE_DIGITS = 6  # enough to check a hand computation by eye; the JSON has full precision


def _trace_value(shown: Any, digits: int = TRACE_DIGITS) -> str:
    """A ``gradfit.gradients.trace.summary``: a number, a nested list of numbers, or {shape, dtype, norm, min, max}."""
    if shown is None:
        return "-"
    if isinstance(shown, dict):
        shape = "x".join(map(str, shown["shape"]))
        return (f"{shape} {shown['dtype']}: norm {fmt(shown['norm'], digits)}, min {fmt(shown['min'], digits)}, "
                f"max {fmt(shown['max'], digits)}")
    if isinstance(shown, list):
        return "[" + ", ".join(_trace_value(v, digits) for v in shown) + "]"
    if isinstance(shown, float):
        return fmt(shown + 0.0, digits)  # + 0.0: a tangent of -0 shows as 0
    return fmt(shown)


def trace_tables(trace: "Trace") -> list[Table]:
    """The evaluation trace (Baydin et al. 2018, tables 2-3), then dL/dtheta_j by each mode and by hand.

    One row per v_k: its operation, operands, primal value, forward tangent dv_k/dtheta_j and reverse adjoint
    dL/dv_k (the tangent and adjoint columns only for the modes that were run).
    """
    from gradfit.gradients.trace import summary

    theta = escape(trace.param)
    table = titled_table(f"[bold]Evaluation trace[/] of the loss, theta_j = [bold]{theta}[/] "
                        f"(inputs v{trace.rows[0].k}..v0, operations v1..v{trace.rows[-1].k})", title_justify="left")
    table.add_column("v", justify="right", style="bold")
    table.add_column("operation")
    table.add_column("inputs")
    table.add_column("value", justify="right")
    if trace.forward:
        table.add_column(f"tangent dv/d{theta}", justify="right")
    if trace.reverse:
        table.add_column("adjoint dL/dv", justify="right")
    notes = []
    for row in trace.rows:
        if row.kind in ("parameter", "data"):
            operation = f"{row.kind} [bold]{escape(row.name)}[/]"
            if row.kind == "parameter" and row.name == trace.leaf:
                operation += f" [dim](theta_j = {theta})[/]"
        else:
            operation = escape(row.op) + (f" [dim]in {escape(row.scope)}[/]" if row.scope else "")
        if row.note:
            notes.append(f"v{row.k}: {row.note}")
            operation += f" [dim]({len(notes)})[/]"
        cells = [row.label, operation, escape(", ".join(o.label for o in row.inputs)),
                 escape(_trace_value(summary(row.value)))]
        if trace.forward:
            cells.append(escape(_trace_value(summary(row.tangent))))
        if trace.reverse:
            cells.append(escape(_trace_value(summary(row.adjoint))))
        table.add_row(*cells, end_section=row.k == 0)  # a rule between the inputs and the operations
    captions = []
    if trace.forward:
        captions.append(f"tangent: forward mode, one JVP per operation from a one-hot tangent on {theta}")
    if trace.reverse:
        captions.append(f"adjoint: reverse mode, one VJP per operation from dL/dv{trace.output} = 1, "
                        "summed over every use")
    table.caption_justify = "left"
    table.caption = "; ".join(captions) + "".join(f"\n({i}) {escape(n)}" for i, n in enumerate(notes, 1))

    d = trace.derivative
    reference = "reverse mode" if d.reverse is not None else "forward mode"  # what the others are compared to
    reference_value = d.reverse if d.reverse is not None else d.forward
    compare = titled_table(f"[bold]dL/d{theta}[/] (loss {fmt(trace.loss, 10)})", title_justify="left")
    for name, justify in (("method", "left"), ("dL/dtheta_j", "right"), (f"rel. difference to {reference}", "right"),
                          ("from", "left")):
        compare.add_column(name, justify=justify)
    for name, value, source in (
            ("forward mode", d.forward, f"the tangent of the loss, v{trace.output}"),
            ("reverse mode", d.reverse, f"the adjoint of {theta}"),
            ("hand-derived", d.manual, "the closed-form gradient")):
        if value is None:
            compare.add_row(name, "-", "-", "not computed" if name != "hand-derived" else "none for this model")
            continue
        compare.add_row(name, fmt(value, 12), "-" if name == reference else _relative(value, reference_value),
                        escape(source))
    return [table, compare]


def _relative(value: float, reference: float | None) -> str:
    """|value - reference| / max(|reference|, tiny), as '3.1e-17'; '-' without a reference."""
    if reference is None:
        return "-"
    return f"{abs(value - reference) / max(abs(reference), 1e-300):.1e}"


def describe_tables(result: dict) -> list[Table]:
    """``gradfit data describe``: the table's shape and classes, then one row per feature."""
    head = Table(show_header=False)
    head.add_row("data", escape(result["path"]))
    head.add_row("format", result["format"])
    head.add_row("rows", f"{result['rows']:,}")
    head.add_row("features", f"{result['columns']:,}")
    head.add_row("non-finite cells", f"{result['non_finite_cells']:,}")
    tables = [head]
    if result["classes"] is not None:
        classes = titled_table(f"classes ({result['target']})", title_justify="left")
        classes.add_column("label")
        classes.add_column("rows", justify="right")
        classes.add_column("share", justify="right")
        for entry in result["classes"]:
            classes.add_row(escape(str(entry["label"])), f"{entry['rows']:,}", f"{entry['rows'] / result['rows']:.1%}")
        tables.append(classes)
    features = titled_table("features", title_justify="left")
    for name in ("column", "mean", "std", "min", "max", "non-finite"):
        features.add_column(name, justify="left" if name == "column" else "right")
    for f in result["features"]:
        features.add_row(escape(f["name"]), *(fmt(f[k]) if f[k] is not None else "-" for k in ("mean", "std", "min",
                                                                                                 "max")),
                         f"{f['non_finite']:,}")
    tables.append(features)
    return tables


RUN_STATUS_STYLE = {"completed": "green", "failed": "red", "interrupted": "yellow", "running": "cyan",
                    "unfinished": "yellow", "damaged": "red"}


def runs_table(rows: list[dict], folder: str) -> Table:
    """``gradfit runs``: one line per run (the rows of ``gradfit.runs.catalog.RunEntry.row``)."""
    table = titled_table(f"{len(rows)} run(s) in {escape(folder)}")
    for name, justify in (("run", "left"), ("status", "left"), ("model", "left"), ("dataset", "left"),
                          ("steps", "right"), ("best val_loss", "right"), ("val_loss", "right"),
                          ("val_acc", "right"), ("test_acc", "right"), ("wall time", "right"),
                          ("started", "left")):
        table.add_column(name, justify=justify, overflow="fold" if name == "run" else "ellipsis")
    for row in rows:
        table.add_row(escape(row["run"]), Text(row["status"], style=RUN_STATUS_STYLE.get(row["status"], "")),
                      escape(row["model"]),
                      escape(row["dataset"]), fmt(row["steps"]), fmt(row["best_val_loss"]), fmt(row["val_loss"]),
                      _accuracy_short(row["val_accuracy"]), _accuracy_short(row["test_accuracy"]),
                      "-" if row["wall_time_s"] is None else f"{row['wall_time_s']:.1f} s",
                      escape(row["started"].replace("T", " ")[:19]))
    return table


def damaged_runs(rows: list[dict]) -> list[str]:
    """A line per run the listing could not read, saying why (the table only says 'damaged')."""
    return [f"[red]damaged:[/] {escape(row['stop_reason'] or row['path'])}" for row in rows
            if row["status"] == "damaged"]


def _accuracy_short(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def comparison_tables(comparison: "Comparison") -> list[Table]:
    """``gradfit compare``: the config keys that differ (``key: a -> b`` for two runs) and the metrics side by side."""
    names = comparison.labels
    config = titled_table("Config differences" + ("" if comparison.config else ": none"))
    config.add_column("key", style="bold")
    if len(names) == 2:
        config.add_column(f"{escape(names[0])} -> {escape(names[1])}")
        for key, (a, b) in comparison.config.items():
            config.add_row(escape(key), f"{escape(_yaml_value(a))} -> {escape(_yaml_value(b))}")
    else:
        for name in names:
            config.add_column(escape(name))
        for key, values in comparison.config.items():
            config.add_row(escape(key), *(escape(_yaml_value(v)) for v in values))
    metrics = titled_table("Metrics")
    metrics.add_column("metric", style="bold")
    for name in names:
        metrics.add_column(escape(name), justify="right")
    for key, values in comparison.metrics.items():
        metrics.add_row(key, *(escape(fmt(v, 6)) for v in values))
    return [config, metrics]


def _yaml_value(value: Any) -> str:
    """A config value as YAML spells it (null, true, [128, 64])."""
    return json.dumps(value) if not isinstance(value, str) else value
