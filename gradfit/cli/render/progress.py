"""Live progress of training and of sweeps: a spinner before the first step, then a bar on a terminal or plain
log lines elsewhere."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.status import Status

from gradfit.cli.render.common import fmt, member_ranges

if TYPE_CHECKING:
    from gradfit.runs.rundir import Summary


class _Spinner:
    """A status line with a spinner on a terminal, updated in place: what happens before the first step."""

    status: Status | None = None
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

    def __init__(self, console: Console, live: bool | None = None):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.progress: Progress | None = None
        self.status: Status | None = None
        self.task: TaskID | None = None
        self.total = 0
        self.eval_every = 1
        self.start_step = 0
        self.last_print = 0.0
        self.started = 0.0
        self.unprinted: dict | None = None
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
            info["compile_cache"], ""
        )
        self.console.print(
            f"[bold]{escape(info['model'])}[/] on [bold]{escape(info['dataset'])}[/]: {info['num_params']:,} "
            f"parameters, {self.total:,} steps on {escape(info['device'])} (traced in {info['trace_time_s']:.2f} s, "
            f"compiled in {info['compile_time_s']:.2f} s{cache}); log every {info['log_every']:,} steps, "
            f"evaluate every {info['eval_every']:,}",
            soft_wrap=True,
            highlight=False,
        )
        resumed = f" (resumed at step {self.start_step:,})" if self.start_step else ""
        self.console.print(f"run directory: {escape(info['run_dir'])}{resumed}", soft_wrap=True)
        if self.live:
            self.progress = Progress(
                TextColumn("[bold blue]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("batch_objective {task.fields[batch_objective]}"),
                TextColumn("{task.fields[val]}"),
                TextColumn("{task.fields[rate]} steps/s"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=self.total, completed=self.start_step, batch_objective="-", val="val -", rate="-"
            )

    def on_log(self, record: dict) -> None:
        # a chunk delivers up to a hundred records at once: only what is shown costs anything
        self.shown.update({k: v for k, v in record.items() if v is not None})
        now = time.perf_counter()
        evaluated = record["step"] % self.eval_every == 0  # evaluations are always shown
        due = (
            record["step"] in (0, self.total)
            or evaluated
            or now - self.last_print >= (0.1 if self.progress is not None else 0.5)
        )
        self.unprinted = record
        if not due:
            return
        self.last_print = now
        if self.progress is not None and self.task is not None:
            self.progress.update(
                self.task,
                completed=record["step"],
                batch_objective=fmt(self.shown.get("batch_objective", self.shown.get("objective"))),
                val=self._validation(),
                rate=self._rate(record),
            )
            return
        self._print_line(record)

    def _validation(self) -> str:
        """The bar's validation metric: accuracy of classes, RMSE of a numeric target."""
        key = "val_rmse" if "val_rmse" in self.shown else "val_accuracy"
        return f"{key} {fmt(self.shown.get(key), 4)}"

    def _rate(self, record: dict) -> str:
        elapsed = time.perf_counter() - self.started
        done = record["step"] - self.start_step
        return fmt(done / elapsed, 3) if elapsed > 0 and done else "-"

    def _print_line(self, record: dict) -> None:
        self.unprinted = None
        rate = self._rate(record)
        parts = [f"step {record['step']}/{self.total}", f"epoch {record['epoch']:.2f}"]
        for key, digits in (
            ("batch_objective", 4),
            ("batch_grad_norm", 3),
            ("objective", 4),
            ("grad_norm", 3),
            ("val_loss", 4),
            ("val_accuracy", 4),
            ("val_rmse", 4),
            ("val_r2", 4),
            ("learning_rate", 3),
        ):
            if record.get(key) is not None:
                parts.append(f"{key} {fmt(record[key], digits)}")
        parts.append(f"{rate} steps/s")
        self.console.print("  ".join(parts), highlight=False, soft_wrap=True)

    def on_end(self, summary: Summary) -> None:
        if self.unprinted is not None:  # the newest record, where the display last skipped it
            if self.progress is None:
                self._print_line(self.unprinted)
            elif self.task is not None:
                self.progress.update(self.task, completed=self.unprinted["step"])
        self.close()

    def close(self) -> None:
        self._stop_status()
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class SweepProgress(_Spinner):
    """Sweep callbacks: one bar for the block in training and a line per member as it finishes (plain lines
    when not on a terminal)."""

    def __init__(self, console: Console, live: bool | None = None):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.status: Status | None = None
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def on_stage(self, message: str) -> None:
        if self.live:
            self._spin(message)
        else:
            self.console.print(f"{message}...", highlight=False)

    def on_block(self, info: dict) -> None:
        self._stop()
        members = info["members"]
        padded = info["parallel"] - len(members)
        self.console.print(
            f"group {info['group'] + 1}: members {member_ranges(members)} side by side"
            + (f" (+{padded} padding)" if padded else "")
            + (f", from step {info['start_step']:,}" if info["start_step"] else ""),
            highlight=False,
        )
        if self.live:
            self.progress = Progress(
                TextColumn("[bold blue]sweep"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[active]} members training"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "sweep", total=info["total_steps"], completed=info["start_step"], active=len(members)
            )

    def on_chunk(self, step: int, total_steps: int, active: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=step, active=active)

    def on_member(self, entry: dict) -> None:
        final = entry.get("final") or {}
        colour = {"completed": "green", "failed": "red"}.get(entry["status"], "yellow")
        self.console.print(
            f"  member {entry['index']} ({escape(entry['label'] or 'base config')}): "
            f"[{colour}]{entry['status']}[/] at step {entry['steps']:,}, val_loss "
            f"{fmt(final.get('val_loss'))}, "
            + (
                f"val_rmse {fmt(final['val_rmse'])}"
                if "val_rmse" in final
                else f"val_accuracy {fmt(final.get('val_accuracy'))}"
            )
            + ("" if entry["status"] == "completed" else f" ({escape(entry['stop_reason'])})"),
            highlight=False,
            soft_wrap=True,
        )

    def _stop(self) -> None:
        self._stop_status()
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def close(self) -> None:
        self._stop()
