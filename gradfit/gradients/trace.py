"""The evaluation trace of a loss: every intermediate value with its forward tangent and reverse adjoint.

Baydin et al. (2018), "Automatic differentiation in machine learning: a survey", tables 2 and 3, for gradfit's
own losses: the loss's jaxpr is evaluated one equation at a time, and each intermediate becomes a row v_k with

- its primal value (the forward primal trace),
- its tangent dv_k/dtheta_j, pushed forward by a JVP of that one equation from a one-hot tangent on the chosen
  parameter entry theta_j (the forward tangent trace),
- its adjoint vbar_k = dL/dv_k, pulled back by a VJP of each equation from the output's cotangent 1, summed over
  every use of v_k (the reverse adjoint trace).

Numbering follows the paper: the n inputs (the parameter leaves, then the data x, y) are v_{1-n} .. v_0 and the
operations are v_1 .. v_L, so the loss is the last row. Calls that only group operations (``jit``, ``closed_call``,
``checkpoint``) are inlined, so the rows are the operations that run; a function with a custom derivative
(``custom_jvp``/``custom_vjp``, such as ``jnp.logaddexp``) is one row whose tangent and adjoint come from its rule,
since that rule, not its implementation, is what JAX differentiates.

Pure: nothing is printed; ``gradfit.cli.render`` renders a ``Trace`` and ``Trace.to_json`` serializes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import files
from gradfit.errors import ConfigError, GradfitError
from gradfit.core.models import named_leaves, path_name

MODES = ("forward", "reverse", "both")
SMALL = 8  # arrays of at most this many elements are shown in full; larger ones are summarized
DATA_NAMES = ("x", "y")  # the names of loss_fn's data arguments, in order (more are arg2, arg3, ...)

# Primitives that only wrap a sub-jaxpr: their equations are inlined. Names from jax.extend where it has them
# (jax 0.10: jit_p is "jit", remat_p "remat2"), plus the names older and newer JAX use.
_CALL_NAMES = {"pjit", "jit", "closed_call", "core_call", "call", "remat", "remat2", "checkpoint"}
# Primitives with a custom derivative rule: kept whole, so the trace differentiates what JAX differentiates.
_CUSTOM_NAMES = {"custom_jvp_call": "custom_jvp", "custom_vjp_call": "custom_vjp",
                 "custom_vjp_call_jaxpr": "custom_vjp"}
try:  # not every JAX version exports all of these; the name sets above cover the rest
    from jax.extend.core import primitives as _primitives

    _CALL_NAMES |= {p.name for p in (getattr(_primitives, n, None) for n in
                                     ("jit_p", "pjit_p", "closed_call_p", "call_p", "remat_p")) if p is not None}
except ImportError:  # pragma: no cover - jax.extend.core is present since jax 0.4.30
    pass
try:
    from jax.extend.core import Literal as _Literal
except ImportError:  # pragma: no cover
    _Literal = None

# Equation parameters that say nothing about the mathematics (placement, precision hints) or are not short.
_QUIET_PARAMS = {"out_sharding", "sharding", "precision", "preferred_element_type", "accuracy", "out_dtype",
                 "weak_type", "algorithm", "transpose_algorithm", "mode", "unique_indices", "indices_are_sorted"}
_PARAM_ALIASES = {"broadcast_dimensions": "dims", "new_sizes": "shape"}


@dataclasses.dataclass(frozen=True)
class Operand:
    """One input of an operation: an earlier row v_k, or a literal constant written into the program."""

    k: Optional[int]  # the row's k, or None for a literal
    value: Any = None  # the literal (a scalar), when k is None

    @property
    def label(self) -> str:
        """'v3', 'v-1' or the literal, e.g. '0.5'."""
        return f"v{self.k}" if self.k is not None else _short(self.value)


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
    tangent: Optional[np.ndarray]
    adjoint: Optional[np.ndarray]
    scope: str = ""  # the inlined functions this operation came from, outermost first ('relu', 'f/g')
    note: str = ""  # how a derivative was obtained when that is not the obvious way

    @property
    def label(self) -> str:
        return f"v{self.k}"


@dataclasses.dataclass(frozen=True)
class Derivative:
    """dL/dtheta_j three ways: the output's tangent, theta_j's adjoint and the hand-derived gradient's entry."""

    forward: Optional[float]
    reverse: Optional[float]
    manual: Optional[float]


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

        rows = [{
            "k": row.k, "kind": row.kind, "op": row.op, "name": row.name, "primitive": row.primitive,
            "inputs": [{"k": o.k} if o.k is not None else {"literal": summary(o.value)} for o in row.inputs],
            "shape": list(row.value.shape), "dtype": str(row.value.dtype),
            "value": summary(row.value), "tangent": summary(row.tangent), "adjoint": summary(row.adjoint),
            "scope": row.scope, "note": row.note,
        } for row in self.rows]
        return to_jsonable({
            "param": self.param, "leaf": self.leaf, "index": list(self.index), "mode": self.mode,
            "output": self.output, "loss": self.loss, "rows": rows,
            "dL_dtheta": dataclasses.asdict(self.derivative),
        })


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
    return {"shape": list(array.shape), "dtype": str(np.asarray(value).dtype), "norm": float(np.linalg.norm(floats)),
            "min": float(floats.min()), "max": float(floats.max())}


