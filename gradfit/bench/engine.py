"""Benchmark engine: measured speed of training and of differentiation, against simple alternatives.

Every time is a median of samples after a warm-up call, each waited for with ``block_until_ready``; samples are
taken until the newest ones agree within ``SPREAD_LIMIT`` (or a budget is spent), and each row records the
spread of what it reports (``spread``) and which figures stayed unstable (``unstable``): those are flagged when
shown, never printed as fact. Compile time is measured apart. Functions return JSON-ready dicts and print
nothing; the CLI renders them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Callable, Optional

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from gradfit.bench import helmholtz
from gradfit.core import precision
from gradfit.data import shuffle
from gradfit.config.load import EXAMPLES, GradfitConfig, resolve_config
from gradfit.data.dataset import make_synthetic
from gradfit.runtime.device import describe_device, select_device
from gradfit.training.loop import EarlyStopping, LoopState, Session
from gradfit.core.losses import hand_derived_gradient, logistic_manual_grad, make_objective, mlp_manual_grad
from gradfit.core.models import count_params, logistic, mlp
from gradfit.core.optim import make_optimizer
from gradfit.runs.rundir import RunDir
from gradfit.bench.timing import Timing, collect, compile_side_by_side, growth_exponent, measure, record
from gradfit.training.programs import compile_programs, prepare

# Dense fp32 peak (TFLOP/s) of GPUs we know: the CUDA-core rate, and the TF32 tensor-core rate (dense) that
# float32 matmuls use under JAX's default GPU matmul precision.
GPU_PEAKS_TFLOPS = {  # checked in this order: the first name found in the device kind wins; dense rates
    "H200": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4},
    "H100 PCIE": {"float32": 51.0, "tf32": 378.0, "bfloat16": 756.0},
    "H100": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4},  # SXM
    "A100": {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0},
}


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """Sizes and repeats of one benchmark run (``QUICK`` and ``FULL`` are the presets)."""

    steps: int = 200  # optimizer steps per timed training run
    repeats: int = 5
    logreg_dims: tuple = (8, 32, 128, 512, 2048)
    mlp_widths: tuple = (8, 16, 32, 64)
    rows: int = 1000  # rows of the synthetic data in the method-scaling section
    helmholtz_sizes: tuple = helmholtz.FULL["sizes"]  # variables n of the Helmholtz free-energy study
    symbolic_max_n: int = helmholtz.FULL["symbolic_max_n"]  # SymPy's expressions swell: up to this n
    peers: bool = True


FULL = BenchOptions()
QUICK = BenchOptions(steps=50, repeats=3, logreg_dims=(16, 512), mlp_widths=(8, 32), rows=500,
                     helmholtz_sizes=helmholtz.QUICK["sizes"], symbolic_max_n=helmholtz.QUICK["symbolic_max_n"])
STUDIES = ("helmholtz",)  # what ``gradfit bench --study`` can run alone

DESCENT_RATE = 0.01  # learning rate of the plain gradient-descent steps compared with NumPy


def environment(device, precisions) -> dict:
    import jaxlib

    return {
        "device": describe_device(device),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "cpu_cores": os.cpu_count(),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "optax": optax.__version__,
        "dtype": ", ".join(sorted(set(precisions))),
        "matmul_precision": jax.config.jax_default_matmul_precision or "default",
    }


def gpu_peak(device_kind: str) -> Optional[dict]:
    """Known peak rates for a GPU name like 'NVIDIA H100 80GB HBM3'; None when the card is not in the table."""
    for name, peaks in GPU_PEAKS_TFLOPS.items():
        if name in device_kind.upper():
            return peaks
    return None


def _batch_size(run) -> int:
    return run.plan.batch_size or len(run.dataset.train)


def fused_step_time(run, steps: int, repeats: int) -> tuple[Timing, float]:
    """(time per step inside the compiled chunk, compile seconds) for a prepared run.

    Every call starts from the initial state (the state is not donated); the number of steps per call grows
    until a call takes at least 20 ms, so the dispatch of one call is a small part of what is divided by the
    steps it ran (a full-batch run with train.tol may stop before ``steps``).
    """
    with run.precision.scope():
        tick = time.perf_counter()
        fused = jax.jit(run.chunk).lower(run.state, run.train_data, jnp.int32(steps)).compile()
        compile_s = time.perf_counter() - tick
        while True:
            call = lambda: fused(run.state, run.train_data, jnp.int32(steps))  # noqa: E731
            timing = measure(call, repeats=repeats)
            ran = int(call()[1]["step"]) - int(run.state.step)
            if timing.seconds >= 0.02 or steps >= 100_000 or ran < steps:
                break
            steps *= 4  # geometric growth: a noisy estimate cannot blow the count up
    return Timing(timing.seconds / max(ran, 1), timing.spread, timing.samples), compile_s


def loop_step_time(run, programs, repeats: int) -> tuple[Timing, dict]:
    """Time per step of gradfit's whole training loop with the run's own settings, and what one run did.

    This is what a user of ``gradfit train`` waits for once compiled: the steps, the log points (the metrics
    file included), the scheduled evaluations and any stopping rule, timed as ``train_time_s + eval_time_s``
    (checkpoint writes are I/O, not training; the test metrics of the saved parameters, which summary.json's
    ``eval_time_s`` also covers, are left out); each sample is a whole run from the initial state in a
    temporary run directory.
    """
    with run.precision.scope():
        done: dict = {}

        def sample() -> float:
            state = jax.tree_util.tree_map(jnp.copy, run.state)  # the loop donates its state
            jax.block_until_ready(state)
            with tempfile.TemporaryDirectory() as folder:
                session = Session(run, programs, RunDir(Path(folder)), time.perf_counter(), None, state, LoopState(),
                                  EarlyStopping.from_config(run.config))
                rule = session.run_chunks(_NoSignals())
                jax.block_until_ready(session.state)
            spent = session.loop.train_time_s + session.loop.eval_time_s  # as in summary.json: no file writes
            done.update(steps=session.loop.step, evaluations=session.loop.evaluations, stop_reason=rule.reason,
                        eval_share=session.loop.eval_time_s / spent, log_every=run.plan.log_every,
                        eval_every=run.plan.eval_every)
            return spent / max(session.loop.step, 1)

        return collect(sample, repeats), done


class _NoSignals:
    signal_name = None


def training_throughput(run, options: BenchOptions, name: Optional[str] = None) -> dict:
    """Compile time; steps/s of a Python loop over the jitted step, of the fused chunk, and of gradfit's whole
    training loop with the config's own log points and evaluations. ``name``: the row's name (the config's)."""
    config = run.config
    n = options.steps
    fused, fused_compile_s = fused_step_time(run, n, options.repeats)
    with run.precision.scope():
        programs = compile_programs(run)
        tick = time.perf_counter()
        step = jax.jit(run.train_step).lower(run.state, run.train_data).compile()
        step_compile_s = time.perf_counter() - tick

        def python_loop():
            state, loss = run.state, None
            for _ in range(n):
                state, loss = step(state, run.train_data)
            return loss

        python = measure(python_loop, repeats=options.repeats)
    whole, done = loop_step_time(run, programs, options.repeats)
    batch = _batch_size(run)
    flops_per_step = batch * step_flops_per_example(run.state.params)
    result = {
        "config": name or config.name, "model": config.model.kind, "optimizer": config.optimizer.name,
        "precision": config.runtime.precision,
        "num_params": count_params(run.state.params), "batch_size": batch, "steps": n,
        "compile_time_s": programs.trace_time_s + programs.compile_time_s,  # the chunk and the evaluation
        "fused_compile_time_s": fused_compile_s, "step_compile_time_s": step_compile_s,
    }
    for key, timing, steps in (("python_loop", python, n), ("fused", fused, 1), ("loop", whole, 1)):
        rate = 1 / record(result, f"{key}_s_per_step", timing, 1 / steps)
        result[key] = {"steps_per_s": rate, "examples_per_s": rate * batch}
    result["loop"].update(done)
    result["fused_speedup"] = result["fused"]["steps_per_s"] / result["python_loop"]["steps_per_s"]
    result["flops_per_step"] = flops_per_step
    result["gflops_per_s"] = flops_per_step * result["fused"]["steps_per_s"] / 1e9
    peak = gpu_peak(run.device.device_kind) if run.device.platform == "gpu" else None
    if peak:  # bfloat16 against the bfloat16 rate; 32-bit against the FP32 and TF32 rates
        rates = {"bfloat16": peak["bfloat16"]} if run.precision.mixed else \
            {k: v for k, v in peak.items() if k != "bfloat16"} if not run.precision.x64 else {}
        result["fraction_of_peak"] = {k: result["gflops_per_s"] / (v * 1e3) for k, v in rates.items()}
    return result


def step_flops_per_example(params) -> int:
    """Matrix-product FLOPs of one example's forward and backward pass (2 per multiply-add).

    Forward 2|W| per layer; backward 2|W| for the weight gradient of every layer, plus 2|W| for the gradient
    with respect to the layer's input for every layer but the first (nothing needs d loss / d x).
    """
    weights = [layer["w"].size for layer in params["layers"]] if "layers" in params else [params["w"].size]
    return 4 * sum(weights) + 2 * sum(weights[1:])


def gradient_cost(run, options: BenchOptions, name: Optional[str] = None) -> dict:
    """Time of one loss evaluation vs one value_and_grad on the full training split."""
    row = {"config": name or run.config.name}
    with run.precision.scope():
        params, x, y = run.state.params, run.data["x"], run.data["y"]
        loss_s = record(row, "loss_s", measure(jax.jit(run.objective), params, x, y, repeats=options.repeats * 2))
        grad_s = record(row, "value_and_grad_s", measure(jax.jit(jax.value_and_grad(run.objective)), params, x, y,
                                                         repeats=options.repeats * 2))
    return {**row, "rows": int(x.shape[0]), "num_params": count_params(params), "ratio": grad_s / loss_s}


def _gradient_methods(objective: Callable, params, x, y, manual: Callable, repeats: int) -> dict:
    """Seconds for one loss and for the full gradient by each method on one problem."""
    theta, unravel = ravel_pytree(params)
    size = theta.size

    def flat_loss(t, x, y):
        return objective(unravel(t), x, y)

    def forward(t, x, y):  # jacfwd, in chunks of 256 tangents to bound memory
        return jax.lax.map(lambda i: jax.jvp(lambda u: flat_loss(u, x, y), (t,), (jnp.zeros_like(t).at[i].set(1),))[1],
                           jnp.arange(size), batch_size=min(256, size))

    def central_differences(t, x, y):
        h = jnp.finfo(t.dtype).eps ** (1 / 3) * jnp.maximum(1.0, jnp.abs(t))

        def one(i):
            return (flat_loss(t.at[i].add(h[i]), x, y) - flat_loss(t.at[i].add(-h[i]), x, y)) / (2 * h[i])

        return jax.lax.map(one, jnp.arange(size), batch_size=min(256, size))

    numpy_params = jax.tree_util.tree_map(np.asarray, params)
    x_np, y_np = np.asarray(x), np.asarray(y)
    cheap = 2 * repeats  # the loss is the denominator of every ratio: time it (and its peers) well
    programs = compile_side_by_side([flat_loss, jax.grad(flat_loss), forward,
                                     central_differences], theta, x, y)
    row = {"num_params": int(size), "reverse_flops_vs_loss": _flop_ratio(programs[1], programs[0])}
    for key, program, count in zip(("loss_s", "reverse_s", "forward_s", "finite_difference_s"), programs,
                                   (cheap, cheap, repeats, repeats)):
        record(row, key, measure(program, theta, x, y, repeats=count))
    record(row, "manual_numpy_s", measure(lambda: manual(numpy_params, x_np, y_np), repeats=cheap))
    return row


def _flop_ratio(program, reference) -> Optional[float]:
    """XLA's own flop count of ``program`` over ``reference``'s: the cost model behind the timings, free of noise.

    Only for loop-free programs (XLA counts a while-loop body once), hence reverse mode against the loss."""
    counts = [compiled.cost_analysis() for compiled in (program, reference)]
    flops = [(c[0] if isinstance(c, list) else c or {}).get("flops") for c in counts]
    return flops[0] / flops[1] if all(flops) else None


def method_scaling(options: BenchOptions, device) -> dict:
    """Full-gradient time by method, as a ratio to one loss evaluation, as the parameter count grows.

    The growth exponent is the slope of log(ratio) against log(parameters): about 0 for reverse mode (the cheap
    gradient principle), about 1 for forward mode and finite differences (one pass per parameter).
    """
    families = {}
    with jax.default_device(device):
        rows = []
        for d in options.logreg_dims:
            x, labels = make_synthetic(options.rows, d, 2, 2.0, 1.0, seed=0)
            y = np.where(labels == 1, 1.0, -1.0).astype(np.float32)
            model = logistic(d)
            params = jax.tree_util.tree_map(lambda p: p + 0.01, model.init(jax.random.PRNGKey(0)))
            timing = _gradient_methods(make_objective(model.apply, 0.0), params, jnp.asarray(x), jnp.asarray(y),
                                       lambda p, x, y: logistic_manual_grad(p, x, y, dtype=np.float32),
                                       options.repeats)
            rows.append({"size": d, **timing})
        families["logistic"] = _with_ratios(rows)
        rows = []
        for width in options.mlp_widths:
            x, labels = make_synthetic(options.rows, 64, 10, 2.0, 1.0, seed=0)
            model = mlp(64, 10, [width, width], "tanh")
            params = model.init(jax.random.PRNGKey(0))
            timing = _gradient_methods(make_objective(model.apply, 0.0), params, jnp.asarray(x),
                                       jnp.asarray(labels, jnp.int32),
                                       lambda p, x, y: mlp_manual_grad(p, x, y, "tanh", dtype=np.float32),
                                       options.repeats)
            rows.append({"size": width, **timing})
        families["mlp"] = _with_ratios(rows)
    return families


def _with_ratios(rows: list) -> dict:
    methods = ("reverse", "forward", "finite_difference", "manual_numpy")
    for row in rows:
        row["ratios"] = {m: row[f"{m}_s"] / row["loss_s"] for m in methods}
    exponents = {m: growth_exponent([(row["num_params"], row["ratios"][m]) for row in rows]) for m in methods}
    return {"rows": rows, "growth_exponent": exponents}


def peers(runs: dict, options: BenchOptions, training: list) -> dict:
    """gradfit against the minimal hand-written JAX loop and a NumPy step (always), PyTorch eager and
    scikit-learn's lbfgs (when installed). ``runs`` maps names to prepared runs; ``training`` holds each one's
    loop timing (``training_throughput``)."""
    out = {}
    loops = {row["config"]: row for row in training}  # rows are named by the keys of ``runs``
    # torch first: after scikit-learn has started its OpenMP threads, torch's own pool fights them for the
    # cores (seen here: 40 s of contention on 2 cores), which would measure the clash, not torch
    network = next((name for name, r in runs.items() if r.config.model.kind == "mlp"), None)
    if network is not None:
        out["torch_eager_mlp"] = _torch_peer(runs[network], options, loops.get(network))
    for name, run in runs.items():
        out[f"minimal_jax_loop_{name}"] = _minimal_loop_peer(run, options, loops[name])
    for name, run in runs.items():
        out[f"numpy_step_{name}"] = _numpy_step_peer(run.config, options)
    logreg = next((r for r in runs.values() if r.config.model.kind == "logistic"), None)
    if logreg is not None:
        out["sklearn_lbfgs"] = _sklearn_peer(logreg.config, options)
    return out


def _unavailable(peer: str, reason: str) -> dict:
    return {"peer": peer, "available": False, "reason": reason}


def _first_batch(run, dtype):
    batch = _batch_size(run)
    return np.asarray(run.dataset.train.x[:batch], dtype), np.asarray(run.dataset.train.y[:batch])


def _against_loop(row: dict, loop_row: Optional[dict], peer_key: str) -> dict:
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
                rows = shuffle.permuted(jax.random.fold_in(key, epoch), n,
                                        position * plan.batch_size + jnp.arange(plan.batch_size))
                xb, yb = x[rows], y[rows]
            loss_fn = lambda p: objective(p, xb, yb)  # noqa: E731
            if lbfgs:
                loss, grads = optax.value_and_grad_from_state(loss_fn)(params, state=opt_state)
            else:
                loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params, value=loss, grad=grads,
                                                  value_fn=loss_fn)
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
    row = {"peer": name, "available": True, "config": config.name, "batch_size": _batch_size(run), "steps": steps,
           "note": "framework overhead: the same steps in a bare jit + lax.scan (same model, optimizer, batch, "
                   "shuffle, data on the device), without log points or evaluations"}
    record(row, "peer_s_per_step", timing, 1 / steps)
    return _against_loop(row, loop_row, "peer_s_per_step")


