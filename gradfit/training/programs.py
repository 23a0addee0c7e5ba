"""The compiled training programs of a run (the host-side loop around them is ``gradfit.training.loop``).

- ``train_step(state, data)`` takes one optimizer step. A minibatch is gathered on the device by a keyed
  permutation of (seed, epoch) (``gradfit.data.shuffle``); a full-batch step already has the objective and
  gradient over the whole training split: the state carries them, so they are logged at every log point for free.
- ``chunk(state, data, num_steps)`` runs ``num_steps`` steps in nested ``while_loop``s, one per log window, and
  returns a column of numbers per window: the sums of what the steps computed anyway (the minibatch objective
  and gradient norm), so many log points cost one dispatch and no extra device work.

The functions take plain values (``Settings``), never a config: a sweep builds them with traced arrays for the
numbers, one per member. On a mesh of several devices (``gradfit.runtime.mesh``) every program splits the rows
it works on across the devices through ``shard_rows``: data parallelism.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradfit.config.schema import OptimizerConfig
from gradfit.core.losses import l1_penalty, l2_penalty, make_objective, stationarity
from gradfit.core.models import Model
from gradfit.core.optim import make_optimizer
from gradfit.data import shuffle
from gradfit.training.plan import Plan

MAX_WINDOWS = 128  # log points one chunk can report
WINDOW_ROWS = ("objective_sum", "grad_norm_sum", "learning_rate", "objective", "train_loss", "grad_norm")


def _same_rows(rows: Any) -> Any:
    """``shard_rows`` of a single device: the rows stay where they are."""
    return rows


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: Any  # int32 (): optimizer steps taken so far (a sweep slices it per member, or leaves it out)
    current: Any = None  # full batch: (objective, gradient, its norm) at ``params``; the next step uses them


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the programs take from a config. In a sweep ``optimizer``'s numbers and ``l2`` are traced arrays."""

    optimizer: OptimizerConfig
    l2: Any  # float, or a traced array
    tol: float | None  # full batch: stop below this gradient norm
    param_dtype: np.dtype
    l1: Any = 0.0  # float, or a traced array: applied by the optimizer's proximal step


class Functions(NamedTuple):
    """The uncompiled functions of one config's training (see ``training_functions``)."""

    objective: Callable  # (params, x, y) -> regularized loss
    train_step: Callable  # (state, data) -> (state, (objective, gradient norm))
    chunk: Callable  # (state, data, num_steps) -> (state, metrics)
    initial_state: Callable  # (seed, data) -> (state, shuffle key)


def training_functions(
    settings: Settings,
    model: Model,
    plan: Plan,
    n_train: int,
    shard_rows: Callable = _same_rows,
    mode: str = "full",
    streamed: bool = False,
) -> Functions:
    """The objective, step, chunk and initial state of one training.

    Args:
        settings: the optimizer, l2, tol and parameter dtype (numbers may be traced arrays; choices may not).
        model: the model to train.
        plan: the schedule: batch size, steps per epoch, log windows.
        n_train: rows of the training split.
        shard_rows: splits rows across the devices (``Topology.shard_rows``).
        mode: the epoch order of the minibatches (``train.shuffle`` resolved).
        streamed: minibatches come from the groups ``gradfit.data.feed`` puts on the device.
    """
    optimizer, schedule = make_optimizer(settings.optimizer, plan.total_steps, settings.l1)
    objective = make_objective(model.apply, settings.l2, model.row_loss)
    lbfgs = settings.optimizer.name == "lbfgs"
    train_step = make_train_step(objective, optimizer, plan, n_train, lbfgs, shard_rows, mode, streamed, settings.l1)
    chunk = make_chunk(train_step, plan, settings.l2, schedule, settings.tol, settings.l1)

    def initial_state(seed, data):
        init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(seed))
        params = model.init(init_key, settings.param_dtype)
        current = None
        if plan.full_batch:
            x, y = shard_rows(data["x"]), shard_rows(data["y"])
            current = with_norm(jax.value_and_grad(objective)(params, x, y), params, settings.l1)
        return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), current), shuffle_key

    return Functions(objective, train_step, chunk, initial_state)


