"""The loss around the point a gradient check is taken at: the gradient being checked (reverse AD in the
checked precision), and batched evaluations nearby, in that precision and in float64 at exactly the same point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gradfit.core.models import named_leaves
from gradfit.core.precision import Precision, PrecisionName
from gradfit.errors import GradfitError

FLOAT64 = Precision("float64")


@dataclasses.dataclass
class Group:
    """One parameter (a leaf of the params pytree): its entries are ``theta[offset:offset + size]``."""

    name: str
    offset: int
    size: int
    shape: tuple


class Evaluators:
    """Batched evaluations of the flattened ``loss(theta, *args)`` around one point, in one precision.

    ``theta`` and ``args`` (the data) are jit arguments, not constants baked into the compiled programs.
    """

    def __init__(self, loss: Callable, theta, args: tuple, precision: Precision, batch: int):
        self.theta, self.args, self.precision, self.batch = theta, args, precision, batch
        fixed = (None,) * (1 + len(args))  # theta and the data are shared by every row of a batch
        self.along = jax.jit(jax.vmap(lambda v, d, theta, *a: loss(theta + d * v, *a), in_axes=(0, 0, *fixed)))
        self.at = jax.jit(jax.vmap(lambda i, d, theta, *a: loss(theta.at[i].add(d), *a), in_axes=(0, 0, *fixed)))
        self.jvp_along = jax.jit(
            jax.vmap(lambda v, theta, *a: jax.jvp(lambda t: loss(t, *a), (theta,), (v,))[1], in_axes=(0, *fixed))
        )
        self.jvp_at = jax.jit(
            jax.vmap(
                lambda i, theta, *a: jax.jvp(lambda t: loss(t, *a), (theta,), (jnp.zeros_like(theta).at[i].set(1),))[1],
                in_axes=(0, *fixed),
            )
        )

    def batched(self, fn, *columns) -> np.ndarray:
        """Apply a vmapped fn in fixed-size batches (padded), so it compiles once whatever the count."""
        n, out = len(columns[0]), []
        batch = min(self.batch, 1 << max(0, (n - 1).bit_length()))  # a power of two: few distinct compilations
        dtype = self.theta.dtype
        cast = [c.astype(np.int32 if c.dtype.kind in "iu" else dtype) for c in columns]
        with self.precision.scope():
            for start in range(0, n, batch):
                block = [c[start : start + batch] for c in cast]
                pad = batch - len(block[0])
                block = [np.concatenate([b, np.repeat(b[-1:], pad, axis=0)]) if pad else b for b in block]
                out.append(np.asarray(fn(*block, self.theta, *self.args), np.float64)[: batch - pad])
        return np.concatenate(out) if out else np.zeros(0)


def _flat_loss(loss_fn: Callable, params, args: tuple, precision: Precision):
    """(loss(theta, *args), theta, args, unravel) with params and floating data cast to the precision."""
    dtype = precision.param_dtype
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype), params)
    args = tuple(
        jnp.asarray(a, dtype) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else jnp.asarray(a) for a in args
    )
    theta, unravel = ravel_pytree(params)
    return (lambda t, *a: loss_fn(unravel(t), *a)), theta, args, unravel


class CheckedPoint:
    """The loss around one point: the gradient being checked (reverse AD in the checked precision), and the
    float64 evaluations that finite differences take."""

    def __init__(
        self,
        loss_fn: Callable,
        params,
        args: tuple,
        *,
        precision: PrecisionName,
        step: float | None,
        full: bool | None,
        threshold: int,
        batch: int,
    ):
        """Evaluate the loss and its reverse-AD gradient at ``params``.

        Args:
            loss_fn: ``loss_fn(params, *args) -> scalar``.
            params: the point (any pytree of arrays); cast to ``precision``.
            args: the data, as jit arguments.
            precision: the checked precision ('float64', 'float32' or 'bfloat16').
            step: replaces eps^(1/3) in the finite-difference step rule; None keeps it.
            full: check every coordinate; None: only when there are at most ``threshold`` parameters.
            threshold: see ``full``.
            batch: loss evaluations per vmapped device call.
        """
        self.checked = Precision(precision)
        with self.checked.scope():
            loss, theta, checked_args, self.unravel = _flat_loss(loss_fn, params, args, self.checked)
            self.theta = theta
            self.f0_checked = _finite_loss(jax.jit(loss)(theta, *checked_args))
            self.reverse = np.asarray(jax.jit(jax.grad(loss))(theta, *checked_args), np.float64)
            self.exact = Evaluators(loss, theta, checked_args, self.checked, batch)
        self.eps = float(jnp.finfo(self.checked.param_dtype).eps)
        self.theta64 = np.asarray(theta, np.float64)
        if self.checked.x64:
            self.fd, self.f0, self.reverse64 = self.exact, self.f0_checked, self.reverse
        else:  # the same point and data, exactly, in float64
            with FLOAT64.scope():
                params64 = jax.tree_util.tree_map(lambda p: np.asarray(p, np.float64), self.unravel(theta))
                loss64, theta64, args64, _ = _flat_loss(loss_fn, params64, args, FLOAT64)
                self.f0 = _finite_loss(jax.jit(loss64)(theta64, *args64))
                self.reverse64 = np.asarray(jax.jit(jax.grad(loss64))(theta64, *args64), np.float64)
                self.fd = Evaluators(loss64, theta64, args64, FLOAT64, batch)
        self.eps64 = float(np.finfo(np.float64).eps)
        self.step_base = step if step is not None else self.eps64 ** (1 / 3)
        self.full = full if full is not None else self.theta.size <= threshold
        self.groups, offset = [], 0
        for name, leaf in named_leaves(self.unravel(theta)).items():
            self.groups.append(Group(name, offset, int(leaf.size), tuple(leaf.shape)))
            offset += int(leaf.size)

    def losses_at(self, index: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """float64 losses at theta + delta e_index."""
        return self.fd.batched(self.fd.at, index, delta)

    def losses_along(self, vectors: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """float64 losses at theta + delta v."""
        return self.fd.batched(self.fd.along, vectors, delta)

    def forward_at(self, index: np.ndarray) -> np.ndarray:
        """Forward-mode derivatives along the coordinates ``index``, in the checked precision."""
        return self.exact.batched(self.exact.jvp_at, index)

    def forward_along(self, vectors: np.ndarray) -> np.ndarray:
        """Forward-mode directional derivatives along the rows of ``vectors``, in the checked precision."""
        return self.exact.batched(self.exact.jvp_along, vectors)

    def group_step(self, group: Group) -> float:
        """The finite-difference step of a direction supported on the group."""
        support = np.abs(self.theta64[group.offset : group.offset + group.size])
        return self.step_base * max(1.0, float(support.max(initial=0.0)))


def _finite_loss(value) -> float:
    value = float(value)
    if not np.isfinite(value):
        raise GradfitError(f"the loss is {value} at the point being checked; a gradient check needs a finite loss")
    return value


def index_label(group: Group, flat: int) -> str:
    """Where entry ``flat`` (in ravel order) of the group is: '[3, 7]', or '[]' for a scalar."""
    return str([int(i) for i in np.unravel_index(flat, group.shape)]) if group.shape else "[]"
