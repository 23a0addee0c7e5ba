"""Scaling over devices: steps/s of a config's fused training on 1, 2, 4, ... devices of its platform."""

from __future__ import annotations

import os

import jax

from gradfit.bench.options import BenchOptions
from gradfit.bench.timing import record
from gradfit.bench.training_speed import batch_size, fused_step_time
from gradfit.config.load import GradfitConfig
from gradfit.training.prepare import prepare


def scaling_table(config: GradfitConfig, options: BenchOptions, name: str) -> dict:
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
        run = prepare(on_devices(config, platform, n))
        batch = batch_size(run)
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
    note = (
        f"{available} forced CPU devices sharing {os.cpu_count()} cores of one machine: this measures the "
        "overhead of sharding, not a speed-up"
        if forced
        else "one device only: nothing to scale over"
        if available == 1
        else f"{available} {platform} devices"
    )
    return {
        "config": name,
        "platform": platform,
        "batch_size": batch,
        "available_devices": available,
        "forced_cpu_devices": forced,
        "note": note,
        "rows": rows,
    }


def on_devices(config: GradfitConfig, platform: str, devices) -> GradfitConfig:
    """The config on ``devices`` devices of ``platform`` (its runtime.device and runtime.devices)."""
    runtime = config.runtime.model_copy(update={"device": platform, "devices": devices})
    return config.model_copy(update={"runtime": runtime})