def _numpy_step_peer(config: GradfitConfig, options: BenchOptions) -> dict:
    """Time per plain gradient-descent step: NumPy with the hand-derived gradient vs gradfit's fused sgd step,
    same batch size and precision."""
    sgd = config.model_copy(update={"optimizer": config.optimizer.model_validate(
        {"name": "sgd", "learning_rate": DESCENT_RATE})})
    run = prepare(sgd)
    row = {"peer": "NumPy, hand-derived gradient", "config": config.name, "batch_size": _batch_size(run),
           "precision": config.runtime.precision}
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
    from gradfit.config.load import GradfitConfig as Schema
    from gradfit.data.dataset import load_dataset

    lam = config.model.l2 or 1e-3
    settings = config.model_dump()
    settings["model"]["l2"] = lam
    settings["optimizer"] = {"name": "lbfgs"}
    settings["train"] = {"steps": 200}  # full batch
    settings["runtime"]["precision"] = "float64"
    config = Schema.model_validate(settings)
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
        steps = next((n for n in range(1, 201) if gradfit_objective(n) <= goal), None)
        iterations = next((n for n in range(1, 1001) if sklearn_objective(sklearn_fit(n)) <= goal), None)
        if steps is None or iterations is None:
            return _unavailable(name, "one of the two did not reach the common objective; nothing to compare")
        row = {"peer": name, "available": True, "l2": lam, "objective": target,
               "gradfit_steps": steps, "peer_iterations": iterations,
               "note": f"time to objective {target:.10g} (1e-9 relative): gradfit {steps} L-BFGS steps, "
                       f"scikit-learn {iterations} iterations; float64; gradfit compile time excluded"}
        gradfit_s = record(row, "gradfit_s", measure(lambda: fused(run.state, run.train_data, jnp.int32(steps)),
                                                     repeats=options.repeats))
    sklearn_s = record(row, "peer_s", measure(lambda: sklearn_fit(iterations), repeats=options.repeats))
    return {**row, "time_ratio": gradfit_s / sklearn_s}


