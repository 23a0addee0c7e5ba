"""The compiled training program (the host-side loop around it is ``gradfit.loop``).

One jitted program runs ``log_every`` optimizer steps (a ``fori_loop`` over ``train_step``) and then computes
the metrics of a log point, so the host only sees the device once per log point. The state is donated, the data
stays on the device as a jit argument, and minibatches are drawn on the device from a permutation keyed by
(seed, epoch).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from gradfit.config import GradfitConfig
from gradfit.data import Dataset, load_dataset, split_arrays
from gradfit.device import select_device
from gradfit.errors import ConfigError
from gradfit.losses import accuracy, data_loss, l2_penalty, make_objective
from gradfit.models import Model, build_model
from gradfit.optim import make_optimizer


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    step: jax.Array  # int32 (): optimizer steps taken so far
    order: jax.Array  # int32 (n_train,): row order of the current epoch; (0,) when training full-batch


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many steps, in what batches; derived from the config and the training-split size."""

    total_steps: int
    steps_per_epoch: int
    batch_size: Optional[int]  # None: full batch
    log_every: int

    @classmethod
    def from_config(cls, config: GradfitConfig, n_train: int) -> "Plan":
        train = config.train
        if train.batch_size is not None and train.batch_size > n_train:
            raise ConfigError(
                f"train.batch_size={train.batch_size} exceeds the {n_train} training rows; "
                "use a smaller batch or null for full batch"
            )
        batch = train.batch_size if train.batch_size not in (None, n_train) else None
        per_epoch = n_train // batch if batch else 1
        total = train.steps if train.steps is not None else train.epochs * per_epoch
        return cls(total, per_epoch, batch, train.log_every)


def make_train_step(objective: Callable, optimizer, plan: Plan, n_train: int, lbfgs: bool) -> Callable:
    """train_step(state, data) -> (state, loss): one gradient step on one (mini)batch."""

    def select_batch(state: TrainState, data: dict):
        if plan.batch_size is None:
            return state.order, data["x"], data["y"]
        epoch, position = jnp.divmod(state.step, plan.steps_per_epoch)
        # a fresh permutation at each epoch start, keyed by (seed, epoch): resumable and reproducible
        order = jax.lax.cond(
            position == 0,
            lambda: jax.random.permutation(jax.random.fold_in(data["shuffle_key"], epoch), n_train).astype(jnp.int32),
            lambda: state.order,
        )
        rows = jax.lax.dynamic_slice(order, (position * plan.batch_size,), (plan.batch_size,))
        return order, data["x"][rows], data["y"][rows]

    def train_step(state: TrainState, data: dict):
        order, x, y = select_batch(state, data)

        def loss_fn(params):
            return objective(params, x, y)

        if lbfgs:  # reuse the value and gradient the line search already computed at these params
            loss, grads = optax.value_and_grad_from_state(loss_fn)(state.params, state=state.opt_state)
        else:
            loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(
            grads, state.opt_state, state.params, value=loss, grad=grads, value_fn=loss_fn
        )
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state, state.step + 1, order), loss

    return train_step


def make_chunk(train_step: Callable, objective: Callable, model: Model, l2: float, schedule: Optional[Callable],
               has_val: bool):
    """chunk(state, data, num_steps) -> (state, metrics): num_steps steps, then the log point's metrics.

    ``num_steps`` is a traced scalar, so the last, shorter chunk of a run reuses the same compiled program.
    """

    def chunk(state: TrainState, data: dict, num_steps):
        state, _ = jax.lax.fori_loop(
            0, num_steps, lambda _, carry: train_step(carry[0], data), (state, jnp.zeros((), data["x"].dtype))
        )
        params = state.params
        value, grads = jax.value_and_grad(objective)(params, data["x"], data["y"])
        finite = jnp.isfinite(value) & jnp.all(
            jnp.array([jnp.all(jnp.isfinite(p)) for p in jax.tree_util.tree_leaves(params)])
        )
        if schedule is not None:
            lr = schedule(jnp.maximum(state.step - 1, 0))
        else:  # lbfgs: the step size its line search accepted last
            lr = optax.tree_utils.tree_get(state.opt_state, "learning_rate")
        metrics = {
            "objective": value,
            "train_loss": value - l2_penalty(params, l2),
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": lr,
            "finite": finite,
        }
        if has_val:
            logits = model.apply(params, data["x_val"])
            metrics["val_loss"] = data_loss(logits, data["y_val"])
            metrics["val_accuracy"] = accuracy(logits, data["y_val"])
        return state, metrics

    return chunk


