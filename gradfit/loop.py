"""The host side of training: log points, early stopping, checkpoints, stopping rules, resume, the summary.

The loop dispatches one compiled chunk of steps (see ``gradfit.train``), reads its metrics back, logs them,
updates early stopping, writes a checkpoint when one is due, and decides whether to go on. Everything it
carries from one log point to the next is in the train state, ``LoopState`` and ``EarlyStopping``, and all three
go into every checkpoint: that is what makes a resumed run bit-identical to an uninterrupted one.
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
from gradfit.errors import ConfigError, Interrupted, RunDirError, TrainingFailed
from gradfit.models import count_params, named_leaves, params_from_named
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
            session = _Session(run, compiled, run_dir, started, compile_time, callbacks, run.state, LoopState(),
                               EarlyStopping.from_config(config))
            runs.write_atomic(run_dir / "config.yaml", to_yaml(config, _config_header(session.device_name)))
            runs.write_json(run_dir / "preprocessing.json", run.dataset.preprocessing())
            return session.train()


def resume(run_dir: str | Path, config: GradfitConfig, force: bool = False,
           callbacks: Optional[Callbacks] = None) -> dict:
    """Continue a run in place from its newest checkpoint, bit-identically to a run that was never stopped.

    A run whose last session finished training but died before writing its summary gets its outputs written.

    Args:
        run_dir: a run directory made by ``fit``.
        config: the config to continue with; any difference from the checkpoint's is refused unless ``force``.
        force: continue despite config differences or a restored state that does not reproduce its metrics.

    Raises:
        ConfigError: the config differs from the checkpoint's (and not ``force``).
        RunDirError: not a run directory, no checkpoint, a damaged checkpoint, or nothing left to train.
    """
    with jax.enable_x64(config.runtime.precision == "float64"):
        started = time.perf_counter()
        run_dir = runs.check_run_dir(Path(run_dir))
        with runs.locked(run_dir):
            saved = _SavedRun.read(run_dir, config)
            if saved.changes and not force:
                listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in saved.changes.items())
                raise ConfigError(f"{run_dir}: the config differs from the one the run was trained with ({listed}); "
                                  "the run would not continue as it started. Add --force to resume anyway "
                                  "(the changes are recorded in summary.json)")
            if saved.finished and not saved.changes and _outputs_complete(run_dir, saved.loop.step):
                raise RunDirError(f"{run_dir}: this run already finished ({saved.finished}). {_EXTEND_HINT}")

            run = prepare(config)
            session = _Session(run, None, run_dir, started, 0.0, callbacks, *saved.restore(run, config), path=saved.path)
            session.compiled, session.compile_time = compile_chunk(run)
            reproduced = session.replay(saved.loop.last, force)
            if saved.finished and not saved.changes:  # its summary or params.npz was lost: write them again
                return session.finish("completed", saved.finished)
            blocking = _stop_rule(config, run.plan, session.loop, session.stopper, None)
            if blocking is not None:
                raise RunDirError(f"{run_dir}: with this config the run would stop at once, at step "
                                  f"{session.loop.step} ({blocking.reason}). {_EXTEND_HINT}")

            session.loop.resumes.append({"from_step": saved.loop.step, "checkpoint": saved.path.name,
                                         "forced_changes": saved.changes, "reproduced_checkpoint_metrics": reproduced})
            runs.truncate_metrics(run_dir / "metrics.jsonl", saved.loop.step)
            if saved.changes:
                # keep the config the run started with; then make the newest checkpoint and config.yaml agree
                old = run_dir / "config.yaml"
                runs.write_atomic(_unused_name(run_dir, f"config.before-step-{saved.loop.step}"), old.read_bytes())
                session.checkpoint(finished=None)
                runs.write_atomic(old, to_yaml(config, _config_header(session.device_name)))
            return session.train()


_EXTEND_HINT = ("To train it further, resume with --force and a larger train.steps or train.epochs (and a larger "
                "train.early_stopping.patience or smaller train.tol if one of those stopped it)")


def _outputs_complete(run_dir: Path, step: int) -> bool:
    """True when summary.json reports the run completed at ``step`` and its params.npz exists."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        return summary["status"] == "completed" and summary["steps"] == step and (run_dir / "params.npz").is_file()
    except (OSError, ValueError, KeyError, TypeError):
        return False


