"""The host side of a run: the loop of chunks, log points, evaluations, checkpoints and stopping rules.

The loop dispatches the compiled chunk (``gradfit.training.programs``), which reports every log point it covers,
and waits for it: a chunk runs up to the next evaluation, checkpoint or the last step, and covers as many log
windows as fit in about ``CHUNK_SECONDS``, so a log point costs no dispatch of its own. Then the loop writes the
chunk's records, evaluates when due, updates early stopping, checkpoints when due and decides whether to go on.
What a checkpoint holds is ``gradfit.training.payload``'s, the stopping rules ``gradfit.training.stopping``'s,
summary.json ``gradfit.training.summary``'s and the messages of a run that did not complete
``gradfit.training.failures``'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradfit.config.load import to_yaml
from gradfit.core.models import count_params, count_zero_weights, named_leaves
from gradfit.runs import checkpoints, rundir
from gradfit.training import failures, payload, summary
from gradfit.training.evaluate import eval_parts
from gradfit.training.payload import LoopState
from gradfit.training.prepare import Prepared, Programs
from gradfit.training.programs import MAX_WINDOWS, TrainState
from gradfit.training.records import (
    END_ROWS,
    Units,
    finite_record,
    log_record,
    objective_text,
    record_fields,
    window_records,
)
from gradfit.training.stopping import EarlyStopping, Status, StopRequests, StopRule, stop_rule

CHUNK_SECONDS = 0.1  # chunks grow to about this long: a dispatch costs ~0.2 ms, and Ctrl-C waits for one chunk


@dataclasses.dataclass(frozen=True)
class Trained:
    """What a run leaves in memory: its summary, the parameters that count and the preprocessing record (what
    params.npz and preprocessing.json hold)."""

    summary: rundir.Summary
    params: Any
    preprocessing: dict


def stage(callbacks: Any, message: str) -> Any:
    """Tell the callbacks what is being prepared; a failing display is dropped (returns None), not fatal."""
    hook = getattr(callbacks, "on_stage", None)  # callbacks need not subclass Callbacks: missing hooks are no-ops
    if hook is not None:
        try:
            hook(message)
        except (Exception, SystemExit):
            return None
    return callbacks


@dataclasses.dataclass
class Session:
    """One process's part of a run: the compiled programs, the evolving state, where to write, and the clocks.

    Every process of a distributed run has a session and runs the same programs in the same order; only process
    0's has a ``run_dir`` and writes.
    """

    run: Prepared
    programs: Programs
    run_dir: rundir.RunDir | None  # None: another process writes the run directory
    started: float
    callbacks: Any  # a Callbacks, or anything with some of its hooks; None: silent
    state: TrainState
    loop: LoopState
    stopper: EarlyStopping | None
    best: Any = None  # the best parameters under early stopping (a copy: the state is donated to each chunk)
    path: Path | None = None  # the newest checkpoint
    callback_error: str | None = None
    last_finite: str | None = None  # "objective 0.31" before the chunk that diverged
    mark: float = 0.0  # training time is counted from here to the next log point
    dispatched: float = 0.0  # when the chunk in flight was dispatched
    windows: int = 1  # log windows the next chunk may cover
    written: bool = True  # False: no run directory anywhere (not another process's)
    result: Any = None  # the parameters that count, once finished
    _digest: str | None = None

    def __post_init__(self) -> None:
        self.device_name = self.run.topology.name
        self.units = Units.of(self.run.dataset)
        self.loggers = (
            None
            if self.run_dir is None
            else self.run_dir.open_loggers(self.run.config.train.loggers, self.run.config.model.regression)
        )
        if self.loggers is not None:  # the MLflow run's experiment and params
            self.loggers.describe(self.run.config.name, self.run.config.model_dump(mode="json"))

    @classmethod
    def start(
        cls,
        run: Prepared,
        programs: Programs,
        run_dir: rundir.RunDir | None,
        started: float,
        callbacks: Any,
        written: bool = True,
    ) -> Session:
        """A new run's session from ``run``'s initial state; its run directory gets the config and preprocessing.

        Args:
            run_dir: the new run directory (None: process 0 of a distributed run writes it, or none is written).
            started: when the run started (``time.perf_counter()``).
            callbacks: progress hooks, or None.
            written: False when no process writes a run directory.
        """
        loop = LoopState(started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        session = cls(
            run,
            programs,
            run_dir,
            started,
            callbacks,
            run.state,
            loop,
            EarlyStopping.from_config(run.config),
            written=written,
        )
        if run_dir is not None:
            run_dir.begin(session.config_yaml(), run.dataset.preprocessing())
        return session

    @property
    def where(self) -> str:
        """The run directory, or who writes it."""
        if self.run_dir is not None:
            return str(self.run_dir)
        if not self.written:
            return "in memory (no run directory)"
        topology = self.run.topology
        return f"written by process 0 (this is process {topology.process_index} of {topology.process_count})"

    def config_yaml(self) -> str:
        """The run's config.yaml: the resolved config under a header saying where it ran."""
        topology = self.run.topology
        return to_yaml(self.run.config, rundir.config_header(topology.describe(), topology.name))

    def train(self) -> rundir.Summary:
        """Run chunks until a stop rule fires, then write the outputs; raise unless training completed."""
        try:
            return self._train()
        finally:
            if self.run.feed is not None:
                self.run.feed.close()

    def trained(self, outcome: rundir.Summary) -> Trained:
        """The finished run in memory (``train`` returned ``outcome``)."""
        return Trained(outcome, self.result, self.run.dataset.preprocessing())

    def _train(self) -> rundir.Summary:
        # from here on SIGINT/SIGTERM only set a flag: the chunk in flight and the outputs are always completed
        with StopRequests() as stop:
            self.notify("on_start", self.start_info())
            try:
                rule = self.run_chunks(stop)
                outcome = self.finish(rule.status, rule.reason)
            except BaseException as exc:  # never leave a run directory that looks healthy after a crash
                error = self.record_crash(exc)
                if error is not None:
                    raise error from None
                raise
        self.notify("on_end", outcome)
        self.raise_unless_completed(outcome)
        return outcome

    def start_info(self) -> dict:
        """What ``Callbacks.on_start`` is told."""
        plan, programs, topology = self.run.plan, self.programs, self.run.topology
        return {
            "run_dir": self.where,
            "device": self.device_name,
            "total_steps": plan.total_steps,
            "start_step": self.loop.step,
            "steps_per_epoch": plan.steps_per_epoch,
            "log_every": plan.log_every,
            "eval_every": plan.eval_every,
            "num_params": count_params(self.state.params),
            "trace_time_s": programs.trace_time_s,
            "compile_time_s": programs.compile_time_s,
            "compile_cache": programs.cache,
            "dataset": self.run.dataset.name,
            "model": self.run.config.model.kind,
            "process": topology.process_index,
            "processes": topology.process_count,
        }

    def record_crash(self, exc: BaseException) -> Exception | None:
        """Mark the run failed after ``exc``; the error to raise instead of it (None: ``exc`` itself)."""
        # in a group of processes a collective that fails means another process died or stopped
        lost = self.run.topology.process_count > 1 and isinstance(exc, jax.errors.JaxRuntimeError)
        reason = failures.crash_reason(exc, lost)
        recorded = False
        with contextlib.suppress(Exception):
            # alone: the other processes are not in step with this one for a final evaluation
            self.finish("failed", reason, alone=True)
            recorded = True
        return failures.crash_error(
            exc,
            reason,
            lost=lost,
            recorded=recorded,
            run_dir=self.run_dir,
            where=self.where,
            resume_command=self.resume_command,
        )

    def run_chunks(self, stop: StopRequests) -> StopRule:
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

    def absorb(self, start: int, end: int, metrics: dict, stop: StopRequests) -> StopRule | None:
        """Log the chunk that ran from ``start`` to ``end`` (its metrics read back), evaluate and checkpoint where
        due; the rule that stops the run here, or None."""
        loop, plan = self.loop, self.run.plan
        loop.step = int(metrics["step"])  # before ``end`` when a full-batch run converges within the chunk
        if end > start:
            records = window_records(plan, start, loop.step, metrics, self.elapsed(), self.units)
        else:
            records = [log_record(plan, start, 0, dict(zip(END_ROWS, metrics["end"])), self.elapsed(), self.units)]
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
        end = min(
            (start // plan.eval_every + 1) * plan.eval_every,
            plan.total_steps,
            (start // plan.log_every + self.windows) * plan.log_every,
        )
        if every:
            end = min(end, plan.point_at_or_after((start // every + 1) * every))
        if self.run.feed is not None:  # a chunk reads one group of streamed minibatches
            end = min(end, self.run.feed.group_end(start))
        return end

    def dispatch(self, steps: int) -> dict:
        """Start ``steps`` optimizer steps on the device; returns their metrics (arrays, not yet waited for)."""
        data = self.run.chunk_data(self.loop.step)
        self.dispatched = time.perf_counter()  # after a streamed group was waited for: that is not device time
        assert self.programs.chunk is not None  # only a sweep member's programs have none: its group runs chunks
        self.state, metrics = self.programs.chunk(self.state, data, np.int32(steps))
        return metrics

    def read(self, metrics: dict, start: int, end: int) -> dict:
        """Wait for a chunk's metrics; its time counts as training time and sizes the next chunk."""
        metrics = jax.device_get(metrics)
        now = time.perf_counter()
        self.windows = self.grown_windows(now - self.dispatched, start, end)
        self.loop.train_time_s += now - self.mark
        self.mark = now
        return metrics

    def grown_windows(self, spent: float, start: int, end: int) -> int:
        """Log windows the next chunk may cover to take about ``CHUNK_SECONDS``, from the ``spent`` seconds of the
        chunk from ``start`` to ``end`` (per window it was asked to cover); unchanged after a chunk of no step."""
        if end <= start:
            return self.windows
        log_every = self.run.plan.log_every
        windows = (end - 1) // log_every - start // log_every + 1
        return max(1, min(MAX_WINDOWS, int(CHUNK_SECONDS / max(spent / windows, 1e-6))))

    def log(self, records: list[dict], stop: StopRequests, diverged: bool = False) -> StopRule | None:
        """Evaluate where due, write the chunk's records, update early stopping; the rule that stops the run here.

        A diverged chunk's records are written up to the first non-finite one, and the run fails there.
        """
        plan, loop = self.run.plan, self.loop
        if diverged:
            first_bad = next((i for i, r in enumerate(records) if not finite_record(r)), len(records) - 1)
            records = records[: first_bad + 1]
            loop.step = records[-1]["step"]
        last = loop.last = records[-1]
        evaluated = False
        if not diverged and plan.evaluates_at(last["step"]):
            self.attach_evaluation(last)
            evaluated = True
        if diverged:
            rule: StopRule | None = StopRule("failed", f"diverged: non-finite loss or parameters at step {loop.step}")
        else:
            rule = self.stop_rule(None)
        if rule is not None and rule.status == "completed" and not evaluated:
            self.attach_evaluation(last, final=True)  # every run that completes ends with an evaluation
        self.write_records(records)
        if diverged:
            return rule
        # a signal, even one that arrived while the records were shown, stops the run at this chunk's end; a
        # signal to any process of a distributed run stops them all at the same step
        stopping, self.windows = self.run.topology.agree(stop.signal_name is not None, self.windows)
        signal_name = stop.signal_name or ("a signal to another process" if stopping else None)
        return rule or self.stop_rule(signal_name)

    def stop_rule(self, signal_name: str | None) -> StopRule | None:
        """Why the run stops at the current log point, or None (``signal_name``: the signal received, if any)."""
        loop = self.loop
        tol = self.run.config.train.tol
        return stop_rule(self.run.plan, tol, loop.step, loop.last.get("grad_norm"), self.stopper, signal_name)

    def write_records(self, records: list[dict]) -> None:
        """Write log records to the run's metric logs and show them; keep the best and the last finite."""
        if self.run_dir is not None and self.loggers is not None:
            self.run_dir.append_metrics(records)
            self.loggers.append(records)
        for record in records:
            self.loop.note_best(record)
            self.notify("on_log", record)
            if finite_record(record):
                self.last_finite = objective_text(record) or self.last_finite

    def restart_metrics(self, step: int) -> list[str]:
        """A resumed run logs the steps after its checkpoint at ``step`` again: set their records aside first.

        Returns the derived logs removed because this session no longer asks for them (``MetricLoggers.rebuild``).
        """
        if self.run_dir is None or self.loggers is None:
            raise RuntimeError("only the process that writes the run directory restarts its metrics")
        self.run_dir.truncate_metrics(step)
        if not self.loggers.active:
            return []
        # metrics.csv and event files: made again from what metrics.jsonl kept, or removed if no longer asked for
        return self.loggers.rebuild(self.run_dir.metrics())

    def attach_evaluation(self, record: dict, final: bool = False) -> None:
        """Evaluate the current parameters into ``record`` (its step's), and let early stopping see them."""
        final = final or record["step"] >= self.run.plan.total_steps
        record.update(self.evaluation(self.state.params, final=final))
        if self.stopper is not None and self.stopper.update(record):
            self.best = jax.tree_util.tree_map(jnp.copy, self.state.params)

    def evaluation(self, params: Any, final: bool = False, **parts: bool) -> dict:
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
        return record_fields(result, parts, self.run.dataset, self.units)

    def notify(self, hook: str, payload: Any) -> None:
        """Call a progress hook; one that fails (a closed pipe under the progress display) is dropped, not fatal."""
        call = getattr(self.callbacks, hook, None)
        if call is None:
            return
        try:
            call(payload)
        except (Exception, SystemExit) as exc:  # Rich exits on a broken pipe
            self.callbacks, self.callback_error = None, failures.one_line(exc)

    def elapsed(self) -> float:
        return self.loop.elapsed_s + time.perf_counter() - self.started

    @property
    def data_digest(self) -> str:
        if self._digest is None:
            self._digest = self.run.dataset.digest()
        return self._digest

    def probe(self, params: Any) -> float:
        """The objective over the first training rows, which a resume must reproduce bit for bit."""
        result = jax.device_get(self.programs.evaluate(params, self.run.data, eval_parts(probe=True)))
        return float(result["probe"])

    def checkpoint(self, finished: str | None) -> None:
        """Write a checkpoint of the current step (``finished``: the stop reason of a run that finished)."""
        if not self.written:  # nothing to resume from: skip the probe evaluation too
            return
        tick = time.perf_counter()
        probe = self.probe(self.state.params)  # every process: the evaluation is one program over the mesh
        if self.run_dir is not None:
            arrays, meta = payload.contents(
                self.state,
                self.best,
                self.run.config,
                self.loop,
                self.stopper,
                elapsed_s=self.elapsed(),
                finished=finished,
                probe=probe,
                data_digest=self.data_digest,
                device=self.device_name,
            )
            keep = self.run.config.train.keep_checkpoints
            self.path = checkpoints.save(self.run_dir.path, self.loop.step, arrays, meta, keep)
        self.mark += time.perf_counter() - tick

    def finish(self, status: Status, reason: str, alone: bool = False) -> rundir.Summary:
        """Save the parameters that count (the best under early stopping) and write summary.json.

        ``alone``: after a crash of this process, when the others of a distributed run cannot join in a final
        evaluation (the summary then has only the metrics already logged), and when the evaluation fails as well.
        """
        use_best = self.best is not None
        saved = status != "failed" or use_best  # diverged parameters are never saved as a result
        params = self.best if use_best else self.state.params
        final: dict = {}
        if saved:
            self.result = params
            if self.run_dir is not None:
                self.run_dir.save_params({k: np.asarray(v) for k, v in named_leaves(jax.device_get(params)).items()})
            record = self.stopper.best_record if self.stopper is not None and use_best else self.loop.last
            if alone and self.run.topology.process_count > 1:
                final = record
            else:
                try:
                    final = self.final_metrics(params, record)
                except Exception:
                    if not alone:
                        raise
                    final = record  # what ended the run (a data file that changed) may fail this evaluation too
        elif self.run_dir is not None:  # an earlier session's parameters are not this one's result
            self.run_dir.set_aside_params()
        outcome = summary.build(
            self.run,
            self.programs,
            self.loop,
            self.stopper,
            status=status,
            reason=reason,
            final=final,
            num_params=count_params(params),
            zero_weights=count_zero_weights(params) if saved and self.run.config.model.l1 > 0 else None,
            wall_time_s=self.elapsed(),
            run_dir=self.run_dir,
            checkpoint=self.path,
            display_error=self.callback_error,
        )
        if self.run_dir is not None:
            self.run_dir.write_summary(outcome)
        if self.loggers is not None:  # after summary.json: the MLflow run gets it as an artifact
            self.loggers.finish(status)
        return outcome

    def final_metrics(self, params: Any, record: dict) -> dict:
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
            command += " --distributed, in every process, with the coordinator and number of processes it started with"
        return command

    def raise_unless_completed(self, outcome: rundir.Summary) -> None:
        """Raise ``Interrupted`` or ``TrainingFailed`` unless the run completed, saying how to go on."""
        failures.raise_unless_completed(
            outcome,
            run_dir=self.run_dir,
            checkpoint=self.path,
            resume_command=self.resume_command,
            lbfgs=self.run.config.optimizer.name == "lbfgs",
            last_finite=self.last_finite,
            written=self.written,
        )


def _checkpoint_due(step: int, steps_just_run: int, every: int | None) -> bool:
    """At the first log point at or past each multiple of ``every``: a rule of the step alone, so resumable."""
    if not every:
        return False
    return step // every > (step - steps_just_run) // every
