"""What an evaluation trace is: its rows v_k (``TraceRow``, with their ``Operand``s), dL/dtheta_j three ways
(``Derivative``) and the whole ``Trace``, and how their arrays are shown (``summary``, ``short``).

Pure data: ``gradfit.gradients.trace`` builds a ``Trace``, ``gradfit.cli.render`` renders one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

SMALL = 8  # arrays of at most this many elements are shown in full; larger ones are summarized


@dataclasses.dataclass(frozen=True)
class Operand:
    """One input of an operation: an earlier row v_k, or a literal constant written into the program."""

    k: int | None  # the row's k, or None for a literal
    value: Any = None  # the literal (a scalar), when k is None

    @property
    def label(self) -> str:
        """'v3', 'v-1' or the literal, e.g. '0.5'."""
        return f"v{self.k}" if self.k is not None else short(self.value)


@dataclasses.dataclass(frozen=True)
class TraceRow:
    """One intermediate v_k of the evaluation.

    ``tangent`` is None when forward mode was not run or v_k is not differentiable (an integer or a bool); the same
    for ``adjoint`` and reverse mode. Arrays have v_k's shape.
    """

    k: int
    kind: str  # "parameter", "data", "constant" or "operation"
    op: str  # 'dot_general', 'reduce_sum axes=(0,)', 'logaddexp (custom_jvp)'; for an input, its kind
    name: str  # an input's name ('w', 'layers/0/b', 'x'); '' for the rest
    primitive: str  # the JAX primitive ('' for inputs and constants)
    inputs: tuple[Operand, ...]
    value: np.ndarray
    tangent: np.ndarray | None
    adjoint: np.ndarray | None
    scope: str = ""  # the inlined functions this operation came from, outermost first ('relu', 'f/g')
    note: str = ""  # how a derivative was obtained when that is not the obvious way

    @property
    def label(self) -> str:
        return f"v{self.k}"


@dataclasses.dataclass(frozen=True)
class Derivative:
    """dL/dtheta_j three ways: the output's tangent, theta_j's adjoint and the hand-derived gradient's entry."""

    forward: float | None
    reverse: float | None
    manual: float | None


@dataclasses.dataclass(frozen=True)
class Trace:
    """The evaluation trace of ``loss(params, *args)`` for one parameter entry theta_j.

    Rows are in evaluation order: inputs v_{1-n} .. v_0, then one row per operation output; the loss is the row
    ``output`` (the last one unless the loss is an input or a literal).
    """

    rows: tuple[TraceRow, ...]
    param: str  # theta_j as typed back to the user: 'w[1]', 'b'
    leaf: str  # its parameter: 'w'
    index: tuple[int, ...]  # its entry in that parameter (non-negative)
    mode: str  # 'forward', 'reverse' or 'both'
    output: int  # k of the loss
    loss: float
    derivative: Derivative

    @property
    def forward(self) -> bool:
        return self.mode in ("forward", "both")

    @property
    def reverse(self) -> bool:
        return self.mode in ("reverse", "both")

    @property
    def num_inputs(self) -> int:
        return sum(row.kind in ("parameter", "data") for row in self.rows)

    def row(self, k: int) -> TraceRow:
        """The row v_k."""
        return self.rows[k + self.num_inputs - 1]

    def to_json(self) -> dict:
        """The trace as JSON-ready data: arrays as ``summary`` gives them, NaN and inf as None."""
        from gradfit.runs.rundir import to_jsonable

        rows = [
            {
                "k": row.k,
                "kind": row.kind,
                "op": row.op,
                "name": row.name,
                "primitive": row.primitive,
                "inputs": [{"k": o.k} if o.k is not None else {"literal": summary(o.value)} for o in row.inputs],
                "shape": list(row.value.shape),
                "dtype": str(row.value.dtype),
                "value": summary(row.value),
                "tangent": summary(row.tangent),
                "adjoint": summary(row.adjoint),
                "scope": row.scope,
                "note": row.note,
            }
            for row in self.rows
        ]
        return to_jsonable(
            {
                "param": self.param,
                "leaf": self.leaf,
                "index": list(self.index),
                "mode": self.mode,
                "output": self.output,
                "loss": self.loss,
                "rows": rows,
                "dL_dtheta": dataclasses.asdict(self.derivative),
            }
        )


def summary(value) -> Any:
    """What a table or JSON shows of an array: itself when small, else its shape, dtype, norm, min and max.

    Args:
        value: an array (any shape), a scalar, or None.

    Returns:
        None for None; a Python number (shape ()) or nested list for at most ``SMALL`` elements; otherwise
        ``{"shape": [...], "dtype": str, "norm": float, "min": float, "max": float}``. NaN and inf stay floats.
    """
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":  # bfloat16 and friends: NumPy's tolist would keep the ml_dtypes scalars
        array = array.astype(np.float64)
    if array.size <= SMALL:
        return array.tolist()
    floats = array.astype(np.float64)
    return {
        "shape": list(array.shape),
        "dtype": str(np.asarray(value).dtype),
        "norm": float(np.linalg.norm(floats)),
        "min": float(floats.min()),
        "max": float(floats.max()),
    }


def short(value, digits: int = 4) -> str:
    """A value in a few characters, for graph labels and literals: '0.35', '[0.5, -0.25]',
    '(64, 3) float32, norm 12.3, min -1.2, max 2.5'."""
    shown = summary(value)
    if isinstance(shown, dict):
        return (
            f"({', '.join(map(str, shown['shape']))}) {shown['dtype']}, norm {_number(shown['norm'], digits)}, "
            f"min {_number(shown['min'], digits)}, max {_number(shown['max'], digits)}"
        )
    return _nested(shown, digits)


def _nested(shown, digits: int) -> str:
    if isinstance(shown, list):
        return "[" + ", ".join(_nested(v, digits) for v in shown) + "]"
    return _number(shown, digits)


def _number(value, digits: int) -> str:
    if isinstance(value, float):
        return f"{value + 0.0:.{digits}g}" if math.isfinite(value) else str(value)  # + 0.0: -0 shows as 0
    return str(value)
