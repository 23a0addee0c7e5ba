"""A trained run's prediction function as ONNX: the same function ``gradfit.trained.export`` serializes as StableHLO
(``prediction_function``: preprocessing and model), converted by jax2onnx with a symbolic batch dimension, and a
JSON sidecar that says what goes in and out, with the graph's input and output names.

The graph takes and returns what the StableHLO artifact does, in the run's precision (``tensor(double)`` for a
float64 run). jax2onnx is an optional dependency (``pip install 'gradfit[onnx]'``), imported only here. Prints
nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
from collections.abc import Iterator
from typing import Any

from gradfit.errors import GradfitError, first_line
from gradfit.trained.export import prediction_function, sidecar
from gradfit.trained.run import TrainedRun

FORMAT = "gradfit-onnx-1"
OPSET = 17  # has every operator the prediction functions need; older runtimes load it than jax2onnx's default 23
INPUT = "x"
INSTALL_HINT = "pip install 'gradfit[onnx]'"
_ONNX_DTYPES = {"float32": 1, "float64": 11}  # onnx.TensorProto.FLOAT, DOUBLE


def export_onnx(run: TrainedRun) -> tuple[bytes, str]:
    """(the serialized ``onnx.ModelProto``, the sidecar as JSON text) of a run's prediction function."""
    to_onnx = _converter()
    info = onnx_sidecar(run)
    output = info["output"]["name"]
    try:
        with run.precision.scope(), _quiet("onnx_ir", "jax2onnx"):
            model = to_onnx(
                prediction_function(run, wide=False),  # jax2onnx types a graph in one float type
                inputs=[("batch", len(run.encoding.columns))],
                opset=OPSET,
                enable_double_precision=run.precision.x64,  # jax2onnx sets jax_enable_x64 to this while it traces
                input_names=[INPUT],
                output_names=[output],
                model_name="gradfit",
            )
    except Exception as exc:  # an unsupported primitive or dtype: the converter's own message says which
        raise GradfitError(f"cannot convert run {run.run_dir} to ONNX: {first_line(exc)}") from exc
    _check_dtype(run, model, info["inputs"]["dtype"])
    return model.SerializeToString(), json.dumps(info, indent=2) + "\n"


def onnx_sidecar(run: TrainedRun) -> dict:
    """``export.sidecar`` for the ONNX graph: its format, opset, and input and output names (the output is named
    after its kind: ``probabilities`` or ``prediction``)."""
    info = sidecar(run)
    info["format"] = FORMAT
    info["opset"] = OPSET
    info["inputs"]["name"] = INPUT
    info["output"]["name"] = info["output"]["kind"]
    del info["x64"]  # jax's switch; an ONNX graph carries its dtype
    return info


def _converter() -> Any:
    """``jax2onnx.to_onnx``, or a message saying how to install it."""
    try:
        jax2onnx = importlib.import_module("jax2onnx")  # untyped, and optional: mypy need not find it
    except ImportError:
        raise GradfitError(f"gradfit export --format onnx needs jax2onnx: {INSTALL_HINT}") from None
    return jax2onnx.to_onnx


def _check_dtype(run: TrainedRun, model: Any, dtype: str) -> None:
    """The graph's input and output are in the run's precision (a float64 run must not come out float32)."""
    expected = _ONNX_DTYPES.get(dtype)
    found = [value.type.tensor_type.elem_type for value in (*model.graph.input, *model.graph.output)]
    if expected is None or any(f != expected for f in found):
        raise GradfitError(f"cannot convert run {run.run_dir} to ONNX in {dtype}: the graph has tensor types {found}")


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Errors only from these loggers: the converter warns about every intermediate it serializes untyped."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