TORCH_OPTIMIZERS = {  # gradfit optimizer -> (torch class name, keyword arguments from the config)
    "sgd": ("SGD", lambda c: {}),
    "momentum": ("SGD", lambda c: {"momentum": c.momentum}),
    "nesterov": ("SGD", lambda c: {"momentum": c.momentum, "nesterov": True}),
    "adam": ("Adam", lambda c: {"betas": (c.b1, c.b2), "eps": c.eps}),
    "adamw": ("AdamW", lambda c: {"betas": (c.b1, c.b2), "eps": c.eps, "weight_decay": c.weight_decay}),
    "rmsprop": ("RMSprop", lambda c: {"alpha": c.decay, "eps": c.eps}),
    "adagrad": ("Adagrad", lambda c: {"eps": c.eps}),
}


def _torch_peer(run, options: BenchOptions, loop_row: Optional[dict] = None) -> dict:
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
    sizes = [run.dataset.n_features, *config.model.hidden, 1 if binary else run.dataset.n_classes]
    activation = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "gelu": lambda: torch.nn.GELU("tanh"),
                  "sigmoid": torch.nn.Sigmoid, "silu": torch.nn.SiLU}[config.model.activation]
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [torch.nn.Linear(fan_in, fan_out)] + ([activation()] if i < len(sizes) - 2 else [])
    net = torch.nn.Sequential(*layers).to(where, dtype)
    cls, kwargs = TORCH_OPTIMIZERS[config.optimizer.name]
    optimizer = getattr(torch.optim, cls)(net.parameters(), lr=config.optimizer.learning_rate,
                                          **kwargs(config.optimizer))
    x_np, y_np = _first_batch(run, np.float64 if dtype == torch.float64 else np.float32)
    x = torch.tensor(x_np, device=where, dtype=dtype)
    if binary:  # one logit and the logistic loss on labels mapped from {-1, +1} to {0, 1}, as gradfit does
        y = torch.tensor((y_np + 1) / 2, device=where, dtype=dtype)
        loss_fn = lambda out: torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], y)  # noqa: E731
    else:
        y = torch.tensor(y_np, device=where, dtype=torch.int64)
        loss_fn = lambda out: torch.nn.functional.cross_entropy(out, y)  # noqa: E731

    def torch_step():
        optimizer.zero_grad()
        # bfloat16 runs: matrix products in bfloat16 under autocast, float32 parameters, as gradfit does
        with torch.autocast(where, torch.bfloat16, enabled=chosen.mixed):
            loss = loss_fn(net(x))
        loss.backward()
        optimizer.step()
        if where == "cuda":  # like block_until_ready on the JAX side
            torch.cuda.synchronize()

    row = {"peer": name, "available": True, "torch": torch.__version__, "device": where,
           "batch_size": _batch_size(run), "optimizer": config.optimizer.name,
           "note": f"torch {torch.__version__} on {where} ({torch.get_num_threads()} CPU threads), "
                   f"{config.optimizer.name}, batch {_batch_size(run)}"}
    torch_s = record(row, "peer_s_per_step", measure(torch_step, repeats=options.repeats * 2))
    if loop_row is not None:
        return _against_loop(row, loop_row, "peer_s_per_step")
    gradfit_s = record(row, "gradfit_s_per_step", fused_step_time(run, options.steps, options.repeats)[0])
    return {**row, "time_ratio": gradfit_s / torch_s}


