"""Compiled programs kept in one process for the next run that needs the very same ones.

The scikit-learn estimators fit many models of one shape in a process (scikit-learn's checks, a grid search over a
fixed split): tracing and lowering the training programs costs about 0.6 s a fit however small the data, and the
persistent compilation cache skips only the compile after it. A run's programs are functions of its config, its
data's shapes and dtypes, what they were built from (the model's input and output widths, the plan, a numeric
target's standard deviation, the evaluation's block) and its devices; the data, the seed and the state are their
arguments. ``key`` is all of those, so two runs with equal keys get the same programs. Only runs that ask
(``prepare(..., reuse=True)``) use them; streamed runs never do. No jax import at module level.
"""

from __future__ import annotations

import collections
import json
from typing import Any

KEPT = 8  # keys whose programs stay: a few models' code, small beside their data

_kept: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()


def key(config: Any, data: dict, built_from: dict, topology: dict) -> str:
    """What a run's compiled programs depend on: the config (but its name), the shapes, dtypes and placements of the
    arrays passed to them, the values the programs were built from (``built_from``: the model's widths, the plan,
    a numeric target's standard deviation...) and the devices."""
    settings = config.model_dump(mode="json")
    settings.pop("name", None)
    arrays = {name: [list(a.shape), str(a.dtype), str(getattr(a, "sharding", ""))] for name, a in data.items()}
    return json.dumps(
        {"config": settings, "arrays": arrays, "built_from": built_from, "devices": topology},
        sort_keys=True,
        default=repr,
    )


def get(run_key: str | None, name: str) -> Any:
    """The compiled program ``name`` ("init", "chunk", "evaluate") kept under ``run_key``, or None."""
    if run_key is None or run_key not in _kept:
        return None
    _kept.move_to_end(run_key)
    return _kept[run_key].get(name)


def put(run_key: str | None, name: str, program: Any) -> None:
    """Keep ``program`` under ``run_key`` (None: the run does not reuse), forgetting the least recent key."""
    if run_key is None:
        return
    _kept.setdefault(run_key, {})[name] = program
    _kept.move_to_end(run_key)
    while len(_kept) > KEPT:
        _kept.popitem(last=False)


def forget() -> None:
    """Drop every kept program (a benchmark timing a first fit)."""
    _kept.clear()