def evaluation_trace(loss_fn: Callable, params, args: tuple = (), param: Optional[str] = None,
                     mode: str = "both", manual_grad: Optional[Callable] = None) -> Trace:
    """Trace ``loss_fn(params, *args)`` operation by operation, with tangents and adjoints for one entry theta_j.

    Args:
        loss_fn: ``(params, *args) -> scalar``, traceable by JAX.
        params: a pytree of float arrays; entries are named as ``gradfit.core.models.named_leaves`` names them.
        args: the data, e.g. ``(x, y)`` with x: (n, d), y: (n,); named x, y, arg2, ... in the trace.
        param: theta_j as 'NAME[INDEX]' ('w[1]', 'layers/0/w[3,2]', 'b' or 'b[]' for a scalar); None: the first
            entry of the first parameter of the most dimensions (the first weight).
        mode: 'forward' (tangents), 'reverse' (adjoints) or 'both'.
        manual_grad: optional ``params -> grads pytree`` (hand-derived), compared in ``Trace.derivative``.

    Returns:
        The ``Trace``. Run it inside the precision scope the parameters were made in (x64 for float64).

    Raises:
        ConfigError: an unknown ``mode``, or a ``param`` that names no parameter entry; the message lists the
            parameters and their shapes.
        ValueError: ``loss_fn`` does not return a float scalar.
    """
    if mode not in MODES:
        raise ConfigError(f"trace mode {mode!r} is not one of {', '.join(MODES)}")
    named = {name: jnp.asarray(leaf) for name, leaf in named_leaves(params).items()}
    leaf, index = parse_param(param, {name: tuple(a.shape) for name, a in named.items()})
    if not jnp.issubdtype(named[leaf].dtype, jnp.inexact):
        raise ConfigError(f"parameter {leaf} has dtype {named[leaf].dtype}: only float parameters have derivatives")
    treedef = jax.tree_util.tree_structure(params)
    data_names, data_leaves, data_tree = _data_inputs(args)

    def flat_loss(*flat):
        rebuilt = jax.tree_util.tree_unflatten(treedef, flat[:len(named)])
        return loss_fn(rebuilt, *jax.tree_util.tree_unflatten(data_tree, flat[len(named):]))

    closed = jax.make_jaxpr(flat_loss)(*named.values(), *data_leaves)
    returned = [f"{v.aval.dtype}{list(v.aval.shape)}" for v in closed.jaxpr.outvars]
    out_aval = closed.jaxpr.outvars[0].aval if len(returned) == 1 else None
    if out_aval is None or out_aval.shape != () or not jnp.issubdtype(out_aval.dtype, jnp.inexact):
        raise ValueError(f"loss_fn must return one float scalar; it returned {', '.join(returned) or 'nothing'}")

    program = _Program()
    inputs = [("parameter", name) for name in named] + [("data", name) for name in data_names]
    env = {}
    for var, (kind, name), value in zip(closed.jaxpr.invars, inputs, [*named.values(), *data_leaves]):
        env[var] = Operand(program.add_row(kind, kind, name, value=jnp.asarray(value)))
    program.flatten(closed.jaxpr, closed.consts, env, scope="")
    output = program.operand_row(_read(env, closed.jaxpr.outvars[0]))
    output += program.renumber()

    theta_k = list(named).index(leaf) + 1 - len(inputs)
    values, tangents, note = program.evaluate_forward(theta_k, index, tangents=mode != "reverse")
    adjoints = program.evaluate_reverse(values, output) if mode != "forward" else {}

    rows = tuple(dataclasses.replace(
        row, value=np.asarray(values[row.k]),
        tangent=None if row.k not in tangents else np.asarray(tangents[row.k]),
        adjoint=None if row.k not in adjoints else np.asarray(adjoints[row.k]),
        note=note.get(row.k, "")) for row in program.rows)
    by_k = {row.k: row for row in rows}
    manual = None
    if manual_grad is not None:
        manual = float(np.asarray(named_leaves(manual_grad(params))[leaf])[index])
    derivative = Derivative(
        forward=float(by_k[output].tangent) if by_k[output].tangent is not None else None,
        reverse=float(by_k[theta_k].adjoint[index]) if by_k[theta_k].adjoint is not None else None,
        manual=manual)
    return Trace(rows=rows, param=format_param(leaf, index), leaf=leaf, index=index, mode=mode, output=output,
                 loss=float(by_k[output].value), derivative=derivative)


