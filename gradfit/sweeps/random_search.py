"""Random search: the ``sweep.random`` section (trials, seed, space), its distributions checked, and the settings
drawn from it: reproducible from the seed, never two alike."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

DISTRIBUTIONS = ("log_uniform", "uniform", "int_uniform")
MAX_DRAW_ATTEMPTS = 100  # per trial: a draw that repeats one before (a small space of choices) is drawn again


class RandomSearch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    trials: int = Field(ge=1, description="settings drawn at random")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the draws")
    space: dict[str, Any] = Field(
        min_length=1,
        description="key -> {log_uniform: [lo, hi]}, {uniform: [lo, hi]}, {int_uniform: [lo, hi]} or a list of choices",
    )

    @field_validator("space")
    @classmethod
    def _numbers(cls, space: dict):
        # YAML 1.1 reads `1e-4` as text, not as a number (the config's own keys are read alike)
        return {
            key: {
                name: [_yaml_number(b) for b in bounds] if isinstance(bounds, list) else bounds
                for name, bounds in dist.items()
            }
            if isinstance(dist, dict)
            else dist
            for key, dist in space.items()
        }


def _yaml_number(value: Any) -> Any:
    if type(value) is str:
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def problem(dist: Any) -> str | None:
    """What is wrong with one key's distribution (a list of choices or {name: [lo, hi]}), or None."""
    if isinstance(dist, list):
        return None if dist else "no choices; list at least one"
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        return "expected {log_uniform: [lo, hi]}, {uniform: [lo, hi]}, {int_uniform: [lo, hi]} or a list of choices"
    name, bounds = next(iter(dist.items()))
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_number(b) for b in bounds)):
        return f"{name}: expected [lo, hi], two numbers"
    lo, hi = bounds
    if not lo <= hi:
        return f"{name}: lo {lo} is above hi {hi}"
    if name == "log_uniform" and lo <= 0:
        return f"log_uniform: the bounds must be > 0 (got lo {lo}); use uniform for a range through 0"
    if name == "int_uniform" and not (float(lo).is_integer() and float(hi).is_integer()):
        return "int_uniform: the bounds must be whole numbers"
    return None


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _draw(dist: Any, rng: np.random.Generator) -> Any:
    if isinstance(dist, list):
        return copy.deepcopy(dist[int(rng.integers(len(dist)))])
    name, (lo, hi) = next(iter(dist.items()))
    if name == "int_uniform":
        return int(rng.integers(int(lo), int(hi) + 1))
    u = rng.uniform(math.log(lo), math.log(hi)) if name == "log_uniform" else rng.uniform(lo, hi)
    return math.exp(u) if name == "log_uniform" else u


def _space_size(space: dict) -> int | None:
    """How many different settings ``space`` holds (None: a key is drawn from a continuous range)."""
    size = 1
    for dist in space.values():
        if isinstance(dist, list):
            size *= len({json.dumps(choice, sort_keys=True) for choice in dist})
        elif next(iter(dist)) == "int_uniform":
            lo, hi = next(iter(dist.values()))
            size *= int(hi) - int(lo) + 1
        else:
            return None
    return size


def settings(random: RandomSearch) -> tuple[list[dict], str | None]:
    """``random.trials`` different settings drawn from the space (reproducibly from ``random.seed``), and a note
    when the space holds fewer. A drawn number keeps the fewest digits (4 at least) that tell it from the other
    draws of its key, so tables and folder names are readable and the values reproducible from them."""
    rng = np.random.default_rng(random.seed)
    size = _space_size(random.space)
    wanted = random.trials if size is None else min(random.trials, size)
    draws: list[dict] = []
    seen: set[str] = set()
    for _ in range(MAX_DRAW_ATTEMPTS * random.trials):
        if len(draws) == wanted:
            break
        draw = {key: _draw(dist, rng) for key, dist in random.space.items()}
        if (marker := json.dumps(draw, sort_keys=True)) not in seen:
            seen.add(marker)
            draws.append(draw)
    for key, dist in random.space.items():
        if isinstance(dist, dict) and next(iter(dist)) != "int_uniform":
            values = [draw[key] for draw in draws]
            digits = next(p for p in range(4, 18) if len({f"{v:.{p}g}" for v in values}) == len(set(values)))
            for draw in draws:
                draw[key] = float(f"{draw[key]:.{digits}g}")
    note = None
    if len(draws) < random.trials:
        held = "" if size is None else f": the space holds {size:,}"
        note = f"random search: {random.trials:,} trials asked, {len(draws):,} different settings drawn{held}"
    return draws, note
