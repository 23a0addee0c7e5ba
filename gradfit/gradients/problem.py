"""A config's training objective at a point: what compare-grads checks and trace follows.

Built on ``train.prepare``, the set-up path training takes, so the data, the split, the standardization and
the initial parameters are training's own (the same key split before ``init``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gradfit.config.load import GradfitConfig
from gradfit.core.losses import hand_derived_gradient, make_objective
from gradfit.core.models import build_model, params_from_named
from gradfit.data.streamed import StreamedSplit
from gradfit.errors import RunDirError
from gradfit.runs.rundir import RunDir
from gradfit.training.prepare import prepare, target_std


@dataclasses.dataclass
class Problem:
    """The training objective of a config on (some of) its training rows, at one point."""

    loss_fn: Callable  # (params, x, y) -> regularized training objective
    params: object  # the point, in the config's precision
    manual_grad: Callable  # params -> the hand-derived gradient (NumPy, float64) on the same rows
    description: str
    args: tuple  # (x, y): the training rows, as device arrays

    def cast(self, dtype) -> tuple:
        """(params, args) with the params and the floating data in ``dtype`` (make it under its precision scope)."""

        def to(a):
            return a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a

        return jax.tree_util.tree_map(to, self.params), tuple(to(a) for a in self.args)


def from_config(
    config: GradfitConfig, at_run: str | None = None, max_rows: int = 10_000, start: bool = False
) -> Problem:
    """The config's regularized training objective on its first ``max_rows`` training rows.

    The point is the run's saved parameters (``at_run``), else the parameters training starts from. Logistic
    regression starts at zero, where every margin is 0 and sigmoid(0) = 1/2 whatever its sign: a sign error in
    a gradient would not show there, so a check takes a seeded random point instead (unless ``start``).
    """
    single = config.runtime.model_copy(update={"devices": 1})  # a check needs no mesh; the point is the same
    run = prepare(config.model_copy(update={"runtime": single}))
    dtype = run.precision.param_dtype
    with run.precision.scope():
        if run.feed is None:
            x, y = run.data["x"][:max_rows].astype(dtype), run.data["y"][:max_rows]
        else:  # streamed data: only the rows checked are read
            train = run.dataset.train
            assert isinstance(train, StreamedSplit), "a run with a feed streams its training split"
            rows = np.arange(min(max_rows, len(train)))
            x, y = train.take(rows, dtype, run.precision.compute_dtype)
            x, y = jnp.asarray(x).astype(dtype), jnp.asarray(y)
            run.feed.close()
        params = run.state.params
        if at_run is not None:
            params, where = _saved_params(params, at_run), f"the parameters of {at_run}"
        elif config.model.kind in ("logistic", "linear") and not start:  # convex: training starts at zero
            w_key, b_key = jax.random.split(jax.random.PRNGKey(config.seed))
            params = {
                "w": jax.random.normal(w_key, params["w"].shape, dtype) / np.sqrt(run.dataset.n_features),
                "b": jax.random.normal(b_key, params["b"].shape, dtype),
            }
            where = f"a random point (seed {config.seed}; training starts at zero, where sign errors hide)"
        else:
            where = f"the parameters training starts from (seed {config.seed})"
    objective = run.objective
    if run.precision.mixed:  # bfloat16 products would swamp any check: the same model, products in float32
        objective = make_objective(
            build_model(config.model, run.dataset.n_features, run.dataset.n_classes).apply,
            config.model.l2,
            run.model.row_loss,
        )
    hand_derived = hand_derived_gradient(config.model, target_std(run.dataset))
    x_host, y_host = np.asarray(x), np.asarray(y)
    row_count = f"{len(y_host):,} training row" + ("s" if len(y_host) != 1 else "")
    description = (
        f"{config.model.kind} on {run.dataset.name}: training objective over {row_count} "
        f"(l2 = {config.model.l2:g}), at {where}"
    )
    return Problem(objective, params, lambda p: hand_derived(p, x_host, y_host), description, (x, y))


def _saved_params(template, at_run: str):
    run = RunDir(Path(at_run))
    if not run.has_params():
        raise RunDirError(f"{at_run}: no params.npz here; is it a finished gradfit run directory?")
    try:
        return params_from_named(template, run.load_params(), str(run.params_file))
    except ValueError as exc:
        raise RunDirError(f"{exc}; pass the config the run was trained with") from None
