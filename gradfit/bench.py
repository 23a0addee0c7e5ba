"""Benchmark engine: measured speed of training and of differentiation, against simple alternatives.

Every number is a median over repeats after a warm-up call, timed around ``block_until_ready``; compile time is
measured apart. Functions return JSON-ready dicts and print nothing; the CLI renders them.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from gradfit.config import GradfitConfig, resolve_config
from gradfit.data import make_synthetic
from gradfit.device import describe_device, select_device
from gradfit.losses import logistic_manual_grad, make_objective, mlp_manual_grad
from gradfit.models import count_params, logistic, mlp

# Dense fp32 peak (TFLOP/s) of GPUs we know: the CUDA-core rate, and the TF32 tensor-core rate (dense) that
# float32 matmuls use under JAX's default GPU matmul precision.
GPU_PEAKS_TFLOPS = {
    "H200": {"float32": 67.0, "tf32": 494.7},
    "H100": {"float32": 67.0, "tf32": 494.7},  # SXM; the PCIe card is lower (51 / 378)
    "A100": {"float32": 19.5, "tf32": 156.0},
}


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    """Sizes and repeats of one benchmark run (``QUICK`` and ``FULL`` are the presets)."""

    steps: int = 200  # optimizer steps per timed training run
    repeats: int = 5
    logreg_dims: tuple = (8, 32, 128, 512, 2048)
    mlp_widths: tuple = (8, 16, 32, 64)
    rows: int = 1000  # rows of the synthetic data in the method-scaling section
    peers: bool = True


FULL = BenchOptions()
QUICK = BenchOptions(steps=50, repeats=3, logreg_dims=(8, 64, 512), mlp_widths=(8, 32), rows=500)

DEFAULT_SUITE = {
    # the shipped configs/logreg.yaml and configs/mlp.yaml, so the default suite needs no files
    "logreg": ["name=logreg", "data.source=breast_cancer", "model.kind=logistic", "model.l2=0.001",
               "optimizer.name=lbfgs", "train.steps=100"],
    "mlp": ["name=mlp", "data.source=digits", "model.kind=mlp", "model.hidden=[128, 64]", "model.l2=0.0001",
            "optimizer.name=adam", "optimizer.learning_rate=0.003", "train.epochs=40", "train.batch_size=64"],
}


def median_time(fn: Callable, *args, repeats: int = 5, min_sample_s: float = 0.002) -> float:
    """Median wall time of one ``fn(*args)`` call (each waited for on the device) after a warm-up call.

    Calls shorter than ``min_sample_s`` are repeated within each sample and averaged, so microsecond timings
    are not dominated by the timer and the scheduler.
    """
    tick = time.perf_counter()
    jax.block_until_ready(fn(*args))  # warm-up (and compilation, for a jitted fn)
    tick = time.perf_counter()
    jax.block_until_ready(fn(*args))
    once = time.perf_counter() - tick
    inner = min(1000, max(1, int(min_sample_s / max(once, 1e-9))))
    samples = []
    for _ in range(repeats):
        tick = time.perf_counter()
        for _ in range(inner):
            jax.block_until_ready(fn(*args))
        samples.append((time.perf_counter() - tick) / inner)
    return statistics.median(samples)


def environment(device) -> dict:
    import jaxlib

    return {
        "device": describe_device(device),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "cpu_cores": os.cpu_count(),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "optax": optax.__version__,
        "dtype": "float32",
        "matmul_precision": jax.config.jax_default_matmul_precision or "default",
    }


def gpu_peak(device_kind: str) -> Optional[dict]:
    """Known peak rates for a GPU name like 'NVIDIA H100 80GB HBM3'; None when the card is not in the table."""
    for name, peaks in GPU_PEAKS_TFLOPS.items():
        if name in device_kind.upper():
            return peaks
    return None


def fused_seconds_per_step(run, steps: int, repeats: int) -> tuple[float, float]:
    """(seconds per step inside the compiled fused loop, compile seconds) for a prepared run.

    The fused program also evaluates one log point's metrics; that is timed alone (0 steps) and taken out.
    """
    tick = time.perf_counter()
    fused = jax.jit(run.chunk).lower(run.state, run.data, jnp.int32(steps)).compile()
    compile_s = time.perf_counter() - tick
    total = median_time(lambda: fused(run.state, run.data, jnp.int32(steps)), repeats=repeats)
    metrics_only = median_time(lambda: fused(run.state, run.data, jnp.int32(0)), repeats=repeats)
    return max(total - metrics_only, 1e-12) / steps, compile_s


def training_throughput(config: GradfitConfig, options: BenchOptions) -> dict:
    """Compile time, then steps/s and examples/s of a Python loop over the jitted step and of the fused loop."""
    from gradfit.train import prepare

    with jax.enable_x64(config.runtime.precision == "float64"):
        run = prepare(config)
        n = options.steps
        fused_s, compile_s = fused_seconds_per_step(run, n, options.repeats)
        step = jax.jit(run.train_step)

        def python_loop():
            state, loss = run.state, None
            for _ in range(n):
                state, loss = step(state, run.data)
            return loss

        tick = time.perf_counter()
        step.lower(run.state, run.data).compile()
        step_compile_s = time.perf_counter() - tick
        loop_s = median_time(python_loop, repeats=options.repeats)
    batch = run.plan.batch_size or len(run.dataset.train)
    flops_per_step = 3 * batch * _forward_flops_per_example(run.state.params)  # forward + backward ~ 3x forward
    fused_rate = 1 / fused_s
    loop_rate = n / loop_s
    result = {
        "config": config.name, "model": config.model.kind, "optimizer": config.optimizer.name,
        "num_params": count_params(run.state.params), "batch_size": batch, "steps": n,
        "compile_time_s": compile_s, "step_compile_time_s": step_compile_s,
        "python_loop": {"steps_per_s": loop_rate, "examples_per_s": loop_rate * batch},
        "fused": {"steps_per_s": fused_rate, "examples_per_s": fused_rate * batch},
        "fused_speedup": fused_rate / loop_rate,
        "flops_per_step": flops_per_step,
        "gflops_per_s": flops_per_step * fused_rate / 1e9,
    }
    peak = gpu_peak(run.device.device_kind) if run.device.platform == "gpu" else None
    if peak:
        result["fraction_of_peak"] = {k: result["gflops_per_s"] / (v * 1e3) for k, v in peak.items()}
    return result


def _forward_flops_per_example(params) -> int:
    """2 FLOPs per weight entry (multiply + add) in the matrix products of one example's forward pass."""
    if "layers" in params:
        return sum(2 * layer["w"].size for layer in params["layers"])
    return 2 * params["w"].size


