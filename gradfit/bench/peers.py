"""gradfit against simple alternatives: the same training in a minimal hand-written JAX loop, a NumPy step with
the hand-derived gradient, a PyTorch eager step and scikit-learn's L-BFGS.

Each peer row holds both sides' times and ``time_ratio`` (gradfit's time over the peer's); a peer that cannot
run here says why (``available: false``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradfit.bench.options import BenchOptions
from gradfit.bench.timing import measure, record
from gradfit.bench.training_speed import batch_size, fused_step_time
from gradfit.config.load import GradfitConfig
from gradfit.core import precision
from gradfit.core.losses import hand_derived_gradient
from gradfit.core.optim import make_optimizer
from gradfit.data import shuffle
from gradfit.data.dataset import load_dataset
from gradfit.training.prepare import prepare

DESCENT_RATE = 0.01  # learning rate of the plain gradient-descent steps compared with NumPy


def peers(runs: dict, options: BenchOptions, training: list) -> dict:
    """gradfit against the minimal hand-written JAX loop (always), PyTorch eager and scikit-learn's lbfgs (when
    installed), and a NumPy step (with the section "numpy_step" of ``options.sections``). ``runs`` maps names to
    prepared runs; ``training`` holds each one's loop timing (``training_throughput``)."""
    out = {}
    loops = {row["config"]: row for row in training}  # rows are named by the keys of ``runs``
    # torch first: after scikit-learn has started its OpenMP threads, torch's own pool fights them for the
    # cores (seen here: 40 s of contention on 2 cores), which would measure the clash, not torch
    network = next((name for name, r in runs.items() if r.config.model.kind == "mlp"), None)
    if network is not None:
        out["torch_eager_mlp"] = _torch_peer(runs[network], options, loops.get(network))
    for name, run in runs.items():
        out[f"minimal_jax_loop_{name}"] = _minimal_loop_peer(run, options, loops[name])
    if "numpy_step" in options.sections:
        for name, run in runs.items():
            out[f"numpy_step_{name}"] = _numpy_step_peer(run.config, options)
    logreg = next((r for r in runs.values() if r.config.model.kind == "logistic"), None)
    if logreg is not None:
        out["sklearn_lbfgs"] = _sklearn_peer(logreg.config, options)
    return out


def _unavailable(peer: str, reason: str) -> dict:
    return {"peer": peer, "available": False, "reason": reason}


def _first_batch(run, dtype):
    batch = batch_size(run)
    return np.asarray(run.dataset.train.x[:batch], dtype), np.asarray(run.dataset.train.y[:batch])


def _against_loop(row: dict, loop_row: dict, peer_key: str) -> dict:
    """Fill a peer row's gradfit side with gradfit's whole training loop (default log points and evaluations)."""
    row["gradfit_s_per_step"] = loop_row["loop_s_per_step"]
    row.setdefault("spread", {})["gradfit_s_per_step"] = loop_row["spread"]["loop_s_per_step"]
    if "loop_s_per_step" in loop_row.get("unstable", []):
        row.setdefault("unstable", []).append("gradfit_s_per_step")
    row["time_ratio"] = row["gradfit_s_per_step"] / row[peer_key]
    return row


