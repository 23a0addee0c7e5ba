"""The Python API: what the command line calls, for notebooks and scripts.

    import gradfit

    summary = gradfit.fit("configs/logreg.yaml", overrides={"model.l2": 0.01})  # progress shown in a notebook
    summary = gradfit.fit("configs/logreg.yaml", X=frame, y=labels)  # rows in memory: arrays, DataFrames, Arrow
    run = gradfit.load_run(summary.run_dir)
    run.predict(x)        # original label values, (n,); x: a DataFrame/Arrow table (by name) or an (n, d) array
    run.evaluate(x, y)    # log loss, accuracy, per-class precision/recall/F1, ROC AUC, confusion matrix
    run.inference()       # coefficient table of a logistic regression

Errors are the same ``gradfit.errors.GradfitError``s the command line turns into messages and exit codes; an
argument of the wrong type or value is one too (ConfigError, DataError or RunDirError), naming the argument.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gradfit.config.load import GradfitConfig, replaced, resolve_config
from gradfit.data.supplied import Supplied, supplied
from gradfit.errors import ConfigError, RunDirError
from gradfit.files import check_output, write_atomic
from gradfit.runs.rundir import RunDir, Summary, own_files, protected_files
from gradfit.trained import run as trained
from gradfit.trained.export import export_stablehlo
from gradfit.trained.inference import run_inference
from gradfit.trained.run import TrainedRun
from gradfit.trained.wald import Inference
from gradfit.training import loop
from gradfit.training import resume as resuming
from gradfit.training.loop import Callbacks

ConfigLike = str | Path | Mapping | GradfitConfig
Overrides = Sequence[str] | Mapping[str, object] | None


def fit(
    config: ConfigLike,
    overrides: Overrides = None,
    out_dir: str | Path = "runs",
    callbacks: Callbacks | None = None,
    *,
    progress: bool | None = None,
    X: Any = None,
    y: Any = None,
    sample_weight: Any = None,
    X_val: Any = None,
    y_val: Any = None,
) -> Summary:
    """Train as ``gradfit train`` does and write a new run directory; returns its summary.

    Args:
        config: a YAML file, a dict shaped like one (``{"model": {"kind": "mlp"}}``), or a ``GradfitConfig``.
        overrides: ``{"optimizer.learning_rate": 3e-3}`` or ``["optimizer.learning_rate=3e-3"]`` (as ``--set``).
        out_dir: the parent folder of the run directory.
        callbacks: progress hooks (``gradfit.training.loop.Callbacks``, or any object with some of its methods),
            told whether or not ``progress`` shows.
        progress: show what training does on stderr (as ``gradfit train`` does: a spinner while it loads and
            compiles, then a bar with the objective, or a log line every half second where no bar can be redrawn).
            None (the default): shown when stderr is a terminal or in a notebook (an IPython kernel), silent
            elsewhere (a script whose output is redirected, a test run); True or False decides.
        X: rows to train on instead of the config's data source: a pandas or polars DataFrame, a pyarrow Table
            (columns by name; text and categorical columns as ``data.categorical`` says) or an (n, d) array
            (columns x0, x1, ...). The run's ``data.source`` becomes ``memory``; every other data key applies
            (features, drop, categorical, missing, the split, standardization) with the checks and messages of
            a file, naming ``X`` and the row.
        y: the labels (or numeric target), one per row of X; None when X holds the column ``data.target`` names.
        sample_weight: a weight >= 0 per row of X (``data.weight`` becomes ``sample_weight`` unless it names it).
        X_val: validation rows, given with ``y_val``; they are then the validation split (``data.val_fraction``
            is 0).
        y_val: the validation rows' labels.

    Raises:
        ConfigError, DataError, DeviceError: before the run directory is made (a config with a ``sweep:``
            section included: there is no sweep API yet, ``gradfit sweep`` runs it).
        RunDirError: ``out_dir`` is not a path.
        TrainingFailed: training diverged (``.summary`` says where); Interrupted: a signal stopped it.
    """
    resolved = resolve(config, overrides, memory=X is not None)
    folder = _path(out_dir, "out_dir", "the folder to make the run directory in")
    rows = None
    if X is not None:
        resolved, rows = in_memory(resolved, X, y, sample_weight, X_val, y_val)
    elif any(v is not None for v in (y, sample_weight, X_val, y_val)):
        raise ConfigError("y, sample_weight, X_val and y_val go with X, the rows they belong to; X is None")
    with _shown(progress, _hooks(callbacks)) as hooks:
        return loop.fit(resolved, folder, hooks, rows)


def in_memory(
    config: GradfitConfig, X: Any, y: Any = None, sample_weight: Any = None, X_val: Any = None, y_val: Any = None
) -> tuple[GradfitConfig, Supplied]:
    """``config`` reading the rows handed over (``data.source: memory``), and those rows (see ``fit``)."""
    data = config.data
    weight = data.weight if data.weight is not None or sample_weight is None else "sample_weight"
    changed = replaced(
        config,
        "data",
        "<config, with X>",
        source="memory",
        path=None,
        synthetic=None,
        in_memory=None,
        weight=weight,
        **({"val_fraction": 0} if X_val is not None else {}),
    )
    return changed, supplied(X, y, sample_weight, X_val, y_val, target=changed.data.target, weight=weight)


def resume(
    run_dir: str | Path,
    config: ConfigLike | None = None,
    overrides: Overrides = None,
    force: bool = False,
    callbacks: Callbacks | None = None,
    *,
    progress: bool | None = None,
) -> Summary:
    """Continue a stopped run in place, as ``gradfit train --resume`` does (bit-identically to a run never stopped).

    ``config`` defaults to the run's own config.yaml; a config that differs from the one it ran with (or
    ``overrides`` that change it) needs ``force``, as on the command line. ``callbacks`` and ``progress`` as in
    ``fit``.
    """
    folder = RunDir.open(_path(run_dir, "run_dir", "the path of a run directory"))
    if not isinstance(force, (bool, np.bool_)):
        raise ConfigError(f"force: expected True or False, got {_kind(force)}")
    resolved = resolve(config if config is not None else folder.config_file, overrides)
    with _shown(progress, _hooks(callbacks)) as hooks:
        return resuming.resume(folder.path, resolved, bool(force), hooks)


def resolve(config: ConfigLike, overrides: Overrides = None, memory: bool = False) -> GradfitConfig:
    """A validated config from anything ``fit`` accepts (a ``GradfitConfig`` is taken as it is); ``memory``: for
    rows handed over in Python (``data.source: memory``, the data keys checked against it)."""
    texts = _override_texts(overrides)
    if isinstance(config, GradfitConfig):
        if texts:
            raise ConfigError(
                "overrides apply to a config file or dict; change a GradfitConfig with "
                "config.model_copy(update=...) or pass its dict (config.model_dump())"
            )
        return config
    if not isinstance(config, (str, os.PathLike, Mapping)):
        raise ConfigError(
            f"config: expected a YAML file (a str or pathlib.Path), a dict shaped like one or a GradfitConfig, "
            f"got {_kind(config)}"
        )
    if isinstance(config, Mapping) and "sweep" in config:
        # a file's sweep: section is refused by resolve_config, with its line; a dict's would be dropped there
        raise ConfigError(
            "<dict>: sweep: this config describes a sweep, and the Python API has no sweep yet; run it with "
            "gradfit sweep CONFIG on the command line (or remove the section to train its base config)"
        )
    return resolve_config(config, texts, memory=memory).config


def _override_texts(overrides: Overrides) -> list[str]:
    """``overrides`` as ``--set`` strings: a dict's values written as YAML (NaN as .nan, NumPy numbers and
    paths as what they stand for), so the config sees exactly the values given."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [_override_text(key, value) for key, value in overrides.items()]
    if isinstance(overrides, (str, bytes)) or not isinstance(overrides, Sequence):
        raise ConfigError(
            "overrides: expected a dict such as {'optimizer.learning_rate': 3e-3} or a list of 'key=value' "
            f"strings, got {_kind(overrides)}"
        )
    wrong = [item for item in overrides if not isinstance(item, str)]
    if wrong:
        raise ConfigError(f"overrides: a list holds 'key=value' strings, got {_kind(wrong[0])} ({wrong[0]!r:.40})")
    return list(overrides)


