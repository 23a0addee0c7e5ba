"""Training speed: compile time, and steps/s of a Python loop over the jitted step, of the fused chunk and of
gradfit's whole training loop; the matrix-product FLOP rate against the GPU's peak.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from gradfit.bench.options import BenchOptions
from gradfit.bench.timing import Timing, collect, measure, record
from gradfit.core.models import count_params
from gradfit.runs.rundir import RunDir
from gradfit.training.payload import LoopState
from gradfit.training.prepare import compile_programs
from gradfit.training.session import Session
from gradfit.training.stopping import EarlyStopping, StopRequests

# Dense fp32 peak (TFLOP/s) of GPUs we know: the CUDA-core rate, and the TF32 tensor-core rate (dense) that
# float32 matmuls use under JAX's default GPU matmul precision.
GPU_PEAKS_TFLOPS = {  # checked in this order: the first name found in the device kind wins; dense rates
    "H200": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4},
    "H100 PCIE": {"float32": 51.0, "tf32": 378.0, "bfloat16": 756.0},
    "H100": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4},  # SXM
    "A100": {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0},
}


def gpu_peak(device_kind: str) -> dict | None:
    """Known peak rates for a GPU name like 'NVIDIA H100 80GB HBM3'; None when the card is not in the table."""
    for name, peaks in GPU_PEAKS_TFLOPS.items():
        if name in device_kind.upper():
            return peaks
    return None


def batch_size(run) -> int:
    """The run's minibatch size; its training split's size for a full-batch run."""
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
            call = lambda n=steps: fused(run.state, run.train_data, jnp.int32(n))  # noqa: E731
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
                session = Session(
                    run,
                    programs,
                    RunDir(Path(folder)),
                    time.perf_counter(),
                    None,
                    state,
                    LoopState(),
                    EarlyStopping.from_config(run.config),
                )
                rule = session.run_chunks(StopRequests())  # never entered: no signal handlers, no stop
                jax.block_until_ready(session.state)
            spent = session.loop.train_time_s + session.loop.eval_time_s  # as in summary.json: no file writes
            done.update(
                steps=session.loop.step,
                evaluations=session.loop.evaluations,
                stop_reason=rule.reason,
                eval_share=session.loop.eval_time_s / spent,
                log_every=run.plan.log_every,
                eval_every=run.plan.eval_every,
            )
            return spent / max(session.loop.step, 1)

        return collect(sample, repeats), done


def training_throughput(run, options: BenchOptions, name: str | None = None) -> dict:
    """Compile time and steps/s of gradfit's whole training loop with the config's own log points and
    evaluations; with the section "throughput" (``options.sections``), also steps/s of a Python loop over the
    jitted step and of the fused chunk, and the FLOP rate. ``name``: the row's name (the config's)."""
    config = run.config
    with run.precision.scope():
        programs = compile_programs(run)
    whole, done = loop_step_time(run, programs, options.repeats)
    batch = batch_size(run)
    result = {
        "config": name or config.name,
        "model": config.model.kind,
        "optimizer": config.optimizer.name,
        "precision": config.runtime.precision,
        "num_params": count_params(run.state.params),
        "batch_size": batch,
        "compile_time_s": programs.trace_time_s + programs.compile_time_s,  # the chunk and the evaluation
    }
    rate = 1 / record(result, "loop_s_per_step", whole)
    result["loop"] = {"steps_per_s": rate, "examples_per_s": rate * batch, **done}
    if "throughput" in options.sections:
        result.update(_step_throughput(run, options, result))
    return result


def _step_throughput(run, options: BenchOptions, result: dict) -> dict:
    """The Python loop over the jitted step and the fused chunk: compile times, steps/s, the fused chunk's
    speed-up and FLOP rate (and its fraction of a known GPU's peak). Timings are recorded in ``result``."""
    n, batch = options.steps, result["batch_size"]
    fused, fused_compile_s = fused_step_time(run, n, options.repeats)
    with run.precision.scope():
        tick = time.perf_counter()
        step = jax.jit(run.train_step).lower(run.state, run.train_data).compile()
        step_compile_s = time.perf_counter() - tick

        def python_loop():
            state, loss = run.state, None
            for _ in range(n):
                state, loss = step(state, run.train_data)
            return loss

        python = measure(python_loop, repeats=options.repeats)
    out: dict = {"steps": n, "fused_compile_time_s": fused_compile_s, "step_compile_time_s": step_compile_s}
    for key, timing, steps in (("python_loop", python, n), ("fused", fused, 1)):
        rate = 1 / record(result, f"{key}_s_per_step", timing, 1 / steps)
        out[key] = {"steps_per_s": rate, "examples_per_s": rate * batch}
    out["fused_speedup"] = out["fused"]["steps_per_s"] / out["python_loop"]["steps_per_s"]
    out["flops_per_step"] = flops_per_step = batch * step_flops_per_example(run.state.params)
    out["gflops_per_s"] = flops_per_step * out["fused"]["steps_per_s"] / 1e9
    peak = gpu_peak(run.device.device_kind) if run.device.platform == "gpu" else None
    if peak:  # bfloat16 against the bfloat16 rate; 32-bit against the FP32 and TF32 rates
        rates = (
            {"bfloat16": peak["bfloat16"]}
            if run.precision.mixed
            else {k: v for k, v in peak.items() if k != "bfloat16"}
            if not run.precision.x64
            else {}
        )
        out["fraction_of_peak"] = {k: out["gflops_per_s"] / (v * 1e3) for k, v in rates.items()}
    return out


def step_flops_per_example(params) -> int:
    """Matrix-product FLOPs of one example's forward and backward pass (2 per multiply-add).

    Forward 2|W| per layer; backward 2|W| for the weight gradient of every layer, plus 2|W| for the gradient
    with respect to the layer's input for every layer but the first (nothing needs d loss / d x).
    """
    weights = [layer["w"].size for layer in params["layers"]] if "layers" in params else [params["w"].size]
    return 4 * sum(weights) + 2 * sum(weights[1:])
