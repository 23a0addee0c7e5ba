"""What a run that did not complete tells its user: a crash, a lost process, a divergence, an interruption.

Each message says what happened, where the run directory and its newest checkpoint stand, and the command that
goes on from there.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pydantic

from gradfit.errors import GradfitError, Interrupted, TrainingFailed, first_line
from gradfit.runs import checkpoints, rundir
from gradfit.training import records


def one_line(exc: BaseException) -> str:
    """An exception as one line: the first pydantic error, or 'Type: message'."""
    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors()[0]
        where = ".".join([exc.title, *map(str, first["loc"])])
        return f"{where}: {first['msg']}"
    return f"{type(exc).__name__}: {exc}"


def crash_reason(exc: BaseException, lost: bool) -> str:
    """The stop reason summary.json records for a run that ``exc`` ended (``lost``: another process died)."""
    return f"lost contact with another process ({first_line(exc)})" if lost else f"crashed: {one_line(exc)}"


def crash_error(
    exc: BaseException,
    reason: str,
    *,
    lost: bool,
    recorded: bool,
    run_dir: rundir.RunDir | None,
    where: str,
    resume_command: str,
) -> TrainingFailed | None:
    """The error to raise instead of ``exc`` after a crash (None: raise ``exc`` itself).

    Args:
        reason: ``crash_reason``'s text.
        lost: another process of a distributed run died or was stopped.
        recorded: summary.json says failed.
        run_dir: the run directory this process writes (None: process 0 writes it).
        where: the run directory, or who writes it.
        resume_command: the command that resumes the run.
    """
    if lost:
        if run_dir is not None and recorded:
            said = f"{run_dir}/summary.json says failed. Resume from the newest checkpoint with: {resume_command}"
        else:
            said = "process 0 reports how to resume, unless it is the process that died"
        return TrainingFailed(f"{reason}: a process of the group died or was stopped; {said}")
    if isinstance(exc, OSError):
        said = "the run's summary.json says failed" if recorded else "summary.json could not be written either"
        return TrainingFailed(f"{where}: {exc}; {said}")
    return None


def raise_unless_completed(
    summary: rundir.Summary,
    *,
    run_dir: rundir.RunDir | None,
    checkpoint: Path | None,
    resume_command: str,
    lbfgs: bool,
    last_finite: str | None,
    written: bool = True,
) -> None:
    """Raise ``Interrupted`` or ``TrainingFailed`` for a summary that says so, with what to do next.

    Args:
        run_dir: the run directory this process writes (None: process 0 writes it).
        checkpoint: the newest checkpoint, if any.
        resume_command: the command that resumes the run.
        lbfgs: the optimizer was L-BFGS (the advice for a divergence differs).
        last_finite: the last finite objective logged, as ``objective_text`` says it.
        written: False when no process writes a run directory (nothing to resume from).
    """
    if summary.status == "interrupted":
        if not written:
            raise Interrupted(f"{summary.stop_reason}; nothing was saved (no run directory)", summary)
        if run_dir is None:
            raise Interrupted(
                f"{summary.stop_reason}; process 0 wrote the checkpoint and prints the command that resumes the run",
                summary,
            )
        raise Interrupted(
            f"{summary.stop_reason}; checkpoint written to {checkpoint}. Resume with: {resume_command}", summary
        )
    if summary.status == "failed":
        hint = (
            "check model.l2 and data.standardize"
            if lbfgs
            else "lower optimizer.learning_rate or set optimizer.clip_norm"
        )
        if not written:
            where = "Nothing was saved (no run directory)"
        elif run_dir is None:
            where = "Process 0 reports where to resume from"
        elif checkpoint is not None:
            where = _continue_hint(run_dir, checkpoint, resume_command, lbfgs)
        else:
            where = f"No checkpoint was written before it; run directory: {run_dir}"
        raise TrainingFailed(
            f"training diverged at step {summary.steps:,} (last finite {last_finite or 'objective: none'}); "
            f"{hint}. {where}",
            summary,
        )


def _continue_hint(run_dir: rundir.RunDir, checkpoint: Path, resume_command: str, lbfgs: bool) -> str:
    """How to continue a diverged run from its newest ``checkpoint``, with the objectives to judge it by."""
    key = "model.l2" if lbfgs else "optimizer.learning_rate"
    step = checkpoints.step_of(checkpoint)
    first = _logged_objective(run_dir, None)
    return (
        f"The newest checkpoint, {checkpoint} (step {step}, {_logged_objective(run_dir, step)}; "
        f"first logged: {first}), is intact; continue from it with: {resume_command} "
        f"--set {key}=... --force, or start again if its objective is already far above the start"
    )


def _logged_objective(run_dir: rundir.RunDir, step: int | None) -> str:
    """The objective metrics.jsonl holds for ``step`` (None: the first record), as text; '?' when not there."""
    with contextlib.suppress(OSError, GradfitError):
        for record in run_dir.iter_metrics():
            if step is None or record.get("step") == step:
                return records.objective_text(record) or "?"
    return "?"
