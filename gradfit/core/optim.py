"""Config -> optax optimizer and learning-rate schedule, and the proximal step of an L1 penalty (``with_l1``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradfit.config.schema import OptimizerConfig
from gradfit.core.losses import static_zero
from gradfit.core.models import weight_mask
from gradfit.errors import ConfigError


def make_schedule(config: OptimizerConfig, total_steps: int) -> Callable:
    """step -> learning rate over a run of ``total_steps`` steps."""
    lr, sched = config.learning_rate, config.schedule
    if not isinstance(lr, (int, float)):  # a traced rate (a sweep's): optax's schedules test their peak in Python
        unit = make_schedule(config.model_copy(update={"learning_rate": 1.0}), total_steps)
        return lambda step: lr * unit(step)
    final = lr * sched.final_fraction
    if sched.name == "constant":
        return optax.constant_schedule(lr)
    if sched.name == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total_steps, alpha=sched.final_fraction)
    if sched.name == "exponential":
        return optax.exponential_decay(lr, transition_steps=total_steps, decay_rate=sched.final_fraction)
    warmup = sched.warmup_steps
    if sched.warmup_fraction is not None:
        warmup = round(sched.warmup_fraction * total_steps)
    if warmup >= total_steps:
        given = (
            f"warmup_fraction={sched.warmup_fraction:g} ({warmup:,} steps)"
            if sched.warmup_fraction is not None
            else f"warmup_steps={warmup}"
        )
        raise ConfigError(
            f"optimizer.schedule.{given} must be below the run's {total_steps:,} steps; set "
            "optimizer.schedule.warmup_fraction to scale the warm-up with the run"
        )
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total_steps, end_value=final)


def make_optimizer(
    config: OptimizerConfig, total_steps: int, l1: Any = 0.0
) -> tuple[optax.GradientTransformationExtraArgs, Callable | None]:
    """The configured optax transformation (always accepting extra args, as lbfgs needs) and its schedule; with
    ``l1`` (a number or a traced array) followed by the L1 penalty's proximal step (``with_l1``).

    For lbfgs the schedule is None: its step size comes from the zoom line search.
    """
    if config.name == "lbfgs":
        return optax.chain(optax.lbfgs(memory_size=config.memory_size)), None
    schedule = make_schedule(config, total_steps)
    c = config
    base = {
        "sgd": lambda: optax.sgd(schedule),
        "momentum": lambda: optax.sgd(schedule, momentum=c.momentum),
        "nesterov": lambda: optax.sgd(schedule, momentum=c.momentum, nesterov=True),
        "adam": lambda: optax.adam(schedule, b1=c.b1, b2=c.b2, eps=c.eps),
        # decoupled decay on weights only, matching the L2 penalty's convention
        "adamw": lambda: optax.adamw(
            schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay, mask=weight_mask
        ),
        "rmsprop": lambda: optax.rmsprop(schedule, decay=c.decay, eps=c.eps),
        "adagrad": lambda: optax.adagrad(schedule, eps=c.eps),
    }[config.name]()
    clip = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm is not None else []
    chained = optax.chain(*clip, base)
    if static_zero(l1):
        return chained, schedule
    return with_l1(chained, l1, config, schedule), schedule


class ProximalState(NamedTuple):
    inner: Any  # the optimizer's own state
    steps: jax.Array  # int32 (): steps taken, as the optimizer's schedule counts them


def with_l1(
    inner: optax.GradientTransformation, l1: Any, config: OptimizerConfig, schedule: Callable
) -> optax.GradientTransformationExtraArgs:
    """``inner``'s step followed by the proximal step of ``l1 * ||w||_1`` on the weights (not the biases).

    Each weight moves to ``soft_threshold(w + update, l1 * s)``, ``s`` the step size ``inner`` just applied to that
    coordinate: the learning rate (sgd), ``lr / (1 - momentum)`` (momentum, nesterov: the step a constant gradient
    gets once the trace has built up) or Adam's ``lr / (sqrt(nu_hat) + eps)``. With that ``s`` the fixed points
    are exactly the optimum's conditions (g + l1 sign(w) = 0 where w != 0, |g| <= l1 where w = 0), and weights
    reach exact zeros. rmsprop, adagrad and lbfgs do not take it (the config refuses them).
    """

    def init(params):
        return ProximalState(inner.init(params), jnp.zeros([], jnp.int32))

    def update(updates, state, params=None, **extra):
        updates, inner_state = optax.with_extra_args_support(inner).update(updates, state.inner, params, **extra)
        steps = _step_sizes(config, schedule(state.steps), inner_state, state.steps + 1, params)
        mask = weight_mask(params)  # Python booleans, at trace time

        def proximal(p, u, s, is_weight):
            if not is_weight:
                return u
            moved = p + u
            return jnp.sign(moved) * jnp.maximum(jnp.abs(moved) - l1 * s, 0) - p

        return jax.tree_util.tree_map(proximal, params, updates, steps, mask), ProximalState(
            inner_state, state.steps + 1
        )

    return optax.GradientTransformationExtraArgs(init, update)


def _step_sizes(config: OptimizerConfig, lr: Any, state: Any, count: Any, params: Any) -> Any:
    """Per coordinate, the step size of the optimizer's last update (see ``with_l1``), a pytree like ``params``."""
    if config.name in ("adam", "adamw"):
        nu = optax.tree_utils.tree_get(state, "nu")
        correction = 1 - config.b2 ** count.astype(jnp.float32)
        return jax.tree_util.tree_map(lambda v: lr / (jnp.sqrt(v / correction.astype(v.dtype)) + config.eps), nu)
    scale = lr / (1 - config.momentum) if config.name in ("momentum", "nesterov") else lr
    return jax.tree_util.tree_map(lambda _: scale, params)