def run_bench(configs: Optional[dict] = None, options: BenchOptions = FULL, device: str = "auto",
              progress: Callable[[str], None] = lambda message: None) -> dict:
    """The whole benchmark; ``configs`` maps a name to a GradfitConfig (default: the logreg and mlp suite).

    Every section but the scaling table runs on one device, as its peers do.
    """
    if configs is None:
        configs = {name: resolve_config(None, overrides).config for name, overrides in EXAMPLES.items()}
    chosen = select_device(device)
    configs = {name: _on(c, chosen.platform, 1) for name, c in configs.items()}
    result = {"environment": environment(chosen, [c.runtime.precision for c in configs.values()]),
              "options": dataclasses.asdict(options)}
    runs = {name: prepare(config) for name, config in configs.items()}
    progress("training throughput")
    result["training"] = [training_throughput(run, options, name) for name, run in runs.items()]
    progress("gradient cost")
    result["gradient_cost"] = [gradient_cost(run, options, name) for name, run in runs.items()]
    progress("differentiation methods")
    result["methods"] = {**method_scaling(options, chosen), "helmholtz": helmholtz_study(options, chosen, progress)}
    if options.peers:
        progress("peers")
        result["peers"] = peers(runs, options, result["training"])
    progress("scaling over devices")
    minibatch = [name for name, run in runs.items() if not run.plan.full_batch] or list(runs)
    result["scaling"] = scaling(configs[minibatch[-1]], options, minibatch[-1])
    return result


