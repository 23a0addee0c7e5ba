"""The Helmholtz free energy study: the hand-derived gradient, every method against reverse mode, the study's rows."""

from __future__ import annotations

import io
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy

from gradfit.bench import helmholtz, timing
from gradfit.core.precision import Precision

# float64 tolerances (norm-relative): AD and the closed form agree to rounding; central differences with
# h = eps^(1/3) carry about eps^(2/3) ~ 4e-11 per unit of |f|, and |f| grows with n
EXACT_TOL = 1e-12
FINITE_DIFFERENCE_TOL = 1e-8


def gradients(n: int, *methods: str) -> dict:
    """Each JAX method's gradient at problem(n), jitted, in float64; NumPy arrays."""
    instance = helmholtz.problem(n)
    with Precision("float64").scope():
        args = (
            jnp.asarray(instance.x),
            jnp.asarray(instance.b),
            jnp.asarray(instance.A),
            jnp.asarray(instance.rt, jnp.float64),
        )
        return {m: np.asarray(jax.jit(helmholtz.JAX_METHODS[m])(*args)) for m in methods}


@pytest.mark.parametrize("n", [1, 3, 17, 200])
def test_hand_derived_gradient_equals_reverse_mode(n):
    g = gradients(n, "manual", "reverse")
    assert g["manual"].dtype == np.float64 and g["manual"].shape == (n,)
    assert helmholtz.relative_error(g["manual"], g["reverse"]) < EXACT_TOL


@pytest.mark.parametrize("n", [2, 5])
def test_forward_finite_differences_and_symbolic_agree_with_reverse(n):
    g = gradients(n, "reverse", "forward", "finite_difference")
    assert helmholtz.relative_error(g["forward"], g["reverse"]) < EXACT_TOL
    assert helmholtz.relative_error(g["finite_difference"], g["reverse"]) < FINITE_DIFFERENCE_TOL
    instance = helmholtz.problem(n)
    symbolic = helmholtz.symbolic_gradient(instance.b, instance.A, instance.rt)
    point = instance.x.tolist()
    assert helmholtz.relative_error(symbolic.gradient(*point), g["reverse"]) < EXACT_TOL
    # and f itself: SymPy's expression, built separately, is the same function as the JAX one
    with Precision("float64").scope():
        value = float(helmholtz.helmholtz(*(jnp.asarray(a) for a in instance)))
    assert symbolic.loss(*point) == pytest.approx(value, rel=EXACT_TOL)


@pytest.mark.parametrize("n", [1, 2, 64, 1024])
def test_problem_is_well_inside_the_domain(n):
    x, b, A, rt = helmholtz.problem(n, seed=3)
    assert x.shape == b.shape == (n,) and A.shape == (n, n) and x.dtype == np.float64
    assert (x > 0).all() and 0.05 < b @ x < 0.75
    np.testing.assert_array_equal(A, A.T)
    np.testing.assert_array_equal(helmholtz.problem(n, seed=3).x, x)  # seeded


def test_expression_is_smaller_after_common_subexpression_elimination():
    sizes = {}
    for n in (2, 3):
        instance = helmholtz.problem(n)
        symbolic = helmholtz.symbolic_gradient(instance.b, instance.A, instance.rt)
        assert symbolic.ops_cse < symbolic.ops
        sizes[n] = symbolic.ops
    assert sizes[3] > sizes[2]  # the swell: every entry repeats x'Ax


@pytest.fixture(scope="module")
def small_study():
    return helmholtz.study(sizes=(1, 2, 4), repeats=3, symbolic_max_n=2)


def test_study_rows_are_well_formed(small_study):
    result = small_study
    json.dumps(result)  # JSON-ready
    assert result["function"] == "helmholtz" and result["symbolic"] == f"sympy {sympy.__version__}"
    assert [row["size"] for row in result["rows"]] == [row["num_params"] for row in result["rows"]] == [1, 2, 4]
    for row in result["rows"]:
        assert row["loss_s"] > 0
        for method in helmholtz.METHODS:
            seconds = row[f"{method}_s"]
            assert row["ratios"][method] == (None if seconds is None else pytest.approx(seconds / row["loss_s"]))
        for method in ("forward", "manual"):
            assert row["errors"][method] < EXACT_TOL
        assert row["errors"]["finite_difference"] < FINITE_DIFFERENCE_TOL
        assert set(row["spread"]) >= {"loss_s", "reverse_s", "forward_s", "finite_difference_s", "manual_s"}
        assert set(row["unstable"]) <= set(row["spread"])
    symbolic, beyond = result["rows"][1], result["rows"][2]
    assert symbolic["symbolic_skipped"] is None and symbolic["errors"]["symbolic"] < EXACT_TOL
    assert symbolic["symbolic_setup_s"] > 0 and symbolic["symbolic_ops_cse"] < symbolic["symbolic_ops"]
    assert beyond["symbolic_s"] is None and beyond["symbolic_ops"] is None and beyond["errors"]["symbolic"] is None
    assert "symbolic_max_n = 2" in beyond["symbolic_skipped"]
    # exponents only over the sizes where f is well above the dispatch floor, and none with fewer than 2 of them
    fit = result["growth_fit"]
    assert set(result["growth_exponent"]) == set(helmholtz.METHODS) and fit["dispatch_floor_s"] > 0
    assert fit["sizes"] == [r["size"] for r in result["rows"] if r["loss_s"] >= fit["factor"] * fit["dispatch_floor_s"]]
    if len(fit["sizes"]) < 2:
        assert "dispatch-bound" in fit["reason"] and all(v is None for v in result["growth_exponent"].values())
    assert result["expression_growth"]["ops"] is None  # only n = 2 has an expression of more than one variable


