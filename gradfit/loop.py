"""The host side of training: log points, early stopping, checkpoints, stopping rules, the summary.

The loop dispatches one compiled chunk of steps (see ``gradfit.train``), reads its metrics back, logs them,
updates early stopping, writes a checkpoint when one is due, and decides whether to go on. Everything it
carries from one log point to the next is in the train state, ``LoopState`` and ``EarlyStopping``, and all three
go into every checkpoint: that is what makes a resumed run bit-identical to an uninterrupted one (see
``gradfit.resume``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pydantic
from pydantic import ConfigDict, Field

import gradfit
from gradfit import checkpoints, runs
from gradfit.config import GradfitConfig, to_yaml
from gradfit.data import split_arrays
from gradfit.device import describe_device
from gradfit.errors import Interrupted, TrainingFailed
from gradfit.models import count_params, named_leaves
from gradfit.train import Plan, Prepared, TrainState, compile_chunk, evaluate, prepare


class Callbacks:
    """Progress hooks; the engine prints nothing itself. Override what you need."""

    def on_start(self, info: dict) -> None: ...

    def on_log(self, record: dict) -> None: ...

    def on_end(self, summary: dict) -> None: ...


@dataclasses.dataclass
class EarlyStopping:
    """Early-stopping state, updated at each log point with that point's validation metrics."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # checked like this when read back from a checkpoint

    monitor: Literal["val_loss", "val_accuracy"]  # val_loss: lower is better; val_accuracy: higher is better
    patience: Annotated[int, Field(ge=1, strict=True)]
    min_delta: Annotated[float, Field(ge=0, strict=True)]
    best: Annotated[Optional[float], Field(strict=True)] = None
    best_step: Annotated[Optional[int], Field(ge=0, strict=True)] = None
    bad_checks: Annotated[int, Field(ge=0, strict=True)] = 0  # log points in a row without improvement
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
        """Record one log point; True when it is the new best."""
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
    train_time_s: Annotated[float, Field(ge=0, strict=True)] = 0.0  # inside compiled chunks, compiling excluded
    last: dict = dataclasses.field(default_factory=dict)  # the last log record
    resumes: list = dataclasses.field(default_factory=list)


def fit(config: GradfitConfig, out_dir: str | Path = "runs", callbacks: Optional[Callbacks] = None) -> dict:
    """Train as the config says and write a new run directory; returns the summary (also in summary.json).

    Raises:
        GradfitError: bad data, settings or device (before the run directory is created).
        TrainingFailed: the loss or parameters became non-finite (summary.json says why).
        Interrupted: SIGINT or SIGTERM; a checkpoint was written first.
    """
    with jax.enable_x64(config.runtime.precision == "float64"):
        started = time.perf_counter()
        run = prepare(config)  # everything that can reject the input happens before the run directory exists
        compiled, compile_time = compile_chunk(run)
        run_dir = runs.create_run_dir(out_dir, config.name)
        with runs.locked(run_dir):
            session = Session(run, compiled, run_dir, started, compile_time, callbacks, run.state, LoopState(),
                               EarlyStopping.from_config(config))
            runs.write_atomic(run_dir / "config.yaml", to_yaml(config, config_header(session.device_name)))
            runs.write_json(run_dir / "preprocessing.json", run.dataset.preprocessing())
            return session.train()


@dataclasses.dataclass(frozen=True)
class StopRule:
    status: str  # completed | interrupted
    reason: str