def helmholtz_study(options: BenchOptions, device, progress: Callable[[str], None] = lambda message: None) -> dict:
    """The Helmholtz free-energy timing study of Baydin et al. 2018 (``gradfit.bench.helmholtz.study``) on ``device``."""
    with jax.default_device(device):
        return helmholtz.study(sizes=options.helmholtz_sizes, repeats=options.repeats,
                               symbolic_max_n=options.symbolic_max_n,
                               progress=lambda message: progress(f"Helmholtz study: {message}"))


def run_study(name: str, options: BenchOptions = FULL, device: str = "auto",
              progress: Callable[[str], None] = lambda message: None) -> dict:
    """One study of ``STUDIES`` alone, shaped as ``run_bench``'s result with only that section."""
    chosen = select_device(device)
    return {"environment": environment(chosen, ["float64"]), "options": dataclasses.asdict(options),
            "methods": {name: helmholtz_study(options, chosen, progress)}}


def _on(config: GradfitConfig, platform: str, devices) -> GradfitConfig:
    runtime = config.runtime.model_copy(update={"device": platform, "devices": devices})
    return config.model_copy(update={"runtime": runtime})


FORCED_CPU_DEVICES = 4  # what ``split_cpu`` makes of a CPU for the scaling table


def split_cpu(devices: int = FORCED_CPU_DEVICES) -> None:
    """Before JAX starts: present the CPU as ``devices`` devices (unless XLA_FLAGS already says how many), so
    the scaling table has 1, 2 and 4 to compare. They share the CPU's cores; one-device work is unaffected."""
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        with contextlib.suppress(RuntimeError):  # JAX already started (a test, a notebook): use what it has
            jax.config.update("jax_num_cpu_devices", devices)


