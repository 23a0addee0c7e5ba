"""Resuming a run from its newest checkpoint: read and check it, restore the state, prove the replay exact, go on.

A resumed run continues bit-identically to one that was never stopped: the checkpoint holds everything the loop
carries (``gradfit.training.loop``), and before any step the restored run must see the same data (their digest) and
reproduce, bit for bit, the probe objective computed when the checkpoint was written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Optional

import pydantic

from gradfit.runs import checkpoints
from gradfit.core import precision
from gradfit.runs import rundir
from gradfit.runtime import mesh
from gradfit.config.load import GradfitConfig, to_yaml
from gradfit.errors import ConfigError, RunDirError
from gradfit.training.loop import Callbacks, EarlyStopping, LoopState, Session, config_header, one_line, stage, stop_rule
from gradfit.core.models import named_leaves, params_from_named
from gradfit.training.programs import Prepared, compile_programs, prepare


def resume(run_dir: str | Path, config: GradfitConfig, force: bool = False,
           callbacks: Optional[Callbacks] = None) -> rundir.Summary:
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
    with precision.of(config).scope():
        started = time.perf_counter()
        run_dir = rundir.RunDir.open(run_dir)  # every process reads the checkpoint: a shared folder
        writes = mesh.writes()
        with run_dir.locked() if writes else contextlib.nullcontext():
            saved = SavedRun.read(run_dir.path, config)
            if saved.changes and not force:
                listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in saved.changes.items())
                raise ConfigError(f"{run_dir}: the config differs from the one the run was trained with ({listed}); "
                                  "the run would not continue as it started. Add --force to resume anyway "
                                  "(the changes are recorded in summary.json)")
            if saved.finished and not saved.changes and run_dir.outputs_complete(saved.loop.step):
                raise RunDirError(f"{run_dir}: this run already finished ({saved.finished}). {_EXTEND_HINT}")

            callbacks = stage(callbacks, "loading data")
            run = prepare(config)
            callbacks = stage(callbacks, "compiling")
            programs = compile_programs(run)
            session = Session(run, programs, run_dir if writes else None, started, callbacks,
                              *saved.restore(run, config), path=saved.path if writes else None)
            reproduced = replay(session, saved, force)
            if saved.finished and not saved.changes:  # its summary or params.npz was lost: write them again
                return session.finish("completed", saved.finished)
            blocking = stop_rule(config, run.plan, session.loop, session.stopper, None)
            if blocking is not None:
                raise RunDirError(f"{run_dir}: with this config the run would stop at once, at step "
                                  f"{session.loop.step} ({blocking.reason}). {_EXTEND_HINT}")

            forced = {key: list(pair) for key, pair in saved.changes.items()}  # as summary.json holds them
            session.loop.resumes.append({"from_step": saved.loop.step, "checkpoint": saved.path.name,
                                         "forced_changes": forced, "reproduced_checkpoint_metrics": reproduced})
            if writes:
                session.restart_metrics(saved.loop.step)
            if saved.changes:
                # keep the config the run started with; then make the newest checkpoint and config.yaml agree
                session.checkpoint(finished=None)  # every process: it evaluates the probe
                if writes:
                    run_dir.replace_config(to_yaml(config, config_header(run.topology)), saved.loop.step)
            elif saved.recorded_only and writes:  # config.yaml says what the run logs from now on
                run_dir.write_config(to_yaml(config, config_header(run.topology)))
            return session.train()


_EXTEND_HINT = ("To train it further, resume with --force and a larger train.steps or train.epochs (and a larger "
                "train.early_stopping.patience or smaller train.tol if one of those stopped it)")


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """The newest checkpoint of a run, read and checked, and how the config to resume with differs from it."""

    path: Path
    arrays: dict
    changes: dict  # {"optimizer.learning_rate": (old, new)}
    recorded_only: bool  # the config differs in keys that change what is written, not computed (train.loggers)
    loop: LoopState
    stopper: Optional[EarlyStopping]
    finished: Optional[str]  # the stop reason when the run had finished training
    probe: float  # the probe objective at the checkpoint's parameters
    data_digest: str
    device: str  # where it was computed: "cpu:0 (cpu)", "4 x gpu (NVIDIA H200), 2 processes"

    @classmethod
    def read(cls, run_dir: Path, config: GradfitConfig) -> "SavedRun":
        path = checkpoints.latest(run_dir)
        if path is None:
            raise RunDirError(f"{run_dir}: no checkpoint to resume from (the run stopped before writing one); "
                              "start a new run")
        arrays, meta = checkpoints.load(path)
        try:  # the digest already rules out damage: these checks keep a hand-made file from reaching the loop
            now = config.model_dump(mode="json")
            changes = checkpoints.changed_keys(meta["config"], now)
            recorded_only = not changes and bool(checkpoints.changed_keys(meta["config"], now, ignored=set()))
            loop = pydantic.TypeAdapter(LoopState).validate_python(meta["loop"])
            stopper = meta["early_stopping"]
            stopper = None if stopper is None else pydantic.TypeAdapter(EarlyStopping).validate_python(stopper)
            finished = meta["finished"]
            if not isinstance(finished, (str, type(None))):
                raise TypeError("'finished' is not a string")
            if not (loop.step == meta["step"] == checkpoints.step_of(path) == int(arrays["state/step"])):
                raise ValueError("its step numbers disagree")
            if loop.last.get("step") != loop.step:
                raise ValueError("the last log record is incomplete")
            probe, data_digest = meta["probe"], meta["data_digest"]
            if not isinstance(probe, float) or not isinstance(data_digest, str):
                raise TypeError("its probe or data digest is missing")
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise RunDirError(f"{path}: the checkpoint's metadata is inconsistent ({one_line(exc)}); "
                              f"{checkpoints.previous_hint(path)}") from None
        return cls(path, arrays, changes, recorded_only, loop, stopper, finished, probe, data_digest,
                   str(meta.get("device")))

    def restore(self, run: Prepared, config: GradfitConfig) -> tuple:
        """(train state, loop state, early stopping, best params) on the run's device."""
        stopper = EarlyStopping.from_config(config, self.stopper)
        state = run.topology.put(_restore(run.state, self.arrays, "state", self.path))
        best = None
        if stopper is not None and stopper.best is not None:
            best = run.topology.put(_restore(run.state.params, self.arrays, "best", self.path))
        return state, dataclasses.replace(self.loop), stopper, best


def replay(session: Session, saved: SavedRun, force: bool) -> bool:
    """True when the restored run sees the checkpoint's data and reproduces its probe objective bit for bit.

    Equal data and equal bits from the restored parameters prove that the device and libraries compute as the
    original run's did, so the rest of it will be reproduced exactly.
    """
    if session.data_digest != saved.data_digest:
        problem = (f"the data differ from the original run's (digest {session.data_digest} now, "
                   f"{saved.data_digest} then): the data file was edited or replaced")
    else:
        now = session.probe(session.state.params)
        if now == saved.probe:
            return True
        problem = (f"the restored state does not reproduce the probe objective of step {session.loop.step} "
                   f"({now!r} now, {saved.probe!r} then): ")
        if saved.device != session.device_name:
            problem += (f"the checkpoint was computed on {saved.device} and this session runs on "
                        f"{session.device_name}; other devices or processes sum in another order. Resume with the "
                        "same devices (runtime.devices, --devices) and processes")
        else:
            problem += "the device or library versions differ from the original run's"
    if not force:
        raise RunDirError(f"{saved.path}: {problem}. Add --force to resume anyway")
    return False


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
