"""The Helmholtz free energy study: the hand-derived gradient, every method against reverse mode, the study's rows."""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy

from gradfit.bench import helmholtz
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
    # every size is below FIT_FROM: too few points for a growth exponent
    assert set(result["growth_exponent"]) == set(helmholtz.METHODS)
    assert all(value is None for value in result["growth_exponent"].values())
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


def test_growth_exponent_is_fitted_over_the_large_sizes_only():
    def row(n, ratio):
        return {
            "num_params": n,
            "ratios": {
                "reverse": 2.0,
                "forward": ratio,
                "finite_difference": ratio,
                "manual": 1.0,
                "symbolic": ratio if n <= 32 else None,
            },
        }

    rows = [row(1, 50.0), row(4, 50.0)] + [row(n, 0.5 * n) for n in (16, 32, 64)]
    exponents = helmholtz.growth_exponents(rows)
    assert exponents["reverse"] == pytest.approx(0.0, abs=1e-12)
    assert exponents["forward"] == pytest.approx(1.0) and exponents["finite_difference"] == pytest.approx(1.0)
    assert exponents["symbolic"] == pytest.approx(1.0)  # from n = 16 and 32
    assert helmholtz.growth_exponents(rows[:3])["forward"] is None  # one size >= 16: no slope