@dataclasses.dataclass(frozen=True)
class _SavedRun:
    """The newest checkpoint of a run, read and checked, and how the config to resume with differs from it."""

    path: Path
    arrays: dict
    changes: dict  # {"optimizer.learning_rate": (old, new)}
    loop: LoopState
    stopper: Optional[EarlyStopping]
    finished: Optional[str]  # the stop reason when the run had finished training

    @classmethod
    def read(cls, run_dir: Path, config: GradfitConfig) -> "_SavedRun":
        path = checkpoints.latest(run_dir)
        if path is None:
            raise RunDirError(f"{run_dir}: no checkpoint to resume from (the run stopped before writing one); "
                              "start a new run")
        arrays, meta = checkpoints.load(path)
        try:  # the digest already rules out damage: these checks keep a hand-made file from reaching the loop
            changes = checkpoints.changed_keys(meta["config"], config.model_dump(mode="json"))
            loop = pydantic.TypeAdapter(LoopState).validate_python(meta["loop"])
            stopper = meta["early_stopping"]
            stopper = None if stopper is None else pydantic.TypeAdapter(EarlyStopping).validate_python(stopper)
            finished = meta["finished"]
            if not isinstance(finished, (str, type(None))):
                raise TypeError("'finished' is not a string")
            if not (loop.step == meta["step"] == checkpoints.step_of(path) == int(arrays["state/step"])):
                raise ValueError("its step numbers disagree")
            if not all(isinstance(loop.last.get(key), float) for key in ("objective", "grad_norm")):
                raise ValueError("the last log record is incomplete")
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise RunDirError(f"{path}: the checkpoint's metadata is inconsistent ({_reason(exc)}); "
                              f"{checkpoints.previous_hint(path)}") from None
        return cls(path, arrays, changes, loop, stopper, finished)

    def restore(self, run: Prepared, config: GradfitConfig) -> tuple:
        """(train state, loop state, early stopping, best params) on the run's device."""
        stopper = EarlyStopping.from_config(config, self.stopper)
        state = jax.device_put(_restore(run.state, self.arrays, "state", self.path), run.device)
        best = None
        if stopper is not None and stopper.best is not None:
            best = jax.device_put(_restore(run.state.params, self.arrays, "best", self.path), run.device)
        return state, dataclasses.replace(self.loop), stopper, best


@dataclasses.dataclass(frozen=True)
class StopRule:
    status: str  # completed | interrupted
    reason: str


@dataclasses.dataclass
class _Session:
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
                    self.finish("failed", f"crashed: {_reason(exc)}")
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
            rule = _stop_rule(self.run.config, plan, loop, self.stopper, stop.signal_name)
            if rule is not None or _checkpoint_due(loop.step, n, self.run.config.train.checkpoint_every):
                self.checkpoint(finished=rule.reason if rule is not None and rule.status == "completed" else None)
            if rule is not None:
                return rule.status, rule.reason

    def replay(self, logged: dict, force: bool) -> bool:
        """Recompute the checkpoint's metrics with a zero-step chunk; True when they equal the logged ones.

        Equal bits prove that the data, device and libraries are those of the original run, so the rest of it
        will be reproduced exactly.
        """
        self.state, metrics = self.compiled(self.state, self.run.data, jnp.int32(0))
        now = {key: float(metrics[key]) for key in ("objective", "grad_norm")}
        if now != {key: logged[key] for key in now} and not force:
            raise RunDirError(
                f"{self.path}: the restored state does not reproduce the metrics logged at step {self.loop.step} "
                f"(objective {now['objective']!r} now, {logged['objective']!r} then): the data, device or library "
                "versions differ from the original run's. Add --force to resume anyway")
        return now == {key: logged[key] for key in now}

    def notify(self, hook: str, payload: dict) -> None:
        """Call a progress hook; one that fails (a closed pipe under the progress display) is dropped, not fatal."""
        if self.callbacks is None:
            return
        try:
            getattr(self.callbacks, hook)(payload)
        except (Exception, SystemExit) as exc:  # Rich exits on a broken pipe
            self.callbacks, self.callback_error = None, _reason(exc)

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
            params_file.replace(_unused_name(self.run_dir, "params.previous", ".npz"))
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


def _reason(exc: BaseException) -> str:
    """An exception as one line: the first pydantic error, or 'Type: message'."""
    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors()[0]
        where = ".".join([exc.title, *map(str, first["loc"])])
        return f"{where}: {first['msg']}"
    return f"{type(exc).__name__}: {exc}"


def _stop_rule(config: GradfitConfig, plan: Plan, loop: LoopState, stopper: Optional[EarlyStopping],
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


def _restore(template, arrays: dict, prefix: str, path: Path):
    """``template``'s structure filled from the checkpoint arrays under ``prefix``; names, shapes, dtypes checked."""
    stored = {name[len(prefix) + 1:]: a for name, a in arrays.items() if name.startswith(prefix + "/")}
    for name, leaf in named_leaves(template).items():
        if name in stored and stored[name].dtype != leaf.dtype:
            raise RunDirError(f"{path}: '{prefix}/{name}' is {stored[name].dtype} but this config needs "
                              f"{leaf.dtype} (was runtime.precision changed?)")
    try:
        return params_from_named(template, stored, origin=f"{path} ({prefix})")
    except ValueError as exc:
        raise RunDirError(f"{exc}; the checkpoint was written for another model, optimizer or data shape") from None


def _unused_name(run_dir: Path, stem: str, suffix: str = ".yaml") -> Path:
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


def _config_header(device_name: str) -> str:
    v = _versions()
    return (f"# Resolved gradfit config: every key, defaults included. Re-run with: gradfit train <this file>\n"
            f"# gradfit {v['gradfit']}, jax {v['jax']}, jaxlib {v['jaxlib']}, optax {v['optax']}; "
            f"device {device_name}\n")