_DOCUMENT_END = "...\n"  # what PyYAML writes after a lone scalar
_KEY_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _override_text(key: object, value: object) -> str:
    if not isinstance(key, str) or not _KEY_PATH.fullmatch(key):
        raise ConfigError(f"overrides: keys are dotted key paths such as 'optimizer.learning_rate', got {key!r:.60}")
    try:
        text = yaml.safe_dump(_plain(value), default_flow_style=True, width=math.inf, allow_unicode=True)
    except yaml.YAMLError:
        raise ConfigError(
            f"overrides[{key!r}]: a value of type {type(value).__name__} is not a config value; give a number, "
            "text, a boolean, None, or a list or dict of them"
        ) from None
    return f"{key}={text.removesuffix(_DOCUMENT_END).strip()}"


def _plain(value: Any) -> Any:
    """NumPy numbers and arrays, tuples, paths and subclasses of str, int and float (enums) as the plain values
    YAML writes."""
    if isinstance(value, np.generic | np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, str):
        return str.__str__(value)  # not str(value): a str enum's str() is its name ('Optimizer.adam')
    for kind in (bool, int, float):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}  # keys too: class_weight={np.int64(1): 5.0}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _path(value: Any, name: str, what: str) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise RunDirError(f"{name}: expected {what} (a str or pathlib.Path), got {_kind(value)}")
    return Path(value)


