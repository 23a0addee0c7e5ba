"""The host side of training: log points, evaluations, early stopping, checkpoints, stopping rules, the summary.

The loop dispatches the compiled chunk (see ``gradfit.training.programs``), which reports every log point it covers, and waits
for it: a chunk runs up to the next evaluation, checkpoint or the last step, and covers as many log windows as fit
in about ``CHUNK_SECONDS``, so a log point costs no dispatch of its own. Then the loop writes the chunk's records,
evaluates when due, updates early stopping, checkpoints when due and decides whether to go on. Everything it
carries from one chunk to the next is in the train state, ``LoopState`` and ``EarlyStopping``, and all three go
into every checkpoint: that is what makes a resumed run bit-identical to an uninterrupted one (see
``gradfit.training.resume``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pydantic
from pydantic import ConfigDict, Field

from gradfit.runs import checkpoints
from gradfit.core import precision
from gradfit.runs import rundir
from gradfit.config.load import GradfitConfig, to_yaml
from gradfit.errors import GradfitError, Interrupted, TrainingFailed, first_line
from gradfit.core.models import count_params, named_leaves
from gradfit.training.programs import (MAX_WINDOWS, WINDOW_ROWS, Plan, Prepared, Programs, TrainState, compile_programs,
                           eval_parts, prepare)

CHUNK_SECONDS = 0.1  # chunks grow to about this long: a dispatch costs ~0.2 ms, and Ctrl-C waits for one chunk


class Callbacks:
    """Progress hooks; the engine prints nothing itself. Override what you need."""

    def on_stage(self, message: str) -> None:
        """Before the first step: 'loading data', 'compiling', ..."""

    def on_start(self, info: dict) -> None: ...

    def on_log(self, record: dict) -> None: ...

    def on_end(self, summary: rundir.Summary) -> None: ...


@dataclasses.dataclass
class EarlyStopping:
    """Early-stopping state, updated at each evaluation with its validation metrics."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # checked like this when read back from a checkpoint

    monitor: Literal["val_loss", "val_accuracy"]  # val_loss: lower is better; val_accuracy: higher is better
    patience: Annotated[int, Field(ge=1, strict=True)]
    min_delta: Annotated[float, Field(ge=0, strict=True)]
    best: Annotated[Optional[float], Field(strict=True)] = None
    best_step: Annotated[Optional[int], Field(ge=0, strict=True)] = None
    bad_checks: Annotated[int, Field(ge=0, strict=True)] = 0  # evaluations in a row without improvement
    best_record: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, config: GradfitConfig, saved: Optional["EarlyStopping"] = None) -> Optional["EarlyStopping"]:
        """None when early stopping is off; the saved state continues when it watched the same metric."""
        settings = config.train.early_stopping
        if settings.monitor is None:
            return None
        stopper = cls(settings.monitor, settings.patience, settings.min_delta)
        if saved is not None and saved.monitor == settings.monitor:
            stopper = dataclasses.replace(saved, patience=settings.patience, min_delta=settings.min_delta)
        return stopper

    def update(self, record: dict) -> bool:
        """Record one evaluation; True when it is the new best."""
        value = record[self.monitor]
        gain = value - self.best if self.best is not None and value is not None else None
        if self.monitor == "val_loss" and gain is not None:
            gain = -gain
        if self.best is None or (gain is not None and gain > self.min_delta):
            self.best, self.best_step, self.bad_checks, self.best_record = value, record["step"], 0, record
            return True
        self.bad_checks += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.bad_checks >= self.patience