def gradient_cost(config: GradfitConfig, options: BenchOptions) -> dict:
    """Time of one loss evaluation vs one value_and_grad on the full training split."""
    from gradfit.train import prepare

    with jax.enable_x64(config.runtime.precision == "float64"):
        run = prepare(config)
        params, x, y = run.state.params, run.data["x"], run.data["y"]
        loss_s = median_time(jax.jit(run.objective), params, x, y, repeats=options.repeats * 4)
        grad_s = median_time(jax.jit(jax.value_and_grad(run.objective)), params, x, y, repeats=options.repeats * 4)
    return {"config": config.name, "rows": int(x.shape[0]), "num_params": count_params(params),
            "loss_s": loss_s, "value_and_grad_s": grad_s, "ratio": grad_s / loss_s}


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
    cheap = max(10, 5 * repeats)  # the loss is the denominator of every ratio: time it (and its peers) well
    return {
        "num_params": int(size),
        "loss_s": median_time(jax.jit(flat_loss), theta, x, y, repeats=cheap),
        "reverse_s": median_time(jax.jit(jax.grad(flat_loss)), theta, x, y, repeats=cheap),
        "forward_s": median_time(jax.jit(forward), theta, x, y, repeats=repeats),
        "finite_difference_s": median_time(jax.jit(central_differences), theta, x, y, repeats=repeats),
        "manual_numpy_s": median_time(lambda: manual(numpy_params, x_np, y_np), repeats=cheap),
    }


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
                                       lambda p, x, y: logistic_manual_grad(p, x, y), options.repeats)
            rows.append({"size": d, **timing})
        families["logistic"] = _with_ratios(rows)
        rows = []
        for width in options.mlp_widths:
            x, labels = make_synthetic(options.rows, 64, 10, 2.0, 1.0, seed=0)
            model = mlp(64, 10, [width, width], "tanh")
            params = model.init(jax.random.PRNGKey(0))
            timing = _gradient_methods(make_objective(model.apply, 0.0), params, jnp.asarray(x),
                                       jnp.asarray(labels, jnp.int32),
                                       lambda p, x, y: mlp_manual_grad(p, x, y, "tanh"), options.repeats)
            rows.append({"size": width, **timing})
        families["mlp"] = _with_ratios(rows)
    return families