def parse_param(text: Optional[str], shapes: dict[str, tuple[int, ...]]) -> tuple[str, tuple[int, ...]]:
    """'layers/0/w[3,2]' -> ('layers/0/w', (3, 2)), checked against the parameters' shapes.

    Args:
        text: 'NAME[INDEX]', 'NAME' or 'NAME[]' for a scalar; negative indices count from the end. None: the
            first entry of the first parameter of the most dimensions.
        shapes: each parameter's name and shape, in pytree order.

    Raises:
        ConfigError: naming what is wrong and listing the parameters with their shapes.
    """
    if text is None:  # the first weight: a bias comes first in pytree order, and tells less
        name = max(shapes, key=lambda n: len(shapes[n]))
        return name, (0,) * len(shapes[name])
    listing = "; the parameters are " + ", ".join(f"{n} {_shape_text(s)}" for n, s in shapes.items())
    match = re.fullmatch(r"\s*([^\[\]\s]+)\s*(?:\[([^\]]*)\])?\s*", text)
    if match is None:
        raise ConfigError(f"parameter entry {text!r} is not NAME[INDEX] (e.g. w[0], layers/0/w[1,2]){listing}")
    name, index_text = match.group(1), match.group(2)
    if name not in shapes:
        lowered = {n.lower(): n for n in shapes}  # 'W' is one edit from 'w', which difflib's ratio misses
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=1)]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown parameter {name!r} in {text!r}{hint}{listing}")
    shape = shapes[name]
    if index_text is None and shape:
        raise ConfigError(f"{text!r}: {name} has shape {_shape_text(shape)}, so pick one entry, e.g. "
                          f"{format_param(name, (0,) * len(shape))}{listing}")
    parts = [p.strip() for p in (index_text or "").split(",") if p.strip()]
    try:
        index = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{text!r}: indices must be integers{listing}") from None
    if len(index) != len(shape):
        raise ConfigError(f"{text!r}: {name} has shape {_shape_text(shape)}, so it takes {len(shape)} "
                          f"ind{'ex' if len(shape) == 1 else 'ices'}, not {len(index)}{listing}")
    for i, size in zip(index, shape):
        if not -size <= i < size:
            raise ConfigError(f"{text!r}: index {i} is out of range for {name}, shape {_shape_text(shape)}{listing}")
    return name, tuple(i % size for i, size in zip(index, shape))


def format_param(leaf: str, index: tuple[int, ...]) -> str:
    """('w', (1,)) -> 'w[1]'; a scalar is its bare name."""
    return f"{leaf}[{','.join(map(str, index))}]" if index else leaf


