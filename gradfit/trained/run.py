"""A finished run loaded back for eval, predict and inference: config, preprocessing, parameters, model.

New data go through exactly what training did: the saved standardization (never refitted), the saved label
mapping, the model in the run's precision. A run whose training data changed since is refused for anything that
re-creates its splits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradfit.config.load import GradfitConfig
from gradfit.core import precision
from gradfit.core.metrics import classification_metrics, regression_metrics
from gradfit.core.models import Model, build_model, named_leaves, params_from_named
from gradfit.data import blocks, tabular
from gradfit.data.columns import CategoryCodes, column_names, feature_matrix
from gradfit.data.dataset import Dataset, first_overflow
from gradfit.data.encoding import Encoding
from gradfit.data.labels import class_ids, numeric_target
from gradfit.data.load import load
from gradfit.errors import DataError, GradfitError, RunDirError
from gradfit.runs import rundir

BLOCK_ROWS = 1024  # rows per call of the compiled forward pass


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    run_dir: Path
    config: GradfitConfig
    preprocessing: dict  # preprocessing.json: feature_names, classes, standardize {mean, std} or None
    params: Any  # pytree of jax arrays in the run's precision
    model: Model
    summary: rundir.Summary | None  # None when the run has none

    @property
    def feature_names(self) -> list[str]:
        return self.preprocessing["feature_names"]

    @property
    def classes(self) -> list:
        """The class labels, in id order; empty for a numeric target."""
        return self.preprocessing["classes"]

    @property
    def regression(self) -> bool:
        """True when the model predicts a numeric target (a squared or huber loss)."""
        return self.config.model.regression

    @property
    def target_scale(self) -> tuple[float, float]:
        """A numeric target's training (mean, std), which the model's outputs are in units of; (0, 1) for classes."""
        scale = self.preprocessing.get("target_scale")
        return (0.0, 1.0) if scale is None else (scale["mean"], scale["std"])

    @property
    def precision(self) -> precision.Precision:
        return precision.of(self.config)

    @property
    def encoding(self) -> Encoding:
        """How the input columns became the features (``_check_preprocessing`` checked the record)."""
        return Encoding.from_record(self.preprocessing.get("encoding"), self.feature_names)

    @property
    def input_names(self) -> list[str]:
        """The columns a table for this run must hold, in training order (before any one-hot encoding)."""
        return self.encoding.input_names

    @property
    def target(self) -> str:
        """The label column's name in the training table (a converted folder's keeps its source's)."""
        return self.preprocessing.get("target") or self.config.data.target

    def standardize(self, x: Any) -> np.ndarray:
        """Raw features (a table or an (n, d) array, as ``predict`` takes them) -> what the model saw in training,
        with the run's saved mean and std (float64).

        Values are not checked here (``predict_proba`` checks that they are finite, ``batches`` that they are finite
        in the run's dtype).
        """
        return self._scaled(self.feature_matrix(x))

    def _scaled(self, x: np.ndarray) -> np.ndarray:
        """``standardize`` for an (n, d) array of numbers already in training order (a checked block)."""
        x = np.asarray(x, np.float64)
        scaling = self.preprocessing["standardize"]
        if scaling is None:
            return x
        with np.errstate(over="ignore"):  # a huge value over a tiny std: inf, reported by the caller's check
            return (x - np.asarray(scaling["mean"])) / np.asarray(scaling["std"])

    def feature_matrix(self, x: Any) -> np.ndarray:
        """Features as a float64 (n, d) array in training order, encoded as in training (categories one-hot,
        missing cells filled), not standardized, values not checked.

        A table (pandas or polars DataFrame, pyarrow Table; anything with ``.columns`` or ``.column_names``) is
        matched by column name, as ``gradfit predict`` matches a CSV's header: it must hold the run's input
        columns, in any order; its label column and the run's ``data.drop`` columns are ignored (any other
        column too when the run chose ``data.features``). A plain array is taken as it is: its columns must be
        the input columns in training order, all numeric.

        Raises:
            DataError: a missing, unexpected or duplicated column, a column that is not numbers, a wrong shape,
                a missing cell or unseen category the run does not accept.
        """
        encoding = self.encoding
        categories = CategoryCodes({n: [] for n in encoding.categorical_names}) if encoding.categorical_names else None
        ignore = [self.target, *self.config.data.drop]
        names = column_names(x)
        if names is not None and self.config.data.features is not None:
            ignore += [n for n in names if n not in set(encoding.input_names)]
        raw = feature_matrix(x, encoding.input_names, ignore=ignore, origin="x", categories=categories)[0]
        dictionaries = categories.dictionaries if categories is not None else {}
        return encoding.transform(raw, dictionaries, lambda row: f"x row {row}")

    def log_probabilities(self) -> Callable[..., np.ndarray]:
        """A function: standardized x (n, d) [, locate] -> log class probabilities (n, K) float64.

        Rows go through one compiled program in fixed blocks of ``BLOCK_ROWS`` (the last one padded): XLA may
        round differently at other shapes, and a row's probabilities must not depend on how a file is batched.
        Log-probabilities are never returned non-finite: such a row raises a DataError naming ``locate(i)``
        (i: the row's index in x; default "row i"), so no nan probability is ever written.
        """
        if self.regression:
            raise GradfitError(
                f"{self.run_dir}: the model predicts a numeric target ({self.config.model.resolved_loss} loss); it has "
                "no class probabilities"
            )

        def log_softmax(logits):
            if logits.ndim == 1:  # binary: one logit, for classes[1]
                logits = jnp.stack([jnp.zeros_like(logits), logits], axis=1)
            return jax.nn.log_softmax(logits)

        return self._blocked(log_softmax, "probabilities for this row are", len(self.classes))

    def predictions(self) -> Callable[..., np.ndarray]:
        """A numeric target's ``log_probabilities``: standardized x (n, d) [, locate] -> predictions (n,) float64
        in the target's units (the model's output times the training std, plus the mean)."""
        mean, std = self.target_scale
        return self._blocked(lambda outputs: mean + std * outputs, "prediction for this row is", None)

    def _blocked(self, finish: Callable, what: str, width: int | None) -> Callable[..., np.ndarray]:
        """x [, locate] -> ``finish(model outputs)`` in float64, computed in fixed blocks (see
        ``log_probabilities``), never non-finite. ``width``: the result's columns (None: one value per row)."""
        params, chosen = self.params, self.precision
        dtype = chosen.param_dtype

        @jax.jit
        def program(params, x):
            return finish(self.model.apply(params, x))

        def outputs(x: np.ndarray, locate: Callable[[int], str] | None = None) -> np.ndarray:
            out = []
            with chosen.scope():
                for start in range(0, len(x), BLOCK_ROWS):
                    with np.errstate(over="ignore"):  # beyond the dtype's range: caught below as non-finite
                        block = np.asarray(x[start : start + BLOCK_ROWS], dtype)
                    rows = len(block)
                    if rows < BLOCK_ROWS:  # pad the last block to the compiled shape
                        block = np.concatenate([block, np.zeros((BLOCK_ROWS - rows, x.shape[1]), dtype)])
                    out.append(np.asarray(program(params, block), np.float64)[:rows])
            result = np.concatenate(out) if out else np.zeros((0,) if width is None else (0, width))
            bad = np.flatnonzero(~np.isfinite(result.reshape(len(result), -1)).all(axis=1))
            if len(bad):
                where = locate(int(bad[0])) if locate is not None else f"row {bad[0]}"
                raise DataError(
                    f"{where}: the model's {what} not finite in {dtype.name} "
                    f"({len(bad)} such row(s) in this batch); are its features far outside the range "
                    "of the training data, or sentinels for missing values? Remove or impute them"
                )
            return result

        return outputs

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities (n, K), columns in the order of ``classes``, for raw features ``x``: a table whose
        columns are matched by name, or an (n, d) array with the columns in training order (``feature_matrix``).

        The rows go through exactly what training did (the saved standardization, the run's precision).
        """
        return np.exp(self._log_probs(x))

    def predict(self, x: Any) -> np.ndarray:
        """The most probable class of each row of ``x`` (a table or an (n, d) array), as the original label values;
        for a numeric target, the predicted value (float64, in the target's units)."""
        if self.regression:
            return self.predictions()(self._scaled(self._features(x)))
        return np.asarray(self.classes)[self.predict_proba(x).argmax(axis=1)]

    def evaluate(self, x: Any, y: Any, sample_weight: Any = None) -> dict:
        """``gradfit eval``'s metrics (log loss, accuracy, per-class precision/recall/F1, ROC AUC, confusion
        matrix; for a numeric target RMSE, MAE and R^2) on raw features ``x`` (a table or an (n, d) array) and their
        labels ``y`` (n,), given as the original label values (an array, a list, a pandas or polars Series, a
        pyarrow array); ``sample_weight`` (n,) weighs the rows (as scikit-learn's)."""
        scores = self.predict(x) if self.regression else self._log_probs(x)
        if y is None or isinstance(y, (str, bytes, Mapping)) or column_names(y) is not None:
            got = "None" if y is None else type(y).__name__
            raise DataError(f"y: expected {len(scores)} labels, one per row of x (an array or a Series), got {got}")
        y = np.asarray(y)
        if y.shape != (len(scores),):
            raise DataError(f"y: expected {len(scores)} labels, one per row of x, got an array of shape {y.shape}")
        weights = None
        if sample_weight is not None:
            weights = np.asarray(sample_weight, np.float64)
            if weights.shape != (len(scores),) or not (weights >= 0).all():
                raise DataError(f"sample_weight: expected {len(scores)} numbers >= 0, one per row of x")
        if self.regression:
            result = regression_metrics(numeric_target(y, "y"), scores, weights)
        else:
            result = classification_metrics(class_ids(y, self.classes, "y"), scores, self.classes, weights)
        return {**result, "weighted_by": None if weights is None else "sample_weight"}

    def _log_probs(self, x: Any) -> np.ndarray:
        """Log class probabilities (n, K) of raw features ``x``, checked by ``_features``."""
        return self.log_probabilities()(self._scaled(self._features(x)))

    def _features(self, x: Any) -> np.ndarray:
        """``x`` as a finite float64 (n, d) array with this run's d features, or a DataError saying why not."""
        x = self.feature_matrix(x)
        bad = np.argwhere(~np.isfinite(x))
        if len(bad):
            row, col = bad[0]
            raise DataError(
                f"x[{row}, {col}] (feature '{self.feature_names[col]}') is {x[row, col]}; every value must be finite"
            )
        return x

    @property
    def weight(self) -> str | None:
        """The sample-weight column the run was trained with (data.weight), or None."""
        return self.preprocessing.get("weight")

    def open_data(self, path: Path, target: str | None, need_labels: bool) -> blocks.Table:
        """A data file (or converted folder) with this run's input columns, its header checked now. The run's
        weight column is read where labels are (``batches`` hands out its weights) and the file has it; it is
        never a feature."""
        encoding, weight = self.encoding, self.weight
        extra = [] if weight is None else [weight]

        def opened(with_weight: bool) -> blocks.Table:
            return tabular.open_table(
                path,
                target,
                [*encoding.input_names, *(extra if with_weight else [])],
                need_labels,
                target_hint="pass --target",
                drop=[*self.config.data.drop, *([] if with_weight else extra)],
                categorical=encoding.categorical_names,
                extra_ok=self.config.data.features is not None,
            )

        if weight is not None and need_labels:
            try:
                return opened(True)
            except DataError:  # no weight column: unweighted metrics (a real problem is raised again below)
                pass
        return opened(False)

    def batches(self, table: blocks.Table, rows: int) -> Iterator[blocks.Block]:
        """Standardized blocks of a table; labels as class indices when it has them.

        Raw cells are checked by the reader (finite, at most 1e150 in magnitude, as in training); here every
        standardized value must also be finite in the run's compute dtype (float32's range is 3.4e38): otherwise
        a DataError names the line (or row) and column.
        """
        with blocks.weight_cells(self.weight):
            yield from self._batches(table, rows)

    def _batches(self, table: blocks.Table, rows: int) -> Iterator[blocks.Block]:
        dtype = self.precision.compute_dtype
        scaled = self.preprocessing["standardize"] is not None
        names, encoding = self.feature_names, self.encoding
        for block in table.blocks(rows):
            raw, weights = block.x, None
            if self.weight is not None and self.weight in table.names:
                located = _located(table, block.positions)
                raw, _, weights = blocks.split_weight(
                    raw, table.names, table.categories.dictionaries, self.weight, located
                )
            encoded = encoding.transform(raw, table.categories.dictionaries, _located(table, block.positions))
            x = self._scaled(encoded)
            found = first_overflow(x, dtype)
            if found is not None:
                row, col = found
                value = f"is {float(encoded[row, col])!r}"
                if scaled:
                    value += f", which the run's standardization makes {float(x[row, col])!r}"
                raise DataError(
                    f"{table.locate(block.positions[row])}: column '{names[col]}' {value}, beyond "
                    f"{dtype.name}'s range, in which the run computes; is it a sentinel for a missing "
                    "value? Remove or impute it"
                )
            labels = None
            if table.has_labels and block.labels is not None and self.regression:
                labels = numeric_target(block.labels, str(table.path), table.target)
            elif table.has_labels and block.labels is not None:
                labels = class_ids(block.labels, self.classes, str(table.path))
            yield blocks.Block(x, labels, block.positions, weights)


def _located(table: blocks.Table, positions: np.ndarray) -> Callable[[int], str]:
    """Where a block's row is, for a message."""
    return lambda i: table.locate(int(positions[i]))


def load_run(run_dir: str | Path) -> TrainedRun:
    """Load a run directory made by ``gradfit train``.

    Raises:
        RunDirError: not a run, or it has no usable parameters (a failed run) or preprocessing record.
        ConfigError: its config.yaml was edited into an invalid one.
    """
    folder = rundir.RunDir.open(run_dir)
    run_dir = folder.path
    config = folder.config()
    summary = folder.summary()
    preprocessing = folder.preprocessing()
    _check_preprocessing(run_dir, preprocessing)
    if not folder.has_params():
        status = f" (status {summary.status}: {summary.stop_reason})" if summary is not None else ""
        raise RunDirError(f"{run_dir}: has no params.npz{status}; only runs that saved parameters can be used")
    _, template = _model(config, preprocessing)
    shapes = {name: leaf.shape for name, leaf in named_leaves(template).items()}
    try:
        arrays = folder.load_params(expected=shapes)
    except RunDirError as exc:  # the shapes come from preprocessing.json: either file may be the wrong one
        classes, features = len(preprocessing["classes"]), len(preprocessing["feature_names"])
        raise RunDirError(
            f"{exc} (the model of {classes} classes and {features} features that preprocessing.json "
            "describes); was either file edited by hand?"
        ) from None
    return assemble(run_dir, config, preprocessing, arrays, summary, str(folder.params_file))


def assemble(
    name: Path,
    config: GradfitConfig,
    preprocessing: dict,
    arrays: Mapping[str, np.ndarray],
    summary: rundir.Summary | None,
    origin: str = "params",
) -> TrainedRun:
    """A trained run from what its run directory holds, already read: its parameters by name (``named_leaves``)
    and the rest. ``name``: how messages name the run (its run directory)."""
    model, template = _model(config, preprocessing)
    with precision.of(config).scope():
        try:
            params = params_from_named(template, dict(arrays), origin=origin)
        except ValueError as exc:
            raise RunDirError(str(exc)) from None
    return TrainedRun(name, config, preprocessing, params, model, summary)


def _model(config: GradfitConfig, preprocessing: dict) -> tuple[Model, Any]:
    """The run's model and the shapes of its parameters (a pytree of ShapeDtypeStructs)."""
    chosen = precision.of(config)
    model = build_model(
        config.model, len(preprocessing["feature_names"]), len(preprocessing["classes"]), chosen.compute_dtype
    )
    with chosen.scope():
        return model, jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), chosen.param_dtype))


