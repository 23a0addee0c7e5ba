"""What a gradient check answers: the verdicts, and the report per method, per parameter group and overall.

An entry's verdict is PASS, FAIL, KINK (a kink within the step, with reverse AD between the one-sided
differences) or INCONCLUSIVE (the finite differences could not decide); N/A marks a method that could not run.
A set of entries takes its most severe verdict.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PASS, FAIL, KINK, INCONCLUSIVE, NOT_AVAILABLE = "PASS", "FAIL", "KINK", "INCONCLUSIVE", "N/A"
SEVERITY = (FAIL, INCONCLUSIVE, KINK, PASS, NOT_AVAILABLE)  # most severe first
METHODS = ("forward", "finite_difference", "manual", "float64")  # float64: only in checks of another precision


@dataclasses.dataclass
class MethodResult:
    """One method against reverse AD on one parameter group."""

    method: str
    verdict: str
    error: float | None = None  # ||method - reverse|| / ||reverse|| over the checked entries
    worst: str | None = None  # where the worst entry is: "[3, 7]" or "direction 2"
    worst_index: int | None = None  # flat index of the worst entry within its group (None for a direction)
    worst_direction: int | None = None  # which random direction was worst (directional mode)
    worst_value: float | None = None
    worst_reference: float | None = None
    worst_step: float | None = None  # finite differences: the step that decided the worst entry
    checked: int = 0  # entries (coordinates) compared
    directions: int = 0  # random directions compared (directional mode)
    kinks: int = 0
    inconclusive: int = 0
    failures: int = 0
    note: str = ""


@dataclasses.dataclass
class GroupResult:
    """Every method against reverse AD on one parameter group, and the group's verdict (the most severe)."""

    name: str
    size: int
    shape: tuple
    verdict: str
    methods: dict  # method name -> MethodResult
    f_noise: float | None = None  # eps_f: the measured noise of the loss near the point, along this group


@dataclasses.dataclass
class SweepRow:
    """One step of the step-size study."""

    step: float
    error: float  # norm-relative error of finite differences against reverse AD


@dataclasses.dataclass
class Report:
    """The whole check: the overall verdict, how it was taken, each group's results and the step-size study."""

    verdict: str  # "pass" | "fail" | "inconclusive"
    precision: str
    num_params: int
    mode: str  # "full" | "directional"
    step_rule: str
    groups: list
    sweep: list | None = None
    sweep_shape: str | None = None  # "V" | "flat"

    @property
    def methods(self) -> tuple:
        """The methods compared with reverse AD, in the order shown."""
        return METHODS if self.precision != "float64" else METHODS[:-1]

    def to_json(self) -> dict:
        """The report as JSON-ready data: each group's verdict, noise, errors by method and full method results."""
        out = {
            "verdict": self.verdict,
            "precision": self.precision,
            "num_params": self.num_params,
            "mode": self.mode,
            "step_rule": self.step_rule,
            "groups": [
                {
                    "name": g.name,
                    "size": g.size,
                    "verdict": g.verdict.lower(),
                    "f_noise": g.f_noise,
                    "errors": {m: (g.methods[m].error if m in g.methods else None) for m in self.methods},
                    "methods": {m: dataclasses.asdict(r) for m, r in g.methods.items()},
                }
                for g in self.groups
            ],
        }
        if self.sweep is not None:
            out["sweep"] = {"shape": self.sweep_shape, "rows": [dataclasses.asdict(r) for r in self.sweep]}
        return out


def combine_verdicts(verdicts) -> str:
    """The most severe verdict of a set (N/A only when nothing else is there)."""
    verdicts = set(verdicts)
    return next((v for v in SEVERITY if v in verdicts), NOT_AVAILABLE)


def method_result(method, values, reference, verdicts, labels, ratio, flat) -> MethodResult:
    """Summarize per-entry values/verdicts; the worst entry has the largest error ratio among the entries of
    the most severe verdict (the one the group's verdict comes from)."""
    norm = np.linalg.norm(reference)
    error = float(np.linalg.norm(values - reference) / norm) if norm > 0 else float(np.linalg.norm(values))
    severity = np.array([SEVERITY.index(v) for v in verdicts])
    worst = int(np.argmax(np.where(severity == severity.min(), ratio, -np.inf)))
    checked, directions = (len(values), 0) if flat is not None else (0, len(values))
    return MethodResult(
        method,
        combine_verdicts(verdicts),
        error,
        labels[worst],
        None if flat is None else int(flat[worst]),
        None if flat is not None else worst,
        float(values[worst]),
        float(reference[worst]),
        checked=checked,
        directions=directions,
        kinks=int(np.sum(verdicts == KINK)),
        inconclusive=int(np.sum(verdicts == INCONCLUSIVE)),
        failures=int(np.sum(verdicts == FAIL)),
    )