@dataclasses.dataclass
class Session:
    """One process's part of a run: the compiled program, the evolving state, where to write, and the clock."""

    run: Prepared
    compiled: Any
    run_dir: Path
    started: float
    compile_time: float
    callbacks: Optional[Callbacks]
    state: TrainState
    loop: LoopState
    stopper: Optional[EarlyStopping]
    best: Any = None  # the best parameters under early stopping (a copy: the state is donated to each chunk)
    path: Optional[Path] = None  # the newest checkpoint
    callback_error: Optional[str] = None
    last_finite: Optional[float] = None  # the objective before the chunk that diverged

    def __post_init__(self):
        self.device_name = describe_device(self.run.device)

    def train(self) -> dict:
        """Run chunks until a stop rule fires, then write the outputs; raise unless training completed."""
        plan, loop = self.run.plan, self.loop
        self.notify("on_start", {
            "run_dir": str(self.run_dir), "device": self.device_name, "total_steps": plan.total_steps,
            "start_step": loop.step, "steps_per_epoch": plan.steps_per_epoch,
            "num_params": count_params(self.state.params), "compile_time_s": self.compile_time,
            "dataset": self.run.dataset.name, "model": self.run.config.model.kind,
        })
        # from here on SIGINT/SIGTERM only set a flag: the chunk in flight and the outputs are always completed
        with _StopRequests() as stop:
            try:
                status, reason = self.run_chunks(stop)
                summary = self.finish(status, reason)
            except BaseException as exc:  # never leave a run directory that looks healthy after a crash
                with contextlib.suppress(Exception):
                    self.finish("failed", f"crashed: {one_line(exc)}")
                if isinstance(exc, OSError):
                    raise TrainingFailed(f"{self.run_dir}: {exc}; the run's summary.json says failed") from None
                raise
        self.notify("on_end", summary)
        self.raise_unless_completed(summary)
        return summary

    def run_chunks(self, stop: "_StopRequests") -> tuple[str, str]:
        """Dispatch chunks, log, update early stopping, checkpoint when due; (status, stop reason) at the end."""
        plan, loop = self.run.plan, self.loop
        while True:
            # the first chunk of a new run takes 0 steps: it logs the starting point
            n = min(plan.log_every, plan.total_steps - loop.step) if loop.last else 0
            self.last_finite = loop.last.get("objective")
            tick = time.perf_counter()
            self.state, metrics = self.compiled(self.state, self.run.data, jnp.int32(n))
            metrics = jax.device_get(metrics)
            loop.train_time_s += time.perf_counter() - tick
            loop.step += n
            loop.last = _log_record(metrics, loop.step, plan, self.elapsed())
            runs.append_jsonl(self.run_dir / "metrics.jsonl", loop.last)
            self.notify("on_log", loop.last)
            if not metrics["finite"]:
                return "failed", f"diverged: non-finite loss or parameters at step {loop.step}"
            if self.stopper is not None and self.stopper.update(loop.last):
                self.best = jax.tree_util.tree_map(jnp.copy, self.state.params)
            rule = stop_rule(self.run.config, plan, loop, self.stopper, stop.signal_name)
            if rule is not None or _checkpoint_due(loop.step, n, self.run.config.train.checkpoint_every):
                self.checkpoint(finished=rule.reason if rule is not None and rule.status == "completed" else None)
            if rule is not None:
                return rule.status, rule.reason

    def notify(self, hook: str, payload: dict) -> None:
        """Call a progress hook; one that fails (a closed pipe under the progress display) is dropped, not fatal."""
        if self.callbacks is None:
            return
        try:
            getattr(self.callbacks, hook)(payload)
        except (Exception, SystemExit) as exc:  # Rich exits on a broken pipe
            self.callbacks, self.callback_error = None, one_line(exc)

    def elapsed(self) -> float:
        return self.loop.elapsed_s + time.perf_counter() - self.started

    def checkpoint(self, finished: Optional[str]) -> None:
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
            "device": self.device_name,
            "versions": _versions(),
        }
        self.path = checkpoints.save(self.run_dir, self.loop.step, arrays, meta,
                                     self.run.config.train.keep_checkpoints)

    def finish(self, status: str, reason: str) -> dict:
        """Save the parameters that count (the best under early stopping) and write summary.json."""
        run, config, loop, stopper = self.run, self.run.config, self.loop, self.stopper
        use_best = self.best is not None
        saved = status != "failed" or use_best  # diverged parameters are never saved as a result
        params = jax.device_get(self.best if use_best else self.state.params)
        record = stopper.best_record if use_best else loop.last
        params_file = self.run_dir / "params.npz"
        if saved:
            runs.save_arrays(params_file, named_leaves(params))
        elif params_file.exists():  # from an earlier session: it must not pass for this one's result
            params_file.replace(unused_name(self.run_dir, "params.previous", ".npz"))
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        test_loss, test_acc = evaluate(run.model, params, *split_arrays(run.dataset.test, run.dataset.n_classes,
                                                                        dtype))
        summary = {
            "run_dir": str(self.run_dir),
            "status": status,
            "stop_reason": reason,
            "model": config.model.kind,
            "optimizer": config.optimizer.name,
            "dataset": run.dataset.name,
            "device": self.device_name,
            "precision": config.runtime.precision,
            "num_params": count_params(params),
            "rows": {"train": len(run.dataset.train), "val": len(run.dataset.val), "test": len(run.dataset.test)},
            "steps": loop.step,
            "epochs": loop.step / run.plan.steps_per_epoch,
            "params_step": record.get("step") if saved else None,
            "wall_time_s": self.elapsed(),
            "compile_time_s": self.compile_time,
            "steps_per_s": loop.step / loop.train_time_s if loop.train_time_s > 0 and loop.step else None,
            "objective": record.get("objective"),
            "grad_norm": record.get("grad_norm"),
            "final": {
                "train_loss": record.get("train_loss"),
                "val_loss": record.get("val_loss"),
                "val_accuracy": record.get("val_accuracy"),
                "test_loss": test_loss,
                "test_accuracy": test_acc,
            },
            "early_stopping": None if stopper is None else {
                k: v for k, v in dataclasses.asdict(stopper).items() if k != "best_record"},
            "checkpoint": None if self.path is None else str(self.path),
            "resumes": loop.resumes,
            "versions": _versions(),
        }
        if self.callback_error:
            summary["progress_display_error"] = self.callback_error
        runs.write_json(self.run_dir / "summary.json", summary)
        return runs.to_jsonable(summary)  # exactly what summary.json holds

    def raise_unless_completed(self, summary: dict) -> None:
        resume_command = f"gradfit train --resume {shlex.quote(str(self.run_dir))}"
        if summary["status"] == "interrupted":
            raise Interrupted(f"{summary['stop_reason']}; checkpoint written to {self.path}. "
                              f"Resume with: {resume_command}", summary)
        if summary["status"] == "failed":
            lbfgs = self.run.config.optimizer.name == "lbfgs"
            hint = "check model.l2 and data.standardize" if lbfgs else \
                "lower optimizer.learning_rate or set optimizer.clip_norm"
            if self.path is not None:
                key = "model.l2" if lbfgs else "optimizer.learning_rate"
                step = checkpoints.step_of(self.path)
                where = (f"The newest checkpoint, {self.path} (step {step}, objective "
                         f"{_logged_objective(self.run_dir, step)}; step 0: {_logged_objective(self.run_dir, 0)}), "
                         f"is intact; continue from it with: {resume_command} --set {key}=... --force, or start "
                         "again if its objective is already far above the start")
            else:
                where = f"No checkpoint was written before it; run directory: {self.run_dir}"
            finite = "none" if self.last_finite is None else f"{self.last_finite:.6g}"
            raise TrainingFailed(f"training diverged at step {self.loop.step} (last finite objective: {finite}); "
                                 f"{hint}. {where}", summary)