def _with_ratios(rows: list) -> dict:
    methods = ("reverse", "forward", "finite_difference", "manual_numpy")
    for row in rows:
        row["ratios"] = {m: row[f"{m}_s"] / row["loss_s"] for m in methods}
    sizes = np.log([row["num_params"] for row in rows])
    exponents = {}
    for m in methods:
        ratios = np.log([row["ratios"][m] for row in rows])
        exponents[m] = float(np.polyfit(sizes, ratios, 1)[0]) if len(rows) > 1 else None
    return {"rows": rows, "growth_exponent": exponents}


def peers(configs: dict, options: BenchOptions) -> dict:
    """gradfit against a NumPy step (always), scikit-learn's lbfgs and a PyTorch eager step (when installed)."""
    out = {}
    for name, config in configs.items():
        out[f"numpy_step_{name}"] = _numpy_step_peer(config, options)
    logreg = next((c for c in configs.values() if c.model.kind == "logistic"), None)
    if logreg is not None:
        out["sklearn_lbfgs"] = _sklearn_peer(logreg, options)
    network = next((c for c in configs.values() if c.model.kind == "mlp"), None)
    if network is not None:
        out["torch_eager_mlp"] = _torch_peer(network, options)
    return out


def _numpy_step_peer(config: GradfitConfig, options: BenchOptions) -> dict:
    """Time per plain gradient-descent step: NumPy with the hand-derived gradient vs gradfit's fused sgd step."""
    from gradfit.train import prepare

    sgd = config.model_copy(update={"optimizer": config.optimizer.model_validate({"name": "sgd",
                                                                                   "learning_rate": 0.01})})
    run = prepare(sgd)
    gradfit_s, _ = fused_seconds_per_step(run, options.steps, options.repeats)
    params = jax.tree_util.tree_map(lambda p: np.asarray(p, np.float32), run.state.params)
    batch = run.plan.batch_size or len(run.dataset.train)
    x = np.asarray(run.dataset.train.x[:batch], np.float32)
    y = np.asarray(run.dataset.train.y[:batch])
    l2 = config.model.l2
    if config.model.kind == "logistic":
        grad = lambda p: logistic_manual_grad(p, x, y, l2)  # noqa: E731
    else:
        grad = lambda p: mlp_manual_grad(p, x, y, config.model.activation, l2)  # noqa: E731

    def numpy_step():
        g = grad(params)
        return jax.tree_util.tree_map(lambda p, gi: p - 0.01 * gi, params, g)

    numpy_s = median_time(numpy_step, repeats=options.repeats * 4)
    return {"peer": "NumPy, hand-derived gradient", "config": config.name, "batch_size": batch,
            "gradfit_s_per_step": gradfit_s, "peer_s_per_step": numpy_s, "time_ratio": gradfit_s / numpy_s}