@dataclasses.dataclass
class LoopState:
    """What the loop carries between log points, besides the train state."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    step: Annotated[int, Field(ge=0, strict=True)] = 0
    elapsed_s: Annotated[float, Field(ge=0, strict=True)] = 0.0  # wall time of the run's earlier sessions
    train_time_s: Annotated[float, Field(ge=0, strict=True)] = 0.0  # training steps and log points
    eval_time_s: Annotated[float, Field(ge=0, strict=True)] = 0.0  # evaluations
    evaluations: Annotated[int, Field(ge=0, strict=True)] = 0
    last: dict = dataclasses.field(default_factory=dict)  # the last log record
    resumes: list = dataclasses.field(default_factory=list)
    started: Optional[str] = None  # ISO time the run's first session started
    best: dict = dataclasses.field(default_factory=dict)  # best val_loss / val_accuracy evaluated, and their steps

    def note_best(self, record: dict) -> None:
        """Keep the best validation metrics seen (lower loss, higher accuracy) for summary.json."""
        for key, sign in (("val_loss", 1), ("val_accuracy", -1)):
            value, best = record.get(key), self.best.get(key)
            if value is not None and np.isfinite(value) and (best is None or sign * value < sign * best):
                self.best[key], self.best[f"{key}_step"] = value, record["step"]


def fit(config: GradfitConfig, out_dir: str | Path = "runs", callbacks: Optional[Callbacks] = None) -> rundir.Summary:
    """Train as the config says and write a new run directory; returns the summary (also in summary.json).

    Raises:
        GradfitError: bad data, settings or device (before the run directory is created).
        TrainingFailed: the loss or parameters became non-finite (summary.json says why).
        Interrupted: SIGINT or SIGTERM; a checkpoint was written first.
    """
    with precision.of(config).scope():
        started = time.perf_counter()
        callbacks = stage(callbacks, "loading data")
        run = prepare(config)  # everything that can reject the input happens before the run directory exists
        callbacks = stage(callbacks, "compiling")
        programs = compile_programs(run)
        loop = LoopState(started=timestamp())
        if not run.topology.writes:  # another process of a distributed run: it computes, process 0 writes
            return Session(run, programs, None, started, callbacks, run.state, loop,
                           EarlyStopping.from_config(config)).train()
        with contextlib.ExitStack() as held:  # the lock, held from the folder's creation to the end of training
            with rundir.RunDir.fresh(out_dir, config.name) as run_dir:  # removed if anything fails before training
                held.enter_context(run_dir.locked())
                session = Session(run, programs, run_dir, started, callbacks, run.state, loop,
                                  EarlyStopping.from_config(config))
                run_dir.begin(to_yaml(config, config_header(run.topology)), run.dataset.preprocessing())
            return session.train()


def stage(callbacks: Optional[Callbacks], message: str) -> Optional[Callbacks]:
    """Tell the callbacks what is being prepared; a failing display is dropped (returns None), not fatal."""
    hook = getattr(callbacks, "on_stage", None)  # callbacks need not subclass Callbacks: missing hooks are no-ops
    if hook is not None:
        try:
            hook(message)
        except (Exception, SystemExit):
            return None
    return callbacks


@dataclasses.dataclass(frozen=True)
class StopRule:
    status: str  # completed | interrupted | failed
    reason: str


@dataclasses.dataclass
class Session:
    """One process's part of a run: the compiled programs, the evolving state, where to write, and the clocks.

    Every process of a distributed run has a session and runs the same programs in the same order; only process
    0's has a ``run_dir`` and writes.
    """

    run: Prepared
    programs: Programs
    run_dir: Optional[rundir.RunDir]  # None: another process writes the run directory
    started: float
    callbacks: Optional[Callbacks]
    state: TrainState
    loop: LoopState
    stopper: Optional[EarlyStopping]
    best: Any = None  # the best parameters under early stopping (a copy: the state is donated to each chunk)
    path: Optional[Path] = None  # the newest checkpoint
    callback_error: Optional[str] = None
    last_finite: Optional[str] = None  # "objective 0.31" before the chunk that diverged
    mark: float = 0.0  # training time is counted from here to the next log point
    dispatched: float = 0.0  # when the chunk in flight was dispatched
    windows: int = 1  # log windows the next chunk may cover
    _digest: Optional[str] = None

    def __post_init__(self):
        self.device_name = self.run.topology.name
        self.loggers = None if self.run_dir is None else self.run_dir.open_loggers(self.run.config.train.loggers)

    @property
    def where(self) -> str:
        """The run directory, or who writes it."""
        if self.run_dir is not None:
            return str(self.run_dir)
        topology = self.run.topology
        return (f"written by process 0 (this is process {topology.process_index} of "
                f"{topology.process_count})")

    def train(self) -> rundir.Summary:
        """Run chunks until a stop rule fires, then write the outputs; raise unless training completed."""
        try:
            return self._train()
        finally:
            if self.run.feed is not None:
                self.run.feed.close()

    def _train(self) -> rundir.Summary:
        plan, loop, programs = self.run.plan, self.loop, self.programs
        # from here on SIGINT/SIGTERM only set a flag: the chunk in flight and the outputs are always completed
        with StopRequests() as stop:
            self.notify("on_start", {
                "run_dir": self.where, "device": self.device_name, "total_steps": plan.total_steps,
                "start_step": loop.step, "steps_per_epoch": plan.steps_per_epoch, "log_every": plan.log_every,
                "eval_every": plan.eval_every, "num_params": count_params(self.state.params),
                "trace_time_s": programs.trace_time_s, "compile_time_s": programs.compile_time_s,
                "compile_cache": programs.cache, "dataset": self.run.dataset.name, "model": self.run.config.model.kind,
                "process": self.run.topology.process_index, "processes": self.run.topology.process_count,
            })
            try:
                rule = self.run_chunks(stop)
                summary = self.finish(rule.status, rule.reason)
            except BaseException as exc:  # never leave a run directory that looks healthy after a crash
                # in a group of processes a collective that fails means another process died or stopped
                lost = self.run.topology.process_count > 1 and isinstance(exc, jax.errors.JaxRuntimeError)
                reason = f"lost contact with another process ({first_line(exc)})" if lost else \
                    f"crashed: {one_line(exc)}"
                recorded = False
                with contextlib.suppress(Exception):
                    # alone: the other processes are not in step with this one for a final evaluation
                    self.finish("failed", reason, alone=True)
                    recorded = True
                if lost:
                    where = (f"{self.run_dir}/summary.json says failed. Resume from the newest checkpoint with: "
                             f"{self.resume_command}") if self.run_dir is not None and recorded else \
                        "process 0 reports how to resume"
                    raise TrainingFailed(f"{reason}: a process of the group died or was stopped; {where}") from None
                if isinstance(exc, OSError):
                    said = "the run's summary.json says failed" if recorded else "summary.json could not be written either"
                    raise TrainingFailed(f"{self.where}: {exc}; {said}") from None
                raise
        self.notify("on_end", summary)
        self.raise_unless_completed(summary)
        return summary

    def run_chunks(self, stop: "StopRequests") -> StopRule:
        """Dispatch chunks, log, evaluate, update early stopping, checkpoint when due; the rule that stopped."""
        self.mark = time.perf_counter()
        while True:
            start = self.loop.step
            end = self.next_end()
            rule = self.absorb(start, end, self.read(self.dispatch(end - start), start, end), stop)
            if rule is not None:
                return rule

    def next_end(self) -> int:
        """Where the next chunk ends (a new full-batch run first logs its starting point: a chunk of no step)."""
        start, plan = self.loop.step, self.run.plan
        return start if start == 0 and plan.full_batch and not self.loop.last else self.chunk_end(start)

    def absorb(self, start: int, end: int, metrics: dict, stop: "StopRequests") -> Optional[StopRule]:
        """Log the chunk that ran from ``start`` to ``end`` (its metrics read back), evaluate and checkpoint where
        due; the rule that stops the run here, or None."""
        loop = self.loop
        loop.step = int(metrics["step"])  # before ``end`` when a full-batch run converges within the chunk
        if end > start:
            records = _window_records(self.run, start, loop.step, metrics, self.elapsed())
        else:
            records = [_log_record(self.run, start, 0, dict(zip(END_ROWS, metrics["end"])), self.elapsed())]
        if not records:  # a chunk stops early only below tol, which its last record shows: never here
            raise RuntimeError(f"a chunk from step {start} took no step")
        if not metrics["finite"]:
            return self.log(records, stop, diverged=True)
        rule = self.log(records, stop)
        if rule is not None or _checkpoint_due(loop.step, loop.step - start, self.run.config.train.checkpoint_every):
            self.checkpoint(finished=rule.reason if rule is not None and rule.status == "completed" else None)
        return rule

    def chunk_end(self, start: int) -> int:
        """Where the chunk from ``start`` ends: at the next evaluation, checkpoint or the last step, and after at
        most ``self.windows`` log windows (grown until a chunk takes about ``CHUNK_SECONDS``)."""
        plan, every = self.run.plan, self.run.config.train.checkpoint_every
        end = min((start // plan.eval_every + 1) * plan.eval_every, plan.total_steps,
                  (start // plan.log_every + self.windows) * plan.log_every)
        if every:
            end = min(end, plan.point_at_or_after((start // every + 1) * every))
        if self.run.feed is not None:  # a chunk reads one group of streamed minibatches
            end = min(end, self.run.feed.group_end(start))
        return end

    def dispatch(self, steps: int) -> dict:
        """Start ``steps`` optimizer steps on the device; returns their metrics (arrays, not yet waited for)."""
        data = self.run.chunk_data(self.loop.step)
        self.dispatched = time.perf_counter()  # after a streamed group was waited for: that is not device time
        self.state, metrics = self.programs.chunk(self.state, data, np.int32(steps))
        return metrics

    def read(self, metrics: dict, start: int, end: int) -> dict:
        """Wait for a chunk's metrics; its time counts as training time and sizes the next chunk."""
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        self.windows = next_windows(now - self.dispatched, start, end, self.run.plan.log_every, self.windows)
        self.loop.train_time_s += now - self.mark
        self.mark = now
        return metrics

    def log(self, records: list[dict], stop: "StopRequests", diverged: bool = False) -> Optional[StopRule]:
        """Evaluate where due, write the chunk's records, update early stopping; the rule that stops the run here.

        A diverged chunk's records are written up to the first non-finite one, and the run fails there.
        """
        plan, loop = self.run.plan, self.loop
        if diverged:
            first_bad = next((i for i, r in enumerate(records) if not _finite_record(r)), len(records) - 1)
            records = records[:first_bad + 1]
            loop.step = records[-1]["step"]
        last = loop.last = records[-1]
        evaluated = False
        if not diverged and plan.evaluates_at(last["step"]):
            self.attach_evaluation(last)
            evaluated = True
        rule = StopRule("failed", f"diverged: non-finite loss or parameters at step {loop.step}") if diverged \
            else stop_rule(self.run.config, plan, loop, self.stopper, None)
        if rule is not None and rule.status == "completed" and not evaluated:
            self.attach_evaluation(last, final=True)  # every run that completes ends with an evaluation
        if self.run_dir is not None:
            self.run_dir.append_metrics(records)
            self.loggers.append(records)
        for record in records:
            loop.note_best(record)
            self.notify("on_log", record)
            if _finite_record(record):
                self.last_finite = _objective_text(record) or self.last_finite
        if diverged:
            return rule
        # a signal, even one that arrived while the records were shown, stops the run at this chunk's end; a
        # signal to any process of a distributed run stops them all at the same step
        stopping, self.windows = self.run.topology.agree(stop.signal_name is not None, self.windows)
        signal_name = stop.signal_name or ("a signal to another process" if stopping else None)
        return rule or stop_rule(self.run.config, plan, loop, self.stopper, signal_name)

    def restart_metrics(self, step: int) -> None:
        """A resumed run logs the steps after its checkpoint at ``step`` again: set their records aside first."""
        self.run_dir.truncate_metrics(step)
        if self.loggers.active:  # metrics.csv and event files: made again from what metrics.jsonl kept
            self.loggers.rebuild(self.run_dir.metrics())

    def attach_evaluation(self, record: dict, final: bool = False) -> None:
        """Evaluate the current parameters into ``record`` (its step's), and let early stopping see them."""
        final = final or record["step"] >= self.run.plan.total_steps
        record.update(self.evaluation(self.state.params, final=final))
        if self.stopper is not None and self.stopper.update(record):
            self.best = jax.tree_util.tree_map(jnp.copy, self.state.params)

    def evaluation(self, params, final: bool = False, **parts: bool) -> dict:
        """The scheduled evaluation of ``params`` (the run's last with ``final``), or the ``parts`` named; read
        back, and its time is not training time."""
        plan = self.run.plan
        if not parts:
            parts = {"train": not plan.full_batch, "gradient": plan.eval_gradient or final, "val": True}
            self.loop.evaluations += 1
        tick = time.perf_counter()
        result = jax.device_get(self.programs.evaluate(params, self.run.data, eval_parts(**parts)))
        spent = time.perf_counter() - tick
        self.loop.eval_time_s += spent
        self.mark += spent
        return _evaluation_fields(result, parts, self.run.dataset)

    def notify(self, hook: str, payload: dict) -> None:
        """Call a progress hook; one that fails (a closed pipe under the progress display) is dropped, not fatal."""
        call = getattr(self.callbacks, hook, None)
        if call is None:
            return
        try:
            call(payload)
        except (Exception, SystemExit) as exc:  # Rich exits on a broken pipe
            self.callbacks, self.callback_error = None, one_line(exc)

    def elapsed(self) -> float:
        return self.loop.elapsed_s + time.perf_counter() - self.started

    @property
    def data_digest(self) -> str:
        if self._digest is None:
            self._digest = self.run.dataset.digest()
        return self._digest

    def probe(self, params) -> float:
        """The objective over the first training rows, which a resume must reproduce bit for bit."""
        result = jax.device_get(self.programs.evaluate(params, self.run.data, eval_parts(probe=True)))
        return float(result["probe"])

    def checkpoint(self, finished: Optional[str]) -> None:
        tick = time.perf_counter()
        probe = self.probe(self.state.params)  # every process: the evaluation is one program over the mesh
        if self.run_dir is not None:
            arrays = _named("state", jax.device_get(self.state))
            if self.best is not None:
                arrays.update(_named("best", jax.device_get(self.best)))
            config = self.run.config.model_dump(mode="json")
            meta = {
                "config": config,
                "config_hash": checkpoints.config_hash(config),
                "loop": {**dataclasses.asdict(self.loop), "elapsed_s": self.elapsed()},
                "early_stopping": None if self.stopper is None else dataclasses.asdict(self.stopper),
                "finished": finished,
                "probe": probe,
                "data_digest": self.data_digest,
                "device": self.device_name,
                "versions": rundir.versions(),
            }
            self.path = checkpoints.save(self.run_dir.path, self.loop.step, arrays, meta,
                                         self.run.config.train.keep_checkpoints)
        self.mark += time.perf_counter() - tick

    def finish(self, status: str, reason: str, alone: bool = False) -> rundir.Summary:
        """Save the parameters that count (the best under early stopping) and write summary.json.

        ``alone``: after a crash of this process, when the others of a distributed run cannot join in a final
        evaluation; the summary then has only the metrics already logged.
        """
        run, config, loop, stopper = self.run, self.run.config, self.loop, self.stopper
        use_best = self.best is not None
        saved = status != "failed" or use_best  # diverged parameters are never saved as a result
        params = self.best if use_best else self.state.params
        writes = self.run_dir is not None
        final: dict = {}
        if saved:
            if writes:
                self.run_dir.save_params(named_leaves(jax.device_get(params)))
            record = stopper.best_record if use_best else loop.last
            final = record if alone and run.topology.process_count > 1 else self.final_metrics(params, record)
        elif writes:  # an earlier session's parameters are not this one's result
            self.run_dir.set_aside_params()
        programs = self.programs
        steps_per_s = loop.step / loop.train_time_s if loop.train_time_s > 0 and loop.step else None
        summary = rundir.Summary(
            run_dir=None if self.run_dir is None else str(self.run_dir),  # None: process 0 writes it
            status=status,
            stop_reason=reason,
            name=config.name,
            started=loop.started,
            model=config.model.kind,
            optimizer=config.optimizer.name,
            dataset=run.dataset.name,
            device=self.device_name,
            **run.topology.describe(),
            precision=config.runtime.precision,
            num_params=count_params(params),
            rows={"train": len(run.dataset.train), "val": len(run.dataset.val), "test": len(run.dataset.test)},
            steps=loop.step,
            epochs=loop.step / run.plan.steps_per_epoch,
            params_step=final.get("step"),
            log_every=run.plan.log_every,
            eval_every=run.plan.eval_every,
            evaluations=loop.evaluations,
            wall_time_s=self.elapsed(),
            trace_time_s=programs.trace_time_s,
            compile_time_s=programs.compile_time_s,
            compile_cache=programs.cache,
            train_time_s=loop.train_time_s,
            eval_time_s=loop.eval_time_s,
            steps_per_s=steps_per_s,
            objective=final.get("objective"),
            grad_norm=final.get("grad_norm"),
            final={key: final.get(key) for key in FINAL_KEYS},
            best=dict(loop.best),
            early_stopping=None if stopper is None else {
                k: v for k, v in dataclasses.asdict(stopper).items() if k != "best_record"},
            checkpoint=None if self.path is None else str(self.path),
            resumes=loop.resumes,
            versions=rundir.versions(),
            progress_display_error=self.callback_error,
        )
        if writes:
            self.run_dir.write_summary(summary)
        return summary

    def final_metrics(self, params, record: dict) -> dict:
        """Every metric of the saved parameters: what their log record has, the rest evaluated now."""
        has = {
            "train": record.get("objective") is not None,
            "gradient": record.get("grad_norm") is not None,
            "val": record.get("val_loss") is not None or not len(self.run.dataset.val),
        }
        missing = {part: not present for part, present in has.items()}
        missing["train"] |= missing["gradient"]  # the gradient comes with the training-split pass
        missing["test"] = len(self.run.dataset.test) > 0
        evaluated = self.evaluation(params, **missing) if any(missing.values()) else {}
        # what was logged stays as logged (the pass with the gradient can round the objective differently)
        return {**evaluated, **{k: v for k, v in record.items() if v is not None}}

    @property
    def resume_command(self) -> str:
        command = f"gradfit train --resume {shlex.quote(self.where)}"
        if self.run.topology.process_count > 1:
            command += (" --distributed, in every process, with the coordinator and number of processes it "
                        "started with")
        return command

    def raise_unless_completed(self, summary: rundir.Summary) -> None:
        resume_command = self.resume_command
        if summary.status == "interrupted":
            if self.run_dir is None:
                raise Interrupted(f"{summary.stop_reason}; process 0 wrote the checkpoint and prints the "
                                  "command that resumes the run", summary)
            raise Interrupted(f"{summary.stop_reason}; checkpoint written to {self.path}. "
                              f"Resume with: {resume_command}", summary)
        if summary.status == "failed":
            lbfgs = self.run.config.optimizer.name == "lbfgs"
            hint = "check model.l2 and data.standardize" if lbfgs else \
                "lower optimizer.learning_rate or set optimizer.clip_norm"
            if self.run_dir is None:
                where = "Process 0 reports where to resume from"
            elif self.path is not None:
                key = "model.l2" if lbfgs else "optimizer.learning_rate"
                step = checkpoints.step_of(self.path)
                first = _logged_objective(self.run_dir, None)
                where = (f"The newest checkpoint, {self.path} (step {step}, {_logged_objective(self.run_dir, step)}; "
                         f"first logged: {first}), is intact; continue from it with: {resume_command} "
                         f"--set {key}=... --force, or start again if its objective is already far above the start")
            else:
                where = f"No checkpoint was written before it; run directory: {self.run_dir}"
            raise TrainingFailed(f"training diverged at step {self.loop.step} (last finite "
                                 f"{self.last_finite or 'objective: none'}); {hint}. {where}", summary)