def reload_dataset(run: TrainedRun) -> Dataset:
    """The run's dataset and splits (streamed where training streamed them), re-created from its config and
    checked against what training saved."""
    dataset = load(run.config)
    saved = run.preprocessing
    now = dataset.preprocessing()
    if (
        now["feature_names"] != saved["feature_names"]
        or now["classes"] != saved["classes"]
        or now["standardize"] != saved["standardize"]
        or now["target_scale"] != saved.get("target_scale")
        or now["rows"] != saved.get("rows")
    ):
        raise DataError(
            f"{dataset.name}: the training data differ from when {run.run_dir} was trained (features, "
            "labels, rows or standardization changed); its splits cannot be re-created. Evaluate on a "
            "file with --data instead"
        )
    return dataset


def _check_preprocessing(run_dir: Path, record: Any) -> None:
    """The record must be what gradfit train writes: a hand-edited one is refused here, not mid-command."""
    problem = None
    if not isinstance(record, dict) or not {"feature_names", "classes", "standardize"} <= set(record):
        problem = "it must hold feature_names, classes and standardize"
    else:
        names, classes, scaling = record["feature_names"], record["classes"], record["standardize"]
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names)
        ):
            problem = "feature_names must be a list of distinct column names"
        elif record.get("target_scale") is not None and (
            classes != [] or not _valid_scaling({k: [v] for k, v in record["target_scale"].items()}, 1)
        ):
            problem = "a numeric target's target_scale must hold a finite mean and a positive std, with no classes"
        elif record.get("target_scale") is None and (
            not isinstance(classes, list)
            or len(classes) < 2
            or not all(isinstance(c, (str, int, float)) for c in classes)
            or len(set(classes)) != len(classes)
        ):
            problem = "classes must be a list of at least two distinct labels, each a string or a number"
        elif scaling is not None and not _valid_scaling(scaling, len(names)):
            problem = f"standardize must be null or hold mean and std, {len(names)} finite numbers each (std positive)"
        else:
            try:
                Encoding.from_record(record.get("encoding"), names)
            except ValueError as exc:
                problem = str(exc)
    if problem:
        raise RunDirError(
            f"{run_dir / 'preprocessing.json'}: malformed ({problem}, as gradfit train wrote it); "
            "was it edited by hand?"
        )


def _valid_scaling(scaling: Any, width: int) -> bool:
    if not isinstance(scaling, dict):
        return False
    for key in ("mean", "std"):
        values = scaling.get(key)
        if (
            not isinstance(values, list)
            or len(values) != width
            or not all(type(v) in (int, float) and math.isfinite(v) for v in values)
        ):
            return False
    return all(v > 0 for v in scaling["std"])
