"""A loss's jaxpr as the rows of an evaluation trace, evaluated one equation at a time.

``JaxprProgram.flatten`` turns the jaxpr into rows (calls that only group operations are inlined; a function with
a custom derivative stays one row), ``renumber`` gives them the paper's numbering, and ``evaluate_forward`` and
``evaluate_reverse`` push a one-hot tangent forward (a JVP per equation) and the loss's cotangent back (a VJP per
equation), binding each primitive as ``jax.core.eval_jaxpr`` does so that JAX's own rules are used.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradfit.gradients.trace_result import Operand, TraceRow

# Primitives that only wrap a sub-jaxpr: their equations are inlined. Names from jax.extend where it has them
# (jax 0.10: jit_p is "jit", remat_p "remat2"), plus the names older and newer JAX use.
_CALL_NAMES = {"pjit", "jit", "closed_call", "core_call", "call", "remat", "remat2", "checkpoint"}
# Primitives with a custom derivative rule: kept whole, so the trace differentiates what JAX differentiates.
_CUSTOM_NAMES = {
    "custom_jvp_call": "custom_jvp",
    "custom_vjp_call": "custom_vjp",
    "custom_vjp_call_jaxpr": "custom_vjp",
}
try:  # not every JAX version exports all of these; the name sets above cover the rest
    from jax.extend.core import primitives as _primitives

    _CALL_NAMES |= {
        p.name
        for p in (getattr(_primitives, n, None) for n in ("jit_p", "pjit_p", "closed_call_p", "call_p", "remat_p"))
        if p is not None
    }
except ImportError:  # pragma: no cover - jax.extend.core is present since jax 0.4.30
    pass


def _literal_type() -> type | None:
    """JAX's class of literal operands, where ``jax.extend`` exports it."""
    try:
        from jax.extend.core import Literal
    except ImportError:  # pragma: no cover
        return None
    return Literal


_Literal = _literal_type()

# Equation parameters that say nothing about the mathematics (placement, precision hints) or are not short.
_QUIET_PARAMS = {
    "out_sharding",
    "sharding",
    "precision",
    "preferred_element_type",
    "accuracy",
    "out_dtype",
    "weak_type",
    "algorithm",
    "transpose_algorithm",
    "mode",
    "unique_indices",
    "indices_are_sorted",
}
_PARAM_ALIASES = {"broadcast_dimensions": "dims", "new_sizes": "shape"}


@dataclasses.dataclass
class _Step:
    """One equation to evaluate: its primitive and parameters, its operands, and the k of each output."""

    eqn: Any
    inputs: tuple[Operand, ...]
    outputs: tuple[int, ...]


class JaxprProgram:
    """The flat list of rows and the equations that compute them, built by ``flatten``."""

    def __init__(self) -> None:
        self.rows: list[TraceRow] = []
        self.steps: list[_Step] = []
        self.constants: dict[int, Any] = {}  # k -> value, for inputs and constants
        self.num_inputs = 0

    def add_row(
        self, kind: str, op: str, name: str = "", primitive: str = "", inputs=(), scope: str = "", value=None, aval=None
    ) -> int:
        """Append a row (its value is filled when evaluated; inputs and constants keep ``value``); its k."""
        if kind in ("parameter", "data"):
            self.num_inputs += 1
        # numbered 0, 1, ... until every input is known; ``renumber`` then gives the paper's numbering
        k = len(self.rows)
        self.rows.append(
            TraceRow(
                k=k,
                kind=kind,
                op=op,
                name=name,
                primitive=primitive,
                inputs=tuple(inputs),
                value=aval,
                tangent=None,
                adjoint=None,
                scope=scope,
            )
        )  # value: filled when evaluated
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
            operands = tuple(read_operand(env, atom) for atom in eqn.invars)
            name = eqn.primitive.name
            sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            if name in _CALL_NAMES and sub is not None:
                inner, inner_consts = (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, ())
                inner_env = dict(zip(inner.invars, operands))
                label = (
                    eqn.params.get("name")
                    if isinstance(eqn.params.get("name"), str)
                    else ("checkpoint" if "remat" in name or name == "checkpoint" else _function_name(eqn) or name)
                )
                self.flatten(inner, inner_consts, inner_env, f"{scope}/{label}" if scope else label)
                for outer, inner_out in zip(eqn.outvars, inner.outvars):
                    env[outer] = read_operand(inner_env, inner_out)
                continue
            op = _describe(eqn)
            outputs = []
            for i, var in enumerate(eqn.outvars):
                suffix = f" #{i}" if len(eqn.outvars) > 1 else ""
                outputs.append(
                    self.add_row("operation", op + suffix, primitive=name, inputs=operands, scope=scope, aval=var.aval)
                )
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
        self.steps = [
            _Step(s.eqn, tuple(map(moved, s.inputs)), tuple(k + shift for k in s.outputs)) for s in self.steps
        ]
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
                    notes.update(
                        {
                            k: "tangent from the custom VJP rule, transposed (JAX has no forward mode for custom_vjp)"
                            for k in step.outputs
                        }
                    )
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
            cotangent = tuple(
                adjoint[k] if k in adjoint else np.zeros(values[k].shape, jax.dtypes.float0) for k in step.outputs
            )
            for k, contribution in zip(diff, pullback(cotangent)):
                adjoint[k] = adjoint[k] + contribution  # a v_k used twice (w * w) gets both contributions
        return adjoint


def read_operand(env: dict, atom) -> Operand:
    """The operand a jaxpr atom stands for: a literal constant, or the row ``env`` maps its variable to."""
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
        return f"{name} contract={_compact(tuple(lhs_contract))}x{_compact(tuple(rhs_contract))}" + (
            f" batch={_compact(tuple(lhs_batch))}x{_compact(tuple(rhs_batch))}" if lhs_batch else ""
        )
    parts = [name]
    for key, value in sorted(eqn.params.items()):
        if key in _QUIET_PARAMS or value is None or isinstance(value, bool):
            continue
        if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
            text = np.dtype(value).name
        elif isinstance(value, (int, float, str)) or (
            isinstance(value, tuple) and all(isinstance(v, (int, np.integer)) for v in value)
        ):
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