def next_windows(spent: float, start: int, end: int, log_every: int, current: int) -> int:
    """Log windows the next chunk may cover to take about ``CHUNK_SECONDS``, from the ``spent`` seconds of the chunk
    from ``start`` to ``end`` (per window it was asked to cover); ``current`` after a chunk of no step."""
    if end <= start:
        return current
    windows = (end - 1) // log_every - start // log_every + 1
    return max(1, min(MAX_WINDOWS, int(CHUNK_SECONDS / max(spent / windows, 1e-6))))


FINAL_KEYS = ("train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy")


def _checkpoint_due(step: int, steps_just_run: int, every: Optional[int]) -> bool:
    """At the first log point at or past each multiple of ``every``: a rule of the step alone, so resumable."""
    return bool(every) and step // every > (step - steps_just_run) // every


def _objective_text(record: dict) -> Optional[str]:
    """'objective 0.31' (whole split) or 'batch_objective 0.33' (running mean), whichever the record has."""
    for key in ("objective", "batch_objective"):
        value = record.get(key)
        if isinstance(value, float) and np.isfinite(value):
            return f"{key}: {value:.6g}"
    return None


def _logged_objective(run_dir: rundir.RunDir, step: Optional[int]) -> str:
    """The objective metrics.jsonl holds for ``step`` (None: the first record), as text; '?' when not there."""
    with contextlib.suppress(OSError, GradfitError):
        for record in run_dir.metrics():
            if step is None or record.get("step") == step:
                return _objective_text(record) or "?"
    return "?"


