"""Live progress of training, of sweeps and of a gradient check: a spinner before the work can be counted, then a
bar on a terminal or plain log lines elsewhere. Training's display (``TrainProgress``) lives below the command line,
in ``gradfit.training.progress``, because ``gradfit.fit(progress=True)`` shows it too."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.status import Status

from gradfit.cli.render.common import fmt, member_ranges
from gradfit.cli.render.gradients import METHOD_NAMES
from gradfit.training.progress import Spinner, TrainProgress

__all__ = ["GradcheckProgress", "SweepProgress", "TrainProgress"]


class SweepProgress(Spinner):
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


CHECK_STEPS = {  # what GradcheckProgress.on_method is told, as the spinner says it
    **METHOD_NAMES,
    "noise": "measuring the loss noise",
    "bisect": "narrowing a failing direction",
}


class GradcheckProgress(Spinner):
    """``compare-grads``' progress (``gradfit.gradients.gradcheck.CheckCallbacks``), for stderr.

    On a terminal: a spinner naming the stage, then a bar over the parameter groups naming the group and the method
    at work; both erased when closed, so the tables that follow stand alone. Elsewhere: a plain line per stage and
    per group.
    """

    def __init__(self, console: Console, live: bool | None = None):
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.status: Status | None = None
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.group = ""

    def on_stage(self, message: str) -> None:
        """'starting JAX', 'loading data', 'compiling the loss and its gradient', 'step-size sweep'."""
        self._stop_progress()
        if self.live:
            self._spin(message)
        else:
            self.console.print(f"{escape(message)}...", highlight=False, soft_wrap=True)

    def on_group(self, index: int, total: int, name: str, size: int) -> None:
        """Group ``index`` (from 0) of ``total`` starts."""
        self.group = f"{escape(name)} ({size:,} entr{'y' if size == 1 else 'ies'})"
        if not self.live:
            self.console.print(f"group {index + 1} of {total}: {self.group}...", highlight=False, soft_wrap=True)
            return
        self._stop_status()
        if self.progress is None:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("checking {task.description}"),
                BarColumn(bar_width=20),
                TextColumn("{task.completed}/{task.total} groups"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task(self.group, total=total)
        self._describe(self.group, completed=index)

    def on_method(self, method: str) -> None:
        """A method starts on the current group (a key of ``CHECK_STEPS``)."""
        self._describe(f"{self.group}: {CHECK_STEPS.get(method, escape(method))}")

    def _describe(self, description: str, completed: int | None = None) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, description=description, completed=completed, refresh=True)

    def _stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.task = None

    def close(self) -> None:
        self._stop_status()
        self._stop_progress()
