"""The live display of a run's progress, shared by ``gradfit train`` and ``gradfit.fit(progress=True)``.

A spinner names what happens before the first step ('loading data', 'compiling'); then a progress bar on a
terminal (or in Jupyter, with ipywidgets installed), or plain log lines, at most 2 per second, anywhere else (a log
file, a notebook without ipywidgets). ``TrainProgress`` is a set of training callbacks
(``gradfit.training.loop.Callbacks``), ``WithDisplay`` tells it and a caller's own callbacks, and ``default_on`` is
when the Python API shows it unasked.

Training prints nothing unless handed a display, and Rich is imported once one shows something: a silent run
never loads it.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from typing import TYPE_CHECKING, Any

from gradfit.counts import number, rate

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.status import Status

    from gradfit.runs.rundir import Summary


def in_notebook() -> bool:
    """Whether this is an IPython kernel (Jupyter, VS Code or Colab notebooks), where Rich writes to the notebook.

    A terminal IPython has no kernel; IPython is never imported here, only asked when it is loaded already.
    """
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return getattr(shell, "kernel", None) is not None


def stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr (pythonw), or a closed one
        return False


def default_on() -> bool:
    """The Python API's default: progress when stderr is a terminal or in a notebook; silent in scripts whose
    output is redirected, in pipelines and in test runs."""
    return stderr_is_terminal() or in_notebook()


def live_display(console: Console) -> bool:
    """A bar updated in place: on a terminal, or in Jupyter where ipywidgets can redraw it (without ipywidgets
    Rich can only warn, so a notebook gets plain lines)."""
    if console.is_jupyter:
        return importlib.util.find_spec("ipywidgets") is not None
    return console.is_terminal


def _escape(text: str) -> str:
    from rich.markup import escape  # Rich once something is shown: a silent run does not import it

    return escape(text)


class Spinner:
    """A status line with a spinner, updated in place: what happens before there is anything to count."""

    status: Status | None = None
    console: Console

    def _spin(self, message: str) -> None:
        if self.status is None:
            self.status = self.console.status(f"{_escape(message)}...")
            self.status.start()
        else:
            self.status.update(f"{_escape(message)}...")

    def _stop_status(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


class TrainProgress(Spinner):
    """Training callbacks: a live progress bar on a terminal, plain log lines otherwise (at most 2 per second).

    Names are the keys of metrics.jsonl and summary.json, so the screen and the files say the same thing.
    """

    def __init__(self, console: Console, live: bool | None = None):
        self.console = console
        self.live = live_display(console) if live is None else live
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
            f"[bold]{_escape(info['model'])}[/] on [bold]{_escape(info['dataset'])}[/]: {info['num_params']:,} "
            f"parameters, {self.total:,} steps on {_escape(info['device'])} (traced in {info['trace_time_s']:.2f} s, "
            f"compiled in {info['compile_time_s']:.2f} s{cache}); log every {info['log_every']:,} steps, "
            f"evaluate every {info['eval_every']:,}",
            soft_wrap=True,
            highlight=False,
        )
        resumed = f" (resumed at step {self.start_step:,})" if self.start_step else ""
        self.console.print(f"run directory: {_escape(info['run_dir'])}{resumed}", soft_wrap=True)
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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
                batch_objective=number(self.shown.get("batch_objective", self.shown.get("objective"))),
                val=self._validation(),
                rate=self._rate(record),
            )
            return
        self._print_line(record)

    def _validation(self) -> str:
        """The bar's validation metric: accuracy of classes, RMSE of a numeric target."""
        key = "val_rmse" if "val_rmse" in self.shown else "val_accuracy"
        return f"{key} {number(self.shown.get(key), 4)}"

    def _rate(self, record: dict) -> str:
        elapsed = time.perf_counter() - self.started
        done = record["step"] - self.start_step
        return rate(done / elapsed) if elapsed > 0 and done else "-"

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
                parts.append(f"{key} {number(record[key], digits)}")
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


class WithDisplay:
    """Training callbacks that tell a display, then the caller's own callbacks (what ``gradfit.fit(progress=True,
    callbacks=...)`` trains with). A display that fails (a closed stderr) is dropped alone; the caller's hooks
    fail as they would without it."""

    def __init__(self, display: Any, callbacks: Any):
        self.display, self.callbacks = display, callbacks

    def _tell(self, hook: str, payload: Any) -> None:
        if self.display is not None:
            try:
                getattr(self.display, hook)(payload)
            except (Exception, SystemExit):  # Rich exits on a broken pipe
                self.display = None
        call = getattr(self.callbacks, hook, None)
        if call is not None:
            call(payload)

    def on_stage(self, message: str) -> None:
        self._tell("on_stage", message)

    def on_start(self, info: dict) -> None:
        self._tell("on_start", info)

    def on_log(self, record: dict) -> None:
        self._tell("on_log", record)

    def on_end(self, summary: Summary) -> None:
        self._tell("on_end", summary)