def one_line(exc: BaseException) -> str:
    """An exception as one line: the first pydantic error, or 'Type: message'."""
    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors()[0]
        where = ".".join([exc.title, *map(str, first["loc"])])
        return f"{where}: {first['msg']}"
    return f"{type(exc).__name__}: {exc}"


def stop_rule(config: GradfitConfig, plan: Plan, loop: LoopState, stopper: Optional[EarlyStopping],
              signal_name: Optional[str]) -> Optional[StopRule]:
    """Why the run stops at this log point, or None. Finishing rules win over signals."""
    tol, grad_norm = config.train.tol, loop.last.get("grad_norm")
    if loop.step >= plan.total_steps:
        return StopRule("completed", "completed all steps")
    if tol is not None and grad_norm is not None and grad_norm < tol:
        return StopRule("completed", f"converged: grad_norm {grad_norm:.3g} < tol {tol:g}")
    if stopper is not None and stopper.exhausted:
        return StopRule("completed", f"early stopping: {stopper.monitor} did not improve by more than "
                                     f"{stopper.min_delta:g} in {stopper.patience} evaluations; best "
                                     f"{stopper.best:.6g} at step {stopper.best_step}")
    if signal_name:
        return StopRule("interrupted", f"{signal_name} at step {loop.step}")
    return None


