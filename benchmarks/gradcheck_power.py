"""What compare-grads finds and what it does not falsely fail, as the tables of the docs' benchmark results.

    python benchmarks/gradcheck_power.py              # both tables: about 25 minutes on 2 CPU cores
    python benchmarks/gradcheck_power.py --planted    # planted errors only (about 6 minutes)
    python benchmarks/gradcheck_power.py --seeds 3    # fewer seeds for the false-failure table
    python benchmarks/gradcheck_power.py --smoke      # both tables, a few checks of small problems (a test runs it)

Planted: one entry of the training objective's gradient is scaled by 1 + err (``gradcheck.planted_error``, a
``jax.custom_vjp``: the loss values are untouched) at five entries per cell: the largest, the median-sized
(typical) one and three random nonzero ones. A cell counts the checks that FAIL *and* name the planted entry.
False failures: the correct gradient at 10 seeds per activation; a cell counts the verdicts.
"""

from __future__ import annotations

import argparse
import collections

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from gradfit.config.load import make_config
from gradfit.gradients import problem
from gradfit.gradients.checked_point import FLOAT64
from gradfit.gradients.gradcheck import CheckOptions, check_gradient, planted_error

MODELS = {  # name -> (overrides, full mode?)
    "logistic (31 params)": ((), True),
    "MLP 32-16 (2,778, full)": (("model.kind=mlp", "data.source=digits", "model.hidden=[32, 16]"), True),
    "MLP 128-64 (17,226, directional)": (("model.kind=mlp", "data.source=digits", "model.hidden=[128, 64]"), False),
}
PLANTS = (("float64", 1e-4), ("float32", 1e-2))
ACTIVATIONS = ("relu", "tanh", "gelu")
# --smoke: the same tables from a few checks (each compiles its own programs, seconds apiece on 2 cores): the
# largest entry of logistic regression planted, and one activation of a small MLP at one seed
SMOKE_PLANTED = dict(list(MODELS.items())[:1])
SMOKE_CHECKED = {"MLP 4 (129, full)": (("model.kind=mlp", "model.hidden=[4]"), True)}


def entries(point, rng) -> list[int]:
    """The five entries to plant an error at: the largest gradient entry, the median-sized one, three random."""
    with FLOAT64.scope():
        params, args = point.cast(np.float64)
        grads = np.abs(np.asarray(ravel_pytree(jax.grad(point.loss_fn)(params, *args))[0]))
    nonzero = np.flatnonzero(grads > 0)
    ordered = nonzero[np.argsort(grads[nonzero])]
    return [int(ordered[-1]), int(ordered[len(ordered) // 2]), *map(int, rng.choice(nonzero, 3, replace=False))]


def located(report, index: int) -> bool:
    """Whether the check FAILs and its finite differences name flat entry ``index`` as the worst."""
    offset = 0
    for group in report.groups:
        if offset <= index < offset + group.size:
            fd = group.methods["finite_difference"]
            label = str([int(i) for i in np.unravel_index(index - offset, group.shape)]) if group.shape else "[]"
            return report.verdict == "fail" and fd.verdict == "FAIL" and fd.worst == label
        offset += group.size
    return False


def planted_table(models: dict, per_cell: int = 5) -> None:
    """Planted errors at the first ``per_cell`` of each problem's five entries."""
    rng = np.random.default_rng(0)
    print("| problem | precision | planted err | FD alone | with hand-derived |\n|---|---|---|---|---|")
    for name, (overrides, full) in models.items():
        point = problem.from_config(make_config(*overrides))
        picks = entries(point, rng)[:per_cell]
        for precision, err in PLANTS:
            cells = []
            for manual in (None, point.manual_grad):
                found = sum(
                    located(
                        check_gradient(
                            planted_error(point.loss_fn, i, err),
                            point.params,
                            manual,
                            CheckOptions(precision=precision, full=full),
                            args=point.args,
                        ),
                        i,
                    )
                    for i in picks
                )
                cells.append(f"{found}/{len(picks)} FAIL")
            print(f"| {name} | {precision} | {err:g} | {cells[0]} | {cells[1]} |", flush=True)


def false_failure_table(models: dict, seeds: int, activations: tuple[str, ...] = ACTIVATIONS) -> None:
    """The verdicts on each problem's correct gradient, per activation, over ``seeds`` seeds."""
    print("\n| problem | activation | precision | verdicts over seeds |\n|---|---|---|---|")
    for name, (overrides, full) in models.items():
        for activation in activations:
            counts = {p: collections.Counter() for p, _ in PLANTS}
            for seed in range(seeds):
                point = problem.from_config(make_config(*overrides, f"model.activation={activation}", f"seed={seed}"))
                for precision in counts:
                    report = check_gradient(
                        point.loss_fn,
                        point.params,
                        point.manual_grad,
                        CheckOptions(precision=precision, full=full),
                        args=point.args,
                    )
                    counts[precision][report.verdict.upper()] += 1
            for precision, count in counts.items():
                shown = ", ".join(f"{v} {count[v]}" for v in ("PASS", "INCONCLUSIVE", "FAIL") if count[v])
                print(f"| {name} | {activation} | {precision} | {shown} |", flush=True)


def main() -> None:
    """Print the tables the options ask for."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planted", action="store_true", help="only the planted-error table")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="a few checks of small problems: seconds")
    args = parser.parse_args()
    if args.smoke:
        planted_table(SMOKE_PLANTED, per_cell=1)
        if not args.planted:
            false_failure_table(SMOKE_CHECKED, seeds=1, activations=ACTIVATIONS[:1])
        return
    planted_table(MODELS)
    if not args.planted:
        false_failure_table(dict(list(MODELS.items())[1:]), args.seeds)


if __name__ == "__main__":
    main()
