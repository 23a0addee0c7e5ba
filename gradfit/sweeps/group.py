"""The members of a sweep that share one compiled program, and that program.

A group compiles its programs once: the initial state and the chunk of ``gradfit.training.programs``, built
from the config with the group's varying values (learning rate, l2, ...) as traced arrays and vmapped over the
members, and the evaluation, with the member's values as arguments. The block's states and metrics are sliced
per member on the device (``Group.member``), so each member's ``Session`` sees a single run's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gradfit.config.load import GradfitConfig
from gradfit.runtime import compile_cache
from gradfit.training.evaluate import eval_parts
from gradfit.training.prepare import Prepared, Programs
from gradfit.training.programs import Functions, TrainState

# the initial state runs once a block: compiled without XLA's optimizations, as training.prepare does
ONCE: list[dict | None] = [{"xla_backend_optimization_level": 0}]


def with_values(config: GradfitConfig, values: dict) -> GradfitConfig:
    """``config`` with dotted keys set to ``values``, unchecked: traced arrays stand in for numbers."""

    def replace(section, path, value):
        if len(path) == 1:
            return section.model_copy(update={path[0]: value})
        return section.model_copy(update={path[0]: replace(getattr(section, path[0]), path[1:], value)})

    for key, value in values.items():
        config = replace(config, key.split("."), value)
    return config


def _uncompiled(*args: Any) -> Any:
    raise RuntimeError("the group's programs are not compiled yet (Group.compile)")


@dataclasses.dataclass
class Group:
    """Members that share one compiled program, and that program."""

    index: int
    members: list  # sweeps.Member
    run: Prepared  # the first member's: data, model, plan and device, shared by all
    traced: tuple  # value keys that differ between the members (the seed is always per member)
    parallel: int
    init: Callable = _uncompiled  # (hyper, seeds, data) -> (states, shuffle keys), vmapped
    chunk: Callable = _uncompiled  # (hyper, states, data, num_steps) -> (states, metrics), vmapped; states donated
    evaluate: Callable = _uncompiled  # (hyper of one member, params, data, parts) -> metrics
    unstack: Callable = _uncompiled  # states -> [each member's state], on the device
    trace_time_s: float = 0.0
    compile_time_s: float = 0.0
    cache: str = "off"

    def hyper(self, members: list) -> dict:
        dtype = self.run.precision.param_dtype
        return {key: np.array([m.config_value(key) for m in members], dtype) for key in self.traced}

    def compile(self) -> None:
        """Trace and compile the group's programs once, for blocks of ``parallel`` members."""
        tick = time.perf_counter()
        run, k = self.run, self.parallel
        replicated = run.topology.replicated

        def functions(hyper: dict) -> Functions:
            # a member's minibatches come in the order of a full permutation, whatever train.shuffle says
            return run.functions(with_values(run.config, hyper), "full")

        def evaluate(hyper, params, data, parts):
            model = with_values(run.config, hyper).model
            return run.evaluator(model.l2, model.l1)(params, data, parts)

        # the step count is one for the whole block (members step together), so the chunk's loops and their
        # conditions stay scalar: a batched condition would make XLA run both sides of every lax.cond. Only a
        # full-batch run with tol, whose members stop at their own steps, counts per member.
        step = 0 if self.own_steps else None
        states_axes = TrainState(0, 0, step, 0)
        member_init = jax.vmap(
            lambda h, seed, data: functions(h).initial_state(seed, data), (0, 0, None), (states_axes, 0)
        )
        metrics_axes = {"windows": 0, "step": step, "finite": 0, **({"end": 0} if run.plan.full_batch else {})}
        member_chunk = jax.vmap(
            lambda h, state, data, n: functions(h).chunk(state, data, n),
            (0, states_axes, {"x": None, "y": None, "shuffle_key": 0}, None),
            (states_axes, metrics_axes),
        )
        hyper, seeds, shared = self.hyper(self.members[:1] * k), np.zeros(k, np.uint32), self.shared_data
        init = jax.jit(member_init, in_shardings=replicated, out_shardings=replicated).trace(hyper, seeds, shared)
        states, keys = init.out_info
        chunk = jax.jit(member_chunk, donate_argnums=1, in_shardings=replicated, out_shardings=replicated)
        one = jax.jit(evaluate, in_shardings=replicated, out_shardings=replicated)
        lowered = [
            init.lower(),
            chunk.trace(hyper, states, {**shared, "shuffle_key": keys}, np.int32(0)).lower(),
            one.trace({key: v[0] for key, v in hyper.items()}, run.state.params, run.data, eval_parts()).lower(),
        ]
        traced = time.perf_counter()
        (self.init, self.chunk, self.evaluate), self.cache = compile_cache.compile_all(lowered, ONCE + [{}, {}])
        take = jax.jit(self.member)  # one small program for every member: the index is traced
        self.unstack = lambda states: [take(states, np.int32(i)) for i in range(k)]
        self.trace_time_s, self.compile_time_s = traced - tick, time.perf_counter() - traced

    @property
    def own_steps(self) -> bool:
        """Members count their own steps (only a full-batch run with tol: each stops at its own step)."""
        return self.run.plan.full_batch and self.run.config.train.tol is not None

    def member(self, tree, i: int):
        """Member ``i``'s slice of the block's states or chunk metrics (a shared step count is everyone's)."""
        if isinstance(tree, TrainState):
            cut = jax.tree_util.tree_map(lambda a: a[i], tree._replace(step=None))
            return cut._replace(step=tree.step if not self.own_steps else tree.step[i])
        return {key: value if key == "step" and not self.own_steps else value[i] for key, value in tree.items()}

    def stack(self, states: list):
        """The block's states from its members' (``member``'s inverse)."""
        stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *[s._replace(step=None) for s in states])
        steps = np.stack([s.step for s in states])
        return stacked._replace(step=steps if self.own_steps else steps[0])

    @property
    def shared_data(self) -> dict:
        return {key: self.run.data[key] for key in ("x", "y")}

    def programs(self, member) -> Programs:
        """A member's view of the group's programs: the Session evaluates through it."""
        hyper = {key: np.asarray(member.config_value(key), self.run.precision.param_dtype) for key in self.traced}
        evaluate = self.evaluate
        return Programs(
            None,
            lambda params, data, parts: evaluate(hyper, params, data, parts),
            self.trace_time_s,
            self.compile_time_s,
            self.cache,
        )