_HOOKS = ("on_stage", "on_start", "on_log", "on_end")


def _hooks(callbacks: Any) -> Any:
    """``callbacks`` when it has at least one hook (the loop calls those it has); an object with none of them is
    a mistake (a function passed for an object), not a silent run."""
    if callbacks is not None and not any(callable(getattr(callbacks, hook, None)) for hook in _HOOKS):
        raise ConfigError(
            f"callbacks: expected an object with some of the methods {', '.join(_HOOKS)} "
            f"(gradfit.training.loop.Callbacks), got {_kind(callbacks)}"
        )
    return callbacks


@contextlib.contextmanager
def _shown(progress: Any, callbacks: Any) -> Iterator[Any]:
    """The hooks to train with: ``callbacks``, and the progress display on stderr when ``progress`` asks for it
    (None: when stderr is a terminal or in a notebook); the display is closed however training ends."""
    if progress is not None and not isinstance(progress, (bool, np.bool_)):
        raise ConfigError(
            f"progress: expected True, False or None (shown in a terminal or notebook), got {_kind(progress)}"
        )
    from gradfit.training import progress as display  # imports Rich only once a display is made

    if not (display.default_on() if progress is None else progress):
        yield callbacks
        return
    from rich.console import Console

    shown = display.TrainProgress(Console(stderr=True))
    try:
        yield shown if callbacks is None else display.WithDisplay(shown, callbacks)
    finally:
        shown.close()


def _kind(value: Any) -> str:
    """What a wrong argument is, for a message: "None", "int"."""
    return "None" if value is None else type(value).__name__


@dataclasses.dataclass(frozen=True)
class Run(TrainedRun):
    """A finished run loaded back: ``predict``, ``predict_proba``, ``evaluate``, ``inference``, ``export``, and its
    ``config``, ``summary`` (``gradfit.runs.rundir.Summary``), ``classes`` and ``feature_names``."""

    def inference(self, scale: str = "original", level: float = 0.95) -> Inference:
        """The coefficient table of a logistic regression: estimates, standard errors, Wald z and p-values,
        confidence intervals at ``level`` (0.5 to 0.9999, as ``--level``), on the ``original`` or
        ``standardized`` feature scale."""
        if not isinstance(scale, str) or scale not in SCALES:
            raise ConfigError(f"scale: expected 'original' or 'standardized', got {scale!r:.60}")
        if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0.5 <= level <= 0.9999:
            raise ConfigError(f"level: expected a confidence level between 0.5 and 0.9999, got {level!r:.60}")
        return run_inference(self, str(scale), float(level))

    def export(self, out: str | Path, format: str = "stablehlo", force: bool = False) -> Path:
        """Write the whole prediction function (preprocessing included) to ``out`` and its sidecar to
        ``out.json``, as ``gradfit export --format`` does: ``stablehlo`` (load it with jax alone) or ``onnx``
        (``pip install 'gradfit[onnx]'``; run it with onnxruntime). Returns ``out``.

        Raises:
            GradfitError: ``out`` or its sidecar exists (pass ``force=True`` to replace them), is not a regular
                file, or is a file gradfit keeps in a run directory.
            ConfigError: an unknown format.
        """
        target = _path(out, "out", "the file to write")
        if not isinstance(format, str) or format not in FORMATS:
            raise ConfigError(f"format: expected one of {', '.join(FORMATS)}, got {format!r:.40}")
        sidecar_path = Path(f"{target}.json")
        kept = [*own_files(self.run_dir), *protected_files(target.parent)]  # never a run's own file
        for path, name in ((target, "out"), (sidecar_path, "out (its sidecar)")):
            check_output(path, name, bool(force), kept, stdout=False)
        if format == "onnx":
            from gradfit.trained.onnx_export import export_onnx  # jax2onnx: an optional dependency

            blob, sidecar = export_onnx(self)
        else:
            blob, sidecar = export_stablehlo(self)
        write_atomic(target, blob)
        write_atomic(sidecar_path, sidecar)
        return target


SCALES = ("original", "standardized")
FORMATS = ("stablehlo", "onnx")  # Run.export, gradfit export --format


def load_run(run_dir: str | Path) -> Run:
    """Load a run directory made by ``gradfit train`` (or a sweep member) for prediction and evaluation.

    Raises:
        RunDirError: not a run, or it saved no parameters (a failed run).
    """
    run = trained.load_run(_path(run_dir, "run_dir", "the path of a run directory"))
    return Run(**{field.name: getattr(run, field.name) for field in dataclasses.fields(run)})
