"""gradfit as scikit-learn estimators: ``GradfitClassifier`` and ``GradfitRegressor``.

    from gradfit.sklearn import GradfitClassifier

    model = GradfitClassifier(model="mlp", hidden=(64,), optimizer="adam", epochs=50, batch_size=64)
    model.fit(X, y).predict_proba(X_new)

``fit`` trains through the same code as ``gradfit train`` (``gradfit.training.loop.train``), on rows in memory
(``gradfit.data.supplied``): the same settings give the same numbers. Constructor parameters are config keys in
flat form; None (every default) takes the value of ``config=`` (a YAML file or a dict) and, below it, gradfit's
default. Two data keys are the estimator's own: ``fit`` trains on every row of X (``data.test_fraction`` is 0, the
caller holds test rows out) but the ``validation_fraction`` it evaluates on (``data.val_fraction``, default 0).
Nothing is written unless ``out_dir`` is given (then a run directory, as ``gradfit train`` makes), and nothing is
printed: a ``GridSearchCV`` fits hundreds of times (``gradfit.fit`` shows progress in a terminal or notebook).

Input checks are scikit-learn's (``validate_data``); gradfit's own errors about the data or settings are raised as
ValueError, with gradfit's message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as exc:  # also an older scikit-learn, without validate_data
    raise ImportError(
        f"gradfit.sklearn needs scikit-learn 1.6 or newer: pip install 'gradfit[sklearn]' ({exc})"
    ) from None

from gradfit import api
from gradfit.config.load import GradfitConfig, used_tree
from gradfit.core.models import named_leaves
from gradfit.data.columns import column_names
from gradfit.data.labels import class_ids
from gradfit.data.text import preview
from gradfit.errors import ConfigError, DataError, DeviceError, GradfitError, RunDirError
from gradfit.trained.run import TrainedRun, assemble
from gradfit.training import loop

#: constructor parameter -> the config key it sets
KEYS = {
    "model": "model.kind",
    "hidden": "model.hidden",
    "activation": "model.activation",
    "l2": "model.l2",
    "l1": "model.l1",
    "class_weight": "model.class_weight",
    "loss": "model.loss",
    "huber_delta": "model.huber_delta",
    "optimizer": "optimizer.name",
    "learning_rate": "optimizer.learning_rate",
    "epochs": "train.epochs",
    "steps": "train.steps",
    "batch_size": "train.batch_size",
    "tol": "train.tol",
    "early_stopping": "train.early_stopping.monitor",
    "missing": "data.missing",
    "categorical": "data.categorical",
    "standardize": "data.standardize",
    "precision": "runtime.precision",
    "device": "runtime.device",
    "seed": "seed",
}


class _GradfitEstimator(BaseEstimator):
    """What both estimators share: settings -> config, fit, the trained run, pickling."""

    _regression = False
    _FITTED = ("classes_", "config_", "summary_", "n_iter_", "run_dir_", "n_features_in_", "feature_names_in_")

    def _config(self, columns: Sequence[str] = (), weighted: bool = False) -> GradfitConfig:
        """The validated config of these settings; the label (and weight) column get names no column of X has."""
        overrides = {key: getattr(self, name) for name, key in KEYS.items() if getattr(self, name, None) is not None}
        overrides["data.test_fraction"] = 0  # the caller holds test rows out
        base = self._base()
        if self.validation_fraction is not None or _setting(base, "data", "val_fraction") is None:
            overrides["data.val_fraction"] = self.validation_fraction or 0
        overrides["data.target"] = _free_name("target", columns)
        if weighted:
            overrides["data.weight"] = _free_name("sample_weight", columns)
        try:
            if self._regression and self.model is None and api.resolve(base, memory=True).model.kind == "logistic":
                overrides["model.kind"] = "linear"  # gradfit's default kind cannot fit a numeric target
            config = api.resolve(base, overrides, memory=True)
            if self._regression and not config.model.regression and config.model.kind == "mlp":
                if config.model.loss == "auto":  # an MLP fits a numeric target with the squared loss
                    config = api.resolve(base, {**overrides, "model.loss": "squared"}, memory=True)
        except ConfigError as exc:
            raise ValueError(f"{type(self).__name__}: {exc}") from None
        if config.model.regression != self._regression:
            wanted = "a numeric target" if self._regression else "classes"
            other = "GradfitClassifier" if self._regression else "GradfitRegressor"
            raise ValueError(
                f"{type(self).__name__} fits {wanted}, and model.kind {config.model.kind} with the "
                f"{config.model.resolved_loss} loss does not; use {other}, or another model or loss"
            )
        return config

    def _base(self) -> Any:
        """``config=`` as resolve takes it: a file, a dict, or a GradfitConfig's keys."""
        if isinstance(self.config, GradfitConfig):
            return used_tree(self.config)
        return {} if self.config is None else self.config

    def _missing_ok(self) -> bool:
        """Whether rows may hold NaN (data.missing imputes them), from the parameter or ``config=``."""
        chosen = self.missing if self.missing is not None else _setting(self._base(), "data", "missing")
        return chosen not in (None, "error")

    def _fit(self, X: Any, y: Any, sample_weight: Any) -> _GradfitEstimator:
        try:
            return self._fit_rows(X, y, sample_weight)
        except BaseException:
            for name in (*self._FITTED, "_state", "_run", "_positions"):  # a failed fit leaves no half of one
                self.__dict__.pop(name, None)
            raise

    def _fit_rows(self, X: Any, y: Any, sample_weight: Any) -> _GradfitEstimator:
        table = _is_table(X)
        X_checked, y = validate_data(
            self,
            X,
            y,
            dtype=None if table else "numeric",
            ensure_all_finite="allow-nan" if self._missing_ok() else True,
            y_numeric=self._regression,
        )
        if X_checked.shape[0] < 2:
            raise ValueError(f"n_samples={X_checked.shape[0]}: {type(self).__name__} needs at least 2 rows to fit")
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X_checked, ensure_non_negative=True)
        if not self._regression:
            check_classification_targets(y)
            self.classes_ = np.unique(y)
            if len(self.classes_) < 2:
                raise ValueError(
                    f"{type(self).__name__} needs rows of at least 2 classes; the data hold one class "
                    f"({self.classes_[0]!r})"
                )
        named = table and hasattr(self, "feature_names_in_")  # a table whose columns are named by text
        config = self._config((column_names(X) or []) if named else [], sample_weight is not None)
        out_dir = None if self.out_dir is None else Path(self.out_dir)
        try:
            config, rows = api.in_memory(config, X if named else X_checked, y, sample_weight)
            trained = loop.train(config, out_dir, None, rows, reuse_programs=True)
        except (ConfigError, DataError, DeviceError, RunDirError) as exc:
            raise ValueError(str(exc)) from None
        arrays = {name: np.asarray(leaf) for name, leaf in named_leaves(trained.params).items()}
        self._state = (config, trained.preprocessing, arrays)
        self._run = _assembled(type(self).__name__, self._state, trained.summary)
        if not self._regression:
            self._positions = _positions(self.classes_, self._run.classes)
        self.config_ = config
        self.summary_ = trained.summary
        self.n_iter_ = trained.summary.steps
        self.run_dir_ = trained.summary.run_dir
        return self

    def _rows(self, X: Any) -> Any:
        """X checked as at fit (columns, their count and names), in the form the run reads."""
        check_is_fitted(self)
        table = _is_table(X)
        checked = validate_data(
            self,
            X,
            reset=False,
            dtype=None if table else "numeric",
            ensure_all_finite="allow-nan" if self.config_.data.missing != "error" else True,
        )
        return X if table and hasattr(self, "feature_names_in_") else checked

    def _call(self, method: str, X: Any) -> np.ndarray:
        rows = self._rows(X)
        try:
            return getattr(self._run, method)(rows)
        except GradfitError as exc:  # a row the run refuses (an unseen category, a value beyond the dtype)
            raise ValueError(str(exc)) from None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            tags.input_tags.allow_nan = self._missing_ok()
        except Exception:  # tags must not fail; fit reports a config= that cannot be read
            tags.input_tags.allow_nan = False
        return tags

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_run", None)  # jax arrays and compiled functions: rebuilt from _state on load
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "_state" in state:
            self._run = _assembled(type(self).__name__, state["_state"], state.get("summary_"))