class StopRequests:
    """Within the block, SIGINT, SIGTERM and SIGHUP (a closed ssh session) are recorded instead of raised (main
    thread only)."""

    def __init__(self):
        self.signal_name: Optional[str] = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _named(prefix: str, tree) -> dict[str, np.ndarray]:
    return {f"{prefix}/{name}": np.asarray(leaf) for name, leaf in named_leaves(tree).items()}


END_ROWS = ("objective", "train_loss", "grad_norm")  # what a full-batch chunk reports of its end state


def _window_records(run: Prepared, start: int, end: int, metrics: dict, elapsed: float) -> list[dict]:
    """One record per log window of a chunk that ran from ``start`` to ``end``."""
    every, records = run.plan.log_every, []
    for w, window_start in enumerate(range(start // every * every, end, every)):
        lo, hi = max(window_start, start), min(window_start + every, end)
        columns = {name: float(metrics["windows"][row, w]) for row, name in enumerate(WINDOW_ROWS)}
        records.append(_log_record(run, hi, hi - lo, columns, elapsed))
    return records


def _log_record(run: Prepared, step: int, steps: int, window: dict, elapsed: float) -> dict:
    """One line of metrics.jsonl. ``batch_*``: means over the ``steps`` since the previous record (None at step
    0); ``objective``, ``train_loss``, ``grad_norm`` (whole training split) and ``val_*``: where computed, else
    None. ``elapsed_s``: the wall time when the chunk that computed it ended (its records share it)."""
    record = dict.fromkeys(rundir.RECORD_KEYS)
    record.update(step=step, epoch=step / run.plan.steps_per_epoch, elapsed_s=elapsed)
    if steps:
        record.update(batch_objective=window["objective_sum"] / steps, batch_grad_norm=window["grad_norm_sum"] / steps,
                      learning_rate=window["learning_rate"])
    if run.plan.full_batch:  # the state carries them: at every log point for free
        record.update({key: float(window[key]) for key in ("objective", "train_loss", "grad_norm")})
    return record


def _finite_record(record: dict) -> bool:
    return all(np.isfinite(v) for k, v in record.items() if isinstance(v, float))


def _evaluation_fields(result: dict, parts: dict, dataset) -> dict:
    """Record fields from an evaluation's raw output: the parts computed; accuracies as exact fractions."""
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


def config_header(topology) -> str:
    return rundir.config_header(topology.describe(), topology.name)


def timestamp() -> str:
    """Now, as summary.json records when a run started."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
