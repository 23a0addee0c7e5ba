"""The evaluations of a run: full-split metrics in fixed-size row blocks, so memory stays flat in the rows.

``evaluate(params, data, parts)`` computes the objective and gradient norm over the whole training split, the
validation and test loss and score (the count of correct rows; for a numeric target the sums of squared and of
absolute errors), and the checkpoint probe. It runs on its own schedule
(``Plan.eval_every``); ``parts`` are traced flags, so one compiled program serves every combination. Data in
memory are summed by one program (``make_evaluate``); streamed data block by block as read from disk
(``make_streamed_evaluate``), in the same blocks and by the same sums (``BlockSums``), so both compute alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradfit.core.losses import (
    l1_penalty,
    l2_penalty,
    make_objective,
    row_correct,
    row_losses,
    split_weights,
    stationarity,
)
from gradfit.core.models import Model

BLOCK_ELEMENTS = 1 << 22  # rows x widest layer of one evaluation block: 16 MB of float32 activations
PROBE_ROWS = 1024  # rows of the checkpoint probe that a resume must reproduce bit for bit


def _same_rows(rows: Any) -> Any:
    """``shard_rows`` of a single device: the rows stay where they are."""
    return rows


EVAL_PARTS = ("train", "gradient", "val", "test", "probe")


def eval_parts(**chosen: bool) -> dict:
    """The ``parts`` argument of ``evaluate``: a flag per part, False unless chosen."""
    unknown = set(chosen) - set(EVAL_PARTS)
    if unknown:
        raise ValueError(f"unknown evaluation parts {sorted(unknown)}; choose from {EVAL_PARTS}")
    return {part: np.bool_(chosen.get(part, False)) for part in EVAL_PARTS}


def make_evaluate(
    model: Model,
    l2: float,
    block_rows: int,
    shard_rows: Callable = _same_rows,
    regression: bool = False,
    l1: Any = 0.0,
) -> Callable:
    """evaluate(params, data, parts) -> metrics over whole splits, in blocks of ``block_rows`` rows.

    Parts: ``train`` (objective and data loss over the training split), ``gradient`` (with ``train``: the norm
    of the full-split gradient), ``val`` and ``test`` (loss and score: the count of correct rows, so accuracies are
    exact fractions on the host, or with ``regression`` the sums of squared and absolute errors), ``probe`` (the
    objective over the first ``PROBE_ROWS`` training rows, which a resume recomputes). Parts not asked for come back as
    NaN (counts as -1). Each block's rows are split across the devices by ``shard_rows``.
    """

    objective = make_objective(model.apply, l2, model.row_loss)
    sums = BlockSums(model, l2, regression, l1)

    def forward(params, x, y):
        loss_sum, correct = _blocked_sum(
            lambda xb, yb, w: sums.forward(params, xb, yb, w), x, y, block_rows, shard_rows
        )
        return loss_sum / x.shape[0], correct

    def train_metrics(params, x, y, gradient: bool):
        if gradient:
            total = _blocked_sum(lambda xb, yb, w: sums.loss_and_grad(params, xb, yb, w), x, y, block_rows, shard_rows)
        else:
            total = _blocked_sum(lambda xb, yb, w: sums.loss(params, xb, yb, w), x, y, block_rows, shard_rows)
        return sums.train_metrics(params, total, x.shape[0], gradient)

    def evaluate(params, data: dict, parts: dict) -> dict:
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        nan, none = jnp.full((), jnp.nan, dtype), sums.no_score(dtype)
        x, y = data["x"], data["y"]
        skipped = {"objective": nan, "train_loss": nan, "grad_norm": nan}
        out = jax.lax.cond(
            parts["train"],
            lambda: jax.lax.cond(
                parts["gradient"], lambda: train_metrics(params, x, y, True), lambda: train_metrics(params, x, y, False)
            ),
            lambda: skipped,
        )
        for split in ("val", "test"):
            if data[f"y_{split}"].shape[0] == 0:  # static: an empty split has nothing to evaluate
                out[f"{split}_loss"], out[f"{split}_score"] = nan, none
                continue
            loss, score = jax.lax.cond(
                parts[split], lambda s=split: forward(params, data[f"x_{s}"], data[f"y_{s}"]), lambda: (nan, none)
            )
            out[f"{split}_loss"], out[f"{split}_score"] = loss, score
        rows = min(PROBE_ROWS, x.shape[0])
        out["probe"] = jax.lax.cond(
            parts["probe"],
            lambda: objective(params, shard_rows(x[:rows]), shard_rows(y[:rows])).astype(dtype),
            lambda: nan,
        )
        return out

    return evaluate


class BlockSums:
    """The sums an evaluation adds up over row blocks (rows where ``counted`` is False are not counted), and the
    metrics made of them: shared by the in-memory evaluation and the streamed one, so both compute alike."""

    def __init__(self, model: Model, l2: float, regression: bool = False, l1: Any = 0.0):
        self.model, self.l2, self.regression, self.l1 = model, l2, regression, l1
        self.row_loss = model.row_loss or row_losses

    def forward(self, params, xb, yb, counted):
        """(loss sum, score) of a validation or test block: the count of correct rows, or for a numeric target
        (sum of squared errors, sum of absolute errors) in the standardized target's units."""
        outputs = self.model.apply(params, xb)
        labels, _ = split_weights(yb)
        loss_sum = self._loss_sum(outputs, yb, counted)
        if self.regression:
            errors = jnp.where(counted, outputs - labels, 0)
            return loss_sum, jnp.stack([jnp.sum(jnp.square(errors)), jnp.sum(jnp.abs(errors))])
        return loss_sum, jnp.sum(counted & row_correct(outputs, labels), dtype=jnp.int32)

    def _loss_sum(self, outputs, yb, counted):
        """The sum of the rows' losses (times their weights, when rows are weighted) over the ``counted`` rows."""
        labels, weights = split_weights(yb)
        losses = self.row_loss(outputs, labels)
        return jnp.sum(jnp.where(counted, losses if weights is None else weights * losses, 0))

    def no_score(self, dtype) -> jax.Array:
        """The score of a part not evaluated: -1 rows correct, or NaN errors."""
        return jnp.full((2,), jnp.nan, dtype) if self.regression else jnp.full((), -1, jnp.int32)

    def loss(self, params, xb, yb, counted):
        return self._loss_sum(self.model.apply(params, xb), yb, counted)

    def loss_and_grad(self, params, xb, yb, counted):
        return jax.value_and_grad(self.loss)(params, xb, yb, counted)

    def train_metrics(self, params, total, n: int, gradient: bool) -> dict:
        """Objective, data loss and (with ``gradient``) gradient norm over ``n`` rows from their block sums (with an
        L1 term: the norm of the minimum-norm subgradient, ``stationarity``)."""
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        penalty, penalty_grad = jax.value_and_grad(lambda p: jnp.asarray(l2_penalty(p, self.l2), dtype))(params)
        penalty = penalty + l1_penalty(params, self.l1)
        if gradient:
            loss_sum, grad_sum = total
            grads = jax.tree_util.tree_map(lambda g, pg: g / n + pg, grad_sum, penalty_grad)
            norm = optax.tree.norm(stationarity(grads, params, self.l1))
        else:
            loss_sum = total
            norm = jnp.full((), jnp.nan, loss_sum.dtype)
        loss = loss_sum / n
        return {"objective": loss + penalty, "train_loss": loss, "grad_norm": norm}