class GradfitClassifier(ClassifierMixin, _GradfitEstimator):
    """A classifier trained by gradfit: logistic regression (binary or multinomial) or an MLP.

    Parameters (None: the value in ``config``, else gradfit's default, given in brackets):
        config: a gradfit config (YAML file or dict) whose values are the defaults of the parameters below.
        model: "logistic" or "mlp" [logistic]. hidden: hidden layer sizes [(64, 64)]. activation [relu].
        l2, l1: penalties [0, 0]. class_weight: "balanced" or {label: weight} [None].
        optimizer: an optax optimizer name [adam]. learning_rate [1e-3]. epochs [100] or steps.
        batch_size: minibatch rows [full batch]. tol: stop at this gradient norm [None].
        validation_fraction: rows held out for evaluation [0]. early_stopping: a metric to stop on, such as
            "val_loss" (needs validation_fraction) [None].
        missing: "error", "mean", "median" or "most_frequent" [error]. categorical: columns of a DataFrame to
            one-hot encode, or "auto" [none]. standardize [True].
        precision: float32 or float64 [float32]. device: auto, cpu or gpu [auto]. seed [0].
        out_dir: write a run directory under this folder (inspect it with gradfit's commands) [nothing written].

    Attributes: ``classes_``, ``n_features_in_``, ``feature_names_in_`` (a DataFrame's columns), ``config_`` (the
    resolved config), ``summary_`` (how training ended), ``n_iter_`` (steps taken), ``run_dir_``.
    """

    def __init__(
        self,
        config: Any = None,
        *,
        model: str | None = None,
        hidden: Any = None,
        activation: str | None = None,
        l2: float | None = None,
        l1: float | None = None,
        class_weight: Any = None,
        optimizer: str | None = None,
        learning_rate: float | None = None,
        epochs: int | None = None,
        steps: int | None = None,
        batch_size: int | None = None,
        tol: float | None = None,
        validation_fraction: float | None = None,
        early_stopping: str | None = None,
        missing: str | None = None,
        categorical: Any = None,
        standardize: bool | None = None,
        precision: str | None = None,
        device: str | None = None,
        seed: int | None = None,
        out_dir: str | Path | None = None,
    ):
        _keep(self, locals())

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> GradfitClassifier:
        """Train on X (an array, or a pandas or polars DataFrame or pyarrow Table: columns by name) and labels y."""
        return self._fit(X, y, sample_weight)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (n, K), columns in the order of ``classes_``."""
        return self._call("predict_proba", X)[:, self._positions]

    def predict_log_proba(self, X: Any) -> np.ndarray:
        return np.log(self.predict_proba(X))

    def decision_function(self, X: Any) -> np.ndarray:
        """The model's scores: the logit of ``classes_[1]`` (n,) for two classes, else log-probabilities (n, K)."""
        logs = self._call("_log_probs", X)[:, self._positions]
        return logs[:, 1] - logs[:, 0] if len(self.classes_) == 2 else logs

    def predict(self, X: Any) -> np.ndarray:
        best = self.predict_proba(X).argmax(axis=1)
        return self.classes_[best]


