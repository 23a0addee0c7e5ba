"""Timing: the median of repeated samples after a warm-up call, each waited for on the device, with its spread.

Samples are taken until the newest ones agree within ``SPREAD_LIMIT`` (or a budget is spent); a figure whose
samples kept disagreeing is marked unstable, so that it is flagged when shown rather than printed as fact.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

SPREAD_LIMIT = 0.20  # samples whose (max - min) / median exceeds this are not a figure to report as fact


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call: the median of the newest samples, and their spread, (max - min) / median."""

    seconds: float
    spread: float
    samples: int  # taken in all, the discarded earlier ones included

    @property
    def stable(self) -> bool:
        return self.spread <= SPREAD_LIMIT


def collect(sample: Callable[[], float], repeats: int, budget_s: float = 5.0) -> Timing:
    """Call ``sample`` (one measured duration) until its newest ``repeats`` results agree within ``SPREAD_LIMIT``,
    at most 4 x ``repeats`` times or ``budget_s`` seconds; the Timing of those newest results."""
    repeats = max(repeats, 3)
    started = time.perf_counter()
    samples = [sample() for _ in range(repeats)]
    while (
        _spread(samples[-repeats:]) > SPREAD_LIMIT
        and len(samples) < 4 * repeats
        and time.perf_counter() - started < budget_s
    ):
        samples.append(sample())
    window = samples[-repeats:]
    return Timing(statistics.median(window), _spread(window), len(samples))


def _spread(samples: list) -> float:
    middle = statistics.median(samples)
    return (max(samples) - min(samples)) / middle if middle > 0 else float("inf")


def measure(fn: Callable, *args, repeats: int = 5, min_sample_s: float = 0.002) -> Timing:
    """Time of one ``fn(*args)`` call (waited for on the device), after a warm-up call.

    Calls shorter than ``min_sample_s`` are repeated within each sample and averaged, so microsecond timings
    are not dominated by the timer and the scheduler.
    """
    jax.block_until_ready(fn(*args))  # warm-up (and compilation, for a jitted fn)
    tick = time.perf_counter()
    jax.block_until_ready(fn(*args))
    once = time.perf_counter() - tick
    inner = min(1000, max(1, int(min_sample_s / max(once, 1e-9))))

    def sample() -> float:
        tick = time.perf_counter()
        for _ in range(inner):
            jax.block_until_ready(fn(*args))
        return (time.perf_counter() - tick) / inner

    return collect(sample, repeats)


def record(row: dict, key: str, timing: Timing, scale: float = 1.0) -> float:
    """Put a timing in a result row: its median (times ``scale``) under ``key``, its spread under
    ``row["spread"][key]``, and ``key`` in ``row["unstable"]`` when the samples disagreed. Returns the value."""
    row[key] = timing.seconds * scale
    row.setdefault("spread", {})[key] = timing.spread
    unstable = row.setdefault("unstable", [])
    if not timing.stable and key not in unstable:
        unstable.append(key)
    return row[key]


def compile_side_by_side(functions: list, *args) -> list:
    """Jit, trace and compile each function for ``args``, two at a time (XLA compiles without the GIL), so that
    no timing includes a compilation."""
    lowered = [jax.jit(fn).lower(*args) for fn in functions]
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda program: program.compile(), lowered))


def growth_exponent(points: list) -> float | None:
    """The slope of log(y) against log(x) over (x, y) points: how a cost grows; None for fewer than 2 points."""
    if len(points) < 2:
        return None
    xs, ys = zip(*points)
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


# A size enters a growth fit only where its reference call (one loss, one f) takes at least this many times the
# dispatch floor: below, every call costs about the same fixed overhead, a ratio of two such times is about 1
# whatever the size, and a slope through them is not a growth rate (it came out as n^-1.10 and n^-1.41).
COMPUTE_BOUND_FACTOR = 5.0


def dispatch_floor(repeats: int = 5) -> float:
    """Seconds of one call of a compiled program that does next to nothing (a scalar plus one), waited for: what
    any call costs before it computes anything (dispatch, argument handling, the wait)."""
    program = jax.jit(lambda value: value + 1).lower(np.float32(0)).compile()
    return measure(program, np.float32(0), repeats=repeats).seconds


def growth_fit(rows: list, reference_key: str, floor_s: float, factor: float = COMPUTE_BOUND_FACTOR) -> dict:
    """Which ``rows`` a growth exponent may be fitted over: those whose ``reference_key`` time is at least
    ``factor`` times ``floor_s`` (``dispatch_floor``).

    Returns ``{"dispatch_floor_s", "factor", "sizes", "reason"}``: ``sizes`` the ``num_params`` of those rows;
    ``reason`` None when there are 2 or more of them, else why no exponent is fitted."""
    sizes = [row["num_params"] for row in rows if row[reference_key] >= factor * floor_s]
    reason = (
        None
        if len(sizes) >= 2
        else f"dispatch-bound: {len(sizes)} size(s) where one call takes over {factor:g}x the "
        f"{floor_s * 1e6:.3g} us dispatch floor; a slope over the others is not a growth rate"
    )
    return {"dispatch_floor_s": floor_s, "factor": factor, "sizes": sizes, "reason": reason}
