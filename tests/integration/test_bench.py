"""gradfit bench on tiny sizes: the JSON is complete, every ratio is finite and positive, and the costs of the
differentiation methods grow as theory says. No speed targets here: those belong in the bench output."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import jax
import numpy as np
import pytest
from conftest import CONFIGS, make_config, requires_no_gpu
from rich.console import Console
from typer.testing import CliRunner

from gradfit.bench import differentiation, engine, peers, timing, training_speed
from gradfit.bench.options import BenchOptions
from gradfit.cli.app import app
from gradfit.cli.render import bench as bench_render
from gradfit.training.prepare import prepare

TINY = BenchOptions(
    steps=5,
    repeats=1,
    logreg_dims=(4, 16),
    mlp_widths=(4,),
    rows=64,
    peers=True,
    helmholtz_sizes=(1, 2),
    symbolic_max_n=1,
)
TINY_SUITE = {
    "logreg": make_config("name=logreg", "train.steps=5"),
    "mlp": make_config(
        "name=mlp", "data.source=digits", "model.kind=mlp", "model.hidden=[8]", "train.steps=5", "train.batch_size=32"
    ),
}


@pytest.fixture(scope="module")
def result():
    return engine.run_bench(TINY_SUITE, TINY, device="cpu")


def positive_finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_json_has_every_section_and_is_serializable(result):
    data = json.loads(json.dumps(result))
    assert set(data) >= {"environment", "training", "gradient_cost", "methods", "peers", "scaling"}
    env = data["environment"]
    assert env["platform"] == "cpu" and env["cpu_cores"] >= 1
    for key in ("jax", "jaxlib", "optax", "dtype", "matmul_precision", "device_kind"):
        assert env[key]
    assert [row["config"] for row in data["training"]] == ["logreg", "mlp"]
    assert set(data["methods"]) == {"logistic", "mlp", "helmholtz"}


def test_the_scaling_table_of_one_device_says_there_is_nothing_to_scale_over(result):
    scaling = result[
        "scaling"
    ]  # this test process sees one CPU device (forced devices: tests/integration/test_scale.py)
    assert scaling["config"] == "mlp" and scaling["available_devices"] == 1 and not scaling["forced_cpu_devices"]
    assert [row["devices"] for row in scaling["rows"]] == [1] and scaling["rows"][0]["speedup"] == 1.0
    assert "one device only" in scaling["note"]


def test_every_time_and_ratio_is_finite_and_positive(result):
    for row in result["training"]:
        for key in ("compile_time_s", "fused_speedup", "gflops_per_s"):
            assert positive_finite(row[key]), key
        for loop in ("python_loop", "fused", "loop"):
            assert positive_finite(row[loop]["steps_per_s"]) and positive_finite(row[loop]["examples_per_s"])
        assert set(row["spread"]) == {"python_loop_s_per_step", "fused_s_per_step", "loop_s_per_step"}
        assert 0 <= row["loop"]["eval_share"] < 1 and row["loop"]["steps"] >= 1
        assert row["fused"]["examples_per_s"] == pytest.approx(row["fused"]["steps_per_s"] * row["batch_size"])
    for row in result["gradient_cost"]:
        assert positive_finite(row["ratio"]) and row["ratio"] == pytest.approx(row["value_and_grad_s"] / row["loss_s"])
    for family in result["methods"].values():
        for row in family["rows"]:
            assert all(positive_finite(v) for v in row["ratios"].values() if v is not None)  # None: not run
    for name, peer in result["peers"].items():
        if peer.get("available", True):
            assert positive_finite(peer["time_ratio"]), name


def test_minimal_loop_peer_measures_the_framework_overhead(result):
    for name in ("logreg", "mlp"):
        peer = result["peers"][f"minimal_jax_loop_{name}"]
        loop = next(row for row in result["training"] if row["config"] == name)
        assert peer["steps"] == loop["loop"]["steps"]  # the same steps as gradfit's whole run
        assert peer["gradfit_s_per_step"] == loop["loop_s_per_step"]
        assert peer["time_ratio"] == pytest.approx(peer["gradfit_s_per_step"] / peer["peer_s_per_step"])


def test_samples_are_taken_until_they_agree_and_flagged_when_they_never_do():
    steady = iter([1.0] * 100)
    result = timing.collect(lambda: next(steady), repeats=3)
    assert (result.seconds, result.spread, result.samples, result.stable) == (1.0, 0.0, 3, True)
    noisy = iter([1.0, 2.0] * 100)
    result = timing.collect(lambda: next(noisy), repeats=3)
    assert result.samples == 12 and not result.stable and (result.seconds, result.spread) == (2.0, 0.5)
    settling = iter([5.0, 1.0, 9.0, 1.0, 1.05, 1.02, 1.0])  # noisy at first, then steady
    result = timing.collect(lambda: next(settling), repeats=3)
    assert result.stable and result.seconds == pytest.approx(1.02) and result.samples == 6
    row: dict = {}
    timing.record(row, "x_s", timing.Timing(2.0, 0.5, 12), scale=0.5)
    assert row == {"x_s": 1.0, "spread": {"x_s": 0.5}, "unstable": ["x_s"]}


def test_unstable_figures_are_marked_not_printed_as_fact():
    from gradfit.cli.render.bench import _flag

    row = {"unstable": ["peer_s"]}
    assert _flag("0.45", row, "gradfit_s", "peer_s").endswith("[yellow]?[/]")
    assert _flag("0.45", row, "gradfit_s") == "0.45"


def test_sklearn_peer_reaches_the_same_objective(result):
    pytest.importorskip("sklearn")
    peer = result["peers"]["sklearn_lbfgs"]
    assert peer["available"] and peer["gradfit_steps"] >= 1 and peer["peer_iterations"] >= 1
    assert peer["objective"] == pytest.approx(0.0471892, rel=1e-5)  # breast_cancer, l2 = 1e-3 (the default)


def test_missing_optional_peer_is_reported_not_fatal(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("no torch here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    peer = peers._torch_peer(prepare(TINY_SUITE["mlp"]), TINY)
    assert peer == {
        "peer": "PyTorch eager MLP step",
        "available": False,
        "reason": "torch is not installed (optional: pip install torch)",
    }


def test_reverse_mode_costs_a_constant_multiple_of_the_loss_by_xla_flop_count():
    # the cheap gradient principle, checked on XLA's flop count (deterministic), not on timings (noisy here):
    # reverse mode costs a small constant multiple of one loss whatever the parameter count
    options = BenchOptions(repeats=1, logreg_dims=(16, 1024), mlp_widths=(), rows=256)
    rows = differentiation.method_scaling(options, jax.devices("cpu")[0])["logistic"]["rows"]
    assert [row["num_params"] for row in rows] == [17, 1025]
    for row in rows:
        assert 1.0 <= row["reverse_flops_vs_loss"] <= 5.0
        assert all(np.isfinite(r) and r > 0 for r in row["ratios"].values())
    assert rows[-1]["reverse_flops_vs_loss"] == pytest.approx(rows[0]["reverse_flops_vs_loss"], rel=0.25)


def test_gpu_peak_table():
    assert training_speed.gpu_peak("NVIDIA H100 80GB HBM3") == training_speed.GPU_PEAKS_TFLOPS["H100"]
    assert training_speed.gpu_peak("NVIDIA H200") == training_speed.GPU_PEAKS_TFLOPS["H200"]
    assert training_speed.gpu_peak("cpu") is None


QUICK_SUITE = {  # the suite's two kinds of model, tiny, for a --quick run in seconds
    "logreg": ["name=logreg", "train.steps=5"],
    "mlp": ["name=mlp", "data.source=digits", "model.kind=mlp", "model.hidden=[8]", "train.steps=5"],
}


def test_cli_quick_prints_a_short_summary_of_the_side_by_side_ratios(monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "QUICK", dataclasses.replace(engine.QUICK, repeats=1))  # its sections, fewer samples
    monkeypatch.setattr(engine, "EXAMPLES", QUICK_SUITE)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app, ["bench", "--quick", "--device", "cpu", "--json-out", str(out)], env={"COLUMNS": "100"}
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) <= 40 and max(map(len, lines)) <= 100, result.output
    assert "minimal JAX loop" in result.output and "Verdict:" in result.output
    assert "Training throughput" not in result.output and "Helmholtz" not in result.output  # --verbose's
    assert "n^" not in result.output and "growth exponent" not in result.output  # no exponent fitted at all
    data = json.loads(out.read_text())
    # --quick measures gradfit's whole loop and its peers, nothing else: no Python loop, fused chunk, NumPy step
    assert set(data) == {"environment", "options", "training", "peers", "wall_s"} and data["options"]["sections"] == []
    assert all("loop_s_per_step" in row and "fused" not in row for row in data["training"])
    assert set(data["peers"]) == {"minimal_jax_loop_logreg", "minimal_jax_loop_mlp", "torch_eager_mlp", "sklearn_lbfgs"}
    for name in ("minimal JAX loop", "PyTorch eager", "scikit-learn L-BFGS"):  # a ratio, or why it did not run
        assert name in result.output


def test_the_summary_is_short_and_verbose_adds_every_table(result):
    def printed(verbose: bool) -> list:
        console = Console(width=100, record=True, file=io.StringIO())
        for table in bench_render.bench_tables(result, verbose):
            console.print(table)
        return console.export_text().splitlines()

    summary, verbose = printed(False), printed(True)
    assert len(summary) <= 40 and any(line.startswith("Verdict:") for line in summary)
    assert summary[-1].startswith("Details: --verbose")
    text = "\n".join(verbose)
    for title in ("Environment", "Training throughput", "Cost of a gradient", "Helmholtz", "Scaling over devices"):
        assert title in text and title not in "\n".join(summary)
    assert len(verbose) > len(summary)


def test_the_verdict_says_when_the_machine_was_busy(result):
    busy = {**result, "environment": {**result["environment"], "cpu_cores": 2, "load_average": [6.2, 5.0, 4.0]}}
    quiet = {**result, "environment": {**result["environment"], "cpu_cores": 2, "load_average": [0.3, 0.2, 0.1]}}
    assert "busy (load average 6.20 on 2 cores)" in bench_render.verdict(busy)
    assert "busy" not in bench_render.verdict(quiet)


def test_method_tables_fit_growth_only_over_compute_bound_sizes():
    def family(loss_times: list) -> dict:
        rows = [
            {
                "size": n,
                "num_params": n,
                "loss_s": loss_s,
                "ratios": {"reverse": 2.0, "forward": 3.0 / n, "finite_difference": 3.0 / n, "manual_numpy": 1.0},
            }
            for n, loss_s in zip((16, 512, 2048), loss_times)
        ]
        fit = timing.growth_fit(rows, "loss_s", 10e-6)
        fitted = [(r["num_params"], r["ratios"]["forward"]) for r in rows if r["num_params"] in fit["sizes"]]
        exponents = dict.fromkeys(rows[0]["ratios"], timing.growth_exponent(fitted))
        return {"rows": rows, "growth_exponent": exponents, "growth_fit": fit}

    def caption(data: dict) -> str:
        return str(bench_render._methods_table("logistic", data).caption)

    flat = family([10e-6, 11e-6, 60e-6])  # one size above 5 x 10 us: the falling ratios are overhead, not a rate
    assert flat["growth_exponent"]["forward"] is None
    assert caption(flat).startswith("no growth exponent: dispatch-bound: 1 size(s)") and "-1.00" not in caption(flat)
    compute = family([10e-6, 60e-6, 240e-6])
    assert compute["growth_fit"]["sizes"] == [512, 2048]
    assert "fitted over params = 512, 2,048" in caption(compute) and "forward -1.00" in caption(compute)


def test_fewest_iterations_by_bisection_matches_counting_up():
    for first in (1, 2, 37, 38, 200):
        calls = []

        def reaches(n, first=first, calls=calls):
            calls.append(n)
            return n >= first

        assert peers.fewest(reaches, 200) == first and len(calls) <= 10
    assert peers.fewest(lambda n: False, 200) is None


def test_cli_help_says_what_quick_measures_and_what_verbose_adds():
    result = CliRunner().invoke(app, ["bench", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--verbose" in text and "--quick" in text
    assert "minimal JAX loop, PyTorch eager and scikit-learn" in text
    assert "Also print every table measured" in text


@requires_no_gpu
def test_cli_gpu_without_gpu_exits_2():
    result = CliRunner().invoke(app, ["bench", "--device", "gpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "JAX sees no GPU" in result.stderr and "pip install" in result.stderr


def test_cli_bad_config_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  kind: tree\n")
    result = CliRunner().invoke(app, ["bench", str(bad), "--device", "cpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "model.kind" in result.stderr and "expected one of logistic, linear, mlp" in result.stderr


def test_cli_study_helmholtz_runs_alone(monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "QUICK", dataclasses.replace(TINY, helmholtz_sizes=(1, 2), symbolic_max_n=1))
    out = tmp_path / "study.json"
    result = CliRunner().invoke(
        app,
        ["bench", "--study", "helmholtz", "--quick", "--device", "cpu", "--json-out", str(out)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "Helmholtz free energy" in result.output and "Training throughput" not in result.output
    study = json.loads(out.read_text())["methods"]["helmholtz"]
    assert [row["size"] for row in study["rows"]] == [1, 2]
    assert study["rows"][0]["symbolic_s"] is not None and study["rows"][1]["symbolic_s"] is None
    for row in study["rows"]:
        assert max(v for k, v in row["errors"].items() if v is not None) < 1e-6
    if study["growth_fit"]["reason"] is not None:  # n = 1, 2: f costs about the dispatch floor, no growth rate
        assert all(value is None for value in study["growth_exponent"].values())
        assert "dispatch-bound" in " ".join(result.output.split()) and "n^-" not in result.output


def test_cli_study_with_configs_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--study", "helmholtz", str(CONFIGS / "logreg.yaml")])
    assert result.exit_code == 2 and "drop the configs" in result.stderr