def test_symbolic_stops_growing_past_its_time_budget():
    result = helmholtz.study(sizes=(1, 2), repeats=3, symbolic_max_n=8, symbolic_budget_s=0.0)
    first, second = result["rows"]
    assert first["symbolic_s"] is not None
    assert second["symbolic_s"] is None and "budget" in second["symbolic_skipped"]


def test_study_runs_without_sympy_and_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sympy", None)  # makes `import sympy` raise ImportError
    assert helmholtz.sympy_version() is None
    result = helmholtz.study(sizes=(2,), repeats=3)
    assert result["symbolic"] == helmholtz.SYMPY_HINT == "SymPy is not installed: pip install 'gradfit[symbolic]'"
    (row,) = result["rows"]
    assert row["symbolic_s"] is None and row["symbolic_skipped"] == helmholtz.SYMPY_HINT
    assert row["reverse_s"] > 0 and row["errors"]["manual"] < EXACT_TOL


def ratio_row(n: int, ratio: float, loss_s: float) -> dict:
    """A study row at n whose forward and finite-difference (and symbolic, up to n = 32) ratios are ``ratio``."""
    symbolic = ratio if n <= 32 else None
    methods = {"reverse": 2.0, "forward": ratio, "finite_difference": ratio, "manual": 1.0, "symbolic": symbolic}
    return {"num_params": n, "size": n, "loss_s": loss_s, "ratios": methods}


FLOOR_S = 10e-6  # a dispatch floor of 10 us: a size is fitted where f takes 50 us or more


def test_growth_exponent_is_fitted_over_the_compute_bound_sizes_only():
    # f at the floor up to n = 4 (forward's ratio flat at 50), then compute-bound with forward growing as n
    rows = [ratio_row(1, 50.0, FLOOR_S), ratio_row(4, 50.0, 1.2 * FLOOR_S)]
    rows += [ratio_row(n, 0.5 * n, n * FLOOR_S) for n in (16, 32, 64)]
    fit = timing.growth_fit(rows, "loss_s", FLOOR_S)
    assert fit["sizes"] == [16, 32, 64] and fit["reason"] is None and fit["factor"] == timing.COMPUTE_BOUND_FACTOR
    exponents = helmholtz.growth_exponents(rows, fit["sizes"])
    assert exponents["reverse"] == pytest.approx(0.0, abs=1e-12)
    assert exponents["forward"] == pytest.approx(1.0) and exponents["finite_difference"] == pytest.approx(1.0)
    assert exponents["symbolic"] == pytest.approx(1.0)  # from n = 16 and 32
    assert helmholtz.growth_exponents(rows, [16])["forward"] is None  # one size: no slope


def dispatch_bound_study() -> dict:
    """The quick study as a busy 2-core machine measured it: f flat at the dispatch floor from n = 1 to 64 while the
    ratios fall, whose slope over n >= 16 was printed as a growth rate of n^-1.10."""
    rows = [ratio_row(n, 8.0 / n**1.1, FLOOR_S * (1 + n / 100)) for n in (1, 2, 4, 8, 16, 32, 64)]
    for row in rows:
        row.update(errors={}, symbolic_ops=None, symbolic_ops_cse=None, symbolic_setup_s=None, symbolic_skipped=None)
    fit = timing.growth_fit(rows, "loss_s", FLOOR_S)
    return {
        "rows": rows,
        "growth_exponent": helmholtz.growth_exponents(rows, fit["sizes"]),
        "growth_fit": fit,
        "expression_growth": {},
        "symbolic": "sympy",
    }


def test_a_dispatch_bound_study_prints_no_growth_rate_and_says_why():
    from rich.console import Console

    from gradfit.cli.render.bench import helmholtz_table

    study = dispatch_bound_study()
    assert study["growth_fit"]["sizes"] == [] and all(v is None for v in study["growth_exponent"].values())
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(helmholtz_table(study))
    text = " ".join(console.export_text().split())
    assert "n^-" not in text and "n^1" not in text and "n^0" not in text
    assert "none here, dispatch-bound: 0 size(s) where one call takes over 5x the 10 us dispatch floor" in text
