"""A trained run as a standalone artifact: its whole prediction function, preprocessing included, serialized as
StableHLO by ``jax.export`` with a symbolic batch dimension, and a JSON sidecar that says what goes in and out.

The exported function takes raw input rows ``x: (batch, inputs)`` in the run's precision, columns in the sidecar's
order: numbers as they are, a categorical column as the index of its category in the sidecar's list, a missing cell
as NaN. It fills missing cells as training did, one-hot encodes categories, adds missing indicators, standardizes
and applies the model; it returns class probabilities ``(batch, K)`` (classes in the sidecar's order) or a numeric
target's predictions ``(batch,)`` in its units: what ``TrainedRun.predict_proba`` and ``predict`` return.
Preprocessing runs in float64 inside the StableHLO artifact whatever the run's precision (the caller need not enable
x64); the ONNX graph (``gradfit.trained.onnx_export``) preprocesses in the run's dtype. A cell the run would refuse
(a missing cell with ``data.missing: error``, an unseen category code with ``data.unknown_category: error``) makes
that row NaN: a compiled function cannot raise. Prints nothing.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradfit.data.encoding import Column, Encoding
from gradfit.trained.run import TrainedRun

FORMAT = "gradfit-stablehlo-1"


def prediction_function(run: TrainedRun, wide: bool = True) -> Any:
    """``x (batch, inputs) -> probabilities (batch, K) or predictions (batch,)``, pure jnp (see the module's
    docstring): what gets exported. ``wide``: preprocess in float64 (False: in the run's dtype, for a converter
    that keeps one float type per graph)."""
    encoding, params, model = run.encoding, run.params, run.model
    scaling = run.preprocessing["standardize"]
    mean = None if scaling is None else np.asarray(scaling["mean"])
    std = None if scaling is None else np.asarray(scaling["std"])
    target_mean, target_std = run.target_scale
    regression, binary = run.regression, len(run.classes) == 2

    def predict(x):
        # preprocessing in float64 and one rounding to the run's dtype, as gradfit does: a float32 artifact
        # standardizing in float32 was measured up to 1.5e-6 from predict_proba on digits, this one 1e-7
        with jax.enable_x64(wide or x.dtype == jnp.float64):
            features = _encoded(encoding, x.astype(jnp.float64) if wide else x)
            if mean is not None and std is not None:
                features = (features - mean.astype(features.dtype)) / std.astype(features.dtype)
            features = features.astype(x.dtype)
        outputs = model.apply(params, features)
        if regression:
            return target_mean + target_std * outputs
        if binary:  # one logit, for classes[1]
            outputs = jnp.stack([jnp.zeros_like(outputs), outputs], axis=1)
        return jax.nn.softmax(outputs)

    return predict


def _encoded(encoding: Encoding, x):
    """``Encoding.transform`` in jnp; a refused cell makes its row NaN (see the module's docstring)."""
    columns, indicators = [], []
    bad = jnp.zeros(x.shape[0], bool)
    for j, column in enumerate(encoding.columns):
        values = x[:, j]
        missing = jnp.isnan(values)
        if column.indicator:
            indicators.append(missing.astype(x.dtype))
        if column.fill is None:
            bad |= missing
        if not column.categorical:
            fill = 0.0 if column.fill is None else float(column.fill)  # a numeric column's fill is a number
            columns.append(jnp.where(missing, fill, values)[:, None])
            continue
        one_hot, unknown = _one_hot(encoding, column, values, missing)
        if encoding.unknown_category == "error":
            bad |= unknown
        columns.append(one_hot.astype(x.dtype))
    features = jnp.concatenate(columns + [i[:, None] for i in indicators], axis=1)
    return jnp.where(bad[:, None], jnp.nan, features)


def _one_hot(encoding: Encoding, column: Column, codes, missing):
    """(one-hot (batch, kept categories), unknown (batch,)): a code is an index into ``column.categories``; a
    missing cell takes its fill category; a code that is not a category's index is unknown (all zeros)."""
    categories = column.categories or ()
    reference = encoding.reference_category == "first"
    if missing is not None and column.fill is not None:
        codes = jnp.where(missing, float(categories.index(str(column.fill))), codes)
    known = (codes >= 0) & (codes < len(categories)) & (codes == jnp.round(codes))
    slots = jnp.arange(int(reference), len(categories), dtype=codes.dtype)  # the kept categories' codes
    return (codes[:, None] == slots[None, :]) & known[:, None], ~known & ~missing


def sidecar(run: TrainedRun) -> dict:
    """What the exported function takes and returns, JSON-ready."""
    columns = [
        {"name": c.name, "kind": "categorical", "categories": list(c.categories or ())}
        if c.categorical
        else {"name": c.name, "kind": "numeric"}
        for c in run.encoding.columns
    ]
    dtype = np.dtype(run.precision.param_dtype).name
    output: dict[str, Any] = (
        {"kind": "prediction", "target": run.target, "shape": ["batch"]}
        if run.regression
        else {"kind": "probabilities", "classes": list(run.classes), "shape": ["batch", len(run.classes)]}
    )
    return {
        "format": FORMAT,
        "run_dir": str(run.run_dir),
        "model": run.config.model.kind,
        "inputs": {"dtype": dtype, "shape": ["batch", len(columns)], "columns": columns},
        "output": output,
        "x64": dtype == "float64",
        "missing": "NaN; filled as in training, or the row's output is NaN where training refused it",
    }


def export_stablehlo(run: TrainedRun) -> tuple[bytes, str]:
    """(the serialized ``jax.export.Exported``, the sidecar as JSON text) of a run's prediction function."""
    with run.precision.scope():
        (batch,) = jax.export.symbolic_shape("batch")
        spec = jax.ShapeDtypeStruct((batch, len(run.encoding.columns)), run.precision.param_dtype)
        exported = jax.export.export(jax.jit(prediction_function(run)))(spec)
        return bytes(exported.serialize()), json.dumps(sidecar(run), indent=2) + "\n"
