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

This module picks theta_j and runs the trace (``evaluation_trace``) and draws it (``to_dot``, ``write_graph``);
``trace_result`` holds what a trace is, ``trace_jaxpr`` the equation-by-equation evaluation. Pure: nothing is
printed; ``gradfit.cli.render`` renders a ``Trace`` and ``Trace.to_json`` serializes it.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gradfit import files
from gradfit.core.models import named_leaves, path_name
from gradfit.errors import ConfigError, GradfitError
from gradfit.gradients.trace_jaxpr import JaxprProgram, read_operand
from gradfit.gradients.trace_result import Derivative, Operand, Trace, TraceRow, short

MODES = ("forward", "reverse", "both")
DATA_NAMES = ("x", "y")  # the names of loss_fn's data arguments, in order (more are arg2, arg3, ...)


def evaluation_trace(
    loss_fn: Callable,
    params,
    args: tuple = (),
    param: str | None = None,
    mode: str = "both",
    manual_grad: Callable | None = None,
) -> Trace:
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
    data_names, data_leaves, data_tree = _data_inputs(args)
    leaves = [*named.values(), *data_leaves]
    closed = _loss_jaxpr(loss_fn, jax.tree_util.tree_structure(params), len(named), data_tree, leaves)
    inputs = [("parameter", name) for name in named] + [("data", name) for name in data_names]
    program, output = _flat_program(closed, inputs, leaves)

    theta_k = list(named).index(leaf) + 1 - len(inputs)
    rows = _evaluated_rows(program, theta_k, index, output, mode)
    by_k = {row.k: row for row in rows}
    loss_row = by_k[output]
    manual = None
    if manual_grad is not None:
        manual = float(np.asarray(named_leaves(manual_grad(params))[leaf])[index])
    derivative = _derivative(loss_row, by_k[theta_k], index, manual)
    return Trace(
        rows=rows,
        param=format_param(leaf, index),
        leaf=leaf,
        index=index,
        mode=mode,
        output=output,
        loss=float(loss_row.value),
        derivative=derivative,
    )


def _evaluated_rows(
    program: JaxprProgram, theta_k: int, index: tuple[int, ...], output: int, mode: str
) -> tuple[TraceRow, ...]:
    """Every row with its value and, as ``mode`` asks, its tangent for theta_j (row ``theta_k``, entry ``index``)
    and its adjoint from the loss (row ``output``)."""
    values, tangents, note = program.evaluate_forward(theta_k, index, tangents=mode != "reverse")
    adjoints = program.evaluate_reverse(values, output) if mode != "forward" else {}
    return tuple(
        dataclasses.replace(
            row,
            value=np.asarray(values[row.k]),
            tangent=None if row.k not in tangents else np.asarray(tangents[row.k]),
            adjoint=None if row.k not in adjoints else np.asarray(adjoints[row.k]),
            note=note.get(row.k, ""),
        )
        for row in program.rows
    )


def _derivative(loss_row: TraceRow, theta_row: TraceRow, index: tuple[int, ...], manual: float | None) -> Derivative:
    """dL/dtheta_j as the loss's tangent, as theta_j's adjoint (entry ``index`` of its row) and by hand."""
    return Derivative(
        forward=float(loss_row.tangent) if loss_row.tangent is not None else None,
        reverse=float(theta_row.adjoint[index]) if theta_row.adjoint is not None else None,
        manual=manual,
    )


def _loss_jaxpr(loss_fn: Callable, treedef, num_params: int, data_tree, leaves: list):
    """The closed jaxpr of ``loss_fn`` as a function of the flat leaves (the parameters', then the data's).

    Raises:
        ValueError: ``loss_fn`` does not return one float scalar.
    """

    def flat_loss(*flat):
        rebuilt = jax.tree_util.tree_unflatten(treedef, flat[:num_params])
        return loss_fn(rebuilt, *jax.tree_util.tree_unflatten(data_tree, flat[num_params:]))

    closed = jax.make_jaxpr(flat_loss)(*leaves)
    returned = [f"{v.aval.dtype}{list(v.aval.shape)}" for v in closed.jaxpr.outvars]
    out_aval = closed.jaxpr.outvars[0].aval if len(returned) == 1 else None
    if out_aval is None or out_aval.shape != () or not jnp.issubdtype(out_aval.dtype, jnp.inexact):
        raise ValueError(f"loss_fn must return one float scalar; it returned {', '.join(returned) or 'nothing'}")
    return closed


def _flat_program(closed, inputs: list[tuple[str, str]], leaves: list) -> tuple[JaxprProgram, int]:
    """The rows of the loss's jaxpr in the paper's numbering, and the k of the loss.

    ``inputs`` gives each input's kind ('parameter' or 'data') and name; ``leaves`` their values, in order.
    """
    program = JaxprProgram()
    env = {}
    for var, (kind, name), value in zip(closed.jaxpr.invars, inputs, leaves):
        env[var] = Operand(program.add_row(kind, kind, name, value=jnp.asarray(value)))
    program.flatten(closed.jaxpr, closed.consts, env, scope="")
    output = program.operand_row(read_operand(env, closed.jaxpr.outvars[0]))
    output += program.renumber()
    return program, output


def parse_param(text: str | None, shapes: dict[str, tuple[int, ...]]) -> tuple[str, tuple[int, ...]]:
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
        raise ConfigError(
            f"{text!r}: {name} has shape {_shape_text(shape)}, so pick one entry, e.g. "
            f"{format_param(name, (0,) * len(shape))}{listing}"
        )
    parts = [p.strip() for p in (index_text or "").split(",") if p.strip()]
    try:
        index = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{text!r}: indices must be integers{listing}") from None
    if len(index) != len(shape):
        raise ConfigError(
            f"{text!r}: {name} has shape {_shape_text(shape)}, so it takes {len(shape)} "
            f"ind{'ex' if len(shape) == 1 else 'ices'}, not {len(index)}{listing}"
        )
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
    lines = [
        "digraph trace {",
        "  rankdir=LR;",
        '  node [shape=box, fontname="Helvetica", fontsize=10];',
        f'  label="{_dot_escape(f"evaluation trace, theta_j = {trace.param}")}"; labelloc=t;',
    ]
    for row in trace.rows:
        if row.kind in ("parameter", "data"):
            head = f"{row.label} = {row.name}"
        else:
            first, _, rest = row.op.partition(" ")  # 'reduce_sum axes=(0,)' -> 'reduce_sum(v5) axes=(0,)'
            head = f"{row.label} = {first}({', '.join(o.label for o in row.inputs)}) {rest}".rstrip()
        text = [head, short(row.value)]
        derivatives = [
            f"tangent {short(row.tangent)}" if row.tangent is not None else "",
            f"adjoint {short(row.adjoint)}" if row.adjoint is not None else "",
        ]
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


def _data_inputs(args: tuple):
    """(names, leaves, treedef) of the data arguments: x, y, arg2, ...; a pytree argument's leaves get paths."""
    names = []
    for i, arg in enumerate(args):
        base = DATA_NAMES[i] if i < len(DATA_NAMES) else f"arg{i}"
        for path, _ in jax.tree_util.tree_flatten_with_path(arg)[0]:
            names.append(f"{base}/{path_name(path)}" if path else base)
    leaves, tree = jax.tree_util.tree_flatten(tuple(args))
    return names, [jnp.asarray(leaf) for leaf in leaves], tree


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(scalar)" if not shape else "(" + ", ".join(map(str, shape)) + ")"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
