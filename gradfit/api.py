"""The Python API: what the command line calls, for notebooks and scripts.

    import gradfit

    summary = gradfit.fit("configs/logreg.yaml", overrides={"model.l2": 0.01})
    run = gradfit.load_run(summary.run_dir)
    run.predict(x)        # original label values, (n,)
    run.evaluate(x, y)    # log loss, accuracy, per-class precision/recall/F1, ROC AUC, confusion matrix
    run.inference()       # coefficient table of a logistic regression

Errors are the same ``gradfit.errors.GradfitError``s the command line turns into messages and exit codes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from gradfit.config.load import GradfitConfig, resolve_config
from gradfit.errors import ConfigError
from gradfit.runs.rundir import RunDir, Summary, to_jsonable
from gradfit.trained import run as trained
from gradfit.trained.inference import Inference, run_inference
from gradfit.trained.run import TrainedRun
from gradfit.training import loop
from gradfit.training import resume as resuming
from gradfit.training.loop import Callbacks

ConfigLike = str | Path | Mapping | GradfitConfig
Overrides = Sequence[str] | Mapping[str, object] | None


def fit(
    config: ConfigLike, overrides: Overrides = None, out_dir: str | Path = "runs", callbacks: Callbacks | None = None
) -> Summary:
    """Train as ``gradfit train`` does and write a new run directory; returns its summary.

    Args:
        config: a YAML file, a dict shaped like one (``{"model": {"kind": "mlp"}}``), or a ``GradfitConfig``.
        overrides: ``{"optimizer.learning_rate": 3e-3}`` or ``["optimizer.learning_rate=3e-3"]`` (as ``--set``).
        out_dir: the parent folder of the run directory.
        callbacks: progress hooks (``gradfit.training.loop.Callbacks``); None trains silently.

    Raises:
        ConfigError, DataError, DeviceError: before the run directory is made.
        TrainingFailed: training diverged (``.summary`` says where); Interrupted: a signal stopped it.
    """
    return loop.fit(resolve(config, overrides), out_dir, callbacks)


def resume(
    run_dir: str | Path,
    config: ConfigLike | None = None,
    overrides: Overrides = None,
    force: bool = False,
    callbacks: Callbacks | None = None,
) -> Summary:
    """Continue a stopped run in place, as ``gradfit train --resume`` does (bit-identically to a run never stopped).

    ``config`` defaults to the run's own config.yaml; a config that differs from the one it ran with (or
    ``overrides`` that change it) needs ``force``, as on the command line.
    """
    folder = RunDir.open(run_dir)
    return resuming.resume(folder.path, resolve(config or folder.config_file, overrides), force, callbacks)


def resolve(config: ConfigLike, overrides: Overrides = None) -> GradfitConfig:
    """A validated config from anything ``fit`` accepts (a ``GradfitConfig`` is taken as it is)."""
    if isinstance(config, GradfitConfig):
        if overrides:
            raise ConfigError(
                "overrides apply to a config file or dict; change a GradfitConfig with "
                "config.model_copy(update=...) or pass its dict (config.model_dump())"
            )
        return config
    if isinstance(overrides, Mapping):
        # JSON is YAML; NumPy numbers and paths become what they stand for
        overrides = [f"{key}={json.dumps(to_jsonable(value), default=str)}" for key, value in overrides.items()]
    elif isinstance(overrides, str):
        raise ConfigError(f"overrides: a list of 'key=value' strings or a dict, not the string {overrides!r}")
    return resolve_config(config, list(overrides or ())).config


@dataclasses.dataclass(frozen=True)
class Run(TrainedRun):
    """A finished run loaded back: ``predict``, ``predict_proba``, ``evaluate``, ``inference``, and its
    ``config``, ``summary`` (``gradfit.runs.rundir.Summary``), ``classes`` and ``feature_names``."""

    def inference(self, scale: str = "original", level: float = 0.95) -> Inference:
        """The coefficient table of a logistic regression: estimates, standard errors, Wald z and p-values,
        confidence intervals at ``level``, on the ``original`` or ``standardized`` feature scale."""
        return run_inference(self, scale, level)


def load_run(run_dir: str | Path) -> Run:
    """Load a run directory made by ``gradfit train`` (or a sweep member) for prediction and evaluation.

    Raises:
        RunDirError: not a run, or it saved no parameters (a failed run).
    """
    run = trained.load_run(run_dir)
    return Run(**{field.name: getattr(run, field.name) for field in dataclasses.fields(run)})