def _checkpoint_due(step: int, steps_just_run: int, every: Optional[int]) -> bool:
    """At the first log point at or past each multiple of ``every``: a rule of the step alone, so resumable."""
    return bool(every) and step // every > (step - steps_just_run) // every


def _logged_objective(run_dir: Path, step: int) -> str:
    """The objective metrics.jsonl holds for ``step``, formatted; '?' when it is not there."""
    with contextlib.suppress(OSError, ValueError):
        for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("step") == step and isinstance(record.get("objective"), float):
                return f"{record['objective']:.4g}"
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
    tol = config.train.tol
    if loop.step >= plan.total_steps:
        return StopRule("completed", "completed all steps")
    if tol is not None and loop.last["grad_norm"] < tol:
        return StopRule("completed", f"converged: grad_norm {loop.last['grad_norm']:.3g} < tol {tol:g}")
    if stopper is not None and stopper.exhausted:
        return StopRule("completed", f"early stopping: {stopper.monitor} did not improve by more than "
                                     f"{stopper.min_delta:g} in {stopper.patience} log points; best "
                                     f"{stopper.best:.6g} at step {stopper.best_step}")
    if signal_name:
        return StopRule("interrupted", f"{signal_name} at step {loop.step}")
    return None


class _StopRequests:
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


def unused_name(run_dir: Path, stem: str, suffix: str = ".yaml") -> Path:
    candidate, n = run_dir / f"{stem}{suffix}", 1
    while candidate.exists():
        n += 1
        candidate = run_dir / f"{stem}-{n}{suffix}"
    return candidate


def _log_record(metrics: dict, step: int, plan: Plan, elapsed: float) -> dict:
    record = {"step": step, "epoch": step / plan.steps_per_epoch}
    for key in ("train_loss", "objective", "val_loss", "val_accuracy", "grad_norm", "learning_rate"):
        value = metrics.get(key)
        record[key] = None if value is None else float(value)
    record["elapsed_s"] = elapsed
    return record


def _versions() -> dict:
    import jaxlib

    return {"gradfit": gradfit.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "optax": optax.__version__}


def config_header(device_name: str) -> str:
    v = _versions()
    return (f"# Resolved gradfit config: every key, defaults included. Re-run with: gradfit train <this file>\n"
            f"# gradfit {v['gradfit']}, jax {v['jax']}, jaxlib {v['jaxlib']}, optax {v['optax']}; "
            f"device {device_name}\n")
