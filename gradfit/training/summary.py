"""summary.json of a run: how it ended, where and how fast it ran, and the metrics of its saved parameters."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gradfit.runs import rundir
from gradfit.training.payload import LoopState
from gradfit.training.prepare import Prepared, Programs
from gradfit.training.stopping import EarlyStopping, Status

FINAL_KEYS = ("train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy")
REGRESSION_FINAL_KEYS = (
    "train_loss",
    "val_loss",
    "val_rmse",
    "val_mae",
    "val_r2",
    "test_loss",
    "test_rmse",
    "test_mae",
    "test_r2",
)


def build(
    run: Prepared,
    programs: Programs,
    loop: LoopState,
    stopper: EarlyStopping | None,
    *,
    status: Status,
    reason: str,
    final: dict,
    num_params: int,
    zero_weights: int | None,
    wall_time_s: float,
    run_dir: rundir.RunDir | None,
    checkpoint: Path | None,
    display_error: str | None,
) -> rundir.Summary:
    """The summary of ``run`` as it stands: it ended with ``status`` for ``reason``; ``final`` holds the metrics
    of its saved parameters (their log record, completed by an evaluation) or is empty; ``run_dir`` is None in
    the processes of a distributed run that do not write; ``display_error`` says why the progress display was
    dropped, if it was."""
    config, dataset, plan = run.config, run.dataset, run.plan
    steps_per_s = loop.step / loop.train_time_s if loop.train_time_s > 0 and loop.step else None
    early_stopping = None
    if stopper is not None:
        early_stopping = {k: v for k, v in dataclasses.asdict(stopper).items() if k != "best_record"}
    return rundir.Summary(
        run_dir=None if run_dir is None else str(run_dir),
        status=status,
        stop_reason=reason,
        name=config.name,
        started=loop.started,
        model=config.model.kind,
        optimizer=config.optimizer.name,
        dataset=dataset.name,
        device=run.topology.name,
        **run.topology.describe(),
        precision=config.runtime.precision,
        num_params=num_params,
        zero_weights=zero_weights,
        rows={"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)},
        steps=loop.step,
        epochs=loop.step / plan.steps_per_epoch,
        params_step=final.get("step"),
        log_every=plan.log_every,
        eval_every=plan.eval_every,
        evaluations=loop.evaluations,
        wall_time_s=wall_time_s,
        trace_time_s=programs.trace_time_s,
        compile_time_s=programs.compile_time_s,
        compile_cache=programs.cache,
        train_time_s=loop.train_time_s,
        eval_time_s=loop.eval_time_s,
        steps_per_s=steps_per_s,
        objective=final.get("objective"),
        grad_norm=final.get("grad_norm"),
        final={key: final.get(key) for key in (REGRESSION_FINAL_KEYS if config.model.regression else FINAL_KEYS)},
        best=dict(loop.best),
        early_stopping=early_stopping,
        checkpoint=None if checkpoint is None else str(checkpoint),
        resumes=loop.resumes,
        versions=rundir.versions(),
        progress_display_error=display_error,
    )