def minimal_loop(run, steps: int) -> Callable[[], Any]:
    """The same training steps as ``run`` in a bare ``jit`` + ``lax.scan``: same model, loss, optimizer, batch,
    shuffle and data on the device (as jit arguments), and nothing else: no log points, evaluations, files or
    stopping rules.

    Returns a function that runs ``steps`` steps from the initial parameters (and returns the last loss); it is
    compiled already.
    """
    config, plan = run.config, run.plan
    optimizer, _ = make_optimizer(config.optimizer, plan.total_steps)
    objective, n = run.objective, len(run.dataset.train)
    lbfgs = config.optimizer.name == "lbfgs"

    @jax.jit
    def train(params, x, y, key):
        def step(carry, index):
            params, opt_state = carry
            if plan.full_batch:
                xb, yb = x, y
            else:
                epoch, position = jnp.divmod(index, plan.steps_per_epoch)
                rows = shuffle.permuted(
                    jax.random.fold_in(key, epoch), n, position * plan.batch_size + jnp.arange(plan.batch_size)
                )
                xb, yb = x[rows], y[rows]
            loss_fn = lambda p: objective(p, xb, yb)  # noqa: E731
            if lbfgs:
                loss, grads = optax.value_and_grad_from_state(loss_fn)(params, state=opt_state)
            else:
                loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params, value=loss, grad=grads, value_fn=loss_fn)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(steps))
        return losses[-1]

    args = (run.state.params, run.data["x"], run.data["y"], run.data["shuffle_key"])
    compiled = train.lower(*args).compile()
    return lambda: compiled(*args)


def _minimal_loop_peer(run, options: BenchOptions, loop_row: dict) -> dict:
    """gradfit's whole loop with its default settings (``loop_row``, from ``training_throughput``) against the
    minimal loop's same steps: the framework's overhead (log points, evaluations, files) as a time ratio."""
    name = "minimal JAX loop (jit + lax.scan)"
    config = run.config
    steps = loop_row["loop"]["steps"]
    with run.precision.scope():
        timing = measure(minimal_loop(run, steps), repeats=options.repeats)
    row = {
        "peer": name,
        "available": True,
        "config": config.name,
        "batch_size": batch_size(run),
        "steps": steps,
        "note": "framework overhead: the same steps in a bare jit + lax.scan (same model, optimizer, batch, "
        "shuffle, data on the device), without log points or evaluations",
    }
    record(row, "peer_s_per_step", timing, 1 / steps)
    return _against_loop(row, loop_row, "peer_s_per_step")


def _numpy_step_peer(config: GradfitConfig, options: BenchOptions) -> dict:
    """Time per plain gradient-descent step: NumPy with the hand-derived gradient vs gradfit's fused sgd step,
    same batch size and precision."""
    sgd = config.model_copy(
        update={"optimizer": config.optimizer.model_validate({"name": "sgd", "learning_rate": DESCENT_RATE})}
    )
    run = prepare(sgd)
    row = {
        "peer": "NumPy, hand-derived gradient",
        "config": config.name,
        "batch_size": batch_size(run),
        "precision": config.runtime.precision,
    }
    gradfit_s = record(row, "gradfit_s_per_step", fused_step_time(run, options.steps, options.repeats)[0])
    dtype = precision.of(config).param_dtype
    params = jax.tree_util.tree_map(lambda p: np.asarray(p, dtype), run.state.params)
    x, y = _first_batch(run, dtype)
    hand_derived = hand_derived_gradient(config.model)
    grad = lambda p: hand_derived(p, x, y, dtype=dtype)  # noqa: E731

    def numpy_step():
        return jax.tree_util.tree_map(lambda p, g: p - DESCENT_RATE * g, params, grad(params))

    numpy_s = record(row, "peer_s_per_step", measure(numpy_step, repeats=options.repeats * 2))
    return {**row, "time_ratio": gradfit_s / numpy_s}


