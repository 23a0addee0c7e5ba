"""Resuming a run from its newest checkpoint: read and check it, restore the state, prove the replay exact, go on.

A resumed run continues bit-identically to one that was never stopped: the checkpoint holds everything the loop
carries (``gradfit.training.payload``), and before any step the restored run must see the same data (their
digest) and reproduce, bit for bit, the probe objective computed when the checkpoint was written.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from gradfit.config.load import GradfitConfig
from gradfit.core import precision
from gradfit.errors import ConfigError, RunDirError
from gradfit.runs import rundir
from gradfit.runtime import mesh
from gradfit.training.payload import SavedRun
from gradfit.training.prepare import Prepared, Programs, compile_programs, prepare
from gradfit.training.session import Session, stage

_EXTEND_HINT = (
    "To train it further, resume with --force and a larger train.steps or train.epochs (and a larger "
    "train.early_stopping.patience or smaller train.tol if one of those stopped it)"
)


def resume(run_dir: str | Path, config: GradfitConfig, force: bool = False, callbacks: Any = None) -> rundir.Summary:
    """Continue a run in place from its newest checkpoint, bit-identically to a run that was never stopped.

    A run whose last session finished training but died before writing its summary gets its outputs written.

    Args:
        run_dir: a run directory made by ``fit``.
        config: the config to continue with; any difference from the checkpoint's is refused unless ``force``.
        force: continue despite config differences or a restored state that does not reproduce its metrics.
        callbacks: progress hooks (``gradfit.training.loop.Callbacks``), or None.

    Raises:
        ConfigError: the config differs from the checkpoint's (and not ``force``).
        RunDirError: not a run directory, no checkpoint, a damaged checkpoint, or nothing left to train.
    """
    with precision.of(config).scope():
        started = time.perf_counter()
        folder = rundir.RunDir.open(run_dir)  # every process reads the checkpoint: a shared folder
        writes = mesh.writes()
        with folder.locked() if writes else contextlib.nullcontext():
            saved = SavedRun.read(folder.path, config)
            _check_resumable(folder, saved, force)
            callbacks = stage(callbacks, "loading data")
            run = prepare(config)
            callbacks = stage(callbacks, "compiling")
            programs = compile_programs(run)
            session, reproduced = continue_from(
                saved, run, programs, folder if writes else None, started, callbacks, force
            )
            if saved.finished and not saved.changes:  # its summary or params.npz was lost: write them again
                return session.finish("completed", saved.finished)
            blocking = session.stop_rule(None)
            if blocking is not None:
                raise RunDirError(
                    f"{folder}: with this config the run would stop at once, at step "
                    f"{session.loop.step} ({blocking.reason}). {_EXTEND_HINT}"
                )
            record_resume(session, saved, {key: list(pair) for key, pair in saved.changes.items()}, reproduced)
            if saved.changes:
                # keep the config the run started with; then make the newest checkpoint and config.yaml agree
                session.checkpoint(finished=None)  # every process: it evaluates the probe
                if writes:
                    folder.replace_config(session.config_yaml(), saved.loop.step)
            elif saved.recorded_only and writes:  # config.yaml says what the run logs from now on
                folder.write_config(session.config_yaml())
            return session.train()


def _check_resumable(folder: rundir.RunDir, saved: SavedRun, force: bool) -> None:
    """Refuse a config that differs from the checkpoint's (unless ``force``) and a run with nothing left to do."""
    if saved.changes and not force:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in saved.changes.items())
        raise ConfigError(
            f"{folder}: the config differs from the one the run was trained with ({listed}); "
            "the run would not continue as it started. Add --force to resume anyway "
            "(the changes are recorded in summary.json)"
        )
    if saved.finished and not saved.changes and folder.outputs_complete(saved.loop.step):
        raise RunDirError(f"{folder}: this run already finished ({saved.finished}). {_EXTEND_HINT}")


def continue_from(
    saved: SavedRun,
    run: Prepared,
    programs: Programs,
    run_dir: rundir.RunDir | None,
    started: float,
    callbacks: Any,
    force: bool,
) -> tuple[Session, bool]:
    """A session that continues from ``saved``, and whether it reproduced the checkpoint exactly (see ``replay``).

    Args:
        run_dir: the run directory (None: process 0 of a distributed run writes it).
        started: when this session started (``time.perf_counter()``).
        callbacks: progress hooks, or None.
        force: go on when the replay is not exact, instead of raising RunDirError.
    """
    state, loop, stopper, best = saved.restore(run)
    path = saved.path if run_dir is not None else None
    session = Session(run, programs, run_dir, started, callbacks, state, loop, stopper, best=best, path=path)
    return session, replay(session, saved, force)


def record_resume(session: Session, saved: SavedRun, forced: dict, reproduced: bool) -> None:
    """Note the resume in the loop's state (summary.json lists them) and set aside the records after ``saved``.

    ``forced``: the config changes the resume was forced through, as summary.json holds them.
    """
    entry = {
        "from_step": saved.loop.step,
        "checkpoint": saved.path.name,
        "forced_changes": forced,
        "reproduced_checkpoint_metrics": reproduced,
    }
    if session.run_dir is not None:
        removed = session.restart_metrics(saved.loop.step)
        if removed:  # derived logs train.loggers no longer asks for: metrics.jsonl holds their records
            entry["removed_logs"] = removed
    session.loop.resumes.append(entry)


def replay(session: Session, saved: SavedRun, force: bool) -> bool:
    """True when the restored run sees the checkpoint's data and reproduces its probe objective bit for bit.

    Equal data and equal bits from the restored parameters prove that the device and libraries compute as the
    original run's did, so the rest of it will be reproduced exactly.
    """
    if session.data_digest != saved.data_digest:
        problem = (
            f"the data differ from the original run's (digest {session.data_digest} now, "
            f"{saved.data_digest} then): the data file was edited or replaced"
        )
    else:
        now = session.probe(session.state.params)
        if now == saved.probe:
            return True
        problem = (
            f"the restored state does not reproduce the probe objective of step {session.loop.step} "
            f"({now!r} now, {saved.probe!r} then): "
        )
        if saved.device != session.device_name:
            problem += (
                f"the checkpoint was computed on {saved.device} and this session runs on "
                f"{session.device_name}; other devices or processes sum in another order. Resume with the "
                "same devices (runtime.devices, --devices) and processes"
            )
        else:
            problem += "the device or library versions differ from the original run's"
    if not force:
        raise RunDirError(f"{saved.path}: {problem}. Add --force to resume anyway")
    return False