def scaling(config: GradfitConfig, options: BenchOptions, name: str) -> dict:
    """Steps/s of the config's fused training on 1, 2, 4, ... devices of its platform (as many as there are).

    The global batch stays the config's and is split across the devices (strong scaling); ``efficiency`` is
    the speed-up over one device divided by the device count. Forced CPU devices share the same cores, so on a
    CPU the table measures what sharding costs, not a speed-up.
    """
    platform = config.runtime.device
    available = len(jax.local_devices(backend=platform))
    counts = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= available]
    rows, batch = [], None
    for n in counts:
        if config.train.batch_size is not None and config.train.batch_size % n:
            break  # each device must take an equal share of every minibatch
        run = prepare(_on(config, platform, n))
        batch = _batch_size(run)
        timing, compile_s = fused_step_time(run, options.steps, options.repeats)
        row = {"devices": n, "compile_time_s": compile_s}
        rate = 1 / record(row, "s_per_step", timing)
        examples = rate * batch
        row.update(steps_per_s=rate, examples_per_s=examples, examples_per_s_per_device=examples / n)
        rows.append(row)
    for row in rows:
        row["speedup"] = row["steps_per_s"] / rows[0]["steps_per_s"]
        row["efficiency"] = row["speedup"] / row["devices"]
    forced = platform == "cpu" and available > 1
    note = (f"{available} forced CPU devices sharing {os.cpu_count()} cores of one machine: this measures the "
            "overhead of sharding, not a speed-up" if forced else
            "one device only: nothing to scale over" if available == 1 else
            f"{available} {platform} devices")
    return {"config": name, "platform": platform, "batch_size": batch, "available_devices": available,
            "forced_cpu_devices": forced, "note": note, "rows": rows}