class GradfitRegressor(RegressorMixin, _GradfitEstimator):
    """A regressor trained by gradfit: linear regression (least squares, ridge, Huber, elastic net) or an MLP.

    Parameters as ``GradfitClassifier``'s, with model "linear" [linear] or "mlp", and in place of class_weight:
        loss: "squared" or "huber" [squared]. huber_delta: where Huber turns linear, in the target's units [1.0].
    """

    _regression = True

    def __init__(
        self,
        config: Any = None,
        *,
        model: str | None = None,
        hidden: Any = None,
        activation: str | None = None,
        l2: float | None = None,
        l1: float | None = None,
        loss: str | None = None,
        huber_delta: float | None = None,
        optimizer: str | None = None,
        learning_rate: float | None = None,
        epochs: int | None = None,
        steps: int | None = None,
        batch_size: int | None = None,
        tol: float | None = None,
        validation_fraction: float | None = None,
        early_stopping: str | None = None,
        missing: str | None = None,
        categorical: Any = None,
        standardize: bool | None = None,
        precision: str | None = None,
        device: str | None = None,
        seed: int | None = None,
        out_dir: str | Path | None = None,
    ):
        _keep(self, locals())

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> GradfitRegressor:
        """Train on X (an array, or a pandas or polars DataFrame or pyarrow Table: columns by name) and target y."""
        return self._fit(X, y, sample_weight)

    def predict(self, X: Any) -> np.ndarray:
        """Predictions (n,) in the target's units."""
        return self._call("predict", X)


def _keep(estimator: BaseEstimator, arguments: dict[str, Any]) -> None:
    """Store the constructor's arguments as they are, as scikit-learn's contract asks (no checks in __init__)."""
    for name, value in arguments.items():
        if name not in ("self", "__class__"):
            setattr(estimator, name, value)


def _assembled(name: str, state: tuple, summary: Any) -> TrainedRun:
    config, preprocessing, arrays = state
    return assemble(Path(name), config, preprocessing, arrays, summary)


def _is_table(X: Any) -> bool:
    return column_names(X) is not None and not isinstance(X, np.ndarray)


def _positions(classes: np.ndarray, run_classes: list) -> np.ndarray:
    """Where each of scikit-learn's ``classes_`` is among the run's classes. gradfit reads labels as a file's (text
    stripped, numbers written as text as numbers): labels that differ only so are refused, being one class to it."""
    positions = class_ids(classes, run_classes, "y")
    if len(np.unique(positions)) < len(classes):
        raise ValueError(
            f"y: gradfit reads the labels {preview(classes.tolist(), 10)} as {preview(run_classes, 10)} (text "
            "is stripped, and text that is a number is that number), so some are one class; relabel them"
        )
    return positions


def _setting(config: Any, section: str, key: str) -> Any:
    """The value ``config=`` (a dict or a YAML file) gives ``section.key``, or None where it gives none."""
    if isinstance(config, (str, Path)):
        try:
            config = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None  # resolve reports the file's problem, naming it
    part = config.get(section) if isinstance(config, Mapping) else None
    return part.get(key) if isinstance(part, Mapping) else None


def _free_name(name: str, columns: Sequence[str]) -> str:
    """``name``, or ``_name``, ``__name``, ...: the first that no column of X has."""
    while name in columns:
        name = f"_{name}"
    return name


__all__ = ["GradfitClassifier", "GradfitRegressor"]
