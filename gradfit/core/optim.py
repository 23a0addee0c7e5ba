"""Config -> optax optimizer and learning-rate schedule."""

from __future__ import annotations

from collections.abc import Callable

import optax

from gradfit.config.schema import OptimizerConfig
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
    if sched.warmup_steps >= total_steps:
        raise ConfigError(
            f"optimizer.schedule.warmup_steps={sched.warmup_steps} must be below the run's {total_steps} steps"
        )
    return optax.warmup_cosine_decay_schedule(0.0, lr, sched.warmup_steps, total_steps, end_value=final)


def make_optimizer(
    config: OptimizerConfig, total_steps: int
) -> tuple[optax.GradientTransformationExtraArgs, Callable | None]:
    """The configured optax transformation (always accepting extra args, as lbfgs needs) and its schedule.

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
    return optax.chain(*clip, base), schedule