def _sklearn_peer(config: GradfitConfig, options: BenchOptions) -> dict:
    """Time for each L-BFGS to reach the same objective (float64, same data, same L2), compile time excluded.

    The target is the better of the two converged objectives; each side is timed with the fewest iterations
    that reach it to 1e-9 relative.
    """
    name = "scikit-learn LogisticRegression(lbfgs)"
    try:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return _unavailable(name, "scikit-learn is not installed (pip install scikit-learn)")
    lam = config.model.l2 or 1e-3
    config = _lbfgs_float64(config, lam)
    data = load_dataset(config)
    x, y = data.train.x, data.train.y

    def sklearn_fit(iterations: int, tol: float = 0.0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return LogisticRegression(C=1.0 / (lam * len(y)), solver="lbfgs", tol=tol, max_iter=iterations).fit(x, y)

    def sklearn_objective(clf) -> float:
        w, b = clf.coef_[0], clf.intercept_[0]
        return float(np.mean(np.logaddexp(0, -y * (x @ w + b))) + lam / 2 * w @ w)

    run = prepare(config)
    with jax.enable_x64(True):
        fused = jax.jit(run.chunk).lower(run.state, run.train_data, jnp.int32(0)).compile()

        def gradfit_objective(steps: int) -> float:
            return float(fused(run.state, run.train_data, jnp.int32(steps))[1]["end"][0])

        target = min(sklearn_objective(sklearn_fit(10_000, 1e-14)), gradfit_objective(200))
        goal = target * (1 + 1e-9)
        steps = fewest(lambda n: gradfit_objective(n) <= goal, 200)
        iterations = fewest(lambda n: sklearn_objective(sklearn_fit(n)) <= goal, 1000)
        if steps is None or iterations is None:
            return _unavailable(name, "one of the two did not reach the common objective; nothing to compare")
        row = {
            "peer": name,
            "available": True,
            "config": config.name,
            "l2": lam,
            "objective": target,
            "gradfit_steps": steps,
            "peer_iterations": iterations,
            "note": f"time to objective {target:.10g} (1e-9 relative): gradfit {steps} L-BFGS steps, "
            f"scikit-learn {iterations} iterations; float64; gradfit compile time excluded",
        }
        gradfit_s = record(
            row,
            "gradfit_s",
            measure(lambda: fused(run.state, run.train_data, jnp.int32(steps)), repeats=options.repeats),
        )
    sklearn_s = record(row, "peer_s", measure(lambda: sklearn_fit(iterations), repeats=options.repeats))
    return {**row, "time_ratio": gradfit_s / sklearn_s}


def fewest(reaches: Callable[[int], bool], most: int) -> int | None:
    """The smallest n in 1 ... ``most`` with ``reaches(n)``, None if not even ``most`` does; for a predicate that
    stays true once true (a descent method's objective after n iterations is below a goal). By bisection: about
    log2(most) calls where counting up made as many as n (38 scikit-learn fits, seconds on a busy machine)."""
    if not reaches(most):
        return None
    below, reached = 0, most
    while reached - below > 1:
        middle = (below + reached) // 2
        below, reached = (below, middle) if reaches(middle) else (middle, reached)
    return reached


def _lbfgs_float64(config: GradfitConfig, lam: float) -> GradfitConfig:
    """The config with L2 ``lam``, trained by full-batch L-BFGS for 200 steps in float64."""
    settings = config.model_dump()
    settings["model"]["l2"] = lam
    settings["optimizer"] = {"name": "lbfgs"}
    settings["train"] = {"steps": 200}  # full batch
    settings["runtime"]["precision"] = "float64"
    return GradfitConfig.model_validate(settings)


TORCH_OPTIMIZERS = {  # gradfit optimizer -> (torch class name, keyword arguments from the config)
    "sgd": ("SGD", lambda c: {}),
    "momentum": ("SGD", lambda c: {"momentum": c.momentum}),
    "nesterov": ("SGD", lambda c: {"momentum": c.momentum, "nesterov": True}),
    "adam": ("Adam", lambda c: {"betas": (c.b1, c.b2), "eps": c.eps}),
    "adamw": ("AdamW", lambda c: {"betas": (c.b1, c.b2), "eps": c.eps, "weight_decay": c.weight_decay}),
    "rmsprop": ("RMSprop", lambda c: {"alpha": c.decay, "eps": c.eps}),
    "adagrad": ("Adagrad", lambda c: {"eps": c.eps}),
}


def _torch_peer(run, options: BenchOptions, loop_row: dict | None = None) -> dict:
    """A PyTorch eager training step of the same MLP, loss, optimizer and batch size, against gradfit's whole
    training loop with its default log points and evaluations (``loop_row``; else its fused step)."""
    name = "PyTorch eager MLP step"
    config = run.config
    try:
        import torch
    except ImportError:
        return _unavailable(name, "torch is not installed (optional: pip install torch)")
    if config.optimizer.name not in TORCH_OPTIMIZERS:
        return _unavailable(name, f"no like-for-like PyTorch step for optimizer '{config.optimizer.name}'")
    chosen = precision.of(config)
    dtype = torch.float64 if chosen.x64 else torch.float32
    # the same kind of device as gradfit's run, when this torch build can use it
    where = "cuda" if run.device.platform == "gpu" and torch.cuda.is_available() else "cpu"
    binary = run.dataset.n_classes == 2
    net = _torch_mlp(torch, run, binary, where, dtype)
    cls, kwargs = TORCH_OPTIMIZERS[config.optimizer.name]
    optimizer = getattr(torch.optim, cls)(
        net.parameters(), lr=config.optimizer.learning_rate, **kwargs(config.optimizer)
    )
    x, loss_fn = _torch_batch(torch, run, binary, where, dtype)

    def torch_step():
        optimizer.zero_grad()
        # bfloat16 runs: matrix products in bfloat16 under autocast, float32 parameters, as gradfit does
        with torch.autocast(where, torch.bfloat16, enabled=chosen.mixed):
            loss = loss_fn(net(x))
        loss.backward()
        optimizer.step()
        if where == "cuda":  # like block_until_ready on the JAX side
            torch.cuda.synchronize()

    row = {
        "peer": name,
        "available": True,
        "config": config.name,
        "torch": torch.__version__,
        "device": where,
        "batch_size": batch_size(run),
        "optimizer": config.optimizer.name,
        "note": f"torch {torch.__version__} on {where} ({torch.get_num_threads()} CPU threads), "
        f"{config.optimizer.name}",
    }
    torch_s = record(row, "peer_s_per_step", measure(torch_step, repeats=options.repeats * 2))
    if loop_row is not None:
        return _against_loop(row, loop_row, "peer_s_per_step")
    gradfit_s = record(row, "gradfit_s_per_step", fused_step_time(run, options.steps, options.repeats)[0])
    return {**row, "time_ratio": gradfit_s / torch_s}


def _torch_mlp(torch, run, binary: bool, where: str, dtype):
    """The run's MLP as a ``torch.nn.Sequential`` on ``where`` in ``dtype``; one output unit for two classes."""
    config = run.config
    sizes = [run.dataset.n_features, *config.model.hidden, 1 if binary else run.dataset.n_classes]
    activation = {
        "relu": torch.nn.ReLU,
        "tanh": torch.nn.Tanh,
        "gelu": lambda: torch.nn.GELU("tanh"),
        "sigmoid": torch.nn.Sigmoid,
        "silu": torch.nn.SiLU,
    }[config.model.activation]
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [torch.nn.Linear(fan_in, fan_out)] + ([activation()] if i < len(sizes) - 2 else [])
    return torch.nn.Sequential(*layers).to(where, dtype)


def _torch_batch(torch, run, binary: bool, where: str, dtype) -> tuple[Any, Callable]:
    """(x, loss of the network's output) on the run's first batch, as torch tensors on ``where``."""
    x_np, y_np = _first_batch(run, np.float64 if dtype == torch.float64 else np.float32)
    x = torch.tensor(x_np, device=where, dtype=dtype)
    if binary:  # one logit and the logistic loss on labels mapped from {-1, +1} to {0, 1}, as gradfit does
        y = torch.tensor((y_np + 1) / 2, device=where, dtype=dtype)
        loss_fn = lambda out: torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], y)  # noqa: E731
    else:
        y = torch.tensor(y_np, device=where, dtype=torch.int64)
        loss_fn = lambda out: torch.nn.functional.cross_entropy(out, y)  # noqa: E731
    return x, loss_fn