def block_starts(n: int, block: int) -> list[tuple[int, int]]:
    """(start, first counted row) of each evaluation block over ``n`` rows (``_blocked_sum``'s blocks)."""
    if n <= block:
        return [(0, 0)]
    return [(min(i * block, n - block), i * block) for i in range(-(-n // block))]


def make_streamed_evaluate(
    model: Model,
    l2: float,
    block: int,
    dataset,
    dtypes: tuple,
    put: Callable,
    shard_rows: Callable = _same_rows,
    regression: bool = False,
    l1: Any = 0.0,
) -> Callable:
    """``evaluate(params, data, parts)`` for streamed data (``data`` is ignored): the same metrics, in the same
    blocks (``block_starts``), each block read from disk and summed by its own compiled program."""
    sums = BlockSums(model, l2, regression, l1)
    objective = make_objective(model.apply, l2, model.row_loss)
    programs = {
        name: jax.jit(lambda p, x, y, w, f=getattr(sums, name): f(p, shard_rows(x), shard_rows(y), shard_rows(w)))
        for name in ("forward", "loss", "loss_and_grad")
    }
    probe = jax.jit(lambda p, x, y: objective(p, shard_rows(x), shard_rows(y)))
    probe_rows = dataset.train.take(np.arange(min(PROBE_ROWS, len(dataset.train))), *dtypes)

    def split_sum(name: str, params, split):
        total = None
        for start, counted in block_starts(len(split), block):
            rows = np.arange(start, min(start + block, len(split)))
            x, y = split.take(rows, *dtypes)
            part = programs[name](params, *put((x, y, rows >= counted)))
            total = part if total is None else jax.tree_util.tree_map(jnp.add, total, part)
        return total

    def evaluate(params, data, parts: dict) -> dict:
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        nan, none = jnp.full((), jnp.nan, dtype), sums.no_score(dtype)
        out = {"objective": nan, "train_loss": nan, "grad_norm": nan}
        if parts["train"]:
            gradient = bool(parts["gradient"])
            total = split_sum("loss_and_grad" if gradient else "loss", params, dataset.train)
            out = sums.train_metrics(params, total, len(dataset.train), gradient)
        for name in ("val", "test"):
            split = getattr(dataset, name)
            if parts[name] and len(split):
                loss_sum, score = split_sum("forward", params, split)
                out[f"{name}_loss"], out[f"{name}_score"] = loss_sum / len(split), score
            else:
                out[f"{name}_loss"], out[f"{name}_score"] = nan, none
        out["probe"] = probe(params, *put(probe_rows)).astype(dtype) if parts["probe"] else nan
        return out

    return evaluate


def _blocked_sum(fn: Callable, x, y, block: int, shard_rows: Callable):
    """The sum over fixed-size row blocks of ``fn(x_block, y_block, counted)``, a pytree of sums.

    The last block is shifted back to end at the last row rather than padded (no copy of the data); ``counted``
    is False for its rows that the previous block already counted. ``shard_rows`` splits each block's rows.
    """
    n = x.shape[0]
    if n <= block:
        return fn(shard_rows(x), shard_rows(y), shard_rows(jnp.ones((n,), bool)))
    count = -(-n // block)

    def body(i, total):
        start = jnp.minimum(i * block, n - block)
        xb = jax.lax.dynamic_slice_in_dim(x, start, block)
        yb = jax.lax.dynamic_slice_in_dim(y, start, block)
        counted = start + jnp.arange(block) >= i * block
        return jax.tree_util.tree_map(jnp.add, total, fn(shard_rows(xb), shard_rows(yb), shard_rows(counted)))

    shapes = jax.eval_shape(fn, x[:block], y[:block], jnp.ones((block,), bool))
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return jax.lax.fori_loop(0, count, body, zeros)


def block_rows(n_features: int, hidden: tuple = ()) -> int:
    """Rows per evaluation block: ``BLOCK_ELEMENTS`` over the widest layer (at least 256 rows)."""
    return max(256, BLOCK_ELEMENTS // max(n_features, *hidden, 1))
