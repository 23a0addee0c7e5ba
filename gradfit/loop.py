"""The host side of training: log points, early stopping, checkpoints, stopping rules, resume, the summary.

The loop dispatches one compiled chunk of steps (see ``gradfit.train``), reads its metrics back, logs them,
updates early stopping, writes a checkpoint when one is due, and decides whether to go on. Everything it
carries from one log point to the next is in the train state, ``LoopState`` and ``EarlyStopping``, and all three
go into every checkpoint: that is what makes a resumed run bit-identical to an uninterrupted one.
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
            session = _Session(run, compiled, run_dir, started, compile_time, callbacks or Callbacks())
            runs.write_atomic(run_dir / "config.yaml", to_yaml(config, _config_header(session.device_name)))
            runs.write_json(run_dir / "preprocessing.json", run.dataset.preprocessing())
            return session.train(run.state, LoopState(), EarlyStopping.from_config(config), best=None)


def resume(run_dir: str | Path, config: GradfitConfig, force: bool = False,
           callbacks: Optional[Callbacks] = None) -> dict:
    """Continue a run in place from its newest checkpoint, bit-identically to a run that was never stopped.

    Args:
        run_dir: a run directory made by ``fit``.
        config: the config to continue with; any difference from the checkpoint's is refused unless ``force``.
        force: continue despite config differences or a restored state that does not reproduce its metrics.

    Raises:
        ConfigError: the config differs from the checkpoint's (and not ``force``).
        RunDirError: not a run directory, no checkpoint, a damaged checkpoint, or a finished run.
    """
    with jax.enable_x64(config.runtime.precision == "float64"):
        started = time.perf_counter()
        run_dir = runs.check_run_dir(Path(run_dir))
        with runs.locked(run_dir):
            path = checkpoints.latest(run_dir)
            if path is None:
                raise RunDirError(f"{run_dir}: no checkpoint to resume from (the run stopped before writing one); "
                                  "start a new run")
            arrays, changes, loop, saved_stopper, finished = _read_checkpoint(path, config)
            if changes and not force:
                listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
                raise ConfigError(f"{run_dir}: the config differs from the one the run was trained with ({listed}); "
                                  "the run would not continue as it started. Add --force to resume anyway "
                                  "(the changes are recorded in summary.json)")
            if finished and not changes:
                raise RunDirError(f"{run_dir}: this run already finished ({finished}); to train it further, "
                                  "resume with a larger train.steps or train.epochs and --force")

            run = prepare(config)
            stopper = EarlyStopping.from_config(config, saved_stopper)
            state = jax.device_put(_restore(run.state, arrays, "state", path), run.device)
            has_best = stopper is not None and stopper.best is not None
            best = jax.device_put(_restore(run.state.params, arrays, "best", path), run.device) if has_best else None
            compiled, compile_time = compile_chunk(run)

            # a zero-step chunk recomputes the metrics logged at the checkpoint: equal bits prove that the data,
            # device and libraries are those of the original run, so the rest of it will be reproduced exactly
            state, metrics = compiled(state, run.data, jnp.int32(0))
            now = {key: float(metrics[key]) for key in ("objective", "grad_norm")}
            then = {key: loop.last[key] for key in now}
            if now != then and not force:
                raise RunDirError(
                    f"{path}: the restored state does not reproduce the metrics logged at step {loop.step} "
                    f"(objective {now['objective']!r} now, {then['objective']!r} then): the data, device or library "
                    "versions differ from the original run's. Add --force to resume anyway")
            loop.resumes.append({"from_step": loop.step, "checkpoint": path.name, "forced_changes": changes,
                                 "reproduced_checkpoint_metrics": now == then})
            runs.truncate_metrics(run_dir / "metrics.jsonl", loop.step)
            session = _Session(run, compiled, run_dir, started, compile_time, callbacks or Callbacks(), path)
            if changes:  # keep the config the run started with, next to the one it continues with
                old = run_dir / "config.yaml"
                runs.write_atomic(_unused_name(run_dir, f"config.before-step-{loop.step}"), old.read_bytes())
                runs.write_atomic(old, to_yaml(config, _config_header(session.device_name)))
            return session.train(state, loop, stopper, best)


@dataclasses.dataclass
class _Session:
    """One process's part of a run: the compiled program, where to write, and the clock."""

    run: Prepared
    compiled: Any
    run_dir: Path
    started: float
    compile_time: float
    callbacks: Callbacks
    last_checkpoint: Optional[Path] = None

    def __post_init__(self):
        self.device_name = describe_device(self.run.device)

    def train(self, state: TrainState, loop: LoopState, stopper: Optional[EarlyStopping], best) -> dict:
        run, plan = self.run, self.run.plan
        self.callbacks.on_start({
            "run_dir": str(self.run_dir), "device": self.device_name, "total_steps": plan.total_steps,
            "start_step": loop.step, "steps_per_epoch": plan.steps_per_epoch,
            "num_params": count_params(state.params), "compile_time_s": self.compile_time,
            "dataset": run.dataset.name, "model": run.config.model.kind,
        })
        status, reason, last_finite = "completed", "completed all steps", None
        try:
            # SIGINT/SIGTERM only set a flag, so the chunk in flight always completes and is checkpointed
            with _StopRequests() as stop:
                while True:
                    # the first chunk of a new run takes 0 steps: it logs the starting point
                    n = min(plan.log_every, plan.total_steps - loop.step) if loop.last else 0
                    last_finite = loop.last.get("objective")
                    tick = time.perf_counter()
                    state, metrics = self.compiled(state, run.data, jnp.int32(n))
                    metrics = jax.device_get(metrics)
                    loop.train_time_s += time.perf_counter() - tick
                    loop.step += n
                    loop.last = _log_record(metrics, loop.step, plan, self.elapsed(loop))
                    runs.append_jsonl(self.run_dir / "metrics.jsonl", loop.last)
                    self.callbacks.on_log(loop.last)
                    if not metrics["finite"]:
                        status, reason = "failed", f"diverged: non-finite loss or parameters at step {loop.step}"
                        break
                    if stopper is not None and stopper.update(loop.last):
                        best = jax.tree_util.tree_map(jnp.copy, state.params)  # state is donated to the next chunk
                    stop_rule = _stop_rule(run.config, plan, loop, stopper, stop.signal_name)
                    every = run.config.train.checkpoint_every
                    if stop_rule or (every and loop.step // every > (loop.step - n) // every):
                        finished = stop_rule[1] if stop_rule and stop_rule[0] == "completed" else None
                        self.checkpoint(state, loop, stopper, best, finished)
                    if stop_rule:
                        status, reason = stop_rule
                        break
        except BaseException as exc:  # never leave a run directory that looks healthy after a crash
            with contextlib.suppress(Exception):
                self.finish(state, loop, stopper, best, "failed", f"crashed: {type(exc).__name__}: {exc}")
            if isinstance(exc, OSError):
                raise TrainingFailed(f"cannot write to {self.run_dir}: {exc}") from None
            raise
        summary = self.finish(state, loop, stopper, best, status, reason)
        self.callbacks.on_end(summary)
        self.raise_unless_completed(summary, loop, last_finite)
        return summary

    def elapsed(self, loop: LoopState) -> float:
        return loop.elapsed_s + time.perf_counter() - self.started

    def checkpoint(self, state: TrainState, loop: LoopState, stopper: Optional[EarlyStopping], best,
                   finished: Optional[str]) -> None:
        arrays = _named("state", jax.device_get(state))
        if best is not None:
            arrays.update(_named("best", jax.device_get(best)))
        config = self.run.config.model_dump(mode="json")
        meta = {
            "config": config,
            "config_hash": checkpoints.config_hash(config),
            "loop": {**dataclasses.asdict(loop), "elapsed_s": self.elapsed(loop)},
            "early_stopping": None if stopper is None else dataclasses.asdict(stopper),
            "finished": finished,
            "device": self.device_name,
            "versions": _versions(),
        }
        self.last_checkpoint = checkpoints.save(self.run_dir, loop.step, arrays, meta,
                                                self.run.config.train.keep_checkpoints)

    def finish(self, state: TrainState, loop: LoopState, stopper: Optional[EarlyStopping], best, status: str,
               reason: str) -> dict:
        """Save the parameters that count (the best under early stopping) and write summary.json."""
        run, config = self.run, self.run.config
        use_best = best is not None
        params = jax.device_get(best if use_best else state.params)
        record = stopper.best_record if use_best else loop.last
        if status != "failed" or use_best:  # diverged parameters are never saved as a result
            runs.save_arrays(self.run_dir / "params.npz", named_leaves(params))
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
            "params_step": record.get("step") if status != "failed" or use_best else None,
            "wall_time_s": self.elapsed(loop),
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
            "checkpoint": None if self.last_checkpoint is None else str(self.last_checkpoint),
            "resumes": loop.resumes,
            "versions": _versions(),
        }
        runs.write_json(self.run_dir / "summary.json", summary)
        return runs.to_jsonable(summary)  # exactly what summary.json holds

    def raise_unless_completed(self, summary: dict, loop: LoopState, last_finite: Optional[float]) -> None:
        resume_command = f"gradfit train --resume {shlex.quote(str(self.run_dir))}"
        if summary["status"] == "interrupted":
            raise Interrupted(f"{summary['stop_reason']}; checkpoint written to {self.last_checkpoint}. "
                              f"Resume with: {resume_command}", summary)
        if summary["status"] == "failed":
            hint = ("check model.l2 and data.standardize" if self.run.config.optimizer.name == "lbfgs"
                    else "lower optimizer.learning_rate or set optimizer.clip_norm")
            if self.last_checkpoint is not None:
                key = "model.l2" if self.run.config.optimizer.name == "lbfgs" else "optimizer.learning_rate"
                where = (f"The last checkpoint before the divergence, {self.last_checkpoint}, is intact; continue "
                         f"from it with: {resume_command} --set {key}=... --force")
            else:
                where = f"No checkpoint was written before it; run directory: {self.run_dir}"
            finite = "none" if last_finite is None else f"{last_finite:.6g}"
            raise TrainingFailed(f"training diverged at step {loop.step} (last finite objective: {finite}); "
                                 f"{hint}. {where}", summary)