def with_norm(value_and_grad: tuple, params: Any, l1: Any = 0.0) -> tuple:
    """(objective, gradient) -> (objective, gradient, gradient norm): computed once, read by every consumer. With
    an L1 term: the objective with it, the smooth gradient (what the optimizer takes) and the norm of the
    objective's minimum-norm subgradient (``stationarity``)."""
    value, grads = value_and_grad
    return value + l1_penalty(params, l1), grads, optax.tree.norm(stationarity(grads, params, l1))


def make_train_step(
    objective: Callable,
    optimizer: Any,
    plan: Plan,
    n_train: int,
    lbfgs: bool,
    shard_rows: Callable = _same_rows,
    shuffle_mode: str = "full",
    streamed: bool = False,
    l1: Any = 0.0,
) -> Callable:
    """train_step(state, data) -> (state, (objective, gradient norm)) of one step, on the params it started from.

    ``shard_rows`` splits the rows a step works on across the devices (``Topology.shard_rows``). A minibatch
    is gathered from the training split on the device, in the epoch order of ``shuffle_mode``; a ``streamed``
    step instead takes its minibatch from the group ``gradfit.data.feed`` put there (the same rows). ``l1``: the
    objective it reports has the L1 term and its gradient norm is the subgradient's (``with_norm``).
    """

    def full_batch_step(state: TrainState, data: dict):
        value, grads, norm = state.current

        def loss_fn(params):
            return objective(params, shard_rows(data["x"]), shard_rows(data["y"]))

        updates, opt_state = optimizer.update(
            grads, state.opt_state, state.params, value=value, grad=grads, value_fn=loss_fn
        )
        params = optax.apply_updates(state.params, updates)
        if lbfgs:  # its line search already evaluated the accepted point
            current = (optax.tree_utils.tree_get(opt_state, "value"), optax.tree_utils.tree_get(opt_state, "grad"))
        else:
            current = jax.value_and_grad(loss_fn)(params)
        return TrainState(params, opt_state, state.step + 1, with_norm(current, params, l1)), (value, norm)

    def minibatch(step, data: dict):
        if streamed:
            k = step - data["first_step"]
            return shard_rows(data["x"][k]), shard_rows(data["y"][k])
        batch = plan.minibatch_size
        epoch, position = jnp.divmod(step, plan.steps_per_epoch)
        # every row once per epoch, in an order keyed by (seed, epoch): resumable and reproducible
        # each device computes only its share of the positions, then gathers its rows of the replicated data
        positions = shard_rows(position * batch + jnp.arange(batch))
        rows = shuffle.order(shuffle_mode, jax.random.fold_in(data["shuffle_key"], epoch), n_train, positions)
        return shard_rows(data["x"][rows]), shard_rows(data["y"][rows])

    def minibatch_step(state: TrainState, data: dict):
        x, y = minibatch(state.step, data)
        value, grads, norm = with_norm(jax.value_and_grad(objective)(state.params, x, y), state.params, l1)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1), (value, norm)

    return full_batch_step if plan.full_batch else minibatch_step