def _sklearn_peer(config: GradfitConfig, options: BenchOptions) -> dict:
    """Time for scikit-learn's lbfgs to reach the objective gradfit's lbfgs reaches (float64, same data)."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        return {"peer": "scikit-learn LogisticRegression(lbfgs)", "available": False,
                "reason": "scikit-learn is not installed (pip install scikit-learn)"}
    from gradfit.data import load_dataset
    from gradfit.train import prepare

    lam = config.model.l2 or 1e-3
    overrides = {"model": config.model.model_copy(update={"l2": lam}),
                 "optimizer": config.optimizer.model_validate({"name": "lbfgs"}),
                 "runtime": config.runtime.model_copy(update={"precision": "float64"})}
    config = config.model_copy(update=overrides)
    data = load_dataset(config)
    x, y = data.train.x, data.train.y
    c = 1.0 / (lam * len(y))

    def sklearn_fit():
        return LogisticRegression(C=c, solver="lbfgs", tol=1e-10, max_iter=10_000).fit(x, y)

    sklearn_s = median_time(sklearn_fit, repeats=options.repeats)
    clf = sklearn_fit()
    w, b = clf.coef_[0], clf.intercept_[0]
    target = float(np.mean(np.logaddexp(0, -y * (x @ w + b))) + lam / 2 * w @ w)
    with jax.enable_x64(True):
        run = prepare(config)
        fused = jax.jit(run.chunk).lower(run.state, run.data, jnp.int32(0)).compile()
        # the fewest L-BFGS steps that reach scikit-learn's objective (to 1e-9 relative), then time that many
        for steps in range(5, 201, 5):
            reached = float(fused(run.state, run.data, jnp.int32(steps))[1]["objective"])
            if reached <= target * (1 + 1e-9):
                break
        gradfit_s = median_time(lambda: fused(run.state, run.data, jnp.int32(steps)), repeats=options.repeats)
    return {"peer": "scikit-learn LogisticRegression(lbfgs)", "available": True, "l2": lam,
            "gradfit_objective": reached, "peer_objective": target, "gradfit_steps": steps,
            "relative_gap": abs(reached - target) / abs(target),
            "gradfit_s": gradfit_s, "peer_s": sklearn_s, "time_ratio": gradfit_s / sklearn_s,
            "note": f"time to the same objective: gradfit {steps} L-BFGS steps (compiled, compile time excluded), "
                    "scikit-learn to tol 1e-10, both float64"}


def _torch_peer(config: GradfitConfig, options: BenchOptions) -> dict:
    """A PyTorch eager training step of the same MLP, optimizer and batch size, vs gradfit's fused step."""
    try:
        import torch
    except ImportError:
        return {"peer": "PyTorch eager MLP step", "available": False,
                "reason": "torch is not installed (optional: pip install torch)"}
    from gradfit.train import prepare

    run = prepare(config)
    gradfit_s, _ = fused_seconds_per_step(run, options.steps, options.repeats)
    batch = run.plan.batch_size or len(run.dataset.train)
    sizes = [run.dataset.n_features, *config.model.hidden, run.dataset.n_classes]
    activation = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "gelu": lambda: torch.nn.GELU("tanh"),
                  "sigmoid": torch.nn.Sigmoid, "silu": torch.nn.SiLU}[config.model.activation]
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    # the same kind of device as gradfit's run, when this torch build can use it
    where = "cuda" if run.device.platform == "gpu" and torch.cuda.is_available() else "cpu"
    net = torch.nn.Sequential(*layers).to(where)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.optimizer.learning_rate)
    x = torch.tensor(np.asarray(run.dataset.train.x[:batch], np.float32), device=where)
    y = torch.tensor(np.asarray(run.dataset.train.y[:batch], np.int64), device=where)

    def torch_step():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        if where == "cuda":
            torch.cuda.synchronize()

    torch_s = median_time(torch_step, repeats=options.repeats * 4)
    return {"peer": "PyTorch eager MLP step", "available": True, "torch": torch.__version__,
            "device": where,
            "note": f"torch {torch.__version__} on {where} ({torch.get_num_threads()} CPU threads), Adam, batch {batch}",
            "threads": torch.get_num_threads(), "batch_size": batch,
            "gradfit_s_per_step": gradfit_s, "peer_s_per_step": torch_s, "time_ratio": gradfit_s / torch_s}


def run_bench(configs: Optional[dict] = None, options: BenchOptions = FULL, device: str = "auto",
              progress: Callable[[str], None] = lambda message: None) -> dict:
    """The whole benchmark; ``configs`` maps a name to a GradfitConfig (default: the logreg and mlp suite)."""
    if configs is None:
        configs = {name: resolve_config(None, overrides).config for name, overrides in DEFAULT_SUITE.items()}
    chosen = select_device(device)
    configs = {name: c.model_copy(update={"runtime": c.runtime.model_copy(update={"device": chosen.platform})})
               for name, c in configs.items()}
    result = {"environment": environment(chosen), "options": dataclasses.asdict(options)}
    progress("training throughput")
    result["training"] = [training_throughput(c, options) for c in configs.values()]
    progress("gradient cost")
    result["gradient_cost"] = [gradient_cost(c, options) for c in configs.values()]
    progress("differentiation methods")
    result["methods"] = method_scaling(options, chosen)
    if options.peers:
        progress("peers")
        result["peers"] = peers(configs, options)
    return result