def _stop_rule(config: GradfitConfig, plan: Plan, loop: LoopState, stopper: Optional[EarlyStopping],
               signal_name: Optional[str]) -> Optional[tuple[str, str]]:
    """(status, stop_reason) when the run stops at this log point, else None. Finishing rules win over signals."""
    tol = config.train.tol
    if loop.step >= plan.total_steps:
        return "completed", "completed all steps"
    if tol is not None and loop.last["grad_norm"] < tol:
        return "completed", f"converged: grad_norm {loop.last['grad_norm']:.3g} < tol {tol:g}"
    if stopper is not None and stopper.exhausted:
        return "completed", (f"early stopping: {stopper.monitor} did not improve by more than {stopper.min_delta:g} "
                             f"in {stopper.patience} log points; best {stopper.best:.6g} at step {stopper.best_step}")
    if signal_name:
        return "interrupted", f"{signal_name} at step {loop.step}"
    return None


class _StopRequests:
    """Within the block, SIGINT and SIGTERM are recorded instead of raised (main thread only)."""

    def __init__(self):
        self.signal_name: Optional[str] = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _named(prefix: str, tree) -> dict[str, np.ndarray]:
    return {f"{prefix}/{name}": np.asarray(leaf) for name, leaf in named_leaves(tree).items()}


