"""Benchmark engine: measured speed of training and of differentiation, against simple alternatives.

Every time is a median of samples after a warm-up call, each waited for with ``block_until_ready``; samples are
taken until the newest ones agree within ``SPREAD_LIMIT`` (or a budget is spent), and each row records the
spread of what it reports (``spread``) and which figures stayed unstable (``unstable``): those are flagged when
shown, never printed as fact. Compile time is measured apart. Functions return JSON-ready dicts and print
nothing; the CLI renders them.

This module runs the sections in order with the presets ``FULL`` and ``QUICK``: training speed
(``training_speed``), the cost of differentiation (``differentiation``) and the Helmholtz study (``helmholtz``),
the peers (``peers``) and the scaling over devices (``scaling``). ``QUICK`` measures only what a side-by-side
ratio needs: gradfit's whole training loop per config against the minimal JAX loop, PyTorch eager and
scikit-learn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import optax

from gradfit.bench import helmholtz
from gradfit.bench.differentiation import gradient_cost, method_scaling
from gradfit.bench.options import BenchOptions
from gradfit.bench.peers import peers
from gradfit.bench.scaling import on_devices, scaling_table
from gradfit.bench.training_speed import training_throughput
from gradfit.config.load import EXAMPLES, resolve_config
from gradfit.runtime.mesh import describe_device, select_device
from gradfit.training.prepare import prepare

FULL = BenchOptions()
# the side-by-side ratios alone: no Python loop or fused chunk (two compiles per config), no per-size method
# tables, no Helmholtz study, no NumPy peer (a compile per config), no scaling table (three); the sizes below
# serve --study helmholtz --quick and the sections a caller adds back
QUICK = BenchOptions(
    steps=50,
    repeats=3,
    logreg_dims=(16, 512),
    mlp_widths=(8, 32),
    rows=500,
    helmholtz_sizes=helmholtz.QUICK["sizes"],
    symbolic_max_n=helmholtz.QUICK["symbolic_max_n"],
    sections=(),
)
STUDIES = ("helmholtz",)  # what ``gradfit bench --study`` can run alone


def environment(device, precisions) -> dict:
    """What the numbers were measured on: the device, the CPU cores, the library versions and the precisions."""
    import jaxlib

    return {
        "device": describe_device(device),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "cpu_cores": os.cpu_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "optax": optax.__version__,
        "dtype": ", ".join(sorted(set(precisions))),
        # jax's Config stub lacks the attributes it makes for its options
        "matmul_precision": jax.config.jax_default_matmul_precision or "default",  # type: ignore[attr-defined]
        "load_average": load_average(),
    }


def load_average() -> list | None:
    """The machine's 1-, 5- and 15-minute load averages (other work competing for the cores); None where the
    system does not report them."""
    return [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None


def run_bench(
    configs: dict | None = None,
    options: BenchOptions = FULL,
    device: str = "auto",
    progress: Callable[[str], None] = lambda message: None,
) -> dict:
    """The benchmark; ``configs`` maps a name to a GradfitConfig (default: the logreg and mlp suite).

    Always gradfit's whole training loop per config (``training``) and, with ``options.peers``, its peers; the
    other sections as ``options.sections`` lists them. Every section but the scaling table runs on one device,
    as its peers do. ``wall_s``: the seconds it took, set-up and compilation included.
    """
    started = time.perf_counter()
    if configs is None:
        configs = {name: resolve_config(None, overrides).config for name, overrides in EXAMPLES.items()}
    chosen = select_device(device)
    configs = {name: on_devices(c, chosen.platform, 1) for name, c in configs.items()}
    sections = options.sections
    result: dict[str, Any] = {
        "environment": environment(chosen, [c.runtime.precision for c in configs.values()]),
        "options": dataclasses.asdict(options),
    }
    runs = {name: prepare(config) for name, config in configs.items()}
    progress("training throughput")
    result["training"] = [training_throughput(run, options, name) for name, run in runs.items()]
    if "gradient_cost" in sections:
        progress("gradient cost")
        result["gradient_cost"] = [gradient_cost(run, options, name) for name, run in runs.items()]
    methods = {}
    if "methods" in sections:
        progress("differentiation methods")
        methods.update(method_scaling(options, chosen))
    if "helmholtz" in sections:
        methods["helmholtz"] = helmholtz_study(options, chosen, progress)
    if methods:
        result["methods"] = methods
    if options.peers:
        progress("peers")
        result["peers"] = peers(runs, options, result["training"])
    if "scaling" in sections:
        progress("scaling over devices")
        minibatch = [name for name, run in runs.items() if not run.plan.full_batch] or list(runs)
        result["scaling"] = scaling_table(configs[minibatch[-1]], options, minibatch[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def helmholtz_study(options: BenchOptions, device, progress: Callable[[str], None] = lambda message: None) -> dict:
    """The Helmholtz free-energy timing study of Baydin et al. 2018 (``gradfit.bench.helmholtz.study``) on
    ``device``."""
    with jax.default_device(device):
        return helmholtz.study(
            sizes=options.helmholtz_sizes,
            repeats=options.repeats,
            symbolic_max_n=options.symbolic_max_n,
            progress=lambda message: progress(f"Helmholtz study: {message}"),
        )


def run_study(
    name: str,
    options: BenchOptions = FULL,
    device: str = "auto",
    progress: Callable[[str], None] = lambda message: None,
) -> dict:
    """One study of ``STUDIES`` alone, shaped as ``run_bench``'s result with only that section."""
    started = time.perf_counter()
    chosen = select_device(device)
    result = {
        "environment": environment(chosen, ["float64"]),
        "options": dataclasses.asdict(options),
        "methods": {name: helmholtz_study(options, chosen, progress)},
    }
    return {**result, "wall_s": time.perf_counter() - started}


FORCED_CPU_DEVICES = 4  # what ``split_cpu`` makes of a CPU for the scaling table


def split_cpu(devices: int = FORCED_CPU_DEVICES) -> None:
    """Before JAX starts: present the CPU as ``devices`` devices (unless XLA_FLAGS already says how many), so
    the scaling table has 1, 2 and 4 to compare. They share the CPU's cores; one-device work is unaffected."""
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        with contextlib.suppress(RuntimeError):  # JAX already started (a test, a notebook): use what it has
            jax.config.update("jax_num_cpu_devices", devices)