def evaluate(model: Model, params, x, y) -> tuple[Optional[float], Optional[float]]:
    """(loss, accuracy) of params on one split, on the device that holds params; (None, None) if it is empty."""
    if len(y) == 0:
        return None, None
    logits = jax.jit(model.apply)(params, x)
    return float(data_loss(logits, y)), float(accuracy(logits, y))


@dataclasses.dataclass
class Prepared:
    """Everything a run needs, built and checked before anything is written to disk."""

    config: GradfitConfig
    dataset: Dataset
    model: Model
    plan: Plan
    device: Any
    state: TrainState
    data: dict  # device arrays: x, y, x_val, y_val, shuffle_key
    chunk: Callable  # the uncompiled chunk function (for tests and benchmarks)
    train_step: Callable  # one step, (state, data) -> (state, loss), uncompiled (for benchmarks)
    objective: Callable  # (params, x, y) -> regularized loss


def prepare(config: GradfitConfig) -> Prepared:
    """Load and check the data, pick the device, size the plan and build the initial state (no compilation).

    Arrays are made with x64 enabled for float64 configs; trace and run ``chunk`` under the same setting.
    """
    with jax.enable_x64(config.runtime.precision == "float64"):
        return _prepare(config)


def _prepare(config: GradfitConfig) -> Prepared:
    dataset = load_dataset(config)
    device = select_device(config.runtime.device)
    plan = Plan.from_config(config, len(dataset.train))
    if config.train.early_stopping.monitor and len(dataset.val) == 0:
        raise ConfigError(f"train.early_stopping: the validation split of {dataset.name} is empty "
                          f"(data.val_fraction={config.data.val_fraction:g}); raise data.val_fraction")
    optimizer, schedule = make_optimizer(config.optimizer, plan.total_steps)
    dtype = jnp.float64 if config.runtime.precision == "float64" else jnp.float32
    model = build_model(config.model, dataset.n_features, dataset.n_classes)

    init_key, shuffle_key = jax.random.split(jax.random.PRNGKey(config.seed))
    data = jax.device_put(_device_arrays(dataset, dtype, shuffle_key), device)
    with jax.default_device(device):
        params = model.init(init_key, dtype)
        order = jnp.zeros((len(dataset.train) if plan.batch_size else 0,), jnp.int32)
        state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32), order)
        # optimizer states may alias the params (lbfgs does); donation needs every buffer distinct
        state = jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), state)
    # committed like the outputs of the compiled step, so feeding those back never recompiles
    state = jax.device_put(state, device)

    objective = make_objective(model.apply, config.model.l2)
    train_step = make_train_step(objective, optimizer, plan, len(dataset.train), config.optimizer.name == "lbfgs")
    chunk = make_chunk(train_step, objective, model, config.model.l2, schedule, has_val=len(dataset.val) > 0)
    return Prepared(config, dataset, model, plan, device, state, data, chunk, train_step, objective)


def compile_chunk(run: Prepared) -> tuple[Callable, float]:
    """(compiled chunk with the state donated, seconds spent compiling). Call it under the run's x64 setting."""
    tick = time.perf_counter()
    compiled = jax.jit(run.chunk, donate_argnums=0).lower(run.state, run.data, jnp.int32(0)).compile()
    return compiled, time.perf_counter() - tick


def _device_arrays(dataset: Dataset, dtype, shuffle_key) -> dict:
    x, y = split_arrays(dataset.train, dataset.n_classes, dtype)
    x_val, y_val = split_arrays(dataset.val, dataset.n_classes, dtype)
    return {"x": x, "y": y, "x_val": x_val, "y_val": y_val, "shuffle_key": shuffle_key}
