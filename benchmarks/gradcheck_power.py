"""What compare-grads finds and what it does not falsely fail (issue 13), as the README's tables.

    python benchmarks/gradcheck_power.py              # both tables: about 25 minutes on 2 CPU cores
    python benchmarks/gradcheck_power.py --planted    # planted errors only (about 6 minutes)
    python benchmarks/gradcheck_power.py --seeds 3    # fewer seeds for the false-failure table

Planted: one entry of the training objective's gradient is scaled by 1 + err (``gradcheck.planted_error``, a
``jax.custom_vjp``: the loss values are untouched) at five entries per cell: the largest, the median-sized
(typical) one and three random nonzero ones. A cell counts the checks that FAIL *and* name the planted entry.
False failures: the correct gradient at 10 seeds per activation; a cell counts the verdicts.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import make_config  # noqa: E402  (the tests' config helper: the shipped defaults + overrides)

from gradfit.gradients import problem  # noqa: E402
from gradfit.gradients.gradcheck import FLOAT64, CheckOptions, check_gradient, planted_error  # noqa: E402

MODELS = {  # name -> (overrides, full mode?)
    "logistic (31 params)": ((), True),
    "MLP 32-16 (2,778, full)": (("model.kind=mlp", "data.source=digits", "model.hidden=[32, 16]"), True),
    "MLP 128-64 (17,226, directional)": (("model.kind=mlp", "data.source=digits", "model.hidden=[128, 64]"), False),
}
PLANTS = (("float64", 1e-4), ("float32", 1e-2))


def entries(point, rng) -> list[int]:
    with FLOAT64.scope():
        params, args = point.cast(np.float64)
        grads = np.abs(np.asarray(ravel_pytree(jax.grad(point.loss_fn)(params, *args))[0]))
    nonzero = np.flatnonzero(grads > 0)
    ordered = nonzero[np.argsort(grads[nonzero])]
    return [int(ordered[-1]), int(ordered[len(ordered) // 2]), *map(int, rng.choice(nonzero, 3, replace=False))]


def located(report, index: int) -> bool:
    offset = 0
    for group in report.groups:
        if offset <= index < offset + group.size:
            fd = group.methods["finite_difference"]
            label = str([int(i) for i in np.unravel_index(index - offset, group.shape)]) if group.shape else "[]"
            return report.verdict == "fail" and fd.verdict == "FAIL" and fd.worst == label
        offset += group.size
    return False


def planted_table() -> None:
    rng = np.random.default_rng(0)
    print("| problem | precision | planted err | FD alone | with hand-derived |\n|---|---|---|---|---|")
    for name, (overrides, full) in MODELS.items():
        point = problem.from_config(make_config(*overrides))
        picks = entries(point, rng)
        for precision, err in PLANTS:
            cells = []
            for manual in (None, point.manual_grad):
                found = sum(located(check_gradient(planted_error(point.loss_fn, i, err), point.params, manual,
                                                   CheckOptions(precision=precision, full=full), args=point.args), i)
                            for i in picks)
                cells.append(f"{found}/{len(picks)} FAIL")
            print(f"| {name} | {precision} | {err:g} | {cells[0]} | {cells[1]} |", flush=True)


def false_failure_table(seeds: int) -> None:
    print("\n| problem | activation | precision | verdicts over seeds |\n|---|---|---|---|")
    for name, (overrides, full) in list(MODELS.items())[1:]:
        for activation in ("relu", "tanh", "gelu"):
            counts = {p: collections.Counter() for p, _ in PLANTS}
            for seed in range(seeds):
                point = problem.from_config(make_config(*overrides, f"model.activation={activation}", f"seed={seed}"))
                for precision in counts:
                    report = check_gradient(point.loss_fn, point.params, point.manual_grad,
                                            CheckOptions(precision=precision, full=full), args=point.args)
                    counts[precision][report.verdict.upper()] += 1
            for precision, count in counts.items():
                shown = ", ".join(f"{v} {count[v]}" for v in ("PASS", "INCONCLUSIVE", "FAIL") if count[v])
                print(f"| {name} | {activation} | {precision} | {shown} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planted", action="store_true", help="only the planted-error table")
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    planted_table()
    if not args.planted:
        false_failure_table(args.seeds)


if __name__ == "__main__":
    main()