def _read_checkpoint(path: Path, config: GradfitConfig):
    """(arrays, config changes, LoopState, saved EarlyStopping or None, finished reason) of one checkpoint.

    The digest already rules out damage; these checks keep a hand-crafted file from reaching the loop.
    """
    arrays, meta = checkpoints.load(path)
    try:
        changes = checkpoints.changed_keys(meta["config"], config.model_dump(mode="json"))
        loop = pydantic.TypeAdapter(LoopState).validate_python(meta["loop"])
        saved = meta["early_stopping"]
        saved = None if saved is None else pydantic.TypeAdapter(EarlyStopping).validate_python(saved)
        finished = meta["finished"]
        if not isinstance(finished, (str, type(None))):
            raise TypeError("'finished' is not a string")
        if not (loop.step == meta["step"] == checkpoints.step_of(path) == int(arrays["state/step"])):
            raise ValueError("its step numbers disagree")
        if not all(isinstance(loop.last.get(key), float) for key in ("objective", "grad_norm")):
            raise ValueError("the last log record is incomplete")
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        if isinstance(exc, pydantic.ValidationError):
            first = exc.errors()[0]
            reason = f"{exc.title}.{'.'.join(map(str, first['loc']))}: {first['msg']}"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        raise RunDirError(f"{path}: the checkpoint's metadata is inconsistent ({reason}); "
                          f"{checkpoints.previous_hint(path)}") from None
    return arrays, changes, loop, saved, finished


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


def _unused_name(run_dir: Path, stem: str) -> Path:
    candidate, n = run_dir / f"{stem}.yaml", 1
    while candidate.exists():
        n += 1
        candidate = run_dir / f"{stem}-{n}.yaml"
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