def make_chunk(
    train_step: Callable, plan: Plan, l2: Any, schedule: Callable | None, tol: float | None = None, l1: Any = 0.0
) -> Callable:
    """chunk(state, data, num_steps) -> (state, metrics): ``num_steps`` steps, with the metrics of every log point.

    The steps fall into log windows that end at the multiples of ``log_every`` and at the chunk's end; a chunk
    covers at most ``MAX_WINDOWS`` of them, so one dispatch can serve many log points. ``metrics["windows"]``
    holds one column per window and one row per ``WINDOW_ROWS`` entry: the sums over the window's steps of the
    minibatch objective and gradient norm, the learning rate of its last step and, for full batch, the
    objective, data loss and gradient norm at its end. ``num_steps`` is traced: one program serves every chunk.
    A full-batch chunk with ``tol`` stops after the first step that ends with a gradient norm below it
    (``metrics["step"]`` says where the chunk stopped).
    """

    def chunk(state: TrainState, data: dict, num_steps):
        dtype = jax.tree_util.tree_leaves(state.params)[0].dtype
        zero = jnp.zeros((), dtype)
        first_window, end = state.step // plan.log_every, state.step + num_steps

        def going(state: TrainState, until):
            go = state.step < until
            if plan.full_batch and tol is not None:
                go &= state.current[2] >= tol  # the very norm its log record shows
            return go

        def step(carry):  # running sums in the carry: a step adds two scalars to what it computes anyway
            state, objective_sum, norm_sum = carry
            state, (value, norm) = train_step(state, data)
            return state, objective_sum + value, norm_sum + norm

        def window(carry):  # the steps of one log window, then its column of numbers
            state, windows, w = carry
            until = jnp.minimum((first_window + w + 1) * plan.log_every, end)

            def partial_window(state):
                return jax.lax.while_loop(lambda c: going(c[0], until), step, (state, zero, zero))

            if plan.full_batch:  # steps are whole passes over the data; tol may stop the window early
                state, objective_sum, norm_sum = partial_window(state)
            else:  # a whole window runs a loop of known length, which XLA runs without a condition per step
                state, objective_sum, norm_sum = jax.lax.cond(
                    until - state.step == plan.log_every,
                    lambda state: jax.lax.fori_loop(0, plan.log_every, lambda _, c: step(c), (state, zero, zero)),
                    partial_window,
                    state,
                )
            column = _window_column(state, objective_sum, norm_sum, plan.full_batch, (l2, l1), schedule, dtype)
            return state, windows.at[: len(column), w].set(column), w + 1

        windows = jnp.zeros((len(WINDOW_ROWS), MAX_WINDOWS), dtype)
        state, windows, _ = jax.lax.while_loop(lambda c: going(c[0], end), window, (state, windows, 0))
        metrics = _chunk_metrics(state, windows, plan.full_batch, (l2, l1))
        return state, metrics

    return chunk


def _chunk_metrics(state: TrainState, windows: jax.Array, full_batch: bool, penalties: tuple) -> dict:
    """A chunk's metrics: its windows' columns, where it stopped, whether all stayed finite and (full batch) the
    values at its end, all a chunk that takes no step has to report."""
    metrics = {
        "windows": windows,
        "step": state.step,
        "finite": jnp.all(jnp.isfinite(windows)) & _all_finite(state.params),
    }
    if full_batch:
        current, _, norm = state.current
        metrics["end"] = jnp.stack([current, current - _penalty(state.params, penalties), norm])
        metrics["finite"] &= jnp.isfinite(metrics["end"]).all()
    return metrics


def _window_column(
    state: TrainState, objective_sum, norm_sum, full_batch: bool, penalties: tuple, schedule: Callable | None, dtype
) -> jax.Array:
    """One log window's column of ``WINDOW_ROWS`` numbers (the full-batch rows only for full batch)."""
    if schedule is not None:
        lr = schedule(jnp.maximum(state.step - 1, 0))
    else:  # lbfgs: the step size its line search accepted last
        lr = optax.tree_utils.tree_get(state.opt_state, "learning_rate")
    column = [objective_sum, norm_sum, lr]
    if full_batch:
        current, _, norm = state.current
        column += [current, current - _penalty(state.params, penalties), norm]
    return jnp.stack([jnp.asarray(c, dtype) for c in column])


def _penalty(params: Any, penalties: tuple) -> Any:
    """The L2 and L1 terms of the objective at ``params``: what separates it from the data loss."""
    l2, l1 = penalties
    return l2_penalty(params, l2) + l1_penalty(params, l1)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]))
