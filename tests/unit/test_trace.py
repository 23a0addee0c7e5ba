"""The evaluation trace (gradfit.gradients.trace) against a hand computation of the logistic loss on one row.

The primitives JAX emits differ across versions (the GPU image runs a newer JAX), so rows are matched to the hand
computation by what they compute (value, tangent and adjoint together), and every row must be explained: either
it is a hand-computed quantity or a trivial step (a cast, broadcast, reshape, adding 0, dividing by 1) whose value
and tangent are its operand's.
"""

from __future__ import annotations

import json
import re
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradfit.core.losses import logistic_manual_grad, make_objective, mlp_manual_grad
from gradfit.core.models import logistic, mlp
from gradfit.core.precision import Precision
from gradfit.errors import ConfigError
from gradfit.gradients import trace as trace_module
from gradfit.gradients.trace import evaluation_trace, to_dot, write_graph
from gradfit.gradients.trace_result import summary

TIGHT = dict(rtol=1e-12, atol=1e-14)  # float64, a handful of operations
W = np.array([0.5, -0.25])
B = np.array(0.1)
X = np.array([[1.5, 2.0]])


@pytest.fixture(autouse=True)
def float64():
    with Precision("float64").scope():
        yield


def _sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


def hand_trace(y: np.ndarray, l2: float, theta: str) -> dict:
    """Every quantity of L = mean(log(1 + exp(-y (x.w + b)))) + (l2/2)||w||^2, by hand: name -> (value,
    tangent d/dtheta_j, adjoint dL/d(quantity)). theta_j is 'w[0]', 'w[1]' or 'b'."""
    w, b, x, n = W, B, X, len(y)
    e_w = np.zeros(2)
    if theta.startswith("w"):
        e_w[int(theta[2])] = 1.0
    e_b = 1.0 if theta == "b" else 0.0
    # forward: primal and tangent of each step
    xw, dxw = x @ w, x @ e_w
    m, dm = xw + b, x @ e_w + e_b  # the margin
    neg_y = -y
    z, dz = neg_y * m, neg_y * dm
    row_loss, d_row_loss = np.log1p(np.exp(z)), _sigmoid(z) * dz  # d/dz log(1 + e^z) = sigmoid(z)
    total, d_total = row_loss.sum(), d_row_loss.sum()
    mean, d_mean = total / n, d_total / n
    # reverse: adjoints from dL/dL = 1 back to the inputs
    bar_row_loss = np.full(n, 1.0 / n)
    bar_z = bar_row_loss * _sigmoid(z)
    bar_m = bar_z * neg_y
    bar_neg_y = bar_z * m
    quantities = {
        "b": (b, np.array(e_b), bar_m.sum()),
        "w": (w, e_w, x.T @ bar_m + l2 * w),
        "x": (x, np.zeros_like(x), np.outer(bar_m, w)),
        "y": (y, np.zeros_like(y), -bar_neg_y),
        "x.w": (xw, dxw, bar_m),
        "margin m = x.w + b": (m, dm, bar_m),
        "-y": (neg_y, np.zeros_like(y), bar_neg_y),
        "z = -y m": (z, dz, bar_z),
        "log(1 + e^z)": (row_loss, d_row_loss, bar_row_loss),
        "sum": (total, d_total, 1.0 / n),
        "mean": (mean, d_mean, 1.0),
    }
    if l2:
        quantities.update(
            {
                "w * w": (w * w, 2 * w * e_w, np.full(2, 0.5 * l2)),
                "||w||^2": (w @ w, 2 * w @ e_w, 0.5 * l2),
                "(l2/2) ||w||^2": (0.5 * l2 * (w @ w), l2 * w @ e_w, 1.0),
                "loss": (mean + 0.5 * l2 * (w @ w), d_mean + l2 * w @ e_w, 1.0),
            }
        )
    return quantities


