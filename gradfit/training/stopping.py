"""Why a run stops: its stopping rules (all steps, tol, early stopping, a signal) and early stopping's state.

Signals are recorded, not raised, while a run trains (``StopRequests``): the chunk in flight and the outputs are
always completed, and the loop stops at the next log point with the rule ``stop_rule`` names.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from gradfit.config.choices import HIGHER_IS_BETTER, Metric
from gradfit.config.load import GradfitConfig
from gradfit.training.plan import Plan


@dataclasses.dataclass
class EarlyStopping:
    """Early-stopping state, updated at each evaluation with its validation metrics."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # checked like this when read back from a checkpoint

    monitor: Metric  # val_loss, val_rmse, val_mae: lower is better; val_accuracy, val_r2: higher is better
    patience: Annotated[int, Field(ge=1, strict=True)]
    min_delta: Annotated[float, Field(ge=0, strict=True)]
    best: Annotated[float | None, Field(strict=True)] = None
    best_step: Annotated[int | None, Field(ge=0, strict=True)] = None
    bad_checks: Annotated[int, Field(ge=0, strict=True)] = 0  # evaluations in a row without improvement
    best_record: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, config: GradfitConfig, saved: EarlyStopping | None = None) -> EarlyStopping | None:
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
        if self.monitor not in HIGHER_IS_BETTER and gain is not None:
            gain = -gain
        if self.best is None or (gain is not None and gain > self.min_delta):
            self.best, self.best_step, self.bad_checks, self.best_record = value, record["step"], 0, record
            return True
        self.bad_checks += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.bad_checks >= self.patience


Status = Literal["completed", "interrupted", "failed"]


@dataclasses.dataclass(frozen=True)
class StopRule:
    """How a run ends (its status) and why (the reason summary.json records)."""

    status: Status
    reason: str


def stop_rule(
    plan: Plan,
    tol: float | None,
    step: int,
    grad_norm: float | None,
    stopper: EarlyStopping | None,
    signal_name: str | None,
) -> StopRule | None:
    """Why the run stops at the log point of ``step`` (whose ``grad_norm`` was logged), or None.

    Finishing rules win over signals.
    """
    if step >= plan.total_steps:
        return StopRule("completed", "completed all steps")
    if tol is not None and grad_norm is not None and grad_norm < tol:
        return StopRule("completed", f"converged: grad_norm {grad_norm:.3g} < tol {tol:g}")
    if stopper is not None and stopper.exhausted:
        return StopRule(
            "completed",
            f"early stopping: {stopper.monitor} did not improve by more than {stopper.min_delta:g} in "
            f"{stopper.patience} evaluations; best {stopper.best:.6g} at step {stopper.best_step}",
        )
    if signal_name:
        return StopRule("interrupted", f"{signal_name} at step {step}")
    return None


class StopRequests:
    """Within the block, SIGINT, SIGTERM and SIGHUP (a closed ssh session) are recorded instead of raised (main
    thread only)."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
                if sig is not None:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