def to_dot(trace: Trace) -> str:
    """The computational graph as Graphviz DOT: one node per v_k (op, value, and the derivatives computed), an
    edge from each operand; inputs are ellipses, theta_j's parameter is shaded, the loss has a double border."""
    lines = ["digraph trace {", "  rankdir=LR;", '  node [shape=box, fontname="Helvetica", fontsize=10];',
             f'  label="{_dot_escape(f"evaluation trace, theta_j = {trace.param}")}"; labelloc=t;']
    for row in trace.rows:
        if row.kind in ("parameter", "data"):
            head = f"{row.label} = {row.name}"
        else:
            first, _, rest = row.op.partition(" ")  # 'reduce_sum axes=(0,)' -> 'reduce_sum(v5) axes=(0,)'
            head = f"{row.label} = {first}({', '.join(o.label for o in row.inputs)}) {rest}".rstrip()
        text = [head, _short(row.value)]
        derivatives = [f"tangent {_short(row.tangent)}" if row.tangent is not None else "",
                       f"adjoint {_short(row.adjoint)}" if row.adjoint is not None else ""]
        if any(derivatives):
            text.append("  ".join(d for d in derivatives if d))
        attributes = [f'label="{_dot_escape(chr(10).join(text))}"']
        if row.kind in ("parameter", "data"):
            attributes.append("shape=ellipse")
        if row.kind == "parameter" and row.name == trace.leaf:
            attributes.append('style=filled, fillcolor="#fff2b3"')
        if row.k == trace.output:
            attributes.append("peripheries=2")
        lines.append(f'  "{row.label}" [{", ".join(attributes)}];')
    for row in trace.rows:
        lines.extend(f'  "{o.label}" -> "{row.label}";' for o in row.inputs if o.k is not None)
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_graph(trace: Trace, path: str | Path, force: bool = False, option: str = "--graph") -> str:
    """Write ``to_dot(trace)`` to ``path`` and, when Graphviz's ``dot`` is on PATH, an SVG beside it.

    Args:
        trace: the trace to draw.
        path: the DOT file; the SVG is the same path with the suffix .svg.
        force: replace existing files (otherwise an existing DOT or SVG file is an error).
        option: the command-line option that named ``path``, for error messages.

    Returns:
        One line saying what was written, e.g. "wrote trace.dot; no SVG: the Graphviz `dot` program is not
        installed".

    Raises:
        ConfigError: a file exists and ``force`` is off, or the path cannot be written; nothing is written then.
    """
    path = Path(path)
    svg = path.with_suffix(".svg")
    program = shutil.which("dot")
    try:  # both checked before either is written, so a refusal leaves everything as it was
        files.check_output(path, option, force)
        if program is not None and svg != path:
            files.check_output(svg, f"{option} (its SVG)", force)
    except GradfitError as exc:
        raise ConfigError(str(exc)) from None
    text = to_dot(trace)
    files.write_atomic(path, text)
    if program is None:
        return f"wrote {path}; no SVG: the Graphviz `dot` program is not installed"
    if svg == path:
        return f"wrote {path}; no SVG: {path} already has the suffix .svg, name the DOT file .dot"
    try:
        done = subprocess.run([program, "-Tsvg"], input=text.encode(), capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"wrote {path}; no SVG: running {program} failed ({exc})"
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        return f"wrote {path}; no SVG: {program} failed ({reason[0] if reason else f'exit code {done.returncode}'})"
    files.write_atomic(svg, done.stdout)
    return f"wrote {path} and {svg}"


# ---------------------------------------------------------------------------------------------------------------
# Flattening the jaxpr into rows, and evaluating them.

@dataclasses.dataclass
class _Step:
    """One equation to evaluate: its primitive and parameters, its operands, and the k of each output."""

    eqn: Any
    inputs: tuple[Operand, ...]
    outputs: tuple[int, ...]


class _Program:
    """The flat list of rows and the equations that compute them, built by ``flatten``."""

    def __init__(self):
        self.rows: list[TraceRow] = []
        self.steps: list[_Step] = []
        self.constants: dict[int, Any] = {}  # k -> value, for inputs and constants
        self.num_inputs = 0

    def add_row(self, kind: str, op: str, name: str = "", primitive: str = "", inputs=(), scope: str = "",
                value=None, aval=None) -> int:
        if kind in ("parameter", "data"):
            self.num_inputs += 1
        # numbered 0, 1, ... until every input is known; ``renumber`` then gives the paper's numbering
        k = len(self.rows)
        self.rows.append(TraceRow(k=k, kind=kind, op=op, name=name, primitive=primitive, inputs=tuple(inputs),
                                  value=aval, tangent=None, adjoint=None, scope=scope))  # value: filled when evaluated
        if value is not None:
            self.constants[k] = value
        return k

    def operand_row(self, operand: Operand) -> int:
        """The row of an operand; a literal (a loss that is a constant) gets a constant row of its own."""
        if operand.k is not None:
            return operand.k
        return self.add_row("constant", "constant", value=jnp.asarray(operand.value))

    def flatten(self, jaxpr, consts, env: dict, scope: str) -> None:
        """Append a row per constant and equation output of ``jaxpr``; ``env`` maps its input vars to operands.

        Rows are numbered 0, 1, ... here; ``renumber`` then shifts them to the paper's numbering.
        """
        for var, value in zip(jaxpr.constvars, consts):
            env[var] = Operand(self.add_row("constant", "constant", scope=scope, value=jnp.asarray(value)))
        for eqn in jaxpr.eqns:
            operands = tuple(_read(env, atom) for atom in eqn.invars)
            name = eqn.primitive.name
            sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            if name in _CALL_NAMES and sub is not None:
                inner, inner_consts = (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, ())
                inner_env = dict(zip(inner.invars, operands))
                label = eqn.params.get("name") if isinstance(eqn.params.get("name"), str) else (
                    "checkpoint" if "remat" in name or name == "checkpoint" else _function_name(eqn) or name)
                self.flatten(inner, inner_consts, inner_env, f"{scope}/{label}" if scope else label)
                for outer, inner_out in zip(eqn.outvars, inner.outvars):
                    env[outer] = _read(inner_env, inner_out)
                continue
            op = _describe(eqn)
            outputs = []
            for i, var in enumerate(eqn.outvars):
                suffix = f" #{i}" if len(eqn.outvars) > 1 else ""
                outputs.append(self.add_row("operation", op + suffix, primitive=name, inputs=operands, scope=scope,
                                            aval=var.aval))
                env[var] = Operand(outputs[-1])
            self.steps.append(_Step(eqn, operands, tuple(outputs)))

    def renumber(self) -> int:
        """0, 1, ... -> 1-n, ..., 0, 1, ...: the paper's numbering, inputs v_{1-n}..v_0 and operations from v_1.

        Returns:
            The shift added to every k.
        """
        shift = 1 - self.num_inputs

        def moved(o: Operand) -> Operand:
            return o if o.k is None else Operand(o.k + shift)

        self.rows = [dataclasses.replace(r, k=r.k + shift, inputs=tuple(map(moved, r.inputs))) for r in self.rows]
        self.steps = [_Step(s.eqn, tuple(map(moved, s.inputs)), tuple(k + shift for k in s.outputs))
                      for s in self.steps]
        self.constants = {k + shift: v for k, v in self.constants.items()}
        return shift

    def evaluate_forward(self, theta_k: int, index: tuple[int, ...], tangents: bool):
        """Primal values of every row, and with ``tangents`` each differentiable row's dv_k/dtheta_j.

        Returns:
            (values {k: array}, tangents {k: array}, notes {k: str}); after ``renumber``.
        """
        values = dict(self.constants)
        tangent = {}
        notes = {}
        if tangents:
            for k, value in self.constants.items():
                if _differentiable(value):
                    tangent[k] = jnp.zeros_like(value)
            tangent[theta_k] = jnp.zeros_like(values[theta_k]).at[index].set(1)  # the one-hot seed
        for step in self.steps:
            fixed, diff = _split(step.inputs, values)
            function = _step_function(step.eqn, step.inputs, fixed)
            if not tangents:
                outs = function(*(values[k] for k in diff))
            elif not diff:  # no differentiable operand (a constant made from integers, say): zero tangents
                outs = function()
                tangent.update({k: jnp.zeros_like(v) for k, v in zip(step.outputs, outs) if _differentiable(v)})
            else:
                outs, derivs = _jvp(step.eqn, function, [values[k] for k in diff], [tangent[k] for k in diff])
                if step.eqn.primitive.name in ("custom_vjp_call", "custom_vjp_call_jaxpr"):
                    notes.update({k: "tangent from the custom VJP rule, transposed (JAX has no forward mode "
                                     "for custom_vjp)" for k in step.outputs})
                tangent.update({k: d for k, v, d in zip(step.outputs, outs, derivs) if _differentiable(v)})
            values.update(zip(step.outputs, outs))
        return values, tangent, notes

    def evaluate_reverse(self, values: dict, output: int) -> dict:
        """Each differentiable row's adjoint dL/dv_k: VJPs of the equations in reverse order, seeded with 1 at the
        loss, each operand receiving the sum of the cotangents of all its uses."""
        adjoint = {k: jnp.zeros_like(v) for k, v in values.items() if _differentiable(v)}
        adjoint[output] = jnp.ones_like(values[output])
        for step in reversed(self.steps):
            fixed, diff = _split(step.inputs, values)
            if not diff:
                continue
            function = _step_function(step.eqn, step.inputs, fixed)
            _, pullback = jax.vjp(function, *(values[k] for k in diff))
            cotangent = tuple(adjoint[k] if k in adjoint else np.zeros(values[k].shape, jax.dtypes.float0)
                              for k in step.outputs)
            for k, contribution in zip(diff, pullback(cotangent)):
                adjoint[k] = adjoint[k] + contribution  # a v_k used twice (w * w) gets both contributions
        return adjoint


def _read(env: dict, atom) -> Operand:
    if _is_literal(atom):
        return Operand(None, atom.val)
    return env[atom]


def _is_literal(atom) -> bool:
    if _Literal is not None:
        return isinstance(atom, _Literal)
    return hasattr(atom, "val")  # pragma: no cover


def _differentiable(value) -> bool:
    return jnp.issubdtype(jnp.result_type(value), jnp.inexact)


def _split(operands: tuple[Operand, ...], values: dict):
    """(the fixed operands' values by position, the k of each differentiable operand in order).

    Literals and integer operands are closed over; the rest are the per-equation function's arguments. An operand
    used twice (mul v1 v1) is two arguments, and the VJP's two contributions are both added to v1's adjoint.
    """
    fixed, diff = {}, []
    for i, o in enumerate(operands):
        if o.k is None:
            fixed[i] = o.value
        elif _differentiable(values[o.k]):
            diff.append(o.k)
        else:
            fixed[i] = values[o.k]
    return fixed, diff


def _step_function(eqn, operands: tuple[Operand, ...], fixed: dict) -> Callable:
    """The equation as a function of its differentiable operands, returning a tuple of its outputs; binding it
    the way ``jax.core.eval_jaxpr`` does, so JVP and VJP use the primitive's own rules (and custom rules)."""

    def function(*args):
        queue = iter(args)
        invals = [fixed[i] if i in fixed else next(queue) for i in range(len(operands))]
        bound = eqn.primitive.get_bind_params(eqn.params)
        # jax < 0.7 returns (subfuns, params); later versions put the subfuns among the params
        subfuns, bind_params = bound if isinstance(bound, tuple) else ((), bound)
        context = getattr(getattr(eqn, "ctx", None), "manager", None)
        with context if context is not None else contextlib.nullcontext():
            out = eqn.primitive.bind(*subfuns, *invals, **bind_params)
        return tuple(out) if eqn.primitive.multiple_results else (out,)

    return function


def _jvp(eqn, function: Callable, primals: list, tangents: list):
    """(outputs, output tangents) of one equation. A custom_vjp function has no JVP in JAX; its tangent is the
    transpose of its custom VJP (linear in the cotangent), so it still comes from the user's rule."""
    try:
        return jax.jvp(function, tuple(primals), tuple(tangents))
    except TypeError:
        if eqn.primitive.name not in ("custom_vjp_call", "custom_vjp_call_jaxpr"):
            raise
    outs, pullback = jax.vjp(function, *primals)
    diff_outs = tuple(o if _differentiable(o) else np.zeros(o.shape, jax.dtypes.float0) for o in outs)
    (derivs,) = jax.linear_transpose(pullback, diff_outs)(tuple(tangents))
    return outs, derivs


def _data_inputs(args: tuple):
    """(names, leaves, treedef) of the data arguments: x, y, arg2, ...; a pytree argument's leaves get paths."""
    names = []
    for i, arg in enumerate(args):
        base = DATA_NAMES[i] if i < len(DATA_NAMES) else f"arg{i}"
        for path, _ in jax.tree_util.tree_flatten_with_path(arg)[0]:
            names.append(f"{base}/{path_name(path)}" if path else base)
    leaves, tree = jax.tree_util.tree_flatten(tuple(args))
    return names, [jnp.asarray(leaf) for leaf in leaves], tree


def _function_name(eqn) -> str:
    """The Python function a call or custom-derivative equation came from ('logaddexp'), or ''."""
    sub = eqn.params.get("call_jaxpr", eqn.params.get("jaxpr"))
    info = getattr(getattr(sub, "jaxpr", sub), "debug_info", None)
    name = getattr(info, "func_name", None)
    if not name:
        source = getattr(info, "func_src_info", None) or ""
        name = source.split(" ")[0]
    return name if name and not name.startswith("<") else ""


def _describe(eqn) -> str:
    """The operation in short: 'reduce_sum axes=(0,)', 'broadcast_in_dim shape=(1,4) dims=(1,)', 'logaddexp
    (custom_jvp)'; 'dot_general' alone for a plain matrix product."""
    name = eqn.primitive.name
    if name in _CUSTOM_NAMES:
        return f"{_function_name(eqn) or name} ({_CUSTOM_NAMES[name]})"
    if name == "dot_general":
        (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
        lhs_rank = len(eqn.invars[0].aval.shape)
        if not lhs_batch and tuple(lhs_contract) == (lhs_rank - 1,) and tuple(rhs_contract) == (0,):
            return name
        return (f"{name} contract={_compact(tuple(lhs_contract))}x{_compact(tuple(rhs_contract))}"
                + (f" batch={_compact(tuple(lhs_batch))}x{_compact(tuple(rhs_batch))}" if lhs_batch else ""))
    parts = [name]
    for key, value in sorted(eqn.params.items()):
        if key in _QUIET_PARAMS or value is None or isinstance(value, bool):
            continue
        if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
            text = np.dtype(value).name
        elif isinstance(value, (int, float, str)) or (
                isinstance(value, tuple) and all(isinstance(v, (int, np.integer)) for v in value)):
            text = _compact(value)
        else:
            continue  # sub-jaxprs, functions, shardings: not short, not mathematics
        parts.append(f"{_PARAM_ALIASES.get(key, key)}={text}")
    text = " ".join(parts)
    return text if len(text) <= 60 else text[:57] + "..."


def _compact(value) -> str:
    """(1, 4) -> '(1,4)', (0,) -> '(0,)'."""
    if isinstance(value, tuple):
        return "(" + ",".join(str(int(v)) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(scalar)" if not shape else "(" + ", ".join(map(str, shape)) + ")"


def _short(value, digits: int = 4) -> str:
    """A value in a few characters, for graph labels and literals: '0.35', '[0.5, -0.25]',
    '(64, 3) float32, norm 12.3, min -1.2, max 2.5'."""
    shown = summary(value)
    if isinstance(shown, dict):
        return (f"({', '.join(map(str, shown['shape']))}) {shown['dtype']}, norm {_number(shown['norm'], digits)}, "
                f"min {_number(shown['min'], digits)}, max {_number(shown['max'], digits)}")
    return _nested(shown, digits)


def _nested(shown, digits: int) -> str:
    if isinstance(shown, list):
        return "[" + ", ".join(_nested(v, digits) for v in shown) + "]"
    return _number(shown, digits)


def _number(value, digits: int) -> str:
    if isinstance(value, float):
        return f"{value + 0.0:.{digits}g}" if math.isfinite(value) else str(value)  # + 0.0: -0 shows as 0
    return str(value)


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