def same(a, b) -> bool:
    """Equal values, allowing shapes that differ only by size-1 axes ((1,) against ())."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.size == b.size and np.allclose(a.ravel(), b.ravel(), **TIGHT)


def operand_value_and_tangent(trace, operand):
    if operand.k is None:
        return np.asarray(operand.value), np.zeros(np.shape(operand.value))
    row = trace.row(operand.k)
    return row.value, row.tangent


def is_trivial(trace, row) -> bool:
    """A constant, or a step that passes an operand through: a cast, broadcast, reshape, + 0, / 1, ..."""
    if row.kind == "constant":
        return True
    for operand in row.inputs:
        value, tangent = operand_value_and_tangent(trace, operand)
        if np.allclose(np.broadcast_to(value, row.value.shape), row.value, **TIGHT) and np.allclose(
            np.broadcast_to(tangent, row.value.shape), row.tangent, **TIGHT
        ):
            return True
    return False


def logistic_trace(y, l2, theta, mode="both"):
    loss = make_objective(logistic(2).apply, l2)
    params = {"w": W, "b": B}
    return evaluation_trace(
        loss, params, (X, y), theta, mode=mode, manual_grad=lambda p: logistic_manual_grad(p, X, y, l2)
    )


@pytest.mark.parametrize("label", [1.0, -1.0])
@pytest.mark.parametrize("l2", [0.0, 0.1])
@pytest.mark.parametrize("theta", ["w[0]", "w[1]", "b"])
def test_every_row_matches_the_hand_computation(label, l2, theta):
    y = np.array([label])
    trace = logistic_trace(y, l2, theta)
    hand = hand_trace(y, l2, theta)

    # the inputs come first, named, in pytree order (b before w), numbered 1-n .. 0 as in Baydin et al.
    assert [(r.k, r.name) for r in trace.rows[:4]] == [(-3, "b"), (-2, "w"), (-1, "x"), (0, "y")]
    assert [r.k for r in trace.rows] == list(range(-3, len(trace.rows) - 3))
    explained = set()
    for name, (value, tangent, adjoint) in hand.items():
        matches = [
            r.k for r in trace.rows if same(r.value, value) and same(r.tangent, tangent) and same(r.adjoint, adjoint)
        ]
        assert matches, f"no row computes {name} = {value} (tangent {tangent}, adjoint {adjoint})"
        explained.update(matches)
    for row in trace.rows:
        assert row.k in explained or is_trivial(trace, row), (
            f"{row.label} = {row.op} is neither a hand-computed quantity nor a trivial step: {row.value}"
        )
    # the custom-JVP logaddexp is one operation, named after its function
    assert any(r.op.startswith("logaddexp") for r in trace.rows)
    assert trace.row(trace.output) is trace.rows[-1] and trace.rows[-1].value.shape == ()


@pytest.mark.parametrize("label", [1.0, -1.0])
@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_forward_reverse_hand_and_jax_grad_agree(label, l2):
    y = np.array([label])
    loss = make_objective(logistic(2).apply, l2)
    grads = jax.grad(loss)({"w": W, "b": B}, X, y)
    for theta, expected in (("w[0]", grads["w"][0]), ("w[1]", grads["w"][1]), ("b", grads["b"])):
        trace = logistic_trace(y, l2, theta)
        d = trace.derivative
        np.testing.assert_allclose([d.forward, d.reverse, d.manual], [float(expected)] * 3, **TIGHT)
        assert trace.loss == pytest.approx(float(loss({"w": W, "b": B}, X, y)), rel=1e-14)


def test_modes_compute_only_what_they_name():
    y = np.array([1.0])
    forward, reverse = logistic_trace(y, 0.0, "w[1]", "forward"), logistic_trace(y, 0.0, "w[1]", "reverse")
    assert all(r.adjoint is None for r in forward.rows) and forward.derivative.reverse is None
    assert all(r.tangent is None for r in reverse.rows) and reverse.derivative.forward is None
    assert forward.derivative.forward == pytest.approx(reverse.derivative.reverse, rel=1e-14)
    with pytest.raises(ConfigError, match="forward, reverse, both"):
        logistic_trace(y, 0.0, "w[1]", "sideways")


def test_mlp_forward_and_reverse_agree_with_jax_grad():
    model = mlp(3, 1, [4], "tanh")
    params = model.init(jax.random.PRNGKey(0), np.float64)
    x = np.random.default_rng(0).normal(size=(5, 3))
    y = np.array([1.0, -1.0, 1.0, 1.0, -1.0])
    loss = make_objective(model.apply, 0.01)
    grads = jax.grad(loss)(params, x, y)
    for theta, expected in (
        ("layers/0/w[1,2]", grads["layers"][0]["w"][1, 2]),
        ("layers/1/b[0]", grads["layers"][1]["b"][0]),
    ):
        trace = evaluation_trace(
            loss, params, (x, y), theta, manual_grad=lambda p: mlp_manual_grad(p, x, y, "tanh", 0.01)
        )
        d = trace.derivative
        np.testing.assert_allclose([d.forward, d.reverse, d.manual], [float(expected)] * 3, rtol=1e-10)
        assert any(r.op == "tanh" for r in trace.rows)
        # reverse mode gives every parameter's whole gradient at once: the adjoints of the parameter inputs
        for (name, leaf), row in zip(
            [
                ("layers/0/b", grads["layers"][0]["b"]),
                ("layers/0/w", grads["layers"][0]["w"]),
                ("layers/1/b", grads["layers"][1]["b"]),
                ("layers/1/w", grads["layers"][1]["w"]),
            ],
            trace.rows,
        ):
            assert row.name == name
            np.testing.assert_allclose(row.adjoint, leaf, rtol=1e-10, atol=1e-14)


def test_calls_are_inlined_and_custom_rules_are_one_operation():
    @jax.jit
    def doubled_sine(a):
        return jnp.sin(a) * 2.0

    @jax.custom_vjp
    def cube(a):
        return a**3

    cube.defvjp(lambda a: (a**3, a), lambda a, ct: (3.0 * a**2 * ct,))

    def loss(params, x):
        a = params["a"] * x
        return jnp.sum(doubled_sine(a) + jax.checkpoint(jnp.cos)(a) + cube(a) + jax.nn.relu(a))

    params, x = {"a": np.array([0.3, -0.2, 1.0])}, np.array([1.0, 2.0, 3.0])
    trace = evaluation_trace(loss, params, (x,), "a[2]")
    primitives = [r.primitive for r in trace.rows]
    assert not {"jit", "pjit", "closed_call", "remat2", "checkpoint"} & set(primitives)
    assert {"sin", "cos"} <= set(primitives)
    assert next(r for r in trace.rows if r.primitive == "sin").scope == "doubled_sine"
    (cube_row,) = [r for r in trace.rows if r.op == "cube (custom_vjp)"]
    assert "transposed" in cube_row.note  # JAX has no JVP for custom_vjp: the tangent is the VJP rule's transpose
    np.testing.assert_allclose(cube_row.tangent, 3.0 * (params["a"] * x) ** 2 * np.array([0, 0, 3.0]), **TIGHT)
    assert any(r.op == "relu (custom_jvp)" for r in trace.rows)
    expected = float(jax.grad(loss)(params, x)["a"][2])
    assert trace.derivative.forward == pytest.approx(expected, rel=1e-12)
    assert trace.derivative.reverse == pytest.approx(expected, rel=1e-12)


def test_default_param_is_the_first_entry_of_the_first_weight():
    trace = logistic_trace(np.array([1.0]), 0.0, None)
    assert (trace.param, trace.leaf, trace.index) == ("w[0]", "w", (0,))
    assert logistic_trace(np.array([1.0]), 0.0, " w[ -1 ] ").param == "w[1]"
    assert logistic_trace(np.array([1.0]), 0.0, "b[]").param == "b"


@pytest.mark.parametrize(
    "param, message",
    [
        ("v[0]", r"unknown parameter 'v'"),
        ("W[0]", r"did you mean 'w'\?"),
        ("w", r"pick one entry, e\.g\. w\[0\]"),
        ("w[2]", r"index 2 is out of range"),
        ("w[0,1]", r"takes 1 index, not 2"),
        ("w[a]", r"indices must be integers"),
        ("b[0]", r"takes 0 indices, not 1"),
        ("w[0", r"not NAME\[INDEX\]"),
    ],
)
def test_bad_param_names_the_parameters(param, message):
    with pytest.raises(ConfigError, match=message) as caught:
        logistic_trace(np.array([1.0]), 0.0, param)
    assert "the parameters are b (scalar), w (2)" in str(caught.value)


def test_dot_has_one_node_per_row_and_edges_between_them():
    trace = logistic_trace(np.array([1.0]), 0.1, "w[1]")
    text = to_dot(trace)
    assert text.startswith("digraph trace {") and text.rstrip().endswith("}")
    nodes = re.findall(r'^  "(v-?\d+)" \[label="((?:[^"\\]|\\.)*)"', text, re.M)
    assert [n for n, _ in nodes] == [r.label for r in trace.rows]
    edges = re.findall(r'^  "(v-?\d+)" -> "(v-?\d+)";$', text, re.M)
    assert len(edges) == sum(o.k is not None for r in trace.rows for o in r.inputs)
    assert {a for a, _ in edges} | {b for _, b in edges} <= {r.label for r in trace.rows}
    labels = dict(nodes)
    assert labels["v-2"].startswith("v-2 = w\\n[0.5, -0.25]")
    assert "logaddexp(0, v" in text and "peripheries=2" in text


def test_write_graph_refuses_to_overwrite(tmp_path, monkeypatch):
    trace = logistic_trace(np.array([1.0]), 0.0, "b")
    path = tmp_path / "trace.dot"
    monkeypatch.setattr(trace_module.shutil, "which", lambda name: None)
    assert write_graph(trace, path) == f"wrote {path}; no SVG: the Graphviz `dot` program is not installed"
    assert path.read_text() == to_dot(trace)
    path.write_text("mine")
    with pytest.raises(ConfigError, match=r"trace\.dot: already exists; pass --force"):
        write_graph(trace, path)
    assert path.read_text() == "mine"
    write_graph(trace, path, force=True)
    assert path.read_text() == to_dot(trace)


def test_write_graph_writes_an_svg_with_dot(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "dot"  # stands in for Graphviz: reads the DOT text, writes an SVG
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho '<svg>graph</svg>'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(trace_module.shutil, "which", lambda name: str(fake))
    trace = logistic_trace(np.array([1.0]), 0.0, "b")
    note = write_graph(trace, tmp_path / "g.dot")
    assert note == f"wrote {tmp_path / 'g.dot'} and {tmp_path / 'g.svg'}"
    assert (tmp_path / "g.svg").read_text() == "<svg>graph</svg>\n"
    (tmp_path / "h.svg").write_text("keep")
    with pytest.raises(ConfigError, match="h.svg"):
        write_graph(trace, tmp_path / "h.dot")
    assert not (tmp_path / "h.dot").exists() and (tmp_path / "h.svg").read_text() == "keep"


def test_large_arrays_are_summarized_and_json_is_plain():
    assert summary(np.array([1.0, 2.0])) == [1.0, 2.0] and summary(np.array(3.0)) == 3.0
    assert summary(np.arange(20.0).reshape(4, 5)) == {
        "shape": [4, 5],
        "dtype": "float64",
        "norm": pytest.approx(np.sqrt(np.sum(np.arange(20.0) ** 2))),
        "min": 0.0,
        "max": 19.0,
    }
    x = np.random.default_rng(1).normal(size=(10, 2))
    y = np.where(np.arange(10) % 2 == 0, 1.0, -1.0)
    trace = evaluation_trace(make_objective(logistic(2).apply, 0.0), {"w": W, "b": B}, (x, y), "w[0]")
    data = json.loads(json.dumps(trace.to_json(), allow_nan=False))
    x_row = next(r for r in data["rows"] if r["name"] == "x")
    assert x_row["value"]["shape"] == [10, 2] and x_row["value"]["max"] == pytest.approx(x.max())
    assert x_row["adjoint"]["shape"] == [10, 2]
    assert data["dL_dtheta"]["forward"] == pytest.approx(data["dL_dtheta"]["reverse"], rel=1e-12)
    assert len(data["rows"]) == len(trace.rows) and data["param"] == "w[0]"


# ----------------------------------------------------------------------------------------------------- CLI


def test_cli_trace_of_the_shipped_example_agrees_with_the_hand_derived_gradient(tmp_path):
    import json

    from typer.testing import CliRunner

    from gradfit.cli.app import app

    out, graph = tmp_path / "trace.json", tmp_path / "graph.dot"
    result = CliRunner().invoke(
        app,
        ["trace", "--rows", "2", "--param", "w[3]", "--json-out", str(out), "--graph", str(graph)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "configs/logreg.yaml" in result.output and "dL/dw[3]" in result.output
    data = json.loads(out.read_text())
    d = data["dL_dtheta"]
    assert d["forward"] == pytest.approx(d["reverse"], rel=1e-12) and d["manual"] == pytest.approx(
        d["reverse"], rel=1e-12
    )
    assert graph.read_text().startswith("digraph")
    again = CliRunner().invoke(app, ["trace", "--graph", str(graph)], env={"COLUMNS": "200"})
    assert again.exit_code == 2 and "--force" in again.stderr  # nothing the user has is overwritten


def test_cli_trace_bad_parameter_exits_2():
    from typer.testing import CliRunner

    from gradfit.cli.app import app

    result = CliRunner().invoke(app, ["trace", "--param", "v[0]"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "the parameters are" in result.stderr and "Traceback" not in result.output


def test_cli_graph_to_stdout_and_one_file_named_twice(tmp_path):
    from typer.testing import CliRunner

    from gradfit.cli.app import app

    piped = CliRunner().invoke(app, ["trace", "--graph", "-"])
    assert piped.exit_code == 0 and piped.stdout.startswith("digraph")  # nothing before the DOT text
    same = tmp_path / "g.dot"
    twice = CliRunner().invoke(app, ["trace", "--graph", str(same), "--json-out", str(same)])
    assert twice.exit_code == 2 and "both name" in twice.stderr and not same.exists()
    both = CliRunner().invoke(app, ["trace", "--graph", "-", "--json"])
    assert both.exit_code == 2 and "standard output" in both.stderr
