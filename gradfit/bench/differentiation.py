"""The cost of differentiation: one gradient against one loss evaluation, and how the full gradient's cost grows
with the parameter count by method (reverse mode, forward mode, finite differences, a hand-derived NumPy gradient).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gradfit.bench.options import BenchOptions
from gradfit.bench.timing import compile_side_by_side, dispatch_floor, growth_exponent, growth_fit, measure, record
from gradfit.core.losses import logistic_manual_grad, make_objective, mlp_manual_grad
from gradfit.core.models import count_params, logistic, mlp
from gradfit.data.synthetic import make_synthetic


def gradient_cost(run, options: BenchOptions, name: str | None = None) -> dict:
    """Time of one loss evaluation vs one value_and_grad on the full training split."""
    row = {"config": name or run.config.name}
    with run.precision.scope():
        params, x, y = run.state.params, run.data["x"], run.data["y"]
        loss_s = record(row, "loss_s", measure(jax.jit(run.objective), params, x, y, repeats=options.repeats * 2))
        grad_s = record(
            row,
            "value_and_grad_s",
            measure(jax.jit(jax.value_and_grad(run.objective)), params, x, y, repeats=options.repeats * 2),
        )
    return {**row, "rows": int(x.shape[0]), "num_params": count_params(params), "ratio": grad_s / loss_s}


def _gradient_methods(objective: Callable, params, x, y, manual: Callable, repeats: int) -> dict:
    """Seconds for one loss and for the full gradient by each method on one problem."""
    theta, unravel = ravel_pytree(params)
    size = theta.size

    def flat_loss(t, x, y):
        return objective(unravel(t), x, y)

    def forward(t, x, y):  # jacfwd, in chunks of 256 tangents to bound memory
        return jax.lax.map(
            lambda i: jax.jvp(lambda u: flat_loss(u, x, y), (t,), (jnp.zeros_like(t).at[i].set(1),))[1],
            jnp.arange(size),
            batch_size=min(256, size),
        )

    def central_differences(t, x, y):
        h = jnp.finfo(t.dtype).eps ** (1 / 3) * jnp.maximum(1.0, jnp.abs(t))

        def one(i):
            return (flat_loss(t.at[i].add(h[i]), x, y) - flat_loss(t.at[i].add(-h[i]), x, y)) / (2 * h[i])

        return jax.lax.map(one, jnp.arange(size), batch_size=min(256, size))

    numpy_params = jax.tree_util.tree_map(np.asarray, params)
    x_np, y_np = np.asarray(x), np.asarray(y)
    cheap = 2 * repeats  # the loss is the denominator of every ratio: time it (and its peers) well
    programs = compile_side_by_side([flat_loss, jax.grad(flat_loss), forward, central_differences], theta, x, y)
    row = {"num_params": int(size), "reverse_flops_vs_loss": _flop_ratio(programs[1], programs[0])}
    for key, program, count in zip(
        ("loss_s", "reverse_s", "forward_s", "finite_difference_s"), programs, (cheap, cheap, repeats, repeats)
    ):
        record(row, key, measure(program, theta, x, y, repeats=count))
    record(row, "manual_numpy_s", measure(lambda: manual(numpy_params, x_np, y_np), repeats=cheap))
    return row


def _flop_ratio(program, reference) -> float | None:
    """XLA's own flop count of ``program`` over ``reference``'s: the cost model behind the timings, free of noise.

    Only for loop-free programs (XLA counts a while-loop body once), hence reverse mode against the loss."""
    counts = [compiled.cost_analysis() for compiled in (program, reference)]
    program_flops, reference_flops = [(c[0] if isinstance(c, list) else c or {}).get("flops") for c in counts]
    return program_flops / reference_flops if program_flops and reference_flops else None


def method_scaling(options: BenchOptions, device) -> dict:
    """Full-gradient time by method, as a ratio to one loss evaluation, as the parameter count grows.

    The growth exponent is the slope of log(ratio) against log(parameters): about 0 for reverse mode (the cheap
    gradient principle), about 1 for forward mode and finite differences (one pass per parameter). It is fitted
    only over the sizes whose loss takes well above the dispatch floor (``gradfit.bench.timing.growth_fit``).
    """
    families = {}
    with jax.default_device(device):
        floor_s = dispatch_floor(2 * options.repeats)
        rows = []
        for d in options.logreg_dims:
            x, labels = make_synthetic(options.rows, d, 2, 2.0, 1.0, seed=0)
            y = np.where(labels == 1, 1.0, -1.0).astype(np.float32)
            model = logistic(d)
            params = jax.tree_util.tree_map(lambda p: p + 0.01, model.init(jax.random.PRNGKey(0)))
            timing = _gradient_methods(
                make_objective(model.apply, 0.0),
                params,
                jnp.asarray(x),
                jnp.asarray(y),
                lambda p, x, y: logistic_manual_grad(p, x, y, dtype=np.float32),
                options.repeats,
            )
            rows.append({"size": d, **timing})
        families["logistic"] = _with_ratios(rows, floor_s)
        rows = []
        for width in options.mlp_widths:
            x, labels = make_synthetic(options.rows, 64, 10, 2.0, 1.0, seed=0)
            model = mlp(64, 10, [width, width], "tanh")
            params = model.init(jax.random.PRNGKey(0))
            timing = _gradient_methods(
                make_objective(model.apply, 0.0),
                params,
                jnp.asarray(x),
                jnp.asarray(labels, jnp.int32),
                lambda p, x, y: mlp_manual_grad(p, x, y, "tanh", dtype=np.float32),
                options.repeats,
            )
            rows.append({"size": width, **timing})
        families["mlp"] = _with_ratios(rows, floor_s)
    return families


def _with_ratios(rows: list, floor_s: float) -> dict:
    """The rows with each method's time over the loss's, and growth exponents over the compute-bound sizes."""
    methods = ("reverse", "forward", "finite_difference", "manual_numpy")
    for row in rows:
        row["ratios"] = {m: row[f"{m}_s"] / row["loss_s"] for m in methods}
    fit = growth_fit(rows, "loss_s", floor_s)
    fitted = [row for row in rows if row["num_params"] in fit["sizes"]]
    exponents = {m: growth_exponent([(row["num_params"], row["ratios"][m]) for row in fitted]) for m in methods}
    return {"rows": rows, "growth_exponent": exponents, "growth_fit": fit}
